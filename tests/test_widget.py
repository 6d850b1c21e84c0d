"""The "Rate maps" dock widget in a real napari viewer (run under xvfb-run; see README.md).

Every run goes through the widget's napari ``thread_worker``; the tests wait on the widget's ``run_done`` signal
(emitted when the worker has finished and the widget is ready again). Runs use small settings (fixed radii, few
uncertainty samples, small images) except the ground-truth check, which uses the automatic radius.
"""

from __future__ import annotations

import csv
import os
import sys
import time

import numpy as np
import pytest
from widget_support import (  # noqa: F401 - shared with the other widget tests
    _SKIP,
    PHI_E,
    PHI_H,
    PLUGIN,
    RATE,
    REPO_ROOT,
    RES,
    RUN_TIMEOUT_MS,
    TRUTH,
    UNC,
    _assert_unchanged,
    _errors_since,
    _fast,
    _gui_skip_reason,
    _n_records,
    _nucleus_polygon_world,
    _run,
    _snapshot,
)

pytestmark = [pytest.mark.gui, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


# ---------------------------------------------------------------------------------------------------- tests
def test_widget_module_is_light():
    """Importing the widget module adds nothing heavy beyond the package, napari and Qt (matplotlib, the
    solver's network code... load when the widget is built or run)."""
    import subprocess

    code = (
        "import sys, napari_mollifier, napari.layers, napari.qt.threading, napari.utils.notifications\n"
        "import qtpy.QtWidgets\n"
        "before = set(sys.modules)\n"
        "import napari_mollifier._napari.widget\n"
        "new = set(sys.modules) - before\n"
        "heavy = sorted(m for m in new if m.split('.')[0] in ('matplotlib', 'skimage', 'torch', 'scipy')\n"
        "               or m.startswith('napari_mollifier.methods'))\n"
        "print(heavy)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout


def test_widget_defaults(sample_viewer):
    viewer, widget = sample_viewer
    from napari_mollifier.models import MODELS

    assert {k: c.currentText() for k, c in widget.input_combos.items()} == {"phi_h": PHI_H, "phi_e": PHI_E}
    models = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    assert "chromatin-balance" in models and set(models) <= set(MODELS)
    # coefficients in um from the sample's metadata, not the box-unit defaults
    assert float(widget.coef_edits["l2"].text()) == pytest.approx(0.0234)
    devices = [widget.device_combo.itemText(i) for i in range(widget.device_combo.count())]
    assert "cpu" in devices
    # one iterations default for the API, the CLI and the widget; 0 is refused as by the API
    from napari_mollifier.methods.network import DEFAULT_ITERATIONS

    assert widget.iterations_spin.value() == DEFAULT_ITERATIONS and widget.iterations_spin.minimum() == 1
    assert widget.roi_combo.currentText() == "(whole image)"
    assert not widget.all_slices.isEnabled()  # 2-D layers
    assert widget.radius_unit.itemText(1) == "µm"
    # the unit toggle converts the value: 10 px at 0.02 um/px = 0.2 um
    widget.radius_auto.setChecked(False)
    widget.radius_value.setValue(10.0)
    widget.radius_unit.setCurrentIndex(1)
    assert widget.radius_value.value() == pytest.approx(0.2)
    widget.radius_unit.setCurrentIndex(0)
    assert widget.radius_value.value() == pytest.approx(10.0)
    # outputs are never offered as inputs; a newly added image is
    viewer.add_image(np.zeros((8, 8)), name="extra")
    assert widget.input_combos["phi_h"].findText("extra") >= 0
    assert widget.input_combos["phi_h"].currentText() == PHI_H


def test_direct_run_with_shapes_roi_matches_truth(sample_viewer, qtbot, tmp_path):
    viewer, widget = sample_viewer
    image = viewer.layers[PHI_H]
    px = float(image.scale[-1])
    viewer.add_shapes([_nucleus_polygon_world(px)], shape_type="polygon", name="roi",
                      edge_color="yellow", face_color="transparent")
    widget.roi_combo.setCurrentText("roi")
    widget.radius_auto.setChecked(True)
    widget.bootstrap_spin.setValue(2)
    before = _snapshot(viewer)

    assert _run(qtbot, widget) == "ok", widget.status_label.text()

    names = [ly.name for ly in viewer.layers]
    for name in (RATE, UNC, RES, f"phi_h smoothed [{PHI_H}]", f"phi_e smoothed [{PHI_E}]"):
        assert name in names, names
    # inputs untouched
    for name, data in before.items():
        np.testing.assert_array_equal(np.asarray(viewer.layers[name].data), data)

    rate = viewer.layers[RATE]
    for name in (RATE, UNC, RES):
        layer = viewer.layers[name]
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
        assert tuple(layer.axis_labels) == tuple(image.axis_labels)
        assert [str(u) for u in layer.units] == [str(u) for u in image.units]
        prov = layer.metadata["provenance"]
        assert prov["model"] == "chromatin-balance" and prov["method"] == "direct"
        assert prov["widget"]["roi_layer"] == "roi"
    assert rate.colormap.name == "viridis" and viewer.layers[UNC].colormap.name == "magma"
    assert viewer.layers[RES].colormap.name == "PiYG"
    assert not viewer.layers[f"phi_h smoothed [{PHI_H}]"].visible
    assert not viewer.layers[UNC].visible  # not switched on underneath the rate map
    finite = rate.data[np.isfinite(rate.data)]
    np.testing.assert_allclose(rate.contrast_limits, np.percentile(finite, [2, 98]))
    lo, hi = viewer.layers[RES].contrast_limits
    assert lo == pytest.approx(-hi)

    # NaN outside the ROI, the truth inside it
    from skimage.draw import polygon

    roi = np.zeros(image.data.shape, bool)
    rr, cc = polygon([90, 90, 166, 166], [80, 176, 176, 80], roi.shape)
    roi[rr, cc] = True
    assert np.isnan(rate.data[~roi]).all()
    inside = roi & np.isfinite(rate.data)
    assert inside.sum() >= 0.95 * roi.sum()
    truth = np.asarray(viewer.layers[TRUTH].data)
    r = np.corrcoef(rate.data[inside], truth[inside])[0, 1]
    print(f"auto radius {widget.last_results[0].radius:g} px: Pearson r = {r:.4f} inside the ROI")
    assert r >= 0.9

    # table, device, CSV, histogram
    assert widget.table.rowCount() == 1
    row = widget.last_results[0].roi_stats[0]
    assert widget.table.item(0, 0).text() == "1"
    assert float(widget.table.item(0, 1).text()) == pytest.approx(row["area"], rel=1e-3)
    assert row["area"] == pytest.approx(roi.sum() * px * px, rel=0.02)
    assert widget.table.horizontalHeaderItem(1).text() == "area (µm²)"
    assert widget.device_label.text() == f"Ran on: {rate.metadata['provenance']['device']}"
    path = widget.export_csv(tmp_path / "rois.csv")
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == 1 and rows[0]["label"] == "1" and rows[0]["area_unit"] == "µm^2"
    assert float(rows[0]["median"]) == pytest.approx(row["median"])
    assert len(widget.axes.patches) > 0

    # re-running updates the same output layers, never adds new ones
    n_layers = len(viewer.layers)
    old_data = np.array(rate.data, copy=True)
    _fast(widget, radius_px=8.0, bootstrap=2)
    assert _run(qtbot, widget) == "ok"
    assert len(viewer.layers) == n_layers
    assert viewer.layers[RATE] is rate
    assert not np.allclose(np.nan_to_num(rate.data), np.nan_to_num(old_data))
    assert rate.metadata["provenance"]["radius"] == pytest.approx(8.0)


@pytest.mark.slow
def test_cancel_network_run(sample_viewer, qtbot, monkeypatch):
    viewer, widget = sample_viewer
    from napari.utils.notifications import notification_manager

    px = float(viewer.layers[PHI_H].scale[-1])
    viewer.add_shapes([_nucleus_polygon_world(px)], shape_type="polygon", name="roi")
    widget.roi_combo.setCurrentText("roi")
    widget.method_combo.setCurrentText("network")
    widget.radius_auto.setChecked(False)
    widget.radius_value.setValue(10.0)
    widget.iterations_spin.setValue(100_000)
    before = _snapshot(viewer)
    n_notes = len(notification_manager.records)

    with qtbot.waitSignal(widget.run_done, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run()
        assert widget.is_running and not widget.run_button.isEnabled()
        worker = widget.worker
        widget.run()  # a second run is refused while one runs
        assert widget.worker is worker
        # the first network iteration has reported: cancel is now checked after every iteration
        qtbot.waitUntil(lambda: "network fit" in widget.status_label.text(), timeout=RUN_TIMEOUT_MS)
        from napari_mollifier._napari.runner import TASK_LIST_DELAY_S

        qtbot.wait(int(TASK_LIST_DELAY_S * 1000) + 300)
        assert widget._task_bar is None  # not in napari's task list by default (its animation slows runs, issue 15)
        t0 = time.perf_counter()
        qtbot.mouseClick(widget.cancel_button, _left_button())
    stopped_after = time.perf_counter() - t0
    print(f"cancel -> ready: {stopped_after:.2f} s")
    assert blocker.args[0] == "cancelled"
    assert stopped_after < 10  # one network iteration (~1.3 s on 2 busy cores), plus slack for loaded CI
    _assert_unchanged(viewer, before)
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    messages = [str(r.message) for r in notification_manager.records[n_notes:]]
    assert any("cancelled" in m for m in messages), messages

    # napari's task list (switched on) lists a run still going after the delay, and cancels through
    # worker.quit(): same outcome
    monkeypatch.setenv("NAPARI_MOLLIFIER_TASK_LIST", "1")
    with qtbot.waitSignal(widget.run_done, timeout=RUN_TIMEOUT_MS) as blocker:
        widget.run()
        qtbot.waitUntil(lambda: "network fit" in widget.status_label.text(), timeout=RUN_TIMEOUT_MS)
        qtbot.waitUntil(lambda: widget._task_bar is not None, timeout=int(TASK_LIST_DELAY_S * 1000) + 10_000)
        widget.worker.quit()
    assert blocker.args[0] == "cancelled"
    _assert_unchanged(viewer, before)

    # ready for another run
    _fast(widget, radius_px=10.0)
    assert _run(qtbot, widget) == "ok"
    assert RATE in viewer.layers


def _left_button():
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton


def test_labels_roi_with_other_scale_gives_two_rows(sample_viewer, qtbot):
    viewer, widget = sample_viewer
    image = viewer.layers[PHI_H]
    px = float(image.scale[-1])
    # labels at half the resolution, shifted by 10 image pixels: label pixel (i, j) covers image pixels
    # y = 2 i + 10 - 0.5 .. 2 i + 10 + 1.5 (centres 2i+10 and 2i+11)
    labels = np.zeros((128, 128), np.int32)
    labels[40:55, 35:50] = 1
    labels[60:75, 55:70] = 2
    viewer.add_labels(labels, name="nuclei", scale=(2 * px, 2 * px), translate=(10.5 * px, 10.5 * px))
    widget.roi_combo.setCurrentText("nuclei")
    _fast(widget, radius_px=10.0)

    assert _run(qtbot, widget) == "ok", widget.status_label.text()
    assert widget.table.rowCount() == 2
    assert [widget.table.item(r, 0).text() for r in range(2)] == ["1", "2"]

    expected = np.zeros(image.data.shape, np.int32)
    expected[90:120, 80:110] = 1  # label rows 40..54 -> image rows 2*40+10 .. 2*54+11
    expected[130:160, 120:150] = 2
    rate = viewer.layers[RATE].data
    np.testing.assert_array_equal(np.isfinite(rate), expected > 0)
    np.testing.assert_array_equal(widget.last_results[0].labels, expected)
    areas = [float(widget.table.item(r, 1).text()) for r in range(2)]
    np.testing.assert_allclose(areas, [900 * px * px] * 2, rtol=1e-3)

@pytest.mark.slow  # in CI's full run; out of the development run (under 5 min, CONTRIBUTING)

def test_whole_image_run_uses_the_detected_nucleus(sample_viewer, qtbot):
    """Issue 15: "(whole image)" on the sample (a nucleus with surroundings) solves inside the nucleus the CLI
    detects, shows that mask as a Labels layer on the image's grid and says so; the whole image stays a choice."""
    from napari.utils.notifications import notification_manager

    from napari_mollifier import infer_rates
    from napari_mollifier._napari.widget import DETECTED_NUCLEUS, WHOLE_IMAGE, WHOLE_IMAGE_ALL
    from napari_mollifier.nucleus import detect_nucleus

    viewer, widget = sample_viewer
    image = viewer.layers[PHI_H]
    truth_mask = viewer.layers[TRUTH].metadata["nucleus_mask"]
    assert widget.roi_combo.currentText() == WHOLE_IMAGE and widget.roi_combo.findText(WHOLE_IMAGE_ALL) >= 0
    _fast(widget, radius_px=8.0)
    n = _n_records()
    assert _run(qtbot, widget) == "ok", widget.status_label.text()

    fields = {k: np.asarray(viewer.layers[name].data, dtype=np.float64) for k, name in (("phi_h", PHI_H),
                                                                                       ("phi_e", PHI_E))}
    mask, info = detect_nucleus(fields)
    expected = infer_rates(fields, roi=mask.astype(np.int32), **widget._last_job.kwargs)
    rate = np.asarray(viewer.layers[RATE].data)
    np.testing.assert_array_equal(rate, expected.rate)
    solved = np.isfinite(rate)
    assert solved.sum() > 0.9 * mask.sum() and not np.any(solved & ~truth_mask)  # no background pixel solved
    truth = np.asarray(viewer.layers[TRUTH].data)
    assert np.median(np.abs(rate[solved] - truth[solved]) / truth[solved]) < 0.1

    shown = viewer.layers[DETECTED_NUCLEUS]
    np.testing.assert_array_equal(np.asarray(shown.data) > 0, mask)
    np.testing.assert_allclose(shown.scale, image.scale)
    np.testing.assert_allclose(shown.translate, image.translate)
    assert tuple(str(u) for u in shown.units) == tuple(str(u) for u in image.units)
    assert shown.metadata["nucleus_detection"]["threshold"] == pytest.approx(info["threshold"])
    told = f"solved inside the detected nucleus ({int(mask.sum())} px)"
    assert told in widget.status_label.text().lower(), widget.status_label.text()
    assert any(told in str(r.message) for r in notification_manager.records[n:])
    prov = viewer.layers[RATE].metadata["provenance"]["widget"]
    assert prov["roi_source"] == "detected" and prov["roi_layer"] == DETECTED_NUCLEUS
    assert widget.roi_combo.currentText() == WHOLE_IMAGE  # not switched to the mask: decided again every run

    # a second run updates the same layer; the whole image on purpose solves the background too
    assert _run(qtbot, widget) == "ok"
    assert [ly.name for ly in viewer.layers].count(DETECTED_NUCLEUS) == 1
    widget.roi_combo.setCurrentText(WHOLE_IMAGE_ALL)
    assert _run(qtbot, widget) == "ok"
    everything = infer_rates(fields, roi=None, **widget._last_job.kwargs)
    np.testing.assert_array_equal(np.asarray(viewer.layers[RATE].data), everything.rate)
    assert np.isfinite(everything.rate[~truth_mask]).mean() > 0.9
    assert "detected nucleus" not in widget.status_label.text()


def test_shapes_roi_other_scale_translate_lands_in_place(make_napari_viewer, _plugin_registered):
    """ROI rasterisation through world coordinates (no solver run)."""
    from napari_mollifier._napari.rois import roi_labels

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((100, 120)), scale=(0.5, 0.5), translate=(3.0, -2.0), name="img")
    # a rectangle covering image pixels rows 20..39, cols 30..59 (centres), drawn in a shapes layer whose
    # data coordinates are scaled by 0.25 and shifted by (1, 1) world units
    y0, y1, x0, x1 = 20, 39, 30, 59
    world = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) * 0.5 + np.array([3.0, -2.0])
    shapes = viewer.add_shapes([(world - 1.0) / 0.25], shape_type="rectangle", scale=(0.25, 0.25),
                               translate=(1.0, 1.0), name="rect")
    labels, notes = roi_labels(shapes, image, image.data.shape)
    assert notes == []
    expected = np.zeros(image.data.shape, bool)
    expected[y0:y1 + 1, x0:x1 + 1] = True
    np.testing.assert_array_equal(labels > 0, expected)

    # an ellipse and a polygon: one label each, in order
    shapes.add_ellipses(np.array([[70, 40], [70, 80], [90, 80], [90, 40]]) * 0.5 / 0.25)
    labels, _ = roi_labels(shapes, image, image.data.shape)
    assert sorted(np.unique(labels)) == [0, 1, 2]
    ys, xs = np.nonzero(labels == 2)
    centre_world = np.array([80, 60]) * 0.5 / 0.25 * 0.25 + 1.0
    centre_px = (centre_world - np.array([3.0, -2.0])) / 0.5
    np.testing.assert_allclose([ys.mean(), xs.mean()], centre_px, atol=0.5)

    # a Labels layer on a coarser, shifted grid, resampled through world coordinates
    coarse = np.zeros((20, 20), np.int32)
    coarse[5:8, 4:6] = 3
    lab_layer = viewer.add_labels(coarse, scale=(2.0, 2.0), translate=(3.0 + 0.75, -2.0 + 0.75))
    labels, _ = roi_labels(lab_layer, image, image.data.shape)
    expected = np.zeros(image.data.shape, np.int32)
    expected[20:32, 16:24] = 3  # coarse pixel k covers image pixels 4k .. 4k+3
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.slow
def test_stack_all_slices_and_current_slice(make_napari_viewer, _plugin_registered, qtbot):
    from napari_mollifier.simulate import synthetic_nucleus

    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Rate maps")
    sims = [synthetic_nucleus(shape=(64, 64), pixel_size=0.02, seed=s, noise=0.0) for s in range(3)]
    px = 0.02
    kw = {"scale": (0.5, px, px), "translate": (2.0, 0.0, 0.0)}
    viewer.add_image(np.stack([s["phi_h"] for s in sims]), name="h stack", **kw)
    viewer.add_image(np.stack([s["phi_e"] for s in sims]), name="e stack", **kw)
    widget.input_combos["phi_h"].setCurrentText("h stack")
    widget.input_combos["phi_e"].setCurrentText("e stack")
    widget.coef_edits["l2"].setText(str(sims[0]["params"]["l2"]))
    assert widget.all_slices.isEnabled()
    widget.all_slices.setChecked(True)
    _fast(widget, radius_px=6.0)

    assert _run(qtbot, widget) == "ok", widget.status_label.text()
    rate = viewer.layers["rate [h stack]"]
    assert rate.data.shape == (3, 64, 64)
    np.testing.assert_allclose(rate.scale, kw["scale"])
    np.testing.assert_allclose(rate.translate, kw["translate"])
    assert widget.table.rowCount() == 3 and widget.table.horizontalHeaderItem(0).text() == "slice"
    assert len(rate.metadata["provenance"]["per_slice"]) == 3
    stack = np.array(rate.data, copy=True)
    from napari_mollifier._napari.widget import DETECTED_NUCLEUS
    from napari_mollifier.nucleus import detect_nucleus

    nucleus = viewer.layers[DETECTED_NUCLEUS]  # "(whole image)": each slice in its own detected nucleus
    assert nucleus.data.shape == (3, 64, 64)
    np.testing.assert_allclose(nucleus.scale, kw["scale"])
    np.testing.assert_allclose(nucleus.translate, kw["translate"])
    for k in range(3):  # each slice is its own image's map
        mask = detect_nucleus({"phi_h": sims[k]["phi_h"], "phi_e": sims[k]["phi_e"]})[0]
        np.testing.assert_array_equal(np.asarray(nucleus.data[k]) > 0, mask)
        finite = np.isfinite(stack[k])
        assert finite.sum() > 0.9 * mask.sum() and not np.any(finite & ~sims[k]["nucleus"])
    assert not np.allclose(np.nan_to_num(stack[0]), np.nan_to_num(stack[1]))

    # current slice only: slice 1 of the viewer -> one slice, placed at slice 1
    widget.all_slices.setChecked(False)
    viewer.dims.set_point(0, 2.0 + 0.5 * 1)
    assert _run(qtbot, widget) == "ok"
    rate = viewer.layers["rate [h stack]"]
    assert rate.data.shape == (1, 64, 64)
    np.testing.assert_allclose(rate.translate, (2.5, 0.0, 0.0))
    np.testing.assert_allclose(rate.data[0], stack[1], equal_nan=True)
    assert nucleus.data.shape == (1, 64, 64)  # the same layer, now on the slice solved
    np.testing.assert_allclose(nucleus.translate, (2.5, 0.0, 0.0))
    _assert_dims_current(viewer)

    # the same slice again: every output updated in place on the same grid (the viewer's dimension update is
    # skipped for those data sets, results._same_extent_data): the viewer's dimensions stay what napari computes
    viewer.dims.set_point(0, 2.0 + 0.5 * 2)
    assert _run(qtbot, widget) == "ok"
    assert viewer.layers["rate [h stack]"] is rate and rate.data.shape == (1, 64, 64)
    np.testing.assert_allclose(rate.translate, (3.0, 0.0, 0.0))
    np.testing.assert_allclose(rate.data[0], stack[2], equal_nan=True)
    _assert_dims_current(viewer)
    assert _run(qtbot, widget) == "ok"  # and once more with nothing changed but the data
    np.testing.assert_allclose(rate.data[0], stack[2], equal_nan=True)
    _assert_dims_current(viewer)


def _assert_dims_current(viewer):
    """The viewer's dimension ranges are what napari computes from its layers now (nothing left stale)."""
    ranges = tuple(viewer.dims.range)
    viewer._on_layers_change()  # napari's own recomputation
    assert tuple(viewer.dims.range) == ranges


def test_errors_notify_and_add_nothing(sample_viewer, qtbot):
    viewer, widget = sample_viewer
    px = float(viewer.layers[PHI_H].scale[-1])

    # an ROI outside the image (caught before the run starts)
    viewer.add_shapes([_nucleus_polygon_world(px) + 100.0], shape_type="polygon", name="far away")
    widget.roi_combo.setCurrentText("far away")
    _fast(widget)
    before, n = _snapshot(viewer), _n_records()
    assert _run(qtbot, widget) == "error"
    errors = _errors_since(n)
    assert errors and "covers no pixel" in errors[-1] and "whole image" in errors[-1], errors
    _assert_unchanged(viewer, before)

    # a constant image
    viewer.add_image(np.full(viewer.layers[PHI_H].data.shape, 0.3), name="flat", scale=viewer.layers[PHI_H].scale,
                     units=viewer.layers[PHI_H].units)
    widget.input_combos["phi_e"].setCurrentText("flat")
    widget.roi_combo.setCurrentText("(whole image)")
    before, n = _snapshot(viewer), _n_records()
    assert _run(qtbot, widget) == "error"
    errors = _errors_since(n)
    assert errors and "constant" in errors[-1], errors
    _assert_unchanged(viewer, before)

    # an error raised inside the solver, in the worker thread: radius larger than the image
    widget.input_combos["phi_e"].setCurrentText(PHI_E)
    widget.radius_value.setValue(5000.0)
    before, n = _snapshot(viewer), _n_records()
    assert _run(qtbot, widget) == "error"
    errors = _errors_since(n)
    assert errors and "radius" in errors[-1] and "smaller" in errors[-1], errors
    _assert_unchanged(viewer, before)
    assert widget.run_button.isEnabled() and not widget.is_running


def test_many_roi_vertices_map_as_one_per_point_call():
    """An ellipse outline (128 vertices) maps to the image grid through one affine read off a few probes: the
    same coordinates as one napari transform call per vertex, on rotated, sheared, scaled, translated layers."""
    from napari.layers import Image, Shapes

    from napari_mollifier._napari.rois import _to_data, _to_world

    image = Image(np.zeros((3, 40, 50)), scale=(1.0, 0.5, 0.25), translate=(0.0, 3.0, -2.0))
    shapes = Shapes(scale=(0.3, 0.7), translate=(1.5, -0.5), rotate=17.0, shear=[0.2])
    t = np.linspace(0, 2 * np.pi, 128, endpoint=False)[:, None]
    outline = np.array([20.0, 30.0]) + np.cos(t) * [6.0, 1.0] + np.sin(t) * [-2.0, 9.0]
    world = _to_world(shapes, outline)
    per_point = np.array([shapes.data_to_world(p) for p in outline], dtype=float)
    np.testing.assert_allclose(world, per_point, rtol=0, atol=1e-9)
    np.testing.assert_allclose(_to_data(image, world), np.array([image.world_to_data(p) for p in world]),
                               rtol=0, atol=1e-9)


def test_roi_rasterised_once_per_polygon_and_grid():
    """Each Run rasterises its ROI again; the same polygon on the same grid reuses the mask: the pixels skimage
    gives (centres inside), a fresh writable array each time, and a moved vertex or another grid rasterised anew."""
    from skimage.draw import polygon

    from napari_mollifier._napari.rois import _rasterise_cached, _rasterise_polygon

    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    yx = np.stack([30 + 11.3 * np.cos(t), 25 + 9.7 * np.sin(t)], axis=1)

    def truth(vertices, shape):
        mask = np.zeros(shape, bool)
        rr, cc = polygon(vertices[:, 0], vertices[:, 1], shape=shape)
        mask[rr, cc] = True
        return mask

    _rasterise_cached.cache_clear()
    first = _rasterise_polygon(yx, (60, 50))
    first[:] = False  # the caller's copy: the cached mask is untouched
    again = _rasterise_polygon(yx.copy(), [60, 50])
    np.testing.assert_array_equal(again, truth(yx, (60, 50)))
    assert again.flags.writeable and _rasterise_cached.cache_info().hits == 1
    moved = yx + [0.6, 0.0]
    np.testing.assert_array_equal(_rasterise_polygon(moved, (60, 50)), truth(moved, (60, 50)))
    np.testing.assert_array_equal(_rasterise_polygon(yx, (40, 50)), truth(yx, (40, 50)))
    assert _rasterise_cached.cache_info().misses == 3


def test_in_place_update_keeps_the_viewer_dims_current(make_napari_viewer, _plugin_registered):
    """An output layer updated in place skips napari's dimension update only when its extent stays the same: a new
    shape or grid still reaches the viewer's dimension ranges (results._same_extent_data)."""
    from types import SimpleNamespace

    from napari_mollifier._napari.collect import _geometry

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Rate maps")
    ref = viewer.add_image(np.zeros((40, 30)), name="ref", scale=(0.5, 0.5))
    job = SimpleNamespace(geometry=_geometry(ref), source_name="ref", unit="px")
    viewer.layers.remove(ref)
    show = widget._set_output("rate [ref]", "rate", np.ones((40, 30)), job, {}, None)
    show()  # a new layer is inserted hidden, and shown in the next event-loop turn
    layer = viewer.layers["rate [ref]"]
    assert layer.visible and tuple(viewer.dims.range[0])[1] == pytest.approx(19.5)
    widget._set_output("rate [ref]", "rate", np.ones((80, 30)), job, {}, None)  # in place, a new shape
    assert viewer.layers["rate [ref]"] is layer and layer.data.shape == (80, 30)
    assert tuple(viewer.dims.range[0])[1] == pytest.approx(39.5)
    _assert_dims_current(viewer)
    job.geometry = dict(job.geometry, scale=(1.0, 1.0))
    widget._set_output("rate [ref]", "rate", np.full((80, 30), 2.0), job, {}, None)  # in place, a new grid
    assert tuple(viewer.dims.range[0])[1] == pytest.approx(79.0)
    _assert_dims_current(viewer)
    widget._set_output("rate [ref]", "rate", np.full((80, 30), 3.0), job, {}, None)  # in place, the same extent
    assert float(layer.data[0, 0]) == 3.0
    _assert_dims_current(viewer)
