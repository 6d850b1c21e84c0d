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
import errno
import math
import os
import signal
import sys
import time
from pathlib import Path

from ._version import __version__
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
are in um^(power). The model defaults are in the reference data's box units, so for an image with a physical
pixel size and no --param l2, l2 is estimated from the image (and a warning says so): --params auto asks for the
estimate, --params default for the box-unit values.

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


def _validated(check, text: str):
    """Make an argparse type from a :mod:`napari_mollifier.validation` check (the same bounds as the API)."""
    try:
        value = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    try:
        return check(value)
    except MollifierInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _n_bootstrap(text: str) -> int:
    from .validation import check_n_bootstrap

    return _validated(check_n_bootstrap, text)


def _seed(text: str) -> int:
    from .validation import check_seed

    return _validated(check_seed, text)


def _iterations(text: str) -> int:
    from .validation import check_iterations

    return _validated(check_iterations, text)


def _radius(text: str):
    return "auto" if text == "auto" else _positive_float(text)


def _pixel_size(text: str) -> list:
    from .validation import check_pixel_size

    values = [_positive_float(v) for v in text.split(",")]
    try:
        check_pixel_size(values, unit="um")
    except MollifierInputError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("pixel_size", "--pixel-size-um", 1)) from None
    return values


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


def solver_defaults() -> dict:
    """Return the defaults of :func:`napari_mollifier.infer_rates`, by argument name.

    The CLI's defaults are the library's.
    """
    import inspect

    from .solve import infer_rates

    return {name: p.default for name, p in inspect.signature(infer_rates).parameters.items()
            if p.default is not inspect.Parameter.empty}


