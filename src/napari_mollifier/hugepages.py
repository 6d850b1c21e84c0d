"""Large CPU tensors in transparent huge pages, their memory kept for the next call that needs the same size.

Writing a fresh 128 MiB result (the 2-D derivative stack of a 2048² float32 image) costs 32 768 page faults of
4 KiB, about 45 ms of a 2-core CPU: as much as an FFT round trip of the image. :func:`empty_large` maps such tensors
anonymously, advises ``MADV_HUGEPAGE`` (64 faults of 2 MiB, about 20 ms) and keeps the maps of the most recent
calls (at most :data:`KEEP_BYTES` in all): once every tensor made from a map is gone, the next request of the same
size reuses it, already paged in, as the C library's allocator does for smaller blocks. A map is only reused when
nothing else refers to it (its reference count), so a result still held anywhere, as a tensor, a view or a numpy
array, is never written over. :func:`release` hands the kept memory back to the system.
"""

from __future__ import annotations

import math
import mmap
import sys
import threading
from collections.abc import Sequence

import torch

__all__ = ["empty_large", "release", "KEEP_BYTES"]

HUGE_PAGE = 2 * 2**20  # bytes
LARGE = 8 * 2**20  # bytes: smaller tensors come from torch's allocator
KEEP_BYTES = 256 * 2**20  # bytes: the most recent maps kept for reuse (a 2048² stack and its row buffer fit)

_kept: list[list] = []  # [[map, nbytes]], most recent last
_lock = threading.Lock()
_probe = [object()]
_FREE_REFS = sys.getrefcount(_probe[0])  # references of an object held by one list alone, read as list[i]
del _probe


def _new_map(nbytes: int):
    try:
        buf = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError, AttributeError):
        return None
    return buf


def empty_large(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """Return an uninitialised contiguous CPU tensor, in transparent huge pages when it is large.

    Tensors of at least 8 MiB get their own anonymous map, aligned to 2 MiB and advised ``MADV_HUGEPAGE``; the
    tensor (and any view or numpy array made from it) keeps the map alive. Where huge pages are not offered (not
    Linux) and for smaller tensors it is ``torch.empty``.

    Parameters
    ----------
    shape : sequence of int
        Tensor shape.
    dtype : torch.dtype
        Tensor dtype.

    Returns
    -------
    torch.Tensor
        The tensor (CPU).
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = math.prod(shape) * itemsize
    if nbytes < LARGE or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(tuple(shape), dtype=dtype)
    with _lock:  # a map is free until a tensor refers to it: choose and take it in one step (solver threads)
        entry = next((e for e in _kept if e[1] == nbytes and sys.getrefcount(e[0]) == _FREE_REFS), None)
        if entry is None:
            buf = _new_map(nbytes)
            if buf is None:
                return torch.empty(tuple(shape), dtype=dtype)
            entry = [buf, nbytes]
        else:
            _kept.remove(entry)
        _kept.append(entry)
        total = 0
        for e in reversed(_kept[:]):  # the most recent maps up to KEEP_BYTES; older ones live as long as their tensors
            total += e[1]
            if total > KEEP_BYTES and e is not entry:
                _kept.remove(e)
        flat = torch.frombuffer(entry[0], dtype=torch.uint8)
    skip = -flat.data_ptr() % HUGE_PAGE
    return flat[skip:skip + nbytes].view(dtype).view(tuple(shape))


def release() -> int:
    """Stop keeping the maps of earlier calls; each is unmapped once its last tensor is gone.

    Returns
    -------
    int
        Bytes no longer kept.
    """
    with _lock:
        freed = sum(e[1] for e in _kept)
        _kept.clear()
    return freed
