"""The "Rate maps" dock widget: pick chromatin layers and an ROI, run :func:`napari_mollifier.infer_rates`, get maps.

The widget adds no science: it gathers inputs from layers (pixel data, pixel size from the layer's scale, ROI
rasterised through world coordinates), calls ``infer_rates`` once per image slice in a napari ``thread_worker``
(a generator worker that yields progress, shown in the widget's own progress bar; napari's task list only with
``NAPARI_MOLLIFIER_TASK_LIST=1``, ``runner.task_list_enabled``), and turns the returned
:class:`~napari_mollifier.result.RateResult` objects into layers, a per-ROI table and a histogram.

Threading contract: the solver runs in a worker thread on snapshot copies of the input arrays; layers are created
or updated only on the main thread in the worker's ``returned`` handler, and only when every slice succeeded
(cancel or error -> nothing is added). One run at a time: Run is disabled while a run is in flight. Cancel sets a
flag read by the ``cancel`` callback of ``infer_rates``, which stops within one solver step.

The widget is composed of small modules (issue #14): this one wires the controls and the run together;
:mod:`.rate_maps_form` lays out the controls, :mod:`.layer_choices` follows the viewer's layers in the input and ROI
boxes, :mod:`.coefficients_panel` fills the coefficient fields, :mod:`.collect` reads the inputs into a job,
:mod:`.job` (Qt-free) holds the job, the ``infer_rates`` keywords and the worker's generator, :mod:`.runner` the
worker lifecycle (start, cancel, close, ready again), and :mod:`.results` the output layers, table, histogram and
exports.

Module-level imports: numpy, qtpy and napari only. The solver, the models, torch and matplotlib are imported
when the widget is built or run.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QComboBox, QLineEdit, QWidget

from ._qt_layout import set_progress as _set_progress
from .coefficients_panel import fill_coefficients
from .collect import (  # noqa: F401  (re-exported: used by the panels and tests)
    INPUT_LABELS,
    WHOLE_CHOICES,
    WHOLE_IMAGE,
    WHOLE_IMAGE_ALL,
    JobCollector,
    _full_resolution,
    _geometry,
    _unit_name,
    _unit_power,
)
from .eta import EtaEstimate  # noqa: F401  (re-exported: the widget's ETA, tested headless in tests/test_eta.py)
from .eta import format_seconds as _format_seconds
from .job import (  # noqa: F401  (the job of a run, Qt-free; re-exported for scripts and benchmarks)
    _DONE,
    _WARM_DONE,
    DETECTED_NUCLEUS,
    _Job,
    _Outcome,
    _run_job,
    _solver_default,
    solver_kwargs,
    start_warm_up,
)
from .layer_choices import INPUT_HINTS, LayerChoices, roi_candidate  # noqa: F401  (re-exported)
from .rate_maps_form import METHODS, UNCERTAINTY_CHOICES, available_devices, build_form, compact_combo  # noqa: F401
from .results import _META_KEY, OUTPUT_STYLE, ResultsDisplay, output_name, robust_limits  # noqa: F401  (re-exported)
from .runner import TASK_LIST_DELAY_S, RunLifecycle, advance_task_bar, start_worker, task_list_enabled

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from qtpy.QtGui import QShowEvent

__all__ = ["MollifierWidget", "robust_limits", "output_name"]

log = logging.getLogger(__name__)

#: Shortest time between two progress displays (bar, status line, task list): each one repaints the window.
_PROGRESS_EVERY_S = 0.25
#: No progress display before a run has gone on this long: a repaint of a napari window under software OpenGL
#: costs the solver's CPU ~20-40 ms, and a sub-second run shows its result sooner than its progress (issue 15).
_PROGRESS_AFTER_S = 0.8


# --------------------------------------------------------------------------- the widget
class MollifierWidget(ResultsDisplay, RunLifecycle, JobCollector, LayerChoices, QWidget):
    """Dock widget "Rate maps" (npe2 command ``napari-mollifier.make_widget``).

    Public, for scripts and tests: :meth:`run`, :meth:`cancel`, :meth:`export_csv`, :meth:`save_maps`,
    :attr:`worker` (the running napari worker or None), :attr:`last_results` and the signal :attr:`run_done`
    (emitted with ``"ok"``, ``"cancelled"`` or ``"error"`` when a run is over and the widget is ready again).

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose layers are read and to which the result layers are added.
    parent : QWidget, optional
        The Qt parent.
    """

    run_done = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari_mollifier.models import MODELS

        self.viewer = napari_viewer
        self._models = {name: m for name, m in MODELS.items() if getattr(m, "ndim", 2) == 2}
        self.worker = None
        self._job: _Job | None = None
        self._started = 0.0
        self._last_frac = 0.0
        self.last_results: list = []
        self._last_job: _Job | None = None
        self._rows: list[dict] = []
        self._outcome: _Outcome | None = None
        self._worker_finished = False
        self._publishing = False
        self._pending: list = []
        self._added: list = []
        self._connected_layers: set[int] = set()
        self.input_combos: dict[str, QComboBox] = {}
        self.coef_edits: dict[str, QLineEdit] = {}
        self._close_watcher = None
        self._task_bar = None
        self._shown_at = -math.inf
        self._build_ui()
        self._connect_viewer()
        self._refresh_layers()
        self._on_model_changed()
        from ._qt_layout import fit_width

        fit_width(self)
        start_warm_up()
        from .layer_style import warm_colorbar_glyphs

        warm_colorbar_glyphs(self.viewer)  # the result layers' colour-bar text, in idle turns

    # ------------------------------------------------------------------ UI
    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        """Once the controls hold their real text: the dock as wide as they need (see ``fit_width``).

        Parameters
        ----------
        event : QShowEvent
            The show event (passed on to Qt).
        """
        from ._qt_layout import fit_width

        fit_width(self)
        super().showEvent(event)

    def _build_ui(self) -> None:
        build_form(self)  # the controls: rate_maps_form.py

        self.model_combo.currentTextChanged.connect(self._on_model_changed)
        self.radius_auto.toggled.connect(lambda on: self.radius_value.setEnabled(not on))
        self.radius_unit.currentIndexChanged.connect(self._on_radius_unit_changed)
        self.method_combo.currentTextChanged.connect(self._on_method_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.uncertainty_combo.currentTextChanged.connect(lambda *_: self._on_method_changed(
            self.method_combo.currentText()))
        self._on_method_changed(self.method_combo.currentText())

    # ------------------------------------------------------------------ model controls
    def _on_model_changed(self, *_args) -> None:
        model = self._models.get(self.model_combo.currentText())
        if model is None:
            return
        for i in reversed(range(self.inputs_form.rowCount())):
            self.inputs_form.removeRow(i)  # deletes the old combos too
        self.input_combos = {}
        for key in model.inputs:
            combo = QComboBox()
            compact_combo(combo)
            combo.setToolTip(f"Image layer holding {key} (its scale gives the pixel size)")
            combo.currentTextChanged.connect(self._on_input_changed)
            self.input_combos[key] = combo
            self.inputs_form.addRow(INPUT_LABELS.get(key, key), combo)
        self._refresh_layers()
        self._fill_coefficients(force=True)

    def _on_input_changed(self, *_args) -> None:
        self._fill_coefficients()
        self._update_unit()
        self._update_stack_controls()

    def _fill_coefficients(self, force: bool = False) -> None:
        fill_coefficients(self, force)  # coefficients_panel.py

    def _on_method_changed(self, method: str) -> None:
        self.iterations_spin.setEnabled(method != "direct")
        self.uncertainty_combo.setEnabled(method == "direct")
        self.bootstrap_spin.setEnabled(method == "direct" and self.uncertainty_combo.currentText() == "bootstrap")

    def _update_unit(self) -> None:
        ref = self._reference_layer()
        unit = _unit_name(ref) if ref is not None else "px"
        self.radius_unit.setItemText(1, unit if unit != "px" else "px (world)")
        if not self._rows:
            self._set_table_headers(unit)

    def _on_radius_unit_changed(self, index: int) -> None:
        ref = self._reference_layer()
        if ref is None or index == self._radius_unit_index:
            self._radius_unit_index = index
            return
        px = math.sqrt(np.prod(self._pixel_size(ref)))
        value = self.radius_value.value()
        self.radius_value.setValue(value * px if index == 1 else value / px)
        self._radius_unit_index = index

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        """Start a run with the current settings (refused while one is running)."""
        if self.is_running:
            show_info("Rate maps: a run is already in progress; wait for it or press Cancel.")
            return
        from napari_mollifier.errors import MollifierInputError

        try:
            job = self._collect_job()
        except MollifierInputError as exc:
            show_error(f"Rate maps: {exc}")
            self.status_label.setText(f"Not started: {exc}")
            self.run_done.emit("error")
            return
        for note in job.notes:
            show_warning(f"Rate maps: {note}")
        self._watch_window()
        self._start(job)

    def _start(self, job: _Job) -> None:
        self._job = job
        self._outcome = None
        self._worker_finished = False
        self._publishing = False
        self._pending, self._added = [], []
        self._started = time.perf_counter()
        self._last_frac = 0.0
        self._eta = EtaEstimate()
        self._mark_results_stale(True)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        _set_progress(self.progress_bar, 0)
        n = len(job.slices)
        self.status_label.setText(f"Running {job.kwargs['method']} on {n} slice{'s' if n > 1 else ''}...")
        self._shown_at = -math.inf
        self._task_bar = None
        # not in napari's task list (its activity indicator repaints the window ~20 times a second, issue 15):
        # only where switched on (runner.task_list_enabled), and then a run still going after TASK_LIST_DELAY_S
        self.worker = start_worker(
            _run_job, job, desc=None, start=False, yielded=self._on_progress,
            returned=self._on_returned, errored=self._on_errored, aborted=self._on_aborted, finished=self._on_finished,
        )
        self.worker.start()
        if task_list_enabled():
            QTimer.singleShot(int(TASK_LIST_DELAY_S * 1000), lambda w=self.worker, d=f"Rate maps [{job.source_name}]":
                              self._show_in_task_list(w, d))

    # ------------------------------------------------------------------ worker signals (main thread)
    def _on_progress(self, item) -> None:
        if not item:
            return
        frac, info = item
        frac = float(min(max(frac, 0.0), 1.0))
        self._last_frac = frac
        now = time.perf_counter()
        elapsed = now - self._started
        left = self._eta.update(elapsed, frac)
        if elapsed < _PROGRESS_AFTER_S or now - self._shown_at < _PROGRESS_EVERY_S:
            return  # each update repaints the window: a few a second are enough, none in a short run (issue 15)
        self._shown_at = now
        _set_progress(self.progress_bar, int(round(1000 * frac)))
        parts = [str(info.get("stage", "running"))]
        if info.get("n_slices", 1) > 1:
            parts.append(f"slice {info['slice']}/{info['n_slices']}")
        if left is not None:
            parts.append(f"about {_format_seconds(left)} left")
        if "loss" in info:  # the network's training objective: how far the fit is from the data and the model
            parts.append(f"fit error {float(info['loss']):.3g}")
        if "radius" in info:
            parts.append(f"radius {float(info['radius']):g} px")
        self.status_label.setText(" | ".join(parts))
        advance_task_bar(self.worker, frac)

