"""Checks of the solver's arguments, bounds on work and memory, and warnings about the input fields.

Used alike by :func:`napari_mollifier.infer_rates` (at the top, before any work), the ``mollifier`` CLI and
:func:`napari_mollifier.rerun` (on a provenance's recorded call), so one bad value gives one message wherever it
comes from: a :class:`~napari_mollifier.errors.MollifierInputError` naming the argument (or provenance key), the
value and the fix.

Bounds (documented in docs/reliability.md):

* ``n_bootstrap``: an integer, 0 (no bootstrap) or 2 .. :data:`MAX_BOOTSTRAP`;
* ``iterations`` (network methods): an integer 1 .. :data:`MAX_ITERATIONS` (``None``: the default
  :data:`napari_mollifier.methods.network.DEFAULT_ITERATIONS`; 0 is refused);
* ``seed``: an integer 0 .. 2**64 - 1;
* ``pixel_size``: finite, :data:`PIXEL_SIZE_RANGE` (in the unit of the call: micrometres for files, so 1 pm to
  1 m; a time step for ``langevin``);
* model coefficients (``params``) and ``noise``: finite real numbers (noise >= 0).
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from .errors import MollifierInputError, MollifierWarning, find_stack_level
from .methods.network import DEFAULT_ITERATIONS

__all__ = [
    "MAX_BOOTSTRAP", "MAX_ITERATIONS", "MAX_SEED", "PIXEL_SIZE_RANGE", "RUN_TIME_WARN_S",
    "check_n_bootstrap", "check_iterations", "check_seed", "check_pixel_size", "check_params", "check_noise",
    "check_model", "check_solver_arguments", "estimate_run_seconds", "run_time_note", "warn_run_time",
    "warn_extreme_pixels", "memory_budget", "check_memory",
]

#: Largest number of bootstrap samples accepted (100 is the usual choice; 10 000 at 256 x 256 px already takes
#: tens of minutes on a laptop CPU).
MAX_BOOTSTRAP = 10_000
#: Largest number of network iterations accepted.
MAX_ITERATIONS = 1_000_000
MAX_SEED = 2**64 - 1
#: Accepted pixel sizes, in the call's unit (um for files and the CLI).
PIXEL_SIZE_RANGE = (1e-6, 1e6)
#: A run estimated to take longer than this (seconds) is announced with a warning before it starts.
RUN_TIME_WARN_S = 600.0
#: Seconds per pixel and per mollified solve (one rate evaluation and its propagated variance at one radius) on
#: the 2-core development machine when idle, from benchmarks/RESULTS.md (bench_solver.py --parts default,
#: 2026-12-02): the 2048 x 2048 four-nuclei default call took 77.6 s for 13 rungs + 2 final solves (1.2e-6 s per
#: pixel-solve, cold); the 512 x 512 warm call 1.94 s (about 5e-7). Radii that are large against the image cost
#: more (most pixels are then edge pixels with their own kernels): up to ~3x. The estimate counts every rung of
#: the ladder (Lepski's rule usually stops earlier), so it is an upper order of magnitude, not a promise.
SECONDS_PER_PIXEL_SOLVE = 1.5e-6
#: One bootstrap re-solve (noise draw, derivatives at two radii with the mask-edge systems) per pixel: 100 samples
#: at radius 10 on a 256 x 256 image took about 2 min (issue #12), about 1e-5 s per pixel and re-solve.
SECONDS_PER_PIXEL_BOOTSTRAP = 1e-5
#: The same for one network iteration per pixel (64 x 64 px, radius 4: 0.64 s per iteration at load 12, /6).
SECONDS_PER_PIXEL_ITERATION = 2.5e-5
_LADDER_STEP = 1.25


def _where(key: str | None, name: str) -> str:
    return f"provenance key {key}" if key else name


def _integer(value, name: str, key: str | None, lo: int, hi: int, fix: str) -> int:
    where = _where(key, name)
    if isinstance(value, bool) or value is None:
        raise MollifierInputError(f"{where} must be an integer {lo} .. {hi}, got {value!r}: {fix}")
    if isinstance(value, numbers.Integral):
        number = int(value)
    elif isinstance(value, (float, np.floating)):
        if not math.isfinite(value) or not float(value).is_integer():
            raise MollifierInputError(f"{where} must be a whole number {lo} .. {hi}, got {value!r}: {fix}")
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit() and len(value) < 40:
        number = int(value)
    else:
        raise MollifierInputError(
            f"{where} must be an integer {lo} .. {hi}, got {type(value).__name__} {str(value)[:40]!r}: {fix}"
        )
    if not lo <= number <= hi:
        shown = str(number) if len(str(number)) < 25 else f"an integer of {len(str(abs(number)))} digits"
        raise MollifierInputError(f"{where} must be between {lo} and {hi}, got {shown}: {fix}")
    return number


def check_n_bootstrap(value, *, key: str | None = None) -> int:
    """``n_bootstrap``: 0 (no bootstrap uncertainty) or an integer 2 .. :data:`MAX_BOOTSTRAP`."""
    n = _integer(value, "n_bootstrap", key, 0, MAX_BOOTSTRAP,
                 f"use 0 (no bootstrap uncertainty) or 2 .. {MAX_BOOTSTRAP} noise realisations (100 is usual)")
    if n == 1:
        raise MollifierInputError(f"{_where(key, 'n_bootstrap')} must be 0 (no uncertainty) or at least 2, got 1")
    return n


def check_iterations(value, *, key: str | None = None) -> int | None:
    """Check ``iterations`` of the network methods.

    None (the default :data:`DEFAULT_ITERATIONS`) or an integer 1 .. :data:`MAX_ITERATIONS` (0 is refused).
    """
    if value is None:
        return None
    return _integer(value, "iterations", key, 1, MAX_ITERATIONS,
                    f"give a positive number of network iterations (default {DEFAULT_ITERATIONS}), "
                    f"at most {MAX_ITERATIONS}")


def check_seed(value, *, key: str | None = None) -> int:
    """``seed``: an integer 0 .. 2**64 - 1."""
    return _integer(value, "seed", key, 0, MAX_SEED, "use a non-negative integer seed below 2**64")


def check_pixel_size(value, *, key: str | None = None, unit: str = "") -> tuple:
    """``pixel_size``: one number or one per axis, each finite and inside :data:`PIXEL_SIZE_RANGE`."""
    where = _where(key, "pixel_size")
    lo, hi = PIXEL_SIZE_RANGE
    try:
        values = np.atleast_1d(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise MollifierInputError(f"{where} must be one number or one per axis, got {value!r}") from None
    if values.ndim != 1 or values.size == 0:
        raise MollifierInputError(f"{where} must be one number or one per axis, got {value!r}")
    for v in values:
        if not (math.isfinite(v) and lo <= v <= hi):
            raise MollifierInputError(
                f"{where} {float(v):g}{(' ' + unit) if unit else ''} is outside the accepted range {lo:g} .. "
                f"{hi:g}{(' ' + unit) if unit else ''}: give the physical size of one pixel (e.g. 0.02 for "
                "20 nm pixels in um)"
            )
    return tuple(float(v) for v in values)


def check_params(params, *, key: str | None = None) -> None:
    """Check model coefficients.

    A dict of names to finite real numbers, or ``"auto"`` / ``"default"`` (the units policy,
    :func:`napari_mollifier.coefficients.resolve_coefficients`).
    """
    if params is None:
        return
    where = _where(key, "params")
    if isinstance(params, str):
        if params in ("auto", "default"):
            return
        raise MollifierInputError(f"{where} must be a dict of coefficients, 'auto' or 'default', got {params!r}")
    if not isinstance(params, dict):
        raise MollifierInputError(f"{where} must be a dict of coefficient names to numbers, got "
                                  f"{type(params).__name__}")
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
            raise MollifierInputError(f"{where}: coefficient {name!r} must be a number, got "
                                      f"{type(value).__name__} {str(value)[:40]!r}")
        if not math.isfinite(float(value)):
            raise MollifierInputError(
                f"coefficient {name} = {float(value)} is not a finite number: give {name} as a finite number "
                "(lengths in the units of the pixel size, e.g. um^2 for l2)"
            )


def check_noise(noise, *, key: str | None = None) -> None:
    """``noise``: ``"auto"``, a non-negative finite number, or a dict of them per field."""
    where = _where(key, "noise")
    from .noise import NoiseModel

    if isinstance(noise, NoiseModel):
        noise = dict(noise.sigma)
    if isinstance(noise, str):
        if noise != "auto":
            raise MollifierInputError(f"{where} must be 'auto', a number or a dict per field, got {noise!r}")
        return
    items = noise.items() if isinstance(noise, dict) else [(None, noise)]
    for name, value in items:
        label = f"noise of {name!r}" if name is not None else "noise"
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
            raise MollifierInputError(f"{where}: {label} must be a number or 'auto', got {str(value)[:40]!r}")
        if not (math.isfinite(float(value)) and float(value) >= 0):
            raise MollifierInputError(
                f"{label} = {float(value)} is not a non-negative finite number: give the noise standard deviation "
                "of the input (>= 0), or noise='auto' to estimate it from the data"
            )


def check_model(model, *, key: str | None = None) -> None:
    """Check a registered model name (or a Model instance)."""
    from .models import MODELS, Model

    if isinstance(model, Model):
        return
    if not isinstance(model, str) or model not in MODELS:
        raise MollifierInputError(f"{_where(key, 'model')}: unknown model {str(model)[:60]!r}: use one of "
                                  f"{sorted(MODELS)}")


def check_solver_arguments(*, model=None, params=None, pixel_size=None, n_bootstrap=0, iterations=None, seed=0,
                           noise="auto", prefix: str | None = None) -> dict:
    """Check all of the above at once; ``prefix`` (e.g. ``"call.kwargs"``) names provenance keys in the messages.

    Returns the normalised ``{"n_bootstrap", "iterations", "seed"}``.
    """

    def key(name):
        return f"{prefix}.{name}" if prefix else None

    if model is not None:
        check_model(model, key=key("model"))
    check_params(params, key=key("params"))
    if pixel_size is not None:
        check_pixel_size(pixel_size, key=key("pixel_size"))
    check_noise(noise, key=key("noise"))
    return {"n_bootstrap": check_n_bootstrap(n_bootstrap, key=key("n_bootstrap")),
            "iterations": check_iterations(iterations, key=key("iterations")),
            "seed": check_seed(seed, key=key("seed"))}


# --------------------------------------------------------------------------- work
def _rungs(extent: int, order: int = 2) -> int:
    r_min = float(max(order + 1, 3))
    r_max = max(r_min, extent / 4.0)
    return 1 + int(math.floor(math.log(r_max / r_min) / math.log(_LADDER_STEP) + 1e-9))


def estimate_run_seconds(shape, *, radius="auto", n_bootstrap: int = 0, method: str = "direct",
                         iterations: int | None = None) -> dict:
    """Estimate an order-of-magnitude run time from counts.

    Pixels x (radius-ladder rungs + 2 + 2 per bootstrap sample) solves, plus pixels x iterations for the network
    methods (:data:`SECONDS_PER_PIXEL_SOLVE`, :data:`SECONDS_PER_PIXEL_BOOTSTRAP`,
    :data:`SECONDS_PER_PIXEL_ITERATION`).

    Returns ``{"seconds", "pixels", "rungs", "solves", "iterations"}``.
    """
    pixels = int(np.prod([int(n) for n in shape]))
    rungs = _rungs(min(int(n) for n in shape)) if isinstance(radius, str) else 0
    boot = int(n_bootstrap) if method == "direct" else 0
    its = 0 if method == "direct" else (DEFAULT_ITERATIONS if iterations is None else int(iterations))
    solves = rungs + 2 + 2 * boot
    seconds = pixels * ((rungs + 2) * SECONDS_PER_PIXEL_SOLVE + 2 * boot * SECONDS_PER_PIXEL_BOOTSTRAP
                        + its * SECONDS_PER_PIXEL_ITERATION)
    return {"seconds": seconds, "pixels": pixels, "rungs": rungs, "solves": solves, "iterations": its}


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def run_time_note(shape, *, radius="auto", n_bootstrap: int = 0, method: str = "direct", iterations=None,
                  n_runs: int = 1, threshold: float | None = None) -> str | None:
    """Return the warning text for a run estimated to take longer than ``threshold`` seconds.

    The run is ``n_runs`` solves of ``shape`` (e.g. slices of a stack); ``threshold`` defaults to
    :data:`RUN_TIME_WARN_S`. The text names the estimate and how to cut it; None for a shorter run. The widget
    shows it before it starts a run.
    """
    est = estimate_run_seconds(shape, radius=radius, n_bootstrap=n_bootstrap or 0, method=method,
                               iterations=iterations)
    seconds = est["seconds"] * max(int(n_runs), 1)
    if seconds <= (RUN_TIME_WARN_S if threshold is None else threshold):
        return None
    cuts = []
    if method == "direct" and n_bootstrap:
        cuts.append(f"fewer bootstrap samples (n_bootstrap={n_bootstrap}: --n-bootstrap 20, or 0 for none)")
    if est["iterations"]:
        cuts.append(f"fewer iterations ({est['iterations']}: --iterations)")
    if est["rungs"]:
        cuts.append(f"a fixed radius instead of 'auto' ({est['rungs']} ladder rungs: --radius 8)")
    cuts.append("a smaller image or ROI (crop or bin it)")
    work = f"{est['solves']} solves per label" + (f", {est['iterations']} iterations" if est["iterations"] else "")
    runs = f" x {n_runs} slices" if n_runs > 1 else ""
    return (f"this run is estimated to take about {_duration(seconds)} ({' x '.join(map(str, shape))} px{runs}, "
            f"{work}); to cut it use {'; '.join(cuts)}")


def warn_run_time(shape, *, radius="auto", n_bootstrap: int = 0, method: str = "direct", iterations=None,
                  threshold: float | None = None) -> dict:
    """Warn (:class:`~napari_mollifier.errors.MollifierWarning`) before a run estimated to take too long.

    Too long is longer than ``threshold`` seconds (default :data:`RUN_TIME_WARN_S`); the text is
    :func:`run_time_note`. Returns the estimate.
    """
    note = run_time_note(shape, radius=radius, n_bootstrap=n_bootstrap, method=method, iterations=iterations,
                         threshold=threshold)
    if note is not None:
        warnings.warn(note, MollifierWarning, stacklevel=find_stack_level())
    return estimate_run_seconds(shape, radius=radius, n_bootstrap=n_bootstrap, method=method, iterations=iterations)


# --------------------------------------------------------------------------- input fields
def warn_extreme_pixels(arrays: dict, valid=None, *, z_threshold: float = 1e3, max_isolated: float = 1e-3) -> list:
    """Warn when isolated extreme pixels (hot pixels, a stray 1e300) would dominate the rate map.

    A pixel counts when its robust z-score ``|x - median| / scale`` is above ``z_threshold`` (``scale``: 1.4826 x
    the median absolute deviation, or 1/6 of the 0.5-99.5 percentile range when that is larger, so two-level
    fields are not flagged) and it differs from the median of its 3 x 3 (x 3) neighbours by as much: an isolated
    spike, not a bright structure. Nothing is said when more than ``max_isolated`` of the pixels count (that is
    the image, not a few pixels). Returns ``[(field, count, worst value)]`` for the fields warned about.
    """
    out = []
    for name, arr in arrays.items():
        a = np.asarray(arr, dtype=np.float64)
        finite = np.isfinite(a) if valid is None else (np.asarray(valid, bool) & np.isfinite(a))
        values = a[finite]
        if values.size < 16:
            continue
        sample = values if values.size <= 1_000_000 else values[:: values.size // 1_000_000 + 1]
        med = float(np.median(sample))
        lo, hi = np.percentile(sample, [0.5, 99.5])
        scale = max(1.4826 * float(np.median(np.abs(sample - med))), float(hi - lo) / 6.0)
        if not (math.isfinite(scale) and scale > 0):
            scale = max(abs(med), 1.0) * 1e-12
        with np.errstate(over="ignore", invalid="ignore"):
            z = np.abs(a - med) / scale
        candidates = np.argwhere(finite & (z > z_threshold))
        if candidates.size == 0 or len(candidates) > max_isolated * values.size:
            continue
        isolated = []
        filled = np.where(finite, a, med)
        for idx in candidates[:10_000]:
            start = [max(int(i) - 1, 0) for i in idx]
            block = filled[tuple(slice(s0, int(i) + 2) for s0, i in zip(start, idx, strict=True))]
            centre = filled[tuple(idx)]
            here = np.ravel_multi_index(tuple(int(i) - s0 for i, s0 in zip(idx, start, strict=True)), block.shape)
            neighbours = np.delete(block.ravel(), here)
            with np.errstate(over="ignore", invalid="ignore"):
                if abs(float(centre) - float(np.median(neighbours))) / scale > z_threshold:
                    isolated.append(idx)
        if not isolated:
            continue
        worst = max(isolated, key=lambda i: abs(float(a[tuple(i)]) - med))
        value = float(a[tuple(worst)])
        out.append((name, len(isolated), value))
        warnings.warn(
            f"field {name!r} has {len(isolated)} isolated extreme pixel(s) (e.g. {value:.3g} at "
            f"{tuple(int(i) for i in worst)}, {abs(value - med) / scale:.2g} robust standard deviations from the "
            f"median {med:.3g}): they dominate the rate map around them; remove hot pixels (a 3x3 median filter) "
            "or set them to NaN (missing data)", MollifierWarning, stacklevel=find_stack_level())
    return out


# --------------------------------------------------------------------------- memory
def memory_budget() -> int:
    """Return the bytes this process may still allocate.

    That is the available RAM (``MemAvailable``), lowered to what the address-space limit (``ulimit -v``,
    ``RLIMIT_AS``) leaves above the current size of the process.
    """
    from .tiling import available_memory

    budget = int(available_memory("cpu"))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1):
            used = 0
            try:
                with open("/proc/self/status") as fh:
                    for line in fh:
                        if line.startswith("VmSize:"):
                            used = int(line.split()[1]) * 1024
                            break
            except OSError:
                pass
            budget = min(budget, max(int(soft) - used, 0))
    except (ImportError, ValueError, OSError):
        pass
    return budget


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**28 else f"{n / 2**20:.0f} MB"


def check_memory(nbytes: float, what: str, fix: str, *, budget: int | None = None) -> None:
    """Refuse (before allocating) ``nbytes`` for ``what`` when more than the budget (:func:`memory_budget`)."""
    budget = memory_budget() if budget is None else int(budget)
    if nbytes > budget:
        raise MollifierInputError(f"{what} needs {_gb(nbytes)} of memory but only {_gb(budget)} is available: "
                                  f"{fix}")
