"""Forward solvers with known rate maps: sample data and ground truth for tests.

All fields live on periodic grids and every differential operator is spectral (FFT),
so a field produced here satisfies its model equation to round-off on that grid.
Arrays are float64 numpy; randomness comes from ``numpy.random.default_rng(seed)``.

Models (docs/science.md, "The chromatin models"; lambda = G_me / G_ac is dimensionless, time is in units of 1 / G_ac):

* ``"chromatin-balance"``:  l2 lap(phi_e) = lambda phi_e - phi_h,  l2 = D / G_ac  [length^2]
* ``"chromatin-phase-field"``: 0 = M lap(mu_d) + 2 (lambda phi_e - phi_h),
  mu_d = -a phi_e + phi_h (phi_max - phi_h)(phi_max - 2 phi_h) - l_int^2 lap(phi_d)
  with mobility M [length^2] (1 in the box units of the reference data), so that a M / 2 plays l2.
* heat: 0 = rate lap(u) + m;  Langevin-type ODE: du/dt = u + rate(t).

Length unit: every coefficient with a length is in the unit of ``pixel_size``. The reference
finite-element data use "box units" (10 x 10 box, l2 = 1.04). :func:`synthetic_nucleus` maps one box
unit to ``BOX_UNIT_UM`` = 0.15 um: the reference domains are ~0.66 box across, i.e. ~100 nm, the
heterochromatin domain size, and sqrt(l2) = 0.153 um = 7.6 px at 20 nm pixels.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import fft as _fft
from scipy import ndimage as _ndi

__all__ = [
    "BOX_UNIT_UM",
    "CHROMATIN_DEFAULTS",
    "smooth_random_field",
    "chromatin_steady_state",
    "heat_steady_state",
    "langevin_series",
    "synthetic_nucleus",
]

#: Physical size (um) of one box unit of the reference finite-element data (see module docstring).
BOX_UNIT_UM = 0.15

#: Calibrated defaults in box units (docs/science.md, "The chromatin models"). ``mobility`` is length^2.
CHROMATIN_DEFAULTS = {
    "chromatin-balance": {"l2": 1.04},
    "chromatin-phase-field": {"a": 1.0, "phi_max": 0.7, "l_int": 0.03, "mobility": 1.0},
}


# --------------------------------------------------------------------------- spectral helpers
class _Spectral:
    """Real FFT operators on a periodic grid with spacing ``pixel_size`` along every axis."""

    def __init__(self, shape, pixel_size):
        self.shape = tuple(shape)
        freqs = [_fft.fftfreq(n, d=pixel_size) for n in self.shape[:-1]]
        freqs.append(_fft.rfftfreq(self.shape[-1], d=pixel_size))
        grids = np.meshgrid(*[2 * np.pi * f for f in freqs], indexing="ij", sparse=True)
        self.k2 = sum(g**2 for g in grids)  # |k|^2, so lap <-> -k2

    def fwd(self, f):
        return _fft.rfftn(f, workers=-1)

    def inv(self, f_hat):
        return _fft.irfftn(f_hat, s=self.shape, workers=-1)

    def lap(self, f):
        return self.inv(-self.k2 * self.fwd(f))

    def divide(self, f, symbol):
        """Solve symbol(k) * x_hat = f_hat (constant-coefficient operator)."""
        return self.inv(self.fwd(f) / symbol)


def _pcg(apply_a, b, precond, x, tol, max_iter):
    """Preconditioned conjugate gradients for SPD ``apply_a``; stop when max|b - A x| <= tol.

    Returns ``(x, max|residual|, iterations)``; the residual is recomputed exactly before stopping.
    """
    r = b - apply_a(x)
    z = precond(r)
    p, rz = z.copy(), np.vdot(r, z)
    it = 0
    for it in range(max_iter):  # noqa: B007 - the count is reported after the loop
        if np.max(np.abs(r)) <= tol:
            r = b - apply_a(x)  # recursive residual may drift: check the true one
            if np.max(np.abs(r)) <= tol:
                break
            z = precond(r)
            p, rz = z.copy(), np.vdot(r, z)
        ap = apply_a(p)
        alpha = rz / np.vdot(p, ap)
        x = x + alpha * p
        r = r - alpha * ap
        z = precond(r)
        rz_new = np.vdot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, float(np.max(np.abs(b - apply_a(x)))), it


# --------------------------------------------------------------------------- random fields
def smooth_random_field(shape: tuple[int, ...], scale: float, low: float, high: float,
                        seed: int = 0) -> np.ndarray:
    """Periodic Gaussian random field with correlation length ``scale`` pixels, rescaled to [low, high].

    White noise is filtered in Fourier space by exp(-k^2 scale^2 / 4) (k in rad/pixel), giving the
    autocorrelation exp(-r^2 / (2 scale^2)); then min -> ``low`` and max -> ``high`` linearly.

    Parameters
    ----------
    shape : tuple of int
        Grid shape, pixels.
    scale : float
        Correlation length in pixels (0 gives white noise). Features are ~2-3 ``scale`` across.
    low, high : float
        Range of the output (dimensionless, or the unit of the quantity it stands for).
    seed : int
        Seed of the white noise.

    Returns
    -------
    numpy.ndarray
        float64, ``shape``.
    """
    noise = np.random.default_rng(seed).standard_normal(shape)
    sp = _Spectral(shape, 1.0)
    field = sp.inv(sp.fwd(noise) * np.exp(-sp.k2 * float(scale) ** 2 / 4.0))
    span = field.max() - field.min()
    if span <= 0:
        return np.full(shape, 0.5 * (low + high))
    return low + (high - low) * (field - field.min()) / span


# --------------------------------------------------------------------------- chromatin model
def _chromatin_params(model, params):
    if model not in CHROMATIN_DEFAULTS:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(CHROMATIN_DEFAULTS)}")
    out = dict(CHROMATIN_DEFAULTS[model])
    unknown = set(params or {}) - set(out)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for {model!r}; allowed: {sorted(out)}")
    out.update({k: float(v) for k, v in (params or {}).items()})
    return out


def _solve_balance(phi_w, rate, sp, l2, tol, max_iter, phi_e0=None):
    """Solve (-l2 lap + rate + 1) phi_e = 1 - phi_w (SPD for rate > -1) by spectral-preconditioned CG."""
    c = rate + 1.0
    if np.any(c <= 0):
        raise ValueError("rate must be > -1 everywhere")
    symbol = l2 * sp.k2 + c.mean()
    b = 1.0 - phi_w
    x0 = sp.divide(b, symbol) if phi_e0 is None else phi_e0
    return _pcg(lambda x: sp.inv(l2 * sp.k2 * sp.fwd(x)) + c * x, b,
                lambda r: sp.divide(r, symbol), x0, tol, max_iter)


def _double_well(phi_h, phi_max):
    """g(phi_h) = phi_h (phi_max - phi_h)(phi_max - 2 phi_h) and its derivative g'."""
    g = phi_h * (phi_max - phi_h) * (phi_max - 2 * phi_h)
    dg = phi_max**2 - 6 * phi_max * phi_h + 6 * phi_h**2
    return g, dg


