"""Noise of the input images: level per field, spatial correlation, correlation between fields.

Model (docs/science.md, "Noise model"): the noise of field ``f`` is ``sigma_f * (g_c * e_f) / ||g_c||_2`` with
``e_f`` white, ``g_c`` a sampled Gaussian of standard deviation ``c`` pixels (``c = 0``: white noise; a microscope's
PSF or the rendering of localisations gives ``c > 0``) and ``corr(e_f, e_g) = r_fg`` between fields. Its
autocorrelation is ``rho(delta) = (g_c (*) g_c)(delta) / sum g_c^2`` (separable, one factor ``rho_1`` per axis).

Estimation, after Immerkaer (Computer Vision and Image Understanding 64, 1996), made robust and extended to
correlated noise: the field is filtered with the separable second difference of step ``s`` along every axis,
``D_s = [1, 0 (s-1 times), -2, 0 (s-1 times), 1]``, which removes any locally quadratic signal. For noise of the
model above the response has variance ``sigma^2 phi_s(c)^d`` with ``phi_s(c) = 6 - 8 rho_1(s) + 2 rho_1(2 s)``
(``phi_s(0) = 6``). The response variances ``v_s`` are measured robustly (``(1.4826 MAD)^2``) for ``s = 1, 2``;
``v_2 / v_1 = (phi_2(c) / phi_1(c))^d`` grows monotonically with ``c`` and gives ``c`` (fields pooled), then
``sigma_f^2 = v_1 / phi_1(c)^d``. ``r_fg`` comes from the responses of ``f / sigma_f +- g / sigma_g``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .errors import MollifierInputError

__all__ = ["NoiseModel", "estimate_noise", "estimate_noise_model", "gaussian_autocorrelation", "MAX_CORRELATION"]

MAX_CORRELATION = 2.5  # px: the largest correlation length the estimator reports
_MIN_RESPONSES = 64  # filter responses needed for a noise estimate


def _gaussian_1d(c: float) -> np.ndarray:
    if c <= 0:
        return np.ones(1)
    h = int(np.ceil(4 * c))
    x = np.arange(-h, h + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / c) ** 2)
    return g / g.sum()


def _rho_1d(c: float) -> np.ndarray:
    """Autocorrelation of ``g_c``-blurred white noise along one axis, centred, ``rho(0) = 1``."""
    g = _gaussian_1d(c)
    rho = np.correlate(g, g, mode="full")
    return rho / rho[len(rho) // 2]


def gaussian_autocorrelation(c: float, ndim: int) -> np.ndarray:
    """Return the noise autocorrelation ``rho(delta)`` of the model on a centred ``(2h+1)^ndim`` grid.

    Parameters
    ----------
    c : float
        Correlation length (standard deviation of ``g_c``), pixels; ``c <= 0`` is white noise.
    ndim : int
        Number of dimensions.

    Returns
    -------
    numpy.ndarray
        ``rho(delta) = (g_c (*) g_c)(delta) / sum g_c^2``, ``rho(0) = 1`` (a single 1 when white).
    """
    r = _rho_1d(c)
    out = r
    for _ in range(ndim - 1):
        out = np.multiply.outer(out, r)
    return out


def _phi(step: int, c: float) -> float:
    rho = _rho_1d(c)
    mid = len(rho) // 2

    def at(lag):
        return rho[mid + lag] if lag <= mid else 0.0

    return 6.0 - 8.0 * at(step) + 2.0 * at(2 * step)


def blur_white_noise(white: np.ndarray, c: float) -> np.ndarray:
    """Turn white noise ``e`` of unit variance into the model's correlated noise ``(g_c * e) / ||g_c||_2``.

    Parameters
    ----------
    white : numpy.ndarray
        White noise of unit variance (any number of dimensions).
    c : float
        Correlation length, pixels; ``c <= 0`` returns ``white`` unchanged.

    Returns
    -------
    numpy.ndarray
        Correlated noise of unit variance (periodic boundary), the shape of ``white``.
    """
    if c <= 0:
        return white
    g = _gaussian_1d(c)
    out = white
    for axis in range(white.ndim):
        out = ndimage.correlate1d(out, g, axis=axis, mode="wrap")
    return out / np.sqrt(np.sum(g**2)) ** white.ndim


@dataclass(frozen=True)
class NoiseModel:
    """Noise of the input fields: standard deviation per field, correlation length, cross-correlations.

    Attributes
    ----------
    sigma : dict
        ``{field: standard deviation}``, units of the field.
    correlation_length : float
        ``c``, pixels (0: white noise).
    cross : dict
        ``{"f|g": r_fg}``, correlations between fields (0 when absent).
    source : str
        ``"estimated"`` or ``"given"``.
    """

    sigma: dict
    correlation_length: float = 0.0
    cross: dict = field(default_factory=dict)  # {"f|g": r_fg}
    source: str = "given"
    texture: dict | None = None  # record of the texture check (napari_mollifier.texture) if it ran; "applied": scaled

    def covariance(self, names: Sequence[str]) -> np.ndarray:
        """Return the covariance ``C_fg = sigma_f sigma_g r_fg`` of the fields ``names`` (``r_ff = 1``).

        Parameters
        ----------
        names : sequence of str
            Field names, keys of :attr:`sigma`.

        Returns
        -------
        numpy.ndarray
            ``(len(names), len(names))`` covariance matrix.
        """
        s = np.array([self.sigma[n] for n in names], dtype=np.float64)
        r = np.eye(len(names))
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                if i != j:
                    r[i, j] = self.cross.get(f"{a}|{b}", self.cross.get(f"{b}|{a}", 0.0))
        return r * np.outer(s, s)

    def autocorrelation(self, ndim: int) -> np.ndarray:
        """Return :func:`gaussian_autocorrelation` at :attr:`correlation_length`.

        Parameters
        ----------
        ndim : int
            Number of dimensions.

        Returns
        -------
        numpy.ndarray
            ``rho(delta)`` on a centred grid.
        """
        return gaussian_autocorrelation(self.correlation_length, ndim)

    def as_dict(self) -> dict:
        """Return the model as a plain dict (for the provenance).

        Returns
        -------
        dict
            ``sigma``, ``correlation_length_px``, ``cross_correlation``, ``source``.
        """
        out = {"sigma": dict(self.sigma), "correlation_length_px": self.correlation_length,
               "cross_correlation": dict(self.cross), "source": self.source}
        if self.texture is not None:
            out["texture_check"] = dict(self.texture)
        return out


def _mask_depth(mask: np.ndarray | None) -> np.ndarray | None:
    """Chessboard distance of each mask pixel to the nearest pixel outside it (None: no mask, or all inside).

    A ``(2 s + 1)^d`` window centred on a pixel lies inside the mask exactly where this depth exceeds ``s``.
    """
    if mask is None or np.all(mask):
        return None
    return ndimage.distance_transform_cdt(np.asarray(mask, dtype=bool), metric="chessboard")


def _responses(image: np.ndarray, mask: np.ndarray | None, step: int, depth: np.ndarray | None = None) -> np.ndarray:
    """Second-difference responses of step ``step`` along every axis, where the window is inside ``mask``.

    Only windows inside the image are used, so each axis's filter is a difference of shifted slices (no padding);
    ``depth`` (:func:`_mask_depth` of ``mask``, computed here when not given) says which windows are in the mask.
    """
    response = np.asarray(image, dtype=np.float64)
    s = step
    for axis in range(response.ndim):
        n = response.shape[axis]

        def part(a, r=response, axis=axis, n=n):
            return r[(slice(None),) * axis + (slice(a, n - 2 * s + a),)]

        response = part(0) - 2.0 * part(s) + part(2 * s)
    valid = np.isfinite(response)
    if depth is None and mask is not None:
        depth = _mask_depth(mask)
    if depth is not None:
        valid &= depth[tuple(slice(s, n - s) for n in depth.shape)] > s
    return response[valid]


def _robust_var(values: np.ndarray) -> float:
    return float((1.4826 * np.median(np.abs(values - np.median(values)))) ** 2) if values.size else 0.0


def estimate_noise(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Estimate the standard deviation of additive white noise in ``image`` (units of the image).

    Immerkaer's estimator ``1.4826 MAD(I (*) D_1^d) / sqrt(6^d)`` (module docstring).

    Parameters
    ----------
    image : ndarray
        1-D, 2-D or 3-D image.
    mask : ndarray of bool, optional
        Only filter responses whose whole 3^d neighbourhood lies inside the mask are used.

    Returns
    -------
    float
        The noise standard deviation (0 when no response is available).
    """
    image = np.asarray(image, dtype=np.float64)
    r = _responses(image, mask, 1)
    if not r.size:
        return 0.0
    return float(1.4826 * np.median(np.abs(r)) / np.sqrt(6.0**image.ndim))