def build_parser() -> argparse.ArgumentParser:
    """Build the ``mollifier`` command line: its sub-commands and every option with its help text."""
    from .app.jobs import OUTPUT_FORMATS
    from .coefficients import COEFFICIENT_MODES
    from .io.smlm import DEFAULT_RENDER_METHOD, DEFAULT_RENDER_PIXEL_SIZE, RENDER_METHODS
    from .kernels import KERNEL_FAMILIES
    from .methods.network import DEFAULT_ITERATIONS
    from .models import MODELS
    from .mollifier import BOUNDARIES
    from .solve import METHODS, RADIUS_RULES, ROI_MODES, UNCERTAINTY_METHODS
    from .validation import MAX_ITERATIONS

    S = solver_defaults()  # noqa: N806 - a table, read like a constant

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
                   help="ROI label image (0 = background): once for all jobs, or once per job in order. Without "
                        "--roi the nucleus is detected (Otsu on the smoothed total chromatin) and written as "
                        "NAME_nucleus.ome.tif; --roi whole solves the whole image")
    p.add_argument("--model", default=S["model"], choices=sorted(MODELS),
                   help="the PDE whose closed form gives the rate: chromatin-balance (2nd order, default; coefficient "
                        "l2), chromatin-phase-field (4th order; a, phi_max, l_int, mobility), heat, langevin "
                        "(docs/science.md)")
    p.add_argument("--param", action="append", type=_param, default=[], metavar="KEY=VALUE",
                   help="model coefficient, lengths in um (repeatable), e.g. --param l2=0.0234")
    p.add_argument("--params", choices=COEFFICIENT_MODES, default=None,
                   help="coefficients not given with --param: 'auto' estimates l2 from the image (self-consistency, "
                        "docs/science.md), 'default' uses the box-unit defaults on purpose. Without it, an image with "
                        "a physical pixel size gets l2 estimated, with a warning")
    p.add_argument("--radius", type=_radius, default=S["radius"],
                   help="mollifier kernel radius in pixels, or auto (default: the radius at which the map changes "
                        "least, quasi-optimality). A larger radius is smoother and less noisy but blurs features "
                        "smaller than it; to compare cells, run auto on a few and fix the typical value")
    p.add_argument("--method", default=S["method"], choices=METHODS,
                   help="direct (default: the closed form on mollified data, with an uncertainty map), network (a "
                        "mollified network fit) or autodiff (the autodiff-PINN baseline)")
    p.add_argument("--device", default=S["device"], help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument("--pixel-size-um", "--pixel-size", dest="pixel_size", type=_pixel_size, metavar="UM[,UM]",
                   help="pixel size in um (overrides the file; a file without one is read at 1 per pixel with a "
                        "warning, and then --param is refused); --pixel-size is the same option")
    p.add_argument("--uncertainty", default=S["uncertainty"], choices=UNCERTAINTY_METHODS,
                   help="propagate (default: the estimated input noise propagated through the kernels, about one "
                        "extra solve), bootstrap (--n-bootstrap noise realisations, slow) or none")
    p.add_argument("--n-bootstrap", type=_n_bootstrap, default=S["n_bootstrap"],
                   help="noise realisations for --uncertainty bootstrap (0: no uncertainty; 2 .. 10000)")
    p.add_argument("--radius-rule", default=S["radius_rule"], choices=RADIUS_RULES,
                   help="how --radius auto picks the radius: lepski (default: the largest radius whose map stays "
                        "within one standard deviation of the maps at all smaller radii) or quasi-optimality")
    p.add_argument("--seed", type=_seed, default=S["seed"],
                   help="seed of the bootstrap noise and the network, 0 .. 2**64-1 (default 0)")
    p.add_argument("--roi-mode", default=S["roi_mode"], choices=ROI_MODES,
                   help="image (default): derivatives use every valid pixel, the ROI selects where maps are "
                        "reported; isolate: each ROI is solved with its own pixels only (separate nuclei; an edge "
                        "band appears at the ROI border)")
    p.add_argument("--kernel", default=S["kernel"],
                   help=f"mollifier kernel, one of {', '.join(KERNEL_FAMILIES)}: poly (default, (1 - r^2)^8), "
                        "poly<k> with k >= 5, sep (separable tensor product, faster on large images) or bump")
    p.add_argument("--boundary", default=S["boundary"], choices=("mask", *BOUNDARIES),
                   help="mask (default: only valid pixels are used, edges and NaN holes exact), or a padding mode: "
                        "reflect, replicate, periodic (periodic simulations), zeros")
    p.add_argument("--iterations", type=_iterations, default=S["iterations"],
                   help=f"most network iterations (network methods; 1 .. {MAX_ITERATIONS}, default "
                        f"{DEFAULT_ITERATIONS}; the fit stops earlier once the loss stops improving)")
    p.add_argument("--allow-constant", action="store_true",
                   help="accept a channel that is constant over the image (refused by default: no contrast)")
    p.add_argument("--smlm-pixel", type=_positive_float, default=DEFAULT_RENDER_PIXEL_SIZE, metavar="NM",
                   help=f"pixel size of rendered SMLM tables, nm (default {DEFAULT_RENDER_PIXEL_SIZE:g})")
    p.add_argument("--smlm-render", default=DEFAULT_RENDER_METHOD, choices=RENDER_METHODS,
                   help="how SMLM tables are rendered: histogram (default, counts per pixel) or gaussian")
    p.add_argument("--smlm-sigma", type=_positive_float, default=None, metavar="NM",
                   help="Gaussian rendering width, nm (default: median localisation uncertainty, else 1 px)")
    p.add_argument("--smlm-unit", default="nm", help="unit of SMLM coordinates without one in the header")
    p.add_argument("--tile", type=_tile, default="auto", metavar="auto|none|PX",
                   help="auto (default): tiles with a halo only when the image does not fit in memory; none; or a "
                        "tile size in pixels")
    p.add_argument("--format", default=next(iter(OUTPUT_FORMATS)), choices=tuple(OUTPUT_FORMATS),
                   help="format of the result file (default ome-tif)")
    p.add_argument("--out", default="mollifier-out", metavar="DIR", help="output folder (default mollifier-out)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="dask.distributed scheduler address (tcp://host:8786), or 'local' for a local cluster")

    d = sub.add_parser("demo", parents=[common], help="the synthetic nucleus end to end",
                       description="Infer the rate map of the built-in synthetic nucleus (known truth) and write "
                                   "the maps (OME-TIFF), a figure (PNG), the ROI table (CSV) and the provenance.")
    d.add_argument("--out", default="mollifier-demo", metavar="DIR", help="output folder (default mollifier-demo)")
    d.add_argument("--noise", type=float, default=0.01,
                   help="Gaussian noise std added to the synthetic fields, volume fraction (default 0.01)")
    d.add_argument("--seed", type=_seed, default=0, help="seed of the synthetic nucleus and of its noise (default 0)")
    d.add_argument("--n-bootstrap", type=_n_bootstrap, default=40,
                   help="noise realisations if the uncertainty is bootstrapped (the default propagates it)")

    r = sub.add_parser("rerun", parents=[common], help="repeat a recorded run and compare",
                       description="Re-run the computation recorded in a provenance JSON or a saved result and "
                                   "check that it reproduces the saved maps (exit 1 if not).")
    r.add_argument("source", metavar="PROVENANCE_OR_RESULT")
    r.add_argument("--device", default=None, help="run on another device than the recorded one")
    r.add_argument("--data-dir", default=None, metavar="DIR", help="where moved input files are")
    r.add_argument("--out", default=None, metavar="DIR", help="also write the re-run's outputs here")
    _add_intensity_options(p)
    _add_domains_parser(sub, common)
    return parser


def _add_intensity_options(p) -> None:
    """``mollifier infer --intensities``: raw intensities -> volume fractions (napari_mollifier.fractions)."""
    from .fractions import DEFAULT_PERCENTILE, DEFAULT_TOTAL_FRACTION, TOTAL_FRACTION_RANGE

    g = p.add_argument_group("raw intensities")
    g.add_argument("--intensities", action="store_true",
                   help="the two channels are raw intensities (H3K9me3-like, H3K27ac-like), not volume fractions: "
                        "subtract the background (median outside --roi), scale each mark by a high percentile "
                        "inside it and set the mean phi_h + phi_e to --total-fraction. The rate map's level is "
                        "then relative (only its pattern is meaningful)")
    g.add_argument("--total-fraction", type=float, default=None, metavar="F",
                   help=f"with --intensities: mean chromatin fraction phi_h + phi_e in the nucleus (default "
                        f"{DEFAULT_TOTAL_FRACTION:g}, {TOTAL_FRACTION_RANGE[0]:g}..{TOTAL_FRACTION_RANGE[1]:g})")
    g.add_argument("--intensity-percentile", type=float, default=None, metavar="P",
                   help=f"with --intensities: percentile that scales each mark (default {DEFAULT_PERCENTILE:g})")
    g.add_argument("--nucleus", default=None, metavar="FILE",
                   help="with --intensities: nucleus mask (0 = outside) for the background and the scales; "
                        "default: the --roi. Draw the --roi one kernel radius inside the nucleus' edge")
    g.add_argument("--mark-ratio", default=None, metavar="R|estimate",
                   help="with --intensities: phi_h of the brightest heterochromatin over phi_e of the brightest "
                        "euchromatin (default 1), or 'estimate' (smoothest rate at the domain scale; needs "
                        "--param l2=...)")


def _intensity_options(args) -> dict:
    """Build the ``intensities`` option of infer_files from ``--intensities`` (and its two settings)."""
    settings = {k: v for k, v in (("total_fraction", args.total_fraction),
                                  ("percentile", args.intensity_percentile),
                                  ("mark_ratio", args.mark_ratio), ("nucleus_file", args.nucleus))
                if v is not None}
    if not args.intensities:
        if settings:
            raise MollifierInputError("--total-fraction, --intensity-percentile, --mark-ratio and --nucleus go "
                                      "with --intensities (raw intensity channels): add --intensities, or drop "
                                      "them")
        return {}
    if args.nucleus is not None:
        if not Path(args.nucleus).exists():
            raise MollifierInputError(f"--nucleus {args.nucleus}: no such file")
        settings["nucleus_file"] = str(Path(args.nucleus).resolve())
    ratio = settings.get("mark_ratio")
    if ratio is not None and ratio != "estimate":
        try:
            settings["mark_ratio"] = float(ratio)
        except ValueError:
            raise MollifierInputError(f"--mark-ratio takes a positive number or 'estimate', got {ratio!r}") from None
    elif ratio == "estimate":
        l2 = dict(args.param).get("l2")
        if l2 is None:
            raise MollifierInputError("--mark-ratio estimate needs l2 in um^2: add --param l2=... (e.g. 0.0234)")
        settings["l2"] = l2
    return {"intensities": settings}


def _threshold(text: str):
    from .domains.pipeline import THRESHOLD_METHODS

    if text in THRESHOLD_METHODS:
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
    g.add_argument("--pixel-size-nm", dest="pixel_size", type=_positive_float, default=D["pixel_size"], metavar="NM",
                   help=f"pixel size of the output images, nm (default {D['pixel_size']:g})")
    g.add_argument("--pixel-size", dest="pixel_size_old", type=_positive_float, default=None, metavar="NM",
                   help="deprecated name of --pixel-size-nm (the same number, in nm)")
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
    g.add_argument("--seed", type=_seed, default=D["seed"])
    g.add_argument("--unit", default="nm", help="unit of coordinates without one in the header (nm)")


def cmd_domains(args) -> int:
    from .domains import analyse_table

    pixel_size = args.pixel_size
    if args.pixel_size_old is not None:
        print("mollifier: warning: domains --pixel-size is deprecated: use --pixel-size-nm (the same number, nm)",
              file=sys.stderr)
        pixel_size = args.pixel_size_old
    params = {"pixel_size": pixel_size, "threshold": args.threshold, "percentile": args.percentile,
              "eps_nm": args.eps, "min_samples": args.min_samples, "min_points": args.min_points,
              "subsample": args.subsample, "diffusivity": args.diffusivity, "neighbours": args.neighbours,
              "seed": args.seed}
    out = Path(args.out)
    check_writable(out)  # before any computation
    failed = []
    for path in args.inputs:  # a bad table is reported and the others still run
        t0 = time.perf_counter()
        try:
            res = analyse_table(path, unit=args.unit, **params)
            name = Path(path).name.rsplit(".", 1)[0]
            paths = res.save(out, name)
        except Exception as exc:
            if args.debug:
                raise
            print(f"mollifier: error: {Path(path).name}: {_one_line(exc)}", file=sys.stderr)
            failed.append(Path(path).name)
            continue
        s = res.summary
        if not args.quiet:
            print(f"{Path(path).name}: {s['n_domains']} domains, mean diameter {s['mean_diameter_nm']:.0f} nm, "
                  f"mean spacing {s['mean_spacing_nm']:.0f} nm, LAD thickness {s['lad_thickness_nm']:.0f} nm, "
                  f"threshold {s['density_threshold_per_um2']:.4g} /um^2 ({s['threshold_method']}), "
                  f"{time.perf_counter() - t0:.1f} s -> {paths['table'].parent}")
    if failed:
        print(f"mollifier: {len(failed)} of {len(args.inputs)} table(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        return 1
    return 0


def _one_line(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if not isinstance(exc, (MollifierInputError, OSError)):
        message = f"{type(exc).__name__}: {message}"
    return message


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
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
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
        jobs += [{"phi_h": a, "phi_e": b} for a, b in zip(args.inputs[::2], args.inputs[1::2], strict=True)]
    else:
        jobs += [{"image": a} for a in args.inputs]
    if not jobs:
        raise MollifierInputError("no input: give image files, --phi-h/--phi-e, or --pairs H E ...")
    rois = args.roi or []
    if rois == ["whole"]:  # the whole image, on purpose
        rois = []
    elif not rois:  # no ROI: detect the nucleus (written as NAME_nucleus.ome.tif, recorded in the provenance)
        rois = ["auto"]
    if "whole" in rois or ("auto" in rois and len(rois) > 1):
        raise MollifierInputError("--roi whole (or no --roi) applies to all jobs: give it alone, not with ROI files")
    if len(rois) == 1:
        for job in jobs:
            job["roi"] = rois[0]
    elif rois:
        if len(rois) != len(jobs):
            raise MollifierInputError(f"give one --roi for all jobs or one per job: {len(rois)} ROI files for "
                                      f"{len(jobs)} jobs")
        for job, roi in zip(jobs, rois, strict=True):
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
    """Fail before any computation when the output folder cannot be created or written to.

    Creates nothing: the folder is made when the first result is published, so a run stopped before that leaves
    no empty folder.
    """
    from .app.jobs import _output_error
    from .errors import MollifierOutputError

    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    if base.exists() and not base.is_dir():
        err = MollifierOutputError(f"cannot write the outputs to {out}: {base} is a file, not a folder; nothing "
                                   "was written: choose another output folder (--out)")
        err.errno = errno.ENOTDIR
        raise err
    probe = base / f".mollifier-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        raise _output_error(exc, out) from None
    finally:
        try:  # noqa: SIM105 - explicit
            probe.unlink()
        except OSError:
            pass


def cmd_infer(args) -> int:
    from .app.jobs import run_batch

    jobs = _jobs(args)
    options = {
        "channels": [c.strip() for c in args.channels.split(",")] if args.channels else None,
        "t": args.t,
        "pixel_size": args.pixel_size,
        "smlm": {"pixel_size": args.smlm_pixel, "method": args.smlm_render, "sigma_nm": args.smlm_sigma,
                 "unit": args.smlm_unit},
        "tile": args.tile,
        "model": args.model,
        "params": dict(args.param) or None,
        "coefficients": args.params,
        "radius": args.radius,
        "method": args.method,
        "device": args.device,
        "seed": args.seed,
        "kernel": args.kernel,
        "boundary": args.boundary,
        "roi_mode": args.roi_mode,
        "uncertainty": args.uncertainty,
        "n_bootstrap": args.n_bootstrap,
        "radius_rule": args.radius_rule,
        "iterations": args.iterations,
        "raise_errors": args.debug,
        **({"allow_constant": True} if args.allow_constant else {}),
        **_intensity_options(args),
    }
    out = Path(args.out)
    show = not args.quiet
    existed = out.exists()
    check_writable(out)

    def warn(name, note):  # as it happens (the run-time estimate comes before the solve)
        print(f"mollifier: warning: {name}: {note}", file=sys.stderr, flush=True)

    if not args.scheduler:
        options["on_warning"] = warn

    def done(row):
        if args.scheduler:
            for note in row.get("warnings", ()):
                warn(row["name"], note)
        if row["status"] != "ok":
            import re

            error = re.sub(r"\bchannels=", "--channels ", row["error"])  # the CLI flag, not the Python keyword
            print(f"mollifier: error: {row['name']}: {error}", file=sys.stderr)

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
        try:  # noqa: SIM105 - explicit
            out.rmdir()  # made by this run and still empty: leave no trace of a run that wrote nothing
        except OSError:
            pass
    if failed:
        print(f"mollifier: {failed} of {len(rows)} job(s) failed", file=sys.stderr)
        return 1
    print(f"wrote {len(rows)} result(s) to {out}/")
    return 0


def _figure(path: Path, sample: dict, result, scores: dict) -> None:
    from .demo import save_figure  # scale bar, labelled colour bars, grey outside the nucleus (issue 13)

    save_figure(path, sample, result, scores)


def cmd_demo(args) -> int:
    import numpy as np

    from . import demo
    from .app.jobs import write_outputs
    from .io import atomic_path, file_sha256, to_json, write_ome_tiff

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
                                                "kernel", "boundary", "roi_mode", "n_bootstrap", "radius_rule")}
    kwargs["uncertainty"] = result.provenance["uncertainty_method"]
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
    from .app.jobs import write_outputs
    from .app.rerun import compare_results, read_provenance, rerun
    from .io import load_result

    source = Path(args.source)
    _finish_interrupted_writes(source.parent)
    prov, origin = read_provenance(args.source)
    saved = None
    if source.name.lower().endswith(".json"):
        from .io import from_json

        record = from_json(source.read_text())
        outputs = record.get("outputs") or {}
        name = outputs.get("result") if isinstance(outputs, dict) else None
        if name is not None and (not isinstance(name, str) or not name or name in (".", "..")
                                 or Path(name).name != name or "\\" in name):
            raise MollifierInputError(
                f"{source}: provenance key outputs.result must be the bare file name of the result beside it, got "
                f"{str(name)[:80]!r}: a provenance cannot point rerun at another folder's result"
            )
        if name and (source.parent / name).exists():
            saved = load_result(source.parent / name)
            if saved.provenance.get("created") != prov.get("created"):
                raise MollifierInputError(
                    f"{source.name} and {name} are from different runs (created {prov.get('created')} and "
                    f"{saved.provenance.get('created')}): the folder was written by two runs at once or a write was "
                    "interrupted; run mollifier infer again to write a complete result"
                )
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


def _finish_interrupted_writes(folder: Path) -> None:
    """Complete (or clear) what a killed writer left in ``folder`` before reading from it.

    A folder that cannot be written (read-only data) is read as it is.
    """
    from .io.publish import folder_lock, recover_folder

    try:
        if folder.is_dir():
            with folder_lock(folder, timeout=30):
                for note in recover_folder(folder):
                    print(f"mollifier: warning: {note}", file=sys.stderr)
    except OSError:
        pass


def main(argv=None) -> int:
    """Run ``mollifier`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    command = {"infer": cmd_infer, "demo": cmd_demo, "rerun": cmd_rerun, "domains": cmd_domains}[args.command]
    previous = _catch_sigterm()
    try:
        return command(args)
    except KeyboardInterrupt as exc:  # Ctrl-C, and SIGTERM (timeout, SLURM, docker stop) alike
        if isinstance(exc, Terminated):
            print("mollifier: terminated (SIGTERM)", file=sys.stderr)
            return 143
        print("mollifier: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, no traceback, unless --debug
        if args.debug:
            raise
        print(f"mollifier: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that every ``finally`` (staging folders) runs."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _catch_sigterm():
    """Make SIGTERM raise :class:`Terminated` (main thread only); returns the previous handler."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except (ValueError, OSError):
        return None


if __name__ == "__main__":
    sys.exit(main())
