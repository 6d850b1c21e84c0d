"""Bad input, faults and cancel in the "Rate maps" widget (docs/reliability.md, widget rows).

Every case: a napari notification that names the problem and the fix (or a documented result), the input layers
unchanged, no partial output layer, and the widget ready for the next run. Real viewer under Xvfb; runs are
small (fixed radius, no uncertainty samples) so the file stays short on CI.
"""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest
from widget_support import (  # noqa: F401 - shared with the widget tests
    _SKIP,
    PHI_E,
    PHI_H,
    RATE,
    RUN_TIMEOUT_MS,
    TRUTH,
    _assert_unchanged,
    _errors_since,
    _fast,
    _n_records,
    _nucleus_polygon_world,
    _run,
    _snapshot,
)

pytestmark = [pytest.mark.gui, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

OUTPUT_KINDS = ("rate", "uncertainty", "residual", "smoothed")


def _outputs(viewer) -> list[str]:
    return [ly.name for ly in viewer.layers if ly.metadata.get("mollifier_output") in OUTPUT_KINDS]


def _messages_since(n: int) -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(r.message) for r in notification_manager.records[n:]]


def _expect_error(qtbot, viewer, widget, *fragments) -> str:
    """Run; it must end in "error" with one notification holding every fragment; nothing added or changed."""
    before, n = _snapshot(viewer), _n_records()
    assert _run(qtbot, widget) == "error"
    errors = _errors_since(n)
    assert errors, _messages_since(n)
    assert all(f.lower() in errors[-1].lower() for f in fragments), errors[-1]
    _assert_unchanged(viewer, before)
    assert widget.run_button.isEnabled() and not widget.is_running
    return errors[-1]


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.slow
def test_nan_and_inf_pixels(sample_viewer, qtbot):
    """NaN and inf pixels are missing data (a warning says how many; no output there, correct elsewhere)."""
    viewer, widget = sample_viewer
    src = viewer.layers[PHI_H]
    px = float(src.scale[-1])
    viewer.add_shapes([_nucleus_polygon_world(px)], shape_type="polygon", name="roi", units=src.units)
    widget.roi_combo.setCurrentText("roi")
    _fast(widget, radius_px=8.0)
    phi_h = np.array(src.data, dtype=float)
    holed = phi_h.copy()
    holed[120:126, 120:126] = np.nan
    viewer.add_image(holed, name="phi_h with NaN", scale=src.scale, units=src.units)
    widget.input_combos["phi_h"].setCurrentText("phi_h with NaN")
    widget.coef_edits["l2"].setText(str(src.metadata["params"]["l2"]))  # the new layer has no model metadata
    _fast(widget, radius_px=14.0)
    before = _snapshot(viewer)
    assert _run(qtbot, widget) == "ok"
    for name, data in before.items():  # inputs untouched (NaN stays NaN)
        np.testing.assert_array_equal(np.asarray(viewer.layers[name].data), data)
    # new outputs are shown (the smoothed fields stay hidden) and the rate is the active layer
    assert viewer.layers.selection.active is viewer.layers["rate [phi_h with NaN]"]
    assert viewer.layers["rate [phi_h with NaN]"].visible
    assert not viewer.layers["residual [phi_h with NaN]"].visible  # under the rate map: hidden, like the uncertainty
    assert not viewer.layers["phi_h smoothed [phi_h with NaN]"].visible
    rate = np.asarray(viewer.layers["rate [phi_h with NaN]"].data)
    truth = np.asarray(viewer.layers[TRUTH].data)
    assert np.isnan(rate[120:126, 120:126]).all()
    assert np.isnan(rate[:80]).all()  # outside the ROI
    inside = np.isfinite(rate)
    assert inside.sum() > 0.9 * 76 * 96
    r = np.corrcoef(rate[inside], truth[inside])[0, 1]
    assert r > 0.9, r

    notes = [m for m in _messages_since(0) if "phi_h with NaN" in m and "missing data" in m]
    assert notes and "36 NaN/inf pixels" in notes[-1], notes

    # inf is missing data too: the same result as NaN at those pixels
    with_inf = np.where(np.isnan(holed), np.inf, holed)
    viewer.add_image(with_inf, name="phi_h with inf", scale=src.scale, units=src.units)
    widget.input_combos["phi_h"].setCurrentText("phi_h with inf")
    widget.coef_edits["l2"].setText(str(src.metadata["params"]["l2"]))
    assert _run(qtbot, widget) == "ok"
    np.testing.assert_array_equal(np.asarray(viewer.layers["rate [phi_h with inf]"].data), rate)
    assert np.isinf(viewer.layers["phi_h with inf"].data).sum() == 36


