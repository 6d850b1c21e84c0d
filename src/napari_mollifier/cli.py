"""``mollifier``: rate maps from image files on the command line.

Commands::

    mollifier infer INPUT... [options]       rate maps of each input (a batch), written to --out
    mollifier demo [--out DIR]               the synthetic nucleus end to end: maps, figure, ROI table
    mollifier rerun PROVENANCE_OR_RESULT     repeat a recorded run and check it gives the same maps
    mollifier domains LOCS.csv... [options]  heterochromatin domains and geometric rates of localisation tables

Run ``mollifier COMMAND --help`` for the options. Errors print one line (``mollifier: error: ...``) and exit
with status 1 (2 for bad usage); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import MollifierInputError

__all__ = ["main", "build_parser"]

INFER_EPILOG = """\
how the chromatin fields are given (model chromatin-balance / chromatin-phase-field):
  * one multi-channel image per job: --channels H,E gives the channel indices (or OME channel names) of
    phi_h and phi_e; a 2-channel image defaults to --channels 0,1
        mollifier infer cell.ome.tif --channels 0,1 --param l2=0.0234
  * two single-channel files per job: --phi-h A.tif --phi-e B.tif, or --pairs with INPUTs given as
    phi_h phi_e phi_h phi_e ...
        mollifier infer --pairs h1.tif e1.tif h2.tif e2.tif
  * one single-channel image (or --channels I) or an SMLM table (.csv, e.g. ThunderSTORM): a chromatin
    density, split into volume fractions by a documented assumption (recorded in the provenance)
        mollifier infer locs.csv --smlm-pixel 20 --smlm-render gaussian

inputs: TIFF / OME-TIFF, (OME-)Zarr folders (read lazily), SMLM tables (.csv/.tsv), .npy.
Pixel sizes are read from the file and converted to micrometres; length coefficients (--param l2=...)
are in um^(power). The model defaults are in the reference data's box units.

outputs, per job, in --out: NAME.ome.tif (rate, uncertainty, residual + fields + ROI labels + provenance;
or --format ome-zarr / npz), NAME_rois.csv (per-ROI table), NAME.provenance.json (inputs with sha256 and
the exact call: `mollifier rerun NAME.provenance.json` repeats it).

