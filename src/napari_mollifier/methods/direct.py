"""The direct method: the model's closed form on mollified data, its propagated uncertainty and the radius rule.

Derivatives at many radii (:class:`DerivativeLadder`)
    In mask mode every derived field is zero-filled outside the mask and Fourier-transformed once; each radius then
    costs one inverse FFT (or a small direct convolution) per derivative, plus the per-pixel kernels of the few
    pixels whose window touches the mask's edge (:mod:`napari_mollifier.masked`).

Propagated uncertainty (:func:`propagate`), docs/science.md "Uncertainty"
    The mollified derivatives are linear in the data, ``d_k(p) = sum_x K_k(p, x) f(p + x)``, and the closed form
    is a smooth function of them, so to first order (delta method)

        delta lambda(p) = sum_f sum_x v_f(p, x) delta f(p + x),   v_f(p, x) = sum_k a_fk(p) K_k(p, x),
        a_fk = sum_n (d lambda / d d_nk) (d g_n / d f)

    (``g_n`` the model's derived fields, ``k`` the derivative keys, ``K_k(p, .)`` the kernel actually used at
    ``p``), and with the noise model of :mod:`napari_mollifier.noise` (covariance ``C_fg rho(x - x')``)

        Var lambda(p) = sum_fg C_fg sum_{x,x'} v_f(p, x) v_g(p, x') rho(x - x').

    Where the window lies inside the mask ``K_k`` is the same at every pixel, so the variance is the quadratic
    form ``sum_fg C_fg a_f(p)^T T a_g(p)`` with the small constant matrix ``T_kl = sum K_k (rho (*) K_l)``;
    at edge pixels the per-pixel kernels are used.

Radius rule (:func:`lepski`)
    On the ladder ``R_k = R_min 1.25^k`` the chosen radius is the largest ``R_k`` whose map stays within
    ``kappa`` standard deviations of the map at every smaller radius: ``median |lambda_k - lambda_j| / sigma_j
    <= kappa`` over the ROI for all ``j < k`` (Lepski's balancing principle; the ladder stops at the first
    rejection, so a rough truth costs few radii). ``"quasi-optimality"`` keeps the previous rule.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..kernels import half_width
from ..masked import (
    FieldSpectrum,
    _chunks,
    _digest,
    apply_masked,
    apply_masked_at,
    correlate,
    edge_kernels,
    mask_operator,
    windows_pay,
)
from ..mollifier import _apply, _make_plan, _pad
from ..noise import NoiseModel

__all__ = ["DerivativeLadder", "propagate", "lepski_accepts", "lepski_changes", "LEPSKI_KAPPA", "LADDER_STEP", "radius_ladder"]

LADDER_STEP = 1.25
LEPSKI_KAPPA = 1.0
_LEPSKI_SAMPLES = 20000


def radius_ladder(model_order: int, extent: int) -> list[float]:
    """Return the radius ladder ``R_min 1.25^k`` from ``R_min = max(order + 1, 3)`` px up to ``extent / 4``.

    Parameters
    ----------
    model_order : int
        Highest derivative order of the model.
    extent : int
        Extent of the ROI, pixels.

    Returns
    -------
    list of float
        The radii, pixels, increasing.
    """
    r_min = float(max(model_order + 1, 3))
    r_max = max(r_min, extent / 4.0)
    ladder = [r_min]
    while ladder[-1] * LADDER_STEP <= r_max:
        ladder.append(round(ladder[-1] * LADDER_STEP, 2))
    return ladder


class DerivativeLadder:
    """Mollified derivatives of a model's derived fields at any radius, sharing the work across radii.

    ``fields``: ``{input: tensor (*S)}`` (NaN allowed outside ``mask``); ``mask``/``where`` as in
    :func:`napari_mollifier.derivatives` (bool arrays) for ``boundary="mask"``, else ``None``.

    Parameters
    ----------
    model : Model
        The PDE model.
    params : dict
        Its coefficients.
    fields : dict
        ``{input: tensor (*S)}``.
    spacing : tuple of float
        Pixel size per axis.
    kernel : str
        Kernel name.
    boundary : str
        Boundary handling of :func:`napari_mollifier.derivatives`.
    mask, where : numpy.ndarray of bool or None
        The mask and the pixels where derivatives are needed (mask mode).
    max_radius : float
        Largest radius that will be asked for, pixels (sizes the cached spectra).
    """

    def __init__(self, model, params: dict, fields: dict, spacing: tuple[float, ...], kernel: str,
                 boundary: str, mask: np.ndarray | None, where: np.ndarray | None, max_radius: float) -> None:
        self.model, self.params, self.spacing, self.kernel, self.boundary = model, params, spacing, kernel, boundary
        self.ndim = len(spacing)
        self.needs = model.needs(self.ndim)
        self.inputs = list(fields)
        first = next(iter(fields.values()))
        self.shape = tuple(first.shape)
        self.device, self.dtype = first.device, first.dtype
        self.mask = None if mask is None else torch.as_tensor(np.asarray(mask, bool), device=self.device)[None, None]
        self.where = None if where is None else torch.as_tensor(np.asarray(where, bool), device=self.device)[None,
                                                                                                             None]
        filled = {k: torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) if self.mask is not None else v
                  for k, v in fields.items()}
        self.raw = filled
        self.variances: dict = {}  # {(radius, noise model): propagated variance}: the edge loop runs once a radius
        self._recent: dict = {}  # the last few radii's derivatives: the radius rule's last rungs are reused
        derived = model.derived(filled, params)
        self.derived = {name: derived[name] for name in self.needs}
        self.spectra: dict = {}  # {derived field: FieldSpectrum}, built when a radius first needs one (spectrum())
        self._max_half = half_width(max_radius)
        self._sample_wheres: dict = {}  # {digest of a pixel sample: its where}: built once for all rungs

    def spectrum(self, name: str, half: int) -> FieldSpectrum | None:
        """Return the FFT of derived field ``name`` (zero-filled outside the mask) for kernels of half-width ``half``.

        The transform is padded for kernels up to ``4 half`` (at most the ladder's largest), not the largest radius
        the ladder could reach: the climb usually stops far below it (at 2048 px the top rung is 508 px, a 2560 px
        transform, where a stop at 35 px needs 2160 px). A larger radius rebuilds it (one forward FFT).

        Parameters
        ----------
        name : str
            A derived field of the model.
        half : int
            Half-width of the kernels, pixels.

        Returns
        -------
        FieldSpectrum or None
            None where a direct correlation is cheaper (:meth:`_fft_pays`) or outside mask mode.
        """
        if self.mask is None or not self._fft_pays(half):
            return None
        spectrum = self.spectra.get(name)
        if spectrum is None or half > spectrum.max_half:
            bound = min(self._max_half, max(4 * half, 32))
            xm = torch.where(self.mask, self.derived[name][None, None], torch.zeros((), dtype=self.dtype,
                                                                                   device=self.device))
            # only around the pixels whose values are read (self.where): apply_masked returns NaN elsewhere
            where = None if self.where is None else self.where[0, 0].cpu().numpy()
            spectrum = self.spectra[name] = FieldSpectrum(xm, max(bound, half), where)
        return spectrum

    def _fft_pays(self, half: int) -> bool:
        if self.dtype == torch.float64:
            return (2 * half + 1) ** self.ndim > 4**self.ndim
        return (2 * half + 1) ** self.ndim > 4.0 * 3 * math.log2(max(math.prod(self.shape), 2))

    def plan(self, radius: float, keys: tuple[str, ...]) -> object:
        """Return the mollifier plan of the derivative ``keys`` at ``radius``.

        Parameters
        ----------
        radius : float
            Kernel radius, pixels.
        keys : tuple of str
            Derivative keys.

        Returns
        -------
        object
            The plan of :func:`napari_mollifier.mollifier._make_plan`.
        """
        return _make_plan(radius, self.spacing, self.kernel, "reflect" if self.mask is not None else self.boundary,
                          tuple(keys), self.ndim, "auto", self.shape)

    def at(self, radius: float, fields: dict | None = None) -> dict:
        """Return the mollified derivatives of the derived fields at ``radius``.

        Parameters
        ----------
        radius : float
            Kernel radius, pixels.
        fields : dict, optional
            Other inputs to use instead of the ladder's (e.g. noise samples).

        Returns
        -------
        dict
            ``{derived field: {key: tensor (*S)}}``.
        """
        if fields is None:
            if radius in self._recent:
                return self._recent[radius]
            derived = self.derived
        else:
            filled = {k: torch.nan_to_num(v) if self.mask is not None else v for k, v in fields.items()}
            derived = self.model.derived(filled, self.params)
        out = {}
        for name, keys in self.needs.items():
            plan = self.plan(radius, keys)
            x = derived[name][None, None]
            if self.mask is None:
                values = _apply(x, plan, None)
            else:
                op = mask_operator(plan, self.mask, self.where)
                spectrum = self.spectrum(name, plan.half) if fields is None else None
                values = apply_masked(x, plan, op, spectrum)
            out[name] = {key: values[0, i] for i, key in enumerate(keys)}
        if fields is None:
            self._recent[radius] = out
            while len(self._recent) > 3:
                self._recent.pop(next(iter(self._recent)))
        return out

    def at_pixels(self, radius: float, pixels: torch.Tensor) -> dict:
        """Return :meth:`at` read at the flat pixel indices ``pixels`` (sorted).

        In mask mode only the edge pixels among ``pixels`` get their own kernels (their moment systems are solved
        and applied), which is what the radius rule needs on a large ROI (a pixel sample per label): the per-pixel
        work of a rung then scales with the sample, not the image.

        Parameters
        ----------
        radius : float
            Kernel radius, pixels.
        pixels : torch.Tensor
            Sorted flat pixel indices ``(n,)``.

        Returns
        -------
        dict
            ``{derived field: {key: tensor (n,)}}``.
        """
        if self.mask is None or radius in self._recent:
            full = self.at(radius)
            return {name: {k: v.reshape(-1)[pixels] for k, v in keys.items()} for name, keys in full.items()}
        where = _sample_where(self, pixels)
        out = {}
        for name, keys in self.needs.items():
            plan = self.plan(radius, keys)
            op = mask_operator(plan, self.mask, where)
            x = self.derived[name][None, None]
            if windows_pay(pixels.numel(), plan, math.prod(self.shape)):
                values = apply_masked_at(x, plan, op, pixels)
            else:
                values = apply_masked(x, plan, op, self.spectrum(name, plan.half))[0].reshape(len(keys), -1)[:, pixels]
            out[name] = {key: values[i] for i, key in enumerate(keys)}
        return out

    def smooth(self, value: torch.Tensor, radius: float, mask: np.ndarray) -> torch.Tensor:
        """Smooth ``value`` by the kernel at ``radius`` (mask-normalised inside ``mask``; NaN outside).

        Parameters
        ----------
        value : torch.Tensor
            A map ``(*S)``.
        radius : float
            Kernel radius, pixels.
        mask : numpy.ndarray of bool
            Pixels to smooth over.

        Returns
        -------
        torch.Tensor
            The smoothed map ``(*S)``.
        """
        plan = self.plan(radius, ("u",))
        m = torch.as_tensor(np.asarray(mask, bool), device=self.device)[None, None]
        x = torch.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)[None, None]
        return apply_masked(x, plan, mask_operator(plan, m, None))[0, 0]

    def key_union(self) -> tuple[str, ...]:
        """Return every derivative key the model needs, of any field, in first-seen order.

        Returns
        -------
        tuple of str
            The keys.
        """
        seen: dict = {}
        for keys in self.needs.values():
            for k in keys:
                seen[k] = None
        return tuple(seen)


def _jacobian(ladder: DerivativeLadder) -> dict:
    """Return ``{(derived, input): dg/df per pixel}`` of the model's pointwise derived fields (1/0 for inputs)."""
    inputs = {k: v.detach().clone().requires_grad_(True) for k, v in ladder.raw.items()}
    derived = ladder.model.derived(inputs, ladder.params)
    jac = {}
    for name in ladder.needs:
        value = derived[name]
        if value is inputs.get(name):
            for f in inputs:
                jac[(name, f)] = 1.0 if f == name else 0.0
            continue
        grads = torch.autograd.grad(value.sum(), list(inputs.values()), allow_unused=True)
        for f, g in zip(inputs, grads, strict=True):
            jac[(name, f)] = 0.0 if g is None else g.detach()
    return jac


def _coefficients(ladder: DerivativeLadder, d: dict, closed_form, jac: dict) -> tuple[torch.Tensor, dict]:
    """Return the rate and ``a[f][key]`` = d rate / d (key-derivative of input f), per pixel."""
    leaves = {(n, k): v.detach().requires_grad_(True) for n, keys in d.items() for k, v in keys.items()}
    dd = {n: {k: leaves[(n, k)] for k in keys} for n, keys in d.items()}
    with torch.enable_grad():
        raw = ladder.model.rate(dd, ladder.params)
        # the closed form is pointwise, so d(sum raw)/d leaf is the per-pixel derivative; a scalar output also
        # keeps torch from importing its symbolic-shape machinery (sympy, ~1 s) on the first call of a process
        grads = torch.autograd.grad(raw.sum(), list(leaves.values()), allow_unused=True)
    rate = closed_form({n: {k: v[None] for k, v in keys.items()} for n, keys in d.items()})[0]
    g = {key: (gr if gr is not None else torch.zeros_like(rate)) for key, gr in zip(leaves, grads, strict=True)}
    a: dict = {f: {} for f in ladder.inputs}
    for (name, key), gv in g.items():
        for f in ladder.inputs:
            j = jac[(name, f)]
            if isinstance(j, float) and j == 0.0:
                continue
            a[f][key] = a[f].get(key, 0) + gv * j
    return rate.detach(), a


def _sample_where(ladder: DerivativeLadder, pixels: torch.Tensor) -> torch.Tensor:
    """Return the ladder's ``where`` restricted to the flat pixel indices ``pixels`` ``(1, 1, *S)``.

    Built once per sample and kept on the ladder (every rung of the radius rule reads the same sample).
    """
    key = (pixels.numel(), _digest(pixels))
    if key not in ladder._sample_wheres:
        where = torch.zeros(math.prod(ladder.shape), dtype=torch.bool, device=ladder.device)
        where[pixels] = True
        where = where.reshape((1, 1) + ladder.shape)
        ladder._sample_wheres = {key: where if ladder.where is None else where & ladder.where}
    return ladder._sample_wheres[key]


def _rho_tensor(noise: NoiseModel, ndim: int, dtype, device) -> torch.Tensor:
    return torch.as_tensor(noise.autocorrelation(ndim), dtype=dtype, device=device)


def _correlate_same(kernels: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """``rho (*) K`` for a stack ``(n, *w)`` of kernels, same size (zero outside), rho centred and symmetric."""
    if rho.numel() == 1:
        return kernels * rho.reshape(())
    h = (rho.shape[0] - 1) // 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[rho.dim() - 1]
    factors = _separable_factors(rho)
    if factors is None:
        return conv(kernels[:, None], rho[None, None], padding=h)[:, 0]
    out = kernels
    for axis, f in enumerate(factors):  # a Gaussian autocorrelation is a product of 1-D ones: one pass per axis
        # the zero-padded 1-D correlation as a product with its banded Toeplitz matrix T_ij = f[j - i + h]
        # (a matrix product is ~10x faster than a float64 convolution on the CPU)
        n = out.shape[1 + axis]
        lag = torch.arange(n, device=out.device)[None, :] - torch.arange(n, device=out.device)[:, None] + h
        inside = (lag >= 0) & (lag <= 2 * h)
        toeplitz = torch.where(inside, f[lag.clamp(0, 2 * h)], torch.zeros((), dtype=f.dtype, device=f.device))
        out = torch.movedim(torch.movedim(out, 1 + axis, -1) @ toeplitz.T, -1, 1 + axis)
    return out


def _separable_factors(rho: torch.Tensor):
    """Return 1-D factors ``f_0, f_1, ...`` with ``rho = f_0 (x) f_1 (x) ...`` (outer product), or None.

    None when ``rho`` is not separable; the white and Gaussian noise models of :mod:`napari_mollifier.noise` are.
    """
    centre = tuple((n - 1) // 2 for n in rho.shape)
    peak = rho[centre]
    if not bool(peak > 0):
        return None
    factors = []
    for axis in range(rho.dim()):
        index = list(centre)
        index[axis] = slice(None)
        factors.append(rho[tuple(index)] / peak ** ((rho.dim() - 1) / rho.dim()))
    outer = factors[0]
    for f in factors[1:]:
        outer = outer[..., None] * f
    scale = float(rho.abs().max())
    return factors if float((outer - rho).abs().max()) <= 1e-9 * scale else None


def _gram(kernels: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """``T_kl = sum_x K_k(x) (rho (*) K_l)(x)`` for kernels ``(n, *w)``."""
    flat = kernels.reshape(kernels.shape[0], -1)
    smooth = _correlate_same(kernels, rho).reshape(kernels.shape[0], -1)
    t = flat @ smooth.T
    return 0.5 * (t + t.T)


def _stack(a: dict, keys: tuple, names: list, like: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """Coefficients ``a[f][key]`` as one ``(n_fields * n_keys, N)`` tensor (zeros where a key is unused)."""
    rows = []
    for f in names:
        for k in keys:
            v = a[f].get(k)
            rows.append(torch.nan_to_num(v).reshape(-1) * sign if torch.is_tensor(v) else like.new_zeros(like.numel()))
    return torch.stack(rows)


def _quadratic(vec: torch.Tensor, cov: np.ndarray, gram: torch.Tensor) -> torch.Tensor:
    """``sum_fg C_fg a_f^T T a_g`` per pixel for stacked coefficients ``vec`` ``(n_fields * n_keys, N)``."""
    big = torch.kron(torch.as_tensor(cov, dtype=vec.dtype, device=vec.device), gram.to(vec.dtype))
    return (vec * (big @ vec)).sum(0)


def propagate(ladder: DerivativeLadder, radius: float, d: dict, closed_form, noise: NoiseModel, region: np.ndarray,
              jac: dict | None = None, pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Compute the rate at ``radius`` and its propagated noise variance (module docstring), NaN outside ``region``.

    The variance does not depend on ``region`` (only its NaN fill does), so it is computed once per radius and
    noise model and kept on the ladder (float32): the radius rule's rungs are reused by the final solve.
    ``pixels``: ``d`` holds the derivatives at these flat pixel indices only (:meth:`DerivativeLadder.at_pixels`);
    ``region`` is then a bool array over them.

    Parameters
    ----------
    ladder : DerivativeLadder
        The derivatives and the model.
    radius : float
        Kernel radius, pixels.
    d : dict
        ``{derived field: {key: tensor}}`` at ``radius`` (:meth:`DerivativeLadder.at`).
    closed_form : callable
        The model's closed form, batched: ``closed_form(d) -> rate``.
    noise : NoiseModel
        Noise of the inputs.
    region : numpy.ndarray of bool
        Pixels that get values.
    jac : dict, optional
        The derived fields' Jacobians (computed when not given).
    pixels : torch.Tensor, optional
        Flat pixel indices that ``d`` holds.

    Returns
    -------
    rate : torch.Tensor
        The rate.
    variance : torch.Tensor
        Its propagated noise variance, NaN outside ``region``.
    a : dict
        The linearisation coefficients (for :func:`change_variance`).
    """
    jac = _jacobian(ladder) if jac is None else jac
    if pixels is not None:  # per-pixel Jacobians of derived fields, read at the sample
        jac = {k: v.reshape(-1)[pixels] if torch.is_tensor(v) else v for k, v in jac.items()}
    rate, a = _coefficients(ladder, d, closed_form, jac)
    key = (float(radius), repr(noise.as_dict()), None if pixels is None else _digest(pixels))
    cached = ladder.variances.get(key)
    if cached is None:
        cached = ladder.variances[key] = _variance(ladder, radius, rate, a, noise, pixels).to(torch.float32)
    var = cached.to(rate.dtype)
    inside = torch.as_tensor(np.asarray(region, bool), device=rate.device)
    var = torch.where(inside & torch.isfinite(rate), var.clamp_min(0), torch.full_like(var, float("nan")))
    return rate, var, a


def _variance(ladder: DerivativeLadder, radius: float, rate: torch.Tensor, a: dict, noise: NoiseModel,
              pixels: torch.Tensor | None = None):
    """Compute the propagated variance at every pixel (interior quadratic form, then the edges' own kernels).

    At the flat indices ``pixels`` only when ``rate`` and ``a`` hold those pixels only.
    """
    keys = ladder.key_union()
    names = ladder.inputs
    cov = noise.covariance(names)
    plan = ladder.plan(radius, keys)
    dtype, device = rate.dtype, rate.device
    rho = _rho_tensor(noise, ladder.ndim, dtype, device)
    kernels = plan.key_kernels(dtype, device)
    var = _quadratic(_stack(a, keys, names, rate), cov, _gram(kernels, rho)).reshape(rate.shape)
    if ladder.mask is not None:
        where = ladder.where if pixels is None else _sample_where(ladder, pixels)
        op = mask_operator(plan, ladder.mask, where)
        comb = plan.key_combination(dtype, device)  # (n_keys, n_alpha)
        pos, _ = op.edges[0]
        flat_var = var.reshape(-1)
        w = 2 * plan.half + 1
        # rows per chunk bounded by memory: kern is (c, n_alpha, P) and each field's v is (c, P), with P = w^d
        # (a 4096-row chunk at R = 128 px would need ~13 GB)
        per_row = (len(plan.alphas) + len(keys) + 2 * len(names) + 2) * w**ladder.ndim
        for rows in _chunks(pos.numel(), per_row):
            p, kern = edge_kernels(plan, op, 0, rows, dtype)  # (c, n_alpha, P)
            if pixels is not None:
                p = torch.searchsorted(pixels.contiguous(), p)  # image positions -> positions in the sample
            key_k = torch.einsum("ka,cap->ckp", comb, kern)
            v = {}
            for f in names:
                acc = torch.zeros(p.numel(), key_k.shape[2], dtype=dtype, device=device)
                for ki, key in enumerate(keys):
                    coef = a[f].get(key)
                    if torch.is_tensor(coef):
                        acc = acc + coef.reshape(-1)[p][:, None] * key_k[:, ki]
                v[f] = acc
            total = torch.zeros(p.numel(), dtype=dtype, device=device)
            for i, f in enumerate(names):
                smooth_f = _correlate_same(v[f].reshape((-1,) + (w,) * ladder.ndim), rho).reshape(p.numel(), -1)
                for j, g in enumerate(names):
                    if cov[i, j] != 0.0:
                        total = total + float(cov[i, j]) * (v[g] * smooth_f).sum(1)
            flat_var[p] = total
    return var


def change_variance(ladder: DerivativeLadder, radius: float, small: float, a_big: dict, a_small: dict,
                    noise: NoiseModel, like: torch.Tensor) -> torch.Tensor:
    """Compute the noise variance of ``S_R (lambda_R - lambda_r)`` (``S_R``: smoothing at ``R``).

    With the interior kernels ``S_R (*) K_k^R`` and ``S_R (*) K_k^r`` and the coefficients taken at the output
    pixel (they vary slowly). Within ``R`` of a mask edge the re-solved kernels are noisier than this says, so the
    bias term there is conservative (measured: up to 2x the bootstrap's uncertainty in that band, docs/science.md).

    Parameters
    ----------
    ladder : DerivativeLadder
        The derivatives and the model.
    radius, small : float
        The radii ``R`` and ``r``, pixels.
    a_big, a_small : dict
        Linearisation coefficients at ``R`` and ``r`` (from :func:`propagate`).
    noise : NoiseModel
        Noise of the inputs.
    like : torch.Tensor
        A map whose shape, dtype and device the result takes.

    Returns
    -------
    torch.Tensor
        The variance per pixel, ``>= 0``.
    """
    keys = ladder.key_union()
    dtype, device = like.dtype, like.device
    big = ladder.plan(radius, keys).key_kernels(dtype, device)
    sm = ladder.plan(small, keys).key_kernels(dtype, device)
    smoother = ladder.plan(radius, ("u",)).key_kernels(dtype, device)[0]
    hb, hs = (big.shape[1] - 1) // 2, (sm.shape[1] - 1) // 2
    sm = _pad(sm[:, None], hb - hs, "zeros")[:, 0] if hb > hs else sm
    hsm = (smoother.shape[0] - 1) // 2
    stack = torch.cat([big, sm])
    composed = correlate(_pad(stack[:, None], 2 * hsm, "zeros"), smoother[None], "fft")[:, 0]  # correlation
    rho = _rho_tensor(noise, ladder.ndim, dtype, device)
    gram = _gram(composed, rho)
    names = ladder.inputs
    cov = noise.covariance(names)
    n = len(keys)
    vec = torch.cat([_stack(a_big, keys, names, like), _stack(a_small, keys, names, like, -1.0)])
    # reorder to field-major blocks [big keys, small keys] per field, matching kron(cov, gram)
    order = [i * n + k for i in range(len(names)) for k in range(n)]
    idx = [j for i in range(len(names)) for j in (order[i * n:(i + 1) * n]
                                                  + [len(names) * n + o for o in order[i * n:(i + 1) * n]])]
    var = _quadratic(vec[idx], cov, gram).reshape(like.shape)
    return var.clamp_min(0)


def lepski_changes(rate_k: np.ndarray, history: list, owner: np.ndarray | None = None,
                   starts: np.ndarray | None = None) -> np.ndarray:
    """Return Lepski's statistic per label: ``max_j median |lambda_k - lambda_j| / sigma_j``.

    The median runs over the pixels of each label (non-finite values left out; a label without finite values
    scores 0); ``sigma_j = 0`` scores 0 where the maps agree and infinity where they differ.

    Parameters
    ----------
    rate_k : numpy.ndarray
        ``(P,)`` the map at the next radius at the pixels read.
    history : list
        ``(rate_j, sigma_j)`` of the smaller radii at the same pixels.
    owner : numpy.ndarray, optional
        ``(P,)`` sorted label index of each pixel (default: all pixels belong to one label).
    starts : numpy.ndarray, optional
        First position of each label in ``owner`` (``searchsorted(owner, arange(n_labels))``).

    Returns
    -------
    numpy.ndarray
        ``(n_labels,)`` the largest median over the smaller radii, standard deviations.
    """
    if owner is None:
        owner, starts = np.zeros(rate_k.size, np.int64), np.zeros(1, np.int64)
    worst = np.zeros(starts.size)
    for rate_j, sd_j in history:
        diff = np.abs(rate_k - rate_j)
        ok = np.isfinite(diff) & np.isfinite(sd_j)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(sd_j > 0, diff / np.where(sd_j > 0, sd_j, 1.0), np.where(diff > 0, np.inf, 0.0))
        worst = np.maximum(worst, _label_medians(np.where(ok, z, np.nan), owner, starts))
    return worst


def _label_medians(z: np.ndarray, owner: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-label medians of ``z`` (NaN ignored, +inf counted; 0 for a label without values); ``owner`` sorted."""
    n = starts.size
    if n == 1:  # one label (the common case): a selection, not a sort
        finite = z[~np.isnan(z)]
        return np.array([float(np.median(finite)) if finite.size else 0.0])
    keyed = np.lexsort((z, owner))  # by label, then value; numpy sorts NaN last within each label
    values = z[keyed]
    count = np.add.reduceat((~np.isnan(values)).astype(np.int64), starts) if values.size else np.zeros(n, int)
    last = max(values.size - 1, 0)
    lo = np.minimum(starts + np.maximum(count - 1, 0) // 2, last)
    hi = np.minimum(starts + count // 2, last)
    med = 0.5 * (values[lo] + values[hi]) if values.size else np.zeros(n)
    return np.where(count > 0, med, 0.0)


def lepski_accepts(rate_k: np.ndarray, history: list, kappa: float = LEPSKI_KAPPA) -> tuple[bool, float]:
    """Test whether the map at the next radius stays within ``kappa`` s.d. of every smaller radius's map.

    The test is ``median |lambda_k - lambda_j| / sigma_j <= kappa`` over the ROI for every ``j``
    (:func:`lepski_changes` for one label, on a regular subsample of about ``_LEPSKI_SAMPLES`` pixels).

    Parameters
    ----------
    rate_k : numpy.ndarray
        The map at the next radius.
    history : list
        ``(rate_j, sigma_j)`` of the smaller radii.
    kappa : float
        The threshold, standard deviations.

    Returns
    -------
    accepted : bool
        Whether the radius is accepted.
    worst : float
        The largest of the medians.
    """
    stride = max(1, rate_k.size // _LEPSKI_SAMPLES)  # the median of a regular subsample is as good and cheaper
    worst = float(lepski_changes(rate_k[::stride], [(r[::stride], s[::stride]) for r, s in history])[0])
    return worst <= kappa, worst