def test_zero_or_negative_euchromatin(sample_viewer, qtbot):
    viewer, widget = sample_viewer
    _fast(widget, radius_px=8.0)
    phi_e = np.array(viewer.layers[PHI_E].data, dtype=float)
    viewer.add_image(phi_e - 1.0, name="negative euchromatin", scale=viewer.layers[PHI_E].scale,
                     units=viewer.layers[PHI_E].units)
    widget.input_combos["phi_e"].setCurrentText("negative euchromatin")
    _expect_error(qtbot, viewer, widget, "euchromatin")


@pytest.mark.slow
def test_empty_roi_and_roi_smaller_than_kernel(sample_viewer, qtbot):
    viewer, widget = sample_viewer
    px = float(viewer.layers[PHI_H].scale[-1])
    _fast(widget, radius_px=10.0)
    # a Shapes layer with no shape
    viewer.add_shapes(name="no shapes", units=viewer.layers[PHI_H].units)
    widget.roi_combo.setCurrentText("no shapes")
    _expect_error(qtbot, viewer, widget, "no shapes", "draw")
    # a Labels layer with no label
    viewer.add_labels(np.zeros(viewer.layers[PHI_H].data.shape, dtype=np.int32), name="no labels",
                      scale=viewer.layers[PHI_H].scale, units=viewer.layers[PHI_H].units)
    widget.roi_combo.setCurrentText("no labels")
    _expect_error(qtbot, viewer, widget, "no labels")

    # an ROI of 5 x 5 px with a kernel of radius 10 px: the derivatives use the whole image, the ROI only
    # selects the output, so the rate inside the tiny ROI is the same as in a whole-image run
    tiny = np.array([[128, 128], [128, 133], [133, 133], [133, 128]], dtype=float) * px
    viewer.add_shapes([tiny], shape_type="rectangle", name="tiny", units=viewer.layers[PHI_H].units)
    widget.roi_combo.setCurrentText("tiny")
    assert _run(qtbot, widget) == "ok"
    rate_tiny = np.array(viewer.layers[RATE].data)
    assert 16 <= np.isfinite(rate_tiny).sum() <= 36
    widget.roi_combo.setCurrentText("(whole image)")
    assert _run(qtbot, widget) == "ok"
    rate_all = np.asarray(viewer.layers[RATE].data)
    sel = np.isfinite(rate_tiny)
    np.testing.assert_allclose(rate_tiny[sel], rate_all[sel], rtol=1e-9)
    truth = np.asarray(viewer.layers[TRUTH].data)
    np.testing.assert_allclose(rate_tiny[sel], truth[sel], rtol=0.1)


@pytest.mark.slow
def test_rgb_and_5d_layers(make_napari_viewer, _plugin_registered, qtbot):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.random.default_rng(0).random((32, 32, 3)), name="rgb", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget("napari-mollifier", "Rate maps")
    # an RGB layer is never offered as a chromatin field
    assert widget.input_combos["phi_h"].findText("rgb") < 0
    n = _n_records()
    before = _snapshot(viewer)
    assert _run(qtbot, widget) == "error"  # nothing to run on: says how to get an input
    assert "choose an image layer" in _errors_since(n)[-1]
    _assert_unchanged(viewer, before)

    # a 5-D stack (t, c, z, y, x with singleton leading axes): the current 2-D slice runs, the output sits on it
    from napari_mollifier.simulate import synthetic_nucleus

    s = synthetic_nucleus(shape=(96, 96), pixel_size=0.05, seed=1)
    lead = (2, 1, 2)
    h = np.broadcast_to(s["phi_h"], lead + s["phi_h"].shape).copy()
    e = np.broadcast_to(s["phi_e"], lead + s["phi_e"].shape).copy()
    viewer.add_image(h, name="phi_h 5d", scale=(1, 1, 1, 0.05, 0.05))
    viewer.add_image(e, name="phi_e 5d", scale=(1, 1, 1, 0.05, 0.05))
    widget.input_combos["phi_h"].setCurrentText("phi_h 5d")
    widget.input_combos["phi_e"].setCurrentText("phi_e 5d")
    widget.coef_edits["l2"].setText(str(s["params"]["l2"]))
    _fast(widget, radius_px=6.0)
    viewer.dims.set_point(0, 1)
    assert widget.all_slices.isEnabled()
    widget.all_slices.setChecked(False)
    assert _run(qtbot, widget) == "ok"
    out = viewer.layers["rate [phi_h 5d]"]
    assert out.data.shape == (1, 1, 1, 96, 96)
    assert out.translate[0] == pytest.approx(1.0)  # placed on the slice that ran
    rate = np.asarray(out.data)[0, 0, 0]
    inside = s["nucleus"] & np.isfinite(rate)
    assert np.corrcoef(rate[inside], s["rate"][inside])[0, 1] > 0.9


