"""The "Rate maps" dock widget: pick chromatin layers and an ROI, run :func:`napari_mollifier.infer_rates`, get maps.

The widget adds no science: it gathers inputs from layers (pixel data, pixel size from the layer's scale, ROI
rasterised through world coordinates), calls ``infer_rates`` once per image slice in a napari ``thread_worker``
(a generator worker that yields progress, so the run shows in napari's task list), and turns the returned
:class:`~napari_mollifier.result.RateResult` objects into layers, a per-ROI table and a histogram.

Threading contract: the solver runs in a worker thread on snapshot copies of the input arrays; layers are created
or updated only on the main thread in the worker's ``returned`` handler, and only when every slice succeeded
(cancel or error -> nothing is added). One run at a time: Run is disabled while a run is in flight. Cancel sets a
flag read by the ``cancel`` callback of ``infer_rates``, which stops within one solver step.

Module-level imports: numpy, qtpy and napari only. The solver, the models, torch and matplotlib are imported
when the widget is built or run.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import time
import warnings
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .eta import EtaEstimate  # noqa: F401  (re-exported: the widget's ETA, tested headless in tests/test_eta.py)
from .job import (  # noqa: F401  (the job of a run, Qt-free; re-exported for scripts and benchmarks)
    _DONE,
    _WARM_DONE,
    _background_fraction,
    _explain_cancel,
    _Job,
    _Outcome,
    _run_job,
    _solver_default,
    solver_kwargs,
    start_warm_up,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["MollifierWidget", "robust_limits", "output_name"]

log = logging.getLogger(__name__)

WHOLE_IMAGE = "(whole image)"
#: Friendly labels of the model inputs (any other input is shown by its key).
INPUT_LABELS = {
    "phi_h": "Heterochromatin (phi_h)",
    "phi_e": "Euchromatin (phi_e)",
    "density": "Density",
    "u": "Field u",
    "m": "Source m",
}
#: Name fragments used to pre-select an input layer for a model input.
INPUT_HINTS = {
    "phi_h": ("phi_h", "hetero"),
    "phi_e": ("phi_e", "euchro"),
    "density": ("density", "dna", "chromatin"),
}
#: Output layers: kind -> (colormap, visible, symmetric contrast limits).
OUTPUT_STYLE = {
    "rate": ("viridis", True, False),
    "uncertainty": ("magma", False, False),  # hidden under the rate map: switch it on in the layer list
    # the residual stays shown: hidden, software OpenGL (swrast) crashed when the rate layer above it was
    # deleted during a later run (test_widget_reliability::test_layer_deleted_while_running), cause not found
    "residual": ("PiYG", True, True),
    "smoothed": ("gray", False, False),
}
METHODS = ("direct", "network")
UNCERTAINTY_CHOICES = ("propagate", "bootstrap", "none")
_META_KEY = "mollifier_output"
#: Pause between two output-layer additions: lets the viewer repaint and handle input in between.
_PUBLISH_GAP_MS = 25


# --------------------------------------------------------------------------- helpers (no Qt)
def output_name(kind: str, source_name: str, field_name: str | None = None) -> str:
    """Name of an output layer: ``"rate [<image>]"``, ``"phi_e smoothed [<phi_e's own image>]"``..."""
    prefix = f"{field_name} smoothed" if kind == "smoothed" else kind
    return f"{prefix} [{source_name}]"


def robust_limits(values: np.ndarray, symmetric: bool = False) -> tuple[float, float]:
    """Contrast limits from the 2nd-98th percentiles of the finite values (symmetric about 0 if asked)."""
    finite = np.asarray(values)[np.isfinite(values)]
    if finite.size == 0:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    if symmetric:
        half = float(np.percentile(np.abs(finite), 98))
        if not half > 0:
            half = float(np.max(np.abs(finite))) or 1.0
        return (-half, half)
    lo, hi = (float(v) for v in np.percentile(finite, [2, 98]))
    if not hi > lo:
        lo, hi = float(finite.min()), float(finite.max())
    if not hi > lo:
        pad = abs(lo) * 1e-3 or 1e-3
        lo, hi = lo - pad, hi + pad
    return (lo, hi)


def available_devices() -> list[str]:
    """Devices torch can use here: always ``cpu``, plus ``cuda`` / ``mps`` when available (best first)."""
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


def _unit_name(layer) -> str:
    units = getattr(layer, "units", None)
    if not units:
        return "px"
    text = str(units[-1])
    short = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "pixel": "px", "meter": "m"}
    return short.get(text, text)


def _unit_power(unit: str, power: int) -> str:
    """``"µm²"``, ``"µm"``, ``"px²"``... ('' for a dimensionless coefficient)."""
    if not power:
        return ""
    sup = {1: "", 2: "²", 3: "³"}.get(int(power), f"^{int(power)}")
    return f"{unit}{sup}"


def _geometry(layer) -> dict:
    """Keyword arguments that put a new layer exactly on ``layer``'s grid (scale, translate, units...)."""
    kw: dict[str, Any] = {
        "scale": tuple(float(s) for s in layer.scale),
        "translate": tuple(float(t) for t in layer.translate),
        "rotate": np.array(layer.rotate, dtype=float),
        "shear": np.array(layer.shear, dtype=float),
        "affine": np.array(layer.affine.affine_matrix, dtype=float),
    }
    if hasattr(layer, "axis_labels"):
        kw["axis_labels"] = tuple(layer.axis_labels)
    if hasattr(layer, "units"):
        kw["units"] = tuple(str(u) for u in layer.units)
    return kw


