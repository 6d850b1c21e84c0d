"""Longest event-loop stall of napari while the "Rate maps" widget runs (target: < 100 ms).

Opens a real napari viewer with the synthetic nucleus sample, docks the widget, draws a polygon ROI inside the
nucleus and starts a run (``--method network`` by default) through the widget's Run button path. A ``QTimer``
ticks every 20 ms on the main thread from just before Run until the widget reports the run over (layers added);
the gap between consecutive ticks is what a user feels: the longest gap is the longest stall of the viewer. The
time spent adding the result layers (main thread, ``returned`` handler) is included.

Run from the repository root, with a display (``xvfb-run`` on a headless Linux machine)::

    xvfb-run -a python benchmarks/bench_widget_stall.py                    # network, 60 iterations, 2 runs
    xvfb-run -a python benchmarks/bench_widget_stall.py --iterations 500 --method network
    xvfb-run -a python benchmarks/bench_widget_stall.py --method direct --radius auto
    xvfb-run -a python benchmarks/bench_widget_stall.py --no-write          # print only

Each configuration runs in a fresh process. ``--colorbars both`` (the default) measures the widget as shipped (the
output layers' titled colour bars of issue 13) and with the colour bars switched off (the widget as it was when
this benchmark was first recorded, on 2026-12-01), so that a change of the code and the cost of that feature can
be told apart.

The widget starts a background warm-up when it opens (``start_warm_up``: the first ``torch.optim`` optimizer
imports ``torch._dynamo``, ~1.3 s); the measurement starts once it is over, as it is in use by the time a user has
drawn an ROI. The result is printed and written to this script's section of ``benchmarks/RESULTS.md`` (between
``<!-- bench_widget_stall:start -->`` and ``<!-- bench_widget_stall:end -->``; other sections are left alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402

REPO = _common.REPO
_common.use_checkout_src()

import numpy as np  # noqa: E402

SECTION = "bench_widget_stall"
TICK_MS = 20
TARGET_MS = 100.0


def _load() -> str:
    return _common.load_average(all_three=True)


def _machine() -> str:
    import napari
    import qtpy
    import torch

    return _common.machine([f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
                            f"napari {napari.__version__}", f"{qtpy.API_NAME} {qtpy.QT_VERSION}",
                            f"Qt platform {os.environ.get('QT_QPA_PLATFORM') or 'default'}",
                            f"display {os.environ.get('DISPLAY', 'none')}", f"Python {platform.python_version()}"])


def write_results(path: Path, body: str) -> None:
    _common.write_section(path, SECTION, body)


def _ensure_plugin() -> None:
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    if "napari-mollifier" not in pm:  # running from src/ without an installed entry point
        pm.register(PluginManifest.from_file(REPO / "napari.yaml"))


def _one_run(widget, app, timeout: float) -> dict:
    """One Run of the widget with a 20 ms QTimer ticking on the main thread; returns the tick gaps' summary."""
    from qtpy.QtCore import QElapsedTimer, QEventLoop, QTimer

    clock = QElapsedTimer()
    ticks: list[int] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(clock.elapsed()))
    status: list[str] = []
    progress_events = [0]
    loop = QEventLoop()

    def on_done(result: str) -> None:
        status.append(result)
        loop.quit()

    widget.run_done.connect(on_done)
    deadline = QTimer()
    deadline.setSingleShot(True)
    deadline.timeout.connect(loop.quit)
    deadline.start(int(timeout * 1000))

    clock.start()
    timer.start()
    ticks.append(clock.elapsed())
    t0 = time.perf_counter()
    widget.run()
    worker = widget.worker
    returned_at: list[int] = []
    if worker is not None:
        worker.yielded.connect(lambda *_: progress_events.__setitem__(0, progress_events[0] + 1))
        worker.returned.connect(lambda *_: returned_at.append(clock.elapsed()))
        loop.exec()  # the real Qt event loop, as in napari
    wall = time.perf_counter() - t0
    ticks.append(clock.elapsed())
    timer.stop()
    deadline.stop()
    if not status:  # timed out: stop the job before closing the viewer
        widget.cancel()
        until = time.perf_counter() + 60
        while not status and time.perf_counter() < until:
            app.processEvents()
            time.sleep(0.01)
    widget.run_done.disconnect(on_done)
    stamps = np.asarray(ticks, dtype=float)
    gaps = np.diff(stamps)
    split = returned_at[0] if returned_at else stamps[-1]
    # a gap belongs to the phase in which it ends: compute (solver running) or publish (adding layers)
    compute, publish = gaps[stamps[1:] <= split], gaps[stamps[1:] > split]
    prov = widget.last_results[0].provenance if widget.last_results else {}
    return {
        "status": status[0] if status else "timeout",
        "wall_s": wall,
        "ticks": len(ticks),
        "max_gap_ms": float(gaps.max()) if gaps.size else float("nan"),
        "p99_gap_ms": float(np.percentile(gaps, 99)) if gaps.size else float("nan"),
        "median_gap_ms": float(np.median(gaps)) if gaps.size else float("nan"),
        "over_100ms": int((gaps > TARGET_MS).sum()),
        "compute_max_ms": float(compute.max()) if compute.size else float("nan"),
        "compute_over_100ms": int((compute > TARGET_MS).sum()),
        "publish_max_ms": float(publish.max()) if publish.size else float("nan"),
        "publish_over_100ms": int((publish > TARGET_MS).sum()),
        "publish_s": (stamps[-1] - split) / 1000.0,
        "progress_events": progress_events[0],
        "device": prov.get("device", widget.device_combo.currentText()),
        "radius_px": widget.last_results[0].radius if widget.last_results else None,
        "seconds_solver": prov.get("seconds"),
    }


