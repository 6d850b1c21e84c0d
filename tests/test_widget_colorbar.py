"""Issue 13, item 6: the rate, uncertainty and residual layers of a widget run show napari's colour bar,
titled with the quantity and its unit."""

from __future__ import annotations

import numpy as np
import pytest
from widget_support import _SKIP, PHI_E, PHI_H, PLUGIN, _fast, _run  # noqa: F401 - shared with the widget tests

pytestmark = [pytest.mark.gui, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


@pytest.fixture
def run_viewer(make_napari_viewer, _plugin_registered, qtbot):  # noqa: F811
    from napari_mollifier.simulate import synthetic_nucleus

    s = synthetic_nucleus(shape=(64, 64), pixel_size=0.02, seed=0, noise=0.01)
    viewer = make_napari_viewer(show=True)
    geo = {"scale": (0.02, 0.02), "units": ("µm", "µm")}
    viewer.add_image(s["phi_h"], name=PHI_H, **geo)
    viewer.add_image(s["phi_e"], name=PHI_E, **geo)
    viewer.add_labels(s["nucleus"].astype(np.uint8), name="nucleus", **geo)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Rate maps")
    widget.model_combo.setCurrentText("chromatin-balance")
    widget.input_combos["phi_h"].setCurrentText(PHI_H)
    widget.input_combos["phi_e"].setCurrentText(PHI_E)
    widget.roi_combo.setCurrentText("nucleus")
    widget.coef_edits["l2"].setText(str(s["params"]["l2"]))
    _fast(widget, radius_px=4, bootstrap=2)  # an uncertainty map needs n_bootstrap > 0
    widget.uncertainty_combo.setCurrentText("propagate")
    assert _run(qtbot, widget) == "ok", widget.status_label.text()
    return viewer, widget


LABELS = {
    f"rate [{PHI_H}]": "rate λ = Γ_me/Γ_ac (no unit)",
    f"uncertainty [{PHI_H}]": "uncertainty of λ (1 s.d., no unit)",
    f"residual [{PHI_H}]": "PDE residual (volume fraction)",
}


def _label(layer):
    overlay = layer._overlays.get("mollifier_colorbar_label")
    return None if overlay is None else overlay.text


def test_output_layers_show_a_labelled_colorbar(run_viewer, qtbot):
    viewer, widget = run_viewer
    for name, label in LABELS.items():
        layer = viewer.layers[name]
        assert layer.colorbar.visible, name
        assert layer.metadata["colorbar_label"] == label
        assert _label(layer) == label
    for key in ("phi_h", "phi_e"):  # the smoothed inputs keep napari's defaults
        layer = next(ly for ly in viewer.layers if ly.name.startswith(f"{key} smoothed"))
        assert not layer.colorbar.visible and _label(layer) is None
    # a second run updates the layers in place: still labelled, one label each
    assert _run(qtbot, widget) == "ok"
    rate = viewer.layers[f"rate [{PHI_H}]"]
    assert rate.colorbar.visible and _label(rate) == LABELS[rate.name]
    assert sum(k == "mollifier_colorbar_label" for k in rate._overlays) == 1


@pytest.mark.slow
def test_the_colorbar_is_drawn(run_viewer, qtbot):
    """On the canvas: switching the rate's colour bar (and its label) off changes the top-right corner only."""
    viewer, widget = run_viewer
    rate = viewer.layers[f"rate [{PHI_H}]"]
    viewer.layers[f"residual [{PHI_H}]"].visible = False
    qtbot.wait(100)
    on = viewer.screenshot(canvas_only=True, flash=False)
    rate.colorbar.visible = False
    rate._overlays["mollifier_colorbar_label"].visible = False
    qtbot.wait(100)
    off = viewer.screenshot(canvas_only=True, flash=False)
    h, w = on.shape[:2]
    changed = np.any(on != off, axis=-1)
    assert changed[: h // 3, w // 2:].mean() > 0.02  # the bar and its title, top right
    assert not changed[h // 2:, :].any()  # nothing else moved


def test_saved_and_reopened_maps_keep_their_titled_colorbar(run_viewer, qtbot, tmp_path):
    """The plugin's OME-TIFF writer keeps each map's colour-bar title; reopening through the plugin's reader in a
    viewer with the Rate maps dock shows the bar and its title again (docs/images/journey_5)."""
    from napari_mollifier._napari.io_hooks import read_tiff_layers, write_ome_tiff_layers

    viewer, _widget = run_viewer
    name = f"rate [{PHI_H}]"
    written = write_ome_tiff_layers(str(tmp_path / "rate.ome.tif"), [viewer.layers[name].as_layer_data_tuple()])
    viewer.layers.remove(name)
    for data, kwargs, _kind in read_tiff_layers(written[0]):
        layer = viewer.add_image(data, **kwargs)
    qtbot.wait(50)
    assert layer.metadata["colorbar_label"] == LABELS[name]
    assert layer.colorbar.visible and _label(layer) == LABELS[name]


def test_dock_renders_the_colour_bar_glyphs_before_any_run(make_napari_viewer, _plugin_registered, qtbot):  # noqa: F811
    """Opening the dock fills the canvas font atlas with the tick and title glyphs in idle turns, so that the first
    run's colour bars do not render them (~10-40 ms each) in the turns that show the result."""
    import warnings

    from napari_mollifier._napari.layer_style import quantity_label

    viewer = make_napari_viewer(show=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        info = viewer.window._qt_viewer.canvas.font_info()
        font = info.font_manager.get_font(info.face)
        glyphs = font._glyphs
    wanted = set("0123456789.-" + "".join(quantity_label(k, {"model": "chromatin"}, "µm")
                                          for k in ("rate", "uncertainty", "residual"))) - {" "}
    assert not wanted <= set(glyphs)  # a fresh canvas has not rendered them
    viewer.window.add_plugin_dock_widget(PLUGIN, "Rate maps")
    qtbot.waitUntil(lambda: wanted <= set(glyphs), timeout=30_000)
    assert not any(layer.colorbar.visible for layer in viewer.layers)  # no colour bar was drawn to get them
