"""``infer_rates``: from observed fields to a rate map, its uncertainty and the PDE residual.

The one public entry point the widget, the CLI and scripts call. Steps:

1. mollified derivatives of the (derived) fields the model needs (:mod:`napari_mollifier.mollifier`), in the
   image's physical units, using only valid pixels (``boundary="mask"``: finite pixels of the image, or of the ROI
   with ``roi_mode="isolate"``) so image edges, holes and ROI edges are handled without bias;
2. the rate: the model's separable closed form (``method="direct"``) or a mollified network fit
   (``"network"``; ``"autodiff"`` is the autodiff-PINN baseline);
3. ``radius="auto"``: on a geometric ladder of radii ``R_k = R_min 1.25^k`` the largest radius whose map stays
   within one propagated standard deviation of the maps at all smaller radii (Lepski's rule; ``radius_rule=
   "quasi-optimality"`` keeps the previous rule). All labels of a label image climb one shared ladder
   (:mod:`napari_mollifier.methods.direct`);
4. uncertainty (``uncertainty="propagate"``): the input noise, estimated with its correlation between pixels and
   between fields (:func:`napari_mollifier.noise.estimate_noise_model`), propagated through the kernels used at
   each pixel and the linearised closed form, plus the smoothing bias from the change to radius R / 1.25;
   ``uncertainty = sqrt(noise^2 + bias^2)`` (docs/science.md, "What the uncertainty means"). Model error is not
   included. ``"bootstrap"`` draws ``n_bootstrap`` realisations of the same noise model instead;
5. residual: the model residual with the rate map smoothed by the same kernel (what the model fails to explain at
   the kernel scale).
"""

from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import dataclass

import numpy as np
import torch

from ._version import __version__
from .errors import MollifierInputError, MollifierMemoryError, RunCancelled
from .methods.direct import (
    _LEPSKI_SAMPLES,
    LADDER_STEP,
    LEPSKI_KAPPA,
    DerivativeLadder,
    _jacobian,
    change_variance,
    lepski_accepts,
    lepski_changes,
    propagate,
    radius_ladder,
)
from .methods.network import DEFAULT_ITERATIONS, DEFAULT_PATIENCE, DEFAULT_REL_TOL
from .models import Model, get_model
from .mollifier import derivatives
from .noise import NoiseModel, blur_white_noise, estimate_noise_model
from .result import RateResult

__all__ = ["infer_rates", "resolve_device", "METHODS", "UNCERTAINTY_METHODS", "RADIUS_RULES", "ROI_MODES"]

