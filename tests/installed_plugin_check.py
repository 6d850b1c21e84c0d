"""Checks of the INSTALLED plugin, run by tests/test_install_fresh.py with the python of a fresh virtual
environment that holds a built wheel or sdist of napari-mollifier (never the repository's ``src/``).

    python -I tests/installed_plugin_check.py REPORT.json WORKDIR

``-I`` (isolated mode) keeps PYTHONPATH, the user site and this script's folder off ``sys.path``. The script
discovers the plugin through npe2, opens the sample, writes the sample layers with both writers, reads the
files back with the readers (and an SMLM table), opens the "Rate maps" widget in a real napari viewer (needs a
display: run under xvfb-run) and runs one direct inference in it. Everything it finds goes into REPORT.json
for the test to judge; it asserts only where a later step depends on an earlier one.
"""

from __future__ import annotations

import json
import sys
import traceback
from importlib import metadata
from pathlib import Path

PLUGIN = "napari-mollifier"
report: dict = {"steps": []}


def step(name: str) -> None:
    report["steps"].append(name)
    print(f"[installed check] {name}", flush=True)


def layer_summary(layer) -> dict:
    import numpy as np

    data = np.asarray(layer.data)
    return {
        "name": layer.name,
        "type": type(layer).__name__,
        "shape": list(data.shape),
        "dtype": str(data.dtype),
        "scale": [float(s) for s in layer.scale],
        "sum": float(np.nansum(data, dtype=np.float64)),
    }