def _phase_field_residual(phi_d, phi_w, rate, sp, p):
    """F = M lap(mu_d) + 2 (rate phi_e - phi_h) for the unknown phi_d."""
    phi_h, phi_e = (1 - phi_w + phi_d) / 2, (1 - phi_w - phi_d) / 2
    g, _ = _double_well(phi_h, p["phi_max"])
    mu_hat = sp.fwd(-p["a"] * phi_e + g) + p["l_int"] ** 2 * sp.k2 * sp.fwd(phi_d)
    return p["mobility"] * sp.inv(-sp.k2 * mu_hat) + 2 * (rate * phi_e - phi_h)


def _solve_phase_field(phi_w, rate, sp, p, tol, max_iter):
    """Stabilised Picard iteration: A_s delta = F(phi_d), phi_d += delta, until max|F| <= tol.

    A_s = -M (a/2 + s) lap + M l_int^2 lap^2 + (rate + 1) is the linear part of -F with the double
    well's diffusion g'/2 replaced by its mid-range value s (updated every step); A_s is SPD and
    is inverted by CG with a constant-coefficient spectral preconditioner.
    """
    m, a, l4 = p["mobility"], p["a"], p["l_int"] ** 2
    c = rate + 1.0
    phi_e, _, _ = _solve_balance(phi_w, rate, sp, m * a / 2, 1e-6, 200)  # neglects g, l_int
    phi_d = 1 - phi_w - 2 * phi_e
    res = _phase_field_residual(phi_d, phi_w, rate, sp, p)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported after the loop
        _, dg = _double_well((1 - phi_w + phi_d) / 2, p["phi_max"])
        s = max((dg.min() + dg.max()) / 4, -a / 4)
        k_part = m * (a / 2 + s) * sp.k2 + m * l4 * sp.k2**2
        symbol = k_part + c.mean()
        delta, _, _ = _pcg(lambda x: sp.inv(k_part * sp.fwd(x)) + c * x, res,  # noqa: B023 - called within the same iteration
                           lambda r: sp.divide(r, symbol), sp.divide(res, symbol),  # noqa: B023 - called within the same iteration
                           max(0.05 * np.max(np.abs(res)), 0.1 * tol), 200)
        phi_d = phi_d + delta
        res = _phase_field_residual(phi_d, phi_w, rate, sp, p)
        if np.max(np.abs(res)) <= tol:
            break
    return phi_d, float(np.max(np.abs(res))), it