large images: --tile auto (default) estimates the memory first and runs in tiles with a halo when the image
does not fit (same rate map; the bootstrap uncertainty is then per tile); --tile PX forces tiles.
clusters: --scheduler ADDRESS runs each job as a task on a dask.distributed scheduler (docs/cluster.md).
"""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _radius(text: str):
    return "auto" if text == "auto" else _positive_float(text)


def _pixel_size(text: str) -> list:
    return [_positive_float(v) for v in text.split(",")]


def _tile(text: str):
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tile takes auto, none or a number of pixels, got {text!r}") from None
    if value < 16:
        raise argparse.ArgumentTypeError(f"--tile must be at least 16 px, got {value}")
    return value


def _param(text: str) -> tuple:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param takes KEY=VALUE (e.g. l2=0.0234), got {text!r}")
    try:
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--param {key}: {value!r} is not a number") from None


def build_parser() -> argparse.ArgumentParser:
    from .models import MODELS
    from .solve import METHODS

    parser = argparse.ArgumentParser(
        prog="mollifier", description="Reaction-rate maps from chromatin images with mollifier layers.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Commands::")[1].split("Run")[0],
    )
    parser.add_argument("--version", action="version", version=f"napari-mollifier {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    p = sub.add_parser("infer", parents=[common], help="rate maps of image files (batch)",
                       description="Infer rate maps from image files (one job per INPUT, or per pair).",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=INFER_EPILOG)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files / zarr folders / SMLM tables")
    p.add_argument("--phi-h", metavar="FILE", help="single-channel phi_h file (with --phi-e)")
    p.add_argument("--phi-e", metavar="FILE", help="single-channel phi_e file (with --phi-h)")
    p.add_argument("--pairs", action="store_true", help="INPUTs are phi_h, phi_e file pairs")
    p.add_argument("--channels", metavar="H,E", help="channel indices or names of phi_h,phi_e (one = density)")
    p.add_argument("--t", type=int, default=None, metavar="N", help="time point of a time series")
    p.add_argument("--roi", action="append", metavar="FILE",
                   help="ROI label image (0 = background): once for all jobs, or once per job in order")
    p.add_argument("--model", default="chromatin-balance", choices=sorted(MODELS))
    p.add_argument("--param", action="append", type=_param, default=[], metavar="KEY=VALUE",
                   help="model coefficient, lengths in um (repeatable), e.g. --param l2=0.0234")
    p.add_argument("--radius", type=_radius, default="auto", help="kernel radius in pixels, or auto (default)")
    p.add_argument("--method", default="direct", choices=METHODS)
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument("--pixel-size", type=_pixel_size, metavar="UM[,UM]",
                   help="pixel size in um (overrides the file; a file without one is read at 1 per pixel with a "
                        "warning, and then --param is refused)")
    p.add_argument("--n-bootstrap", type=int, default=100, help="noise realisations for the uncertainty (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--roi-mode", default="image", choices=("image", "isolate"))
    p.add_argument("--kernel", default="poly")
    p.add_argument("--boundary", default="mask")
    p.add_argument("--iterations", type=int, default=None, help="network iterations (network methods)")
    p.add_argument("--allow-constant", action="store_true",
                   help="accept a channel that is constant over the image (refused by default: no contrast)")
    p.add_argument("--smlm-pixel", type=_positive_float, default=20.0, metavar="NM",
                   help="pixel size of rendered SMLM tables, nm (default 20)")
    p.add_argument("--smlm-render", default="histogram", choices=("histogram", "gaussian"))
    p.add_argument("--smlm-sigma", type=_positive_float, default=None, metavar="NM",
                   help="Gaussian rendering width, nm (default: median localisation uncertainty, else 1 px)")
    p.add_argument("--smlm-unit", default="nm", help="unit of SMLM coordinates without one in the header")
    p.add_argument("--tile", type=_tile, default="auto", metavar="auto|none|PX")
    p.add_argument("--format", default="ome-tif", choices=("ome-tif", "ome-zarr", "npz"))
    p.add_argument("--out", default="mollifier-out", metavar="DIR", help="output folder (default mollifier-out)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="dask.distributed scheduler address (tcp://host:8786), or 'local' for a local cluster")

    d = sub.add_parser("demo", parents=[common], help="the synthetic nucleus end to end",
                       description="Infer the rate map of the built-in synthetic nucleus (known truth) and write "
                                   "the maps (OME-TIFF), a figure (PNG), the ROI table (CSV) and the provenance.")
    d.add_argument("--out", default="mollifier-demo", metavar="DIR")
    d.add_argument("--noise", type=float, default=0.01)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--n-bootstrap", type=int, default=40)

    r = sub.add_parser("rerun", parents=[common], help="repeat a recorded run and compare",
                       description="Re-run the computation recorded in a provenance JSON or a saved result and "
                                   "check that it reproduces the saved maps (exit 1 if not).")
    r.add_argument("source", metavar="PROVENANCE_OR_RESULT")
    r.add_argument("--device", default=None, help="run on another device than the recorded one")
    r.add_argument("--data-dir", default=None, metavar="DIR", help="where moved input files are")
    r.add_argument("--out", default=None, metavar="DIR", help="also write the re-run's outputs here")
    _add_domains_parser(sub, common)
    return parser


def _threshold(text: str):
    if text in ("percentile", "otsu"):
        return text
    return _positive_float(text)


def _add_domains_parser(sub, common) -> None:
    from .domains import DEFAULTS as D

    g = sub.add_parser("domains", parents=[common], help="heterochromatin domains of localisation tables",
                       description="Localisations -> Voronoi density -> nucleus outline -> DBSCAN domains -> the "
                                   "lab's geometric rates (Kant et al. 2024). Writes, per table, NAME_domains.csv, "
                                   "NAME_summary.json and NAME_labels/_gamma/_fields.ome.tif to --out.")
    g.add_argument("inputs", nargs="+", metavar="LOCS", help="localisation tables (.csv/.tsv, x and y in nm)")
    g.add_argument("--out", default="domains-out", metavar="DIR", help="output folder (default domains-out)")
    g.add_argument("--pixel-size", type=_positive_float, default=D["pixel_size_nm"], metavar="NM",
                   help=f"pixel size of the output images, nm (default {D['pixel_size_nm']:g})")
    g.add_argument("--threshold", type=_threshold, default=D["threshold"], metavar="percentile|otsu|VALUE",
                   help="density threshold: a percentile (--percentile), otsu, or localisations per um^2")
    g.add_argument("--percentile", type=float, default=D["percentile"], help="default 50 (the lab's)")
    g.add_argument("--eps", type=_positive_float, default=D["eps_nm"], metavar="NM", help="DBSCAN eps, nm (30)")
    g.add_argument("--min-samples", type=int, default=D["min_samples"], help="DBSCAN min_samples (3)")
    g.add_argument("--min-points", type=int, default=D["min_points"], help="smallest domain, localisations (35)")
    g.add_argument("--subsample", type=int, default=D["subsample"], help="analyse 1 in N localisations (0 = automatic: all up to 300k)")
    g.add_argument("--diffusivity", type=_positive_float, default=D["diffusivity"], metavar="UM2_PER_S",
                   help="D in Gamma_ac = D / d^2, um^2/s (1)")
    g.add_argument("--neighbours", action="store_true", help="pool Voronoi cells with their neighbours")
    g.add_argument("--seed", type=int, default=D["seed"])
    g.add_argument("--unit", default="nm", help="unit of coordinates without one in the header (nm)")


def cmd_domains(args) -> int:
    from .domains import analyse_table

    params = {"pixel_size_nm": args.pixel_size, "threshold": args.threshold, "percentile": args.percentile,
              "eps_nm": args.eps, "min_samples": args.min_samples, "min_points": args.min_points,
              "subsample": args.subsample, "diffusivity": args.diffusivity, "neighbours": args.neighbours,
              "seed": args.seed}
    for path in args.inputs:
        t0 = time.perf_counter()
        res = analyse_table(path, unit=args.unit, **params)
        name = Path(path).name.rsplit(".", 1)[0]
        paths = res.save(args.out, name)
        s = res.summary
        if not args.quiet:
            print(f"{Path(path).name}: {s['n_domains']} domains, mean diameter {s['mean_diameter_nm']:.0f} nm, "
                  f"mean spacing {s['mean_spacing_nm']:.0f} nm, LAD thickness {s['lad_thickness_nm']:.0f} nm, "
                  f"threshold {s['density_threshold_per_um2']:.4g} /um^2 ({s['threshold_method']}), "
                  f"{time.perf_counter() - t0:.1f} s -> {paths['table'].parent}")
    return 0


# --------------------------------------------------------------------------- progress
class _Bar:
    """A progress callback: tqdm when installed, else a plain stderr bar."""

    def __init__(self, name: str, enabled: bool):
        self.name, self.enabled, self.bar = name, enabled, None
        self._last = -1

    def __call__(self, step, total, info=None):
        if not self.enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            if self.bar is None:
                self.bar = tqdm(total=total, desc=self.name, file=sys.stderr, leave=False, unit="step",
                                dynamic_ncols=True)
            self.bar.total = total
            self.bar.n = step
            stage = (info or {}).get("stage")
            if stage:
                self.bar.set_postfix_str(str(stage), refresh=False)
            self.bar.refresh()
            return
        percent = int(100 * step / max(total, 1))
        if percent != self._last:
            self._last = percent
            filled = percent // 5
            sys.stderr.write(f"\r{self.name[:30]:<30} [{'#' * filled}{'.' * (20 - filled)}] {percent:3d}%")
            sys.stderr.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self._last >= 0:
            sys.stderr.write("\n")


def _table(rows: list[dict]) -> str:
    columns = [("name", "job"), ("status", "status"), ("shape", "shape"), ("pixel_um", "pixel um"),
               ("radius_px", "radius px"), ("rois", "ROIs"), ("median_rate", "median rate"),
               ("mean_uncertainty", "mean sigma"), ("seconds", "s"), ("result", "output")]

    def fmt(row, key):
        value = row.get("outputs", {}).get("result") if key == "result" else row.get(key, "")
        if key == "result" and value:
            value = Path(value).name
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    cells = [[title for _, title in columns]] + [[fmt(r, k) for k, _ in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- commands
def _jobs(args) -> list[dict]:
    jobs: list[dict] = []
    if args.phi_h or args.phi_e:
        if not (args.phi_h and args.phi_e):
            raise MollifierInputError("--phi-h and --phi-e go together: give both files")
        jobs.append({"phi_h": args.phi_h, "phi_e": args.phi_e})
    if args.pairs:
        if len(args.inputs) % 2:
            raise MollifierInputError(f"--pairs needs an even number of INPUTs (phi_h phi_e ...), got "
                                      f"{len(args.inputs)}")
        jobs += [{"phi_h": a, "phi_e": b} for a, b in zip(args.inputs[::2], args.inputs[1::2])]
    else:
        jobs += [{"image": a} for a in args.inputs]
    if not jobs:
        raise MollifierInputError("no input: give image files, --phi-h/--phi-e, or --pairs H E ...")
    rois = args.roi or []
    if len(rois) == 1:
        for job in jobs:
            job["roi"] = rois[0]
    elif rois:
        if len(rois) != len(jobs):
            raise MollifierInputError(f"give one --roi for all jobs or one per job: {len(rois)} ROI files for "
                                      f"{len(jobs)} jobs")
        for job, roi in zip(jobs, rois):
            job["roi"] = roi
    return jobs


def _client(address: str):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise MollifierInputError("--scheduler needs the 'distributed' package: pip install distributed") from None
    if address == "local":
        return Client(LocalCluster(processes=False))
    return Client(address)


def check_writable(out: Path) -> None:
    """Fail before any computation when the output folder cannot be created or written to."""
    from .io.jobs import _output_error

    probe = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".mollifier-write-test-{os.getpid()}"
        probe.write_bytes(b"")
    except OSError as exc:
        raise _output_error(exc, out) from None
    finally:
        if probe is not None:
            try:
                probe.unlink()
            except OSError:
                pass


def cmd_infer(args) -> int:
    from .io.jobs import run_batch

    jobs = _jobs(args)
    options = {
        "channels": [c.strip() for c in args.channels.split(",")] if args.channels else None,
        "t": args.t,
        "pixel_size": args.pixel_size,
        "smlm": {"pixel_size_nm": args.smlm_pixel, "method": args.smlm_render, "sigma_nm": args.smlm_sigma,
                 "unit": args.smlm_unit},
        "tile": args.tile,
        "model": args.model,
        "params": dict(args.param) or None,
        "radius": args.radius,
        "method": args.method,
        "device": args.device,
        "seed": args.seed,
        "kernel": args.kernel,
        "boundary": args.boundary,
        "roi_mode": args.roi_mode,
        "n_bootstrap": args.n_bootstrap,
        "iterations": args.iterations,
        "raise_errors": args.debug,
        **({"allow_constant": True} if args.allow_constant else {}),
    }
    out = Path(args.out)
    show = not args.quiet
    existed = out.exists()
    check_writable(out)

    def done(row):
        for note in row.get("warnings", ()):
            print(f"mollifier: warning: {row['name']}: {note}", file=sys.stderr)
        if row["status"] != "ok":
            print(f"mollifier: error: {row['name']}: {row['error']}", file=sys.stderr)

    client = _client(args.scheduler) if args.scheduler else None
    try:
        rows = run_batch(jobs, out, client=client, fmt=args.format, on_done=done,
                         progress_factory=(lambda name: _Bar(name, show)) if client is None else None, **options)
    finally:
        if client is not None:
            client.close()
    print(_table(rows))
    failed = sum(r["status"] != "ok" for r in rows)
    if failed == len(rows) and not existed:
        try:
            out.rmdir()  # made by this run and still empty: leave no trace of a run that wrote nothing
        except OSError:
            pass
    if failed:
        print(f"mollifier: {failed} of {len(rows)} job(s) failed", file=sys.stderr)
        return 1
    print(f"wrote {len(rows)} result(s) to {out}/")
    return 0


def _figure(path: Path, sample: dict, result, scores: dict) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    from .io import atomic_path

    inside = sample["nucleus"]
    rate_lim = np.nanpercentile(np.where(inside, sample["rate"], np.nan), [1, 99])
    panels = [
        ("heterochromatin phi_h", sample["phi_h"], "magma", None),
        ("euchromatin phi_e", sample["phi_e"], "viridis", None),
        ("true rate", np.where(inside, sample["rate"], np.nan), "coolwarm", rate_lim),
        (f"inferred rate (R = {result.radius:g} px)", result.rate, "coolwarm", rate_lim),
        ("uncertainty (1 sigma)", result.uncertainty, "cividis", None),
        ("residual", result.residual, "RdBu_r", None),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(11, 7.2), constrained_layout=True)
    for ax, (title, data, cmap, lim) in zip(axes.ravel(), panels):
        kw = {}
        if lim is not None:
            kw = {"vmin": lim[0], "vmax": lim[1]}
        elif cmap == "RdBu_r":
            m = np.nanpercentile(np.abs(data), 99) if np.isfinite(data).any() else 1.0
            kw = {"vmin": -m, "vmax": m}
        im = ax.imshow(data, cmap=cmap, **kw)
        ax.set_title(title, fontsize=10)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"Synthetic nucleus: Pearson r = {scores['pearson_r']:.3f}, relative L2 error = "
                 f"{scores['relative_l2_error']:.3f}, 2-sigma coverage = {scores['coverage_2sigma']:.2f}")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def cmd_demo(args) -> int:
    import numpy as np

    from . import demo
    from .io import atomic_path, file_sha256, to_json, write_ome_tiff
    from .io.jobs import write_outputs

    out = Path(args.out)
    check_writable(out)
    started = time.perf_counter()
    print(f"Synthetic nucleus, noise std {args.noise}, seed {args.seed}; model chromatin-balance", flush=True)
    outcome = demo.run(noise=args.noise, seed=args.seed, out=None, n_bootstrap=args.n_bootstrap)
    result, scores = outcome["result"], outcome["scores"]
    shape = result.rate.shape
    # the sample demo.run solved (deterministic in its arguments), for the figure and the input files
    sample = demo.synthetic_nucleus(shape=shape, pixel_size=result.provenance["pixel_size"][0], seed=args.seed,
                                    noise=args.noise)
    # inputs as files, so that `mollifier rerun` can repeat the run exactly
    px = result.provenance["pixel_size"]
    inputs = out / "demo_input.ome.tif"
    roi_file = out / "demo_roi.ome.tif"
    write_ome_tiff(inputs, {"phi_h": sample["phi_h"], "phi_e": sample["phi_e"]}, px,
                   description={"description": sample["description"], "params": sample["params"]})
    write_ome_tiff(roi_file, {"nucleus": sample["nucleus"].astype(np.uint8)}, px, dtype=np.uint8)
    write_ome_tiff(out / "demo_true_rate.ome.tif", {"rate": sample["rate"]}, px)

    kwargs = {k: result.provenance[k] for k in ("model", "params", "radius", "method", "device", "seed",
                                                "kernel", "boundary", "roi_mode", "n_bootstrap")}
    kwargs.update({"noise": "auto", "iterations": None, "base": "mlp", "pixel_size": list(px)})
    result.provenance["inputs"] = [
        {"role": "image", "path": str(inputs.resolve()), "sha256": file_sha256(inputs)},
        {"role": "roi", "path": str(roi_file.resolve()), "sha256": file_sha256(roi_file)},
    ]
    result.provenance["call"] = {"function": "napari_mollifier.infer_rates",
                                 "load": {"channels": [0, 1], "t": None, "pixel_size": None, "smlm": None},
                                 "kwargs": kwargs}
    paths = write_outputs(result, out, "demo", "ome-tif", protect=[inputs, roi_file])
    figure = out / "demo_figure.png"
    _figure(figure, sample, result, scores)
    with atomic_path(out / "demo_scores.json") as tmp:
        tmp.write_text(to_json(scores, indent=2))
    for key, value in scores.items():
        print(f"  {key:>18}: {value:.4g}" if isinstance(value, float) else f"  {key:>18}: {value}")
    print(_table([{"name": "demo", "status": "ok", "shape": "x".join(map(str, shape)), "pixel_um": float(px[0]),
                   "radius_px": float(result.radius), "rois": len(result.roi_stats),
                   "median_rate": float(np.nanmedian(result.rate)),
                   "mean_uncertainty": float(np.nanmean(result.uncertainty)),
                   "seconds": round(time.perf_counter() - started, 1), "outputs": paths}]))
    print(f"wrote {Path(paths['result']).name}, {figure.name}, {Path(paths['rois']).name}, "
          f"{Path(paths['provenance']).name} (+ inputs and truth) to {out}/")
    return 0


def cmd_rerun(args) -> int:
    from .io import load_result
    from .io.jobs import write_outputs
    from .rerun import compare_results, read_provenance, rerun

    prov, origin = read_provenance(args.source)
    saved = None
    source = Path(args.source)
    if source.name.lower().endswith(".json"):
        from .io import from_json

        record = from_json(source.read_text())
        name = (record.get("outputs") or {}).get("result")
        if name and (source.parent / name).exists():
            saved = load_result(source.parent / name)
    else:
        saved = load_result(source)
    bar = _Bar("rerun", not args.quiet)
    try:
        result = rerun(prov, device=args.device, data_dir=args.data_dir or origin, progress=bar)
    finally:
        bar.close()
    if args.out:
        name = source.name.split(".")[0] + "_rerun"
        paths = write_outputs(result, args.out, name, "ome-tif")
        print(f"wrote {paths['result']}")
    if saved is None:
        print(f"re-ran {source.name}: no saved maps found to compare with")
        return 0
    diff = compare_results(saved, result)
    if diff["identical"]:
        print(f"re-ran {source.name}: identical to the saved result (rate, uncertainty, residual and fields "
              "bit for bit)")
        return 0
    worst = ", ".join(f"{k} {v:.3g}" for k, v in diff.items() if k != "identical")
    changed = args.device is not None and args.device != prov.get("device")
    print(f"re-ran {source.name}: differs from the saved result (max |difference|: {worst})"
          + (f" -- expected on device {args.device} instead of {prov.get('device')}" if changed else ""))
    return 0 if changed else 1


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    command = {"infer": cmd_infer, "demo": cmd_demo, "rerun": cmd_rerun, "domains": cmd_domains}[args.command]
    try:
        return command(args)
    except KeyboardInterrupt:
        print("mollifier: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, no traceback, unless --debug
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, (MollifierInputError, OSError)):
            message = f"{type(exc).__name__}: {message}"
        print(f"mollifier: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
