"""Tell a rate's own pixel-scale texture from input noise before the radius rule (issue #12; 2-D images).

The noise estimator (:mod:`napari_mollifier.noise`) reads second differences of the input fields. A rate that
varies at the pixel scale leaves pixel-scale texture in the fields that it cannot tell from (anti-correlated) noise,
and Lepski's rule then climbs far above the pixel scale. The closed form tells them apart: it *amplifies* input
noise by second derivatives (the map's fine-scale part has negative autocorrelation lobes), while it only
*smooths* a real rate texture by the kernel. With ``hp = lambda_{R0} - lambda_{R1}`` (``R0`` the smallest rung,
``R1 = 4 R0``) the autocorrelation at small lags ``d`` (1 and 2 px along every axis, the two diagonals in 2-D) is
modelled as

    acf_obs(d) = f acf_noise(d) + (1 - f) acf_signal(d),

``acf_noise`` from one seeded realisation of the estimated noise model pushed through the same closed form,
``acf_signal`` the autocorrelation of the kernel difference ``K_{R0} - K_{R1}`` (a rate texture white at the pixel
scale, which the data test). ``f`` is fitted by least squares; its standard error from Bartlett's formula. The
noise variance is scaled by ``(f + 2 se) var(hp) / var(hp_noise)`` (the noise variance in ``hp`` at its upper
bound, over that the model predicts), only DOWN, and only when that factor is below ``_MAX_SCALE`` and the two
autocorrelations differ clearly (``|acf_noise - acf_signal| >= _MIN_SEPARATION``); otherwise the model is kept.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy import ndimage

from .kernels import corrected_kernel, half_width
from .methods.direct import radius_ladder
from .noise import NoiseModel, blur_white_noise

_SEED = 20261203  # the noise realisation is fixed: the check is deterministic
_MIN_SEPARATION = 0.2  # || acf_noise - acf_signal || below this: the lags cannot tell noise from texture
_MAX_SCALE = 0.5  # the variance is scaled only when the evidence says at most half of it is noise
_FLOOR = 0.01  # never below 1 % of the estimated variance (sigma x 0.1)
_MAX_SIDE = 256  # px per axis of the window the check reads (the one with the most ROI pixels; 2-D images only)


def _lags(ndim: int) -> list:
    lags = []
    for step in (1, 2):
        for axis in range(ndim):
            d = [0] * ndim
            d[axis] = step
            lags.append(tuple(d))
    if ndim == 2:
        lags += [(1, 1), (1, -1)]
    return lags


def _shifted(a: np.ndarray, d: tuple) -> tuple[np.ndarray, np.ndarray]:
    """``(a[x], a[x + d])`` over the x where both are inside the array."""
    lo = tuple(slice(max(0, -k), a.shape[i] - max(0, k)) for i, k in enumerate(d))
    hi = tuple(slice(max(0, k), a.shape[i] - max(0, -k)) for i, k in enumerate(d))
    return a[lo], a[hi]


def _acf(m: np.ndarray, lags: list) -> tuple[np.ndarray, float, int]:
    """Autocorrelation at ``lags`` of the finite pixels of ``m`` (NaN elsewhere); Bartlett's sum, pixel count."""
    ok = np.isfinite(m)
    n = int(ok.sum())
    c = np.where(ok, m - (m[ok].mean() if n else 0.0), 0.0)
    v = float(np.mean(c[ok] ** 2)) if n else 0.0
    out = []
    for d in lags:
        a, b = _shifted(c, d)
        oa, ob = _shifted(ok, d)
        both = oa & ob
        out.append(float(np.sum(a[both] * b[both]) / (both.sum() * v)) if both.any() and v > 0 else 0.0)
    # Bartlett: var(acf(d)) ~ sum_k rho(k)^2 / n, sum over lags |k| <= 6 px
    sq = 0.0
    if v > 0 and n:
        f = np.fft.rfftn(c, s=[2 * s for s in c.shape])
        full = np.fft.irfftn(np.abs(f) ** 2, s=[2 * s for s in c.shape])
        cnt = np.fft.irfftn(np.abs(np.fft.rfftn(ok.astype(float), s=[2 * s for s in c.shape])) ** 2,
                            s=[2 * s for s in c.shape])
        win = np.ix_(*[np.r_[0:7, -6:0] for _ in c.shape])
        rho = full[win] / np.maximum(cnt[win], 1.0) / v
        sq = float(np.sum(rho**2))
    return np.asarray(out), sq, n


