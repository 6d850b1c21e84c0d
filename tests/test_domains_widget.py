"""The "Heterochromatin domains" dock widget in a real napari viewer (run under xvfb-run; see README.md)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from widget_support import _gui_skip_reason  # noqa: F401 - shared with the widget tests

PLUGIN = "napari-mollifier"
TIMEOUT_MS = 300_000


_SKIP = _gui_skip_reason(extra=("sklearn",))
pytestmark = [pytest.mark.gui, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


@pytest.fixture
def viewer_widget(make_napari_viewer, _plugin_registered):
    viewer = make_napari_viewer(show=True)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Heterochromatin domains")
    return viewer, widget


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
def test_points_layer_to_domains_and_rate_inputs(viewer_widget, qtbot, tmp_path):
    from napari_mollifier.domains.synthetic import lattice_nucleus

    viewer, widget = viewer_widget
    s = lattice_nucleus(seed=4, semi_axes_nm=(2000.0, 1700.0))
    viewer.add_points(np.column_stack([s["y"], s["x"]]) / 1000.0, name="locs", size=0.01)
    assert widget.source_combo.currentText() == "locs"
    widget.points_unit.setCurrentText("µm")
    widget.subsample_spin.setValue(1)
    assert _run(qtbot, widget) == "done"
    res = widget.result
    assert res.summary["n_domains"] == pytest.approx(s["n_domains"], rel=0.05)
    assert res.summary["mean_diameter_nm"] / 2 == pytest.approx(80.0, rel=0.05)
    labels = viewer.layers["domains [locs]"]
    assert labels.__class__.__name__ == "Labels"
    assert int(labels.data.max()) == res.n_domains
    np.testing.assert_allclose(labels.scale, (0.02, 0.02))
    # a true domain centre (um) falls on a labelled pixel of the layer, in world coordinates
    c = s["centres"][len(s["centres"]) // 2] / 1000.0
    assert labels.get_value(c, world=True) > 0
    lam = viewer.layers["lambda [locs]"].data
    assert np.nanmedian(lam) == pytest.approx(0.08**2 / (0.3**2 - 0.08**2), rel=0.1)
    pts = viewer.layers["localisations [locs]"]
    assert len(pts.data) == np.isfinite(res.density).sum()
    assert "log10_density_per_um2" in pts.features
    phi_h = viewer.layers["phi_h [locs]"]
    assert phi_h.metadata["field"] == "phi_h" and viewer.layers["phi_e [locs]"].metadata["field"] == "phi_e"
    assert widget.table.rowCount() == res.n_domains
    assert f"Found {res.n_domains} heterochromatin domains" in widget.summary_label.text()
    assert not viewer.layers["localisations [locs]"].visible  # the dots would hide the domains
    for name in ("domains [locs]", "lambda [locs]", "phi_h [locs]"):
        assert [str(u) for u in viewer.layers[name].units] == ["micrometer", "micrometer"], name
    out = widget.export_table(tmp_path / "t.csv")
    rows = list(csv.DictReader(open(out)))  # noqa: SIM115 - closed explicitly
    assert len(rows) == res.n_domains and "gamma_me" in rows[0]
    # a re-run replaces the layers instead of adding more
    n_layers = len(viewer.layers)
    widget.eps_spin.setValue(25.0)
    assert _run(qtbot, widget) == "done"
    assert len(viewer.layers) == n_layers

    # hand-off: the "Rate maps" widget picks the segmentation's phi layers and maps lambda on the same nucleus
    _, rates = viewer.window.add_plugin_dock_widget(PLUGIN, "Rate maps")
    assert rates.input_combos["phi_h"].currentText() == "phi_h [locs]"
    assert rates.input_combos["phi_e"].currentText() == "phi_e [locs]"
    rates.method_combo.setCurrentText("direct")
    rates.radius_auto.setChecked(False)
    rates.radius_value.setValue(8.0)
    rates.bootstrap_spin.setValue(0)
    with qtbot.waitSignal(rates.run_done, timeout=TIMEOUT_MS) as blocker:
        rates.run()
    assert blocker.args[0] == "ok", rates.status_label.text()
    rate = viewer.layers["rate [phi_h [locs]]"]
    np.testing.assert_allclose(rate.scale, phi_h.scale)
    assert np.isfinite(rate.data).mean() > 0.3  # the nucleus (phi_e > 0 there) gets a map
    src = "phi_h [locs]"
    for name in (f"residual [{src}]", f"phi_h smoothed [{src}]", "phi_e smoothed [phi_e [locs]]"):
        assert name in viewer.layers  # (no uncertainty layer: 0 bootstrap samples)
    assert len(viewer.layers) == n_layers + 4  # and the segmentation layers are untouched


def test_bad_table_file_is_refused_with_a_notification(viewer_widget, qtbot, tmp_path):
    viewer, widget = viewer_widget
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,2\nfoo,3\n")
    widget.source_combo.setCurrentText("(table file)")
    widget.path_edit.setText(str(bad))
    n = _n_records()
    assert _run(qtbot, widget) == "error"
    errs = _errors_since(n)
    assert errs and "text" in errs[-1]
    assert len(viewer.layers) == 0 and widget.run_button.isEnabled()


@pytest.mark.slow  # in CI's full run; out of the development run (under 5 min, CONTRIBUTING)
def test_table_file_source(viewer_widget, qtbot, tmp_path):
    from napari_mollifier.domains.synthetic import lattice_nucleus

    viewer, widget = viewer_widget
    s = lattice_nucleus(seed=6, semi_axes_nm=(1800.0, 1500.0))
    table = tmp_path / "cell.csv"
    np.savetxt(table, np.column_stack([s["x"], s["y"]]), delimiter=",", header="x [nm],y [nm]", comments="")
    widget.source_combo.setCurrentText("(table file)")
    widget.path_edit.setText(str(table))
    widget.subsample_spin.setValue(1)
    widget.threshold_combo.setCurrentText("otsu")
    assert _run(qtbot, widget) == "done"
    assert widget.result.summary["n_domains"] == pytest.approx(s["n_domains"], rel=0.05)
    assert "domains [cell]" in viewer.layers
    # issue 13: the per-domain rate maps show a colour bar titled with the quantity and its unit
    for key, label in (("lambda", "geometric λ = Γ_me/Γ_ac (no unit)"), ("gamma_ac", "acetylation rate Γ_ac (1/s)")):
        layer = viewer.layers[f"{key} [cell]"]
        assert layer.colorbar.visible and layer.metadata["colorbar_label"] == label
    # the SMLM reader's density image names its table: it is offered as a source and gives the same domains
    viewer.open(str(table), plugin=PLUGIN)
    smlm = [ly.name for ly in viewer.layers if ly.metadata.get("format") == "smlm-table"]
    assert smlm
    widget.source_combo.setCurrentText(smlm[0])
    assert widget.source_combo.currentText() == smlm[0]
    n_before = widget.result.n_domains
    assert _run(qtbot, widget) == "done"
    assert widget.result.n_domains == n_before
    assert f"domains [{smlm[0]}]" in viewer.layers


def test_cancel_adds_nothing(viewer_widget, qtbot):
    from napari_mollifier.domains.synthetic import lattice_nucleus

    viewer, widget = viewer_widget
    s = lattice_nucleus(seed=7, semi_axes_nm=(1500.0, 1200.0))
    viewer.add_points(np.column_stack([s["y"], s["x"]]) / 1000.0, name="locs", size=0.01)
    with qtbot.waitSignal(widget.run_done, timeout=TIMEOUT_MS) as blocker:
        widget.run()
        widget.cancel()
    assert blocker.args[0] == "cancelled"
    assert [ly.name for ly in viewer.layers] == ["locs"]
    assert widget.run_button.isEnabled() and "Cancelled" in widget.status_label.text()


def test_closing_the_viewer_mid_run_adds_nothing(viewer_widget, qtbot):
    """The domains widget shares the Rate maps close handling (runner.CloseWatcher): the analysis stops, nothing
    is added into the closed viewer, and no exception escapes."""
    from napari_mollifier.domains.synthetic import lattice_nucleus

    viewer, widget = viewer_widget
    s = lattice_nucleus(seed=7, semi_axes_nm=(1500.0, 1200.0))
    viewer.add_points(np.column_stack([s["y"], s["x"]]) / 1000.0, name="locs", size=0.01)
    widget.subsample_spin.setValue(1)
    widget.run()
    worker = widget.worker
    assert worker is not None
    viewer.close()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=TIMEOUT_MS)
    qtbot.wait(200)  # any late signal would land here
    assert widget._cancel.is_set() and widget.result is None  # stopped; nothing published into the closed viewer


def test_domains_details_spell_rates_in_one_unit_style():
    """The details section names each statistic with its unit, rates in 1/s as in the table headers and colour
    bars (issue 15: one unit style everywhere)."""
    import re

    from napari_mollifier._napari.domains_report import TABLE_HEADERS, details_text
    from napari_mollifier.domains import analyse_localisations
    from napari_mollifier.domains.synthetic import lattice_nucleus

    s = lattice_nucleus(seed=3, semi_axes_nm=(1500.0, 1200.0), centre_nm=(1800.0, 1800.0))
    res = analyse_localisations(s["x"], s["y"])
    text = details_text(res.summary, {}, 1.0)
    rate_lines = [line for line in text.splitlines() if line.startswith(("Acetylation", "Methylation"))]
    assert len(rate_lines) == 2 and all(re.search(r"\d 1/s,", line) for line in rate_lines), rate_lines
    assert " /s" not in text and "um^2" not in text
    assert all("(1/s)" in TABLE_HEADERS[k] for k in ("gamma_ac", "gamma_me"))