def _compact(combo: QComboBox, chars: int = 18) -> None:
    """A layer-name combo that does not widen the dock for a long name (the full name is in its list)."""
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)


def _roi_candidate(layer) -> bool:
    """A layer the ROI box may pick by itself: Labels, or Shapes with a shape; not one marked ``roi_candidate``
    False (e.g. the domains' own labels, where every domain would become an ROI).
    """
    if layer.metadata.get("roi_candidate", True) is False:
        return False
    if isinstance(layer, Shapes):
        return len(layer.data) > 0
    return isinstance(layer, Labels)


def _layer_units(layer) -> tuple[str, ...]:
    """The (y, x) units of a layer as text (``("pixel", "pixel")`` where napari has none)."""
    units = getattr(layer, "units", None)
    if not units:
        return ("pixel", "pixel")
    return tuple(str(u) for u in units)[-2:]


def _check_units(layers: dict) -> None:
    """Refuse inputs whose units disagree, or a hand-off layer that lost its physical unit (names layer and fix)."""
    from napari_mollifier.errors import MollifierInputError

    items = list(layers.values())
    ref = items[0]
    for layer in items:
        scale = tuple(float(v) for v in np.asarray(layer.scale, dtype=float)[-2:])
        if layer.metadata.get("mollifier_domains") and set(_layer_units(layer)) == {"pixel"} and scale != (1.0, 1.0):
            raise MollifierInputError(
                f"layer {layer.name!r} (from Heterochromatin domains) has pixels of {scale[-1]:g} but no unit: the "
                "coefficients and the radius would be read in the wrong unit. Fix: set its units to micrometres "
                "(layer.units = ('um', 'um') in the console) or rerun Heterochromatin domains"
            )
        if _layer_units(layer) != _layer_units(ref):
            raise MollifierInputError(
                f"layers {ref.name!r} ({'/'.join(_layer_units(ref))}) and {layer.name!r} "
                f"({'/'.join(_layer_units(layer))}) have different units: the fields must be on the same grid. "
                f"Fix: set the units of {layer.name!r} to those of {ref.name!r}, or open both with the "
                "napari-mollifier reader"
            )


def _physical_shift(layer, shift) -> np.ndarray:
    """``rotate @ shear @ scale @ shift``: how far ``shift`` data pixels move ``layer``'s translate.

    From the public transforms: world = affine(linear @ x + translate), so the shift in translate units is
    ``inv(affine.linear) @ (world(shift) - world(0))``.
    """
    shift = np.asarray(shift, dtype=float)
    w1 = np.asarray(layer.data_to_world(shift), dtype=float)
    w0 = np.asarray(layer.data_to_world(np.zeros_like(shift)), dtype=float)
    lin = np.asarray(layer.affine.linear_matrix, dtype=float)
    return np.linalg.solve(lin, w1 - w0)


