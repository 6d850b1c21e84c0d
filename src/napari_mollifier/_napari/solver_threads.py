"""How many threads the solver gets when it runs inside napari (Qt-free; torch imported when used).

In a napari window the main thread keeps about one core busy during a long run (the task list's activity
indicator repaints the window some 20 times a second: software OpenGL under Xvfb, ``llvmpipe`` threads on every
core). Torch's intra-op pool, sized for every core, then has one thread fighting the viewer for its core, and the
run slows down badly (issue 15: 28 s in the window against 6.8 s headless with 2 threads on 2 cores; 22 s with
1 thread). A long run's solver therefore uses one core fewer than the machine has (at least one).

A short run (estimated at most :data:`SHORT_RUN_S`, :func:`napari_mollifier.validation.estimate_run_seconds`) is
over before the widget would put it in napari's task list (``runner.TASK_LIST_DELAY_S``, where that is switched
on): the viewer stays idle and the solver gets torch's own thread count, as headless (issue 15: the default run in
the window within 1.5x of the same run headless). ``NAPARI_MOLLIFIER_THREADS=N`` sets the count for every run,
``NAPARI_MOLLIFIER_THREADS=0`` keeps torch's own choice for every run. ``benchmarks/bench_widget_vs_headless.py`` measures the effect.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["SHORT_RUN_S", "widget_solver_threads", "solver_threads"]

#: Estimated run time (s, ``validation.estimate_run_seconds``: a deliberately pessimistic order of magnitude,
#: 3-5x the measured time of a direct run on a CPU) up to which a run counts as short (module docstring): the
#: default run on a 256 x 256 image is estimated at 1.6 s, on 512 x 512 at 7.5 s.
SHORT_RUN_S = 3.0


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def widget_solver_threads(seconds: float | None = None) -> int | None:
    """Threads for a solve started from the widget (module docstring).

    Parameters
    ----------
    seconds : float, optional
        The run's estimated time (``validation.estimate_run_seconds``, all slices); None: unknown (a long run).

    Returns
    -------
    int or None
        ``NAPARI_MOLLIFIER_THREADS`` when set to N > 0, None (torch's own setting) when set to 0 or for a short
        run (``seconds <= SHORT_RUN_S``), else one core fewer than the usable cores (at least 1).
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
    if seconds is not None and seconds <= SHORT_RUN_S:
        return None
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
