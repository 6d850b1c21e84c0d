"""The "Rate maps" widget's default direct run in a napari window, against the same job headless.

Opens a real napari viewer with the synthetic nucleus sample, docks the widget, draws a polygon ROI inside the
nucleus and runs the widget's default settings (direct method, automatic radius, the default uncertainty) through
its Run path, timed from Run to ``run_done`` (layers added). The same job (the widget's own snapshot of fields,
ROI and ``infer_rates`` keywords) then runs headless in a fresh Python process without napari, with torch's own
thread count, timed around ``infer_rates``. The ratio window / headless is the cost of running inside napari.

Two settings of the widget's solver threads are measured (``NAPARI_MOLLIFIER_THREADS``, see
``src/napari_mollifier/_napari/solver_threads.py``): ``0`` = torch's own (the widget before issue 15) and the
widget's default now (one core fewer than the machine has). Target: ratio <= 1.5.

Run from the repository root, with a display::

    xvfb-run -a python benchmarks/bench_widget_vs_headless.py            # writes its section of RESULTS.md
    xvfb-run -a python benchmarks/bench_widget_vs_headless.py --bootstrap 20 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402

REPO = _common.REPO
_common.use_checkout_src()

import numpy as np  # noqa: E402

SECTION = "bench_widget_vs_headless"
TARGET = 1.5

_HEADLESS = r"""
import json, sys, time, pickle
sys.path.insert(0, sys.argv[2])
import numpy as np, torch
from napari_mollifier import infer_rates
job = pickle.load(open(sys.argv[1], "rb"))
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    res = infer_rates(job["fields"], roi=job["roi"], **job["kwargs"])
    times.append(time.perf_counter() - t)
print(json.dumps({"seconds": times, "threads": torch.get_num_threads(),
                  "median_rate": float(np.nanmedian(res.rate))}))
