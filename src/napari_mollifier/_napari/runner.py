"""The worker lifecycle of the dock widgets: start a napari ``thread_worker``, relay progress, cancel, close.

:func:`start_worker` creates the worker (in napari's task list when given a ``desc``), connects its signals and
starts it; the Rate maps and Heterochromatin domains widgets both start their runs through it.
:func:`attach_task_bar` puts a running worker in the task list later (the Rate maps widget: only a run still going
after :data:`TASK_LIST_DELAY_S`, and only where :func:`task_list_enabled`), :func:`advance_task_bar` moves the
task list's bar. :class:`CloseWatcher` tells both widgets that they or the viewer's window were closed (the run
stops and publishes nothing).
:class:`RunLifecycle` is the Rate maps widget's run handling: one run at a time, Cancel (a flag the solver reads
within one step), close handling, and "ready again" once the worker has finished, the solver thread has stopped
and the layers are in.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QObject, QTimer

from ._qt_layout import set_progress as _set_progress
from .job import _explain_cancel, _Outcome

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from napari.qt.threading import GeneratorWorker

__all__ = ["start_worker", "attach_task_bar", "advance_task_bar", "CloseWatcher", "RunLifecycle", "TASK_LIST_DELAY_S",
           "task_list_enabled"]

#: Seconds a Rate maps run goes before it is put in napari's task list, where that is switched on
#: (:func:`task_list_enabled`). While the list holds a task, napari animates its activity indicator, and every
#: frame repaints the whole window (some 20 a second; with software OpenGL, as under Xvfb, ~15 ms of CPU each on
#: every core): a run of the default size, over in well under this delay, keeps the viewer idle.
TASK_LIST_DELAY_S = 1.5


def task_list_enabled() -> bool:
    """Return whether runs are listed in napari's task list (activity panel): only if NAPARI_MOLLIFIER_TASK_LIST=1.

    The widgets show their own progress bar, time left and Cancel. napari's list animates an activity indicator
    while it holds a task, which repaints the whole window ~20 times a second: measured on a 2-core machine with
    software OpenGL, a 20 s solve (the domains hand-off) took 44-50 s in the window with the run listed and 24 s
    without it (issue 15; 19-21 s headless).

    Returns
    -------
    bool
        True when the environment variable is ``1``.
    """
    import os

    return os.environ.get("NAPARI_MOLLIFIER_TASK_LIST", "0").strip() == "1"


def start_worker(
    function: Callable,
    *args: Any,
    desc: str | None = None,
    yielded: Callable | None = None,
    returned: Callable | None = None,
    errored: Callable | None = None,
    aborted: Callable | None = None,
    finished: Callable | None = None,
    start: bool = True,
) -> GeneratorWorker:
    """Run ``function(*args)`` (a generator) in a napari ``thread_worker`` with these handlers connected.

    Parameters
    ----------
    function : callable
        The generator function the worker runs (it yields progress and returns the outcome).
    *args
        Its arguments.
    desc : str, optional
        Name of the run in napari's task list (with a progress bar there); None: no task-list bar.
    yielded, returned, errored, aborted, finished : callable, optional
        Connected to the worker's signals of the same names (main thread).
    start : bool
        Start the worker (False: the caller keeps it first, then calls ``worker.start()``).

    Returns
    -------
    napari.qt.threading.GeneratorWorker
        The worker (started when ``start``).
    """
    from napari.qt.threading import thread_worker

    progress = {"total": 0, "desc": desc} if desc is not None else None
    worker = thread_worker(function, progress=progress, start_thread=False)(*args)
    for name, handler in (("yielded", yielded), ("returned", returned), ("errored", errored), ("aborted", aborted),
                          ("finished", finished)):
        if handler is not None:
            getattr(worker, name).connect(handler)
    if start:
        worker.start()
    return worker


def attach_task_bar(worker: Any, desc: str) -> Any:
    """Put a running ``worker`` in napari's task list now (a bar named ``desc``), for :func:`advance_task_bar`.

    The caller closes the bar when the worker has finished (``bar.close()``): a bar attached after the worker
    emitted ``finished`` would not see that signal. Cosmetic: any failure is ignored.

    Parameters
    ----------
    worker : napari.qt.threading.GeneratorWorker
        The worker, started without a task-list bar (``start_worker(desc=None)``).
    desc : str
        Name of the run in the task list.

    Returns
    -------
    napari.utils.progress or None
        The bar (also ``worker.pbar``), or None where napari refused it.
    """
    try:
        from napari.utils import progress

        bar = progress(total=1000, desc=desc)
        worker.pbar = bar
        return bar
    except Exception:  # pragma: no cover - the task list is cosmetic  # noqa: BLE001 - never raised into the viewer
        log.debug("napari-mollifier: no task-list bar", exc_info=True)
        return None


def advance_task_bar(worker: Any, frac: float) -> None:
    """Move the bar of ``worker`` in napari's task list to ``frac`` (cosmetic: any failure is ignored).

    Parameters
    ----------
    worker : napari.qt.threading.GeneratorWorker
        The worker (its ``pbar``, when napari made one).
    frac : float
        Fraction done (0-1).
    """
    pbar = getattr(worker, "pbar", None)
    if pbar is not None:
        try:
            if pbar.total != 1000:
                pbar.total = 1000
            step = int(round(1000 * frac)) - int(pbar.n)
            if step > 0:
                pbar.update(step)
        except Exception:  # pragma: no cover - the activity dock is cosmetic  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
            pass


class CloseWatcher(QObject):
    """Tell a dock widget that it or the viewer's window was closed, so that a run stops and publishes nothing.

    A dock widget gets no close event of its own when the viewer closes, so the watcher also filters the events of
    the viewer's window: a Hide that follows a Close (not a minimise) counts as closed. The window is held by weak
    reference (the widget must not keep a closed viewer alive). Call :meth:`watch` when a run starts: the dock may
    have moved to another window since the last run.

    Parameters
    ----------
    widget : QWidget
        The dock widget (the watcher's parent).
    on_close : callable
        Called (no arguments) when the widget or the window is closed.
    """

    def __init__(self, widget: QObject, on_close: Callable[[], None]) -> None:
        super().__init__(widget)
        self._widget = weakref.ref(widget)
        self._on_close = on_close
        self._window: weakref.ref | None = None
        self._close_seen = False
        #: True once the widget or its window was closed (reset by :meth:`watch` and by the window's Show)
        self.closed = False
        widget.installEventFilter(self)

    def watch(self) -> None:
        """Watch the widget's current top-level window and reset :attr:`closed` (at the start of a run)."""
        widget = self._widget()
        if widget is None:
            return
        top = widget.window()
        watched = self._window() if self._window is not None else None
        if top is not widget and top is not watched:
            if watched is not None:
                watched.removeEventFilter(self)
            top.installEventFilter(self)
            self._window = weakref.ref(top)
        self.closed = self._close_seen = False

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        """Mark a close of the widget or of its window (a Hide after a Close, not a minimise).

        Parameters
        ----------
        obj : QObject
            The widget or its window.
        event : QEvent
            The event.

        Returns
        -------
        bool
            False: the event goes on to its object.
        """
        kind = event.type()
        if obj is self._widget():
            if kind == QEvent.Type.Close:
                self._closed()
        elif self._window is not None and obj is self._window():
            if kind == QEvent.Type.Close:
                self._close_seen = True  # accepted or not: a Hide follows only if it was accepted
            elif kind == QEvent.Type.Hide and self._close_seen and not event.spontaneous() and not obj.isMinimized():
                self._closed()
            elif kind == QEvent.Type.Show:
                self.closed = self._close_seen = False
        return False

    def _closed(self) -> None:
        self.closed = True
        self._on_close()


class RunLifecycle:
    """Run handling of the Rate maps widget (a mixin of :class:`~napari_mollifier._napari.widget.MollifierWidget`).

    Uses the widget's ``worker``, ``_job`` (its ``cancel`` event and solver ``thread``), ``_outcome``,
    ``_worker_finished``, ``_publishing``, ``_pending``/``_added``, the Run/Cancel buttons, the status label, the
    progress bar and the ``run_done`` signal; ``_report`` and ``_mark_results_stale`` come from
    :class:`~napari_mollifier._napari.results.ResultsDisplay`.
    """

    @property
    def is_running(self) -> bool:
        """Whether a run is in flight.

        Returns
        -------
        bool
            True from Run until the widget is ready again (worker finished, solver stopped, layers in).
        """
        return self.worker is not None

    @property
    def _window_closed(self) -> bool:
        """Whether the widget or the viewer's window was closed during the run (nothing is published then)."""
        watcher = getattr(self, "_close_watcher", None)
        return watcher is not None and watcher.closed

    def _watch_window(self) -> None:
        """Start watching for a close of the widget or the viewer's window (:class:`CloseWatcher`)."""
        if getattr(self, "_close_watcher", None) is None:
            self._close_watcher = CloseWatcher(self, self._stop_on_close)
        self._close_watcher.watch()

    def _stop_on_close(self) -> None:
        if self._job is not None:
            self._job.cancel.set()
        self._pending = []

    def cancel(self) -> None:
        """Ask the running job to stop (it stops within one solver step; nothing is added)."""
        if self._job is not None:
            self._job.cancel.set()
            self.cancel_button.setEnabled(False)
            self.status_label.setText("Cancelling...")

    def _on_errored(self, exc) -> None:  # a bug in the widget's own generator
        self._outcome = _Outcome("error", message=f"Rate maps failed: {exc}")
        self.status_label.setText(f"Failed: {exc}")

    def _on_aborted(self) -> None:  # napari task list "cancel" (worker.quit)
        if self._job is not None:
            self._job.cancel.set()
        self._outcome = _Outcome("cancelled", message=_explain_cancel())
        self._report(self._outcome)

    def _show_in_task_list(self, worker: Any, desc: str) -> None:
        """Put a run still going after ``TASK_LIST_DELAY_S`` in napari's task list (main thread)."""
        if worker is None or self.worker is not worker or self._worker_finished or self._task_bar is not None:
            return
        self._task_bar = attach_task_bar(worker, desc)
        advance_task_bar(worker, self._last_frac)

    def _close_task_bar(self) -> None:
        bar, self._task_bar = self._task_bar, None
        if bar is not None:
            try:
                bar.close()
            except Exception:  # pragma: no cover  # noqa: BLE001 - the task list is cosmetic
                log.debug("napari-mollifier: closing the task-list bar failed", exc_info=True)

    def _on_finished(self) -> None:
        self._worker_finished = True
        self._close_task_bar()
        self._maybe_done()

    def _maybe_done(self) -> None:
        """Back to ready once the worker has finished, the solver thread has stopped and the layers are in."""
        if self.worker is None or not self._worker_finished or self._publishing:
            return
        job = self._job
        if job is not None and job.thread is not None and job.thread.is_alive():
            # aborted from the task list: keep Run disabled until the solver thread has stopped
            QTimer.singleShot(100, self._maybe_done)
            return
        status = self._outcome.status if self._outcome is not None else "error"
        self._close_task_bar()
        self.worker = None
        self._job = None
        self._pending, self._added = [], []
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self._mark_results_stale(False)
        if status != "ok":
            _set_progress(self.progress_bar, 0)
        self.run_done.emit(status)
