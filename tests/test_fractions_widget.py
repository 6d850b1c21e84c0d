"""The Rate maps widget's "Raw intensities" panel and its notes after a run, in a real napari viewer (xvfb-run).

Raw intensity layers are made from the synthetic nucleus (known fractions and rates) with different brightness
and offsets per channel; the panel converts them into phi_h / phi_e layers that become the inputs; a run from
them is labelled relative; a run with the box-unit l2 shows a warning notification about negative rates.
"""

from __future__ import annotations

import numpy as np
import pytest
from widget_support import _fast, _gui_skip_reason, _run  # noqa: F401 - shared with the widget tests

PLUGIN = "napari-mollifier"
_SKIP = _gui_skip_reason()
pytestmark = [pytest.mark.gui, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


def _warnings_since(n: int) -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [str(r.message) for r in notification_manager.records[n:] if r.severity == NotificationSeverity.WARNING]


def _n_records() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


@pytest.fixture
def raw_viewer(make_napari_viewer, _plugin_registered):  # noqa: F811
    from scipy import ndimage as ndi

    from napari_mollifier.examples import raw_intensities
    from napari_mollifier.simulate import synthetic_nucleus

    sample = synthetic_nucleus(shape=(128, 128), pixel_size=0.02, seed=3)
    raw = raw_intensities(sample, seed=5)
    viewer = make_napari_viewer(show=True)
    px = (0.02, 0.02)
    viewer.add_image(raw["h"], name="H3K9me3", scale=px, units=("um", "um"))
    viewer.add_image(raw["e"], name="H3K27ac", scale=px, units=("um", "um"))
    viewer.add_labels(sample["nucleus"].astype(np.int32), name="nucleus", scale=px)
    inner = ndi.distance_transform_edt(sample["nucleus"]) > 6
    viewer.add_labels(inner.astype(np.int32), name="roi", scale=px)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Rate maps")
    widget.model_combo.setCurrentText("chromatin-balance")
    widget.input_combos["phi_h"].setCurrentText("H3K9me3")
    widget.input_combos["phi_e"].setCurrentText("H3K27ac")
    widget.roi_combo.setCurrentText("roi")
    widget.coef_edits["l2"].setText(str(sample["params"]["l2"]))
    return viewer, widget, sample, raw, inner


def test_panel_converts_layers_and_run_is_relative(qtbot, raw_viewer):
    from napari_mollifier.fractions import intensities_to_fractions

    viewer, widget, sample, raw, inner = raw_viewer
    panel = widget.fractions_panel
    panel.nucleus_combo.setCurrentText("nucleus")
    before = {name: np.array(viewer.layers[name].data, copy=True) for name in ("H3K9me3", "H3K27ac")}
    layer_h, layer_e = panel.convert()
    for name, data in before.items():  # the raw layers are untouched
        np.testing.assert_array_equal(viewer.layers[name].data, data)
    assert widget.input_combos["phi_h"].currentText() == layer_h.name == "phi_h from H3K9me3"
    assert widget.input_combos["phi_e"].currentText() == layer_e.name == "phi_e from H3K27ac"
    assert tuple(layer_h.scale) == pytest.approx((0.02, 0.02))
    expected, record = intensities_to_fractions(raw["h"], raw["e"], nucleus=sample["nucleus"],
                                                mark_ratio="estimate", l2=sample["params"]["l2"],
                                                pixel_size=(0.02, 0.02))
    np.testing.assert_allclose(layer_h.data, expected["phi_h"], equal_nan=True)
    assert layer_h.metadata["mollifier_fractions"]["mark_ratio"] == pytest.approx(record["mark_ratio"])
    n = sample["nucleus"]
    assert np.corrcoef(layer_h.data[n], sample["phi_h"][n])[0, 1] >= 0.98

    _fast(widget, radius_px=16.0, bootstrap=0)
    start = _n_records()
    assert _run(qtbot, widget) == "ok"
    assert not [m for m in _warnings_since(start) if "negative" in m]
    assert "Level: relative" in widget.status_label.text()
    rate_layer = next(ly for ly in viewer.layers if ly.metadata.get("mollifier_output") == "rate")
    assert rate_layer.metadata["provenance"]["rate_level"] == "relative"
    rate = np.asarray(rate_layer.data)
    ok = inner & np.isfinite(rate)
    assert np.corrcoef(rate[ok], sample["rate"][ok])[0, 1] >= 0.95
    # issue 13: a relative level is shown as the relative map, labelled so; the absolute map stays in the result
    res = widget.last_results[0]
    assert res.relative and res.provenance["fractions"]["method"] == "intensities_to_fractions"
    solved = np.isfinite(rate)
    np.testing.assert_allclose(rate[solved], res.rate[solved] / np.median(res.rate[solved]), rtol=1e-6)
    assert np.median(rate[solved]) == pytest.approx(1.0)
    assert rate_layer.metadata["colorbar_label"] == "relative rate (λ / median)"
    assert widget.results_box.title() == "Per-ROI relative rate (λ / median)"
    assert widget.axes.get_xlabel() == "relative rate (λ / median)"
    assert widget.table.item(0, 3).text() == "1" and widget._rows[0]["quantity"] == "relative rate (lambda / median)"

    # the box-unit default l2 read as um^2: a warning notification naming the causes
    widget.coef_edits["l2"].setText("1.04")
    start = _n_records()
    assert _run(qtbot, widget) == "ok"
    warned = [m for m in _warnings_since(start) if "negative in" in m]
    assert warned and "coefficient units" in warned[0]
    # (the +inf uncertainty of the negative pixels is checked through the API in test_fractions.py)


def test_raw_layers_run_directly_are_flagged(qtbot, raw_viewer):
    """Raw intensities straight into the solver (the issue's first table row): warned, labelled relative."""
    viewer, widget, sample, raw, inner = raw_viewer
    _fast(widget, radius_px=8.0, bootstrap=0)
    start = _n_records()
    assert _run(qtbot, widget) == "ok"
    notes = _warnings_since(start)
    assert any("not volume fractions" in m and "Convert to fractions" in m for m in notes), notes
    assert "Level: relative" in widget.status_label.text()
