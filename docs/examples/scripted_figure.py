"""A scripted napari session: open an image, infer the rate map, save a figure with ``viewer.screenshot``.

No clicking: the same steps as in the GUI, from a script, so a figure can be regenerated from the data at any
time. Opens a 2-channel (phi_h, phi_e) TIFF/OME-TIFF/OME-Zarr through the plugin's reader (physical pixel size ->
layer scale), runs :func:`napari_mollifier.infer_rates` on it, adds the rate and uncertainty maps as layers in
the same physical coordinates, shows them side by side (grid mode, scale bar in um) and saves the canvas as a PNG.
Without ``--image`` it writes the built-in synthetic nucleus to an OME-TIFF first and uses that.

Run with a display (``xvfb-run -a`` when headless)::

    xvfb-run -a python docs/examples/scripted_figure.py --out figure.png
    xvfb-run -a python docs/examples/scripted_figure.py --image cell.ome.tif --channels 0,1 --param l2=0.0234
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def ensure_plugin() -> None:
    """Register the plugin's manifest when running from a source checkout (no installed entry point)."""
    from npe2 import PluginManager, PluginManifest

    import napari_mollifier

    pm = PluginManager.instance()
    if "napari-mollifier" not in pm:
        pm.register(PluginManifest.from_file(Path(napari_mollifier.__file__).parent / "napari.yaml"))


def synthetic_input(folder: Path, size: int) -> tuple[Path, dict, np.ndarray]:
    """The synthetic nucleus as a 2-channel OME-TIFF (phi_h, phi_e) with its pixel size; returns the path, the
    model coefficients in um and the nucleus mask."""
    from napari_mollifier.io import write_ome_tiff
    from napari_mollifier.simulate import synthetic_nucleus

    s = synthetic_nucleus(shape=(size, size), pixel_size=0.02, noise=0.01)
    path = folder / "synthetic_nucleus.ome.tif"
    write_ome_tiff(path, {"phi_h": s["phi_h"], "phi_e": s["phi_e"]}, s["pixel_size"])
    return path, s["params"], s["nucleus"]


def settle(seconds: float = 0.3) -> None:
    """Let Qt process pending events (layout, first draw) before the view is reset or captured."""
    import time

    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.perf_counter() + seconds
    while app is not None and time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def _overlays(viewer):
    """(grid, scale bar, text overlay): napari >= 0.9 keeps them on ``viewer.canvas``."""
    canvas = getattr(viewer, "canvas", None)
    if canvas is not None and hasattr(canvas, "grid") and hasattr(canvas, "overlays"):
        return canvas.grid, canvas.overlays.scale_bar, canvas.overlays.text
    return viewer.grid, viewer.scale_bar, viewer.text_overlay


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", help="2-channel phi_h/phi_e image (default: the synthetic nucleus)")
    parser.add_argument("--channels", default="0,1", help="channel indices of phi_h,phi_e")
    parser.add_argument("--param", action="append", default=[], help="KEY=VALUE model coefficient (um units)")
    parser.add_argument("--radius", default="auto", help="kernel radius in pixels, or auto")
    parser.add_argument("--n-bootstrap", type=int, default=20)
    parser.add_argument("--size", type=int, default=256, help="synthetic nucleus size in pixels")
    parser.add_argument("--out", default="figure.png", help="PNG to write")
    parser.add_argument("--width", type=int, default=1200, help="window width in pixels")
    args = parser.parse_args(argv)

    import napari

    import napari_mollifier as nm

    ensure_plugin()
    params = dict((k, float(v)) for k, v in (p.split("=", 1) for p in args.param))
    with tempfile.TemporaryDirectory() as tmp:
        roi = None
        if args.image:
            image = Path(args.image)
        else:
            image, params, roi = synthetic_input(Path(tmp), args.size)

        viewer = napari.Viewer(show=True, title="napari-mollifier: scripted figure")
        try:
            viewer.window.resize(args.width, int(args.width * 0.45) + 120)
            # 1. open through the plugin's reader: one layer per channel, scale in um
            layers = viewer.open(image, plugin="napari-mollifier")
            h_index, e_index = (int(c) for c in args.channels.split(","))
            phi_h, phi_e = layers[h_index], layers[e_index]
            pixel_size = tuple(float(s) for s in phi_h.scale[-2:])

            # 2. the solve, on the layers' data, in the layers' physical units
            result = nm.infer_rates(
                {"phi_h": np.asarray(phi_h.data, dtype=float), "phi_e": np.asarray(phi_e.data, dtype=float)},
                model="chromatin-balance", params=params or None, pixel_size=pixel_size,
                radius=args.radius if args.radius == "auto" else float(args.radius),
                n_bootstrap=args.n_bootstrap, roi=roi,
            )
            print(result)

            # 3. the maps as layers in the same world coordinates, side by side
            finite = result.rate[np.isfinite(result.rate)]
            lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
            geometry = {"scale": phi_h.scale}
            if hasattr(phi_h, "units"):
                geometry["units"] = phi_h.units
            viewer.add_image(result.rate, name="rate", colormap="turbo", contrast_limits=(float(lo), float(hi)),
                             metadata={"provenance": result.provenance}, **geometry)
            sigma = result.uncertainty[np.isfinite(result.uncertainty)]
            viewer.add_image(result.uncertainty, name="uncertainty", colormap="magma",
                             contrast_limits=(0.0, float(np.percentile(sigma, 98)) if sigma.size else 1.0),
                             **geometry)
            phi_e.visible = False  # grid: phi_h | rate | uncertainty
            grid, scale_bar, text = _overlays(viewer)
            grid.enabled = True
            grid.stride = 1
            grid.shape = (1, -1)
            scale_bar.visible = True
            text.visible = True
            text.text = f"chromatin-balance, R = {result.radius:g} px, pixel {pixel_size[-1] * 1000:g} nm"
            settle()
            viewer.reset_view()
            settle()

            # 4. the figure: the canvas as displayed
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            viewer.screenshot(str(out), canvas_only=True, flash=False)
            print(f"wrote {out}")
        finally:
            viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
