"""Separable (``"sep"``) kernels on 2-D images by matrix products, in row chunks.

A ``"sep"`` kernel is a product of 1-D kernels, ``K_alpha(y, x) = k_ay(y) k_ax(x)`` (docs/science.md), so a
correlation with it is two 1-D passes, ``out[j] = sum_t k[t] in[j + t]`` along each axis.

* Along y (rows, the slow axis) the rows ``in[j : j + 2h + 1, :]`` of output row ``j`` form a matrix with row
  stride ``W``, so all y-kernels at once are one product ``(n_k, 2h + 1) @ (2h + 1, W)`` per output row; the rows of
  a chunk are one batched product over an overlapping strided view (no copy).
* Along x (the contiguous axis) a block of ``n`` outputs is ``in[:, x0 : x0 + n + 2h] @ T`` with the banded
  Toeplitz matrix ``T[j + t, j] = k[t]`` (``(n + 2h) x n``); the blocks of a chunk are one batched product writing
  straight into the output (strided views, no copy).

Each chunk of rows (the whole of a 2048² image) keeps its y-pass results in one buffer reused by the next chunk. A
term of an output whose derivative is already the single term of another output (``xx`` in ``lap = xx + yy``) is
added from that output instead of recomputed.

The result and the row buffer come from :func:`.hugepages.empty_large` (huge pages, memory reused across calls).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.autograd import forward_ad

from .hugepages import empty_large
from .kernels import half_width, separable_factors

__all__ = ["gemm_eligible", "separable_gemm_2d", "separable_stack_2d"]

_BLOCK = 16  # x-pass outputs per Toeplitz block; the extra work is (n + 2h) / (2h + 1); 8-64 tried on 2048² images
_CHUNK_BYTES = 72 * 2**20  # y-pass buffer per chunk of rows: a whole 2048² image with 4 y-kernels (in L3 cache)


def gemm_eligible(x: torch.Tensor) -> bool:
    """Whether :func:`separable_gemm_2d` may serve ``x``: a plain CPU tensor of a 2-D field, no autograd through it.

    The products write into their outputs (``out=``), which neither reverse- nor forward-mode autograd nor tensor
    subclasses (functorch wrappers) go through.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, 1, *spatial)`` field, padded or not (four dimensions: a 2-D field).

    Returns
    -------
    bool
        True for the matrix products; False leaves it to grouped convolutions (GPU, 1-D/3-D, gradients).
    """
    return (type(x) is torch.Tensor and x.dim() == 4 and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and not (torch.is_grad_enabled() and x.requires_grad)
            and forward_ad.unpack_dual(x).tangent is None)


def _toeplitz(k: np.ndarray, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``(n + 2h, n)`` banded matrix with ``T[j + t, j] = k[t]``: ``in[0 : n + 2h] @ T`` correlates with ``k``."""
    w = len(k)
    t = np.zeros((n + w - 1, n))
    for j in range(n):
        t[j:j + w, j] = k
    return torch.as_tensor(t, dtype=dtype)


def _x_pass(src: torch.Tensor, toeplitz: torch.Tensor, dst: torch.Tensor, half: int, accumulate: bool) -> None:
    """``dst (rows, W) (+)= src (rows, W + 2h) (*) k`` along x, blocks of ``n`` columns as one batched product."""
    n = toeplitz.shape[1]
    rows, width = dst.shape
    nb = width // n
    if nb:
        a = src.as_strided((nb, rows, n + 2 * half), (n, src.stride(0), 1), src.storage_offset())
        o = dst.as_strided((nb, rows, n), (n, dst.stride(0), 1), dst.storage_offset())
        if accumulate:
            o.baddbmm_(a, toeplitz.expand(nb, -1, -1))
        else:
            torch.matmul(a, toeplitz, out=o)
    rest = width - nb * n
    if rest:
        a = src[:, nb * n:]
        t = toeplitz[:rest + 2 * half, :rest]
        if accumulate:
            dst[:, nb * n:].addmm_(a, t)
        else:
            torch.mm(a, t, out=dst[:, nb * n:])


