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

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QPushButton

from napari_mollifier.coefficients import is_physical

__all__ = ["AUTO", "apply_units_policy", "add_estimate_button", "estimate_from_image"]

#: Text of a coefficient field whose value is estimated from the image at run time.
AUTO = "auto"


def apply_units_policy(widget, model, unit: str, from_defaults: bool) -> None:
    """Set the length coefficients to ``auto`` when they would be box-unit defaults on a physical-unit layer."""
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


def estimate_from_image(widget) -> dict:
    """Estimate ``l2`` from the chosen input layers (and ROI), fill the field, and explain it in the note."""
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


def add_estimate_button(widget, form) -> QPushButton:
    """An "Estimate from image" button under the coefficients (enabled for chromatin-balance only)."""
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
