"""Screenshots of the "Rate maps" widget for the docs: ``docs/images/widget_before.png`` and ``widget_after.png``.

Opens napari with the synthetic nucleus sample, docks the widget, draws a polygon ROI inside the nucleus, takes
the "before" shot, runs the direct method with the automatic radius and takes the "after" shot (rate map shown,
per-ROI table and histogram filled). Run from the repository root, with a display (``xvfb-run`` when headless)::

    xvfb-run -a python docs/make_screenshots.py
    xvfb-run -a python docs/make_screenshots.py --out docs/images --size 1500x950 --bootstrap 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402


def _ensure_plugin() -> None:
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    if "napari-mollifier" not in pm:  # running from src/ without an installed entry point
        pm.register(PluginManifest.from_file(REPO / "napari.yaml"))


def _settle(app, seconds: float = 0.5) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def _save(viewer, widget, path: Path) -> None:
    """Whole window (canvas, layer list, dock widget); falls back to the dock widget's own grab."""
    from skimage.io import imsave

    try:
        shot = viewer.screenshot(canvas_only=False, flash=False)
    except Exception as exc:  # pragma: no cover - depends on the GL stack
        print(f"viewer.screenshot failed ({exc}); grabbing the dock widget instead")
        widget.grab().save(str(path))
        return
    imsave(str(path), np.asarray(shot), check_contrast=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    p.add_argument("--size", default="1500x1000", help="window size WIDTHxHEIGHT (default 1500x1000)")
    p.add_argument("--bootstrap", type=int, default=20, help="uncertainty samples (default 20)")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    _ensure_plugin()
    viewer = napari.Viewer(show=True, title="napari-mollifier: rate maps")
    app = QApplication.instance()
    try:
        viewer.window.resize(width, height)
        viewer.open_sample("napari-mollifier", "nucleus")
        dock, widget = viewer.window.add_plugin_dock_widget("napari-mollifier", "Rate maps")
        image = viewer.layers["heterochromatin (phi_h)"]
        px = float(image.scale[-1])
        ring = np.array([[70, 70], [62, 128], [80, 186], [150, 196], [190, 150], [186, 90], [130, 58]], float)
        viewer.add_shapes([ring * px], shape_type="polygon", name="ROI", edge_color="yellow",
                          face_color="transparent", edge_width=2 * px, units=image.units)
        widget.roi_combo.setCurrentText("ROI")
        widget.radius_auto.setChecked(True)
        widget.bootstrap_spin.setValue(args.bootstrap)
        viewer.reset_view()
        _settle(app)
        before = args.out / "widget_before.png"
        _save(viewer, widget, before)
        print(f"wrote {before}")

        loop = QEventLoop()
        status: list[str] = []
        widget.run_done.connect(lambda s: (status.append(s), loop.quit()))
        QTimer.singleShot(1_800_000, loop.quit)
        widget.run()
        if not status:
            loop.exec()
        if status != ["ok"]:
            print(f"the run did not succeed: {status} {widget.status_label.text()}")
            return 1
        for name in ("euchromatin (phi_e)", "heterochromatin (phi_h)"):
            viewer.layers[name].visible = False
        viewer.layers.selection.active = viewer.layers["rate [heterochromatin (phi_h)]"]
        _settle(app)
        after = args.out / "widget_after.png"
        _save(viewer, widget, after)
        print(f"wrote {after}")
    finally:
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