def separable_gemm_2d(padded: torch.Tensor, factors: dict, outputs: Sequence[Sequence[tuple]],
                      out: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Correlate a padded 2-D field with combinations of separable kernels, in valid mode.

    Output ``i`` is ``sum_(alpha, c) c (field (*) k_ay k_ax)`` over its terms ``outputs[i]``.

    Parameters
    ----------
    padded : torch.Tensor
        ``(B, 1, H + 2h, W + 2h)`` field, padded by the kernels' half-width ``h``.
    factors : dict
        ``{alpha: (k_y, k_x)}``: the 1-D kernels (``2h + 1`` samples each) of each derivative ``alpha = (ay, ax)``;
        ``k_y`` depends on ``ay`` alone and ``k_x`` on ``ax`` alone (as :func:`.kernels.separable_factors` gives
        them), so the y-pass is shared by every ``alpha`` with the same ``ay``.
    outputs : sequence of sequence of (alpha, float)
        The terms of each output.
    out : sequence of torch.Tensor
        ``(B, H, W)`` tensors to write into, one per output.

    Returns
    -------
    list of torch.Tensor
        ``out``.
    """
    dtype = padded.dtype
    batch, _, hp, wp = padded.shape
    w = len(next(iter(factors.values()))[0])
    half = (w - 1) // 2
    height, width = hp - 2 * half, wp - 2 * half
    terms = [[(tuple(a), float(c)) for a, c in o if c != 0.0] for o in outputs]
    if not any(terms):
        for o in out:
            o.zero_()
        return list(out)
    y_orders = list(dict.fromkeys(a[0] for o in terms for a, _ in o))
    y_index = {o: i for i, o in enumerate(y_orders)}
    y_kernels = {a[0]: factors[a][0] for o in terms for a, _ in o}
    ky = torch.as_tensor(np.stack([np.asarray(y_kernels[o], dtype=np.float64) for o in y_orders]), dtype=dtype)
    n_block = max(1, min(_BLOCK, width))
    tx: dict = {}

    def x_matrix(alpha, c):
        key = (alpha[1], c)
        if key not in tx:
            tx[key] = _toeplitz(c * np.asarray(factors[alpha][1], dtype=np.float64), n_block, dtype)
        return tx[key]

    # outputs with a single term first: they serve later outputs' terms with the same derivative
    order = sorted(range(len(terms)), key=lambda i: len(terms[i]) != 1)
    single = {}  # {alpha: (output, coefficient)} of the outputs whose only term is alpha
    for i in order:
        if len(terms[i]) == 1:
            single.setdefault(terms[i][0][0], (i, terms[i][0][1]))
    chunk = max(1, min(_CHUNK_BYTES // (len(y_orders) * wp * padded.element_size()), height))
    y_pass = empty_large((chunk, len(y_orders), wp), dtype)
    for b in range(batch):
        src = padded[b, 0]
        if not src.is_contiguous():
            src = src.contiguous()
        for r0 in range(0, height, chunk):
            rows = min(chunk, height - r0)
            windows = src.as_strided((rows, w, wp), (wp, wp, 1), src.storage_offset() + r0 * wp)
            torch.matmul(ky, windows, out=y_pass[:rows])  # (rows, n_y, Wp): y-pass of these rows
            for i in order:
                dst = out[i][b, r0:r0 + rows]
                for k, (alpha, c) in enumerate(terms[i]):
                    source, c_source = single.get(alpha, (i, None))
                    if source != i:  # this derivative is another output's only term, already written
                        done = out[source][b, r0:r0 + rows]
                        if k == 0:
                            torch.mul(done, c / c_source, out=dst)
                        else:
                            dst.add_(done, alpha=c / c_source)
                    else:
                        _x_pass(y_pass[:rows, y_index[alpha[0]]], x_matrix(alpha, c), dst, half, k > 0)
                if not terms[i]:
                    dst.zero_()
    return list(out)


def separable_stack_2d(padded: torch.Tensor, kernel: str, radius: float, alphas: Sequence[tuple],
                       combination: np.ndarray) -> torch.Tensor:
    """Correlate a padded 2-D field with the ``"sep"`` kernels of ``alphas`` combined into outputs.

    Parameters
    ----------
    padded : torch.Tensor
        ``(B, 1, H + 2h, W + 2h)`` field (:func:`gemm_eligible` true), ``h`` the kernel's half-width.
    kernel : str
        A ``"sep"`` kernel name.
    radius : float
        Kernel radius, pixels.
    alphas : sequence of tuple of int
        Derivative multi-indices ``(ay, ax)``.
    combination : numpy.ndarray
        ``(K, n_alpha)``: output ``k`` is ``sum_a combination[k, a] (field (*) K_alpha)`` (the identity gives the
        per-derivative stack; a key combination gives physical-unit keys).

    Returns
    -------
    torch.Tensor
        ``(B, K, H, W)``.
    """
    half = half_width(radius)
    batch, _, hp, wp = padded.shape
    comb = np.asarray(combination, dtype=np.float64)
    factors = {tuple(a): separable_factors(kernel, radius, tuple(a)) for a in alphas}
    outputs = [[(tuple(a), comb[k, j]) for j, a in enumerate(alphas)] for k in range(comb.shape[0])]
    stack = empty_large((batch, comb.shape[0], hp - 2 * half, wp - 2 * half), padded.dtype)
    separable_gemm_2d(padded, factors, outputs, out=[stack[:, k] for k in range(comb.shape[0])])
    return stack
