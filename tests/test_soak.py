"""Soak: 30 solves back to back through the API must not grow memory (issue #6).

After a warm-up (caches of kernel spectra and mask operators filled, allocator pools grown), further solves on
new data of the same kind must not keep memory: Python objects (``tracemalloc``, numpy buffers included), the
process's resident set size (``/proc/self/statm``), and on a CUDA device ``torch.cuda.memory_allocated``.

Tolerances: Python objects may grow by at most 1 MiB over 22 solves (a leak of one set of result maps per solve
would add 1.9 MiB); RSS by at most 24 MiB (allocator noise; a leak of the mask
operator per solve would add > 40 MiB); CUDA allocations by at most 1 MiB.
"""

from __future__ import annotations

import gc
import os
import tracemalloc

import numpy as np
import pytest
import torch

import napari_mollifier as nm
from napari_mollifier.simulate import synthetic_nucleus

N_SOLVES = 30
WARM_UP = 8


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        psutil = pytest.importorskip("psutil")
        return int(psutil.Process().memory_info().rss)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_fifty_solves_do_not_grow_memory(device):
    s = synthetic_nucleus(shape=(48, 48), pixel_size=0.02, seed=0)
    rng = np.random.default_rng(0)
    rss, traced, cuda = [], [], []
    tracemalloc.start()
    try:
        for i in range(N_SOLVES):
            fields = {k: s[k] + 0.005 * rng.standard_normal(s[k].shape) for k in ("phi_h", "phi_e")}
            res = nm.infer_rates(fields, params=s["params"], pixel_size=0.02, radius="auto", roi=s["nucleus"],
                                 n_bootstrap=4, seed=i, device=device)
            assert np.isfinite(res.rate[s["nucleus"]]).mean() > 0.9  # each solve is a real one
            del res, fields
            gc.collect()
            rss.append(_rss_bytes())
            traced.append(tracemalloc.get_traced_memory()[0])
            if device == "cuda":
                torch.cuda.synchronize()
                cuda.append(torch.cuda.memory_allocated())
    finally:
        tracemalloc.stop()
    mib = 2**20
    python_growth = (traced[-1] - traced[WARM_UP - 1]) / mib
    rss_growth = (rss[-1] - rss[WARM_UP - 1]) / mib
    print(f"\n{device}: Python objects {traced[WARM_UP - 1] / mib:.2f} -> {traced[-1] / mib:.2f} MiB, "
          f"RSS {rss[WARM_UP - 1] / mib:.1f} -> {rss[-1] / mib:.1f} MiB over solves {WARM_UP}..{N_SOLVES}")
    assert python_growth < 1.0, f"Python objects grew by {python_growth:.2f} MiB"
    assert rss_growth < 24.0, f"RSS grew by {rss_growth:.1f} MiB"
    # no steady climb either: the second half grows no more than the tolerance
    assert (max(traced[WARM_UP:]) - traced[WARM_UP]) / mib < 1.0
    if cuda:
        cuda_growth = (cuda[-1] - cuda[WARM_UP - 1]) / mib
        print(f"cuda allocated {cuda[WARM_UP - 1] / mib:.2f} -> {cuda[-1] / mib:.2f} MiB")
        assert cuda_growth < 1.0, f"CUDA memory grew by {cuda_growth:.2f} MiB"
