"""Mollified derivatives: ``d^alpha u = g (*) K_alpha`` by one convolution per requested derivative.

``derivatives`` (numpy or torch in, the same type out) and the ``Mollifier`` module share one engine:

* kernels come from :mod:`napari_mollifier.kernels` (moment-corrected, correlation form, pixel units) and are
  divided by ``prod(h_i ** alpha_i)`` so that results are in the image's physical units;
* the field is padded by the kernel half-width with the chosen boundary mode and correlated with all kernels at
  once, directly (``conv{1,2,3}d``) for small kernels or by FFT for large ones;
* in mask mode the convolution sees only pixels inside the mask (normalised convolution), and near the mask's
  edge the moment correction is solved again pixel by pixel, so derivatives of polynomials of degree
  ``<= order + 1`` stay exact up to an irregular edge. Outside the mask the output is NaN.

Everything is differentiable with respect to the field (gradients flow through convolutions and FFTs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import MollifierInputError, renamed_keyword
from .kernels import MAX_ORDER, corrected_kernel, half_width, parse_kernel
from .masked import FieldSpectrum, apply_masked, mask_operator, separable_correlate, use_separable
from .masked import correlate as _correlate
from .masked import use_fft as _use_fft  # noqa: F401  (benchmarks/bench_derivatives.py reads the rule)
from .separable import gemm_eligible, separable_stack_2d

__all__ = ["derivatives", "Mollifier", "default_keys", "key_terms", "BOUNDARIES", "AXIS_LETTERS"]

BOUNDARIES = ("reflect", "replicate", "periodic", "zeros")
AXIS_LETTERS = {1: "x", 2: "yx", 3: "zyx"}
_PAD_MODE = {"reflect": "reflect", "replicate": "replicate", "periodic": "circular", "zeros": "constant"}


def default_keys(ndim: int) -> tuple[str, ...]:
    """Return the keys returned when ``which`` is not given.

    They are the smoothed field, all first and second derivatives, the Laplacian and the bi-Laplacian.
    """
    letters = AXIS_LETTERS[ndim]
    first = tuple(reversed(letters))  # x, y, z
    second = tuple(a + a for a in first) + tuple(
        "".join(sorted(a + b, key=letters[::-1].index)) for i, a in enumerate(first) for b in first[i + 1 :]
    )
    return ("u",) + first + second + ("lap", "biharm")


def key_terms(key: str, ndim: int) -> list[tuple[tuple[int, ...], float]]:
    """Expand a derivative key as a sum of ``(alpha, coefficient)`` pure/mixed partial derivatives.

    ``"u"`` -> the smoothed field; a string of axis letters (``"x"``, ``"xy"``, ``"xxyy"``, ``"zzz"``...) -> that
    partial derivative; ``"lap"`` = ``sum_i d_ii``; ``"biharm"`` = ``lap(lap)`` = ``sum_i d_iiii + 2 sum_{i<j} d_iijj``.
    ``alpha`` is in array-axis order (``(a_y, a_x)`` in 2-D).
    """
    letters = AXIS_LETTERS[ndim]
    unit = [tuple(int(j == i) for j in range(ndim)) for i in range(ndim)]
    if key == "u":
        return [((0,) * ndim, 1.0)]
    if key == "lap":
        return [(tuple(2 * v for v in e), 1.0) for e in unit]
    if key == "biharm":
        terms = [(tuple(4 * v for v in e), 1.0) for e in unit]
        terms += [
            (tuple(2 * (a + b) for a, b in zip(unit[i], unit[j], strict=True)), 2.0)
            for i in range(ndim)
            for j in range(i + 1, ndim)
        ]
        return terms
    if not key or any(c not in letters for c in key):
        raise MollifierInputError(
            f"unknown derivative key {key!r} for {ndim}-D data: use 'u', 'lap', 'biharm' or letters from {letters!r}"
        )
    if len(key) > MAX_ORDER:
        raise MollifierInputError(f"derivative {key!r} has order {len(key)}; the maximum is {MAX_ORDER}")
    return [(tuple(key.count(c) for c in letters), 1.0)]


@dataclass(frozen=True)
class _Plan:
    """Everything about a derivative request that does not depend on the data."""

    ndim: int
    radius: float
    spacing: tuple[float, ...]
    kernel: str
    boundary: str
    keys: tuple[str, ...]
    method: str

    @property
    def half(self) -> int:
        return half_width(self.radius)

    @property
    def alphas(self) -> list[tuple[int, ...]]:
        seen: dict = {}
        for key in self.keys:
            for alpha, _ in key_terms(key, self.ndim):
                seen[alpha] = None
        return list(seen)

    @property
    def order(self) -> int:
        return max(sum(a) for a in self.alphas)

    def weight(self, alpha: tuple[int, ...]) -> float:
        """``1 / prod(h_i ** alpha_i)``: pixel-unit derivatives to physical units."""
        return 1.0 / math.prod(h**a for h, a in zip(self.spacing, alpha, strict=True))

    def key_combination(self, dtype, device) -> torch.Tensor:
        """Matrix ``(n_keys, n_alphas)`` mapping per-alpha pixel-unit outputs to physical-unit keys."""
        alphas = self.alphas
        comb = torch.zeros(len(self.keys), len(alphas), dtype=dtype, device=device)
        for i, key in enumerate(self.keys):
            for alpha, coef in key_terms(key, self.ndim):
                comb[i, alphas.index(alpha)] += coef * self.weight(alpha)
        return comb

    def key_kernels(self, dtype, device) -> torch.Tensor:
        """Physical-unit correlation kernels, one per key: ``(n_keys, *window)``."""
        stack = np.stack([corrected_kernel(self.kernel, self.radius, a) for a in self.alphas])
        comb = self.key_combination(torch.float64, "cpu").numpy()
        return torch.as_tensor(np.tensordot(comb, stack, axes=1), dtype=dtype, device=device)


def _make_plan(radius, pixel_size, kernel, boundary, which, ndim, method, spatial_shape) -> _Plan:
    parse_kernel(kernel)
    if boundary not in BOUNDARIES:
        raise MollifierInputError(f"unknown boundary {boundary!r}: use one of {BOUNDARIES} (or pass a mask)")
    if method not in ("auto", "direct", "fft"):
        raise MollifierInputError(f"unknown method {method!r}: use 'auto', 'direct' or 'fft'")
    spacing_t = _spacing(pixel_size, ndim)
    keys = tuple(default_keys(ndim) if which is None else ((which,) if isinstance(which, str) else tuple(which)))
    if not keys:
        raise MollifierInputError("`which` is empty: ask for at least one derivative key, e.g. which=('lap',)")
    for key in keys:
        key_terms(key, ndim)
    try:
        radius = float(radius)
    except (TypeError, ValueError):
        raise MollifierInputError(f"radius must be a number of pixels, got {radius!r}") from None
    plan = _Plan(ndim, radius, spacing_t, kernel, boundary, keys, method)
    if not math.isfinite(radius) or radius < plan.order + 1:
        raise MollifierInputError(
            f"radius {radius} px is too small for derivatives of order {plan.order} "
            f"(keys {keys}): use radius >= {plan.order + 1} px"
        )
    if any(radius > n for n in spatial_shape):
        raise MollifierInputError(
            f"radius {radius} px is larger than the image ({tuple(spatial_shape)} px): use a smaller radius"
        )
    return plan


def _spacing(pixel_size, ndim: int) -> tuple[float, ...]:
    values = np.atleast_1d(np.asarray(pixel_size, dtype=np.float64))
    if values.ndim != 1 or values.size not in (1, ndim):
        raise MollifierInputError(
            f"pixel_size must be one number or {ndim} numbers (one per axis), got {pixel_size!r}"
        )
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise MollifierInputError(f"pixel_size must be positive and finite, got {pixel_size!r}")
    return tuple(float(v) for v in np.broadcast_to(values, (ndim,)))


def _infer_ndim(field_ndim: int, pixel_size, mask, ndim) -> int:
    if ndim is None:
        if mask is not None:
            ndim = np.ndim(mask) if not isinstance(mask, torch.Tensor) else mask.dim()
        elif np.ndim(pixel_size) == 1 and len(pixel_size) > 1:
            ndim = len(pixel_size)
        else:
            ndim = min(field_ndim, 2)
    if ndim not in (1, 2, 3):
        raise MollifierInputError(f"only 1-D, 2-D and 3-D fields are supported, got ndim={ndim}")
    if field_ndim < ndim:
        raise MollifierInputError(
            f"field has {field_ndim} dimension(s) but {ndim}-D derivatives were asked for: "
            f"pass an array shaped (..., {', '.join(AXIS_LETTERS[ndim])})"
        )
    return ndim


def _pad(x: torch.Tensor, half: int, boundary: str) -> torch.Tensor:
    pads = [half] * (2 * (x.dim() - 2))
    if half == 0:
        return x
    return F.pad(x, pads, mode=_PAD_MODE[boundary])


def _apply(x: torch.Tensor, plan: _Plan, mask: torch.Tensor | None, where: torch.Tensor | None = None,
           spectrum: FieldSpectrum | None = None) -> torch.Tensor:
    """Core: ``x`` ``(B, 1, *S)`` floating -> ``(B, n_keys, *S)`` in physical units (mask mode: :mod:`.masked`)."""
    if mask is None:
        padded = _pad(x, plan.half, plan.boundary)
        products = gemm_eligible(padded)
        if use_separable(plan.kernel, plan.method, plan.half, x.dtype, products):
            if products:  # keys straight from the matrix products (no einsum)
                comb = plan.key_combination(torch.float64, "cpu").numpy()
                return separable_stack_2d(padded, plan.kernel, plan.radius, plan.alphas, comb)
            per_alpha = separable_correlate(padded, plan.kernel, plan.radius, plan.alphas)
            return torch.einsum("ka,na...->nk...", plan.key_combination(x.dtype, x.device), per_alpha)
        weight = plan.key_kernels(x.dtype, x.device)
        return _correlate(padded, weight, plan.method)
    return apply_masked(x, plan, mask_operator(plan, mask, where), spectrum)


def _as_float_tensor(field):
    """``(tensor, was_numpy, numpy_dtype)``; integer and bool inputs become floating point."""
    if isinstance(field, torch.Tensor):
        t = field
        if not (t.is_floating_point()):
            if t.is_complex():
                raise MollifierInputError("complex fields are not supported: pass the real part or the magnitude")
            t = t.to(torch.get_default_dtype())
        elif t.dtype in (torch.float16, torch.bfloat16):
            t = t.to(torch.float32)
        return t, False
    array = np.asarray(field)
    if array.dtype == object or np.iscomplexobj(array):
        raise MollifierInputError(f"field must be a real numeric array, got dtype {array.dtype}")
    if array.dtype.kind in "biu" or array.dtype == np.float16:
        array = array.astype(np.float64 if array.dtype.kind in "biu" else np.float32)
    if array.dtype.kind != "f":
        raise MollifierInputError(f"field must be a real numeric array, got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array)), True


def _mask_tensor(mask, spatial_shape, batch_shape, device) -> torch.Tensor:
    m = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(mask)))
    if m.dtype != torch.bool:
        if m.is_floating_point() and not bool(torch.all((m == 0) | (m == 1))):
            raise MollifierInputError("mask must be boolean (or 0/1): use roi > 0 for a label image")
        m = m != 0
    m = m.to(device)
    nd = len(spatial_shape)
    if tuple(m.shape) == tuple(spatial_shape):
        m = m.reshape((1, 1) + tuple(spatial_shape))
    elif tuple(m.shape) == tuple(batch_shape) + tuple(spatial_shape):
        m = m.reshape((-1, 1) + tuple(spatial_shape))
    else:
        raise MollifierInputError(
            f"mask shape {tuple(m.shape)} matches neither the image {tuple(spatial_shape)} "
            f"nor the whole field {tuple(batch_shape) + tuple(spatial_shape)} ({nd}-D derivatives)"
        )
    empty = ~m.reshape(m.shape[0], -1).any(dim=1)
    if bool(empty.any()):
        raise MollifierInputError("mask is empty (no pixel inside): draw an ROI that covers part of the image")
    return m


def _check_finite(x: torch.Tensor, mask: torch.Tensor | None) -> None:
    if mask is None and bool(torch.isfinite(x.sum())):  # NaN/inf propagate through a sum: one cheap reduction
        return
    bad = ~torch.isfinite(x)
    if mask is not None:
        bad = bad & mask
    if bool(bad.any()):
        where = "inside the mask " if mask is not None else ""
        raise MollifierInputError(
            f"field has {int(bad.sum())} NaN/inf pixel(s) {where}: fill or mask them "
            "(pass mask=... so that only finite pixels are used)"
        )


def derivatives(
    field,
    radius: float,
    pixel_size=1.0,
    kernel: str = "poly",
    boundary: str = "reflect",
    mask=None,
    which=None,
    *,
    ndim: int | None = None,
    method: str = "auto",
    where=None,
    spacing=None,
) -> dict:
    """Mollified field and derivatives, ``d^alpha u = g (*) d^alpha eta``, in the image's physical units.

    Parameters
    ----------
    field : numpy.ndarray or torch.Tensor
        Shape ``(..., y, x)`` (2-D), ``(..., z, y, x)`` (3-D) or ``(..., x)`` (1-D); leading axes are a batch.
        Integer and bool arrays are converted to floating point.
    radius : float
        Kernel support radius in pixels, at least ``order + 1`` and at most the image size.
    pixel_size : float or sequence of float
        Physical pixel size, one number or one per axis (``(dz, dy, dx)``), in the length unit the derivatives
        are wanted in (um for a calibrated image); a k-th derivative is divided by ``h^k``.
    kernel : str
        ``"poly"`` (``(1 - r^2)^8``), ``"poly<k>"`` or ``"bump"`` (``exp(-1 / (1 - r^2))``).
    boundary : str
        Padding outside the image: ``"reflect"``, ``"replicate"``, ``"periodic"`` or ``"zeros"``. Ignored with a
        ``mask``, which treats everything outside the mask (and the image) as missing.
    mask : array of bool, optional
        ROI or nucleus, shaped like the image (or the whole field). Only pixels inside it are used; the output
        is NaN outside it. Field values outside the mask may be NaN.
    which : sequence of str, optional
        Keys: ``"u"``, axis-letter derivatives (``"x"``, ``"yy"``, ``"xy"``, ``"xxyy"``...), ``"lap"``,
        ``"biharm"``. Default: ``u``, first and second derivatives, ``lap``, ``biharm``.
    ndim : int, optional
        Number of spatial axes; by default ``len(pixel_size)`` when a sequence is given, else the mask's ndim,
        else 2 (1 for 1-D input).
    method : str
        ``"auto"`` (direct convolution for small kernels, FFT for large), ``"direct"`` or ``"fft"``.
    where : array of bool, optional
        With a ``mask``: pixels where the output is wanted (NaN elsewhere). Saves the per-pixel moment solves near
        mask edges that lie outside it (e.g. the image border when only an ROI inside it is reported).
    spacing : float or sequence of float, optional
        Deprecated name of ``pixel_size`` (a ``FutureWarning``).

    Returns
    -------
    dict
        ``{key: array}`` of the same type (numpy or torch), dtype and shape as the (floating) input.

    Examples
    --------
    >>> import numpy as np
    >>> y, x = np.mgrid[0:64, 0:64] * 0.5           # pixel size 0.5
    >>> d = derivatives(x**2 + 3 * x * y, radius=6, pixel_size=0.5, which=("xx", "xy", "lap"))
    >>> [round(float(d[k][32, 32]), 9) for k in ("xx", "xy", "lap")]
    [2.0, 3.0, 2.0]
    """
    pixel_size = renamed_keyword("pixel_size", pixel_size, "spacing", spacing, default=1.0)
    tensor, was_numpy = _as_float_tensor(field)
    nd = _infer_ndim(tensor.dim(), pixel_size, mask, ndim)
    spatial = tuple(tensor.shape[-nd:])
    batch = tuple(tensor.shape[:-nd])
    plan = _make_plan(radius, pixel_size, kernel, boundary, which, nd, method, spatial)
    m = None if mask is None else _mask_tensor(mask, spatial, batch, tensor.device)
    x = tensor.reshape((-1, 1) + spatial)
    _check_finite(x, m)
    if where is not None:
        if m is None:
            raise MollifierInputError("`where` needs a `mask` (it limits the mask-mode output)")
        w = torch.as_tensor(np.asarray(where, dtype=bool), device=tensor.device)
        if tuple(w.shape) != spatial:
            raise MollifierInputError(f"`where` shape {tuple(w.shape)} does not match the image {spatial}")
        out = _apply(x, plan, m, w.reshape((1, 1) + spatial))
    else:
        out = _apply(x, plan, m)
    result = {key: out[:, i].reshape(batch + spatial) for i, key in enumerate(plan.keys)}
    if was_numpy:
        return {k: v.detach().cpu().numpy() for k, v in result.items()}
    return result


class Mollifier(torch.nn.Module):
    """Mollifier layer: ``(batch, channel, *spatial)`` tensor -> dict of derivative tensors of the same shape.

    The kernels are fixed (built once, registered as a buffer so ``.to(device)`` moves them); gradients flow to
    the input, so a base network can be trained through the layer. Arguments as in :func:`derivatives`
    (``pixel_size``: the physical pixel size, one number or one per axis; ``spacing`` is its deprecated name).

    Examples
    --------
    >>> layer = Mollifier(radius=5, which=("u", "lap"))
    >>> out = layer(torch.zeros(2, 3, 32, 32))
    >>> tuple(out["lap"].shape)
    (2, 3, 32, 32)
    """

    def __init__(self, radius: float, pixel_size=1.0, kernel: str = "poly", boundary: str = "reflect", which=None,
                 ndim: int = 2, method: str = "auto", *, spacing=None):
        super().__init__()
        pixel_size = renamed_keyword("pixel_size", pixel_size, "spacing", spacing, default=1.0)
        spatial = (int(math.ceil(float(radius))),) * ndim  # placeholder shape: the real check is in forward
        self.plan = _make_plan(radius, pixel_size, kernel, boundary, which, ndim, method, spatial)
        # float64 master copy, cast to the input's dtype in forward (module.to(float32) must not lose precision
        # for a later float64 input)
        self.register_buffer("weight", self.plan.key_kernels(torch.float64, "cpu"), persistent=False)

    def _apply(self, fn, recurse=True):
        weight = self.weight
        super()._apply(fn, recurse)
        self.weight = weight.to(device=self.weight.device)  # keep float64 whatever dtype cast was applied
        return self

    @property
    def keys(self) -> tuple[str, ...]:
        """The derivative keys this layer returns, in order."""
        return self.plan.keys

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
        """Apply the layer: ``(batch, channel, *spatial)`` tensor -> dict of derivative tensors of the same shape.

        Parameters
        ----------
        x : torch.Tensor
            The input, ``(batch, channel, *spatial)``.
        mask : torch.Tensor, optional
            ROI or nucleus (bool), shaped ``spatial`` or like ``x``: only pixels inside it are used and the output
            is NaN outside it (as ``mask`` in :func:`derivatives`).

        Returns
        -------
        dict of str -> torch.Tensor
            One tensor per key of :attr:`keys`, shaped like ``x``.
        """
        nd = self.plan.ndim
        if x.dim() != nd + 2:
            raise MollifierInputError(
                f"Mollifier expects (batch, channel, {', '.join(AXIS_LETTERS[nd])}) with {nd + 2} dimensions, "
                f"got shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        if any(self.plan.radius > n for n in spatial):
            raise MollifierInputError(f"radius {self.plan.radius} px is larger than the input {spatial}")
        flat = x.reshape((-1, 1) + spatial)
        products = gemm_eligible(flat)
        if mask is None and not use_separable(self.plan.kernel, self.plan.method, self.plan.half, flat.dtype,
                                              products):
            weight = self.weight.to(dtype=flat.dtype, device=flat.device)
            out = _correlate(_pad(flat, self.plan.half, self.plan.boundary), weight, self.plan.method)
        elif mask is None:
            out = _apply(flat, self.plan, None)
        else:
            m = _mask_tensor(mask, spatial, tuple(x.shape[:2]), x.device)
            out = _apply(flat, self.plan, m)
        out = out.reshape(tuple(x.shape[:2]) + (len(self.plan.keys),) + spatial)
        return {key: out[:, :, i] for i, key in enumerate(self.plan.keys)}
