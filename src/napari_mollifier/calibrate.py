"""Fit a model's coefficients on fields whose rate is known (e.g. a uniform-rate simulation).

Least squares on the PDE residual with the known rate, ``min_c sum_ROI residual(d(c), lambda_known; c)^2``
(``scipy.optimize.least_squares``), with mollified derivatives at a fixed radius. On the reference
finite-element states this reproduces ``l2 = 1.04`` (box units) for the balance model (docs/science.md, "The chromatin models").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.optimize import least_squares

from .errors import MollifierInputError
from .models import Model, get_model
from .mollifier import derivatives

__all__ = ["calibrate"]


def calibrate(fields: dict, known_rate: float | ArrayLike, model: str | Model = "chromatin-balance",
              fit: Sequence[str] | None = None, params: dict | None = None,
              pixel_size: float | Sequence[float] = 1.0, radius: float = 8.0, roi: ArrayLike | None = None,
              boundary: str = "mask", kernel: str = "poly") -> dict:
    """Fit coefficients of ``model`` on fields with a known rate (least squares on the PDE residual).

    Parameters
    ----------
    fields : dict of str -> array
        The model's inputs (``phi_h``, ``phi_e``...).
    known_rate : float or array
        The true rate (uniform or a map of the image's shape).
    model : str or Model
        The PDE model (a name of :data:`napari_mollifier.models.MODELS`).
    fit : sequence of str, optional
        Coefficients to fit (default: the model's first coefficient, ``l2`` or ``a``); the others stay at
        ``params`` or their defaults.
    params : dict, optional
        Coefficient values that override the model's defaults (the start values of the fitted ones).
    pixel_size, radius, roi, boundary, kernel
        As in :func:`napari_mollifier.infer_rates` (radius in pixels, fixed).

    Returns
    -------
    dict
        ``params`` (all coefficients, fitted ones replaced), ``fitted`` (just those), ``stderr`` (their standard
        errors from the Jacobian), ``relative_residual`` (RMS residual / RMS reaction term).

    Raises
    ------
    MollifierInputError
        If ``fit`` is empty or names a coefficient the model does not have.
    """
    m = get_model(model)
    base = m.params(params)
    names = list(fit) if fit is not None else list(m.coefficients)[:1]
    unknown = [n for n in names if n not in base]
    if not names or unknown:
        raise MollifierInputError(f"cannot fit {unknown or names}: model {m.name!r} has coefficients {sorted(base)}")
    arrays = {k: np.asarray(fields[k], dtype=np.float64) for k in m.inputs}
    shape = next(iter(arrays.values())).shape
    rate = np.broadcast_to(np.asarray(known_rate, dtype=np.float64), shape)
    region = np.ones(shape, bool) if roi is None else np.asarray(roi, bool)
    ndim = len(shape)
    spacing = np.broadcast_to(np.asarray(pixel_size, dtype=np.float64), (ndim,))
    kwargs = {"mask": region} if boundary == "mask" else {"boundary": boundary}

    def mollified(p):
        derived = m.derived(arrays, p)
        return {n: {k: torch.as_tensor(v) for k, v in derivatives(derived[n], radius, pixel_size=tuple(spacing),
                                                                    kernel=kernel, which=keys, ndim=ndim,
                                                                    **kwargs).items()}
                for n, keys in m.needs(ndim).items()}

    rate_t = torch.as_tensor(np.ascontiguousarray(rate))

    def residual(values):
        p = dict(base, **dict(zip(names, values, strict=True)))
        r = m.residual(mollified(p), rate_t, p).numpy()
        return r[region & np.isfinite(r)]

    fit_result = least_squares(residual, [base[n] for n in names], x_scale="jac")
    p = dict(base, **dict(zip(names, map(float, fit_result.x), strict=True)))
    res = fit_result.fun
    dof = max(res.size - len(names), 1)
    cov = np.linalg.pinv(fit_result.jac.T @ fit_result.jac) * (res @ res) / dof
    zero = m.residual(mollified(p), torch.zeros_like(rate_t), p).numpy() - m.residual(mollified(p), rate_t, p).numpy()
    reaction = zero[region & np.isfinite(zero)]
    return {
        "params": p,
        "fitted": {n: p[n] for n in names},
        "stderr": {n: float(np.sqrt(cov[i, i])) for i, n in enumerate(names)},
        "relative_residual": float(np.sqrt(np.mean(res**2)) / max(np.sqrt(np.mean(reaction**2)), 1e-300)),
    }