@pytest.mark.slow
def test_integer_and_bool_layers(make_napari_viewer, _plugin_registered, qtbot):
    """uint16 camera counts are converted to float (the same factor on both fields leaves the balance closed form
    unchanged); bool layers are converted to 0/1."""
    from napari_mollifier.simulate import synthetic_nucleus

    s = synthetic_nucleus(shape=(96, 96), pixel_size=0.05, seed=2)
    viewer = make_napari_viewer(show=True)
    scale = 40000.0  # the same factor on both fields: lambda = (phi_h + l2 lap phi_e) / phi_e is unchanged
    viewer.add_image(np.round(s["phi_h"] * scale).astype(np.uint16), name="phi_h counts", scale=(0.05, 0.05))
    viewer.add_image(np.round(s["phi_e"] * scale).astype(np.uint16), name="phi_e counts", scale=(0.05, 0.05))
    _, widget = viewer.window.add_plugin_dock_widget("napari-mollifier", "Rate maps")
    widget.input_combos["phi_h"].setCurrentText("phi_h counts")
    widget.input_combos["phi_e"].setCurrentText("phi_e counts")
    widget.coef_edits["l2"].setText(str(s["params"]["l2"]))
    _fast(widget, radius_px=6.0)
    assert _run(qtbot, widget) == "ok"
    rate = np.asarray(viewer.layers["rate [phi_h counts]"].data)
    inside = s["nucleus"] & np.isfinite(rate)
    assert np.corrcoef(rate[inside], s["rate"][inside])[0, 1] > 0.9
    assert np.median(np.abs(rate[inside] / s["rate"][inside] - 1)) < 0.05
    assert viewer.layers["phi_h counts"].data.dtype == np.uint16  # the input layer is untouched

    # bool (a binarised dense-chromatin mask as phi_h, as the authors' prototype did) is converted to 0/1 like
    # the API does: the same run as with the float 0/1 layer
    dense = s["phi_h"] > np.median(s["phi_h"])
    viewer.add_image(dense, name="dense bool", scale=(0.05, 0.05))
    viewer.add_image(dense.astype(float), name="dense float", scale=(0.05, 0.05))
    widget.input_combos["phi_e"].setCurrentText("phi_e counts")
    rates = {}
    for name in ("dense bool", "dense float"):
        widget.input_combos["phi_h"].setCurrentText(name)
        assert _run(qtbot, widget) == "ok"
        rates[name] = np.array(viewer.layers[f"rate [{name}]"].data)
    assert np.isfinite(rates["dense bool"]).sum() > 1000
    np.testing.assert_array_equal(rates["dense bool"], rates["dense float"])
    assert viewer.layers["dense bool"].data.dtype == bool


def test_no_pixel_size_metadata_says_which_default(make_napari_viewer, _plugin_registered, qtbot):
    from napari_mollifier.simulate import synthetic_nucleus

    s = synthetic_nucleus(shape=(96, 96), pixel_size=1.0, seed=3)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(s["phi_h"], name="h")  # scale 1, no units: a plain array
    viewer.add_image(s["phi_e"], name="e")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mollifier", "Rate maps")
    widget.input_combos["phi_h"].setCurrentText("h")
    widget.input_combos["phi_e"].setCurrentText("e")
    widget.coef_edits["l2"].setText(str(s["params"]["l2"]))
    _fast(widget, radius_px=6.0)
    n = _n_records()
    assert _run(qtbot, widget) == "ok"
    notes = _messages_since(n)
    assert any("no physical pixel size" in m and "1 px" in m and "scale" in m for m in notes), notes
    prov = viewer.layers["rate [h]"].metadata["provenance"]
    assert prov["pixel_size"] == [1.0, 1.0] or tuple(prov["pixel_size"]) == (1.0, 1.0)
    rate = np.asarray(viewer.layers["rate [h]"].data)
    inside = s["nucleus"] & np.isfinite(rate)
    assert np.corrcoef(rate[inside], s["rate"][inside])[0, 1] > 0.9