def _fullest_window(mask: np.ndarray, side: int) -> tuple[slice, ...]:
    """Return the ``side``-px window (whole axes where shorter) with the most ``mask`` pixels; the most central tie.

    Counts come from a summed-area table, so the cost is a few passes over the mask whatever the number of ROIs.
    """
    sides = tuple(min(n, side) for n in mask.shape)
    table = np.pad(mask.astype(np.int64), [(1, 0)] * mask.ndim)
    for axis in range(mask.ndim):
        table = np.cumsum(table, axis=axis)
    counts = table
    for axis, w in enumerate(sides):  # inclusion-exclusion along each axis: sums over [i, i + w)
        n = counts.shape[axis]
        counts = counts.take(np.arange(w, n), axis=axis) - counts.take(np.arange(0, n - w), axis=axis)
    best = counts == counts.max()
    grid = np.indices(counts.shape, sparse=True)
    centre = [(n - 1) / 2 for n in counts.shape]
    dist = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    start = np.unravel_index(np.argmin(np.where(best, dist, np.inf)), counts.shape)
    return tuple(slice(int(a), int(a) + w) for a, w in zip(start, sides, strict=True))


def _kernel_acf(kernel: str, r0: float, r1: float, ndim: int, lags: list) -> np.ndarray:
    k0 = corrected_kernel(kernel, r0, (0,) * ndim)
    k1 = np.asarray(corrected_kernel(kernel, r1, (0,) * ndim), dtype=np.float64)
    diff = -k1.copy()
    h0, h1 = k0.shape[0] // 2, k1.shape[0] // 2
    diff[tuple(slice(h1 - h0, h1 + h0 + 1) for _ in range(ndim))] += k0
    out = []
    norm = float(np.sum(diff * diff))
    for d in lags:
        a, b = _shifted(diff, d)
        out.append(float(np.sum(a * b)) / norm)
    return np.asarray(out)


def check_prepared(prep, ctx, noise: NoiseModel | None) -> NoiseModel | None:
    """Return the noise model a prepared call (:func:`napari_mollifier.solve.prepare_call`) should use.

    The check runs where it serves: the auto radius by Lepski's rule, with a noise model this call estimated (not
    one passed in, as to a tile, nor one already checked), on the pixels the noise was estimated on, at the
    smallest rung ``R0`` and ``4 R0``. Otherwise ``noise`` is returned as it is.
    """
    if not (prep.auto and prep.radius_rule == "lepski" and prep.noise_estimated and noise is not None
            and noise.source == "estimated" and noise.texture is None):
        return noise
    r0 = radius_ladder(prep.order, min(prep.shape))[0]
    return texture_check(ctx, prep.arrays, prep.noise_region, noise, r0, 4 * r0)


