"""The "Rate maps" dock widget: pick chromatin layers and an ROI, run :func:`napari_mollifier.infer_rates`, get maps.

The widget adds no science: it gathers inputs from layers (pixel data, pixel size from the layer's scale, ROI
rasterised through world coordinates), calls ``infer_rates`` once per image slice in a napari ``thread_worker``
(a generator worker that yields progress; a run still going after ``runner.TASK_LIST_DELAY_S`` shows in napari's
task list), and turns the returned :class:`~napari_mollifier.result.RateResult` objects into layers, a per-ROI
table and a histogram.

Threading contract: the solver runs in a worker thread on snapshot copies of the input arrays; layers are created
or updated only on the main thread in the worker's ``returned`` handler, and only when every slice succeeded
(cancel or error -> nothing is added). One run at a time: Run is disabled while a run is in flight. Cancel sets a
flag read by the ``cancel`` callback of ``infer_rates``, which stops within one solver step.

The widget is composed of small modules (issue #14): this one lays out the controls and follows the viewer's
layers; :mod:`.collect` reads the inputs into a job, :mod:`.job` (Qt-free) holds the job, the ``infer_rates``
keywords and the worker's generator, :mod:`.runner` the worker lifecycle (start, cancel, close, ready again), and
:mod:`.results` the output layers, table, histogram and exports.

Module-level imports: numpy, qtpy and napari only. The solver, the models, torch and matplotlib are imported
when the widget is built or run.
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import solve as _solve
from ._qt_layout import alive as _alive
from ._qt_layout import set_progress as _set_progress
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
from .results import _META_KEY, OUTPUT_STYLE, ResultsDisplay, output_name, robust_limits  # noqa: F401  (re-exported)
from .runner import TASK_LIST_DELAY_S, RunLifecycle, advance_task_bar, start_worker

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from qtpy.QtGui import QShowEvent

__all__ = ["MollifierWidget", "robust_limits", "output_name"]

log = logging.getLogger(__name__)

#: Name fragments used to pre-select an input layer for a model input.
INPUT_HINTS = {
    "phi_h": ("phi_h", "hetero"),
    "phi_e": ("phi_e", "euchro"),
    "density": ("density", "dna", "chromatin"),
}
#: the solver's methods offered here (the autodiff PINN stays a comparison for scripts and the CLI)
METHODS = tuple(m for m in _solve.METHODS if m != "autodiff")
UNCERTAINTY_CHOICES = _solve.UNCERTAINTY_METHODS
#: Shortest time between two progress displays (bar, status line, task list): each one repaints the window.
_PROGRESS_EVERY_S = 0.25


# --------------------------------------------------------------------------- helpers
def available_devices() -> list[str]:
    """Devices torch can use here: always ``cpu``, plus ``cuda`` / ``mps`` when available (best first).

    Returns
    -------
    list of str
        E.g. ``["cuda", "cpu"]``.
    """
    devices = ["cpu"]
    try:
        import torch
    except Exception:  # pragma: no cover - torch is a hard dependency of the solver  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
        return devices
    try:
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            devices.insert(0, "mps")
    except Exception:  # pragma: no cover  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
        pass
    try:
        if torch.cuda.is_available():
            devices.insert(0, "cuda")
    except Exception:  # pragma: no cover  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
        pass
    return devices


def _compact(combo: QComboBox, chars: int = 18) -> None:
    """Make a layer-name combo that does not widen the dock for a long name (the full name is in its list)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)


def _roi_candidate(layer) -> bool:
    """Tell whether the ROI box may pick ``layer`` by itself.

    Labels, or Shapes with a shape; not one marked ``roi_candidate`` False (e.g. the domains' own labels, where
    every domain would become an ROI).
    """
    if layer.metadata.get("roi_candidate", True) is False:
        return False
    if isinstance(layer, Shapes):
        return len(layer.data) > 0
    return isinstance(layer, Labels)


