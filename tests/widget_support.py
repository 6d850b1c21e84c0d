"""Helpers shared by the widget tests (names, the GUI skip rule, running and inspecting a widget).

The fixtures (``_plugin_registered``, ``sample_viewer``) live in ``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

PLUGIN = "napari-mollifier"
REPO_ROOT = Path(__file__).resolve().parents[1]
PHI_H, PHI_E, TRUTH = "heterochromatin (phi_h)", "euchromatin (phi_e)", "ground truth rate"
RATE, UNC, RES = (f"{kind} [{PHI_H}]" for kind in ("rate", "uncertainty", "residual"))
#: Worst-case wait for one run (the CI machine may be shared and slow).
RUN_TIMEOUT_MS = 300_000


def _gui_skip_reason(extra: tuple[str, ...] = ()) -> str | None:
    """Why the real-viewer tests cannot run here (None if they can); ``extra``: more modules they need."""
    for mod in ("napari", "qtpy", "pytestqt", "magicgui", "matplotlib", "skimage", *extra):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed"
    try:
        import qtpy  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
        return f"no usable Qt binding: {exc}"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM")
    ):
        return "no display: run the tests under xvfb-run (see README.md)"
    return None


_SKIP = _gui_skip_reason()


def _run(qtbot, widget, timeout=RUN_TIMEOUT_MS) -> str:
    with qtbot.waitSignal(widget.run_done, timeout=timeout) as blocker:
        widget.run()
    return blocker.args[0]


def _fast(widget, radius_px=10.0, bootstrap=0):
    widget.method_combo.setCurrentText("direct")
    widget.radius_auto.setChecked(False)
    widget.radius_unit.setCurrentIndex(0)
    widget.radius_value.setValue(radius_px)
    widget.bootstrap_spin.setValue(bootstrap)


def _snapshot(viewer) -> dict:
    return {ly.name: np.array(ly.data, copy=True) for ly in viewer.layers if hasattr(ly, "data")}


def _assert_unchanged(viewer, before: dict):
    assert [ly.name for ly in viewer.layers] == list(before)
    for name, data in before.items():
        np.testing.assert_array_equal(np.asarray(viewer.layers[name].data), data)


def _errors_since(n: int) -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [str(r.message) for r in notification_manager.records[n:] if r.severity == NotificationSeverity.ERROR]


def _n_records() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def _nucleus_polygon_world(px: float) -> np.ndarray:
    """A square well inside the sample nucleus (pixels 90..166 x 80..176), in world units."""
    return np.array([[90, 80], [90, 176], [166, 176], [166, 80]], dtype=float) * px