def main(report_path: Path, work: Path) -> None:
    import numpy as np

    step("import")
    import napari_mollifier

    report["python"] = sys.executable
    report["prefix"] = sys.prefix
    report["base_prefix"] = sys.base_prefix
    report["sys_path"] = list(sys.path)
    report["module_file"] = str(Path(napari_mollifier.__file__).resolve())
    dist = metadata.distribution(PLUGIN)
    report["dist_version"] = dist.version
    report["module_version"] = napari_mollifier.__version__
    direct_url = dist.read_text("direct_url.json")
    report["direct_url"] = json.loads(direct_url) if direct_url else None
    # installed files of the package with their RECORD hashes (sha256, urlsafe base64)
    report["dist_hashes"] = {str(f): f.hash.value for f in (dist.files or [])
                             if str(f).startswith("napari_mollifier/") and f.hash is not None}
    report["entry_points"] = sorted(f"{ep.name} = {ep.value}" for ep in dist.entry_points)
    manifest = Path(napari_mollifier.__file__).with_name("napari.yaml")
    report["manifest_is_symlink"] = manifest.is_symlink()
    report["manifest_text"] = manifest.read_text(encoding="utf-8")
    import torch

    report["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                       "file": str(Path(torch.__file__).resolve())}

    step("npe2 discovery")
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest(PLUGIN)
    report["npe2"] = {
        "plugins": sorted(m.name for m in pm.iter_manifests()),
        "display_name": mf.display_name,
        "categories": [str(c) for c in (mf.categories or [])],
        "package_version": mf.package_metadata.version if mf.package_metadata else None,
        "widgets": [w.display_name for w in pm.iter_widgets() if w.plugin_name == PLUGIN],
        "samples": {plugin: [s.key for s in samples] for plugin, samples in pm.iter_sample_data()
                    if plugin == PLUGIN},
        "writers_image+": sorted(w.display_name for w in pm.iter_compatible_writers(["image", "image"])
                                 if w.plugin_name == PLUGIN),
    }

    step("viewer + sample")
    import napari

    viewer = napari.Viewer(show=True)
    viewer.open_sample(PLUGIN, "nucleus")
    report["sample_layers"] = [layer_summary(ly) for ly in viewer.layers]
    originals = {ly.name: np.asarray(ly.data).copy() for ly in viewer.layers}
    px = float(viewer.layers[0].scale[-1])

    report["roundtrip"] = {}
    for suffix in (".ome.tif", ".ome.zarr"):
        step(f"writer + reader {suffix}")
        path = work / f"sample{suffix}"
        written = viewer.layers.save(str(path), selected=False, plugin=PLUGIN)
        readers = [r.plugin_name for r in pm.iter_compatible_readers([str(path)])]
        new = viewer.open(str(path), plugin=PLUGIN)
        equal = {}
        for name, data in originals.items():
            match = [ly for ly in new if ly.name.endswith(name) or name in ly.name]
            equal[name] = bool(match) and bool(np.array_equal(np.asarray(match[0].data), data))
        report["roundtrip"][suffix] = {
            "written": [str(w) for w in written],
            "exists": path.exists(),
            "readers": readers,
            "read_layers": [layer_summary(ly) for ly in new],
            "data_equal": equal,
            "scale_px": [[float(s) for s in ly.scale[-2:]] for ly in new],
        }
        for ly in new:
            viewer.layers.remove(ly)

    step("reader .csv (SMLM)")
    rng = np.random.default_rng(7)
    xy_nm = rng.uniform(0.0, 2000.0, size=(500, 2))
    csv_path = work / "locs.csv"
    csv_path.write_text("x [nm],y [nm]\n" + "".join(f"{x:.3f},{y:.3f}\n" for x, y in xy_nm), encoding="utf-8")
    readers = [r.plugin_name for r in pm.iter_compatible_readers([str(csv_path)])]
    new = viewer.open(str(csv_path), plugin=PLUGIN)
    report["smlm"] = {"n_locs": len(xy_nm), "readers": readers, "layers": [layer_summary(ly) for ly in new]}
    for ly in new:
        viewer.layers.remove(ly)

    step("widget")
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QApplication

    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Rate maps")
    QApplication.processEvents()
    report["widget"] = {
        "class": f"{type(widget).__module__}.{type(widget).__qualname__}",
        "module_file": str(Path(sys.modules[type(widget).__module__].__file__).resolve()),
        "dock_visible": bool(dock.isVisible()),
        "inputs": {k: c.currentText() for k, c in widget.input_combos.items()},
    }

    step("widget run (direct)")
    widget.method_combo.setCurrentText("direct")
    widget.radius_auto.setChecked(False)
    widget.radius_unit.setCurrentIndex(0)
    widget.radius_value.setValue(10.0)
    widget.bootstrap_spin.setValue(0)
    status: list[str] = []
    loop = QEventLoop()
    widget.run_done.connect(lambda s: (status.append(s), loop.quit()))
    QTimer.singleShot(240_000, loop.quit)
    widget.run()
    if not status:
        loop.exec()
    names = [ly.name for ly in viewer.layers]
    rate_name = next((n for n in names if n.startswith("rate [")), None)
    run = {"status": status, "layers": names, "status_text": widget.status_label.text()}
    if rate_name is not None:
        rate = np.asarray(viewer.layers[rate_name].data)
        truth = originals["ground truth rate"]
        mask = np.asarray(viewer.layers["ground truth rate"].metadata["nucleus_mask"], bool) & np.isfinite(rate)
        run["rate_layer"] = rate_name
        run["finite_fraction_in_nucleus"] = float(mask.sum() / max(1, viewer.layers["ground truth rate"]
                                                                   .metadata["nucleus_mask"].sum()))
        run["pearson_r_in_nucleus"] = float(np.corrcoef(rate[mask], truth[mask])[0, 1]) if mask.sum() > 2 else None
        run["provenance_software"] = viewer.layers[rate_name].metadata["provenance"].get("software")
    report["run"] = run
    report["pixel_size"] = px
    viewer.close()
    step("done")


if __name__ == "__main__":
    out, workdir = Path(sys.argv[1]), Path(sys.argv[2])
    try:
        main(out, workdir)
    except BaseException:
        report["error"] = traceback.format_exc()
        raise
    finally:
        out.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")