METHODS = ("direct", "network", "autodiff")
UNCERTAINTY_METHODS = ("propagate", "bootstrap", "none")
RADIUS_RULES = ("lepski", "quasi-optimality")
ROI_MODES = ("image", "isolate")  # how an ROI is solved: inside the whole image, or on its own pixels
_LADDER_STEP = LADDER_STEP
_UNCERTAINTY_TEXT = {
    "propagate": "sqrt(noise^2 + bias^2): the input noise (estimated level, pixel correlation and correlation "
    "between fields) propagated through the kernels used at each pixel and the linearised closed form (delta "
    "method), plus the smoothing bias estimated from the change to radius R/1.25 where it exceeds twice its noise",
    "bootstrap": "sqrt(noise^2 + bias^2): parametric bootstrap at the estimated input noise (correlated draws), "
    "plus the smoothing bias estimated from the change to radius R/1.25 where it exceeds twice its noise",
    "none": "not computed",
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve a device name: ``"auto"`` -> cuda if available, then mps, then cpu; anything else must exist.

    Parameters
    ----------
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``...

    Returns
    -------
    torch.device
        The device.

    Raises
    ------
    MollifierInputError
        If a CUDA or MPS device is asked for but not available.
    """
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MollifierInputError("device 'cuda' was asked for but no CUDA GPU is available: use device='cpu'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MollifierInputError("device 'mps' was asked for but is not available: use device='cpu'")
    return dev


def _dtype_for(device: torch.device) -> torch.dtype:
    return torch.float64 if device.type == "cpu" else torch.float32


def _check_fields(fields, model: Model) -> dict[str, np.ndarray]:
    if not isinstance(fields, dict) or not fields:
        raise MollifierInputError(f"fields must be a dict of arrays with keys {model.inputs} for model {model.name!r}")
    missing = [k for k in model.inputs if k not in fields]
    if missing:
        raise MollifierInputError(
            f"model {model.name!r} needs fields {model.inputs}; missing {missing} (got {sorted(fields)})"
        )
    arrays = {}
    for name in model.inputs:
        arr = np.asarray(fields[name])
        if arr.dtype == object or np.iscomplexobj(arr) or arr.dtype.kind not in "biuf":
            raise MollifierInputError(f"field {name!r} must be a real numeric image, got dtype {arr.dtype}")
        arrays[name] = arr.astype(np.float64)
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise MollifierInputError(f"all fields must have the same shape, got {[a.shape for a in arrays.values()]}")
    shape = shapes.pop()
    if len(shape) == 3 and shape[-1] in (3, 4) and min(shape[:2]) > 4 * shape[-1]:
        raise MollifierInputError(
            f"fields of shape {shape} look like an RGB/RGBA image (last axis {shape[-1]}): chromatin fractions are "
            "one channel each -- pick the channel, or pass (z, y, x) volumes with z first"
        )
    allowed = (1,) if model.ndim == 1 else (2, 3)
    if len(shape) not in allowed:
        raise MollifierInputError(
            f"model {model.name!r} takes {' or '.join(f'{n}-D' for n in allowed)} fields, got shape {shape}"
            + (": pick one channel or slice (RGB images are not chromatin fractions)" if len(shape) > 3 else "")
        )
    return arrays


def _labels_from_roi(roi, shape) -> np.ndarray:
    if roi is None:
        return np.ones(shape, dtype=np.int64)
    labels = np.asarray(roi)
    if labels.shape != shape:
        raise MollifierInputError(f"roi shape {labels.shape} does not match the image shape {shape}")
    if labels.dtype == bool or labels.dtype.kind in "iu" or labels.dtype.kind == "f" and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    else:
        raise MollifierInputError(f"roi must be a boolean mask or an integer label image, got dtype {labels.dtype}")
    if not (labels > 0).any():
        raise MollifierInputError("the ROI is empty (no pixel inside): draw an ROI over the nucleus, or pass roi=None")
    return labels


def _spacing(pixel_size, ndim) -> tuple[float, ...]:
    values = np.atleast_1d(np.asarray(pixel_size, dtype=np.float64))
    if values.size not in (1, ndim) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise MollifierInputError(f"pixel_size must be one positive number or {ndim} (one per axis), got {pixel_size!r}")
    return tuple(float(v) for v in np.broadcast_to(values, (ndim,)))


def _hash(array: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str((array.shape, str(array.dtype))).encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


class _Context:
    """Shared state of one run: progress accounting, cancel checks, derivative settings."""

    def __init__(self, model, params, spacing, kernel, boundary, device, progress, cancel, total):
        self.model, self.params, self.spacing = model, params, spacing
        self.kernel, self.boundary, self.device = kernel, boundary, device
        self.dtype = _dtype_for(device)
        self.order = _model_order(model, len(spacing))
        self._progress, self._cancel = progress, cancel
        self.total, self.step = total, 0
        self.region = None  # ROI being solved (output pixels)
        self.started = time.perf_counter()

    def tick(self, info: dict | None = None, n: int = 1) -> None:
        if self._cancel is not None and self._cancel():
            raise RunCancelled("the run was cancelled; nothing was returned")
        self.step = min(self.step + n, self.total)
        if self._progress is not None:
            self._progress(self.step, self.total, dict(info or {}))

    def mollify(self, fields: dict, radius: float, mask: np.ndarray) -> dict:
        """Return ``{derived field: {key: tensor}}`` for the model's needs; ``fields`` values are (B, *S) tensors.

        With ``boundary="mask"`` only pixels of ``self.region`` (the ROI being solved) are computed.
        """
        derived = self.model.derived(fields, self.params)
        needs = self.model.needs(len(self.spacing))
        kwargs = {"mask": mask, "where": self.region} if self.boundary == "mask" else {"boundary": self.boundary}
        return {
            name: derivatives(derived[name], radius, pixel_size=self.spacing, kernel=self.kernel, which=keys,
                              ndim=len(self.spacing), **kwargs)
            for name, keys in needs.items()
        }

    def rate(self, fields: dict, radius: float, mask: np.ndarray) -> torch.Tensor:
        return self.closed_form(self.mollify(fields, radius, mask))

    def closed_form(self, d: dict, region: np.ndarray | None = None) -> torch.Tensor:
        """Evaluate the model's closed form, NaN where its divisor is ~0 or, for a physical fraction, not positive.

        ~0: below 1e-3 of its median magnitude in the ROI, or in ``region`` when given (e.g. a pixel sample);
        a physical fraction is e.g. phi_e.
        """
        rate = self.model.rate(d, self.params)
        den = self.model.denominator(d, self.params)
        region = self.region if region is None else region
        region = torch.as_tensor(region, device=den.device) if region is not None else None
        magnitude = den.abs()[..., region] if region is not None else den.abs()
        finite = magnitude[torch.isfinite(magnitude)].detach()
        floor = 1e-3 * float(finite.median()) if finite.numel() else 0.0
        bad = ~torch.isfinite(den) | (den.abs() <= floor)
        if self.model.positive_denominator:
            bad |= den <= floor
        return rate.masked_fill(bad, float("nan"))


def _tensors(arrays: dict, ctx: _Context) -> dict:
    return {k: torch.as_tensor(v, dtype=ctx.dtype, device=ctx.device)[None] for k, v in arrays.items()}


def _radius_ladder(model_order: int, extent: int) -> list[float]:
    return radius_ladder(model_order, extent)


def _model_order(model: Model, ndim: int) -> int:
    from .mollifier import key_terms

    return max(sum(a) for keys in model.needs(ndim).values() for k in keys for a, _ in key_terms(k, ndim))


_FEW_LABELS = 8  # above this many labels the radius rule works on all labels at once (_lepski_labels)
OWN_RADIUS_MIN_PIXELS = 400  # a label smaller than this shares the radius chosen on all such labels together
_POOLED = -1


def _choose_radii(ladder: DerivativeLadder, ctx: _Context, regions: dict, ladders: dict, rule: str,
                  noise: NoiseModel) -> dict:
    """Choose ``{label: {"radius", "ladder": table}}`` (:func:`_choose_radii_each`), pooling small labels.

    Labels of fewer than ``OWN_RADIUS_MIN_PIXELS`` pixels are pooled: the median over a few dozen pixels is too
    noisy to choose a radius on (docs/science.md "How to pick the kernel radius"), so they share the radius chosen
    on their union (``"pooled"``: their number). 1000 small labels then cost what one label of the same pixels costs.
    """
    small = [lab for lab, region in regions.items() if int(region.sum()) < OWN_RADIUS_MIN_PIXELS]
    if len(small) < 2 or len({tuple(ladders[lab]) for lab in small}) != 1:
        return _choose_radii_each(ladder, ctx, regions, ladders, rule, noise)
    pooled_regions = {lab: region for lab, region in regions.items() if lab not in small}
    pooled_regions[_POOLED] = np.any([regions[lab] for lab in small], axis=0)
    pooled_ladders = dict(ladders)
    pooled_ladders[_POOLED] = ladders[small[0]]
    chosen = _choose_radii_each(ladder, ctx, pooled_regions, pooled_ladders, rule, noise)
    shared = chosen.pop(_POOLED)
    for lab in small:
        chosen[lab] = dict(shared, pooled=len(small))
    return chosen


def _choose_radii_each(ladder: DerivativeLadder, ctx: _Context, regions: dict, ladders: dict, rule: str,
                       noise: NoiseModel) -> dict:
    """``{label: {"radius", "ladder": table}}``: one pass up the shared radius ladder for every label of a group.

    ``"lepski"``: a label keeps climbing while its map at the next radius stays within ``kappa`` propagated
    standard deviations of its maps at all smaller radii (median over the label); the ladder stops when every label
    has stopped. ``"quasi-optimality"``: the radius whose map changes least to the next one (whole ladder).
    """
    shared = len({tuple(ladders[lab]) for lab in regions}) == 1
    if rule == "lepski" and shared and len(regions) > _FEW_LABELS:
        return _lepski_labels(ladder, ctx, regions, ladders[next(iter(regions))], noise)
    radii = sorted({r for lab in regions for r in ladders[lab]})
    active = set(regions)
    history = {lab: [] for lab in regions}
    chosen = {lab: {"radius": ladders[lab][0], "ladder": []} for lab in regions}
    maps = {lab: [] for lab in regions}
    jac = _jacobian(ladder)
    union = np.any(list(regions.values()), axis=0)
    flat = {lab: np.flatnonzero(region) for lab, region in regions.items()}  # cheap per-label reads (many labels)
    sample = _lepski_sample(flat, int(union.sum())) if rule == "lepski" else None
    if sample is not None:  # the rungs are needed only at the pixels the medians read
        pixels, flat = sample
        pixels_t = torch.as_tensor(pixels, device=ctx.device)
        everywhere = np.ones(pixels.size, bool)

        def sample_form(dd):
            return ctx.closed_form(dd, region=everywhere)

    for k, r in enumerate(radii):
        if sample is not None:
            d = ladder.at_pixels(r, pixels_t)
            rate, var, _ = propagate(ladder, r, d, sample_form, noise, everywhere, jac, pixels=pixels_t)
            sd = var.sqrt().cpu().numpy()
        elif rule == "lepski":
            d = ladder.at(r)
            rate, var, _ = propagate(ladder, r, d, ctx.closed_form, noise, union, jac)
            sd = var.sqrt().cpu().numpy()
        else:
            d = ladder.at(r)
            rate, sd = ctx.closed_form({n: {kk: v[None] for kk, v in keys.items()} for n, keys in d.items()})[0], None
        rate_np = rate.detach().cpu().numpy().reshape(-1)
        sd = None if sd is None else sd.reshape(-1)
        ctx.tick({"stage": "choosing radius", "radius": r})
        for lab in sorted(active):
            if r not in ladders[lab]:
                continue
            region = flat[lab]
            values = rate_np[region]
            if rule == "lepski":
                accepted, worst = (True, 0.0) if not history[lab] else lepski_accepts(values, history[lab])
                chosen[lab]["ladder"].append({"radius": r, "max_standardised_change": round(worst, 4),
                                              "accepted": bool(accepted)})
                if accepted:
                    chosen[lab]["radius"] = r
                    history[lab].append((values, sd[region]))
                else:
                    active.discard(lab)
            else:
                maps[lab].append(values)
        if rule == "lepski" and not active:
            ctx.tick({"stage": "choosing radius", "radius": r}, n=len(radii) - k - 1)
            break
    if rule != "lepski":
        for lab in regions:
            chosen[lab] = _quasi_optimal(maps[lab], ladders[lab])
    return chosen


def _lepski_sample(flat: dict, n_union: int):
    """Return the pixels Lepski's medians read, or None when they are more than half of the ROI.

    They are a regular subsample of about ``_LEPSKI_SAMPLES`` pixels per label (:func:`lepski_accepts`), as
    ``(sorted flat indices, {label: positions in them})``; None when they are more than half of the ROI (then the
    full maps cost about as much).
    """
    strided = {lab: f[:: max(1, f.size // _LEPSKI_SAMPLES)] for lab, f in flat.items()}
    pixels = np.unique(np.concatenate(list(strided.values()))) if strided else np.zeros(0, np.int64)
    if pixels.size == 0 or pixels.size > 0.5 * n_union:
        return None
    return pixels, {lab: np.searchsorted(pixels, s) for lab, s in strided.items()}


def _lepski_labels(ladder: DerivativeLadder, ctx: _Context, regions: dict, rungs: list, noise: NoiseModel) -> dict:
    """Apply Lepski's rule to many labels on one shared ladder.

    The medians of ``|lambda_k - lambda_j| / sigma_j`` of all labels at once (:func:`lepski_changes`: one sort
    per rung pair), the same choice as :func:`lepski_accepts` label by label.
    """
    labs = list(regions)
    union = np.any(list(regions.values()), axis=0)
    owner = np.zeros(union.shape, np.int64)
    for i, lab in enumerate(labs):
        owner[regions[lab]] = i
    pixels = np.flatnonzero(union)
    owner = owner.reshape(-1)[pixels]
    order = np.argsort(owner, kind="stable")
    pixels, owner = pixels[order], owner[order]
    starts = np.searchsorted(owner, np.arange(len(labs)))
    jac = _jacobian(ladder)
    chosen = {lab: {"radius": rungs[0], "ladder": []} for lab in labs}
    active = np.ones(len(labs), bool)
    history: list = []
    for k, r in enumerate(rungs):
        rate, var, _ = propagate(ladder, r, ladder.at(r), ctx.closed_form, noise, union, jac)
        rate_np = rate.detach().cpu().numpy().reshape(-1)[pixels]
        sd_np = var.sqrt().cpu().numpy().reshape(-1)[pixels]
        ctx.tick({"stage": "choosing radius", "radius": r})
        worst = lepski_changes(rate_np, history, owner, starts)
        accepted = worst <= LEPSKI_KAPPA
        for i in np.flatnonzero(active):
            lab = labs[i]
            entry = {"radius": r, "max_standardised_change": round(float(worst[i]), 4), "accepted": bool(accepted[i])}
            chosen[lab]["ladder"].append(entry)
            if accepted[i]:
                chosen[lab]["radius"] = r
        active &= accepted
        history.append((rate_np, sd_np))
        if not active.any():
            ctx.tick({"stage": "choosing radius", "radius": r}, n=len(rungs) - k - 1)
            break
    return chosen


def _quasi_optimal(maps: list, ladder: list) -> dict:
    """Quasi-optimality (Tikhonov & Glasko): the radius whose map changes least to the next radius."""
    values = np.abs(np.concatenate(maps))
    values = values[np.isfinite(values)]
    scale = float(np.median(values)) if values.size else 1.0
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    table = []
    for k in range(len(maps) - 1):
        both = np.isfinite(maps[k]) & np.isfinite(maps[k + 1])
        change = float(np.median(np.abs(maps[k + 1][both] - maps[k][both]))) / scale if both.any() else np.inf
        table.append({"radius": ladder[k], "next": ladder[k + 1], "relative_change": change})
    if not table:
        return {"radius": ladder[0], "ladder": table}
    best = min(range(len(table)), key=lambda k: table[k]["relative_change"])
    return {"radius": ladder[best], "ladder": table}


def _direct(ladder: DerivativeLadder, ctx: _Context, radius, out_mask, uncertainty, n_bootstrap,
            noise: NoiseModel | None, seed, arrays, rungs=()):
    """Compute the closed form at ``radius`` and its uncertainty ``sqrt(noise^2 + bias^2)``.

    Noise: propagated (:func:`~napari_mollifier.methods.direct.propagate`) or the standard deviation over
    ``n_bootstrap`` realisations of the noise model. Bias: the change to the next-smaller radius ``R / q``
    (``q = 1.25``) smoothed at ``R``; a bias growing like ``R^2`` makes it ``(1 - q^-2)`` times the bias at ``R``.
    It counts only where it exceeds twice its own noise. Returns ``(rate, sigma, d)``. ``rungs``: the radius
    ladder the radius was chosen on (default: the standard ladder); its rung below ``radius`` (``R / q`` up to
    rounding) is used as ``R / q``, so that the propagated variances of the radius rule are reused and a fixed
    radius taken from an auto run gives the same uncertainty.
    """
    small = max(radius / _LADDER_STEP, ctx.order + 1)
    rungs = rungs or radius_ladder(ctx.order, int(8 * radius) + 8)  # a fixed radius on the ladder: the same rung
    below = [r for r in rungs if r < radius]
    if below and abs(max(below) - small) <= 0.01 * small:
        small = max(below)
    jac = _jacobian(ladder)
    d = ladder.at(radius)
    inside = torch.as_tensor(out_mask, device=ctx.device)
    _check_derivatives_defined(d, inside, ctx, radius, out_mask)
    if uncertainty == "propagate":
        rate, var, a = propagate(ladder, radius, d, ctx.closed_form, noise, out_mask, jac)
    else:
        rate = ctx.closed_form({n: {k: v[None] for k, v in keys.items()} for n, keys in d.items()})[0]
    undefined = float((~torch.isfinite(rate[inside])).float().mean()) if bool(inside.any()) else 1.0
    if undefined > 0.5:
        name = "phi_e (euchromatin)" if ctx.model.positive_denominator else "the closed form's divisor"
        raise MollifierInputError(
            f"the rate is undefined in {undefined:.0%} of the ROI because {name} is zero, negative or not finite "
            "there after smoothing: check the channel assignment and intensity normalisation of the inputs"
        )
    out_mask = out_mask & torch.isfinite(rate).cpu().numpy()
    ctx.tick({"stage": "closed form"})
    if uncertainty == "none":
        return rate, torch.full_like(rate, float("nan")), d
    d_small = ladder.at(small) if small < radius else d
    if uncertainty == "propagate":
        if small < radius:
            rate_small, _, a_small = propagate(ladder, small, d_small, ctx.closed_form, noise, out_mask, jac)
            change = ladder.smooth(rate - rate_small, radius, out_mask)
            change_var = change_variance(ladder, radius, small, a, a_small, noise, rate)
        else:
            change = change_var = torch.zeros_like(rate)
        noise_var = var
    else:
        rate_small = _rate_of(d_small, ctx)
        change = ladder.smooth(rate - rate_small, radius, out_mask) if small < radius else torch.zeros_like(rate)
        noise_var, change_var = _bootstrap(ladder, ctx, radius, small, out_mask, n_bootstrap, noise, seed, arrays)
    ctx.tick({"stage": "uncertainty"})
    # squared bias: the change's square minus its noise variance, averaged over the kernel (the bias is smooth, the
    # noise of the change is not), kept where positive
    excess = torch.nan_to_num(change**2 - change_var)
    bias_sq = ladder.smooth(excess, radius, out_mask).clamp_min(0) / (1 - _LADDER_STEP**-2) ** 2
    sigma = (noise_var + torch.nan_to_num(bias_sq)).sqrt()
    sigma = torch.where(torch.as_tensor(out_mask, device=sigma.device), sigma, torch.full_like(sigma, float("nan")))
    return rate, sigma, d


def _rate_of(d: dict, ctx: _Context) -> torch.Tensor:
    return ctx.closed_form({n: {k: v[None] for k, v in keys.items()} for n, keys in d.items()})[0]


def _bootstrap(ladder: DerivativeLadder, ctx: _Context, radius, small, out_mask, n_bootstrap, noise: NoiseModel,
               seed, arrays):
    """Compute the variance of the rate and of its smoothed change to ``small`` by a bootstrap.

    Over ``n_bootstrap`` realisations of the noise model (correlated noise drawn as blurred white noise, correlated
    between fields by a Cholesky factor).
    """
    rng = np.random.default_rng(seed)
    names = list(arrays)
    shape = next(iter(arrays.values())).shape
    chol = np.linalg.cholesky(noise.covariance(names) + 1e-30 * np.eye(len(names)))
    tensors = _tensors(arrays, ctx)
    stats = None
    for b in range(n_bootstrap):
        white = np.stack([blur_white_noise(rng.standard_normal(shape), noise.correlation_length) for _ in names])
        draws = np.tensordot(chol, white, axes=1)
        noisy = {k: tensors[k][0] + torch.as_tensor(draws[i], dtype=ctx.dtype, device=ctx.device)
                 for i, k in enumerate(names)}
        sample = _rate_of(ladder.at(radius, noisy), ctx)
        if small < radius:
            sample_change = ladder.smooth(sample - _rate_of(ladder.at(small, noisy), ctx), radius, out_mask)
        else:
            sample_change = torch.zeros_like(sample)
        term = torch.stack([sample, sample**2, sample_change, sample_change**2])
        stats = term if stats is None else stats + term
        ctx.tick({"stage": "uncertainty", "sample": b + 1})
    mean = stats / n_bootstrap
    factor = n_bootstrap / (n_bootstrap - 1)
    return (mean[1] - mean[0] ** 2).clamp_min(0) * factor, (mean[3] - mean[2] ** 2).clamp_min(0) * factor


def _check_derivatives_defined(d, inside, ctx: _Context, radius, out_mask) -> None:
    """Refuse a solve whose mollified derivatives are undefined over most of the ROI.

    The mask-mode moment systems are singular where fewer valid pixels than the kernel needs lie within the radius
    (an ROI smaller or thinner than the kernel with ``roi_mode="isolate"``, or an image riddled with NaN pixels).
    """
    if not bool(inside.any()):
        return
    defined = torch.ones_like(inside)
    for keys in d.values():
        for value in keys.values():
            defined &= torch.isfinite(value)
    missing = float((~defined[inside]).float().mean())
    if missing <= 0.5:
        return
    where = np.nonzero(out_mask)
    span = " x ".join(str(int(np.ptp(w)) + 1) for w in where)
    raise MollifierInputError(
        f"the derivatives are undefined in {missing:.0%} of the ROI ({span} px): too few valid pixels lie within "
        f"the kernel radius {radius:g} px around them (an ROI smaller than the kernel, or too many NaN pixels). "
        f"Use roi_mode='image' (derivatives from the whole image), a smaller radius (>= {ctx.order + 1} px) or a "
        "larger ROI"
    )


def _is_oom(exc: BaseException) -> bool:
    """Tell whether ``exc`` is a device out-of-memory error.

    ``torch.OutOfMemoryError``; MPS and older builds raise a ``RuntimeError`` saying "out of memory".
    """
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _release_device_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps") and hasattr(torch.mps, "empty_cache"):
        torch.mps.empty_cache()


def _refuse_constant(arrays: dict, where: np.ndarray, region: str) -> None:
    """Raise MollifierInputError if a field's finite pixels in ``where`` all have one value.

    ``region`` names ``where`` (image or ROI) in the message; such a field carries no information on the rate.
    """
    for name, arr in arrays.items():
        values = arr[where]
        values = values[np.isfinite(values)]
        if values.size and float(values.max()) == float(values.min()):
            raise MollifierInputError(
                f"field {name!r} is constant over the {region} (every pixel = {float(values[0]):g}): an image "
                "without contrast carries no information on the rate (a blank, saturated or wrong channel?). Pick "
                "the channel with the chromatin signal, or pass allow_constant=True (--allow-constant) to get the "
                "uniform-state rate"
            )


def _residual(d, rate: torch.Tensor, ctx: _Context, radius, deriv_mask) -> torch.Tensor:
    """Model residual with the rate smoothed by the same kernel (NaN where the rate is undefined)."""
    finite = torch.isfinite(rate)
    mask = np.asarray(deriv_mask, bool) & finite.cpu().numpy()
    if not mask.any():
        return torch.full_like(rate, float("nan"))
    kwargs = {"mask": mask} if ctx.boundary == "mask" else {"boundary": ctx.boundary}
    if ctx.boundary != "mask" and not bool(finite.all()):
        kwargs = {"mask": mask}
    smooth = derivatives(torch.nan_to_num(rate), radius, pixel_size=ctx.spacing, kernel=ctx.kernel, which=("u",),
                         ndim=len(ctx.spacing), **kwargs)["u"]
    return ctx.model.residual(d, smooth, ctx.params)


def infer_rates(
    fields: dict,
    model: str | Model = "chromatin-balance",
    params: dict | None = None,
    pixel_size: float | tuple[float, ...] = 1.0,
    radius: float | str = "auto",
    method: str = "direct",
    roi: np.ndarray | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress=None,
    cancel=None,
    *,
    kernel: str = "poly",
    boundary: str = "mask",
    roi_mode: str = "image",
    uncertainty: str = "propagate",
    n_bootstrap: int = 100,
    noise: str | float | dict | NoiseModel = "auto",
    noise_correlation: float | None = None,
    radius_rule: str = "lepski",
    iterations: int | None = None,
    base: str = "mlp",
    allow_constant: bool = False,
    unit: str | None = None,
    tile: int | str | None = None,
    memory_limit: int | None = None,
) -> RateResult:
    """Infer a rate map from observed fields.

    Parameters
    ----------
    fields : dict of str -> array
        The model's inputs, all the same shape: ``{"phi_h", "phi_e"}`` (volume fractions) for the chromatin
        models -- or ``{"density": image}``, split into fractions by :func:`napari_mollifier.density.split_density`
        (a documented assumption, recorded in ``provenance["density_split"]``) -- ``{"u", "m"}`` for ``"heat"``, ``{"u"}`` (1-D time series) for ``"langevin"``. Non-finite pixels
        are treated as missing data.
    model : str
        A registered model name (:data:`napari_mollifier.models.MODELS`).
    params : dict, optional
        Coefficients overriding the model's defaults, lengths in the units of ``pixel_size``
        (``{"l2": 0.0234}`` in um^2 for a pixel size in um). ``"auto"``: the length coefficient ``l2`` is
        estimated from the image (:func:`napari_mollifier.estimate_coefficients`); ``"default"``: the box-unit
        defaults on purpose. Where each value came from is in ``provenance["param_sources"]``.
    pixel_size : float or tuple
        Physical size of a pixel (per axis); for ``"langevin"`` the time step.
    radius : "auto" or float
        Kernel radius in pixels; ``"auto"`` chooses it on a ladder of radii by ``radius_rule`` (module docstring).
    method : str
        ``"direct"`` (closed form on mollified data), ``"network"`` (mollified network) or ``"autodiff"``.
    roi : None, bool array or int array
        ``None``: the whole image. A bool mask, or a label image (0 = background): one solve per label.
    device : str
        ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"``...
    seed : int
        Seeds the bootstrap noise and the network; equal inputs and seed give identical output on the CPU.
    progress : callable, optional
        ``progress(step, total, info)``, called after every unit of work (each radius of the ladder, the final
        solve, each bootstrap sample).
    cancel : callable, optional
        ``cancel() -> bool``; when it returns True the run raises :class:`RunCancelled` within one step.
    kernel : str
        Mollifier kernel (``"poly"``, ``"poly<k>"`` or ``"bump"``).
    boundary : str
        ``"mask"`` (default: only valid pixels are used, edges exact) or a padding mode of :func:`derivatives`
        (``"periodic"`` for periodic simulations).
    roi_mode : str
        ``"image"``: derivatives use all valid pixels of the image, the ROI selects where the maps are reported
        (no ROI-edge band). ``"isolate"``: each ROI is solved with only its own pixels (separate nuclei).
    uncertainty : str
        ``"propagate"`` (default: the input noise propagated through the kernels and the linearised closed form,
        plus the smoothing bias), ``"bootstrap"`` (``n_bootstrap`` noise realisations pushed through the solver;
        slow, for checking) or ``"none"``.
    n_bootstrap : int
        Noise realisations for ``uncertainty="bootstrap"`` (>= 2). ``0`` disables the uncertainty whatever
        ``uncertainty`` says (as ``"none"``).
    noise : "auto", float, dict or NoiseModel
        Noise standard deviation of the inputs (per field as a dict); ``"auto"`` estimates it, and its
        correlation between pixels and between fields, from the data (:mod:`napari_mollifier.noise`).
    noise_correlation : float, optional
        Correlation length of the noise in pixels (std of the Gaussian blur that makes white noise into it) when
        ``noise`` is given as numbers; default 0 (white). Ignored with ``noise="auto"`` (estimated).
    radius_rule : str
        How ``radius="auto"`` picks the radius: ``"lepski"`` (default: the largest radius whose map stays within
        one propagated standard deviation of the maps at all smaller radii) or ``"quasi-optimality"`` (the radius
        whose map changes least to the next radius; the rule before version 0.3).
    iterations : int, optional
        Network option (``method="network"``/``"autodiff"``): the largest number of training steps.
    base : str
        Network option: the base model (``"mlp"``, ``"cnn"`` or ``"rbf"``).
    allow_constant : bool
        A field that is constant where the derivatives are taken (every finite pixel of the image, or of the ROI
        with ``roi_mode="isolate"``, equal: a blank, saturated or wrong channel) is refused by default: it
        carries no spatial information, so the closed form returns the uniform-state rate
        with a zero uncertainty whatever the truth. ``True`` accepts it (simulated uniform states, a uniform
        source ``m`` for ``"heat"``).
    tile : None, int or "auto"
        ``None`` (default): one solve of the whole image. An int: solve in tiles of that many pixels with a halo
        (:mod:`napari_mollifier.tiling`; ``method="direct"``, 2-D or 3-D), after exactly the same input checks and
        with the same noise model and coefficients. ``"auto"``: tiled only when the memory estimate says the
        untiled run does not fit (``memory_limit`` bytes, default: the device's free memory); a run that runs out
        of memory anyway is retried in smaller tiles.
    memory_limit : int, optional
        Bytes the run may use, for ``tile="auto"``.

    Returns
    -------
    RateResult
        The rate map, its uncertainty, the residual, per-ROI statistics and the provenance.

    Raises
    ------
    MollifierInputError
        Bad input (message: the problem and the fix; docs/reliability.md lists the cases).
    MollifierMemoryError
        The device ran out of memory; run in tiles (:func:`napari_mollifier.tiling.infer_auto`) or on the CPU.
    RunCancelled
        ``cancel()`` returned True.
    """
    given = locals()
    prep = _prepare(**{k: given[k] for k in _PREPARE_ARGS}, tiled=tile is not None)
    if tile is not None:
        from .tiling import solve_prepared

        return solve_prepared(prep, tile=tile, memory_limit=memory_limit, progress=progress, cancel=cancel,
                              kernel=kernel, base=base)
    return _solve(prep, progress, cancel, kernel, base)


def prepare_call(fields: dict, *, tiled: bool = False, **kwargs: object) -> tuple[Prepared, dict]:
    """Check the call ``infer_rates(fields, **kwargs)`` without solving (for callers that pick the tiling themselves).

    Its defaults are applied and every check of :func:`_prepare` is run.

    Parameters
    ----------
    fields : dict
        As in :func:`infer_rates`.
    tiled : bool
        The run will be tiled (the tiled path's checks).
    **kwargs
        Further arguments of :func:`infer_rates`.

    Returns
    -------
    prep : Prepared
        The checked inputs.
    arguments : dict
        All arguments of the call, defaults applied.

    Raises
    ------
    MollifierInputError
        On an argument :func:`infer_rates` does not take, or bad input.
    """
    import inspect

    try:
        bound = inspect.signature(infer_rates).bind(fields, **kwargs)
    except TypeError as exc:
        raise MollifierInputError(f"infer_rates: {exc}") from None
    bound.apply_defaults()
    a = bound.arguments
    prep = _prepare(**{k: a[k] for k in _PREPARE_ARGS}, tiled=tiled)
    return prep, a


@dataclass
class Prepared:
    """Checked inputs of a solve: what :func:`_prepare` derived from the arguments of :func:`infer_rates`."""

    m: Model
    split: dict | None
    p: dict
    param_sources: dict
    coefficient_estimate: dict | None
    plausibility: list
    arrays: dict
    shape: tuple
    ndim: int
    spacing: tuple
    labels: np.ndarray
    valid: np.ndarray
    label_ids: list
    auto: bool
    radius: object
    iterations: int | None
    seed: int
    n_bootstrap: int
    n_bootstrap_given: int
    uncertainty: str
    radius_rule: str
    noise_model: NoiseModel | None
    roi_mode: str
    boundary: str
    method: str
    allow_constant: bool
    unit: str | None
    fields: dict
    dev: torch.device
    extent: int | None
    order: int
    roi_given: bool
    noise_estimated: bool = False  # the noise model was estimated in this call (not passed in, e.g. by a tile)
    noise_region: np.ndarray | None = None  # the pixels the noise is estimated on (the ROIs, or the image)


#: the arguments of :func:`infer_rates` that :func:`_prepare` checks (the others steer the run, not the inputs)
_PREPARE_ARGS = ("fields", "model", "params", "pixel_size", "radius", "method", "roi", "device", "seed", "boundary",
                 "roi_mode", "uncertainty", "n_bootstrap", "noise", "noise_correlation", "radius_rule", "iterations",
                 "allow_constant", "unit")


def _prepare(fields, *, model, params, pixel_size, radius, method, roi, device, seed, boundary, roi_mode, uncertainty,
             n_bootstrap, noise, noise_correlation, radius_rule, iterations, allow_constant, unit,
             tiled=False) -> Prepared:
    """Every check and input step of a solve, shared by the untiled and the tiled path (:func:`infer_rates`)."""
    from . import validation

    bounded = validation.check_solver_arguments(model=model, params=params, pixel_size=pixel_size,
                                                n_bootstrap=n_bootstrap if method == "direct" else 0,
                                                iterations=iterations, seed=seed, noise=noise)
    iterations, seed = bounded["iterations"], bounded["seed"]
    m = get_model(model)
    fields, split = _maybe_split_density(fields, m, roi)
    p = m.params(params if not isinstance(params, str) else None)
    if method not in METHODS:
        raise MollifierInputError(f"unknown method {method!r}: use one of {METHODS}")
    if roi_mode not in ROI_MODES:
        raise MollifierInputError(f"unknown roi_mode {roi_mode!r}: use {' or '.join(map(repr, ROI_MODES))}")
    if tiled and method != "direct":
        raise MollifierInputError(
            f"tiled runs support method='direct' only: {method!r} fits one network to the whole image "
            "(run it untiled, on a crop, or with a smaller image)"
        )
    arrays = _check_fields(fields, m)
    shape = next(iter(arrays.values())).shape
    ndim = len(shape)
    if tiled and ndim not in (2, 3):
        raise MollifierInputError(f"tiled runs take 2-D or 3-D fields, got shape {shape}")
    spacing = _spacing(pixel_size, ndim)
    labels = _labels_from_roi(roi, shape)
    from .coefficients import resolve_coefficients  # issue 13: where every coefficient comes from

    p, param_sources, coefficient_estimate = resolve_coefficients(
        m, params if not isinstance(params, str) else None, params if isinstance(params, str) else None, arrays,
        spacing, unit, labels if roi is not None else None, seed)
    from .plausibility import warn_implausible

    plausibility = warn_implausible(arrays, spacing, unit, labels if roi is not None else None, stacklevel=4)
    dev = resolve_device(device)
    valid = np.all([np.isfinite(a) for a in arrays.values()], axis=0)
    if boundary != "mask" and not valid.all():
        raise MollifierInputError(
            f"{int((~valid).sum())} pixel(s) are NaN/inf: use boundary='mask' so that they are treated as missing"
        )
    label_ids = [int(v) for v in np.unique(labels) if v > 0]
    auto = isinstance(radius, str)
    if auto and radius != "auto":
        raise MollifierInputError(f"radius must be a number of pixels or 'auto', got {radius!r}")
    if not auto:
        try:
            radius = float(radius)
        except (TypeError, ValueError):
            raise MollifierInputError(f"radius must be a number of pixels or 'auto', got {radius!r}") from None
    n_bootstrap = bounded["n_bootstrap"]
    validation.warn_extreme_pixels(arrays, valid)
    validation.warn_run_time(shape, radius="auto" if auto else radius,
                             n_bootstrap=n_bootstrap if uncertainty == "bootstrap" and method == "direct" else 0,
                             method=method, iterations=iterations)
    extent = min(shape) if roi is None else None
    order = _model_order(m, ndim)
    smallest = max(order + 1, 3) if auto else order + 1
    if not auto and not (np.isfinite(radius) and order + 1 <= radius):
        raise MollifierInputError(
            f"radius {radius:g} px is too small for model {m.name!r} (derivatives of order {order}): use "
            f"radius >= {order + 1} px, or radius='auto'"
        )
    if (radius if not auto else smallest) > min(shape):
        raise MollifierInputError(
            f"the kernel (radius {radius if not auto else smallest:g} px) is larger than the image "
            f"({' x '.join(map(str, shape))} px): use a smaller radius (<= {min(shape)} px)"
            + (" or radius='auto'" if not auto and smallest <= min(shape) else "")
            + ("" if smallest <= min(shape) else f"; the image must be at least {smallest} px along every axis")
        )
    if not allow_constant:
        _refuse_constant(arrays, valid if roi_mode == "image" else valid & (labels > 0),
                         "image" if roi_mode == "image" else "ROI")

    if uncertainty not in UNCERTAINTY_METHODS:
        raise MollifierInputError(f"unknown uncertainty {uncertainty!r}: use one of {UNCERTAINTY_METHODS}")
    if radius_rule not in RADIUS_RULES:
        raise MollifierInputError(f"unknown radius_rule {radius_rule!r}: use one of {RADIUS_RULES}")
    if method != "direct" or n_bootstrap == 0:
        uncertainty = "none"
    n_bootstrap_given = n_bootstrap  # recorded as given, so that a rerun makes the same choice
    if uncertainty != "bootstrap":
        n_bootstrap = 0
    needs_noise = uncertainty != "none" or (auto and radius_rule == "lepski")
    inside = valid & (labels > 0)
    noise_region = inside if inside.sum() >= 1024 else valid
    noise_model = _noise_model(noise, noise_correlation, arrays, noise_region, estimate=needs_noise,
                               allow_zero=allow_constant)
    roi_given = roi is not None
    return Prepared(m=m, split=split, p=p, param_sources=param_sources, coefficient_estimate=coefficient_estimate, plausibility=plausibility, arrays=arrays, shape=shape, ndim=ndim, spacing=spacing, labels=labels, valid=valid, label_ids=label_ids, auto=auto, radius=radius, iterations=iterations, seed=seed, n_bootstrap=n_bootstrap, n_bootstrap_given=n_bootstrap_given, uncertainty=uncertainty, radius_rule=radius_rule, noise_model=noise_model, roi_mode=roi_mode, boundary=boundary, method=method, allow_constant=allow_constant, unit=unit, fields=fields, dev=dev, extent=extent, order=order, roi_given=roi_given,
                    noise_estimated=isinstance(noise, str) and noise_model is not None, noise_region=noise_region)


def _solve(prep: Prepared, progress, cancel, kernel, base) -> RateResult:
    """Solve prepared inputs (:func:`_prepare`) untiled."""
    m, split, p = prep.m, prep.split, prep.p
    param_sources, coefficient_estimate, plausibility = prep.param_sources, prep.coefficient_estimate, prep.plausibility
    arrays, shape, ndim = prep.arrays, prep.shape, prep.ndim
    spacing, labels, valid = prep.spacing, prep.labels, prep.valid
    label_ids, auto, radius = prep.label_ids, prep.auto, prep.radius
    iterations, seed, n_bootstrap = prep.iterations, prep.seed, prep.n_bootstrap
    n_bootstrap_given, uncertainty, radius_rule = prep.n_bootstrap_given, prep.uncertainty, prep.radius_rule
    noise_model, roi_mode, boundary = prep.noise_model, prep.roi_mode, prep.boundary
    method, unit, fields = prep.method, prep.unit, prep.fields
    dev, extent, order = prep.dev, prep.extent, prep.order
    groups = [label_ids] if roi_mode == "image" else [[lab] for lab in label_ids]
    ladders = {}
    for lab in label_ids:
        region = labels == lab
        ext = extent or int(min(np.ptp(np.nonzero(region)[k]) + 1 for k in range(ndim)))
        ext = max(ext, min(shape) if roi_mode == "image" else ext)
        ladders[lab] = _radius_ladder(order, min(ext, min(shape))) if auto else [radius]
    network_steps = 0 if method == "direct" else (DEFAULT_ITERATIONS if iterations is None else int(iterations))
    network_fits: dict = {}  # label -> steps run and early stop of its network fit
    per_group = [max(len(ladders[lab]) for lab in g) + 3 + n_bootstrap * len(g) for g in groups]
    ctx = _Context(m, p, spacing, kernel, boundary, dev, progress, cancel,
                   total=sum(per_group) + network_steps * len(label_ids))

    from .texture import check_prepared

    noise_model = check_prepared(prep, ctx, noise_model)  # a rate's own pixel-scale texture is not noise
    rate_map = np.full(shape, np.nan)
    sigma_map = np.full(shape, np.nan)
    residual_map = np.full(shape, np.nan)
    smoothed_maps = {k: np.full(shape, np.nan) for k in arrays}
    stats, radius_choice = {}, {}
    try:
        for group in groups:
            regions = {lab: (labels == lab) & valid for lab in group}
            for lab, region in regions.items():
                if not region.any():
                    raise MollifierInputError(f"ROI {lab} contains no valid (finite) pixel")
            union = np.any(list(regions.values()), axis=0)
            deriv_mask = valid if roi_mode == "image" else union
            ctx.region = union
            max_radius = max(max(ladders[lab]) for lab in group)
            ladder = DerivativeLadder(m, p, {k: v[0] for k, v in _tensors(arrays, ctx).items()}, spacing, kernel, boundary,
                                      deriv_mask if boundary == "mask" else None,
                                      union if boundary == "mask" else None, max_radius)
            if auto:
                chosen = _choose_radii(ladder, ctx, regions, ladders, radius_rule, noise_model)
                radius_choice.update(chosen)
            else:
                chosen = {lab: {"radius": radius} for lab in group}
            by_radius: dict = {}
            for lab in group:
                by_radius.setdefault(chosen[lab]["radius"], []).append(lab)
            for r, labs in by_radius.items():
                # the labels at one radius are written from one solve over the whole group's pixels (its
                # uncertainty's bias term smoothed over the group): many labels share the whole-image work
                region = union if len(by_radius) == 1 else np.any([regions[lab] for lab in labs], axis=0)
                ctx.region = union
                if method == "direct":
                    rate, sigma, d = _direct(ladder, ctx, r, union, uncertainty, n_bootstrap, noise_model, seed,
                                             arrays, ladders[labs[0]] if auto else ())
                    resid = _residual(d, rate, ctx, r, deriv_mask)
                    rate_np, sigma_np = rate.cpu().numpy(), sigma.cpu().numpy()
                    resid_np = resid.detach().cpu().numpy()
                    smoothed_np = {k: d[k]["u"].cpu().numpy() for k in d if "u" in d[k] and k in arrays}
                    ctx.tick({"stage": "done", "labels": labs})
                    outputs = [(region, rate_np, sigma_np, resid_np, smoothed_np)]
                else:
                    outputs = []
                    for lab in labs:
                        ctx.region = regions[lab]
                        out = _network(arrays, ctx, r, deriv_mask, method, network_steps, base, seed)
                        network_fits[str(lab)] = {"iterations_run": out.iterations,
                                                  "stopped_early": out.stopped_early}
                        outputs.append((regions[lab], out.rate, np.full(shape, np.nan), out.residual,
                                        out.smoothed))
                        ctx.tick({"stage": "done", "label": lab})
                for where, rate_np, sigma_np, resid_np, smoothed_np in outputs:
                    rate_map[where] = rate_np[where]
                    sigma_map[where] = sigma_np[where]
                    residual_map[where] = resid_np[where]
                    for k in smoothed_maps:
                        if k in smoothed_np:
                            smoothed_maps[k][where] = smoothed_np[k][where]
                for lab in labs:
                    stats[lab] = _roi_stats(lab, regions[lab], rate_map, sigma_map, spacing, r)
    except Exception as exc:
        if not _is_oom(exc):
            raise
        oom = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    else:
        oom = None
    if oom is not None:  # outside the except block, so the failed frames (and their tensors) are released
        ctx = rate_map = sigma_map = residual_map = smoothed_maps = ladder = None
        _release_device_memory(dev)
        raise MollifierMemoryError(
            f"out of memory on {dev} for a {' x '.join(map(str, shape))} px run ({oom}): run it in tiles "
            "(napari_mollifier.tiling.infer_auto, or --tile in the CLI), with a smaller radius, or on device='cpu'"
        )
    stats = [stats[lab] for lab in label_ids]

    provenance = {
        "software": {"napari_mollifier": __version__, "torch": torch.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "model": m.name,
        "params": p,
        "param_sources": param_sources,
        "coefficient_estimate": coefficient_estimate,
        "unit": unit,
        "plausibility": plausibility,
        "pixel_size": list(spacing),
        "radius": "auto" if auto else radius,
        "radius_used": {str(k): v["radius"] for k, v in radius_choice.items()} or {str(k): radius for k in label_ids},
        "radius_choice": {str(k): v for k, v in radius_choice.items()},
        "method": method,
        "kernel": kernel,
        "boundary": boundary,
        "roi_mode": roi_mode,
        "device": str(dev),
        "seed": int(seed),
        "n_bootstrap": n_bootstrap_given,
        "noise": dict(noise_model.sigma) if noise_model is not None else None,
        "noise_correlation": noise_model.correlation_length if noise_model is not None else None,
        "noise_model": noise_model.as_dict() if noise_model is not None else None,
        "uncertainty_method": uncertainty,
        "uncertainty": _UNCERTAINTY_TEXT[uncertainty],
        "radius_rule": radius_rule,
        "iterations": network_steps or None,
        "early_stop": {"patience": DEFAULT_PATIENCE, "rel_tol": DEFAULT_REL_TOL} if network_steps else None,
        "network_fit": network_fits or None,
        "base": base if method != "direct" else None,
        "input_hashes": {k: _hash(v) for k, v in arrays.items()},
        "density_split": split,
        "roi_hash": _hash(labels),
        "labels": label_ids,
        "seconds": round(time.perf_counter() - ctx.started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    from .fractions import flag_result  # the level label and the negative-rate flags (issue 16)

    flag_result(m, fields, split, rate_map, sigma_map, labels, stats, provenance, stacklevel=4)
    used = [s["radius"] for s in stats]
    return RateResult(
        rate=rate_map, uncertainty=sigma_map, residual=residual_map, fields=smoothed_maps,
        radius=float(np.median(used)), labels=np.where(valid, labels, 0), roi_stats=stats, provenance=provenance,
    )


def _maybe_split_density(fields, model: Model, roi):
    """``{"density": image}`` for a chromatin model -> volume fractions by the documented split."""
    if not isinstance(fields, dict) or set(fields) != {"density"} or "phi_e" not in model.inputs:
        return fields, None
    from .density import split_density

    nucleus = None if roi is None else np.asarray(roi) > 0
    if nucleus is not None and nucleus.shape != np.shape(fields["density"]):
        nucleus = None  # the shape error is reported by the ROI check
    fractions, assumption = split_density(fields["density"], nucleus)
    return fractions, assumption


def _noise_model(noise, correlation, arrays, valid, estimate: bool, allow_zero: bool = False) -> NoiseModel | None:
    """Return the :class:`NoiseModel` of the inputs: estimated (``noise="auto"``) or given (numbers, dict, model)."""
    if isinstance(noise, NoiseModel):
        return noise
    if correlation is not None:
        try:
            correlation = float(correlation)
        except (TypeError, ValueError):
            correlation = float("nan")
        if not (np.isfinite(correlation) and 0 <= correlation <= 10):
            raise MollifierInputError(
                f"noise_correlation must be a correlation length in pixels between 0 and 10, got {correlation!r}")
    if isinstance(noise, str):
        if noise != "auto":
            raise MollifierInputError(f"noise must be 'auto', a number or a dict per field, got {noise!r}")
        if not estimate:
            return None
        return estimate_noise_model({k: np.where(valid, v, np.nan) for k, v in arrays.items()}, valid,
                                    allow_zero=allow_zero)
    if isinstance(noise, dict):
        unknown = sorted(set(noise) - set(arrays))
        if unknown:
            raise MollifierInputError(f"noise names field(s) {unknown} that the model does not read ({list(arrays)})")
        levels = {k: noise.get(k, 0.0) for k in arrays}
    else:
        levels = {k: noise for k in arrays}
    for k, v in levels.items():
        try:
            levels[k] = float(v)
        except (TypeError, ValueError):
            levels[k] = float("nan")
        if not (np.isfinite(levels[k]) and levels[k] >= 0):
            raise MollifierInputError(
                f"noise for {k!r} must be a finite standard deviation >= 0 (units of the field), got {v!r}")
    return NoiseModel(sigma=levels, correlation_length=float(correlation or 0.0), source="given")


def _roi_stats(lab, region, rate, sigma, spacing, radius) -> dict:
    values = rate[region]
    values = values[np.isfinite(values)]
    q25, med, q75 = (np.percentile(values, [25, 50, 75]) if values.size else (np.nan,) * 3)
    return {
        "label": int(lab),
        "n_pixels": int(region.sum()),
        "area": float(region.sum() * np.prod(spacing)),
        "mean": float(values.mean()) if values.size else float("nan"),
        "median": float(med),
        "q25": float(q25),
        "q75": float(q75),
        "iqr": float(q75 - q25),
        "radius": float(radius),
        "mean_uncertainty": float(np.nanmean(sigma[region])) if np.isfinite(sigma[region]).any() else float("nan"),
    }


def _network(arrays, ctx: _Context, radius, deriv_mask, method, iterations, base, seed):
    """One network fit of a label; its steps advance ``ctx``, and an early stop advances it by the steps left."""
    from .methods.network import fit_network

    done = {"step": 0}

    def progress(step, total, info):
        ctx.tick(dict(info, stage="network fit"))
        done["step"] = step

    fit = fit_network(
        {k: np.where(deriv_mask, v, 0.0) for k, v in arrays.items()}, ctx.model, ctx.params, ctx.spacing, radius,
        deriv_mask, base=base, derivatives_via="autodiff" if method == "autodiff" else "mollifier",
        iterations=int(iterations), patience=DEFAULT_PATIENCE, rel_tol=DEFAULT_REL_TOL, device=str(ctx.device),
        seed=seed, progress=progress, cancel=None, kernel=ctx.kernel,
    )
    left = int(iterations) - done["step"]
    if left > 0:
        ctx.tick({"stage": "network fit", "stopped_early": fit.stopped_early, "iteration": fit.iterations}, n=left)
    return fit