# --------------------------------------------------------------------------- the widget
class MollifierWidget(QWidget):
    """Dock widget "Rate maps" (npe2 command ``napari-mollifier.make_widget``).

    Public, for scripts and tests: :meth:`run`, :meth:`cancel`, :meth:`export_csv`, :attr:`worker` (the
    running napari worker or None), :attr:`last_results` and the signal :attr:`run_done` (emitted with
    ``"ok"``, ``"cancelled"`` or ``"error"`` when a run is over and the widget is ready again).
    """

    run_done = Signal(str)

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None):
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
        self._watched_window = None
        self._window_closed = False
        self._build_ui()
        self._connect_viewer()
        self._refresh_layers()
        self._on_model_changed()
        from ._qt_layout import fit_width

        fit_width(self)
        start_warm_up()

    # ------------------------------------------------------------------ UI
    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Once the controls hold their real text: the dock as wide as they need (see ``fit_width``)."""
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
            "Labels layer is picked when it appears."
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

        # results
        self.results_box = res_box = QGroupBox("Per-ROI rate")
        res_layout = QVBoxLayout(res_box)
        self.table = QTableWidget(0, 5)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(90)
        self.table.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.table.setToolTip("Rate statistics per ROI (area in the layer's unit squared).")
        res_layout.addWidget(self.table)
        buttons = QHBoxLayout()
        self.export_button = QPushButton("Export CSV...")
        self.export_button.setToolTip("Write the per-ROI table (all statistics) to a CSV file.")
        self.export_button.setEnabled(False)
        self.save_button = QPushButton("Save maps...")
        self.save_button.setToolTip("Save the rate (and uncertainty) maps as OME-TIFF with pixel size, colormap, "
                                    "contrast limits and provenance (reopen with File > Open).")
        self.save_button.setEnabled(False)
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.save_button)
        res_layout.addLayout(buttons)
        self._build_histogram(res_layout)
        outer.addWidget(res_box)
        outer.addStretch(1)
        self._set_table_headers("px")

        self.model_combo.currentTextChanged.connect(self._on_model_changed)
        self.radius_auto.toggled.connect(lambda on: self.radius_value.setEnabled(not on))
        self.radius_unit.currentIndexChanged.connect(self._on_radius_unit_changed)
        self.method_combo.currentTextChanged.connect(self._on_method_changed)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(self._export_dialog)
        self.save_button.clicked.connect(self._save_dialog)
        self._on_method_changed(self.method_combo.currentText())

    def _build_histogram(self, layout) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.2), dpi=90, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(170)
        self.axes = self.figure.add_subplot(111)
        self._style_axes()
        self.canvas.setToolTip("Histogram of the rate in each ROI (0.5-99.5 % range).")
        self.canvas.setVisible(False)  # no empty axes before the first run
        layout.addWidget(self.canvas)

    def _style_axes(self) -> None:
        """Axis labels, in the colours of napari's theme (falls back to matplotlib's defaults)."""
        ax = self.axes
        ax.set_xlabel(getattr(self, "_rate_title", "rate"))  # "relative rate (λ / median)": relative.py
        ax.set_ylabel("pixels")
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_size(8)
        ax.yaxis.label.set_size(8)
        try:
            from napari.utils.theme import get_theme

            theme = get_theme(self.viewer.theme)
            bg, text = theme.background.as_hex(), theme.text.as_hex()
        except Exception:  # pragma: no cover - unknown theme  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
            return
        self.figure.set_facecolor(bg)
        ax.set_facecolor(bg)
        for spine in ax.spines.values():
            spine.set_color(text)
        ax.tick_params(colors=text, which="both")
        ax.xaxis.label.set_color(text)
        ax.yaxis.label.set_color(text)
        ax.title.set_color(text)

    # ------------------------------------------------------------------ layers in the combos
    def _connect_viewer(self) -> None:
        ev = self.viewer.layers.events
        ev.inserted.connect(self._refresh_layers)
        ev.removed.connect(self._refresh_layers)
        ev.moved.connect(self._refresh_layers)

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
        rois = [WHOLE_IMAGE] + [ly.name for ly in roi_layers]
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
        """A shape drawn in a Shapes layer while the ROI is the whole image: that layer becomes the ROI."""
        if self.roi_combo.currentText() == WHOLE_IMAGE and layer in self.viewer.layers and _roi_candidate(layer):
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
        """The first input layer: its grid (scale, units...) is the one of the outputs."""
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

    def _pixel_size(self, layer) -> tuple[float, float]:
        return tuple(float(s) for s in np.asarray(layer.scale, dtype=float)[-2:])

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
    @property
    def is_running(self) -> bool:
        return self.worker is not None

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

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt override
        """The viewer's window is hidden by a close (not a minimise): stop the run, publish nothing."""
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
        self.progress_bar.setValue(0)
        n = len(job.slices)
        self.status_label.setText(f"Running {job.kwargs['method']} on {n} slice{'s' if n > 1 else ''}...")
        worker = thread_worker(
            _run_job, progress={"total": 0, "desc": f"Rate maps [{job.source_name}]"}, start_thread=False
        )(job)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    def cancel(self) -> None:
        """Ask the running job to stop (it stops within one solver step; nothing is added)."""
        if self._job is not None:
            self._job.cancel.set()
            self.cancel_button.setEnabled(False)
            self.status_label.setText("Cancelling...")

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Closing the widget stops a running job (nothing is added afterwards)."""
        if self._job is not None:
            self._job.cancel.set()
        super().closeEvent(event)

    def _collect_job(self) -> _Job:
        """Snapshot the inputs (main thread). Raises MollifierInputError with a fix for bad settings."""
        from napari_mollifier.errors import MollifierInputError

        model = self._models.get(self.model_combo.currentText())
        if model is None:
            raise MollifierInputError("choose a model")
        layers = {}
        for key, combo in self.input_combos.items():
            layer = self._layer(combo.currentText())
            if layer is None:
                raise MollifierInputError(
                    f"choose an image layer for {INPUT_LABELS.get(key, key)} (open one, e.g. File > Open Sample > "
                    "napari-mollifier > Synthetic nucleus)"
                )
            layers[key] = layer
        if len({id(ly) for ly in layers.values()}) < len(layers):
            raise MollifierInputError("the input layers must be different images (one per field)")
        ref = next(iter(layers.values()))
        data = {key: _full_resolution(layer) for key, layer in layers.items()}
        shape = tuple(int(n) for n in next(iter(data.values())).shape)
        for key, layer in layers.items():
            if layer.ndim < 2:
                raise MollifierInputError(f"layer {layer.name!r} is {layer.ndim}-D: a 2-D image (or a stack) is needed")
            if tuple(data[key].shape) != shape:
                raise MollifierInputError(
                    f"layers {ref.name!r} {shape} and {layer.name!r} {tuple(data[key].shape)} "
                    "differ in shape: the fields must be on the same pixel grid"
                )
            if not (np.allclose(layer.scale, ref.scale) and np.allclose(layer.translate, ref.translate)):
                raise MollifierInputError(
                    f"layers {ref.name!r} and {layer.name!r} have different scale/translate: the fields must be on "
                    f"the same pixel grid. Fix: give {layer.name!r} the scale and translate of {ref.name!r} (layer "
                    "properties), or resample it onto that grid"
                )
        _check_units(layers)
        lead_shape, shape2d = shape[:-2], shape[-2:]
        if lead_shape and self.all_slices.isEnabled() and self.all_slices.isChecked():
            leads = [tuple(int(i) for i in idx) for idx in np.ndindex(*lead_shape)]
            out_lead = lead_shape
        elif lead_shape:
            point = np.asarray(ref.world_to_data(self.viewer.dims.point), dtype=float)[: len(lead_shape)]
            idx = tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(point, lead_shape))
            leads = [idx]
            out_lead = (1,) * len(lead_shape)
        else:
            leads = [()]
            out_lead = ()

        from .relative import with_record
        from .rois import roi_labels
        from .solver_threads import widget_solver_threads

        # ROI (main thread: it reads layers)
        roi_layer = self._layer(self.roi_combo.currentText()) if self.roi_combo.currentText() != WHOLE_IMAGE else None
        notes: list[str] = []
        roi_cache = None
        slices = []
        for lead in leads:
            fields = {}
            for key, layer in layers.items():
                arr = np.array(data[key][lead] if lead else data[key], dtype=np.float64, copy=True)
                finite = arr[np.isfinite(arr)]
                if finite.size and float(finite.max()) == float(finite.min()):
                    raise MollifierInputError(
                        f"layer {layer.name!r} is constant (every pixel = {float(finite[0]):g})"
                        + (f" in slice {lead}" if lead else "")
                        + ": it carries no information on the rate; choose the layer with the chromatin image"
                    )
                bad = int(arr.size - finite.size)
                if bad:
                    notes.append(
                        f"layer {layer.name!r} has {bad} NaN/inf pixel{'s' if bad > 1 else ''}"
                        + (f" in slice {lead}" if lead else "")
                        + ": they are treated as missing data (no rate there, and the kernel does not use them)"
                    )
                fields[key] = arr
            fields = with_record(fields, layers, "mollifier_fractions")  # converted layers: relative (issue 13)
            roi = None
            if roi_layer is not None:
                if isinstance(roi_layer, Shapes) and roi_cache is not None:
                    roi = roi_cache
                else:
                    roi, roi_notes = roi_labels(roi_layer, ref, shape2d, leading=lead)
                    notes.extend(roi_notes)
                    roi_cache = roi
            slices.append((lead, fields, roi))
        if roi_layer is None and slices:
            share = _background_fraction(slices[0][1])
            if share > 0.2:
                notes.append(
                    f"whole-image run: about {100 * share:.0f} % of {ref.name!r} looks like background (no "
                    "chromatin signal), where the rates are noise. Draw a Shapes ROI around the nucleus (or choose "
                    "a Labels layer as ROI) to map the nucleus only"
                )

        params = {}
        for key, edit in self.coef_edits.items():
            if edit.text().strip().lower() == "auto":  # estimated by the run (issue 13 units policy)
                continue
            if not edit.text().strip():
                dim = _unit_power(_unit_name(ref), model.coefficients[key].length_power) or "its unit"
                raise MollifierInputError(
                    f"enter the coefficient {key!r} (in {dim}): "
                    "its default is in the reference data's box units, which do not apply to a layer in "
                    f"{_unit_name(ref)}. Use a value calibrated for your cells.")
            try:
                params[key] = float(edit.text())
            except ValueError:
                raise MollifierInputError(f"coefficient {key!r} must be a number, got {edit.text()!r}") from None
        pixel_size = self._pixel_size(ref)
        if _unit_name(ref) == "px" and all(v == 1.0 for v in pixel_size):
            notes.append(
                f"layer {ref.name!r} has no physical pixel size (scale 1, no unit), so 1 px is used: the kernel "
                "radius and the coefficients with a length (e.g. l2) are in pixels. To work in micrometres, open "
                "the file with the napari-mollifier reader (it reads the pixel size) or set the layer's scale."
            )
        if self.radius_auto.isChecked():
            radius: Any = "auto"
        else:
            radius = float(self.radius_value.value())
            if self.radius_unit.currentIndex() == 1:
                radius = radius / math.sqrt(np.prod(pixel_size))
        kwargs = solver_kwargs(
            model=model.name,
            params=params,
            pixel_size=pixel_size,
            radius=radius,
            method=self.method_combo.currentText(),
            device=self.device_combo.currentText(),
            seed=int(self.seed_spin.value()),
            kernel=self.kernel_combo.currentText(),
            boundary=self.boundary_combo.currentText(),
            unit=_unit_name(ref),
            iterations=int(self.iterations_spin.value()),
            n_bootstrap=int(self.bootstrap_spin.value()),
            uncertainty=self.uncertainty_combo.currentText(),
        )
        from napari_mollifier.validation import run_time_note  # estimate before starting (issue 17)

        from .coefficients_panel import plausibility_notes  # issue 13

        counts = {k: kwargs[k] for k in ("radius", "n_bootstrap", "method", "iterations") if k in kwargs}
        if kwargs.get("uncertainty", "bootstrap") != "bootstrap":
            counts["n_bootstrap"] = 0  # the propagated uncertainty costs about one more solve
        estimate = run_time_note(next(iter(slices[0][1].values())).shape, n_runs=len(slices), **counts)
        notes += [estimate] if estimate else []
        notes.extend(plausibility_notes(slices, pixel_size, _unit_name(ref)))
        geometry = _geometry(ref)
        if out_lead and lead_shape and out_lead != lead_shape:  # current slice: put the output on that slice
            shift = np.zeros(ref.ndim)
            shift[: len(leads[0])] = leads[0]
            geometry["translate"] = tuple(np.asarray(geometry["translate"]) + _physical_shift(ref, shift))
        return _Job(
            source_name=ref.name,
            input_names={k: ly.name for k, ly in layers.items()},
            slices=slices,
            out_lead_shape=out_lead,
            geometry=geometry,
            kwargs=kwargs,
            unit=_unit_name(ref),
            roi_name=roi_layer.name if roi_layer is not None else None,
            notes=notes,
            threads=widget_solver_threads(),
        )

    # ------------------------------------------------------------------ worker signals (main thread)
    def _on_progress(self, item) -> None:
        if not item:
            return
        frac, info = item
        frac = float(min(max(frac, 0.0), 1.0))
        self._last_frac = frac
        self.progress_bar.setValue(int(round(1000 * frac)))
        elapsed = time.perf_counter() - self._started
        parts = [str(info.get("stage", "running"))]
        if info.get("n_slices", 1) > 1:
            parts.append(f"slice {info['slice']}/{info['n_slices']}")
        left = self._eta.update(elapsed, frac)
        if left is not None:
            parts.append(f"about {_format_seconds(left)} left")
        if "loss" in info:  # the network's training objective: how far the fit is from the data and the model
            parts.append(f"fit error {float(info['loss']):.3g}")
        if "radius" in info:
            parts.append(f"radius {float(info['radius']):g} px")
        self.status_label.setText(" | ".join(parts))
        pbar = getattr(self.worker, "pbar", None)
        if pbar is not None:
            try:
                if pbar.total != 1000:
                    pbar.total = 1000
                step = int(round(1000 * frac)) - int(pbar.n)
                if step > 0:
                    pbar.update(step)
            except Exception:  # pragma: no cover - the activity dock is cosmetic  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
                pass

    def _on_returned(self, outcome: _Outcome) -> None:
        if self._window_closed:  # the viewer closed during the run: nothing is published into it
            outcome = _Outcome("cancelled", message=_explain_cancel())
        self._outcome = outcome
        if outcome.status == "ok" and self._job is not None:
            # add/update the layers one per event-loop turn, so the viewer repaints in between (short stalls)
            try:
                self._pending = self._publish_steps(self._job, outcome.results)
            except Exception as exc:  # noqa: BLE001 - report, keep the viewer usable
                self._publish_failed(exc)
                return
            self._publishing = True
            QTimer.singleShot(_PUBLISH_GAP_MS, self._publish_next)
            return
        self._report(outcome)

    def _report(self, outcome: _Outcome) -> None:
        if outcome.status == "cancelled":
            show_info(outcome.message)
            self.status_label.setText("Cancelled: nothing was added.")
        elif outcome.status == "error":
            if outcome.details:
                log.error("napari-mollifier run failed:\n%s", outcome.details)
            show_error(outcome.message)
            self.status_label.setText(outcome.message)

    def _publish_next(self) -> None:
        if self._window_closed:
            self._pending = []
        if self._pending:
            step = self._pending.pop(0)
            try:
                follow_up = step()
            except Exception as exc:  # noqa: BLE001
                self._publish_failed(exc)
                return
            if callable(follow_up):  # e.g. show a layer added hidden: in a turn of its own
                self._pending.insert(0, follow_up)
            if self._pending:
                QTimer.singleShot(_PUBLISH_GAP_MS, self._publish_next)
                return
        self._publishing = False
        self._maybe_done()

    def _publish_failed(self, exc: Exception) -> None:
        log.exception("napari-mollifier: adding the result layers failed")
        for layer in self._added:  # no partial result: take back the layers this run added
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._pending, self._added, self._publishing = [], [], False
        self._outcome = _Outcome("error", message=f"Rate maps: could not add the result layers: {exc}")
        self._report(self._outcome)
        self._maybe_done()

    def _on_errored(self, exc) -> None:  # a bug in the widget's own generator
        self._outcome = _Outcome("error", message=f"Rate maps failed: {exc}")
        self.status_label.setText(f"Failed: {exc}")

    def _on_aborted(self) -> None:  # napari task list "cancel" (worker.quit)
        if self._job is not None:
            self._job.cancel.set()
        self._outcome = _Outcome("cancelled", message=_explain_cancel())
        self._report(self._outcome)

    def _on_finished(self) -> None:
        self._worker_finished = True
        self._maybe_done()

    def _mark_results_stale(self, stale: bool) -> None:
        """During a run the table and histogram still show the previous run: say so, and grey them out."""
        if not _alive(self.results_box):
            return
        has_rows = bool(self._rows)
        title = f"Per-ROI {getattr(self, '_rate_title', 'rate')}"
        self.results_box.setTitle(f"{title} (previous run)" if stale and has_rows else title)
        self.table.setEnabled(not stale)
        self.canvas.setEnabled(not stale)

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
        self.worker = None
        self._job = None
        self._pending, self._added = [], []
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self._mark_results_stale(False)
        if status != "ok":
            self.progress_bar.setValue(0)
        self.run_done.emit(status)

    # ------------------------------------------------------------------ outputs
    def _publish_steps(self, job: _Job, results: list) -> list:
        """The main-thread steps that create or update the output layers, then the table and histogram."""
        lead = job.out_lead_shape

        def stack(arrays):
            arr = np.stack(arrays) if len(arrays) > 1 or lead else arrays[0]
            return arr.reshape(lead + arr.shape[-2:]) if lead else arr

        prov = dict(results[0].provenance)
        widget_info = {
            "source_layers": dict(job.input_names),
            "roi_layer": job.roi_name,
            "slices": [list(s[0]) for s in job.slices] if lead else None,
        }
        meta_prov = {**prov, "widget": widget_info}
        if len(results) > 1:
            meta_prov["per_slice"] = [r.provenance for r in results]
        keys = [k for k in results[0].fields if all(k in r.fields for r in results)]
        # bottom to top: the smoothed fields (hidden), residual, uncertainty, and the rate on top
        outputs = [("smoothed", k, stack([r.fields[k] for r in results])) for k in keys]
        from .relative import shown_maps  # the relative map where the level is relative (issue 13)

        shown = [shown_maps(r) for r in results]
        outputs += [
            ("residual", None, stack([r.residual for r in results])),
            ("uncertainty", None, stack([u for _, u in shown])),
            ("rate", None, stack([m for m, _ in shown])),
        ]
        steps = []
        for kind, field_name, data in outputs:
            own = job.input_names.get(field_name, job.source_name) if kind == "smoothed" else job.source_name
            name = output_name(kind, own, field_name)
            if kind == "uncertainty" and not np.isfinite(data).any():
                steps.append(lambda n=name, k=kind: self._remove_output(n, k))  # network: no uncertainty map
                continue
            steps.append(lambda n=name, k=kind, d=data, f=field_name: self._set_output(n, k, d, job, meta_prov, f))

        def select_rate():
            rate_name = output_name("rate", job.source_name)
            rate_layer = self._find_output(rate_name, "rate")
            if rate_layer is not None and self.viewer.layers.selection.active is not rate_layer:
                self.viewer.layers.selection.active = rate_layer

        def finish():
            self.last_results = results
            self._last_job = job
            self._fill_table(job, results)
            self._draw_histogram(results)
            self.device_label.setText(f"Ran on: {prov.get('device', '?')}")
            radii = sorted({round(float(r.radius), 3) for r in results})
            px = math.sqrt(np.prod(job.kwargs["pixel_size"]))
            radius_txt = ", ".join(f"{r:g} px ({r * px:.3g} {job.unit})" for r in radii[:3])
            self.progress_bar.setValue(1000)
            self.status_label.setText(
                f"Done in {_format_seconds(time.perf_counter() - self._started)}: {job.kwargs['method']}, "
                f"radius {radius_txt}."
            )
            from .fractions_panel import report_run  # negative rates, relative level

            report_run(self, job, results)
            from .run_warnings import announce  # the warnings the solver issued (issue 13)

            announce(self, job, results)

        steps += [select_rate, finish]
        return steps

    def _find_output(self, name: str, kind: str):
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            if isinstance(layer, Image) and layer.metadata.get(_META_KEY) == kind:
                return layer
        return None

    def _remove_output(self, name: str, kind: str) -> None:
        layer = self._find_output(name, kind)
        if layer is not None:
            self.viewer.layers.remove(layer)

    def _set_output(self, name, kind, data, job: _Job, provenance, field_name) -> None:
        from .layer_style import style_output

        colormap, visible, symmetric = OUTPUT_STYLE[kind]
        limits = robust_limits(data, symmetric=symmetric)
        metadata = {
            _META_KEY: kind,
            "source": job.source_name,
            "field": field_name or kind,
            "provenance": provenance,
        }
        layer = self._find_output(name, kind)
        if layer is not None and layer.ndim != data.ndim:
            index = self.viewer.layers.index(layer)
            self.viewer.layers.remove(layer)
            layer = None
        else:
            index = None
        if layer is None:
            # A new layer is inserted hidden and shown in the next event-loop turn: napari's insert (layer
            # controls, vispy node, selection) and the first draw of the new layer then fall into separate turns,
            # so that neither stalls the viewer for long (benchmarks/bench_widget_stall.py). The rate layer is
            # made the active layer at the end (select_rate).
            kwargs = dict(job.geometry)
            new = Image(data, name=name, colormap=colormap, contrast_limits=limits, visible=False,
                        metadata=metadata, **kwargs)
            style_output(new, kind, provenance, job.unit)  # colour bar with quantity and unit (issue 13)
            with _no_activation(self.viewer.layers):
                self.viewer.layers.insert(len(self.viewer.layers) if index is None else index, new)
            self._added.append(new)
            if visible:
                return lambda: setattr(new, "visible", True)
            return None
        # update in place: same layer, new data and grid; setters only where something changed (each one
        # refreshes the layer, and a refresh is a repaint)
        geom = job.geometry
        for attr in ("scale", "translate", "rotate", "shear"):
            if not np.allclose(np.asarray(getattr(layer, attr), dtype=float), np.asarray(geom[attr], dtype=float)):
                setattr(layer, attr, geom[attr])
        if not np.allclose(layer.affine.affine_matrix, geom["affine"]):
            layer.affine = geom["affine"]
        if "units" in geom and hasattr(layer, "units") and tuple(str(u) for u in layer.units) != geom["units"]:
            layer.units = geom["units"]
        if "axis_labels" in geom and hasattr(layer, "axis_labels") and tuple(layer.axis_labels) != geom["axis_labels"]:
            layer.axis_labels = geom["axis_labels"]
        layer.metadata = metadata
        layer.data = data
        layer.contrast_limits_range = limits
        layer.contrast_limits = limits
        style_output(layer, kind, provenance, job.unit)

    def _set_table_headers(self, unit: str) -> None:
        self._headers = ["ROI", f"area ({unit}²)", "mean", "median", "IQR"]
        self.table.setColumnCount(len(self._headers))
        self.table.setHorizontalHeaderLabels(self._headers)

    def _fill_table(self, job: _Job, results: list) -> None:
        stacked = len(results) > 1
        rows = []
        for (lead, _, _), res in zip(job.slices, results):
            for stats in res.table():
                row = {}
                if lead:
                    row["slice"] = "/".join(str(i) for i in lead)
                row.update(stats)
                rows.append(row)
        self._rows = rows
        headers = (["slice"] if stacked else []) + ["ROI", f"area ({job.unit}²)", "mean", "median", "IQR"]
        self._headers = headers
        self.table.clear()
        self.table.setColumnCount(len(headers))
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setRowCount(len(rows))
        from .relative import label_results, table_values

        label_results(self, results)
        for r, row in enumerate(rows):
            values = ([row.get("slice", "")] if stacked else []) + [
                str(row["label"]), f"{row['area']:.4g}", *(f"{v:.4g}" for v in table_values(row))]
            for c, text in enumerate(values):
                item = QTableWidgetItem(text)
                item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
                self.table.setItem(r, c, item)
        self.export_button.setEnabled(bool(rows))
        self.save_button.setEnabled(bool(rows))

    def _draw_histogram(self, results: list) -> None:
        ax = self.axes
        ax.clear()
        by_label: dict[int, list] = {}
        for res in results:
            labels = res.labels if res.labels is not None else np.isfinite(res.rate).astype(int)
            for lab in np.unique(labels):
                if lab <= 0:
                    continue
                shown = res.display_rate
                values = shown[(labels == lab) & np.isfinite(shown)]
                by_label.setdefault(int(lab), []).append(values)
        pooled = {lab: np.concatenate(v) for lab, v in by_label.items() if v}
        everything = np.concatenate(list(pooled.values())) if pooled else np.array([])
        if everything.size:
            lo, hi = (float(v) for v in np.percentile(everything, [0.5, 99.5]))
            if not hi > lo:
                lo, hi = lo - 0.5, hi + 0.5
            bins = np.linspace(lo, hi, 41)  # the 0.5-99.5 % range: a few outliers do not squash the plot
            for lab, values in sorted(pooled.items()):
                ax.hist(values, bins=bins, histtype="stepfilled", alpha=0.55, label=f"ROI {lab}")
            if 1 < len(pooled) <= 10:
                legend = ax.legend(fontsize=7, frameon=False)
                for t in legend.get_texts():
                    t.set_color(ax.xaxis.label.get_color())
        self._style_axes()
        self.canvas.setVisible(True)
        self.canvas.draw_idle()

    # ------------------------------------------------------------------ CSV
    def export_csv(self, path) -> Path:
        """Write the per-ROI table of the last run (all statistics, one row per ROI and slice) to ``path``."""
        if not self._rows or self._last_job is None:
            raise RuntimeError("no results to export: run the widget first")
        job = self._last_job
        path = Path(path)
        columns = (["slice"] if any("slice" in r for r in self._rows) else []) + [
            "label", "n_pixels", "area", "area_unit", "mean", "median", "q25", "q75", "iqr", "radius",
            "mean_uncertainty", "source", "roi_layer", "model", "method", "device",
        ]
        prov = self.last_results[0].provenance if self.last_results else {}
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in self._rows:
                writer.writerow({
                    **row,
                    "area_unit": f"{job.unit}^2",
                    "source": job.source_name,
                    "roi_layer": job.roi_name or "",
                    "model": prov.get("model", job.kwargs["model"]),
                    "method": prov.get("method", job.kwargs["method"]),
                    "device": prov.get("device", ""),
                })
        return path

    def output_layers(self) -> list:
        """The rate and uncertainty layers of the last run (those present in the viewer), rate first."""
        if self._last_job is None:
            return []
        out = []
        for kind in ("rate", "uncertainty"):
            layer = self._find_output(output_name(kind, self._last_job.source_name), kind)
            if layer is not None:
                out.append(layer)
        return out

    def save_maps(self, path) -> Path:
        """Write the last run's rate (and uncertainty) maps to one OME-TIFF with the plugin's writer.

        The file keeps the pixel size, the provenance, and each map's colormap and contrast limits: napari's
        File > Open (the napari-mollifier reader) restores them.
        """
        from .io_hooks import write_ome_tiff_layers

        layers = self.output_layers()
        if not layers:
            raise RuntimeError("no rate map to save: run the widget first")
        path = str(path)
        if not path.lower().endswith((".ome.tif", ".ome.tiff")):
            path = path.rsplit(".tif", 1)[0] + ".ome.tif" if path.lower().endswith((".tif", ".tiff")) else (
                path + ".ome.tif")
        data = [ly.as_layer_data_tuple() for ly in layers]
        return Path(write_ome_tiff_layers(path, data)[0])

    def _save_dialog(self) -> None:
        layers = self.output_layers()
        if not layers:
            return
        default = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in f"rates_{self._last_job.source_name}")
        path, _ = QFileDialog.getSaveFileName(self, "Save rate maps", default + ".ome.tif",
                                              "OME-TIFF with provenance (*.ome.tif *.ome.tiff)")
        if path:
            try:
                written = self.save_maps(path)
            except (OSError, ValueError) as exc:
                show_error(f"Rate maps: could not write {path}: {exc}")
                return
            show_info(f"Rate maps: wrote {written}")

    def _export_dialog(self) -> None:
        default = f"rates_{self._last_job.source_name if self._last_job else 'roi'}.csv"
        default = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in default)
        path, _ = QFileDialog.getSaveFileName(self, "Export per-ROI rates", default, "CSV files (*.csv)")
        if path:
            try:
                self.export_csv(path)
            except OSError as exc:
                show_error(f"Rate maps: could not write {path}: {exc}")
                return
            show_info(f"Rate maps: wrote {path}")


# --------------------------------------------------------------------------- small utilities
def _full_resolution(layer):
    """The layer's array (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


@contextlib.contextmanager
def _no_activation(layers):
    """Insert into napari's layer list without making the new layer the active one.

    Activating a layer shows its (new) controls panel: 20-40 ms per layer under software OpenGL, enough to push
    each insert past a 100 ms stall (benchmarks/bench_widget_stall.py). napari has no public switch for this;
    its list has the private flag ``_activate_on_insert``. Where the flag is gone or refused (napari warns that
    private access from plugins ends no earlier than 0.10), the plain insert is used: only slower, not wrong.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            previous = getattr(layers, "_activate_on_insert", None)
            if isinstance(previous, bool):
                layers._activate_on_insert = False
        except Exception:  # noqa: BLE001 - any refusal: keep napari's default
            previous = None
    try:
        yield
    finally:
        if isinstance(previous, bool):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                try:  # noqa: SIM105 - explicit
                    layers._activate_on_insert = previous
                except Exception:  # noqa: BLE001
                    pass


def _alive(widget) -> bool:
    try:
        widget.objectName()
    except RuntimeError:  # the C++ object was deleted with its layout row
        return False
    return True


def _format_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes} min {sec:02d} s"
