"""Screenshots of the journey through both dock widgets for the docs (``docs/images/journey_*.png``), 1366 x 768.

The steps of docs/getting-started.md and docs/domains.md, in one napari window the size of a laptop screen:

1. ``journey_1_sample_roi.png``: the synthetic nucleus sample, the Rate maps dock, an ellipse ROI drawn (the ROI
   box picks it);
2. ``journey_2_rate_map.png``: after Run (direct method, automatic radius): the rate map, table and histogram;
3. ``journey_3_domains.png``: Heterochromatin domains on a simulated localisation table (domains, lambda map,
   plain summary, table);
4. ``journey_4_handoff.png``: Rate maps on the domains' phi_h / phi_e, l2 from the domains, nucleus as ROI;
5. ``journey_5_reopened.png``: the hand-off's rate map saved as OME-TIFF and opened again (colormap and
   contrast limits and the titled colour bar restored).

Run from the repository root, with a display (``xvfb-run`` when headless)::

    xvfb-run -a python docs/make_screenshots.py
    xvfb-run -a python docs/make_screenshots.py --out /tmp/shots --bootstrap 20
"""

from __future__ import annotations

import argparse
import sys
import tempfile
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


def _settle_docks(app, viewer, seconds: float = 10.0) -> None:
    """Wait until no dock shows a horizontal scroll bar: Qt re-lays a dock out a few event-loop turns after its
    minimum width grew (the scroll area keeps a stale bar until then; longer while the warm-up thread runs)."""
    from qtpy.QtWidgets import QScrollArea

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        areas = viewer.window._qt_window.findChildren(QScrollArea)
        if not any(a.horizontalScrollBar().isVisible() and a.objectName() == "mollifier_scroll" for a in areas):
            return
        _settle(app, 0.1)


def _save(viewer, path: Path) -> None:
    """The whole window (canvas, layer list, docks), once the docks are laid out."""
    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    _settle_docks(QApplication.instance(), viewer)

    shot = viewer.screenshot(canvas_only=False, flash=False)
    imsave(str(path), np.asarray(shot), check_contrast=False)
    print(f"wrote {path}")


def _run(app, widget, ok: str) -> None:
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    status: list[str] = []

    def done(s):
        status.append(s)
        loop.quit()

    widget.run_done.connect(done)
    QTimer.singleShot(1_800_000, loop.quit)
    widget.run()
    if not status:
        loop.exec()
    widget.run_done.disconnect(done)
    if status != [ok]:
        raise RuntimeError(f"the run did not succeed: {status} {widget.status_label.text()}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    p.add_argument("--size", default="1366x768", help="window size WIDTHxHEIGHT (default 1366x768)")
    p.add_argument("--bootstrap", type=int, default=20, help="uncertainty samples (default 20)")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.out.mkdir(parents=True, exist_ok=True)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_mollifier.domains.synthetic import lattice_nucleus

    _ensure_plugin()
    viewer = napari.Viewer(show=True, title="napari-mollifier")
    app = QApplication.instance()
    tmp = Path(tempfile.mkdtemp(prefix="mollifier-shots-"))
    try:
        viewer.window._qt_window.resize(width, height)
        viewer.open_sample("napari-mollifier", "nucleus")
        _, rates = viewer.window.add_plugin_dock_widget("napari-mollifier", "Rate maps")
        image = viewer.layers["heterochromatin (phi_h)"]
        px = float(image.scale[-1])
        box = np.array([[64, 56], [64, 200], [192, 200], [192, 56]], float) * px
        viewer.add_shapes([box], shape_type="ellipse", name="ROI", edge_color="yellow", face_color="transparent",
                          edge_width=2 * px, units=image.units)
        rates.bootstrap_spin.setValue(args.bootstrap)
        viewer.reset_view()
        _settle(app)
        _save(viewer, args.out / "journey_1_sample_roi.png")

        _run(app, rates, "ok")
        for name in ("euchromatin (phi_e)", "heterochromatin (phi_h)"):
            viewer.layers[name].visible = False
        _settle(app)
        _save(viewer, args.out / "journey_2_rate_map.png")

        s = lattice_nucleus(seed=3, semi_axes_nm=(2400.0, 2000.0), centre_nm=(2560.0, 2560.0))
        table = tmp / "cell.csv"
        np.savetxt(table, np.column_stack([s["x"], s["y"]]), delimiter=",", header="x [nm],y [nm]", comments="")
        domains_dock, domains = viewer.window.add_plugin_dock_widget("napari-mollifier", "Heterochromatin domains")
        domains.source_combo.setCurrentText("(table file)")
        domains.path_edit.setText(str(table))
        _run(app, domains, "done")
        for layer in viewer.layers:
            if not layer.metadata.get("mollifier_domains"):
                layer.visible = False
        domains.details.set_expanded(True)
        viewer.reset_view()
        _settle(app)
        _save(viewer, args.out / "journey_3_domains.png")

        # the hand-off: Rate maps picked the domains' fields and nucleus; bring its dock to the front
        rates.bootstrap_spin.setValue(0)
        # the default automatic radius (the rule climbs high on these fields, where nearly every pixel is an edge
        # pixel with its own kernels: ~10-30 s on 2 cores since issue #12's edge-variance speed-up, ~3 min before)
        rates.radius_auto.setChecked(True)
        _run(app, rates, "ok")
        viewer.layers["lambda [cell]"].visible = False
        viewer.layers["domains [cell]"].visible = False
        domains_dock.setVisible(False)  # room for the Rate maps dock: its table shows the area in µm²
        _settle(app)
        rates.scroll_area.ensureWidgetVisible(rates.table)
        _settle(app)
        _save(viewer, args.out / "journey_4_handoff.png")

        saved = rates.save_maps(tmp / "handoff_rates.ome.tif")
        for layer in viewer.layers:
            layer.visible = False
        viewer.open(str(saved), plugin="napari-mollifier")
        viewer.reset_view()
        _settle(app)
        _save(viewer, args.out / "journey_5_reopened.png")
    finally:
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
