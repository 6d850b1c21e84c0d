"""A biologist's whole journey through both dock widgets, in one real napari window at 1366 x 768 (Xvfb).

sample -> ROI -> Run -> domains on a simulated localisation table -> hand-off -> Rate maps -> save -> reopen.
Small settings where the default is not the point (fixed radius, no uncertainty samples, a small nucleus).
"""

from __future__ import annotations

import numpy as np
import pytest
from widget_support import _gui_skip_reason  # noqa: F401 - shared with the widget tests

PLUGIN = "napari-mollifier"
TIMEOUT_MS = 300_000
PHI_H, PHI_E = "heterochromatin (phi_h)", "euchromatin (phi_e)"

_SKIP = _gui_skip_reason(extra=("sklearn",))
pytestmark = [pytest.mark.gui, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


def _run(qtbot, widget):
    with qtbot.waitSignal(widget.run_done, timeout=TIMEOUT_MS) as blocker:
        widget.run()
    return blocker.args[0]


def _errors_since(n):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [str(r.message) for r in notification_manager.records[n:] if r.severity == NotificationSeverity.ERROR]


def _n_records():
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


@pytest.mark.slow
def test_journey_sample_roi_domains_handoff_save_reopen(make_napari_viewer, _plugin_registered, qtbot, tmp_path):
    from napari_mollifier import infer_rates
    from napari_mollifier.domains.synthetic import lattice_nucleus

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1366, 768)

    # 1. the sample, the Rate maps dock: the window still fits a 768 px screen, advanced settings are folded
    viewer.open_sample(PLUGIN, "nucleus")
    _, rates = viewer.window.add_plugin_dock_widget(PLUGIN, "Rate maps")
    qtbot.wait(50)
    assert window.height() <= 768 and window.minimumSizeHint().height() <= 768
    assert rates.scroll_area.widget() is not None and not rates.advanced.is_expanded()
    assert rates.roi_combo.currentText() == "(whole image)"
    assert not rates.canvas.isVisible()  # no empty histogram axes before a run

    # 2. an ROI drawn as a Shapes layer is picked by the ROI box
    phi_h = viewer.layers[PHI_H]
    px = float(phi_h.scale[-1])
    ellipse = np.array([[80, 80], [80, 176], [176, 176], [176, 80]], float) * px
    viewer.add_shapes([ellipse], shape_type="ellipse", name="nucleus ROI", face_color="transparent",
                      units=phi_h.units)
    assert rates.roi_combo.currentText() == "nucleus ROI"

    # 3. run (fixed radius, no uncertainty): rate shown on top, uncertainty hidden, table in µm²
    rates.radius_auto.setChecked(False)
    rates.radius_unit.setCurrentIndex(0)
    rates.radius_value.setValue(8.0)
    rates.bootstrap_spin.setValue(0)
    assert _run(qtbot, rates) == "ok", rates.status_label.text()
    rate = viewer.layers[f"rate [{PHI_H}]"]
    assert rate.visible and not viewer.layers[f"residual [{PHI_H}]"].visible  # under the rate: hidden
    assert f"phi_e smoothed [{PHI_E}]" in viewer.layers  # named after its own input
    assert "area (µm²)" in [rates.table.horizontalHeaderItem(c).text() for c in range(rates.table.columnCount())]
    assert [str(u) for u in rate.units] == ["micrometer", "micrometer"]

    # 4. domains on a simulated localisation table (ThunderSTORM-style CSV)
    s = lattice_nucleus(seed=3, semi_axes_nm=(1600.0, 1300.0), centre_nm=(2500.0, 2500.0))
    table = tmp_path / "cell.csv"
    np.savetxt(table, np.column_stack([s["x"], s["y"]]), delimiter=",", header="x [nm],y [nm]", comments="")
    _, domains = viewer.window.add_plugin_dock_widget(PLUGIN, "Heterochromatin domains")
    assert window.height() <= 768
    domains.source_combo.setCurrentText("(table file)")
    domains.path_edit.setText(str(table))
    assert not domains.points_unit.isVisibleTo(domains)  # only for a Points source
    assert _run(qtbot, domains) == "done", domains.status_label.text()
    res = domains.result
    assert res.summary["n_domains"] == pytest.approx(s["n_domains"], rel=0.05)
    assert not viewer.layers["localisations [cell]"].visible
    h_name, e_name = "phi_h [cell]", "phi_e [cell]"
    for name in ("domains [cell]", "nucleus [cell]", h_name, e_name, "lambda [cell]"):
        assert [str(u) for u in viewer.layers[name].units] == ["micrometer", "micrometer"], name
        np.testing.assert_allclose(viewer.layers[name].scale, (0.02, 0.02))
    assert domains.table.horizontalHeaderItem(1).text() == "Radius (nm)"

    # 5. hand-off: Rate maps switches to the domains' fields and nucleus, with l2 from the domains (µm²)
    assert rates.input_combos["phi_h"].currentText() == h_name
    assert rates.input_combos["phi_e"].currentText() == e_name
    assert rates.roi_combo.currentText() == "nucleus [cell]"
    l2 = float(rates.coef_edits["l2"].text())
    gamma = res.table["gamma_ac"][np.isfinite(res.table["gamma_ac"])]
    assert l2 == pytest.approx(1.0 / np.median(gamma), rel=1e-4)  # D = 1 µm²/s: l2 = D / Γac, in µm²
    assert "µm²" in rates.coef_form.labelForField(rates.coef_edits["l2"]).text()
    assert _run(qtbot, rates) == "ok", rates.status_label.text()
    out = viewer.layers[f"rate [{h_name}]"]
    fields = {"phi_h": np.asarray(viewer.layers[h_name].data, float),
              "phi_e": np.asarray(viewer.layers[e_name].data, float)}
    api = infer_rates(fields, params={"l2": l2}, pixel_size=(0.02, 0.02), radius=8.0,
                      roi=np.asarray(viewer.layers["nucleus [cell]"].data), n_bootstrap=0, device="cpu")
    np.testing.assert_allclose(out.data, api.rate, rtol=1e-5, atol=1e-8, equal_nan=True)
    assert np.isfinite(out.data).mean() > 0.3
    headers = [rates.table.horizontalHeaderItem(c).text() for c in range(rates.table.columnCount())]
    assert "area (µm²)" in headers
    area = float(rates.table.item(0, headers.index("area (µm²)")).text())
    assert area == pytest.approx(np.pi * 1.6 * 1.3, rel=0.15)  # the nucleus, in µm² (not px², not 1e6 nm²)

    # 6. bad hand-off: a field that lost its unit, a field on another grid -> refused, named, nothing changed
    n_layers = len(viewer.layers)
    bad = viewer.add_image(fields["phi_e"], name="phi_e no unit", scale=(0.02, 0.02),
                           metadata={"field": "phi_e", "mollifier_domains": True})
    rates.input_combos["phi_e"].setCurrentText("phi_e no unit")
    n = _n_records()
    assert _run(qtbot, rates) == "error"
    errs = _errors_since(n)
    assert errs and "phi_e no unit" in errs[-1] and "Fix" in errs[-1]
    bad.units = ("um", "um")
    bad.scale = (0.04, 0.04)
    n = _n_records()
    assert _run(qtbot, rates) == "error"
    errs = _errors_since(n)
    assert errs and "phi_e no unit" in errs[-1] and "same pixel grid" in errs[-1]
    assert len(viewer.layers) == n_layers + 1
    np.testing.assert_array_equal(out.data, api.rate)  # the earlier map is untouched
    viewer.layers.remove(bad)
    rates.input_combos["phi_e"].setCurrentText(e_name)

    # 7. save with the plugin's OME-TIFF writer, reopen: scale, units, colormap and contrast limits are back
    saved = rates.save_maps(tmp_path / "handoff_rates")
    assert saved.name.endswith(".ome.tif")
    reopened = viewer.open(str(saved), plugin=PLUGIN)
    assert reopened
    back = reopened[0]
    np.testing.assert_allclose(back.scale[-2:], (0.02, 0.02))
    assert str(back.units[-1]) == "micrometer"
    assert back.colormap.name == out.colormap.name == "viridis"
    np.testing.assert_allclose(back.contrast_limits, out.contrast_limits, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(back.data, float), out.data, rtol=1e-6, equal_nan=True)
    assert back.metadata["provenance"]["model"] == "chromatin-balance"
