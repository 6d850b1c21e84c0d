"""The Rate maps widget announces a long run before it starts (issue 17: run-time estimate)."""

from __future__ import annotations

import pytest
from widget_support import _SKIP, PLUGIN, _fast  # noqa: F401 - shared with the widget tests

pytestmark = [pytest.mark.gui, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]


def test_long_run_estimate_is_a_note_before_the_run(make_napari_viewer, _plugin_registered, monkeypatch):
    from napari_mollifier import validation

    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "nucleus")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Rate maps")
    _fast(widget, bootstrap=0)
    assert not [n for n in widget._collect_job().notes if "estimated to take" in n]
    widget.radius_auto.setChecked(True)
    widget.uncertainty_combo.setCurrentText("bootstrap")  # the slow check, on purpose
    widget.bootstrap_spin.setValue(min(widget.bootstrap_spin.maximum(), 5000))
    monkeypatch.setattr(validation, "RUN_TIME_WARN_S", 60.0)
    notes = [n for n in widget._collect_job().notes if "estimated to take" in n]
    assert len(notes) == 1 and "fewer bootstrap samples" in notes[0] and "a fixed radius" in notes[0], notes