"""


def _ensure_plugin() -> None:
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    if "napari-mollifier" not in pm:
        pm.register(PluginManifest.from_file(REPO / "napari.yaml"))


def _run_widget(widget, app, timeout: float) -> tuple[str, float]:
    from qtpy.QtCore import QEventLoop, QTimer

    status: list[str] = []
    loop = QEventLoop()

    def done(result):
        status.append(result)
        loop.quit()

    widget.run_done.connect(done)
    guard = QTimer()
    guard.setSingleShot(True)
    guard.timeout.connect(loop.quit)
    guard.start(int(timeout * 1000))
    t0 = time.perf_counter()
    widget.run()
    if widget.worker is not None:
        loop.exec()
    wall = time.perf_counter() - t0
    widget.run_done.disconnect(done)
    return (status[0] if status else "timeout"), wall


def measure(modes: list[str], bootstrap: int | None, runs: int, timeout: float) -> dict:
    import pickle

    import napari
    from qtpy.QtWidgets import QApplication

    _ensure_plugin()
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    out: dict = {"window": {}, "threads": {}}
    try:
        viewer.window._qt_window.resize(1366, 768)
        viewer.open_sample("napari-mollifier", "nucleus")
        _, widget = viewer.window.add_plugin_dock_widget("napari-mollifier", "Rate maps")
        image = viewer.layers["heterochromatin (phi_h)"]
        px = float(image.scale[-1])
        poly = np.array([[90, 80], [90, 176], [166, 176], [166, 80]], dtype=float) * px
        viewer.add_shapes([poly], shape_type="polygon", name="roi", face_color="transparent", units=image.units)
        widget.roi_combo.setCurrentText("roi")
        if bootstrap is not None:
            widget.bootstrap_spin.setValue(bootstrap)
        out["settings"] = {"bootstrap": widget.bootstrap_spin.value(), "radius": "auto", "method": "direct"}
        from napari_mollifier._napari.widget import _WARM_DONE

        until = time.perf_counter() + 60
        while not _WARM_DONE.is_set() and time.perf_counter() < until:
            app.processEvents()
            time.sleep(0.01)
        # warm-up: the first solve in a process pays for imports and allocations
        widget.bootstrap_spin.setValue(0)
        _run_widget(widget, app, timeout)
        widget.bootstrap_spin.setValue(out["settings"]["bootstrap"])
        job = widget._collect_job()
        for mode in modes:
            os.environ["NAPARI_MOLLIFIER_THREADS"] = mode
            from napari_mollifier._napari.solver_threads import widget_solver_threads

            out["threads"][mode] = widget_solver_threads()
            walls = []
            for _ in range(runs):
                status, wall = _run_widget(widget, app, timeout)
                if status != "ok":
                    raise RuntimeError(f"widget run ended {status}: {widget.status_label.text()}")
                walls.append(wall)
            out["window"][mode] = walls
        os.environ.pop("NAPARI_MOLLIFIER_THREADS", None)
    finally:
        viewer.close()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "job.pkl"
        lead, fields, roi = job.slices[0]
        pickle.dump({"fields": fields, "roi": roi, "kwargs": job.kwargs}, open(path, "wb"))  # noqa: SIM115 - closed explicitly
        env = {k: v for k, v in os.environ.items() if k != "NAPARI_MOLLIFIER_THREADS"}
        proc = subprocess.run([sys.executable, "-c", _HEADLESS, str(path), str(REPO / "src"), str(runs + 1)],
                              capture_output=True, text=True, env=env, check=True)
        head = json.loads(proc.stdout.strip().splitlines()[-1])
    out["headless"] = head["seconds"][1:]  # the first call pays for imports, as the widget's warm-up did
    out["headless_threads"] = head["threads"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap", type=int, default=None, help="uncertainty samples (default: the widget's)")
    p.add_argument("--runs", type=int, default=1, help="timed runs per setting (default 1)")
    p.add_argument("--modes", default="0,", help="NAPARI_MOLLIFIER_THREADS values, comma-separated; '' = the "
                   "widget's default (default '0,': torch's own, then the widget's)")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    load_start = _common.load_average(all_three=True)
    started = _common.utc_stamp()
    r = measure(modes, args.bootstrap, args.runs, args.timeout)
    load_end = _common.load_average(all_three=True)
    head = float(np.median(r["headless"]))
    rows = []
    for mode in modes:
        wall = float(np.median(r["window"][mode]))
        label = "torch's own (before)" if mode == "0" else (
            f"widget default, {r['threads'][mode]} thread(s) (after)" if mode == "" else f"{mode} thread(s)")
        rows.append(f"| {label} | {wall:.1f} s | {head:.1f} s ({r['headless_threads']} threads) | "
                    f"**{wall / head:.2f}x** |")
    import torch

    command = "xvfb-run -a python benchmarks/bench_widget_vs_headless.py" + (
        " " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else "")
    body = f"""## Widget in a napari window against the same job headless (`benchmarks/bench_widget_vs_headless.py`)

- Date: {started}
- Machine: {_common.machine([f"torch {torch.__version__}", f"Qt platform {os.environ.get('QT_QPA_PLATFORM') or 'default'}"])}
- Load average (1/5/15 min): {load_start} at the start, {load_end} at the end
- Command: `{command}`

Synthetic nucleus sample, polygon ROI of 77 x 97 px, the widget's default direct run (automatic radius,
{r['settings']['bootstrap']} uncertainty samples), window 1366 x 768. Window: Run to `run_done` (layers added),
median of {args.runs}, after a warm-up run. Headless: the widget's own job snapshot through `infer_rates` in a
fresh process without napari, median of {len(r['headless'])} after a first call. Target: ratio <= {TARGET:g}.

| widget solver threads | window | headless | ratio |
|---|---|---|---|
{chr(10).join(rows)}
"""
    print(body)
    if not args.no_write:
        _common.write_section(args.results, SECTION, body)
        print(f"wrote the {SECTION} section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
