"""Layout of the "Rate maps" dock: the controls and their tooltips, nothing else (issue #14).

:func:`build_form` creates the widgets as attributes of the dock (``input_combos`` rows are added by the model
choice, the coefficient rows by :mod:`.coefficients_panel`); the dock connects their signals. Module-level imports:
qtpy only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import solve as _solve
from .collect import WHOLE_IMAGE, WHOLE_IMAGE_ALL
from .job import DETECTED_NUCLEUS, _solver_default

if TYPE_CHECKING:  # pragma: no cover
    from .widget import MollifierWidget

__all__ = ["METHODS", "UNCERTAINTY_CHOICES", "available_devices", "build_form", "compact_combo"]

#: the solver's methods offered here (the autodiff PINN stays a comparison for scripts and the CLI)
METHODS = tuple(m for m in _solve.METHODS if m != "autodiff")
#: the uncertainty methods offered (those of the solver)
UNCERTAINTY_CHOICES = _solve.UNCERTAINTY_METHODS


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


def compact_combo(combo: QComboBox, chars: int = 18) -> None:
    """Make a layer-name combo that does not widen the dock for a long name (the full name is in its list).

    Parameters
    ----------
    combo : QComboBox
        The combo box to set up.
    chars : int
        Width in characters it asks for.
    """
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)


def build_form(widget: MollifierWidget) -> None:
    """Lay out the dock's controls on ``widget``: inputs and ROI, model and solver, advanced, run, results.

    Parameters
    ----------
    widget : MollifierWidget
        The dock; the controls become its attributes (``roi_combo``, ``method_combo``, ``run_button``...).
    """
    from napari_mollifier.kernels import KERNEL_FAMILIES
    from napari_mollifier.mollifier import BOUNDARIES

    from ._qt_layout import Collapsible, scrolling_body

    outer = scrolling_body(widget)

    # inputs: one row per model input (rebuilt when the model changes), then the ROI and stack rows
    widget.inputs_box = QGroupBox("Input layers")
    inputs_layout = QVBoxLayout(widget.inputs_box)
    inputs_layout.setContentsMargins(6, 6, 6, 6)
    widget.inputs_form = QFormLayout()
    roi_form = QFormLayout()
    inputs_layout.addLayout(widget.inputs_form)
    inputs_layout.addLayout(roi_form)
    widget.roi_combo = QComboBox()
    compact_combo(widget.roi_combo)
    widget.roi_combo.setToolTip(
        "Where to compute the rates. Shapes layer: each shape is one ROI. Labels layer: each label is one ROI. "
        "ROIs are mapped through world coordinates, so another scale/translate is fine. The newest Shapes or "
        f"Labels layer is picked when it appears. {WHOLE_IMAGE}: the nucleus is detected (as by the command "
        f"line without --roi) and shown as the Labels layer '{DETECTED_NUCLEUS}'; the whole image is solved "
        f"only where no background is found. {WHOLE_IMAGE_ALL}: every pixel, on purpose."
    )
    widget.all_slices = QCheckBox("all slices (one job)")
    widget.all_slices.setToolTip("For 3-D/4-D layers: run every 2-D slice (a stack of rate maps) "
                               "instead of the slice shown in the viewer.")
    roi_form.addRow("ROI", widget.roi_combo)
    roi_form.addRow("Stack", widget.all_slices)
    outer.addWidget(widget.inputs_box)
    from .fractions_panel import FractionsPanel  # raw intensities -> phi_h, phi_e layers

    widget.fractions_panel = FractionsPanel(widget)
    outer.addWidget(widget.fractions_panel)

    # model and solver settings
    box = QGroupBox("Model and solver")
    form = QFormLayout(box)
    widget.model_combo = QComboBox()
    widget.model_combo.setToolTip("The reaction-diffusion model whose rate is inferred.")
    for name, m in widget._models.items():
        widget.model_combo.addItem(name)
        widget.model_combo.setItemData(widget.model_combo.count() - 1, getattr(m, "summary", ""),
                                     Qt.ItemDataRole.ToolTipRole)
    form.addRow("Model", widget.model_combo)
    widget.coef_box = QWidget()
    widget.coef_form = QFormLayout(widget.coef_box)
    widget.coef_form.setContentsMargins(0, 0, 0, 0)
    form.addRow(widget.coef_box)
    widget.coef_note = QLabel()
    widget.coef_note.setWordWrap(True)
    widget.coef_note.setStyleSheet("color: gray; font-size: 9pt")
    form.addRow(widget.coef_note)
    from .coefficients_panel import add_estimate_button, add_nucleus_button  # issue 13

    add_estimate_button(widget, form)
    add_nucleus_button(widget)

    widget.method_combo = QComboBox()
    widget.method_combo.addItems(METHODS)
    widget.method_combo.setToolTip("direct: closed form on mollified data (seconds). "
                                 "network: mollified network fit (about a minute, no uncertainty map).")
    form.addRow("Method", widget.method_combo)
    widget.uncertainty_combo = QComboBox()
    widget.uncertainty_combo.addItems(UNCERTAINTY_CHOICES)
    widget.uncertainty_combo.setCurrentText(_solver_default("uncertainty", "propagate"))
    widget.uncertainty_combo.setToolTip(
        "How the uncertainty map is made (direct method). propagate: the input noise, estimated from the "
        "image, carried through the calculation (about one more solve; default). bootstrap: the solve repeated "
        "on noise realisations (slow; for checking). none: no uncertainty map.")
    form.addRow("Uncertainty", widget.uncertainty_combo)
    widget.bootstrap_spin = QSpinBox()
    widget.bootstrap_spin.setRange(0, 10_000)
    widget.bootstrap_spin.setValue(_solver_default("n_bootstrap", 100))
    widget.bootstrap_spin.setToolTip("Noise realisations when the uncertainty is bootstrapped (0 = no uncertainty "
                                   "map whatever the choice above). Fewer is faster.")
    form.addRow("Bootstrap samples", widget.bootstrap_spin)

    # advanced: collapsed, so that the dock fits a 768 px screen
    widget.advanced = Collapsible("Advanced settings")
    adv = QFormLayout(widget.advanced.body)
    adv.setContentsMargins(0, 0, 0, 0)
    radius_row = QHBoxLayout()
    widget.radius_auto = QCheckBox("auto")
    widget.radius_auto.setChecked(True)
    widget.radius_auto.setToolTip("Choose the kernel radius from the data (quasi-optimality).")
    widget.radius_value = QDoubleSpinBox()
    widget.radius_value.setDecimals(3)
    widget.radius_value.setMinimumWidth(80)
    widget.radius_value.setButtonSymbols(QDoubleSpinBox.ButtonSymbols.NoButtons)
    widget.radius_value.setRange(0.0001, 1e6)
    widget.radius_value.setValue(10.0)
    widget.radius_value.setEnabled(False)
    widget.radius_value.setToolTip("Kernel radius: how far the smoothing reaches (in the unit on the right).")
    widget.radius_unit = QComboBox()
    widget.radius_unit.addItems(["px", "px"])  # second item renamed to the layer's unit
    widget.radius_unit.setToolTip("Unit of the kernel radius: pixels or the layer's physical unit.")
    widget._radius_unit_index = 0
    radius_row.addWidget(widget.radius_auto)
    radius_row.addWidget(widget.radius_value, 1)
    radius_row.addWidget(widget.radius_unit)
    adv.addRow("Kernel radius", radius_row)
    widget.kernel_combo = QComboBox()
    widget.kernel_combo.addItems(list(KERNEL_FAMILIES))
    widget.kernel_combo.setCurrentText(str(_solver_default("kernel", KERNEL_FAMILIES[0])))
    widget.kernel_combo.setToolTip("Shape of the smoothing kernel (poly: polynomial bump; bump: C-infinity bump).")
    adv.addRow("Kernel", widget.kernel_combo)
    widget.boundary_combo = QComboBox()
    widget.boundary_combo.addItems(["mask", *BOUNDARIES])
    widget.boundary_combo.setCurrentText(str(_solver_default("boundary", "mask")))
    widget.boundary_combo.setToolTip("Edges and missing pixels. mask: use only valid pixels (of the ROI); "
                                   "the others pad the image.")
    adv.addRow("Boundary", widget.boundary_combo)
    from napari_mollifier.methods.network import DEFAULT_ITERATIONS
    from napari_mollifier.validation import MAX_ITERATIONS

    widget.iterations_spin = QSpinBox()
    widget.iterations_spin.setRange(1, MAX_ITERATIONS)  # 0 is refused, as by the API and the CLI
    widget.iterations_spin.setValue(DEFAULT_ITERATIONS)
    widget.iterations_spin.setToolTip("Most optimiser steps of the network method; it stops earlier once the fit "
                                    "stops improving.")
    adv.addRow("Iterations", widget.iterations_spin)
    widget.device_combo = QComboBox()
    widget.device_combo.addItems(available_devices())
    widget.device_combo.setToolTip("Devices available here (torch).")
    adv.addRow("Device", widget.device_combo)
    widget.seed_spin = QSpinBox()
    widget.seed_spin.setRange(0, 2**31 - 1)
    widget.seed_spin.setToolTip("Seeds the uncertainty noise and the network (same seed, same result on cpu)")
    adv.addRow("Seed", widget.seed_spin)
    form.addRow(widget.advanced)
    outer.addWidget(box)

    # run
    run_row = QHBoxLayout()
    widget.run_button = QPushButton("Run")
    widget.run_button.setToolTip("Infer the rate map (in the background; the viewer stays usable).")
    widget.cancel_button = QPushButton("Cancel")
    widget.cancel_button.setToolTip("Stop the run; nothing is added.")
    widget.cancel_button.setEnabled(False)
    run_row.addWidget(widget.run_button, 1)
    run_row.addWidget(widget.cancel_button)
    outer.addLayout(run_row)
    widget.progress_bar = QProgressBar()
    widget.progress_bar.setRange(0, 1000)
    widget.progress_bar.setValue(0)
    widget.progress_bar.setFormat("%p%")
    outer.addWidget(widget.progress_bar)
    widget.status_label = QLabel("Ready.")
    widget.status_label.setWordWrap(True)
    outer.addWidget(widget.status_label)
    widget.device_label = QLabel("Ran on: -")
    outer.addWidget(widget.device_label)

    outer.addWidget(widget._build_results())  # table, buttons, histogram: results.py
    outer.addStretch(1)
    widget._set_table_headers("px")
