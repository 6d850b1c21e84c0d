"""Mollifier kernels and their moment-corrected analytic derivatives.

A mollifier is a smooth, compactly supported, non-negative kernel that sums to one. Both families here are
radial, ``eta(x) = f(s) / Z`` with ``s = |x|^2 / R^2`` (``x`` in pixels, ``R`` the radius in pixels):

* ``"bump"`` -- the Friedrichs bump ``f(s) = exp(-1 / (1 - s))`` for ``s < 1``;
* ``"poly"`` -- the polynomial family ``f(s) = (1 - s)^k`` (``k = 8`` by default, ``"poly<k>"`` picks another
  power, ``k >= 5`` so that fourth derivatives are continuous).

and one tensor-product family, ``eta(x) = prod_i p(x_i / R) / Z`` on the square ``|x_i| < R``:

* ``"sep"`` -- ``p(t) = (1 - t^2)^k`` (``k = 8``; ``"sep<k>"``). Its corrected derivative kernels are products of
  1-D moment-corrected kernels, ``K_alpha(x) = prod_i k_{alpha_i}(x_i)``, each ``k_j`` exact up to degree
  ``j + 1``; a product moment ``sum_x x^beta K_alpha`` with ``|beta| <= |alpha| + 1`` then equals
  ``alpha! delta_{alpha beta}`` (a factor with ``beta_i < alpha_i`` or ``beta_i = alpha_i + 1`` vanishes, and
  ``beta_i >= alpha_i + 2`` forces ``beta_j < alpha_j`` on another axis), so the derivatives stay exact on
  polynomials of degree ``|alpha| + 1`` while costing one 1-D pass per axis.

Derivative kernels are returned in *correlation* form, the form ``torch.nn.functional.conv*d`` applies:
``d^alpha u(p) = sum_x f(p + x) K_alpha(x)`` with ``K_alpha = (-1)^|alpha| d^alpha eta``. Sampling the analytic
derivative on an integer grid gives wrong discrete moments (docs/science.md, "Mollifier layers"), so every kernel is corrected
by the smallest term of the form ``eta(x) * poly(x)`` that restores the discrete moment conditions

    sum_x x^beta K_alpha(x) = alpha! delta_{alpha beta}     for all |beta| <= |alpha| + 1,

which makes the ``alpha`` derivative of every polynomial of total degree ``<= |alpha| + 1`` exact.
All kernels are in pixel units; divide by ``prod(h_i ** alpha_i)`` for a physical spacing ``h``.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from itertools import product

import numpy as np
import torch

from .errors import MollifierInputError

__all__ = [
    "KERNEL_FAMILIES",
    "is_separable",
    "separable_factors",
    "MAX_ORDER",
    "parse_kernel",
    "half_width",
    "multi_indices",
    "radial_profile_derivatives",
    "analytic_kernel",
    "correction_coefficients",
    "corrected_kernel",
    "derivative_kernel",
    "moment_targets",
    "monomials",
]

MAX_ORDER = 4
KERNEL_FAMILIES = ("poly", "bump", "sep")
_DEFAULT_POWER = 8


def parse_kernel(name: str) -> tuple[str, int]:
    """Split a kernel name into ``(family, power)``.

    Parameters
    ----------
    name : str
        ``"poly"`` (= ``"poly8"``), ``"poly<k>"``, ``"sep"`` (= ``"sep8"``), ``"sep<k>"`` (``k >= 5``) or ``"bump"``.

    Returns
    -------
    tuple of (str, int)
        The family and the power: ``"poly"`` -> ``("poly", 8)``, ``"poly12"`` -> ``("poly", 12)``,
        ``"bump"`` -> ``("bump", 0)``.

    Raises
    ------
    MollifierInputError
        If ``name`` is not a string, not a known family, or ``k < 5`` (not smooth enough for 4th derivatives).
    """
    if not isinstance(name, str):
        raise MollifierInputError(f"kernel must be a string such as 'poly', 'poly12' or 'bump', got {name!r}")
    match = re.fullmatch(r"(poly|sep)(\d+)?|(bump)", name.strip().lower())
    if match is None:
        raise MollifierInputError(
            f"unknown kernel {name!r}: use 'poly' (= 'poly8'), 'poly<k>' with k >= 5, 'sep' (= 'sep8', separable) "
            "or 'bump'"
        )
    if match.group(3):
        return "bump", 0
    family = match.group(1)
    power = int(match.group(2)) if match.group(2) else _DEFAULT_POWER
    if power < MAX_ORDER + 1:
        raise MollifierInputError(f"kernel '{family}{power}' is not smooth enough for 4th derivatives: use k >= 5")
    return family, power


def is_separable(kernel: str) -> bool:
    """Tell whether ``kernel`` is of the tensor-product family ``"sep"`` (products of 1-D kernels).

    Parameters
    ----------
    kernel : str
        Kernel name, as for :func:`parse_kernel`.

    Returns
    -------
    bool
        True for ``"sep"`` and ``"sep<k>"``.
    """
    return parse_kernel(kernel)[0] == "sep"


def half_width(radius: float) -> int:
    """Return the largest integer offset strictly inside the support ``|x| < radius``.

    Parameters
    ----------
    radius : float
        Support radius, pixels.

    Returns
    -------
    int
        ``ceil(radius) - 1``, pixels.
    """
    return int(math.ceil(float(radius))) - 1


def multi_indices(ndim: int, max_degree: int) -> list[tuple[int, ...]]:
    """List all multi-indices ``beta`` in ``ndim`` dimensions with ``|beta| <= max_degree``.

    Parameters
    ----------
    ndim : int
        Number of dimensions.
    max_degree : int
        Largest total degree ``|beta|``.

    Returns
    -------
    list of tuple of int
        The multi-indices, by increasing degree.
    """
    out = [b for b in product(range(max_degree + 1), repeat=ndim) if sum(b) <= max_degree]
    return sorted(out, key=lambda b: (sum(b), tuple(-v for v in b)))


def radial_profile_derivatives(family: str, power: int, s: np.ndarray, max_order: int) -> list[np.ndarray]:
    """Evaluate ``[f(s), f'(s), ..., f^(max_order)(s)]`` of the radial profile, zero for ``s >= 1``.

    ``poly``: ``f^(j)(s) = (-1)^j k! / (k - j)! (1 - s)^(k - j)``.
    ``bump``: with ``t = 1 / (1 - s)``, ``f^(j) = exp(-t) Q_j(t)`` where ``Q_0 = 1`` and
    ``Q_{j+1}(t) = t^2 (Q_j'(t) - Q_j(t))``.

    Parameters
    ----------
    family : str
        ``"poly"`` or ``"bump"``.
    power : int
        Power ``k`` of the ``"poly"`` profile (unused for ``"bump"``).
    s : numpy.ndarray
        ``|x|^2 / R^2``.
    max_order : int
        Highest derivative.

    Returns
    -------
    list of numpy.ndarray
        ``max_order + 1`` arrays of the shape of ``s``.
    """
    inside = s < 1.0
    one_minus = np.where(inside, 1.0 - s, 1.0)
    out = []
    if family == "poly":
        for j in range(max_order + 1):
            coef = (-1) ** j * math.factorial(power) / math.factorial(power - j) if j <= power else 0.0
            out.append(np.where(inside, coef * one_minus ** max(power - j, 0), 0.0))
        return out
    t = 1.0 / one_minus
    base = np.where(inside, np.exp(-t), 0.0)
    q = np.polynomial.Polynomial([1.0])
    t2 = np.polynomial.Polynomial([0.0, 0.0, 1.0])
    for _ in range(max_order + 1):
        out.append(base * q(t))
        q = t2 * (q.deriv() - q)
    return out


def _grid(ndim: int, h: int) -> list[np.ndarray]:
    axis = np.arange(-h, h + 1, dtype=np.float64)
    return list(np.meshgrid(*([axis] * ndim), indexing="ij"))


def _poly_derivative(poly: dict, axis: int) -> dict:
    out: dict = {}
    for exps, coef in poly.items():
        if exps[axis]:
            new = list(exps)
            new[axis] -= 1
            out[tuple(new)] = out.get(tuple(new), 0.0) + coef * exps[axis]
    return out


def _poly_times_coord(poly: dict, axis: int, factor: float) -> dict:
    out: dict = {}
    for exps, coef in poly.items():
        new = list(exps)
        new[axis] += 1
        out[tuple(new)] = out.get(tuple(new), 0.0) + coef * factor
    return out


def _eval_poly(poly: dict, coords: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(coords[0])
    for exps, coef in poly.items():
        term = np.full_like(coords[0], coef)
        for c, e in zip(coords, exps, strict=True):
            if e:
                term = term * c**e
        total = total + term
    return total


@lru_cache(maxsize=256)
def analytic_kernel(kernel: str, radius: float, alpha: tuple[int, ...]) -> np.ndarray:
    """Sample ``(-1)^|alpha| d^alpha eta`` on the integer grid ``|x_i| <= half_width(radius)`` (float64).

    The derivative of ``f(|x|^2 / R^2)`` is expanded as ``sum_k f^(k)(s) P_k(x)`` with polynomials ``P_k``
    built by ``d_i [f^(k) P] = f^(k+1) (2 x_i / R^2) P + f^(k) d_i P``. ``eta`` is normalised so that its
    samples sum to one. Returned read-only (it is cached).

    Parameters
    ----------
    kernel : str
        Kernel name (``"poly"``, ``"poly<k>"``, ``"sep"``, ``"sep<k>"`` or ``"bump"``).
    radius : float
        Support radius ``R``, pixels.
    alpha : tuple of int
        Derivative orders per axis, in array-axis order.

    Returns
    -------
    numpy.ndarray
        The sampled kernel, ``2 half_width(R) + 1`` samples per axis (read-only).
    """
    family, power = parse_kernel(kernel)
    ndim = len(alpha)
    if family == "sep":
        out = _outer([analytic_kernel(f"poly{power}", radius, (a,)) for a in alpha])
        out.setflags(write=False)
        return out
    h = half_width(radius)
    coords = _grid(ndim, h)
    s = sum(c**2 for c in coords) / float(radius) ** 2
    order = sum(alpha)
    profile = radial_profile_derivatives(family, power, s, order)
    norm = profile[0].sum()
    terms = {0: {(0,) * ndim: 1.0}}  # f^(k) -> polynomial P_k as {exponents: coefficient}
    for axis, count in enumerate(alpha):
        for _ in range(count):
            new_terms: dict = {}
            for k, poly in terms.items():
                for target, piece in (
                    (k + 1, _poly_times_coord(poly, axis, 2.0 / float(radius) ** 2)),
                    (k, _poly_derivative(poly, axis)),
                ):
                    acc = new_terms.setdefault(target, {})
                    for exps, coef in piece.items():
                        acc[exps] = acc.get(exps, 0.0) + coef
            terms = new_terms
    values = sum(profile[k] * _eval_poly(poly, coords) for k, poly in terms.items() if poly)
    out = (-1) ** order * np.asarray(values, dtype=np.float64) / norm
    out.setflags(write=False)
    return out


def moment_targets(alpha: tuple[int, ...], betas: list[tuple[int, ...]], radius: float) -> np.ndarray:
    """Return the right-hand side of the moment conditions in scaled coordinates ``y = x / R``.

    The conditions are ``sum_x (x/R)^beta K_alpha(x) = alpha! / R^|alpha| delta_{alpha beta}``.

    Parameters
    ----------
    alpha : tuple of int
        Derivative orders per axis.
    betas : list of tuple of int
        Multi-indices of the moments (as from :func:`multi_indices`).
    radius : float
        Support radius ``R``, pixels.

    Returns
    -------
    numpy.ndarray
        One target per ``beta``, shape ``(len(betas),)``.
    """
    target = np.zeros(len(betas))
    if alpha in betas:
        target[betas.index(alpha)] = math.prod(math.factorial(a) for a in alpha) / float(radius) ** sum(alpha)
    return target


def monomials(coords: list[np.ndarray], betas: list[tuple[int, ...]], radius: float) -> np.ndarray:
    """Stack the scaled monomials ``(x / R)^beta`` for each ``beta``.

    Parameters
    ----------
    coords : list of numpy.ndarray
        Grid coordinates ``x`` per axis, pixels.
    betas : list of tuple of int
        Multi-indices.
    radius : float
        Support radius ``R``, pixels.

    Returns
    -------
    numpy.ndarray
        Shape ``(len(betas), *grid)``.
    """
    scaled = [c / float(radius) for c in coords]
    return np.stack([math.prod((y**e for y, e in zip(scaled, b, strict=True)), start=np.ones_like(scaled[0]))
                     for b in betas])


@lru_cache(maxsize=256)
def correction_coefficients(kernel: str, radius: float, alpha: tuple[int, ...]) -> np.ndarray:
    """Solve for the coefficients ``c_beta`` of the moment correction (order of :func:`multi_indices`).

    They solve ``G c = t - a`` with ``G_gb = sum_x eta (x/R)^(g+b)`` (symmetric positive definite), ``t`` the
    target moments and ``a_g = sum_x (x/R)^g A_alpha(x)`` the moments of the sampled analytic kernel. The
    parameters ``kernel``, ``radius`` and ``alpha`` are as in :func:`analytic_kernel`.

    Returns
    -------
    numpy.ndarray
        ``c_beta`` for ``|beta| <= |alpha| + 1`` (read-only).

    Raises
    ------
    MollifierInputError
        If ``radius < |alpha| + 1``.
    """
    ndim = len(alpha)
    order = sum(alpha)
    if radius < order + 1:
        raise MollifierInputError(f"radius {radius} px is too small for a derivative of order {order}: use >= {order + 1}")
    analytic = analytic_kernel(kernel, radius, alpha)
    eta = analytic_kernel(kernel, radius, (0,) * ndim)
    betas = multi_indices(ndim, order + 1)
    mono = monomials(_grid(ndim, half_width(radius)), betas, radius).reshape(len(betas), -1)
    gram = (eta.ravel()[None] * mono) @ mono.T
    coef = np.linalg.lstsq(gram, moment_targets(alpha, betas, radius) - mono @ analytic.ravel(), rcond=None)[0]
    coef.setflags(write=False)
    return coef


def _outer(factors: list) -> np.ndarray:
    out = np.asarray(factors[0], dtype=np.float64)
    for f in factors[1:]:
        out = np.multiply.outer(out, f)
    return np.array(out)


def separable_factors(kernel: str, radius: float, alpha: tuple[int, ...]) -> list[np.ndarray]:
    """Return the 1-D moment-corrected kernels ``k_{alpha_i}`` whose outer product is the ``"sep"`` ``K_alpha``.

    The parameters ``kernel``, ``radius`` and ``alpha`` are as in :func:`analytic_kernel`.

    Returns
    -------
    list of numpy.ndarray
        One 1-D kernel per axis, pixel units.
    """
    _, power = parse_kernel(kernel)
    return [corrected_kernel(f"poly{power}", radius, (a,)) for a in alpha]


@lru_cache(maxsize=256)
def corrected_kernel(kernel: str, radius: float, alpha: tuple[int, ...]) -> np.ndarray:
    """Build the moment-corrected correlation kernel for ``d^alpha`` (float64, pixel units, read-only).

    ``K = A + eta * sum_beta c_beta (x/R)^beta`` with ``A`` the sampled analytic kernel and ``c`` from
    :func:`correction_coefficients`, so that ``sum_x x^beta K(x) = alpha! delta`` for ``|beta| <= |alpha| + 1``;
    for the ``"sep"`` family the product of the 1-D corrected kernels (module docstring). The parameters
    ``kernel``, ``radius`` and ``alpha`` are as in :func:`analytic_kernel`.

    Returns
    -------
    numpy.ndarray
        The kernel, ``2 half_width(R) + 1`` samples per axis (read-only).
    """
    ndim = len(alpha)
    if ndim > 1 and is_separable(kernel):
        out = _outer(separable_factors(kernel, radius, alpha))
        out.setflags(write=False)
        return out
    coef = correction_coefficients(kernel, radius, alpha)
    eta = analytic_kernel(kernel, radius, (0,) * ndim)
    mono = monomials(_grid(ndim, half_width(radius)), multi_indices(ndim, sum(alpha) + 1), radius)
    out = analytic_kernel(kernel, radius, alpha) + eta * np.tensordot(coef, mono, axes=1)
    out.setflags(write=False)
    return out


def derivative_kernel(
    kernel: str = "poly",
    radius: float = 8,
    alpha: tuple[int, ...] = (0, 0),
    *,
    corrected: bool = True,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return the correlation kernel for the derivative ``d^alpha`` as a tensor.

    Parameters
    ----------
    kernel : str
        ``"poly"``, ``"poly<k>"`` or ``"bump"``.
    radius : float
        Support radius ``R`` in pixels; the tensor has ``2 * half_width(R) + 1`` samples per axis.
    alpha : tuple of int
        Derivative orders per axis, in array-axis order (``(a_y, a_x)`` in 2-D).
    corrected : bool
        Apply the discrete moment correction (default). ``False`` gives the raw sampled derivative.
    dtype : torch.dtype
        Dtype of the tensor.
    device : torch.device or str, optional
        Device of the tensor (default: the CPU).

    Returns
    -------
    torch.Tensor
        The kernel in pixel units (divide by ``prod(h_i ** alpha_i)`` for a physical spacing ``h``).

    Examples
    --------
    >>> k = derivative_kernel("poly", 6, (0, 2))                     # d^2/dx^2 in 2-D
    >>> x = torch.arange(-5.0, 6.0, dtype=torch.float64)
    >>> round(float((k * x[None, :] ** 2).sum()), 12)     # second moment = 2!
    2.0
    """
    array = corrected_kernel(kernel, float(radius), tuple(alpha)) if corrected else analytic_kernel(
        kernel, float(radius), tuple(alpha)
    )
    return torch.as_tensor(np.array(array), dtype=dtype, device=device)
