"""Mask mode: normalised convolution with per-pixel moment re-correction near the mask's edge.

For each pure derivative ``alpha`` (order n, D = n + 1) the kernel at pixel p is

    k_alpha(p, x) = m(p + x) [A_alpha(x) + eta(x) sum_{|b|<=D} c_b(p) (x/R)^b]

where ``A_alpha`` is the sampled analytic kernel, ``m`` the mask and ``c(p)`` solves the local moment system
``G(p) c = t_alpha - a_alpha(p)`` with ``G_gb(p) = sum_x m(p+x) eta(x) (x/R)^(g+b)`` and
``a_g(p) = sum_x m(p+x) A_alpha(x) (x/R)^g`` (docs/science.md, "Derivatives near edges").

Where the whole window lies inside the mask (``interior``: the distance to the nearest pixel outside the mask or
the image is at least R) this is the fixed moment-corrected kernel, so interior pixels cost one ordinary
correlation per derivative. Only the ``edge`` pixels (inside the mask, window touching its outside) get their own
kernels: their coefficients are solved once per mask and radius and cached, and their outputs are computed from
the pixel's window (``E x P`` products, ``P`` the window size) or, when there are many edge pixels, from full-image
correlations with the ``eta (x/R)^b`` basis -- whichever costs less. Pixels whose local ``G`` is singular (too few
mask pixels around them) are not valid (NaN), like pixels outside the mask.
"""

from __future__ import annotations

import hashlib
import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.fft import next_fast_len

from .kernels import (
    analytic_kernel,
    corrected_kernel,
    correction_coefficients,
    moment_targets,
    monomials,
    multi_indices,
)
from .separable import gemm_eligible, separable_stack_2d

__all__ = [
    "MaskOperator", "mask_operator", "apply_masked", "apply_masked_at", "FieldSpectrum", "edge_kernels", "correlate",
]

_RCOND = 1e-12  # smallest eigenvalue ratio of a local moment matrix accepted
_CHUNK_ELEMENTS = 2**23  # window values per chunk of edge pixels (64 MiB in float64)
_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 24
_CACHE_BYTES = 512 * 2**20


# --- correlation engines ------------------------------------------------------------------------------------------

def _conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Valid-mode correlation of ``x`` ``(B, 1, *P)`` with ``weight`` ``(K, *k)`` -> ``(B, K, *(P - k + 1))``."""
    conv = (F.conv1d, F.conv2d, F.conv3d)[weight.dim() - 2]
    return conv(x, weight.unsqueeze(1))


_SPECTRUM_CACHE: OrderedDict = OrderedDict()
_SPECTRUM_CACHE_BYTES = 256 * 2**20


_DIGESTS: dict = {}  # {id(tensor): (its version, sha1)}, an entry dropped when its tensor is freed


def _digest(t: torch.Tensor) -> str:
    """Return the SHA-1 of the tensor's bytes, remembered per tensor until it is changed in place or freed."""
    seen = _DIGESTS.get(id(t))
    if seen is not None and seen[0] == t._version:
        return seen[1]
    digest = hashlib.sha1(t.detach().cpu().numpy().tobytes()).hexdigest()
    if seen is None:
        weakref.finalize(t, _DIGESTS.pop, id(t), None)
    _DIGESTS[id(t)] = (t._version, digest)
    return digest


def _cached_spectrum(key, make):
    if key in _SPECTRUM_CACHE:
        _SPECTRUM_CACHE.move_to_end(key)
        return _SPECTRUM_CACHE[key]
    spectrum = make()
    _SPECTRUM_CACHE[key] = spectrum
    while len(_SPECTRUM_CACHE) > 1 and sum(
        v.numel() * v.element_size() for v in _SPECTRUM_CACHE.values()
    ) > _SPECTRUM_CACHE_BYTES:
        _SPECTRUM_CACHE.popitem(last=False)
    return spectrum


def _kernel_spectrum(weight: torch.Tensor, size: tuple) -> torch.Tensor:
    """``conj(rfftn(weight, size))`` (kernel in the corner), cached for fixed kernels."""
    d = weight.dim() - 1
    dims = tuple(range(-d, 0))
    if weight.requires_grad:
        return torch.fft.rfftn(weight, s=size, dim=dims).conj()
    key = ("corner", tuple(weight.shape), size, weight.dtype, str(weight.device), _digest(weight))
    return _cached_spectrum(key, lambda: torch.fft.rfftn(weight, s=size, dim=dims).conj())


