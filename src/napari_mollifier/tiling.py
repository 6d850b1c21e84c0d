"""Large images: memory estimates, and tiled runs that give the untiled result.

Every output pixel of :func:`~napari_mollifier.derivatives` depends only on the input within the kernel's
support (``half_width(radius)`` pixels); a rate map from :func:`~napari_mollifier.infer_rates` (``method=
"direct"``) depends on the input within twice that, because the residual smooths the rate map again with the
same kernel, and within three times that with an uncertainty map, whose bias term smooths the change of the map
and then its excess over the noise. So an image can be cut into tiles, each extended by that halo
(:func:`dask.array.map_overlap`), solved on its own and trimmed back: the stitched maps equal the untiled ones up
to floating-point round-off. At the image's own edges a tile sees exactly what the untiled run sees (the halo is
only added between tiles, and the tile's own boundary handling -- mask, reflect... -- is then the image's).

What is *not* tile-local, and how the tiled run handles it:

* ``radius="auto"``: the radius is chosen once, on a central crop (see :func:`infer_tiled`), then fixed;
* the input noise model (level, pixel correlation, correlation between fields) is estimated once on the whole
  image and passed to every tile, so the propagated uncertainty is tile-local too;
* a single density channel is split into volume fractions once, with percentiles of the whole image;
* with ``uncertainty="bootstrap"`` the noise realisations are drawn per tile (seed ``seed + tile index``): that
  uncertainty is statistically the same but not bit-identical to an untiled run (the rate and the residual are);
* network methods fit one network to the whole image and are not tiled.

Memory: :func:`estimate_memory` counts the float buffers the convolutions need (``bytes per pixel x pixels``,
where bytes per pixel = dtype size x (kernels + window taps + correction coefficients + working maps)), on the
safe side: 8-25 % above the measured CPU peaks of 2-D rate maps (2048 x 2048, radius 3 and 6 px, mask and
reflect boundaries). :func:`plan_tiles` compares it with the free memory of the device
and picks a tile size that fits, or says what to do when none does.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass

import numpy as np

from .errors import MollifierInputError, MollifierWarning, RunCancelled, renamed_keyword
from .kernels import half_width, multi_indices
from .models import get_model
from .mollifier import default_keys, key_terms

__all__ = [
    "halo",
    "estimate_memory",
    "available_memory",
    "plan_tiles",
    "TilePlan",
    "derivatives_tiled",
    "infer_tiled",
    "infer_auto",
    "infer_with_retry",
    "retry_tiles",
]

#: Fraction of the free memory a run may plan to use.
MEMORY_FRACTION = 0.6
#: Smallest tile side considered by the automatic plan (pixels, before the halo).
MIN_TILE = 64


def halo(radius: float, *, derivatives_only: bool = False, uncertainty: bool = False) -> int:
    """Return the pixels a tile must see beyond its edge.

    The kernel half-width (derivatives), twice it (rate maps: the residual smooths the rate again) or three times
    it (with an uncertainty: its bias term smooths the change of the rate map, then its excess over the noise).

    Parameters
    ----------
    radius : float
        Kernel radius, pixels.
    derivatives_only : bool
        Derivatives only (one half-width).
    uncertainty : bool
        A rate map with an uncertainty (three half-widths rather than two).

    Returns
    -------
    int
        The halo, pixels.
    """
    h = half_width(float(radius))
    return h if derivatives_only else (3 if uncertainty else 2) * h


# --------------------------------------------------------------------------- memory
def _alphas(keys, ndim) -> set:
    return {alpha for key in keys for alpha, _ in key_terms(key, ndim)}


def _per_pixel(ndim: int, radius: float, order: int, n_alpha: int, masked: bool, n_keys: int, n_pixels: int,
               dtype_bytes: int) -> tuple[float, int]:
    """Return ``(bytes per pixel, kernels)`` of one derivative call."""
    taps = (2 * half_width(radius) + 1) ** ndim
    if masked:
        nb = len(multi_indices(ndim, order + 1))
        kernels = len(multi_indices(ndim, 2 * (order + 1))) + n_alpha * nb
        coef = n_alpha * nb
    else:
        kernels, coef = n_keys, 0
    fft = taps > 4.0 * min(kernels, 8) * math.log2(max(n_pixels, 2))
    conv = 3 * kernels if fft else kernels + taps
    return float(dtype_bytes * (conv + coef + 20)), kernels


def estimate_memory(shape: tuple[int, ...], radius: float, model="chromatin-balance", *, boundary: str = "mask",
                    device: str = "cpu", which: tuple[str, ...] | None = None) -> dict:
    """Estimate the peak memory of one run on an image of ``shape`` (spatial axes only).

    Parameters
    ----------
    shape : tuple of int
        Image shape, pixels.
    radius : float
        Kernel radius in pixels (for ``radius="auto"`` pass the largest radius of the ladder, ``min(shape)/4``).
    model : str or Model, or None
        The model of an :func:`infer_rates` run; ``None`` with ``which`` for a :func:`derivatives` call.
    boundary : str
        ``"mask"`` (the solver's default: per-pixel edge corrections, the expensive case) or a padding mode.
    device : str
        ``"cpu"`` computes in float64 (8 bytes), GPUs in float32 (4 bytes).
    which : tuple of str, optional
        Derivative keys of a :func:`derivatives` call (with ``model=None``; default: its default keys).

    Returns
    -------
    dict
        ``bytes`` (total), ``bytes_per_pixel``, ``kernels`` (convolution kernels of the largest call),
        ``pixels``, ``dtype_bytes``.
    """
    shape = tuple(int(n) for n in shape)
    ndim = len(shape)
    n_pixels = math.prod(shape)
    dtype_bytes = 8 if str(device).split(":")[0] == "cpu" else 4
    if model is None:
        keys = tuple(which or default_keys(ndim))
        alphas = _alphas(keys, ndim)
        order = max(sum(a) for a in alphas)
        per, kernels = _per_pixel(ndim, radius, order, len(alphas), boundary == "mask", len(keys), n_pixels,
                                  dtype_bytes)
    else:
        m = get_model(model)
        needs = m.needs(ndim)
        order = max(sum(a) for keys in needs.values() for a in _alphas(keys, ndim))
        n_alpha = max(len(_alphas(keys, ndim)) for keys in needs.values())
        n_keys = max(len(keys) for keys in needs.values())
        per, kernels = _per_pixel(ndim, radius, order, n_alpha, boundary == "mask", n_keys, n_pixels, dtype_bytes)
        # the bias/residual smoothing is a masked order-0 call whatever the boundary
        per0, k0 = _per_pixel(ndim, radius, 0, 1, True, 1, n_pixels, dtype_bytes)
        per, kernels = max(per, per0), max(kernels, k0)
        per += dtype_bytes * 4 * len(m.inputs)  # inputs, smoothed fields, bootstrap statistics
    return {"bytes": int(per * n_pixels), "bytes_per_pixel": per, "kernels": kernels, "pixels": n_pixels,
            "dtype_bytes": dtype_bytes}


def available_memory(device: str = "cpu") -> int:
    """Return the free memory of ``device`` (``MemAvailable`` for the CPU, ``cudaMemGetInfo`` for a GPU).

    Parameters
    ----------
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

    Returns
    -------
    int
        Bytes (8 GiB when the CPU's free memory cannot be read).

    Raises
    ------
    MollifierInputError
        If the device is not there.
    """
    from .solve import resolve_device

    dev = str(resolve_device(device))  # a device that is not there: the library's MollifierInputError
    if dev.startswith("cuda"):
        import torch

        index = int(dev.split(":")[1]) if ":" in dev else None
        free, _ = torch.cuda.mem_get_info(index)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


@dataclass
class TilePlan:
    """Outcome of :func:`plan_tiles`: ``tile`` (None = untiled), ``halo``, the estimate and the budget."""

    tile: int | None
    halo: int
    estimate: int
    budget: int
    reason: str


def plan_tiles(shape: tuple[int, ...], radius: float, model="chromatin-balance", *, device: str = "cpu",
               boundary: str = "mask", tile: str | int | None = "auto", memory_limit: int | None = None) -> TilePlan:
    """Decide whether (and how) to tile a run so that it fits in memory.

    Parameters
    ----------
    shape, radius, model, device, boundary
        As in :func:`estimate_memory`.
    tile : "auto", int or None
        ``"auto"``: untiled when the estimate fits in ``memory_limit`` (default 60 % of the free memory of
        ``device``), else the largest tile (multiple of 64 px) that fits. An int forces that tile size; None
        forces an untiled run.
    memory_limit : int, optional
        Memory budget, bytes.

    Returns
    -------
    TilePlan
        The tile (None = untiled), the halo, the estimate, the budget and the reason in words.

    Raises
    ------
    MollifierInputError
        When not even a small tile fits: the message says how much is needed and what to change.
    """
    from .solve import resolve_device

    device = str(resolve_device(device))  # a device that is not there: the library's MollifierInputError
    h = halo(radius, uncertainty=True)
    est = estimate_memory(shape, radius, model, boundary=boundary, device=device)
    budget = int(memory_limit) if memory_limit is not None else int(MEMORY_FRACTION * available_memory(device))
    if tile is None or tile == "none":
        return TilePlan(None, h, est["bytes"], budget, "untiled (asked for)")
    if tile != "auto":
        t = int(tile)
        if t < max(h, 1):
            raise MollifierInputError(f"tile {t} px is smaller than the halo ({h} px for radius {radius}): "
                                      f"use a tile of at least {max(h, MIN_TILE)} px")
        return TilePlan(t, h, est["bytes"], budget, f"tile {t} px (asked for)")
    if est["bytes"] <= budget:
        return TilePlan(None, h, est["bytes"], budget, f"fits: ~{_gb(est['bytes'])} of {_gb(budget)}")
    ndim = len(shape)
    max_pixels = budget / est["bytes_per_pixel"]
    side = int(max_pixels ** (1.0 / ndim)) - 2 * h
    side = (side // 64) * 64
    if side < max(MIN_TILE, h):
        smallest = (max(MIN_TILE, h) + 2 * h) ** ndim * est["bytes_per_pixel"]
        raise MollifierInputError(
            f"this run needs ~{_gb(est['bytes'])} on {device} ({' x '.join(map(str, shape))} px, radius {radius} px, "
            f"{est['bytes_per_pixel']:.0f} bytes per pixel) and even a {max(MIN_TILE, h)} px tile needs "
            f"~{_gb(smallest)}, more than the {_gb(budget)} available: use a smaller radius, device='cpu' "
            "(more memory than a GPU), or free memory"
        )
    side = min(side, max(shape))
    return TilePlan(side, h, est["bytes"], budget,
                    f"needs ~{_gb(est['bytes'])} but {_gb(budget)} is available on {device}: tiled, {side} px tiles "
                    f"with a {h} px halo")


# --------------------------------------------------------------------------- dask plumbing
def _axis_chunks(n: int, tile: int, depth: int) -> tuple:
    """Near-equal chunks of at most ``tile`` (each at least ``depth``, as map_overlap needs)."""
    blocks = max(1, math.ceil(n / tile))
    while blocks > 1 and n // blocks < max(depth, 1):
        blocks -= 1
    base, extra = divmod(n, blocks)
    return tuple(base + (1 if i < extra else 0) for i in range(blocks))


def _stack(arrays: list, chunks: tuple, channels: int):
    import dask.array as da

    parts = [da.asarray(a).astype(np.float64).rechunk(chunks) for a in arrays]
    zero = da.zeros(parts[0].shape, dtype=np.float64, chunks=chunks)
    parts += [zero] * (channels - len(parts))
    return da.stack(parts).rechunk((channels,) + chunks)


def _linear(location, numblocks) -> int:
    index = 0
    for loc, n in zip(location[1:], numblocks[1:], strict=True):
        index = index * n + loc
    return index


class _Ticker:
    def __init__(self, total, progress, cancel):
        self.total, self.done = total, 0
        self.progress, self.cancel = progress, cancel
        self.lock = threading.Lock()

    def check(self):
        if self.cancel is not None and self.cancel():
            raise RunCancelled("the run was cancelled; nothing was returned")

    def tick(self, info):
        with self.lock:
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, self.total, dict(info))


def derivatives_tiled(field: np.ndarray, radius: float, pixel_size: float | tuple[float, ...] = 1.0, *,
                      tile: int = 1024, kernel: str = "poly", boundary: str = "reflect",
                      mask: np.ndarray | None = None, which: str | tuple[str, ...] | None = None,
                      ndim: int | None = None, method: str = "auto", scheduler: str = "synchronous",
                      compute: bool = True, spacing: float | tuple[float, ...] | None = None) -> dict:
    """Compute :func:`~napari_mollifier.derivatives` of one 1-D to 3-D image tile by tile (same keys, same values).

    ``field`` (and ``mask``) may be numpy or dask arrays; with ``compute=False`` the result is a dict of lazy
    dask arrays (write them to zarr with ``dask.array.to_zarr`` for images that do not fit in memory).

    Parameters
    ----------
    field : numpy.ndarray or dask.array.Array
        The image.
    radius, pixel_size, kernel, boundary, mask, which, ndim, method
        As in :func:`~napari_mollifier.derivatives`.
    tile : int
        Tile size, pixels (each tile also reads a halo of one kernel half-width).
    scheduler : str
        Dask scheduler.
    compute : bool
        Compute the result (numpy) rather than return lazy dask arrays.
    spacing : float or sequence of float, optional
        Deprecated name of ``pixel_size`` (a ``FutureWarning``).

    Returns
    -------
    dict
        ``{key: array}``, as :func:`~napari_mollifier.derivatives`.

    Raises
    ------
    MollifierInputError
        If ``field`` is not one 1-D, 2-D or 3-D image.
    """
    import dask.array as da

    from .mollifier import derivatives

    pixel_size = renamed_keyword("pixel_size", pixel_size, "spacing", spacing, default=1.0)
    nd = ndim or np.ndim(field)
    if np.ndim(field) != nd or nd not in (1, 2, 3):
        raise MollifierInputError(f"derivatives_tiled takes one 1-D, 2-D or 3-D image, got shape {np.shape(field)}")
    keys = tuple(default_keys(nd) if which is None else ((which,) if isinstance(which, str) else which))
    depth = halo(radius, derivatives_only=True)
    shape = tuple(np.shape(field))
    chunks = tuple(_axis_chunks(n, int(tile), depth) for n in shape)
    k = max(len(keys), 2 if mask is not None else 1)
    arrays = [field] + ([np.asarray(mask, dtype=np.float64) if not hasattr(mask, "compute") else mask]
                        if mask is not None else [])
    stack = _stack(arrays, chunks, k)

    def block(x):
        m = x[1] > 0.5 if mask is not None else None
        out = np.full(x.shape, np.nan)
        if m is not None and not m.any():
            return out
        d = derivatives(x[0], radius, pixel_size=pixel_size, kernel=kernel, boundary=boundary, mask=m, which=keys,
                        ndim=nd, method=method)
        for i, key in enumerate(keys):
            out[i] = d[key]
        return out

    mode = "periodic" if (boundary == "periodic" and mask is None) else "none"
    out = da.map_overlap(block, stack, depth={0: 0, **{i + 1: depth for i in range(nd)}},
                         boundary={0: "none", **{i + 1: mode for i in range(nd)}}, trim=True, dtype=np.float64,
                         meta=np.array((), dtype=np.float64))
    if compute:
        out = out.compute(scheduler=scheduler)
    return {key: out[i] for i, key in enumerate(keys)}


# --------------------------------------------------------------------------- tiled rate maps
def _central_crop(shape, side) -> tuple:
    return tuple(slice(max(0, (n - side) // 2), max(0, (n - side) // 2) + min(n, side)) for n in shape)


def infer_tiled(fields: dict, model="chromatin-balance", params=None, pixel_size=1.0, radius="auto",
                method: str = "direct", roi=None, device="auto", seed: int = 0, progress=None, cancel=None, *,
                tile: int = 1024, kernel: str = "poly", boundary: str = "mask", roi_mode: str = "image",
                uncertainty: str = "propagate", n_bootstrap: int = 100, noise="auto", noise_correlation=None,
                radius_rule: str = "lepski", scheduler: str = "synchronous", allow_constant: bool = False,
                unit: str | None = None, iterations: int | None = None):
    """Run :func:`~napari_mollifier.infer_rates` with ``tile=tile`` (kept for scripts and provenance; same checks).

    The rate, residual, smoothed fields and the propagated uncertainty equal those of the untiled run (the noise
    model and the coefficients are settled once on the whole image); a bootstrap uncertainty is drawn per tile
    (module docstring). ``radius="auto"`` is chosen once on a central crop of ``max(tile, 512)`` px (recorded in
    ``provenance["tiling"]``): the same radius as untiled when the image fits in the crop. ``progress(step,
    total, info)`` is called once per tile. Inputs may be dask arrays (read lazily from zarr or a big TIFF);
    inputs and outputs are held in memory as float64 (8 bytes per pixel each), the convolution buffers (1-2 kB
    per pixel) only per tile.

    Parameters
    ----------
    fields, model, params, pixel_size, radius, method, roi, device, seed, progress, cancel, kernel, boundary, \
roi_mode, uncertainty, n_bootstrap, noise, noise_correlation, radius_rule, allow_constant, unit, iterations
        As in :func:`~napari_mollifier.infer_rates`.
    tile : int
        Tile size, pixels.
    scheduler : str
        Dask scheduler.

    Returns
    -------
    RateResult
        As :func:`~napari_mollifier.infer_rates`, with ``provenance["tiling"]``.

    Raises
    ------
    MollifierInputError
        As :func:`~napari_mollifier.infer_rates`.
    """
    from .solve import _PREPARE_ARGS, _prepare

    given = locals()
    prep = _prepare(**{k: given[k] for k in _PREPARE_ARGS}, tiled=True)
    return _infer_tiled_prepared(prep, int(tile), progress, cancel, kernel, scheduler)


def solve_prepared(prep, *, tile, memory_limit=None, progress=None, cancel=None, kernel="poly", base="mlp",
                   scheduler: str = "synchronous"):
    """Solve checked inputs (``napari_mollifier.solve._prepare``) untiled or in tiles.

    In tiles of ``tile`` px, untiled (``tile=None``), or, for ``tile="auto"``, untiled when the memory estimate
    fits (:func:`plan_tiles`); a device out-of-memory error is retried in smaller tiles (:func:`retry_tiles`, each
    retry a warning, listed in ``provenance["memory_retries"]``).

    Parameters
    ----------
    prep
        The prepared inputs.
    tile : "auto", int or None
        Tile size, pixels.
    memory_limit : int, optional
        Memory budget for ``tile="auto"``, bytes.
    progress, cancel, kernel, base
        As in :func:`~napari_mollifier.infer_rates`.
    scheduler : str
        Dask scheduler.

    Returns
    -------
    RateResult
        The result.

    Raises
    ------
    MollifierInputError
        On a bad ``tile``.
    MollifierMemoryError
        When even the smallest tiles do not fit.
    """
    from .errors import MollifierMemoryError
    from .solve import _solve

    if isinstance(tile, str):
        if tile != "auto":
            raise MollifierInputError(f"tile must be None, a number of pixels or 'auto', got {tile!r}")
        r_est = float(min(prep.shape) / 4.0) if prep.auto else float(prep.radius)
        plan = plan_tiles(prep.shape, r_est, prep.m, device=str(prep.dev), boundary=prep.boundary,
                          tile=tile if prep.method == "direct" else None, memory_limit=memory_limit)
        current = None if plan.tile is None or all(n <= plan.tile for n in prep.shape) else int(plan.tile)
    elif tile is None:  # untiled first, tiles only after an out-of-memory error
        current = None
    else:
        current = _tile_size(tile)
    retries = []
    while True:
        try:
            if current is None:
                result = _solve(prep, progress, cancel, kernel, base)
            else:
                result = _infer_tiled_prepared(prep, current, progress, cancel, kernel, scheduler)
            if retries:
                result.provenance["memory_retries"] = retries
            return result
        except MollifierMemoryError as exc:
            options = retry_tiles(prep.shape, current) if prep.method == "direct" else []
            retries.append({"tile": current, "error": str(exc)})
            if not options:
                raise MollifierMemoryError(
                    f"{exc}" + (f" (tiles down to {current} px were tried)" if current is not None else "")
                ) from None
            nxt = options[0]
            warnings.warn(
                f"out of memory on {prep.dev} with "
                f"{'the untiled run' if current is None else f'{current} px tiles'}: retrying in {nxt} px tiles "
                "(same rate map; the uncertainty is then a bootstrap per tile)", MollifierWarning, stacklevel=2)
            current = nxt


def _tile_size(tile) -> int:
    try:
        size = int(tile)
    except (TypeError, ValueError):
        size = -1
    if isinstance(tile, bool) or size != tile or size < 1:
        raise MollifierInputError(f"tile must be None, a positive number of pixels or 'auto', got {tile!r}")
    return size


def _infer_tiled_prepared(prep, tile: int, progress, cancel, kernel, scheduler):
    """Solve checked inputs in tiles: the radius on a central crop, then one untiled solve per tile."""
    from .result import RateResult
    from .solve import _hash, _roi_stats, infer_rates

    started = time.perf_counter()
    m, arrays, shape, spacing, valid = prep.m, prep.arrays, prep.shape, prep.spacing, prep.valid
    inputs = list(m.inputs)
    ndim = len(shape)
    labels = prep.labels if prep.roi_given else None
    dev, seed, radius = str(prep.dev), prep.seed, prep.radius
    noise_levels = prep.noise_model
    if noise_levels is None:  # tiles need it only for an uncertainty or the radius rule; settle it once anyway
        from .solve import _noise_model

        noise_levels = _noise_model("auto", None, arrays, valid, estimate=True, allow_zero=prep.allow_constant)
    # the texture check of an untiled solve (napari_mollifier.texture), once for the whole image; the tiles get
    # its noise model and do not check again
    from .solve import _Context
    from .texture import check_prepared

    noise_levels = check_prepared(prep, _Context(m, prep.p, spacing, kernel, prep.boundary, prep.dev, None, None,
                                                 total=0), noise_levels)
    common = dict(model=m, params=prep.p, pixel_size=spacing, kernel=kernel, boundary=prep.boundary,
                  roi_mode=prep.roi_mode, noise=noise_levels, allow_constant=True, unit=prep.unit, device=dev)
    radius_note = None
    if prep.auto:
        crop = _central_crop(shape, max(int(tile), 512))
        sub = {k: arrays[k][crop] for k in inputs}
        sub_roi = None if labels is None else labels[crop]
        if sub_roi is not None and not (sub_roi > 0).any():
            sub_roi = None
        probe = infer_rates(sub, radius="auto", roi=sub_roi, seed=seed, uncertainty="none",
                            radius_rule=prep.radius_rule, **common)
        radius = float(probe.radius)
        radius_note = {"chosen_on": [[s.start, s.stop] for s in crop], "radius": radius,
                       "radius_choice": probe.provenance.get("radius_choice")}
    radius = float(radius)
    uncertainty, n_bootstrap = prep.uncertainty, prep.n_bootstrap_given
    depth = halo(radius, uncertainty=uncertainty != "none")
    if int(tile) < depth:
        raise MollifierInputError(f"tile {tile} px is smaller than the halo ({depth} px for radius {radius:g}): "
                                  f"use tile >= {2 * depth} px")
    chunks = tuple(_axis_chunks(n, int(tile), depth) for n in shape)
    n_tiles = math.prod(len(c) for c in chunks)
    n_in = len(inputs)
    channels = 3 + n_in
    label_source = labels if labels is not None else np.ones(shape)
    stack = _stack([arrays[k] for k in inputs] + [label_source], chunks, channels)
    ticker = _Ticker(n_tiles, progress, cancel)
    sample = {}

    def block(x, block_info=None):
        ticker.check()
        index = _linear(block_info[0]["chunk-location"], block_info[0]["num-chunks"]) if block_info else 0
        out = np.full(x.shape, np.nan)
        tile_fields = {k: x[i] for i, k in enumerate(inputs)}
        tile_valid = np.all([np.isfinite(v) for v in tile_fields.values()], axis=0)
        lab = np.where(tile_valid & np.isfinite(x[n_in]), x[n_in], 0).astype(np.int64)
        if (lab > 0).any():
            with warnings.catch_warnings():  # warnings are given once for the whole image (checks, flag_result)
                warnings.simplefilter("ignore", MollifierWarning)
                res = infer_rates(tile_fields, radius=radius, method="direct", roi=lab, seed=int(seed) + index,
                                  uncertainty=uncertainty, n_bootstrap=n_bootstrap, **common)
            out[0], out[1], out[2] = res.rate, res.uncertainty, res.residual
            for i, k in enumerate(inputs):
                if k in res.fields:
                    out[3 + i] = res.fields[k]
            sample.setdefault("provenance", res.provenance)
        ticker.tick({"stage": "tile", "tile": index + 1, "tiles": n_tiles})
        return out

    mapped = stack.map_overlap(block, depth={0: 0, **{i + 1: depth for i in range(ndim)}},
                               boundary={0: "none", **{i + 1: "none" for i in range(ndim)}}, trim=True,
                               dtype=np.float64, meta=np.array((), dtype=np.float64))
    result = mapped.compute(scheduler=scheduler)

    lab_full = np.ones(shape, dtype=np.int64) if labels is None else labels
    label_ids = [int(v) for v in np.unique(lab_full) if v > 0]
    stats = [_roi_stats(lab, (lab_full == lab) & valid, result[0], result[1], spacing, radius) for lab in label_ids
             if ((lab_full == lab) & valid).any()]
    prov = {k: v for k, v in (sample.get("provenance") or {}).items()
            if k not in ("rate_level", "rate_level_note", "negative_rate")}
    prov.update({
        "params": prep.p,
        "param_sources": prep.param_sources,
        "coefficient_estimate": prep.coefficient_estimate,
        "plausibility": prep.plausibility,
        "unit": prep.unit,
        "radius": radius if radius_note is None else "auto",
        "radius_used": {str(k): radius for k in label_ids},
        "radius_choice": {} if radius_note is None else {"tiled": radius_note},
        "radius_rule": prep.radius_rule,
        "device": dev,
        "seed": int(seed),
        "n_bootstrap": prep.n_bootstrap_given,
        "noise": dict(noise_levels.sigma),
        "noise_correlation": noise_levels.correlation_length,
        "noise_model": noise_levels.as_dict(),
        "input_hashes": {k: _hash(v) for k, v in arrays.items()},
        "density_split": prep.split,
        "roi_hash": _hash(lab_full),
        "labels": label_ids,
        "seconds": round(time.perf_counter() - started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tiling": {"tile": int(tile), "halo": depth, "tiles": n_tiles, "chunks": [list(c) for c in chunks],
                   "uncertainty": ("parametric bootstrap per tile (noise draws seeded seed + tile index)"
                                   if uncertainty == "bootstrap" else "as untiled (noise model of the whole image)")
                   + "; rate, residual and fields equal the untiled run"},
    })
    from .fractions import flag_result  # the level label and the negative-rate flags, once for the whole image

    flag_result(m, prep.fields, prep.split, result[0], result[1], lab_full, stats, prov)
    return RateResult(rate=result[0], uncertainty=result[1], residual=result[2],
                      fields={k: result[3 + i] for i, k in enumerate(inputs)}, radius=radius,
                      labels=np.where(valid, lab_full, 0), roi_stats=stats, provenance=prov)


def tiled_kwargs(kwargs: dict) -> dict:
    """Drop the network options (``iterations``, ``base``) from ``kwargs`` of :func:`infer_rates`.

    They are unused by ``method="direct"``, the only method :func:`infer_tiled` runs.

    Parameters
    ----------
    kwargs : dict
        Keyword arguments of :func:`infer_rates`.

    Returns
    -------
    dict
        Those of :func:`infer_tiled`.
    """
    return {k: v for k, v in kwargs.items() if k not in ("iterations", "base")}


def retry_tiles(shape: tuple[int, ...], after: int | None = None) -> list:
    """List the tile sizes to try after an out-of-memory error.

    Half the image (or half of ``after``, the tile that failed), halved again down to :data:`MIN_TILE`,
    multiples of 64 px.

    Parameters
    ----------
    shape : tuple of int
        Image shape, pixels.
    after : int, optional
        The tile size that failed (None: the untiled run).

    Returns
    -------
    list of int
        Tile sizes, decreasing (empty when none is left).
    """
    start = (max(shape) // 2) if after is None else int(after) // 2
    sizes = []
    if after is not None and start < MIN_TILE:
        return sizes
    side = max(MIN_TILE, (start // 64) * 64)
    while side >= MIN_TILE and (not sizes or side < sizes[-1]) and side < max(shape):
        sizes.append(side)
        side = (side // 2 // 64) * 64
    return sizes


def infer_with_retry(fields: dict, *, tile: int | None = None, **kwargs: object) -> tuple:
    """Run :func:`infer_rates` untiled or in tiles, retried in smaller tiles when the device runs out of memory.

    Untiled with ``tile=None``, else in ``tile`` px tiles (:class:`MollifierMemoryError`; :func:`solve_prepared`).

    ``method="direct"`` only is retried (network methods are not tiled). Each retry emits a
    :class:`~napari_mollifier.errors.MollifierWarning`; returns ``(result, tile used or None, retries)`` where
    ``retries`` lists ``{"tile", "error"}`` of the failed attempts. When even :data:`MIN_TILE` px tiles do not
    fit, the last :class:`MollifierMemoryError` is raised with the fix.

    Parameters
    ----------
    fields : dict
        As in :func:`infer_rates`.
    tile : int, optional
        Tile size, pixels.
    **kwargs
        Further arguments of :func:`infer_rates`.

    Returns
    -------
    tuple
        ``(result, tile used or None, retries)``.
    """
    from .solve import prepare_call

    prep, args = prepare_call(fields, tiled=tile is not None, **kwargs)
    result = solve_prepared(prep, tile=tile, progress=args["progress"], cancel=args["cancel"], kernel=args["kernel"],
                            base=args["base"])
    used = result.provenance.get("tiling", {}).get("tile")
    return result, used, list(result.provenance.get("memory_retries", []))


def infer_auto(fields: dict, *, tile: str | int | None = "auto", memory_limit: int | None = None,
               **kwargs: object):
    """Run :func:`~napari_mollifier.infer_rates` with ``tile="auto"`` (kept for scripts).

    Tiled when the memory estimate does not fit (or when ``tile`` is an int), retried in smaller tiles on a device
    out-of-memory error (``provenance["memory_retries"]``); ``provenance["tiling"]`` is present when the run was
    tiled.

    Parameters
    ----------
    fields : dict
        As in :func:`~napari_mollifier.infer_rates`.
    tile : "auto", int or None
        Tile size, pixels.
    memory_limit : int, optional
        Memory budget, bytes.
    **kwargs
        Further arguments of :func:`~napari_mollifier.infer_rates`.

    Returns
    -------
    RateResult
        The result.
    """
    from .solve import infer_rates

    return infer_rates(fields, tile=tile, memory_limit=memory_limit, **kwargs)