def measure(method: str, iterations: int, radius, bootstrap: int, timeout: float, device: str | None,
            runs: int = 2) -> list[dict]:
    import napari
    from qtpy.QtWidgets import QApplication

    _ensure_plugin()
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    try:
        viewer.open_sample("napari-mollifier", "nucleus")
        _, widget = viewer.window.add_plugin_dock_widget("napari-mollifier", "Rate maps")
        image = viewer.layers["heterochromatin (phi_h)"]
        px = float(image.scale[-1])
        poly = np.array([[90, 80], [90, 176], [166, 176], [166, 80]], dtype=float) * px
        viewer.add_shapes([poly], shape_type="polygon", name="roi", edge_color="yellow", face_color="transparent",
                          units=image.units)
        widget.roi_combo.setCurrentText("roi")
        widget.method_combo.setCurrentText(method)
        widget.iterations_spin.setValue(iterations)
        widget.bootstrap_spin.setValue(bootstrap)
        if device:
            widget.device_combo.setCurrentText(device)
        if radius == "auto":
            widget.radius_auto.setChecked(True)
        else:
            widget.radius_auto.setChecked(False)
            widget.radius_unit.setCurrentIndex(0)
            widget.radius_value.setValue(float(radius))
        # let the window settle, and let the widget's background warm-up (the network method's lazy torch
        # imports, started when the dock opens) finish, as it does while a user draws the ROI
        from napari_mollifier._napari.layer_style import glyphs_warming
        from napari_mollifier._napari.widget import _WARM_DONE

        until = time.perf_counter() + 60
        while ((not _WARM_DONE.is_set() or glyphs_warming()) and time.perf_counter() < until) \
                or until - time.perf_counter() > 59.8:
            app.processEvents()
            time.sleep(0.01)
        results = []
        for _ in range(runs):
            results.append(_one_run(widget, app, timeout))
            if results[-1]["status"] != "ok":
                break
        return results
    finally:
        viewer.close()


def _switch_colorbars_off() -> None:
    """The widget without its output layers' colour bars (and their titles): as before issue 13."""
    from napari_mollifier._napari import layer_style

    layer_style.style_output = lambda *args, **kwargs: None