# --------------------------------------------------------------------------- the widget
class MollifierWidget(ResultsDisplay, RunLifecycle, JobCollector, QWidget):
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
        from napari_mollifier.kernels import KERNEL_FAMILIES
        from napari_mollifier.mollifier import BOUNDARIES

        from ._qt_layout import Collapsible, scrolling_body

        outer = scrolling_body(self)

        # inputs: one row per model input (rebuilt when the model changes), then the ROI and stack rows
        self.inputs_box = QGroupBox("Input layers")
        inputs_layout = QVBoxLayout(self.inputs_box)
        inputs_layout.setContentsMargins(6, 6, 6, 6)
        self.inputs_form = QFormLayout()
        roi_form = QFormLayout()
        inputs_layout.addLayout(self.inputs_form)
        inputs_layout.addLayout(roi_form)
        self.roi_combo = QComboBox()
        _compact(self.roi_combo)
        self.roi_combo.setToolTip(
            "Where to compute the rates. Shapes layer: each shape is one ROI. Labels layer: each label is one ROI. "
            "ROIs are mapped through world coordinates, so another scale/translate is fine. The newest Shapes or "
            f"Labels layer is picked when it appears. {WHOLE_IMAGE}: the nucleus is detected (as by the command "
            f"line without --roi) and shown as the Labels layer '{DETECTED_NUCLEUS}'; the whole image is solved "
            f"only where no background is found. {WHOLE_IMAGE_ALL}: every pixel, on purpose."
        )
        self.all_slices = QCheckBox("all slices (one job)")
        self.all_slices.setToolTip("For 3-D/4-D layers: run every 2-D slice (a stack of rate maps) "
                                   "instead of the slice shown in the viewer.")
        roi_form.addRow("ROI", self.roi_combo)
        roi_form.addRow("Stack", self.all_slices)
        outer.addWidget(self.inputs_box)
        from .fractions_panel import FractionsPanel  # raw intensities -> phi_h, phi_e layers

        self.fractions_panel = FractionsPanel(self)
        outer.addWidget(self.fractions_panel)

        # model and solver settings
        box = QGroupBox("Model and solver")
        form = QFormLayout(box)
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("The reaction-diffusion model whose rate is inferred.")
        for name, m in self._models.items():
            self.model_combo.addItem(name)
            self.model_combo.setItemData(self.model_combo.count() - 1, getattr(m, "summary", ""),
                                         Qt.ItemDataRole.ToolTipRole)
        form.addRow("Model", self.model_combo)
        self.coef_box = QWidget()
        self.coef_form = QFormLayout(self.coef_box)
        self.coef_form.setContentsMargins(0, 0, 0, 0)
        form.addRow(self.coef_box)
        self.coef_note = QLabel()
        self.coef_note.setWordWrap(True)
        self.coef_note.setStyleSheet("color: gray; font-size: 9pt")
        form.addRow(self.coef_note)
        from .coefficients_panel import add_estimate_button, add_nucleus_button  # issue 13

        add_estimate_button(self, form)
        add_nucleus_button(self)

        self.method_combo = QComboBox()
        self.method_combo.addItems(METHODS)
        self.method_combo.setToolTip("direct: closed form on mollified data (seconds). "
                                     "network: mollified network fit (about a minute, no uncertainty map).")
        form.addRow("Method", self.method_combo)
        self.uncertainty_combo = QComboBox()
        self.uncertainty_combo.addItems(UNCERTAINTY_CHOICES)
        self.uncertainty_combo.setCurrentText(_solver_default("uncertainty", "propagate"))
        self.uncertainty_combo.setToolTip(
            "How the uncertainty map is made (direct method). propagate: the input noise, estimated from the "
            "image, carried through the calculation (about one more solve; default). bootstrap: the solve repeated "
            "on noise realisations (slow; for checking). none: no uncertainty map.")
        form.addRow("Uncertainty", self.uncertainty_combo)
        self.bootstrap_spin = QSpinBox()
        self.bootstrap_spin.setRange(0, 10_000)
        self.bootstrap_spin.setValue(_solver_default("n_bootstrap", 100))
        self.bootstrap_spin.setToolTip("Noise realisations when the uncertainty is bootstrapped (0 = no uncertainty "
                                       "map whatever the choice above). Fewer is faster.")
        form.addRow("Bootstrap samples", self.bootstrap_spin)
        self.uncertainty_combo.currentTextChanged.connect(lambda *_: self._on_method_changed(
            self.method_combo.currentText()))

        # advanced: collapsed, so that the dock fits a 768 px screen
        self.advanced = Collapsible("Advanced settings")
        adv = QFormLayout(self.advanced.body)
        adv.setContentsMargins(0, 0, 0, 0)
        radius_row = QHBoxLayout()
        self.radius_auto = QCheckBox("auto")
        self.radius_auto.setChecked(True)
        self.radius_auto.setToolTip("Choose the kernel radius from the data (quasi-optimality).")
        self.radius_value = QDoubleSpinBox()
        self.radius_value.setDecimals(3)
        self.radius_value.setMinimumWidth(80)
        self.radius_value.setButtonSymbols(QDoubleSpinBox.ButtonSymbols.NoButtons)
        self.radius_value.setRange(0.0001, 1e6)
        self.radius_value.setValue(10.0)
        self.radius_value.setEnabled(False)
        self.radius_value.setToolTip("Kernel radius: how far the smoothing reaches (in the unit on the right).")
        self.radius_unit = QComboBox()
        self.radius_unit.addItems(["px", "px"])  # second item renamed to the layer's unit
        self.radius_unit.setToolTip("Unit of the kernel radius: pixels or the layer's physical unit.")
        self._radius_unit_index = 0
        radius_row.addWidget(self.radius_auto)
        radius_row.addWidget(self.radius_value, 1)
        radius_row.addWidget(self.radius_unit)
        adv.addRow("Kernel radius", radius_row)
        self.kernel_combo = QComboBox()
        self.kernel_combo.addItems(list(KERNEL_FAMILIES))
        self.kernel_combo.setCurrentText(str(_solver_default("kernel", KERNEL_FAMILIES[0])))
        self.kernel_combo.setToolTip("Shape of the smoothing kernel (poly: polynomial bump; bump: C-infinity bump).")
        adv.addRow("Kernel", self.kernel_combo)
        self.boundary_combo = QComboBox()
        self.boundary_combo.addItems(["mask", *BOUNDARIES])
        self.boundary_combo.setCurrentText(str(_solver_default("boundary", "mask")))
        self.boundary_combo.setToolTip("Edges and missing pixels. mask: use only valid pixels (of the ROI); "
                                       "the others pad the image.")
        adv.addRow("Boundary", self.boundary_combo)
        from napari_mollifier.methods.network import DEFAULT_ITERATIONS
        from napari_mollifier.validation import MAX_ITERATIONS

        self.iterations_spin = QSpinBox()
        self.iterations_spin.setRange(1, MAX_ITERATIONS)  # 0 is refused, as by the API and the CLI
        self.iterations_spin.setValue(DEFAULT_ITERATIONS)
        self.iterations_spin.setToolTip("Most optimiser steps of the network method; it stops earlier once the fit "
                                        "stops improving.")
        adv.addRow("Iterations", self.iterations_spin)
        self.device_combo = QComboBox()
        self.device_combo.addItems(available_devices())
        self.device_combo.setToolTip("Devices available here (torch).")
        adv.addRow("Device", self.device_combo)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.seed_spin.setToolTip("Seeds the uncertainty noise and the network (same seed, same result on cpu)")
        adv.addRow("Seed", self.seed_spin)
        form.addRow(self.advanced)
        outer.addWidget(box)

        # run
        run_row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Infer the rate map (in the background; the viewer stays usable).")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the run; nothing is added.")
        self.cancel_button.setEnabled(False)
        run_row.addWidget(self.run_button, 1)
        run_row.addWidget(self.cancel_button)
        outer.addLayout(run_row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%p%")
        outer.addWidget(self.progress_bar)
        self.status_label = QLabel("Ready.")
        self.status_label.setWordWrap(True)
        outer.addWidget(self.status_label)
        self.device_label = QLabel("Ran on: -")
        outer.addWidget(self.device_label)

        outer.addWidget(self._build_results())  # table, buttons, histogram: results.py
        outer.addStretch(1)
        self._set_table_headers("px")

        self.model_combo.currentTextChanged.connect(self._on_model_changed)
        self.radius_auto.toggled.connect(lambda on: self.radius_value.setEnabled(not on))
        self.radius_unit.currentIndexChanged.connect(self._on_radius_unit_changed)
        self.method_combo.currentTextChanged.connect(self._on_method_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self._on_method_changed(self.method_combo.currentText())

    # ------------------------------------------------------------------ layers in the combos
    def _connect_viewer(self) -> None:
        ev = self.viewer.layers.events
        ev.inserted.connect(self._refresh_layers)
        ev.removed.connect(self._refresh_layers)
        ev.moved.connect(self._refresh_layers)
        from .layer_style import restyle_on_insert

        restyle_on_insert(self.viewer)  # maps reopened from the plugin's files show their titled colour bar

    def _watch(self, layer) -> None:
        if id(layer) not in self._connected_layers:
            self._connected_layers.add(id(layer))
            layer.events.name.connect(self._refresh_layers)
            if isinstance(layer, Shapes):
                ref = weakref.ref(layer)
                layer.events.data.connect(lambda *_a: (ly := ref()) is not None and self._on_shapes_drawn(ly))

    def _input_layers(self) -> list:
        return [ly for ly in self.viewer.layers
                if isinstance(ly, Image) and not ly.rgb and _META_KEY not in ly.metadata]

    def _refresh_layers(self, *_args) -> None:
        for layer in self.viewer.layers:
            self._watch(layer)
        image_layers = self._input_layers()
        images = [ly.name for ly in image_layers]
        seen = getattr(self, "_known_images", None)
        self._known_images = {id(ly) for ly in image_layers}
        for key, combo in self.input_combos.items():
            self._fill(combo, images, self._guess_input(key, images))
            if seen is not None:  # a new layer made for this input (e.g. the domains' phi_h): the hand-off
                tagged = [ly.name for ly in image_layers if id(ly) not in seen and ly.metadata.get("field") == key]
                if tagged and combo.currentText() != tagged[-1]:
                    combo.setCurrentText(tagged[-1])
        roi_layers = [ly for ly in self.viewer.layers if isinstance(ly, (Shapes, Labels))]
        rois = [WHOLE_IMAGE, WHOLE_IMAGE_ALL] + [ly.name for ly in roi_layers]
        known = getattr(self, "_known_rois", set())
        self._known_rois = {id(ly) for ly in roi_layers}
        fresh = [ly for ly in roi_layers if id(ly) not in known and _roi_candidate(ly)]
        self._fill(self.roi_combo, rois, WHOLE_IMAGE)
        if fresh:  # a Shapes or Labels layer appeared (or the widget opened next to one): it is the ROI
            self._select_roi(fresh[-1].name)
        self._update_stack_controls()

    def _select_roi(self, name: str) -> None:
        if self.roi_combo.findText(name) >= 0 and self.roi_combo.currentText() != name:
            self.roi_combo.setCurrentText(name)

    def _on_shapes_drawn(self, layer) -> None:
        """Make a Shapes layer the ROI when a shape is drawn in it while the ROI is the whole image."""
        if self.roi_combo.currentText() in WHOLE_CHOICES and layer in self.viewer.layers and _roi_candidate(layer):
            self._select_roi(layer.name)

    @staticmethod
    def _fill(combo: QComboBox, names: list[str], default: str | None) -> None:
        current = combo.currentText()
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(names)
        pick = current if current in names else default
        if pick in names:
            combo.setCurrentIndex(names.index(pick))
        combo.blockSignals(False)
        if combo.currentText() != current:  # announce a changed selection once
            combo.currentTextChanged.emit(combo.currentText())

    def _guess_input(self, key: str, names: list[str]) -> str | None:
        for name in names:
            if self.viewer.layers[name].metadata.get("field") == key:
                return name
        for hint in INPUT_HINTS.get(key, (key,)):
            for name in names:
                if hint in name.lower():
                    return name
        order = list(self.input_combos)
        pos = order.index(key) if key in order else 0
        return names[pos] if pos < len(names) else (names[0] if names else None)

    def _layer(self, name: str | None):
        if not name or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def _reference_layer(self):
        """Return the first input layer: its grid (scale, units...) is the one of the outputs."""
        for combo in self.input_combos.values():
            layer = self._layer(combo.currentText())
            if layer is not None:
                return layer
        return None

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
            _compact(combo)
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
        """Coefficient editors of the model: from the layer's metadata when it names this model, else defaults.

        Refilled only when the model or the reference input layer changes (user edits survive other events).
        """
        model = self._models.get(self.model_combo.currentText())
        if model is None:
            return
        ref = self._reference_layer()
        key = (model.name, id(ref), ref.name if ref is not None else None)
        if not force and key == getattr(self, "_coef_key", None):
            return
        self._coef_key = key
        values: dict[str, float | None] = dict(model.params())
        origin = "model defaults (the reference data's box units)"
        unit = _unit_name(ref) if ref is not None else "px"
        from_meta: set[str] = set()
        if ref is not None:
            meta = ref.metadata
            if meta.get("model") == model.name and isinstance(meta.get("params"), dict):
                known = {k: float(v) for k, v in meta["params"].items() if k in values}
                if known:
                    values.update(known)
                    from_meta = set(known)
                    origin = f"metadata of layer {ref.name!r}"
                    if meta.get("params_origin"):
                        origin += f" ({meta['params_origin']})"
        blank = []
        if unit != "px":
            # the defaults of coefficients with a length are in the reference data's box units: never combine
            # them with a physical pixel size (issue: a meaningless map). Left to the user.
            for k, coef in model.coefficients.items():
                if getattr(coef, "length_power", 0) and k not in from_meta:
                    values[k] = None
                    blank.append(k)
        while self.coef_form.rowCount():
            self.coef_form.removeRow(0)
        self.coef_edits = {}
        for key, value in values.items():
            coef = model.coefficients[key]
            edit = QLineEdit("" if value is None else f"{value:.6g}")
            power = getattr(coef, "length_power", 0)
            dim = _unit_power(unit, power)
            suffix = f" [{dim}]" if dim else ""
            if value is None:
                edit.setPlaceholderText(f"enter in {dim}")
            edit.setToolTip(f"{getattr(coef, 'doc', '')}{suffix}")
            self.coef_edits[key] = edit
            self.coef_form.addRow(f"{key}{suffix}", edit)
        note = f"Coefficients from {origin}; lengths in the layer's unit ({unit})."
        if blank:
            names = ", ".join(blank)
            defaults = ", ".join(f"{k} = {model.coefficients[k].default:g}" for k in blank)
            note = (f"Enter {names} for {unit}: the model's default ({defaults}) is in the reference data's box "
                    f"units, not {unit}, and layer {ref.name!r} is in {unit}. "
                    "Use a calibrated value for your cells (see the docs on coefficients)."
                    + (f" Other coefficients: {origin}." if len(blank) < len(values) else ""))
        self.coef_note.setText(note)
        from .coefficients_panel import apply_units_policy  # issue 13: no box-unit l2 on um layers

        apply_units_policy(self, model, unit, origin.startswith("model defaults"))

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

    def _update_stack_controls(self) -> None:
        if not _alive(self.all_slices):
            return
        ref = self._reference_layer()
        self.all_slices.setEnabled(ref is not None and ref.ndim > 2)

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
        # not in napari's task list yet: a short run never is (its activity indicator would repaint the window
        # ~20 times a second, issue 15); a run still going after TASK_LIST_DELAY_S is put there
        self.worker = start_worker(
            _run_job, job, desc=None, start=False, yielded=self._on_progress,
            returned=self._on_returned, errored=self._on_errored, aborted=self._on_aborted, finished=self._on_finished,
        )
        self.worker.start()
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
        if now - self._shown_at < _PROGRESS_EVERY_S:
            return  # each update repaints the window: a few a second are enough (issue 15)
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

