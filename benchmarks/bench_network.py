"""The network method's default on the plugin's sample: iterations, early stop, time and accuracy.

The plugin's sample (``napari_mollifier._napari.sample_data.SAMPLE_KWARGS``: the 256 x 256 synthetic nucleus,
20 nm pixels, noise 0.01) is solved as the "Rate maps" widget solves it, headless: ``infer_rates`` with the
sample's coefficients, the automatic radius, the nucleus as the ROI and torch's own thread count. Rows:

* ``direct``: the default method, the reference map;
* ``network N``: ``method="network", iterations=N`` with the library's early stop
  (``napari_mollifier.methods.network.DEFAULT_PATIENCE`` / ``DEFAULT_REL_TOL``), timed around the whole
  ``infer_rates`` call (radius ladder included: what the user waits for);
* ``previous default``: the network fit that ``infer_rates`` runs, with 1500 iterations and no early stop (the
  default before the early stop), called through ``fit_network`` with the radius and mask ``infer_rates`` uses,
  its map correlated with the truth every ``--every`` steps; cut after ``--budget`` seconds of training on a slow
  machine (the row then says at which step). The step where the early stop would have ended it is computed from
  its loss history.

``r truth``: Pearson correlation with the ground-truth rate inside the nucleus; ``r direct``: with the direct map.

Run from the repository root, on an otherwise idle machine (one process; the load average is printed)::

    python benchmarks/bench_network.py                       # prints its table; --write: its RESULTS.md section
    python benchmarks/bench_network.py --candidates 100 --budget 120
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402

_common.use_checkout_src()

import numpy as np  # noqa: E402

SECTION = "bench_network"
PREVIOUS_DEFAULT = 1500


def _r(a, b, inside) -> float:
    ok = inside & np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", default="50,100,150", help="iterations of the network rows (comma-separated)")
    p.add_argument("--budget", type=float, default=480.0, help="seconds of training for the previous-default row")
    p.add_argument("--every", type=int, default=25, help="steps between the previous default's correlations")
    p.add_argument("--write", action="store_true", help="write the section of benchmarks/RESULTS.md")
    args = p.parse_args(argv)

    import torch

    from napari_mollifier import infer_rates
    from napari_mollifier._napari.sample_data import SAMPLE_KWARGS
    from napari_mollifier.errors import RunCancelled
    from napari_mollifier.methods.network import (
        DEFAULT_ITERATIONS,
        DEFAULT_PATIENCE,
        DEFAULT_REL_TOL,
        EarlyStop,
        fit_network,
    )
    from napari_mollifier.simulate import synthetic_nucleus

    load_start, started = _common.load_average(all_three=True), _common.utc_stamp()
    sim = synthetic_nucleus(**SAMPLE_KWARGS)
    truth, nucleus = sim["rate"], np.asarray(sim["nucleus"], dtype=bool)
    fields = {k: sim[k] for k in ("phi_h", "phi_e")}
    common = dict(model=sim["model"], params=sim["params"], pixel_size=sim["pixel_size"], unit="um", roi=nucleus,
                  seed=0)
    rows = []

    t = time.perf_counter()
    direct = infer_rates(fields, method="direct", **common)
    secs = time.perf_counter() - t
    rows.append(("direct", "-", "-", "-", secs, None, _r(direct.rate, truth, nucleus), 1.0))
    radius = float(direct.radius)
    print(f"direct: {secs:.1f} s, radius {radius:g} px, r truth {rows[-1][6]:.4f}", flush=True)

    for n in [int(v) for v in args.candidates.split(",") if v.strip()]:
        t = time.perf_counter()
        res = infer_rates(fields, method="network", iterations=n, **common)
        secs = time.perf_counter() - t
        fit = next(iter(res.provenance["network_fit"].values()))
        rows.append((f"network {n}", n, fit["iterations_run"], "yes" if fit["stopped_early"] else "no", secs,
                     None, _r(res.rate, truth, nucleus), _r(res.rate, direct.rate, nucleus)))
        print(rows[-1], flush=True)

    # the previous default: the fit infer_rates runs (whole valid image as the mask, the chosen radius), 1500 steps
    valid = np.all([np.isfinite(v) for v in fields.values()], axis=0)
    curve, losses = [], []
    deadline = [None]

    def monitor(step, train_seconds, rate):
        if step % args.every == 0 or step == PREVIOUS_DEFAULT:
            curve.append((step, train_seconds, _r(rate, truth, nucleus), _r(rate, direct.rate, nucleus)))
            print(f"  previous default: step {step}, {train_seconds:.0f} s, r truth {curve[-1][2]:.4f}", flush=True)
            if deadline[0] is None:
                deadline[0] = time.perf_counter() + args.budget

    def cancel():
        return deadline[0] is not None and time.perf_counter() > deadline[0]

    t = time.perf_counter()
    cut = None
    try:
        fit_network({k: np.where(valid, v, 0.0) for k, v in fields.items()}, sim["model"], direct.provenance["params"],
                    sim["pixel_size"], radius, valid, iterations=PREVIOUS_DEFAULT, patience=None, device="cpu", seed=0,
                    progress=lambda s, tot, i: losses.append(i["loss"]), cancel=cancel, monitor=monitor,
                    monitor_every=1)
    except RunCancelled:
        cut = len(losses)
    secs = time.perf_counter() - t
    stopper = EarlyStop(DEFAULT_PATIENCE, DEFAULT_REL_TOL, start=int(round(0.2 * PREVIOUS_DEFAULT)))
    would_stop = next((s + 1 for s, v in enumerate(losses) if stopper.update(s, v)), None)
    last = curve[-1]
    rows.append((f"previous default ({PREVIOUS_DEFAULT}, no early stop)"
                 + (f", cut at step {cut} (r at step {last[0]})" if cut else ""),
                 PREVIOUS_DEFAULT, len(losses), f"would stop at {would_stop}" if would_stop else "no", secs,
                 secs / max(len(losses), 1), last[2], last[3]))
    load_end = _common.load_average(all_three=True)

    head = "| run | max iterations | steps run | early stop | seconds | r truth | r direct |"
    lines = [head, "|" + "---|" * 7]
    for name, mx, run, early, s, _, rt, rd in rows:
        lines.append(f"| {name} | {mx} | {run} | {early} | {s:.1f} | {rt:.4f} | {rd:.4f} |")
    curve_lines = ["| step | train seconds | r truth | r direct |", "|---|---|---|---|"]
    curve_lines += [f"| {s} | {ts:.1f} | {rt:.4f} | {rd:.4f} |" for s, ts, rt, rd in curve]
    body = f"""## The network method's default on the sample (`benchmarks/bench_network.py`)

Run {started} (`python benchmarks/bench_network.py --candidates {args.candidates} --budget {args.budget:g}`),
load average {load_start} at the start, {load_end} at the end (1/5/15 min).
Machine: {_common.machine([f"torch {torch.__version__}", f"{torch.get_num_threads()} threads"])}.
Sample: {SAMPLE_KWARGS}, radius {radius:g} px (automatic), early stop patience {DEFAULT_PATIENCE}, rel_tol
{DEFAULT_REL_TOL:g}; library default iterations {DEFAULT_ITERATIONS}. Seconds: the whole `infer_rates` call (the
previous default: the network fit only).

{chr(10).join(lines)}

Previous default, map along its 1500-step schedule:

{chr(10).join(curve_lines)}
"""
    print(body)
    if args.write:
        _common.write_section(_common.RESULTS, SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
