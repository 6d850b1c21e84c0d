"""The lab's geometric rate estimate per heterochromatin domain (Kant et al., Nat Commun 2024).

With the spacing ``d`` between domain centres and the domain radius ``R`` (um) and the chromatin diffusivity
``D`` (um^2/s), the scaling relations of the paper give::

    Gamma_ac = D / d^2                                (acetylation rate, 1/s)
    Gamma_me = Gamma_ac / ((d / R)^2 - 1)             (methylation rate, 1/s)
    lambda   = Gamma_me / Gamma_ac = R^2 / (d^2 - R^2)

``d <= R`` has no solution (the domain would fill its neighbourhood): those domains get NaN, and are counted.
Spacing (:func:`domain_spacing`) follows the lab's MATLAB analysis: the mean distance from a domain centre to its
``k = 5`` nearest neighbouring centres (for a hexagonal lattice of pitch ``a`` this is ``a``).
Distributions are summarised by a log-normal fitted by maximum likelihood (``mu, sigma`` = mean and standard
deviation of ``ln x``; the lab fits the histogram's pdf by least squares, which depends on the bin choice).
"""

from __future__ import annotations

import numpy as np

from ..errors import MollifierInputError

__all__ = ["geometric_rates", "domain_spacing", "lognormal_fit"]


def geometric_rates(radius_um, spacing_um, diffusivity: float = 1.0) -> dict:
    """``{"gamma_ac", "gamma_me", "lambda"}`` (arrays) from radii ``R`` and spacings ``d`` in um and ``D`` in um^2/s.

    Gamma_ac = D / d^2 [1/s]; Gamma_me = Gamma_ac / ((d/R)^2 - 1) [1/s]; lambda = Gamma_me / Gamma_ac. NaN where
    ``d <= R`` (undefined), ``R <= 0`` or an input is not finite.
    """
    D = float(diffusivity)
    if not np.isfinite(D) or D <= 0:
        raise MollifierInputError(f"the diffusivity D must be a positive number (um^2/s), got {diffusivity!r}")
    R = np.asarray(radius_um, float)
    d = np.asarray(spacing_um, float)
    ok = np.isfinite(R) & np.isfinite(d) & (R > 0) & (d > R)
    with np.errstate(divide="ignore", invalid="ignore"):
        g_ac = np.where(np.isfinite(d) & (d > 0), D / d**2, np.nan)
        lam = np.where(ok, R**2 / (d**2 - R**2), np.nan)
    return {"gamma_ac": g_ac, "gamma_me": g_ac * lam, "lambda": lam}


def domain_spacing(cy, cx, k: int = 5) -> np.ndarray:
    """Return the mean distance (same unit as the centres) from each centre to its ``k`` nearest other centres.

    Fewer than ``k`` when there are fewer domains; NaN for a single domain.
    """
    from scipy.spatial import cKDTree

    pts = np.column_stack([np.asarray(cy, float), np.asarray(cx, float)])
    n = len(pts)
    if n < 2:
        return np.full(n, np.nan)
    kk = min(int(k), n - 1)
    dist, _ = cKDTree(pts).query(pts, k=kk + 1)
    return dist[:, 1:].mean(axis=1)


def lognormal_fit(values) -> dict:
    """Maximum-likelihood log-normal fit of the positive finite ``values``.

    Returns ``{"mu", "sigma", "mean", "median", "n"}`` with ``mean = exp(mu + sigma^2 / 2)``,
    ``median = exp(mu)``; NaN parameters when fewer than 2 values are usable.
    """
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size < 2:
        return {"mu": float("nan"), "sigma": float("nan"), "mean": float("nan"), "median": float("nan"),
                "n": int(v.size)}
    lv = np.log(v)
    mu, sigma = float(lv.mean()), float(lv.std())
    return {"mu": mu, "sigma": sigma, "mean": float(np.exp(mu + sigma**2 / 2)), "median": float(np.exp(mu)),
            "n": int(v.size)}
