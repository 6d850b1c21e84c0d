"""Widget side of issue 13: units policy for the coefficient fields, "Estimate from image", plausibility."""

from __future__ import annotations

import numpy as np
import pytest
from widget_support import _SKIP, PHI_E, PHI_H, PLUGIN, _fast, _run  # noqa: F401 - shared with the widget tests

pytestmark = [pytest.mark.gui, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


@pytest.fixture
def um_viewer(make_napari_viewer, _plugin_registered):  # noqa: F811
    """The sample's fields as plain um layers: no model metadata, so no coefficient comes from the layers."""
    from napari_mollifier.simulate import synthetic_nucleus

    s = synthetic_nucleus(shape=(128, 128), pixel_size=0.02, seed=0, noise=0.01)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(s["phi_h"], name=PHI_H, scale=(0.02, 0.02), units=("µm", "µm"))
    viewer.add_image(s["phi_e"], name=PHI_E, scale=(0.02, 0.02), units=("µm", "µm"))
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Rate maps")
    widget.model_combo.setCurrentText("chromatin-balance")
    widget.input_combos["phi_h"].setCurrentText(PHI_H)
    widget.input_combos["phi_e"].setCurrentText(PHI_E)
    return viewer, widget, s


def test_um_layers_get_no_box_unit_l2(um_viewer, qtbot):
    viewer, widget, s = um_viewer
    assert widget.coef_edits["l2"].text() == "auto"
    assert "box-unit default does not apply" in widget.coef_note.text()
    _fast(widget, radius_px=8)
    assert _run(qtbot, widget) == "ok"
    rate = next(ly for ly in viewer.layers if ly.name.startswith("rate"))
    prov = rate.metadata["provenance"]
    prov = prov[0] if isinstance(prov, list) else prov
    assert prov["param_sources"]["l2"].startswith("estimated")
    values = np.asarray(rate.data)[s["nucleus"]]
    assert abs(np.nanmedian(values) / np.median(s["rate"][s["nucleus"]]) - 1) <= 0.10


def test_estimate_from_image_button_fills_l2(um_viewer, qtbot):
    viewer, widget, s = um_viewer
    assert widget.estimate_button.isEnabled()
    widget.estimate_button.click()
    value = float(widget.coef_edits["l2"].text())
    assert value == pytest.approx(s["params"]["l2"], rel=0.25)
    assert "self-consistency" in widget.coef_note.text()
    widget.model_combo.setCurrentText("chromatin-phase-field")
    assert not widget.estimate_button.isEnabled()
    widget.model_combo.setCurrentText("chromatin-balance")
    widget.estimate_button.click()
    viewer.window._qt_window.resize(1366, 768)
    qtbot.wait(200)
    viewer.screenshot(str(_shot_dir() / "widget_estimate_l2.png"), canvas_only=False)


def _shot_dir():
    import tempfile
    from pathlib import Path

    path = Path(tempfile.gettempdir()) / "mollifier-issue13-shots"
    path.mkdir(exist_ok=True)
    return path


def test_detect_nucleus_button_adds_a_labels_roi(um_viewer, qtbot):
    viewer, widget, s = um_viewer
    widget.nucleus_button.click()
    layer = viewer.layers["nucleus (detected)"]
    mask = np.asarray(layer.data) > 0
    assert 2 * np.sum(mask & s["nucleus"]) / (mask.sum() + s["nucleus"].sum()) >= 0.95
    assert not np.any(mask & ~s["nucleus"])
    assert tuple(layer.scale) == (0.02, 0.02) and "otsu" in layer.metadata["nucleus_detection"]["description"]
    assert widget.roi_combo.currentText() == "nucleus (detected)"
    widget.coef_edits["l2"].setText(str(s["params"]["l2"]))
    _fast(widget, radius_px=6)
    assert _run(qtbot, widget) == "ok"
    rate = next(ly for ly in viewer.layers if ly.name.startswith("rate"))
    solved = np.isfinite(np.asarray(rate.data))
    assert solved.any() and not np.any(solved & ~s["nucleus"])  # no background pixel in the solve


def test_plausibility_notes_in_the_widget(um_viewer):
    viewer, widget, s = um_viewer
    for name in (PHI_H, PHI_E):
        viewer.layers[name].scale = (20.0, 20.0)  # nm thought, um written
    job = widget._collect_job()
    assert any("pixel size 20 um is implausible" in n for n in job.notes)
    assert any("more than 50 um" in n for n in job.notes)
    for name in (PHI_H, PHI_E):
        viewer.layers[name].scale = (0.02, 0.02)
    viewer.layers[PHI_H].data = 3 * viewer.layers[PHI_H].data
    job = widget._collect_job()
    assert any("outside [0, 1]" in n for n in job.notes)