def _fit_field(v: np.ndarray, noise: np.ndarray, signals: list) -> tuple[float, float]:
    """Fit ``v = s2 noise + sum_j A_j signal_j`` by non-negative least squares on relative errors.

    Returns ``(error, s2)`` (all subsets of the terms are tried; there are at most three).
    """
    columns = [noise] + list(signals)
    design_all = np.stack(columns, axis=1) / v[:, None]
    target = np.ones_like(v)
    best = (np.inf, 0.0)
    n = design_all.shape[1]
    for subset in range(1, 2**n):
        cols = [j for j in range(n) if subset >> j & 1]
        design = design_all[:, cols]
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        if np.any(coef < 0):
            continue
        err = float(np.sum((design @ coef - target) ** 2))
        if err < best[0] - 1e-12:
            best = (err, float(coef[cols.index(0)]) if 0 in cols else 0.0)
    return best


def _fit_noise(variances: list, ndim: int) -> tuple[list, float]:
    """Fit the robust response variances ``v_s`` (steps ``s = 1, 2, 3``) of every field with one shared ``c``.

    Returns ``([sigma_f^2], c)``.

    ``v_s = sigma^2 phi_s(c)^d + A s^(4d)``: the noise and the leak of a smooth signal (its second differences grow
    like ``s^(2d)``). ``c`` on a 0.05 px grid up to
    :data:`MAX_CORRELATION`, the amplitudes ``>= 0`` by least squares on relative errors. Noise correlated over
    much more than 2 px is indistinguishable from a smooth signal by its second differences, so longer
    correlation lengths are not reported.
    """
    steps = np.arange(1, len(variances[0]) + 1, dtype=np.float64)
    signals = [steps ** (4 * ndim)]
    best = (np.inf, None, 0.0)
    for c in np.round(np.arange(0.0, MAX_CORRELATION + 1e-9, 0.05), 3):
        noise = np.array([_phi(int(s), c) ** ndim for s in steps])
        fits = [_fit_field(np.asarray(v, dtype=np.float64), noise, signals) for v in variances]
        err = sum(f[0] for f in fits)
        if err < best[0] - 1e-12:
            best = (err, [f[1] for f in fits], float(c))
    return best[1], best[2]