def chromatin_steady_state(phi_w: ArrayLike, rate: float | ArrayLike, pixel_size: float = 1.0,
                           model: str = "chromatin-balance", params: dict | None = None,
                           tol: float = 1e-10, max_iter: int = 500) -> dict:
    """Steady state of the chromatin model for a fixed nucleoplasm field and rate map (periodic grid).

    ``"chromatin-balance"`` (unknown phi_e, with phi_h = 1 - phi_w - phi_e)::

        l2 lap(phi_e) = rate phi_e - phi_h   <=>   (l2 lap - rate - 1) phi_e = -(1 - phi_w)

    solved by spectrally preconditioned conjugate gradients. ``"chromatin-phase-field"`` (unknown
    phi_d, with phi_h = (1 - phi_w + phi_d) / 2, phi_e = (1 - phi_w - phi_d) / 2)::

        0 = M lap(mu_d) + 2 (rate phi_e - phi_h)
        mu_d = -a phi_e + phi_h (phi_max - phi_h)(phi_max - 2 phi_h) - l_int^2 lap(phi_d)

    solved by stabilised Picard iteration (see ``_solve_phase_field``). Defaults are the calibrated
    box-unit values in ``CHROMATIN_DEFAULTS`` (l2 = 1.04; a = 1.0, phi_max = 0.7, l_int = 0.03, M = 1).

    Parameters
    ----------
    phi_w : array_like
        Nucleoplasm volume fraction (dimensionless) on a periodic grid (any dimension).
    rate : float or array_like
        lambda = G_me / G_ac (dimensionless), broadcastable to ``phi_w``; must be > -1.
    pixel_size : float
        Grid spacing in the length unit of the coefficients (box units for the defaults).
    model : {"chromatin-balance", "chromatin-phase-field"}
        The chromatin model.
    params : dict, optional
        Overrides: ``{"l2"}`` [length^2] or ``{"a", "phi_max", "l_int" [length], "mobility" [length^2]}``.
        Unknown keys raise ``ValueError``.
    tol : float
        Stop when max |equation residual| <= tol (volume fraction per 1/G_ac).
    max_iter : int
        CG iterations (balance) or Picard iterations (phase field).

    Returns
    -------
    dict
        ``phi_h, phi_e, phi_w, phi_d, rate`` (float64 arrays), ``residual_max`` (float),
        ``iterations`` (int), ``model`` (str), ``params`` (dict actually used).

    Raises
    ------
    ValueError
        On an unknown model or coefficient, or a rate <= -1 (balance model).
    RuntimeError
        If the residual is still above ``tol`` after ``max_iter`` iterations.
    """
    phi_w = np.array(phi_w, dtype=np.float64)
    rate = np.array(np.broadcast_to(np.asarray(rate, dtype=np.float64), phi_w.shape))
    p = _chromatin_params(model, params)
    sp = _Spectral(phi_w.shape, float(pixel_size))
    if model == "chromatin-balance":
        phi_e, res, it = _solve_balance(phi_w, rate, sp, p["l2"], tol, max_iter)
        phi_h = 1.0 - phi_w - phi_e
        phi_d = phi_h - phi_e
    else:
        phi_d, res, it = _solve_phase_field(phi_w, rate, sp, p, tol, max_iter)
        phi_h, phi_e = (1 - phi_w + phi_d) / 2, (1 - phi_w - phi_d) / 2
    if not res <= tol:
        raise RuntimeError(f"{model}: residual {res:.3g} > tol {tol:.3g} after {it} iterations")
    return {"phi_h": phi_h, "phi_e": phi_e, "phi_w": phi_w, "phi_d": phi_d, "rate": rate,
            "residual_max": res, "iterations": it, "model": model, "params": p}


