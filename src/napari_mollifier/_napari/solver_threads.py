"""How many threads the solver gets when it runs inside napari (Qt-free; torch imported when used).

In a napari window the main thread keeps about one core busy (the activity indicator, software OpenGL under
Xvfb, repaints). Torch's intra-op pool, sized for every core, then has one thread fighting the viewer for its
core, and the run slows down badly (issue 15: 28 s in the window against 6.8 s headless with 2 threads on 2 cores;
22 s with 1 thread). The widget's solver therefore uses one core fewer than the machine has (at least one);
``NAPARI_MOLLIFIER_THREADS=N`` sets it, ``NAPARI_MOLLIFIER_THREADS=0`` keeps torch's own choice.
``benchmarks/bench_widget_vs_headless.py`` measures the effect.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["widget_solver_threads", "solver_threads"]


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def widget_solver_threads() -> int | None:
    """Threads for a solve started from the widget (module docstring).

    Returns
    -------
    int or None
        ``NAPARI_MOLLIFIER_THREADS`` when set to N > 0, None (torch's own setting) when set to 0, else one core
        fewer than the usable cores (at least 1).
    """
    text = os.environ.get("NAPARI_MOLLIFIER_THREADS", "").strip()
    if text:
        try:
            n = int(text)
        except ValueError:
            n = -1
        if n == 0:
            return None
        if n > 0:
            return n
    return max(1, _usable_cores() - 1)


@contextlib.contextmanager
def solver_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op thread count to ``n`` for the block, and restore it afterwards.

    The setting is process-wide; the widget runs one job at a time.

    Parameters
    ----------
    n : int or None
        Threads; None: unchanged.

    Yields
    ------
    None
    """
    if n is None:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)
