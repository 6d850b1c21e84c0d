"""Large CPU tensors in transparent huge pages, their memory kept for the next call that needs the same size.

Writing a fresh 128 MiB result (the 2-D derivative stack of a 2048² float32 image) costs 32 768 page faults of
4 KiB, which took about 45 ms on the 2-core CPU the benchmarks ran on, as much as an FFT round trip of the image.
:func:`empty_large` maps such tensors anonymously, advises ``MADV_HUGEPAGE`` (64 faults of 2 MiB, about 20 ms
there) and keeps the maps of the most recent calls (at most :data:`KEEP_BYTES` in all, each at most that size): once
the tensor made from a map has released it, the next request of the same size reuses it, already paged in, as the C
library's allocator does for smaller blocks. A map is released when its storage is freed, that is when no tensor,
view or numpy array made from it is left. (A tensor whose storage is replaced in place, as
``Tensor.share_memory_()`` does, releases its old memory at once, in torch as here: numpy arrays made from it
before then must not be used.) :func:`release` stops keeping the maps.
"""

from __future__ import annotations

import math
import mmap
import os
import threading
import weakref
from collections.abc import Sequence

import torch

__all__ = ["empty_large", "release", "KEEP_BYTES"]

HUGE_PAGE = 2 * 2**20  # bytes
LARGE = 8 * 2**20  # bytes: smaller tensors come from torch's allocator
KEEP_BYTES = 256 * 2**20  # bytes: the most recent maps kept for reuse (a 2048² float32 stack and its row buffer fit)

_kept: list[list] = []  # [[map, nbytes, weak reference to the memoryview a tensor holds]], most recent last
_lock = threading.Lock()
_huge = [hasattr(mmap, "MADV_HUGEPAGE")]  # False once the system has refused a map


def _new_lock() -> None:
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # a child forked while a solver thread held the lock must not inherit it held
    os.register_at_fork(after_in_child=_new_lock)


def _new_map(nbytes: int):
    try:
        buf = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError, AttributeError):
        _huge[0] = False
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
    if nbytes < LARGE or not _huge[0]:
        return torch.empty(tuple(shape), dtype=dtype)
    with _lock:  # a map is free until a tensor holds its memoryview: choose and take it in one step (solver threads)
        entry = next((e for e in _kept if e[1] == nbytes and e[2]() is None), None)
        if entry is None:
            buf = _new_map(nbytes)
            if buf is None:
                return torch.empty(tuple(shape), dtype=dtype)
            entry = [buf, nbytes, None]
        else:
            _kept.remove(entry)
        view = memoryview(entry[0])
        entry[2] = weakref.ref(view)
        if nbytes <= KEEP_BYTES:
            _kept.append(entry)
        total = 0
        for e in reversed(_kept[:]):  # the most recent maps up to KEEP_BYTES; older ones live as long as their tensors
            total += e[1]
            if total > KEEP_BYTES:
                _kept.remove(e)
        flat = torch.frombuffer(view, dtype=torch.uint8)
        del view  # now held by the tensor's storage alone: the weak reference dies with it
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
