"""The worker lifecycle of the dock widgets: start a napari ``thread_worker``, relay progress, cancel, close.

:func:`start_worker` creates the worker (in napari's task list when given a ``desc``), connects its signals and
starts it; the Rate maps and Heterochromatin domains widgets both start their runs through it.
:func:`attach_task_bar` puts a running worker in the task list later (the Rate maps widget: only a run still going
after :data:`TASK_LIST_DELAY_S`), :func:`advance_task_bar` moves the task list's bar. :class:`RunLifecycle` is the Rate maps widget's run handling:
one run at a time, Cancel (a flag the solver reads within one step), closing the widget or the viewer's window
(the run stops and publishes nothing), and "ready again" once the worker has finished, the solver thread has
stopped and the layers are in.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QTimer

from ._qt_layout import set_progress as _set_progress
from .job import _explain_cancel, _Outcome

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    from napari.qt.threading import GeneratorWorker
    from qtpy.QtCore import QObject
    from qtpy.QtGui import QCloseEvent

__all__ = ["start_worker", "attach_task_bar", "advance_task_bar", "RunLifecycle", "TASK_LIST_DELAY_S"]

#: Seconds a Rate maps run goes before it is put in napari's task list (issue 15). While the list holds a task,
#: napari animates its activity indicator, and every frame repaints the whole window (some 20 a second; with
#: software OpenGL, as under Xvfb, ~15 ms of CPU each on every core): a run of the default size, over in well
#: under this delay, keeps the viewer idle and its solver at headless speed.
TASK_LIST_DELAY_S = 1.5


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

    def _watch_window(self) -> None:
        """Watch the viewer's window: the dock widget gets no close event of its own when the viewer closes.

        Held by weak reference: the widget must not keep a closed viewer alive.
        """
        top = self.window()
        watched = self._watched_window() if self._watched_window is not None else None
        if top is not self and top is not watched:
            if watched is not None:
                watched.removeEventFilter(self)
            top.installEventFilter(self)
            self._watched_window = weakref.ref(top)
        self._window_closed = self._close_seen = False

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        """The viewer's window is hidden by a close (not a minimise): stop the run, publish nothing.

        Parameters
        ----------
        obj : QObject
            The watched object (the viewer's window).
        event : QEvent
            The event.

        Returns
        -------
        bool
            What ``QWidget.eventFilter`` says (False: the event goes on to the window).
        """
        ref = getattr(self, "_watched_window", None)  # Qt may call this during __init__
        if ref is None or obj is not ref():
            return super().eventFilter(obj, event)
        if event.type() == QEvent.Type.Close:
            self._close_seen = True  # accepted or not: a Hide follows only if it was accepted
        elif (event.type() == QEvent.Type.Hide and getattr(self, "_close_seen", False) and not event.spontaneous()
              and not obj.isMinimized()):
            self._window_closed = True
            if self._job is not None:
                self._job.cancel.set()
            self._pending = []
        elif event.type() == QEvent.Type.Show:
            self._window_closed = self._close_seen = False
        return super().eventFilter(obj, event)

    def cancel(self) -> None:
        """Ask the running job to stop (it stops within one solver step; nothing is added)."""
        if self._job is not None:
            self._job.cancel.set()
            self.cancel_button.setEnabled(False)
            self.status_label.setText("Cancelling...")

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        """Closing the widget stops a running job (nothing is added afterwards).

        Parameters
        ----------
        event : QCloseEvent
            The close event (accepted by Qt's handler).
        """
        if self._job is not None:
            self._job.cancel.set()
        super().closeEvent(event)

    def _on_errored(self, exc) -> None:  # a bug in the widget's own generator
        self._outcome = _Outcome("error", message=f"Rate maps failed: {exc}")
        self.status_label.setText(f"Failed: {exc}")

    def _on_aborted(self) -> None:  # napari task list "cancel" (worker.quit)
        if self._job is not None:
            self._job.cancel.set()
        self._outcome = _Outcome("cancelled", message=_explain_cancel())
        self._report(self._outcome)

    def _show_in_task_list(self, worker: Any, desc: str) -> None:
        """The run is still going after ``TASK_LIST_DELAY_S``: put it in napari's task list (main thread)."""
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