def texture_check(ctx, arrays: dict, valid: np.ndarray, noise: NoiseModel, r0: float, r1: float) -> NoiseModel:
    """Return the noise model to use (module docstring), its record in ``.texture``; ``ctx``: a solve context."""
    names = list(arrays)
    ndim = valid.ndim
    lags = _lags(ndim)
    record = {"rule": "hp = lambda_R0 - lambda_R1; acf_obs = f acf_noise + (1 - f) acf_signal at small lags",
              "radii": [round(r0, 3), round(r1, 3)], "applied": False}

    def kept():  # the estimate as it is, with the record of why
        return dataclasses.replace(noise, texture=record)

    # one window of at most _MAX_SIDE px per axis, the one holding the most ROI pixels, keeps the cost to four
    # closed-form solves on it whatever the image size and the number of ROIs
    if ndim != 2:  # calibrated on 2-D images only; in 3-D the masked solves of a window cost ~8x a whole solve
        record["skipped"] = "only 2-D images are checked"
        return kept()
    window = _fullest_window(valid, _MAX_SIDE)
    record["window"] = [[w.start, w.stop] for w in window]
    whole = all(w.stop - w.start == s for w, s in zip(window, valid.shape, strict=True))
    mask = valid[window]
    if mask.sum() < 1024 or any(w.stop - w.start < 4 * r1 for w in window):
        record["skipped"] = "too few pixels"
        return kept()
    # fast boundaries only: periodic when the image is periodic and read whole, else reflected, and then only the
    # pixels whose whole r1-neighbourhood lies inside the mask and the window are read
    periodic = whole and ctx.boundary == "periodic"
    boundary = "periodic" if periodic else "reflect"
    if not periodic:
        inner = np.pad(mask, 1, constant_values=False)
        depth = ndimage.distance_transform_cdt(inner, metric="chessboard")[1:-1, 1:-1]
        mask = depth > half_width(r1) + 1
        if mask.sum() < 1024:
            record["skipped"] = "too few pixels"
            return kept()
    saved = ctx.boundary, ctx.region
    ctx.boundary, ctx.region = boundary, mask
    try:
        def rates(fields):
            t = {k: torch.as_tensor(v, dtype=ctx.dtype, device=ctx.device)[None] for k, v in fields.items()}
            out = [ctx.rate(t, r, mask)[0].detach().cpu().numpy() for r in (r0, r1)]
            return np.where(mask, out[0] - out[1], np.nan)

        data = {}
        for k, v in arrays.items():
            v = np.asarray(v, dtype=np.float64)[window]
            data[k] = np.where(np.isfinite(v), v, np.nanmedian(v[mask]))  # NaN outside the mask must not spread
        hp = rates(data)
        rng = np.random.default_rng(_SEED)
        white = [rng.standard_normal(mask.shape) for _ in names]
        cov = noise.covariance(names)
        s = np.sqrt(np.maximum(np.diag(cov), 0.0))
        corr = cov / np.maximum(np.outer(s, s), 1e-300) + np.eye(len(names)) * 1e-12
        chol = np.linalg.cholesky(corr + 1e-9 * np.eye(len(names)))
        mixed = np.tensordot(chol, np.stack(white), axes=1)
        noisy = {k: data[k] + s[i] * blur_white_noise(mixed[i], noise.correlation_length) for i, k in enumerate(names)}
        hn = rates(noisy) - hp
    except Exception as exc:  # out of memory: the check is a refinement, the run goes on with the estimate as it is
        from .solve import _is_oom

        if not _is_oom(exc):
            raise
        oom = f"{type(exc).__name__}"
    else:
        oom = None
    finally:
        ctx.boundary, ctx.region = saved
    if oom is not None:
        from .solve import _release_device_memory

        hp = hn = data = noisy = None
        _release_device_memory(torch.device(ctx.device))
        record["skipped"] = f"out of memory on {ctx.device} ({oom}): the estimated noise level is used as it is"
        return kept()
    obs, bartlett, n = _acf(hp, lags)
    pred, _, _ = _acf(hn, lags)
    sig = _kernel_acf(ctx.kernel, r0, r1, ndim, lags)
    x, y = pred - sig, obs - sig
    sep = float(np.linalg.norm(x))
    ratio = float(np.nanvar(hp) / np.nanvar(hn)) if np.nanvar(hn) > 0 else np.inf
    f = float(np.dot(x, y) / np.dot(x, x)) if sep > 0 else 1.0
    # the lags' errors are correlated: the error of one lag over the separation per lag (no averaging gain)
    se = float(np.sqrt(bartlett / max(n, 1)) * np.sqrt(len(lags)) / sep) if sep > 0 else np.inf
    scale = min(1.0, max(_FLOOR, (f + 2 * se) * ratio))
    record.update({"acf_observed": np.round(obs, 3).tolist(), "acf_noise": np.round(pred, 3).tolist(),
                   "acf_signal": np.round(sig, 3).tolist(), "noise_fraction": round(f, 4),
                   "noise_fraction_se": round(se, 4), "variance_ratio": round(ratio, 4),
                   "separation": round(sep, 4), "variance_scale": round(scale, 4)})
    if sep < _MIN_SEPARATION or scale > _MAX_SCALE:
        return kept()
    record["applied"] = True
    sigma = {k: float(v * np.sqrt(scale)) for k, v in noise.sigma.items()}
    return dataclasses.replace(noise, sigma=sigma, texture=record)