def _fft_correlate(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Compute :func:`_conv` by ``irfft(rfft(x) * conj(rfft(weight)))`` (circular, cropped to the valid part)."""
    d = weight.dim() - 1
    dims = tuple(range(-d, 0))
    shape = tuple(x.shape[-d:])
    size = tuple(next_fast_len(n, real=True) for n in shape)  # zero-padding past n keeps the valid part exact
    spec_x = torch.fft.rfftn(x, s=size, dim=dims)
    out = torch.fft.irfftn(spec_x * _kernel_spectrum(weight, size).unsqueeze(0), s=size, dim=dims)
    valid = tuple(slice(0, n - k + 1) for n, k in zip(shape, weight.shape[1:], strict=True))
    return out[(Ellipsis,) + valid]


def use_fft(method: str, weight: torch.Tensor, padded_shape: tuple[int, ...]) -> bool:
    """Choose the FFT over direct correlation: for ``"auto"``, when ``taps > 4 min(K, 8) log2(N)``.

    The rule is fitted on CPU timings for K <= 8 kernels (benchmarks/RESULTS.md, crossover table), where direct
    cost grows far less than linearly with K; float64 uses the FFT from ``4^d`` taps.

    Parameters
    ----------
    method : {"auto", "fft", "direct"}
        The requested method.
    weight : torch.Tensor
        ``(K, *window)`` kernels.
    padded_shape : tuple of int
        Shape of the padded field, ``N = prod(padded_shape)``.

    Returns
    -------
    bool
        True for the FFT.
    """
    if method != "auto":
        return method == "fft"
    taps = math.prod(weight.shape[1:])
    if weight.dtype == torch.float64:  # no vectorised direct float64 convolution on the CPU: FFT from 4^d taps
        return taps > 4 ** (weight.dim() - 1)
    n_kernels = weight.shape[0]
    n_pix = math.prod(padded_shape)
    return taps > 4.0 * min(n_kernels, 8) * math.log2(max(n_pix, 2))


def correlate(x: torch.Tensor, weight: torch.Tensor, method: str) -> torch.Tensor:
    """Correlate in valid mode, directly or by FFT (:func:`use_fft`).

    Parameters
    ----------
    x : torch.Tensor
        ``(B, 1, *P)`` padded field.
    weight : torch.Tensor
        ``(K, *window)`` kernels.
    method : {"auto", "fft", "direct"}
        See :func:`use_fft`.

    Returns
    -------
    torch.Tensor
        ``(B, K, *(P - window + 1))``.
    """
    if use_fft(method, weight, x.shape[2:]):
        return _fft_correlate(x, weight)
    return _conv(x, weight)


class FieldSpectrum:
    """The FFT of one zero-filled field, shared by kernels of every radius up to ``max_half``.

    ``correlate(weight)`` returns ``sum_x f(p + x) K(x)`` on the image grid with zeros outside the image (the
    linear correlation a zero-padded direct convolution gives): the FFT length is at least ``n + max_half`` per
    axis, so nothing wraps around. A radius ladder then costs one forward FFT per field and one inverse FFT per
    kernel and radius.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, 1, *S)`` zero-filled field.
    max_half : int
        Largest kernel half-width that will be applied, pixels.
    where : numpy.ndarray of bool, optional
        The pixels whose values will be read (e.g. the ROIs): only boxes around them are transformed
        (:func:`_boxes`), and ``correlate`` is exact there and zero at pixels outside the boxes.
    """

    def __init__(self, x: torch.Tensor, max_half: int, where: np.ndarray | None = None) -> None:
        self.ndim = x.dim() - 2
        self.shape = tuple(x.shape[2:])
        self.batch = x.shape[0]
        self.max_half = max_half
        self.dims = tuple(range(-self.ndim, 0))
        # with ``where``, only boxes around its groups of pixels (each grown by max_half for the windows) are
        # transformed, batched at one shape; correlate() is then right at the pixels of where (zero elsewhere)
        self.boxes = None if where is None else _boxes(np.asarray(where, bool), max_half)
        if self.boxes is None:
            self.size = tuple(next_fast_len(n + max_half, real=True) for n in self.shape)
            self.spec = torch.fft.rfftn(x, s=self.size, dim=self.dims)
        else:
            # a box's windows lie inside its crop, so nothing wraps around: the crop's own length is enough
            crops = _box_crops(_pad_zeros(x, max_half), self.boxes, max_half)
            self.size = tuple(next_fast_len(n, real=True) for n in crops.shape[2:])
            self.spec = torch.fft.rfftn(crops, s=self.size, dim=self.dims)

    def _centred_spectrum(self, weight: torch.Tensor) -> torch.Tensor:
        def make():
            # the kernel centred on index 0 with wrap-around: tap x goes to x mod size (no roll of the full array)
            h = (weight.shape[1] - 1) // 2
            rolled = torch.zeros((weight.shape[0],) + self.size, dtype=weight.dtype, device=weight.device)
            index = [torch.as_tensor(np.arange(-h, h + 1) % n, device=weight.device) for n in self.size]
            rolled[(slice(None),) + tuple(torch.meshgrid(*index, indexing="ij"))] = weight
            return torch.fft.rfftn(rolled, dim=self.dims).conj()

        if weight.requires_grad:
            return make()
        key = ("centred", tuple(weight.shape), self.size, weight.dtype, str(weight.device), _digest(weight))
        return _cached_spectrum(key, make)

    def correlate(self, weight: torch.Tensor) -> torch.Tensor:
        """Correlate the field with ``weight``: ``sum_x f(p + x) K(x)`` on the image grid, zeros outside it.

        Parameters
        ----------
        weight : torch.Tensor
            ``(K, *window)`` kernels of half-width at most ``max_half``.

        Returns
        -------
        torch.Tensor
            ``(B, K, *S)``.

        Raises
        ------
        ValueError
            If the kernel is wider than ``max_half``.
        """
        h = (weight.shape[1] - 1) // 2
        if h > self.max_half:
            raise ValueError(f"kernel half-width {h} exceeds the spectrum's {self.max_half}")
        out = torch.fft.irfftn(self.spec * self._centred_spectrum(weight).unsqueeze(0), s=self.size, dim=self.dims)
        if self.boxes is None:
            return out[(Ellipsis,) + tuple(slice(0, n) for n in self.shape)]
        m, b = self.max_half, self.batch
        full = out.new_zeros((b, out.shape[1]) + self.shape)
        for k, box in enumerate(self.boxes):  # box pixel p sits at m + (p - lo) in its crop
            full[(Ellipsis,) + tuple(slice(lo, hi) for lo, hi in box)] = out[k * b:(k + 1) * b][
                (Ellipsis,) + tuple(slice(m, m + hi - lo) for lo, hi in box)]
        return full


def separable_correlate(x: torch.Tensor, kernel: str, radius: float, alphas: list,
                        dtype: torch.dtype | None = None) -> torch.Tensor:
    """Correlate ``x`` in valid mode with the ``"sep"`` kernels of ``alphas`` by 1-D passes, last axis first.

    Partial products shared between derivatives are computed once (the full 2-D stack needs 4 + 9 passes). A 2-D
    CPU field without gradients goes through the matrix products of :mod:`.separable`; others (1-D, 3-D, GPU,
    autograd) through grouped convolutions.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, 1, *P)`` padded field.
    kernel : str
        A ``"sep"`` kernel name.
    radius : float
        Kernel radius, pixels.
    alphas : list of tuple of int
        Derivative multi-indices.
    dtype : torch.dtype, optional
        Dtype of the 1-D kernels (default: that of ``x``).

    Returns
    -------
    torch.Tensor
        ``(B, n_alpha, *(P - w + 1))``, pixel units.
    """
    from .kernels import separable_factors

    ndim = x.dim() - 2
    if gemm_eligible(x) and (dtype is None or dtype == x.dtype):  # 2-D: x is (B, 1, H, W)
        return separable_stack_2d(x, kernel, radius, alphas, np.eye(len(alphas)))
    dtype = dtype or x.dtype
    factors = {a: separable_factors(kernel, radius, a) for a in alphas}
    current, suffixes = x, [()]
    for axis in reversed(range(ndim)):
        wanted = list(dict.fromkeys(a[axis:] for a in alphas))
        source = [suffixes.index(w[1:]) for w in wanted]
        kernels = []
        for w in wanted:
            alpha = next(a for a in alphas if a[axis:] == w)
            kernels.append(factors[alpha][axis])
        weight = torch.as_tensor(np.stack(kernels), dtype=dtype, device=x.device)
        shape = [len(wanted), 1] + [1] * ndim
        shape[2 + axis] = weight.shape[1]
        inp = current[:, source] if source != list(range(current.shape[1])) else current
        conv = (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]
        current = conv(inp, weight.reshape(shape), groups=len(wanted))
        suffixes = wanted
    return current[:, [suffixes.index(a) for a in alphas]]


def use_separable(kernel: str, method: str, half: int, dtype: torch.dtype, products: bool = False) -> bool:
    """Choose direct 1-D passes for the ``"sep"`` family unless FFT is asked for or the window is very wide.

    Parameters
    ----------
    kernel : str
        Kernel name.
    method : {"auto", "fft", "direct"}
        The requested method.
    half : int
        Kernel half-width, pixels.
    dtype : torch.dtype
        Dtype of the computation (float64 switches to the FFT at a narrower window).
    products : bool
        The field goes through the matrix products of :mod:`.separable` (:func:`.separable.gemm_eligible`): they beat
        the FFT up to much wider windows (benchmarks/RESULTS.md, "Derivative stack": 0.18 s against 0.82 s for
        the 2048² float32 stack at R = 64 px).

    Returns
    -------
    bool
        True for 1-D passes.
    """
    from .kernels import is_separable

    if not is_separable(kernel) or method == "fft":
        return False
    widest = 129 if products else (33 if dtype != torch.float64 else 17)
    return method == "direct" or 2 * half + 1 <= widest


def _pad_zeros(x: torch.Tensor, half: int) -> torch.Tensor:
    return F.pad(x, [half] * (2 * (x.dim() - 2))) if half else x


# --- the per-mask operator ----------------------------------------------------------------------------------------

@dataclass
class MaskOperator:
    """Everything about mask-mode derivatives that depends on the mask (and ``where``), not on the data.

    ``valid`` ``(Bm, *S)``: output defined; ``interior`` ``(Bm, *S)``: valid with the whole window inside the mask;
    ``edges[bm]``: ``(positions, coef)`` -- flat indices of the other valid pixels and their correction
    coefficients ``(E, n_alpha, n_basis)`` (float64).
    """

    mask: torch.Tensor  # (Bm, 1, *S) bool
    valid: torch.Tensor
    interior: torch.Tensor
    edges: list

    def nbytes(self) -> int:
        """Return the operator's approximate memory, bytes (edge coefficients and the masks).

        Returns
        -------
        int
            Bytes.
        """
        return sum(p.numel() * 8 + c.numel() * c.element_size() for p, c in self.edges) + 3 * self.mask.numel()


def _window(half: int, ndim: int) -> list[np.ndarray]:
    axis = np.arange(-half, half + 1, dtype=np.float64)
    return list(np.meshgrid(*([axis] * ndim), indexing="ij"))


@lru_cache(maxsize=64)
def _basis_arrays(kernel: str, radius: float, alphas: tuple, ndim: int, order: int, half: int):
    """Return ``(A (n_alpha, P), EB (n_basis, P), gram_basis (P, n_delta), moment_basis (P, n_alpha * n_basis))``."""
    coords = _window(half, ndim)
    eta = analytic_kernel(kernel, radius, (0,) * ndim)
    betas = multi_indices(ndim, order + 1)
    deltas = multi_indices(ndim, 2 * (order + 1))
    mono = monomials(coords, betas, radius)
    analytic = np.stack([analytic_kernel(kernel, radius, a) for a in alphas])
    eb = eta[None] * mono
    gram_basis = (eta[None] * monomials(coords, deltas, radius)).reshape(len(deltas), -1).T
    moment_basis = np.concatenate([(a[None] * mono).reshape(len(betas), -1) for a in analytic]).T
    return (analytic.reshape(len(alphas), -1), eb.reshape(len(betas), -1), np.ascontiguousarray(gram_basis),
            np.ascontiguousarray(moment_basis), betas, deltas)


def _offsets(half: int, padded_shape: tuple, device) -> torch.Tensor:
    """Flat offsets of a window's pixels in a C-ordered padded array, relative to the window's centre."""
    strides = np.cumprod((1,) + tuple(reversed(padded_shape[1:])))[::-1]
    grids = np.meshgrid(*([np.arange(-half, half + 1)] * len(padded_shape)), indexing="ij")
    return torch.as_tensor(sum(g * s for g, s in zip(grids, strides, strict=True)).ravel(), device=device)


def _padded_index(pos: torch.Tensor, shape: tuple, half: int) -> torch.Tensor:
    """Flat indices ``pos`` of the unpadded grid -> flat indices of the same pixels in the array padded by half."""
    padded = tuple(n + 2 * half for n in shape)
    out = torch.zeros_like(pos)
    for c, n in zip(_unravel(pos, shape), padded, strict=True):
        out = out * n + (c + half)
    return out


def _unravel(pos: torch.Tensor, shape: tuple) -> list[torch.Tensor]:
    """Return the coordinates of flat C-order indices.

    By hand: ``torch.unravel_index`` imports torch's symbolic-shape machinery (sympy, ~1.5 s) on its first call
    in a process.
    """
    coords, rest = [], pos
    for n in reversed(shape):
        coords.append(rest % n)
        rest = torch.div(rest, n, rounding_mode="floor")
    return coords[::-1]


def _chunks(n: int, per_row: int):
    step = max(1, _CHUNK_ELEMENTS // max(per_row, 1))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))


def _use_windows(n_edge: int, window: int, n_kernels: int, n_pixels: int) -> bool:
    """Windows (``E P K`` products) or full-image FFT correlations (``~ 5 K N log2 N``), whichever is cheaper."""
    return n_edge * window * n_kernels <= 5.0 * n_kernels * n_pixels * math.log2(max(n_pixels, 2))


class _GatherWindows(torch.autograd.Function):
    """``flat[:, centre[:, None] + offsets[None]]`` whose backward keeps only ``centre`` and ``offsets``.

    Plain indexing would save the ``(c, P)`` int64 index for the backward pass (8 bytes per window pixel: most of
    the mask-mode share of a network step's autograd graph); it is rebuilt from the two vectors instead.
    """

    @staticmethod
    def forward(ctx, flat, centre, offsets):  # noqa: D102 - autograd protocol
        ctx.save_for_backward(centre, offsets)
        ctx.n = flat.shape[1]
        return flat[:, centre[:, None] + offsets[None]]

    @staticmethod
    def backward(ctx, grad):  # noqa: D102 - autograd protocol
        centre, offsets = ctx.saved_tensors
        index = (centre[:, None] + offsets[None]).reshape(-1)
        out = grad.new_zeros((grad.shape[0], ctx.n))
        out.index_add_(1, index, grad.reshape(grad.shape[0], -1))
        return out, None, None


def _gather_windows(flat: torch.Tensor, centre: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Return the windows ``flat[:, centre + offsets]`` ``(B, c, P)``; see :class:`_GatherWindows` for autograd."""
    if flat.requires_grad and torch.is_grad_enabled():
        return _GatherWindows.apply(flat, centre, offsets)
    return flat[:, centre[:, None] + offsets[None]]


def _edge_values(src: torch.Tensor, basis: torch.Tensor, pos: torch.Tensor, shape: tuple, half: int,
                 method: str) -> torch.Tensor:
    """Compute ``sum_x src(p + x) basis_j(x)`` at flat positions ``pos``: ``(B, E, n_basis)``.

    ``src`` ``(B, 1, *S)`` is zero outside the mask, ``basis`` ``(P, n_basis)``.
    """
    ndim = len(shape)
    padded = _pad_zeros(src, half)
    n_pix = math.prod(padded.shape[2:])
    if _use_windows(pos.numel(), basis.shape[0], basis.shape[1], n_pix):
        flat = padded.reshape(padded.shape[0], -1)
        offsets = _offsets(half, tuple(padded.shape[2:]), src.device)
        centre = _padded_index(pos, shape, half)
        parts = []
        for sl in _chunks(pos.numel(), basis.shape[0]):
            windows = _gather_windows(flat, centre[sl], offsets)  # (B, c, P)
            parts.append(windows @ basis)
        return torch.cat(parts, dim=1) if parts else flat.new_zeros((flat.shape[0], 0, basis.shape[1]))
    kernels = basis.T.reshape((basis.shape[1],) + (2 * half + 1,) * ndim)
    pos_np = pos.cpu().numpy()
    boxes = _edge_boxes(pos_np, shape, half)
    if boxes is None:
        full = correlate(padded, kernels, method)  # (B, n_basis, *S)
        return full.reshape(full.shape[0], full.shape[1], -1)[:, :, pos].transpose(1, 2)
    # one batched correlation of equal boxes of edge pixels (a nucleus each): the image between them is never
    # transformed, and the boxes share one kernel spectrum
    coords = np.unravel_index(pos_np, shape)
    vals = correlate(_box_crops(padded, boxes, half), kernels, method)  # (n_boxes B, n_basis, *box)
    vals = vals.reshape(len(boxes), padded.shape[0], vals.shape[1], -1)
    out = padded.new_empty((padded.shape[0], pos.numel(), basis.shape[1]))
    done = np.zeros(pos_np.size, bool)
    for k, box in enumerate(boxes):
        inside = np.logical_and.reduce([(c >= lo) & (c < hi) for c, (lo, hi) in zip(coords, box, strict=True)])
        idx = np.flatnonzero(inside & ~done)
        done[idx] = True
        local = np.ravel_multi_index(tuple(c[idx] - lo for c, (lo, _) in zip(coords, box, strict=True)),
                                     tuple(hi - lo for lo, hi in box))
        out[:, torch.as_tensor(idx, device=out.device)] = (
            vals[k][:, :, torch.as_tensor(local, device=out.device)].transpose(1, 2))
    return out


def _box_crops(padded: torch.Tensor, boxes: list, half: int) -> torch.Tensor:
    """Stack the windows' extent of each box, ``padded[lo : hi + 2 half]`` per axis, on the batch axis.

    ``padded`` is the field padded by ``half``; image pixel ``p`` of a box sits at ``half + p - lo`` in its crop.
    """
    return torch.cat([padded[(Ellipsis,) + tuple(slice(lo, hi + 2 * half) for lo, hi in box)] for box in boxes])


_MAX_EDGE_BOXES = 16  # more groups of edge pixels than this (many small labels): one box around all of them


def _edge_boxes(pos: np.ndarray, shape: tuple, half: int) -> list | None:
    """Return boxes ``[(lo, hi) per axis]`` that hold the edge pixels ``pos`` (flat), or None for the whole image.

    :func:`_boxes` of the edge pixels.
    """
    if pos.size == 0:
        return None
    edge = np.zeros(math.prod(shape), bool)
    edge[pos] = True
    return _boxes(edge.reshape(shape), half)


def _boxes(where: np.ndarray, half: int) -> list | None:
    """Return equal boxes ``[(lo, hi) per axis]`` that hold the pixels of ``where``, or None for the whole image.

    One box per connected group of pixels (a nucleus), boxes merged while the merged box costs no more than the
    two apart (areas grown by the ``2 half`` window), then all grown to the largest extent per axis (one batched
    correlation). None when the boxes together would cover at least 90 % of the padded image (then one
    whole-image correlation is as cheap) or ``where`` is empty.
    """
    shape = where.shape
    ndim = len(shape)
    labels, n = ndimage.label(where, structure=np.ones((3,) * ndim, bool))
    if n == 0:
        return None
    boxes = [[(sl.start, sl.stop) for sl in found] for found in ndimage.find_objects(labels)]
    if n > _MAX_EDGE_BOXES:
        boxes = [[(min(b[k][0] for b in boxes), max(b[k][1] for b in boxes)) for k in range(ndim)]]

    def area(box):
        return math.prod(hi - lo + 2 * half for lo, hi in box)

    def union(a, b):
        return [(min(x[0], y[0]), max(x[1], y[1])) for x, y in zip(a, b, strict=True)]

    merged = True
    while merged and len(boxes) > 1:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                both = union(boxes[i], boxes[j])
                if area(both) <= area(boxes[i]) + area(boxes[j]):
                    boxes[i] = both
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    # one shape for all (the largest extent per axis, moved back inside the image where it would stick out)
    extent = [max(b[k][1] - b[k][0] for b in boxes) for k in range(ndim)]
    boxes = [[(max(0, min(lo, size - e)), max(0, min(lo, size - e)) + e) for (lo, _), size, e
              in zip(box, shape, extent, strict=True)] for box in boxes]
    if len(boxes) * area(boxes[0]) >= 0.9 * math.prod(size + 2 * half for size in shape):
        return None
    return boxes


_DISTANCE_CACHE: OrderedDict = OrderedDict()


def _interior(mask_np: np.ndarray, radius: float, square: bool = False) -> np.ndarray:
    """Find the pixels at least ``radius`` from the nearest pixel outside the mask (or the image).

    Euclidean distance; chessboard for the square support of the separable family; one transform per mask, cached.
    """
    key = (mask_np.shape, square, hashlib.sha1(np.packbits(mask_np).tobytes()).hexdigest())
    if key in _DISTANCE_CACHE:
        _DISTANCE_CACHE.move_to_end(key)
        dist = _DISTANCE_CACHE[key]
    else:
        padded = np.pad(mask_np, 1, constant_values=False)
        if square:
            dist = ndimage.distance_transform_cdt(padded, metric="chessboard")
        else:
            dist = ndimage.distance_transform_edt(padded)
        dist = dist[(slice(1, -1),) * mask_np.ndim].astype(np.float32)
        _DISTANCE_CACHE[key] = dist
        while len(_DISTANCE_CACHE) > 8:
            _DISTANCE_CACHE.popitem(last=False)
    return mask_np & (dist >= np.float32(radius) * np.float32(1 - 1e-6))


def _safe_solve(gram: torch.Tensor, rhs: torch.Tensor):
    """Solve symmetric ``gram @ c = rhs`` per pixel; flag systems whose eigenvalue ratio is below ``_RCOND``."""
    evals, evecs = torch.linalg.eigh(gram)
    ok = evals[:, 0] > _RCOND * evals[:, -1].clamp_min(1e-300)
    safe = torch.where(ok[:, None], evals, torch.ones_like(evals))
    coef = evecs @ ((evecs.transpose(1, 2) @ rhs[..., None])[..., 0] / safe)[..., None]
    return coef[..., 0], ok


def mask_operator(plan, mask: torch.Tensor, where: torch.Tensor | None = None) -> MaskOperator:
    """Build (or take from the cache) the :class:`MaskOperator` for ``plan`` on ``mask``.

    Parameters
    ----------
    plan
        The mollifier plan (radius, kernel, derivatives ``alphas``; :func:`napari_mollifier.mollifier._make_plan`).
    mask : torch.Tensor
        ``(Bm, 1, *S)`` bool.
    where : torch.Tensor, optional
        Pixels whose edge kernels are needed (default: every valid pixel).

    Returns
    -------
    MaskOperator
        The operator (cached by plan, mask, ``where`` and device).
    """
    device = mask.device
    digest = _digest(mask) + ("" if where is None else _digest(where))
    key = (plan.ndim, plan.radius, plan.kernel, tuple(plan.alphas), tuple(mask.shape), digest, str(device))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    ndim, radius, alphas, half = plan.ndim, plan.radius, tuple(plan.alphas), plan.half
    shape = tuple(mask.shape[2:])
    A, EB, gram_basis, moment_basis, betas, deltas = _basis_arrays(plan.kernel, radius, alphas, ndim, plan.order,
                                                                   half)
    basis = torch.as_tensor(np.concatenate([gram_basis, moment_basis], axis=1), dtype=torch.float64, device=device)
    index = {d: i for i, d in enumerate(deltas)}
    gram_index = torch.tensor([[index[tuple(g + b for g, b in zip(gi, bi, strict=True))] for bi in betas]
                               for gi in betas],
                              device=device)
    nb = len(betas)
    mask_np = mask[:, 0].detach().cpu().numpy()
    where_np = None if where is None else where[0, 0].detach().cpu().numpy()
    valid = mask[:, 0].clone()
    if where is not None:
        valid &= where[:, 0]
    from .kernels import is_separable

    interior_np = np.stack([_interior(m, radius, is_separable(plan.kernel)) for m in mask_np])
    interior = torch.as_tensor(interior_np, device=device) & valid
    edges = []
    for bm in range(mask.shape[0]):
        edge_np = mask_np[bm] & ~interior_np[bm]
        if where_np is not None:
            edge_np &= where_np
        pos = torch.as_tensor(np.flatnonzero(edge_np), device=device)
        coef = torch.zeros((pos.numel(), len(alphas), nb), dtype=torch.float64, device=device)
        if pos.numel():
            vals = _edge_values(mask[bm : bm + 1].to(torch.float64), basis, pos, shape, half, plan.method)[0]
            gram_full = vals[:, gram_index]
            moments_a = vals[:, len(deltas) :].reshape(-1, len(alphas), nb)
            ok_all = torch.ones(pos.numel(), dtype=torch.bool, device=device)
            for i, a in enumerate(alphas):
                k = len(multi_indices(ndim, sum(a) + 1))
                target = torch.as_tensor(moment_targets(a, betas[:k], radius), dtype=torch.float64, device=device)
                c, ok = _safe_solve(gram_full[:, :k, :k], target - moments_a[:, i, :k])
                coef[:, i, :k] = c
                ok_all &= ok
            bad = pos[~ok_all]
            valid[bm].view(-1)[bad] = False
            pos, coef = pos[ok_all], coef[ok_all]
        edges.append((pos, coef))
    op = MaskOperator(mask=mask, valid=valid, interior=interior, edges=edges)
    _CACHE[key] = op
    while len(_CACHE) > 1 and (len(_CACHE) > _CACHE_SIZE or sum(o.nbytes() for o in _CACHE.values()) > _CACHE_BYTES):
        _CACHE.popitem(last=False)
    return op


def alpha_kernels(plan, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """Return the fixed moment-corrected kernels of ``plan.alphas`` in pixel units.

    Parameters
    ----------
    plan
        The mollifier plan (radius, kernel, derivatives ``alphas``; :func:`napari_mollifier.mollifier._make_plan`).
    dtype, device
        Dtype and device of the result, as in :func:`napari_mollifier.kernels.derivative_kernel`.

    Returns
    -------
    torch.Tensor
        ``(n_alpha, *window)``.
    """
    return torch.as_tensor(np.stack([corrected_kernel(plan.kernel, plan.radius, a) for a in plan.alphas]),
                           dtype=dtype, device=device)


def apply_masked(x: torch.Tensor, plan, op: MaskOperator, spectrum: FieldSpectrum | None = None) -> torch.Tensor:
    """Compute mask-mode derivatives of ``x`` in physical units, NaN where not valid.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, 1, *S)`` field.
    plan
        The mollifier plan (radius, kernel, derivatives ``alphas``; :func:`napari_mollifier.mollifier._make_plan`).
    op : MaskOperator
        From :func:`mask_operator`.
    spectrum : FieldSpectrum, optional
        The spectrum of ``x`` zero-filled outside the mask (shared across radii).

    Returns
    -------
    torch.Tensor
        ``(B, n_keys, *S)``.
    """
    dtype, device = x.dtype, x.device
    shape = tuple(x.shape[2:])
    half = plan.half
    xm = torch.where(op.mask, x, torch.zeros((), dtype=dtype, device=device))
    comb = plan.key_combination(dtype, device)  # (n_keys, n_alpha): pixel-unit alphas -> physical keys
    products = gemm_eligible(x)
    separable = spectrum is None and use_separable(plan.kernel, plan.method, half, dtype, products)
    kernels = None if separable else alpha_kernels(plan, dtype, device)
    # by FFT each kernel costs an inverse transform: correlate with the keys' kernels (e.g. u and lap, not u, xx
    # and yy) when there are fewer keys than derivatives; the edge pixels' values are combined the same way
    by_key = not separable and comb.shape[0] < comb.shape[1] and (
        spectrum is not None or use_fft(plan.method, kernels, tuple(n + 2 * half for n in shape)))
    if by_key:
        kernels = torch.einsum("ka,a...->k...", comb, kernels)
    if spectrum is not None:
        out = spectrum.correlate(kernels)
    elif separable:
        out = separable_correlate(_pad_zeros(xm, half), plan.kernel, plan.radius, plan.alphas)
    else:
        out = correlate(_pad_zeros(xm, half), kernels, plan.method)
    A, EB, *_ = _basis_arrays(plan.kernel, plan.radius, tuple(plan.alphas), plan.ndim, plan.order, half)
    if any(pos.numel() for pos, _ in op.edges):
        out = out.clone()
        flat_out = out.reshape(out.shape[0], out.shape[1], -1)
        basis = torch.as_tensor(np.concatenate([A, EB]).T, dtype=dtype, device=device)  # (P, n_alpha + nb)
        n_alpha = A.shape[0]
        for bm, (pos, coef) in enumerate(op.edges):
            if not pos.numel():
                continue
            batch = slice(None) if op.mask.shape[0] == 1 else slice(bm, bm + 1)
            vals = _edge_values(xm[batch], basis, pos, shape, half, plan.method)  # (b, E, n_alpha + nb)
            edge = vals[..., :n_alpha] + torch.einsum("eab,neb->nea", coef.to(dtype), vals[..., n_alpha:])
            if by_key:
                edge = torch.einsum("ka,nea->nek", comb, edge)
            flat_out[batch, :, pos] = edge.transpose(1, 2)
    if not by_key:
        out = torch.einsum("ka,na...->nk...", comb, out)
    return out.masked_fill(~op.valid.unsqueeze(1), float("nan"))


def _window_products(padded: torch.Tensor, basis: torch.Tensor, pos: torch.Tensor, shape: tuple,
                     half: int) -> torch.Tensor:
    """Compute ``sum_x f(p + x) basis_j(x)`` at flat positions ``pos`` of one padded field: ``(E, n_basis)``.

    The field is ``(*(S + 2 half))``; each pixel's window is gathered (in chunks bounded by memory).
    """
    windows = padded
    for axis in range(len(shape)):  # a view (*S, *window) of every pixel's window: no index tensor is built
        windows = windows.unfold(axis, 2 * half + 1, 1)
    coords = _unravel(pos, shape)
    parts = [windows[tuple(c[sl] for c in coords)].reshape(sl.stop - sl.start, -1) @ basis
             for sl in _chunks(pos.numel(), basis.shape[0])]
    return torch.cat(parts) if parts else padded.new_zeros((0, basis.shape[1]))


def windows_pay(n_samples: int, plan, n_pixels: int) -> bool:
    """Tell whether :func:`apply_masked_at` (``n P`` gathered window values) costs less than the full image.

    The full image costs one FFT pass per derivative, ``~N log2 N``; measured on the CPU, a gathered value costs
    about as much as 1.6 units of ``N log2 N`` per derivative, so windows pay for small radii on a pixel sample.

    Parameters
    ----------
    n_samples : int
        Pixels to compute, ``n``.
    plan
        The mollifier plan (radius, kernel, derivatives ``alphas``; :func:`napari_mollifier.mollifier._make_plan`).
    n_pixels : int
        Pixels of the image, ``N``.

    Returns
    -------
    bool
        True when the windows are cheaper.
    """
    window = (2 * plan.half + 1) ** plan.ndim
    return n_samples * window <= 0.6 * n_pixels * math.log2(max(n_pixels, 2))


def apply_masked_at(x: torch.Tensor, plan, op: MaskOperator, pixels: torch.Tensor) -> torch.Tensor:
    """Compute :func:`apply_masked` at the flat positions ``pixels`` (sorted) only, NaN where not valid.

    Interior pixels use the fixed moment-corrected kernels, edge pixels their own (``op`` should be built with
    ``where`` covering ``pixels``, so that only their moment systems are solved). Each pixel costs its window
    (:func:`windows_pay`).

    Parameters
    ----------
    x : torch.Tensor
        ``(1, 1, *S)`` field.
    plan
        The mollifier plan (radius, kernel, derivatives ``alphas``; :func:`napari_mollifier.mollifier._make_plan`).
    op : MaskOperator
        From :func:`mask_operator`.
    pixels : torch.Tensor
        Sorted flat pixel indices ``(n,)``.

    Returns
    -------
    torch.Tensor
        ``(n_keys, n)``, physical units.
    """
    dtype, device = x.dtype, x.device
    shape = tuple(x.shape[2:])
    half = plan.half
    pixels = pixels.contiguous()
    xm = torch.where(op.mask[:1], x, torch.zeros((), dtype=dtype, device=device))
    padded = _pad_zeros(xm, half)[0, 0]
    n_alpha = len(plan.alphas)
    out_alpha = torch.full((pixels.numel(), n_alpha), float("nan"), dtype=dtype, device=device)
    interior = op.interior[0].reshape(-1)[pixels]
    if bool(interior.any()):
        kern = alpha_kernels(plan, dtype, device).reshape(n_alpha, -1).T
        out_alpha[interior] = _window_products(padded, kern, pixels[interior], shape, half)
    pos, coef = op.edges[0]
    if pos.numel():
        index = torch.searchsorted(pixels, pos)
        hit = (index < pixels.numel()) & (pixels[index.clamp_max(pixels.numel() - 1)] == pos)
        index, pos, coef = index[hit], pos[hit], coef[hit]
        A, EB, *_ = _basis_arrays(plan.kernel, plan.radius, tuple(plan.alphas), plan.ndim, plan.order, half)
        basis = torch.as_tensor(np.concatenate([A, EB]).T, dtype=dtype, device=device)
        vals = _window_products(padded, basis, pos, shape, half)
        out_alpha[index] = vals[:, :n_alpha] + torch.einsum("eab,eb->ea", coef.to(dtype), vals[:, n_alpha:])
    out = plan.key_combination(dtype, device) @ out_alpha.T
    valid = op.valid[0].reshape(-1)[pixels]
    return out.masked_fill(~valid[None], float("nan"))


def edge_kernels(plan, op: MaskOperator, bm: int, rows: slice,
                 dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the per-pixel kernels (mask applied) of edge pixels ``rows`` of mask ``bm``, and their positions.

    What the propagated uncertainty needs at edge pixels.

    Parameters
    ----------
    plan
        The mollifier plan (radius, kernel, derivatives ``alphas``; :func:`napari_mollifier.mollifier._make_plan`).
    op : MaskOperator
        From :func:`mask_operator`.
    bm : int
        Index of the mask.
    rows : slice
        Edge pixels (rows of ``op.edges[bm]``).
    dtype : torch.dtype
        Dtype of the result.

    Returns
    -------
    positions : torch.Tensor
        ``(c,)`` flat indices of the pixels.
    kernels : torch.Tensor
        ``(c, n_alpha, P)``, pixel units, times the mask's window values.
    """
    pos, coef = op.edges[bm]
    pos, coef = pos[rows], coef[rows].to(dtype)
    half = plan.half
    shape = tuple(op.mask.shape[2:])
    A, EB, *_ = _basis_arrays(plan.kernel, plan.radius, tuple(plan.alphas), plan.ndim, plan.order, half)
    device = coef.device
    padded = _pad_zeros(op.mask[bm : bm + 1].to(dtype), half).reshape(-1)
    windows = padded[_padded_index(pos, shape, half)[:, None] + _offsets(half, tuple(n + 2 * half for n in shape),
                                                                          device)[None]]
    kern = torch.as_tensor(A, dtype=dtype, device=device)[None] + coef @ torch.as_tensor(EB, dtype=dtype,
                                                                                            device=device)
    return pos, kern * windows[:, None, :]


def interior_coefficients(plan) -> np.ndarray:
    """Return the fixed correction coefficients of the interior kernels (zero-padded).

    Parameters
    ----------
    plan
        The mollifier plan (radius, kernel, derivatives ``alphas``; :func:`napari_mollifier.mollifier._make_plan`).

    Returns
    -------
    numpy.ndarray
        ``(n_alpha, n_basis)``.
    """
    betas = multi_indices(plan.ndim, plan.order + 1)
    out = np.zeros((len(plan.alphas), len(betas)))
    for i, a in enumerate(plan.alphas):
        c = correction_coefficients(plan.kernel, plan.radius, a)
        out[i, : len(c)] = c
    return out