# --------------------------------------------------------------------------- heat and ODE
def heat_steady_state(rate: ArrayLike, source: float | ArrayLike, pixel_size: float = 1.0) -> dict:
    """Solve the steady heat equation 0 = rate lap(u) + m on a periodic grid, i.e. lap(u) = -m / rate.

    Periodicity requires mean(m / rate) = 0; the source is made compatible by
    m <- m - rate * mean(m / rate) (the returned ``m``). ``u`` has zero mean.

    Parameters
    ----------
    rate : array_like
        Diffusivity, > 0 [length^2 per time]; same shape as the grid.
    source : float or array_like
        Source m [u per time], broadcastable to ``rate``.
    pixel_size : float
        Grid spacing [length].

    Returns
    -------
    dict
        ``u``, ``m`` (compatible source), ``rate`` as float64 arrays.

    Raises
    ------
    ValueError
        If the diffusivity is not > 0 everywhere.
    """
    rate = np.array(rate, dtype=np.float64)
    if np.any(rate <= 0):
        raise ValueError("rate (diffusivity) must be > 0 everywhere")
    m = np.broadcast_to(np.asarray(source, dtype=np.float64), rate.shape)
    m = m - rate * np.mean(m / rate)
    sp = _Spectral(rate.shape, float(pixel_size))
    k2 = sp.k2.copy()
    k2.flat[0] = 1.0  # zero mode: u has zero mean
    u_hat = sp.fwd(m / rate) / k2
    u_hat.flat[0] = 0.0
    return {"u": sp.inv(u_hat), "m": m, "rate": rate}


def langevin_series(rate_t: ArrayLike, dt: float, u0: float = 0.0) -> dict:
    """Integrate du/dt = u + rate(t) with rate piecewise linear between samples (exact integrator).

    With h = dt and r_n = rate(t_n)::

        u_{n+1} = e^h u_n + r_n (e^h - 1) + (r_{n+1} - r_n) (e^h - 1 - h) / h

    Parameters
    ----------
    rate_t : array_like, 1-D
        Rate samples at t_n = n dt [u per time].
    dt : float
        Sampling step [time, 1/G_ac].
    u0 : float
        u(0).

    Returns
    -------
    dict
        ``t``, ``u``, ``rate`` (1-D float64 arrays of the same length).
    """
    rate = np.array(rate_t, dtype=np.float64).ravel()
    h = float(dt)
    e1 = np.expm1(h)
    e2 = (e1 - h) / h if h > 1e-4 else h / 2 + h**2 / 6 + h**3 / 24  # (e^h - 1 - h) / h
    u = np.empty_like(rate)
    u[0] = u0
    for n in range(len(rate) - 1):
        u[n + 1] = u[n] + e1 * u[n] + rate[n] * e1 + (rate[n + 1] - rate[n]) * e2
    return {"t": h * np.arange(len(rate)), "u": u, "rate": rate}


# --------------------------------------------------------------------------- synthetic nucleus
def _nucleus_geometry(shape, rng):
    """Signed distance (px, negative inside) to a randomly rotated, wobbly ellipse."""
    ny, nx = shape
    y, x = np.meshgrid(np.arange(ny) - (ny - 1) / 2, np.arange(nx) - (nx - 1) / 2, indexing="ij")
    theta = rng.uniform(0, np.pi)
    xr = x * np.cos(theta) + y * np.sin(theta)
    yr = -x * np.sin(theta) + y * np.cos(theta)
    ax, ay = 0.40 * min(ny, nx), 0.30 * min(ny, nx)
    ang = np.arctan2(yr / ay, xr / ax)
    wobble = 1 + sum(0.03 * rng.standard_normal() * np.cos(j * ang + rng.uniform(0, 2 * np.pi))
                     for j in range(2, 6))
    rho = np.hypot(xr / ax, yr / ay) / wobble
    return (rho - 1) * np.sqrt(ax * ay)