def estimate_noise_model(fields: dict, mask: np.ndarray | None = None, *, correlated: bool = True,
                         allow_zero: bool = False) -> NoiseModel:
    """Estimate a :class:`NoiseModel` from the fields themselves (module docstring).

    ``allow_zero``: a field without pixel-to-pixel variation gets noise 0 instead of an error (exact, uniform
    simulated states).

    Parameters
    ----------
    fields : dict
        ``{name: image}``, all of one shape.
    mask : numpy.ndarray of bool, optional
        Pixels to estimate from (filter windows must lie inside it).
    correlated : bool
        Estimate the correlation length ``c``; False assumes white noise.
    allow_zero : bool
        See above.

    Returns
    -------
    NoiseModel
        ``source="estimated"``.

    Raises
    ------
    MollifierInputError
        Too few pixels to estimate from, or a field without any variation (its noise cannot be estimated).
    """
    names = list(fields)
    ndim = np.ndim(next(iter(fields.values())))
    depth = _mask_depth(mask)  # once for every field and step
    r1 = {k: _responses(v, mask, 1, depth) for k, v in fields.items()}
    for k, r in r1.items():
        if r.size < _MIN_RESPONSES:
            raise MollifierInputError(
                f"the noise of field {k!r} cannot be estimated: only {r.size} pixels have a full 3-pixel "
                f"neighbourhood of valid pixels (need {_MIN_RESPONSES}); pass noise=<std of the noise> "
                "(a number, or a dict per field; --noise in the CLI)"
            )
    v1 = {k: _robust_var(r) for k, r in r1.items()}
    for k in v1:
        if not np.any(r1[k]) and not allow_zero:
            raise MollifierInputError(
                f"the noise of field {k!r} cannot be estimated: the field has no pixel-to-pixel variation (constant "
                "or piecewise linear); pass noise=<std of the noise> (a number, or a dict per field; --noise in the "
                "CLI), e.g. noise=0 for exact simulated fields"
            )
    steps = [[v1[k]] + [_robust_var(_responses(fields[k], mask, s, depth)) for s in (2, 3)] for k in names]
    usable = correlated and all(np.all(np.asarray(v) > 0) for v in steps)
    if any(v1[k] <= 0 for k in names):  # noise-free in most pixels (an exact simulation)
        return NoiseModel(sigma={k: float(np.sqrt(v1[k] / 6.0**ndim)) for k in names}, source="estimated")
    if usable:
        variances, c = _fit_noise(steps, ndim)
    else:
        variances, c = [v1[k] / 6.0**ndim for k in names], 0.0
    sigma = {k: float(np.sqrt(max(var, 0.0))) for k, var in zip(names, variances, strict=True)}
    cross = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if r1[a].size != r1[b].size:
                continue
            za, zb = r1[a] / np.sqrt(v1[a]), r1[b] / np.sqrt(v1[b])
            vp, vm = _robust_var(za + zb), _robust_var(za - zb)
            cross[f"{a}|{b}"] = round(float((vp - vm) / (vp + vm)), 4) if vp + vm > 0 else 0.0
    return NoiseModel(sigma=sigma, correlation_length=float(c), cross=cross, source="estimated")
