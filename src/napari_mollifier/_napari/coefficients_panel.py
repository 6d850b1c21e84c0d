"""Widget additions of issue 13: the units policy for the coefficient fields and an "Estimate from image" button.

Hooked into :class:`~napari_mollifier._napari.widget.MollifierWidget` with a few lines (``add_estimate_button``
in ``_build_ui``, ``apply_units_policy`` in ``_fill_coefficients``, ``AUTO`` in ``_collect_job``).

* Units policy: for an input layer with a physical unit (um, nm...) whose metadata does not give the
  coefficients, a length coefficient is not filled with its box-unit default: it reads ``auto``, and the run
  estimates ``l2`` from the image (:func:`napari_mollifier.estimate_coefficients`, with a warning and the source in
  the provenance), or stops naming the coefficient for models where it cannot be estimated.
* "Estimate from image": estimates ``l2`` now, fills the field, and says how the value was obtained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QFormLayout, QLineEdit, QPushButton

from napari_mollifier.coefficients import is_physical

from .collect import _unit_name, _unit_power

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Labels

    from .widget import MollifierWidget

__all__ = ["AUTO", "apply_units_policy", "add_estimate_button", "estimate_from_image", "fill_coefficients"]

#: Text of a coefficient field whose value is estimated from the image at run time.
AUTO = "auto"


def apply_units_policy(widget: MollifierWidget, model: Any, unit: str, from_defaults: bool) -> None:
    """Set the length coefficients to ``auto`` when they would be box-unit defaults on a physical-unit layer.

    Parameters
    ----------
    widget : MollifierWidget
        The Rate maps widget (its coefficient fields and note).
    model : napari_mollifier.models.Model
        The chosen model.
    unit : str
        The reference layer's unit (``"µm"``, ``"px"``...).
    from_defaults : bool
        True when the fields hold the model's defaults (not values from a layer's metadata).
    """
    if not from_defaults or not is_physical(unit):
        return
    lengths = [k for k, c in model.coefficients.items() if getattr(c, "length_power", 0) and k in widget.coef_edits]
    if not lengths:
        return
    for key in lengths:
        widget.coef_edits[key].setText(AUTO)
    how = ("estimated from the image when you run (or now: Estimate from image)" if model.name == "chromatin-balance"
           else "not known: type them in (the run stops until you do)")
    widget.coef_note.setText(
        f"{', '.join(lengths)}: the box-unit default does not apply to a layer in {unit}; {how}. Other "
        "coefficients: model defaults.")


def fill_coefficients(widget: MollifierWidget, force: bool = False) -> None:
    """Fill the coefficient editors of the model: from the layer's metadata when it names this model, else defaults.

    Refilled only when the model or the reference input layer changes (user edits survive other events).

    Parameters
    ----------
    widget : MollifierWidget
        The Rate maps dock (its model choice, reference layer, coefficient form and note).
    force : bool
        Refill even when the model and the reference layer are unchanged.
    """
    model = widget._models.get(widget.model_combo.currentText())
    if model is None:
        return
    ref = widget._reference_layer()
    key = (model.name, id(ref), ref.name if ref is not None else None)
    if not force and key == getattr(widget, "_coef_key", None):
        return
    widget._coef_key = key
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
    while widget.coef_form.rowCount():
        widget.coef_form.removeRow(0)
    widget.coef_edits = {}
    for key, value in values.items():
        coef = model.coefficients[key]
        edit = QLineEdit("" if value is None else f"{value:.6g}")
        power = getattr(coef, "length_power", 0)
        dim = _unit_power(unit, power)
        suffix = f" [{dim}]" if dim else ""
        if value is None:
            edit.setPlaceholderText(f"enter in {dim}")
        edit.setToolTip(f"{getattr(coef, 'doc', '')}{suffix}")
        widget.coef_edits[key] = edit
        widget.coef_form.addRow(f"{key}{suffix}", edit)
    note = f"Coefficients from {origin}; lengths in the layer's unit ({unit})."
    if blank:
        names = ", ".join(blank)
        defaults = ", ".join(f"{k} = {model.coefficients[k].default:g}" for k in blank)
        note = (f"Enter {names} for {unit}: the model's default ({defaults}) is in the reference data's box "
                f"units, not {unit}, and layer {ref.name!r} is in {unit}. "
                "Use a calibrated value for your cells (see the docs on coefficients)."
                + (f" Other coefficients: {origin}." if len(blank) < len(values) else ""))
    widget.coef_note.setText(note)
    apply_units_policy(widget, model, unit, origin.startswith("model defaults"))


def estimate_from_image(widget: MollifierWidget) -> dict:
    """Estimate ``l2`` from the chosen input layers (and ROI), fill the field, and explain it in the note.

    Parameters
    ----------
    widget : MollifierWidget
        The Rate maps widget; its inputs are read as for a run (first slice).

    Returns
    -------
    dict
        :func:`napari_mollifier.estimate_coefficients`'s result (``l2``, ``stderr``, ``diagnostics``,
        ``description``).

    Raises
    ------
    MollifierInputError
        The inputs cannot be read (as for a run).
    """
    from napari_mollifier import estimate_coefficients

    job = widget._collect_job()
    _lead, fields, roi = job.slices[0]
    est = estimate_coefficients(fields, job.kwargs["pixel_size"], job.kwargs["model"], roi=roi,
                                seed=job.kwargs.get("seed", 0))
    widget.coef_edits["l2"].setText(f"{est['l2']:.6g}")
    unit = job.unit
    widget.coef_note.setText(
        f"l2 = {est['l2']:.4g} ± {est['stderr']:.2g} {unit}² estimated from the image by self-consistency "
        f"(radius {est['diagnostics']['radius_px']:g} px); domain-spacing cross-check "
        f"{est['diagnostics']['l2_from_spacing']:.2g} {unit}².")
    widget.coef_note.setToolTip(est["description"])
    widget._coefficient_estimate = est
    return est


def add_estimate_button(widget: MollifierWidget, form: QFormLayout) -> QPushButton:
    """Add an "Estimate from image" button under the coefficients (enabled for chromatin-balance only).

    Parameters
    ----------
    widget : MollifierWidget
        The Rate maps widget; it gets the attribute ``estimate_button``.
    form : QFormLayout
        The layout the button is added to.

    Returns
    -------
    QPushButton
        The button.
    """
    button = QPushButton("Estimate from image")
    button.setToolTip("Estimate l2 = D / G_ac from the input layers (self-consistency: the l2 that leaves the rate "
                      "map least correlated with lap(phi_e) at the domain scale; docs/science.md)")

    def clicked():
        from napari_mollifier.errors import MollifierInputError

        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            estimate_from_image(widget)
        except MollifierInputError as exc:
            widget.coef_note.setText(f"Could not estimate l2: {exc}")
        finally:
            QApplication.restoreOverrideCursor()

    def update(*_args):
        button.setEnabled(widget.model_combo.currentText() == "chromatin-balance")

    button.clicked.connect(clicked)
    widget.model_combo.currentTextChanged.connect(update)
    update()
    form.addRow(button)
    widget.estimate_button = button
    return button


def plausibility_notes(slices: list, pixel_size: tuple[float, float], unit: str) -> list[str]:
    """List the plausibility warnings of the job's first slice (napari_mollifier.plausibility), for the notes.

    Parameters
    ----------
    slices : list
        The job's slices, ``[(leading index, {field: 2-D array}, roi or None)]``.
    pixel_size : tuple of float
        (y, x) pixel size in ``unit``.
    unit : str
        The layers' unit; a non-physical one (``"px"``) skips the checks that need a length.

    Returns
    -------
    list of str
        One message per warning (empty when the input looks plausible).
    """
    from napari_mollifier.plausibility import check_plausibility

    if not slices:
        return []
    _lead, fields, roi = slices[0]
    return check_plausibility(fields, pixel_size, unit if is_physical(unit) else None, roi)


def detect_nucleus_layer(widget: MollifierWidget) -> Labels:
    """Detect the nucleus in the chosen input layers (the slice shown) and add it as a Labels layer, chosen as the ROI.

    The detection is :func:`napari_mollifier.nucleus.detect_nucleus`; the layer's metadata records how it was
    obtained.

    Parameters
    ----------
    widget : MollifierWidget
        The Rate maps widget.

    Returns
    -------
    napari.layers.Labels
        The layer ``nucleus (detected)`` (an earlier one of that name is replaced).

    Raises
    ------
    MollifierInputError
        The inputs cannot be read, or no nucleus is found.
    """
    import numpy as np

    from napari_mollifier.nucleus import detect_nucleus

    from .widget import _geometry

    job = widget._collect_job()
    _lead, fields, _roi = job.slices[0]
    mask, info = detect_nucleus(fields)
    ref = widget._reference_layer()
    geometry = {k: v for k, v in _geometry(ref).items() if k in ("scale", "translate", "units")}
    geometry = {k: tuple(v)[-2:] for k, v in geometry.items()}
    from .job import DETECTED_NUCLEUS

    name = DETECTED_NUCLEUS
    if name in widget.viewer.layers:
        widget.viewer.layers.remove(name)
    layer = widget.viewer.add_labels(mask.astype(np.uint8), name=name, opacity=0.3,
                                     metadata={"nucleus_detection": info}, **geometry)
    widget._refresh_layers()
    widget.roi_combo.setCurrentText(name)
    widget.coef_note.setToolTip(info["description"])
    return layer


def add_nucleus_button(widget: MollifierWidget) -> QPushButton:
    """Add a "Detect nucleus" button under the ROI choice: it makes a Labels layer from the total chromatin (Otsu).

    Parameters
    ----------
    widget : MollifierWidget
        The Rate maps widget; it gets the attribute ``nucleus_button``.

    Returns
    -------
    QPushButton
        The button.
    """
    button = QPushButton("Detect nucleus")
    button.setToolTip("Add a Labels layer with the nucleus (smoothed total chromatin, Otsu threshold, largest "
                      "component, holes filled) and use it as the ROI, so that no background pixel is solved")

    def clicked():
        from napari.utils.notifications import show_warning

        from napari_mollifier.errors import MollifierInputError

        try:
            detect_nucleus_layer(widget)
        except MollifierInputError as exc:
            show_warning(f"Rate maps: no nucleus detected: {exc}")

    button.clicked.connect(clicked)
    widget.inputs_box.layout().addWidget(button)
    widget.nucleus_button = button
    return button
