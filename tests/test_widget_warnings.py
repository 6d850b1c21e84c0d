"""Issue 13: every plausibility warning reaches the widget's user (a napari warning notification and the status
line), and the warnings the solver issues during a run are not lost in its background thread."""

from __future__ import annotations

import numpy as np
import pytest
from widget_support import _SKIP, PHI_E, PHI_H, PLUGIN, _fast, _run  # noqa: F401 - shared with the widget tests

pytestmark = [pytest.mark.gui, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

L2 = 0.0234  # the sample's l2 in um^2 (pixel size 0.02 um)


@pytest.fixture(scope="module")
def sample():
    from napari_mollifier.simulate import synthetic_nucleus

    return synthetic_nucleus(shape=(64, 64), pixel_size=0.02, seed=0, noise=0.01)


@pytest.fixture
def make(make_napari_viewer, _plugin_registered, sample):  # noqa: F811
    def make(phi_h, phi_e, px=0.02, roi=True, l2=L2):
        viewer = make_napari_viewer(show=True)
        geo = {"scale": (px, px), "units": ("µm", "µm")}
        viewer.add_image(phi_h, name=PHI_H, **geo)
        viewer.add_image(phi_e, name=PHI_E, **geo)
        if roi:
            viewer.add_labels(sample["nucleus"].astype(np.uint8), name="nucleus", **geo)
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Rate maps")
        widget.model_combo.setCurrentText("chromatin-balance")
        widget.input_combos["phi_h"].setCurrentText(PHI_H)
        widget.input_combos["phi_e"].setCurrentText(PHI_E)
        from napari_mollifier._napari.widget import WHOLE_IMAGE_ALL  # every pixel: "(whole image)" detects

        widget.roi_combo.setCurrentText("nucleus" if roi else WHOLE_IMAGE_ALL)
        assert widget.roi_combo.currentText() == ("nucleus" if roi else WHOLE_IMAGE_ALL)
        widget.coef_edits["l2"].setText("auto" if l2 is None else str(l2))
        _fast(widget, radius_px=4)
        return viewer, widget
    return make


def _warnings_of_run(qtbot, widget) -> tuple[list[str], str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    n = len(notification_manager.records)
    assert _run(qtbot, widget) == "ok"
    notes = [str(r.message) for r in notification_manager.records[n:] if r.severity == NotificationSeverity.WARNING]
    return notes, widget.status_label.text()


def _seen(notes, status, clause):
    """The user sees the warning: one notification with the full text, and its first clause in the status line."""
    hits = [n for n in notes if clause in n]
    assert len(hits) == 1, (clause, notes)
    assert hits[0].startswith("Rate maps: ")
    assert clause in status and status.startswith("Done in "), status


def test_clean_input_gives_no_plausibility_warning(make, sample, qtbot):
    viewer, widget = make(sample["phi_h"], sample["phi_e"])
    notes, status = _warnings_of_run(qtbot, widget)
    assert not any(k in n for n in notes for k in ("implausible", "um wide", "outside [0, 1]", "exceeds 1"))
    assert "Check the input" not in status and widget.status_label.toolTip() == ""


def test_pixel_size_too_large(make, sample, qtbot):
    viewer, widget = make(sample["phi_h"], sample["phi_e"], px=20.0)  # nm thought, um written
    notes, status = _warnings_of_run(qtbot, widget)
    _seen(notes, status, "the pixel size 20 um is implausible")
    _seen(notes, status, "more than 50 um")  # 20 um pixels make the nucleus ~1 mm wide
    assert "Check the input (2 warnings)" in status
    assert "in nm instead of um" in widget.status_label.toolTip()  # the full text, with the likely cause


def test_pixel_size_too_small(make, sample, qtbot):
    viewer, widget = make(sample["phi_h"], sample["phi_e"], px=0.0005)
    notes, status = _warnings_of_run(qtbot, widget)
    _seen(notes, status, "the pixel size 0.0005 um is implausible")
    assert "Check the input (1 warning)" in status


@pytest.mark.slow
def test_nucleus_wider_than_50_um(make, sample, qtbot):
    viewer, widget = make(sample["phi_h"], sample["phi_e"], px=0.9, roi=False)  # 64 px x 0.9 um, no ROI
    notes, status = _warnings_of_run(qtbot, widget)
    _seen(notes, status, "the nucleus (the whole image, no ROI given) is 57.6 um wide, more than 50 um")
    assert not any("implausible" in n for n in notes)


@pytest.mark.slow
def test_fractions_outside_0_1(make, sample, qtbot):
    viewer, widget = make(3.0 * sample["phi_h"], sample["phi_e"])
    notes, status = _warnings_of_run(qtbot, widget)
    _seen(notes, status, "phi_h or phi_e lies outside [0, 1] in")


@pytest.mark.slow
def test_fractions_sum_over_1(make, sample, qtbot):
    phi_h = 0.6 + 0.1 * sample["phi_h"]
    phi_e = 0.5 + 0.05 * sample["phi_e"]
    viewer, widget = make(phi_h, phi_e)
    notes, status = _warnings_of_run(qtbot, widget)
    _seen(notes, status, "phi_h + phi_e exceeds 1 in")
    assert not any("outside [0, 1]" in n for n in notes)


def test_a_warning_issued_only_during_the_run_is_notified(make, sample, qtbot):
    """l2 left 'auto': infer_rates estimates it in the solver thread and warns; the user is told, every run."""
    viewer, widget = make(sample["phi_h"], sample["phi_e"], l2=None)
    for _ in range(2):  # the second run says it again (no once-per-location filter)
        notes, status = _warnings_of_run(qtbot, widget)
        hits = [n for n in notes if "l2 was not given for an image in" in n]
        assert len(hits) == 1, notes
        assert "using l2 = " in hits[0] and "Check the input" not in status


def test_capture_passes_other_warnings_on():
    import warnings

    from napari_mollifier._napari.run_warnings import capture
    from napari_mollifier.errors import MollifierWarning
    from napari_mollifier.plausibility import PlausibilityWarning

    sink: list = []
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        with capture(sink):
            warnings.warn("ours", PlausibilityWarning)  # noqa: B028 - test of warnings
            warnings.warn("ours", PlausibilityWarning)  # no repeat  # noqa: B028 - test of warnings
            warnings.warn("also ours", MollifierWarning)  # noqa: B028 - test of warnings
            warnings.warn("not ours", UserWarning)  # noqa: B028 - test of warnings
    assert sink == [("PlausibilityWarning", "ours"), ("MollifierWarning", "also ours")]
    assert [str(w.message) for w in outer] == ["not ours"]
