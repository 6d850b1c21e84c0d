"""The Rate maps widget's job, without Qt or a viewer: the keywords it builds and the call it makes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_mollifier import infer_rates
from napari_mollifier._napari.job import _Job, run_to_end, solver_kwargs
from napari_mollifier.errors import MollifierInputError
from napari_mollifier.simulate import synthetic_nucleus

REPO_ROOT = Path(__file__).resolve().parents[1]


def _settings(**over):
    base = dict(model="chromatin-balance", params={}, pixel_size=(0.05, 0.05), radius=5.0, method="direct",
                device="cpu", seed=0, kernel="poly", boundary="mask", unit="px", iterations=7, n_bootstrap=0,
                uncertainty="none")
    base.update(over)
    return base


def test_solver_kwargs_keep_only_the_method_s_options():
    direct = solver_kwargs(**_settings())
    assert "iterations" not in direct and "unit" not in direct
    assert direct["n_bootstrap"] == 0 and direct["uncertainty"] == "none" and direct["radius"] == 5.0
    network = solver_kwargs(**_settings(method="network", unit="µm"))
    assert network["iterations"] == 7 and network["unit"] == "µm"
    assert "n_bootstrap" not in network and "uncertainty" not in network


def test_job_calls_infer_rates_with_its_keywords():
    """A job built from plain arrays gives the rate map of ``infer_rates`` called directly, near the truth."""
    s = synthetic_nucleus(shape=(80, 80), pixel_size=0.05, seed=3)
    fields = {"phi_h": s["phi_h"].copy(), "phi_e": s["phi_e"].copy()}
    kwargs = solver_kwargs(**_settings(params=dict(s["params"]), unit="um"))
    job = _Job(source_name="phi_h", input_names={"phi_h": "phi_h", "phi_e": "phi_e"},
               slices=[((), fields, None)], out_lead_shape=(), geometry={}, kwargs=kwargs, unit="um", roi_name=None)
    outcome = run_to_end(job)
    assert outcome.status == "ok", outcome.message
    (res,) = outcome.results
    direct = infer_rates({"phi_h": s["phi_h"], "phi_e": s["phi_e"]}, **kwargs)
    np.testing.assert_array_equal(res.rate, direct.rate)
    assert float(res.radius) == 5.0
    inner = np.isfinite(res.rate) & np.isfinite(s["rate"])
    assert inner.mean() > 0.5
    corr = np.corrcoef(res.rate[inner], s["rate"][inner])[0, 1]
    assert corr > 0.8, corr  # the noise-free steady state: the map follows the true rate


def test_job_module_needs_no_qt():
    """The job module imports without Qt or napari (no display needed)."""
    code = ("import sys, napari_mollifier._napari.job\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', "
            "'PySide6', 'napari')))\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_whole_image_run_solves_inside_the_detected_nucleus():
    """Issue 15: "(whole image)" on an image with background solves in the nucleus the CLI would detect.

    On the plugin's sample (a nucleus with surroundings), the job's ROI is ``detect_nucleus``'s mask, the map equals
    ``infer_rates(..., roi=<that mask>)``, no pixel outside the true nucleus is solved, and the map follows the truth.
    """
    from napari_mollifier._napari.job import whole_image_roi
    from napari_mollifier._napari.sample_data import SAMPLE_KWARGS
    from napari_mollifier.nucleus import detect_nucleus

    s = synthetic_nucleus(**SAMPLE_KWARGS)
    fields = {"phi_h": s["phi_h"].copy(), "phi_e": s["phi_e"].copy()}
    roi, info, note = whole_image_roi(fields)
    mask, expected = detect_nucleus(fields)
    assert note is None and info == expected
    np.testing.assert_array_equal(roi, mask.astype(np.int32))
    assert not np.any(mask & ~s["nucleus"])  # no background pixel
    assert 2 * np.sum(mask & s["nucleus"]) / (mask.sum() + s["nucleus"].sum()) >= 0.9  # most of the nucleus
    kwargs = solver_kwargs(**_settings(params=dict(s["params"]), unit="um", pixel_size=(0.02, 0.02), radius=8.0))
    job = _Job(source_name="phi_h", input_names={"phi_h": "phi_h", "phi_e": "phi_e"},
               slices=[((), fields, roi)], out_lead_shape=(), geometry={}, kwargs=kwargs, unit="um", roi_name=None,
               detections=[info])
    outcome = run_to_end(job)
    assert outcome.status == "ok", outcome.message
    (res,) = outcome.results
    direct = infer_rates({"phi_h": s["phi_h"], "phi_e": s["phi_e"]}, roi=mask.astype(np.int32), **kwargs)
    np.testing.assert_array_equal(res.rate, direct.rate)
    solved = np.isfinite(res.rate)
    assert solved.sum() > 0.9 * mask.sum() and not np.any(solved & ~mask)
    rel = np.abs(res.rate[solved] - s["rate"][solved]) / s["rate"][solved]
    assert np.median(rel) < 0.1, np.median(rel)


def test_whole_image_run_without_background_solves_every_pixel():
    """A crop inside the nucleus (no background): no mask, and the user is told why the whole image is solved."""
    from napari_mollifier._napari.job import whole_image_roi

    s = synthetic_nucleus(shape=(128, 128), pixel_size=0.02, seed=1)
    crop = {k: s[k][44:84, 44:84].copy() for k in ("phi_h", "phi_e")}
    assert s["nucleus"][44:84, 44:84].all()
    from napari_mollifier.nucleus import detect_nucleus

    # Otsu splits the crop into heterochromatin domains: the core refuses it (the CLI then solves the whole image
    # with a warning, the widget with a note), rather than solving one domain as "the nucleus"
    with pytest.raises(MollifierInputError, match=r"no single nucleus detected.*pieces.*pass an ROI"):
        detect_nucleus(crop)
    roi, info, note = whole_image_roi(crop)
    assert roi is None and info is None, info
    assert "no single nucleus detected" in note and "whole image is solved" in note
    roi, info, note = whole_image_roi({"phi_h": np.full((32, 32), 0.3), "phi_e": np.full((32, 32), 0.2)})
    assert roi is None and "constant" in note


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities are set on Linux only")
def test_solver_thread_priority_does_not_climb_when_the_thread_is_reused(monkeypatch):
    """napari's thread pool reuses its threads: every run lowered the same thread's priority by another step, and a
    reused thread reached nice 19 after four runs (the solver then starved whenever the viewer drew)."""
    import os
    import threading

    from napari_mollifier._napari.job import _background_priority

    monkeypatch.setenv("NAPARI_MOLLIFIER_NICE", "5")
    main = os.getpriority(os.PRIO_PROCESS, os.getpid())
    seen = []

    def runs():  # one pool thread, five runs
        for _ in range(5):
            _background_priority()
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=runs)
    thread.start()
    thread.join()
    assert seen == [min(19, main + 5)] * 5
    assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == main  # the viewer's thread is left alone



def test_short_runs_keep_torch_s_threads_and_long_runs_leave_the_viewer_a_core(monkeypatch):
    """A short run (which the user waits for) keeps torch's own thread count; a long run (or one of unknown length)
    gets one core fewer than the machine has, so that the viewer keeps a core; the environment overrides both."""
    from napari_mollifier._napari import solver_threads as st

    monkeypatch.delenv("NAPARI_MOLLIFIER_THREADS", raising=False)
    monkeypatch.setattr(st, "_usable_cores", lambda: 4)
    short, long_ = st.SHORT_RUN_S / 2, st.SHORT_RUN_S * 10
    assert [st.widget_solver_threads(t) for t in (short, long_, None)] == [None, 3, 3]
    monkeypatch.setattr(st, "_usable_cores", lambda: 1)
    assert st.widget_solver_threads(long_) == 1  # at least one
    monkeypatch.setenv("NAPARI_MOLLIFIER_THREADS", "2")
    assert [st.widget_solver_threads(t) for t in (short, long_)] == [2, 2]
    monkeypatch.setenv("NAPARI_MOLLIFIER_THREADS", "0")
    assert [st.widget_solver_threads(t) for t in (short, long_)] == [None, None]