# ------------------------------------------------------------------------------------------- faults
def test_gpu_out_of_memory_is_reported(sample_viewer, qtbot, monkeypatch):
    """A CUDA out-of-memory error inside the solver (simulated): a notification with the fix, nothing added,
    the worker finished and the widget ready for the next run."""
    import torch

    import napari_mollifier

    viewer, widget = sample_viewer
    _fast(widget)
    real = napari_mollifier.infer_rates

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")

    monkeypatch.setattr(napari_mollifier, "infer_rates", oom)
    message = _expect_error(qtbot, viewer, widget, "out of memory", "ROI")
    assert "cpu" in message
    monkeypatch.setattr(napari_mollifier, "infer_rates", real)
    assert _run(qtbot, widget) == "ok"


@pytest.mark.slow
def test_second_run_is_refused_while_running(sample_viewer, qtbot):
    viewer, widget = sample_viewer
    _fast(widget, bootstrap=5)
    n = _n_records()
    with qtbot.waitSignal(widget.run_done, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run()
        worker = widget.worker
        assert worker is not None and not widget.run_button.isEnabled()
        widget.run()
        assert widget.worker is worker  # not replaced: never two writers to the same layers
    assert blocker.args[0] == "ok"
    assert any("already in progress" in m for m in _messages_since(n))
    assert _outputs(viewer).count(RATE) == 1


@pytest.mark.slow
def test_layer_deleted_while_running(sample_viewer, qtbot):
    """The run works on copies taken when Run was pressed: deleting its input, its ROI or its output layer
    mid-run neither crashes nor loses the result; the result says which layers it came from."""
    viewer, widget = sample_viewer
    px = float(viewer.layers[PHI_H].scale[-1])
    # a second visible image under the others: Mesa's software GL (swrast, CI) segfaults in napari 0.9.2 when the
    # deletions below leave one image on the canvas after the colour-bar layer is removed (reproduced without this
    # plugin: three images, a colour bar on the top one, remove it and then the bottom one); real GL does not
    viewer.add_image(np.zeros_like(viewer.layers[PHI_H].data), name="background", scale=viewer.layers[PHI_H].scale)
    viewer.layers.move(len(viewer.layers) - 1, 0)
    viewer.add_shapes([_nucleus_polygon_world(px)], shape_type="polygon", name="roi")
    widget.roi_combo.setCurrentText("roi")
    _fast(widget, bootstrap=0)
    assert _run(qtbot, widget) == "ok"
    first = np.array(viewer.layers[RATE].data)
    widget.uncertainty_combo.setCurrentText("bootstrap")
    widget.bootstrap_spin.setValue(10)  # a longer run, so that the deletions happen while it runs
    with qtbot.waitSignal(widget.run_done, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run()
        assert widget.is_running
        viewer.layers.remove(RATE)
        viewer.layers.remove("roi")
        viewer.layers.remove(PHI_E)
    assert blocker.args[0] == "ok"
    assert RATE in viewer.layers and PHI_E not in viewer.layers and "roi" not in viewer.layers
    again = np.asarray(viewer.layers[RATE].data)
    np.testing.assert_allclose(again, first, rtol=1e-12, equal_nan=True)
    meta = viewer.layers[RATE].metadata["provenance"]["widget"]
    assert meta["source_layers"]["phi_e"] == PHI_E and meta["roi_layer"] == "roi"
    # the deleted layers are gone from the choices; a run without an input says what to do
    assert widget.input_combos["phi_e"].findText(PHI_E) < 0


def test_close_viewer_while_running(make_napari_viewer, _plugin_registered, qtbot):
    """Closing the viewer mid-run stops the solver (within seconds), adds nothing and raises nothing."""
    from napari_mollifier._napari import widget as widget_module

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-mollifier", "nucleus")
    _, widget = viewer.window.add_plugin_dock_widget("napari-mollifier", "Rate maps")
    widget.method_combo.setCurrentText("network")
    widget.radius_auto.setChecked(False)
    widget.radius_value.setValue(10.0)
    widget.iterations_spin.setValue(100_000)
    widget.run()
    job = widget._job
    qtbot.waitUntil(lambda: "network fit" in widget.status_label.text(), timeout=RUN_TIMEOUT_MS)
    viewer.close()
    t0 = time.perf_counter()
    qtbot.waitUntil(lambda: job.thread is not None and not job.thread.is_alive(), timeout=60_000)
    print(f"solver stopped {time.perf_counter() - t0:.2f} s after the viewer closed")
    assert job.cancel.is_set()
    qtbot.wait(200)  # any late signal would land here
    assert _outputs(viewer) == [] and widget.last_results == []  # nothing was published into the closed viewer
    assert not any(t.name == "napari-mollifier-solve" and t.is_alive() for t in threading.enumerate())
    assert widget_module  # the module stays importable; no exception escaped (pytest-qt fails on those)


# ------------------------------------------------------------------------------------------- soak
def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * __import__("os").sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_soak_50_runs_in_one_viewer(make_napari_viewer, _plugin_registered, qtbot):
    """50 runs back to back in one viewer: the outputs are updated in place (no layer pile-up), the results stay
    identical, and the process memory stops growing after warm-up."""
    import torch

    from napari_mollifier.simulate import synthetic_nucleus

    s = synthetic_nucleus(shape=(64, 64), pixel_size=0.05, seed=4)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(s["phi_h"], name="phi_h", scale=(0.05, 0.05))
    viewer.add_image(s["phi_e"], name="phi_e", scale=(0.05, 0.05))
    _, widget = viewer.window.add_plugin_dock_widget("napari-mollifier", "Rate maps")
    widget.coef_edits["l2"].setText(str(s["params"]["l2"]))
    _fast(widget, radius_px=5.0)
    n_layers = None
    rss, cuda = [], []
    first = None
    for i in range(50):
        assert _run(qtbot, widget) == "ok", i
        if i == 0:
            n_layers = len(viewer.layers)
            first = np.array(viewer.layers["rate [phi_h]"].data)
        if i in (9, 29, 49):
            gc.collect()
            qtbot.wait(50)
            rss.append(_rss_bytes())
            if torch.cuda.is_available():
                cuda.append(torch.cuda.memory_allocated())
    assert len(viewer.layers) == n_layers
    np.testing.assert_array_equal(np.asarray(viewer.layers["rate [phi_h]"].data), first)
    growth = (rss[2] - rss[0]) / 1e6
    print(f"RSS after runs 10/30/50: {[round(r / 1e6, 1) for r in rss]} MB (growth 10->50: {growth:.1f} MB)")
    assert growth < 40, rss  # 40 runs after warm-up: < 1 MB per run (a leak of the 64x64 outputs would be more)
    if cuda:
        assert cuda[2] <= cuda[0] + 1 << 20, cuda


def test_network_method_is_warmed_up_off_the_viewer_thread(sample_viewer, qtbot):
    """Opening the widget loads the network method's lazy imports (torch.optim -> torch._dynamo, ~1.3 s) in a
    background thread, so the first network run does not stall the viewer with them
    (benchmarks/bench_widget_stall.py)."""
    import sys

    from napari_mollifier._napari import job as job_module

    qtbot.waitUntil(job_module._WARM_DONE.is_set, timeout=120_000)
    assert "torch._dynamo" in sys.modules
    assert job_module._warm_thread is not None and job_module._warm_thread is not threading.main_thread()
    assert not job_module._warm_thread.is_alive()


def test_finished_run_is_not_reported_cancelled_while_its_thread_exits(monkeypatch):
    """Regression (seen on a loaded machine): the solver thread sends "done" and is still returning when the
    worker checks it; a complete result must be published, not turned into "cancelled"."""
    import queue as queue_module

    from napari_mollifier._napari import job as job_module

    class LingeringQueue(queue_module.SimpleQueue):
        def put(self, item, *args, **kwargs):
            super().put(item, *args, **kwargs)
            if item is job_module._DONE:
                time.sleep(0.5)  # the solver thread is still alive when the worker reads "done"

    monkeypatch.setattr(job_module.queue, "SimpleQueue", LingeringQueue)
    monkeypatch.setattr(job_module, "_solve", lambda job, report: ["result"])
    job = job_module._Job(source_name="s", input_names={}, slices=[], out_lead_shape=(), geometry={},
                             kwargs={"method": "direct"}, unit="px", roi_name=None)
    gen = job_module._run_job(job)
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)
    outcome = stop.value.value
    assert outcome.status == "ok" and outcome.results == ["result"]
    assert not job.cancel.is_set()