def synthetic_nucleus(shape: tuple[int, int] = (256, 256), pixel_size: float = 0.02, seed: int = 0,
                      noise: float = 0.0, model: str = "chromatin-balance") -> dict:
    """Simulate a nucleus whose chromatin fields are the exact steady state for a known rate map.

    phi_w: an elliptical nucleus (nucleoplasm phi_w = 0.6) with heterochromatin domains ~100 nm
    across (~25 % of its area) and a ~100 nm dense peripheral band (phi_w -> 0.2), and phi_w = 0.7
    outside; edges smoothed over ~1 px. These contrasts (like the reference data's phi_w range
    0.05-0.72) keep phi_h > 0: with phi_w 0.2/0.8/0.9 the smoothed phi_e spills past 1 - phi_w and
    phi_h dips to -0.06. rate: :func:`smooth_random_field` with correlation length 32 px (features
    ~75-100 px across) spanning [0.5, 1.5]. phi_h, phi_e: :func:`chromatin_steady_state` of ``model``
    on the periodic grid, with the calibrated coefficients converted to um using one box unit =
    ``BOX_UNIT_UM`` = 0.15 um (balance: l2 = 1.04 * 0.15^2 = 0.0234 um^2, sqrt(l2) = 0.153 um,
    7.6 px at 20 nm pixels). ``noise`` > 0 adds Gaussian noise of that std (volume fraction) to
    phi_w and phi_d and recomputes phi_h = (1 - phi_w + phi_d)/2, phi_e = (1 - phi_w - phi_d)/2;
    ``rate`` stays the ground truth.

    Parameters
    ----------
    shape : tuple of int
        2-D image shape (pixels).
    pixel_size : float
        um per pixel.
    seed : int
        Seed of the geometry, the rate map and the noise.
    noise : float
        Noise std (volume fraction), 0 for exact fields.
    model : {"chromatin-balance", "chromatin-phase-field"}
        The chromatin model whose steady state the fields are.

    Returns
    -------
    dict
        ``phi_h, phi_e, phi_w, phi_d, rate`` (float64, ``shape``), ``nucleus`` (bool mask),
        ``pixel_size`` (um), ``params`` (coefficients in um units), ``model``, ``residual_max``
        (of the noise-free fields), ``description`` (str).
    """
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, 2**32, size=2)
    dist = _nucleus_geometry(shape, rng)
    inside = 0.5 * (1 - np.tanh(dist / 1.0))
    band_w = 0.1 / pixel_size  # ~100 nm peripheral heterochromatin
    band = np.exp(-(((dist + band_w / 2) / (band_w / 2)) ** 4))
    # domains ~100 nm: top ~22 % of a Gaussian field with correlation length ~ one domain radius
    blobs = smooth_random_field(shape, 0.05 / pixel_size, 0.0, 1.0, seed=seeds[0])
    domains = _ndi.gaussian_filter((blobs > np.quantile(blobs, 0.78)).astype(float), 0.7, mode="wrap")
    dense = np.clip(domains + band, 0, 1) * inside
    phi_w = 0.7 * (1 - inside) + inside * (0.6 - 0.4 * dense)
    rate = smooth_random_field(shape, 32, 0.5, 1.5, seed=seeds[1])

    box2 = BOX_UNIT_UM**2
    p = dict(CHROMATIN_DEFAULTS[model])
    if model == "chromatin-balance":
        p["l2"] *= box2
    else:
        p["l_int"] *= BOX_UNIT_UM
        p["mobility"] *= box2
    st = chromatin_steady_state(phi_w, rate, pixel_size, model, p, tol=1e-10)
    phi_d = st["phi_d"]
    if noise > 0:
        phi_w = phi_w + noise * rng.standard_normal(shape)
        phi_d = phi_d + noise * rng.standard_normal(shape)
    desc = (f"Synthetic nucleus, {shape[0]}x{shape[1]} px at {pixel_size * 1000:g} nm/px, seed {seed}: "
            f"phi_h/phi_e are the exact periodic steady state of the {model} model "
            f"(params in um: {p}) for the known rate map (0.5..1.5, correlation length 32 px); "
            f"Gaussian noise std {noise:g} on phi_w and phi_d.")
    return {"phi_h": (1 - phi_w + phi_d) / 2, "phi_e": (1 - phi_w - phi_d) / 2, "phi_w": phi_w,
            "phi_d": phi_d, "rate": rate, "nucleus": inside > 0.5, "pixel_size": float(pixel_size),
            "params": p, "model": model, "residual_max": st["residual_max"], "description": desc}