def _measure_in_subprocess(args, colorbars: str) -> list[dict]:
    """Measure one configuration in a fresh process (cold solver, fresh canvas); its runs."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--colorbars", colorbars, "--json", str(out),
               "--method", args.method, "--iterations", str(args.iterations), "--radius", str(args.radius),
               "--bootstrap", str(args.bootstrap), "--runs", str(args.runs), "--timeout", str(args.timeout)]
        if args.device:
            cmd += ["--device", args.device]
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def _measure_reference(args, radius) -> list[dict]:
    """Measure the widget of git revision ``args.reference`` with that revision's own ``measure`` (fresh process)."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tree, out = Path(tmp) / "reference", Path(tmp) / "runs.json"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), args.reference],
                       check=True)
        try:
            code = (f"import json, sys; sys.path.insert(0, {str(tree / 'benchmarks')!r}); "
                    "import bench_widget_stall as b; "
                    f"runs = b.measure({args.method!r}, {args.iterations}, {radius!r}, {args.bootstrap}, "
                    f"{args.timeout}, {args.device!r}, {args.runs}); "
                    f"open({str(out)!r}, 'w').write(json.dumps(runs))")
            subprocess.run([sys.executable, "-c", code], check=True, cwd=tree)
            return json.loads(out.read_text())
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="network", choices=("network", "direct"))
    p.add_argument("--iterations", type=int, default=60, help="network iterations (default 60)")
    p.add_argument("--radius", default="10", help="kernel radius in px, or 'auto' (default 10)")
    p.add_argument("--bootstrap", type=int, default=20, help="uncertainty samples for --method direct (default 20)")
    p.add_argument("--device", default=None, help="cpu, cuda... (default: the widget's default)")
    p.add_argument("--runs", type=int, default=2, help="runs in the same viewer (default 2: cold, then warm)")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    p.add_argument("--colorbars", choices=("both", "on", "off"), default="both",
                   help="measure with the output layers' colour bars, without them, or both (default; each in a "
                        "fresh process)")
    p.add_argument("--reference", default=None, metavar="REV",
                   help="also measure the code of this git revision (a temporary worktree, its own benchmark "
                        "script, fresh process), e.g. 856fa46 (2026-12-01, the first recorded figure)")
    p.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)  # one configuration's runs, for both
    args = p.parse_args(argv)
    radius = args.radius if args.radius == "auto" else float(args.radius)

    load_start = _load()
    started = _common.utc_stamp()
    if args.colorbars == "both":
        configs = {"on": None, "off": None}
        for flag in configs:
            configs[flag] = _measure_in_subprocess(args, flag)
        if args.reference:
            configs["reference"] = _measure_reference(args, radius)
    else:
        if args.colorbars == "off":
            _switch_colorbars_off()
        runs = measure(args.method, args.iterations, radius, args.bootstrap, args.timeout, args.device, args.runs)
        if args.json is not None:
            import json

            args.json.write_text(json.dumps(runs))
            return 0
        configs = {args.colorbars: runs}
    load_end = _load()
    runs = [r for config in configs.values() for r in config]
    worst = max(r["max_gap_ms"] for r in runs)
    command = "xvfb-run -a python benchmarks/bench_widget_stall.py" + (
        " " + " ".join(sys.argv[1:]) if argv is None and sys.argv[1:] else ""
    )
    what = (f"{args.method}, {args.iterations} iterations" if args.method == "network"
            else f"direct, {args.bootstrap} uncertainty samples")
    names = {"on": "colour bars on (as shipped)", "off": "colour bars off (as on 2026-12-01)",
             "reference": f"code of {args.reference}"}
    labels = [f"{names[flag]}: " + (f"run {k + 1} (warm: same settings again)" if k else
                                    "1st run (cold: first solver call in the process)")
              for flag, config in configs.items() for k in range(len(config))]
    rows = "\n".join(
        f"| {lab} | {r['status']} | {r['wall_s']:.1f} s | {r['median_gap_ms']:.0f} ms | {r['p99_gap_ms']:.0f} ms "
        f"| **{r['max_gap_ms']:.0f} ms** | {r['over_100ms']} | {r['compute_max_ms']:.0f} ms "
        f"({r['compute_over_100ms']} > {TARGET_MS:g} ms) | {r['publish_max_ms']:.0f} ms in {r['publish_s']:.2f} s "
        f"({r['publish_over_100ms']} > {TARGET_MS:g} ms) |"
        for lab, r in zip(labels, runs, strict=True)
    )
    verdicts = ", ".join(
        f"{lab.split(' (cold')[0].split(' (warm')[0]}: {r['max_gap_ms']:.0f} ms "
        f"({'meets' if r['max_gap_ms'] < TARGET_MS else 'misses'})"
        for lab, r in zip(labels, runs, strict=True)
    )
    reference_note = (f" \"Code of {args.reference}\": that revision of the widget, measured by its own copy of this"
                      " script in a fresh process, on this machine in this same run (the recorded figures of other"
                      " days were measured on other machines)." if args.reference else "")
    body = f"""## napari event-loop stall during a widget run (`benchmarks/bench_widget_stall.py`)

- Date: {started}
- Machine: {_machine()}
- Load average (1/5/15 min): {load_start} at the start, {load_end} at the end
- Command: `{command}`

Synthetic nucleus sample (256 x 256 px), polygon ROI of 77 x 97 px, {what}, radius {radius} px, device
{runs[0]['device']}; {args.runs} run(s) in one viewer per configuration. A `QTimer` ticks every {TICK_MS} ms on the main thread from
Run until the widget is ready again (result layers added or updated); a gap between ticks is a stall of the
viewer. "Solver" gaps end before the worker returned, "layers" gaps after it (main-thread layer additions, one
per event-loop turn). Measured after the widget's background warm-up (started when the dock opens: the network
method's lazy torch imports, and the colour-bar glyphs rendered into the canvas font atlas) has finished, as it
has by the time a user has drawn an ROI. Each configuration in a fresh process; "colour bars off" is the widget
without the output layers' titled colour bars (issue 13, added on 2026-12-02): each bar is two napari overlays
whose visuals are built and whose shaders are compiled (software OpenGL here) in the turns that show the first
result.{reference_note} Target: longest gap < {TARGET_MS:g} ms.

| run | status | wall time | median gap | p99 gap | longest gap | gaps > {TARGET_MS:g} ms | longest gap, solver \
| longest gap, layers |
|---|---|---|---|---|---|---|---|---|
{rows}

Longest stall per run: {verdicts}.
"""
    print(body)
    if not args.no_write:
        write_results(args.results, body)
        print(f"wrote the {SECTION} section of {args.results}")
    return 0 if all(r["status"] == "ok" for r in runs) and worst == worst else 1


if __name__ == "__main__":
    sys.exit(main())
