"""Rate maps widget, "Raw intensities" panel.

It converts two intensity layers into phi_h and phi_e layers, and gives the notes after a run (negative rates, a
relative level).

The conversion is :func:`napari_mollifier.fractions.intensities_to_fractions`: the two layers chosen as the
heterochromatin and euchromatin inputs are taken as raw intensities, the ROI layer as the nucleus. The new layers
(``phi_h from NAME``, ``phi_e from NAME``) carry the conversion's record in ``metadata["mollifier_fractions"]``,
become the widget's inputs, and can be looked at before solving. A rate map computed from them is labelled
relative (its provenance and the status line say so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QLabel, QLineEdit, QPushButton

if TYPE_CHECKING:  # pragma: no cover
    from .job import _Job
    from .widget import MollifierWidget

META = "mollifier_fractions"
SAME_AS_ROI = "(the ROI)"


class FractionsPanel(QGroupBox):
    """The "Raw intensities -> volume fractions" box of the Rate maps widget (``widget.fractions_panel``).

    Parameters
    ----------
    widget : MollifierWidget
        The Rate maps widget whose input layers are converted.
    """

    def __init__(self, widget: MollifierWidget) -> None:
        super().__init__("Raw intensities -> volume fractions")
        from napari_mollifier.fractions import DEFAULT_TOTAL_FRACTION, TOTAL_FRACTION_RANGE

        self.widget = widget
        form = QFormLayout(self)
        form.setContentsMargins(6, 6, 6, 6)
        note = QLabel("Takes the two input layers above as raw intensities. Maps from converted layers have a "
                      "relative level.")
        note.setWordWrap(True)
        form.addRow(note)
        self.nucleus_combo = QComboBox()
        self.nucleus_combo.setToolTip("Shapes or Labels layer outlining the nucleus: the background is measured "
                                      "outside it, the scales inside it. Draw the ROI one kernel radius inside it.")
        form.addRow("Nucleus", self.nucleus_combo)
        events = widget.viewer.layers.events
        for event in (events.inserted, events.removed):
            event.connect(self._refresh_nucleus)
        self._refresh_nucleus()
        self.total_spin = QDoubleSpinBox()
        self.total_spin.setRange(*TOTAL_FRACTION_RANGE)
        self.total_spin.setSingleStep(0.05)
        self.total_spin.setDecimals(2)
        self.total_spin.setValue(DEFAULT_TOTAL_FRACTION)
        self.total_spin.setToolTip("Mean chromatin volume fraction phi_h + phi_e inside the nucleus")
        form.addRow("Total chromatin", self.total_spin)
        self.ratio_edit = QLineEdit("estimate")
        self.ratio_edit.setToolTip(
            "phi_h of the brightest heterochromatin over phi_e of the brightest euchromatin: a number from a "
            "calibration, or 'estimate' (the smoothest rate at the domain scale; uses l2 and the pixel size)")
        form.addRow("Mark ratio", self.ratio_edit)
        self.convert_button = QPushButton("Convert to fractions")
        self.convert_button.setToolTip("Adds phi_h and phi_e layers and selects them as the inputs")
        self.convert_button.clicked.connect(self._convert_clicked)
        form.addRow(self.convert_button)

    def _refresh_nucleus(self, *_args) -> None:
        from napari.layers import Labels, Shapes

        current = self.nucleus_combo.currentText()
        names = [SAME_AS_ROI] + [ly.name for ly in self.widget.viewer.layers if isinstance(ly, (Labels, Shapes))]
        self.nucleus_combo.blockSignals(True)
        self.nucleus_combo.clear()
        self.nucleus_combo.addItems(names)
        self.nucleus_combo.setCurrentText(current if current in names else SAME_AS_ROI)
        self.nucleus_combo.blockSignals(False)

    def _convert_clicked(self) -> None:
        from napari.utils.notifications import show_error

        from napari_mollifier.errors import MollifierInputError

        try:
            self.convert()
        except MollifierInputError as exc:
            show_error(f"Rate maps: {exc}")
            self.widget.status_label.setText(f"Not converted: {exc}")

    def convert(self) -> tuple[Image, Image]:
        """Convert the current input layers with :func:`napari_mollifier.fractions.intensities_to_fractions`.

        Returns
        -------
        tuple of napari.layers.Image
            The new (or updated) phi_h and phi_e layers.

        Raises
        ------
        MollifierInputError
            The inputs or the nucleus cannot be used (the message says how to fix it).
        """
        from napari_mollifier.errors import MollifierInputError
        from napari_mollifier.fractions import intensities_to_fractions

        from .rois import roi_labels
        from .widget import WHOLE_IMAGE, _full_resolution, _geometry

        w = self.widget
        if set(w.input_combos) != {"phi_h", "phi_e"}:
            raise MollifierInputError("the intensity conversion is for the chromatin models (phi_h and phi_e "
                                      "inputs): choose chromatin-balance or chromatin-phase-field")
        layers = {k: w._layer(c.currentText()) for k, c in w.input_combos.items()}
        if any(ly is None for ly in layers.values()):
            raise MollifierInputError("choose the two intensity layers (heterochromatin mark, euchromatin mark) "
                                      "as the inputs first")
        data = {k: np.asarray(_full_resolution(ly), dtype=np.float64) for k, ly in layers.items()}
        if any(a.ndim != 2 for a in data.values()):
            raise MollifierInputError("the conversion takes 2-D layers: pick one slice and one channel per layer")
        ref = layers["phi_h"]
        nucleus = None
        roi_name = self.nucleus_combo.currentText()
        if roi_name in ("", SAME_AS_ROI):
            roi_name = w.roi_combo.currentText()
        if roi_name and roi_name != WHOLE_IMAGE and w._layer(roi_name) is not None:
            nucleus, _ = roi_labels(w._layer(roi_name), ref, data["phi_h"].shape)
            nucleus = nucleus > 0
        ratio_text = self.ratio_edit.text().strip()
        kwargs = {}
        if ratio_text == "estimate":
            if "l2" not in w.coef_edits:
                raise MollifierInputError("mark ratio 'estimate' needs the chromatin-balance model's l2: choose "
                                          "that model, or give the ratio as a number")
            try:
                l2 = float(w.coef_edits["l2"].text())
            except ValueError:
                raise MollifierInputError(f"l2 must be a number, got {w.coef_edits['l2'].text()!r}") from None
            kwargs = {"mark_ratio": "estimate", "l2": l2, "pixel_size": w._pixel_size(ref)}
        else:
            try:
                kwargs = {"mark_ratio": float(ratio_text)}
            except ValueError:
                raise MollifierInputError(f"mark ratio must be a number or 'estimate', got {ratio_text!r}") from None
        fractions, record = intensities_to_fractions(data["phi_h"], data["phi_e"], nucleus=nucleus,
                                                     total_fraction=float(self.total_spin.value()), **kwargs)
        record = dict(record, source_layers={k: ly.name for k, ly in layers.items()},
                      nucleus_layer=roi_name if nucleus is not None else None)
        out = []
        for key, colormap in (("phi_h", "magma"), ("phi_e", "viridis")):
            name = f"{key} from {layers[key].name}"
            meta = {META: record}
            finite = fractions[key][np.isfinite(fractions[key])]
            limits = (0.0, float(np.percentile(finite, 99.5)) if finite.size else 1.0)
            if name in w.viewer.layers and isinstance(w.viewer.layers[name], Image):
                layer = w.viewer.layers[name]
                layer.data = fractions[key]
                layer.metadata = meta
                layer.contrast_limits = limits
            else:
                layer = w.viewer.add_image(fractions[key], name=name, colormap=colormap, metadata=meta,
                                           contrast_limits=limits, **_geometry(ref))
            out.append(layer)
        coefficients = {k: e.text() for k, e in w.coef_edits.items()}  # switching inputs may refill them
        w._refresh_layers()
        for key, layer in zip(("phi_h", "phi_e"), out, strict=True):
            w.input_combos[key].setCurrentText(layer.name)
        for key, text in coefficients.items():
            if key in w.coef_edits:
                w.coef_edits[key].setText(text)
        if nucleus is None:
            show_warning("Rate maps: no ROI layer was chosen, so the background is the 1st percentile of each "
                         "layer; draw the nucleus as an ROI for a background from outside it")
        show_info(f"Rate maps: converted to volume fractions (mark ratio {record['mark_ratio']:.3g}, total "
                  f"{record['total_fraction']:g}); rate maps from these layers have a relative level")
        w.status_label.setText("Converted: inspect the phi_h and phi_e layers, then Run. The level of the rate "
                               "will be relative.")
        return out[0], out[1]


def report_run(widget: MollifierWidget, job: _Job, results: list) -> str | None:
    """Warn of negative rates after a run (main thread), and label the level relative where it is.

    The level is relative where the inputs were converted intensities or do not look like volume fractions.

    Parameters
    ----------
    widget : MollifierWidget
        The Rate maps widget (status line, notifications).
    job : _Job
        The run.
    results : list of RateResult
        Its results, one per slice.

    Returns
    -------
    str or None
        The level note added to the status line, or None.
    """
    from napari_mollifier.fractions import mark_relative

    from .widget import output_name

    for res in results:
        flag = res.provenance.get("negative_rate") or {}
        if flag.get("warned"):
            show_warning(f"Rate maps: {flag.get('message')}")
            break
    layers = [widget._layer(name) for name in job.input_names.values()]
    record = next((ly.metadata.get(META) for ly in layers if ly is not None and META in ly.metadata), None)
    note = None
    if record is not None:
        note = "Level: relative (converted intensities; only the pattern is meaningful)."
    else:
        top = max((float(np.nanmax(np.where(np.isfinite(a), a, np.nan))) for _, f, _ in job.slices
                   for a in f.values() if np.isfinite(a).any()), default=0.0)
        if top > 1.5:
            note = "Level: relative (the inputs are not volume fractions)."
            show_warning(f"Rate maps: the input layers hold values up to {top:.4g}, so they are not volume "
                         "fractions (0..1): the map's level means nothing absolute. Convert them with 'Convert "
                         "to fractions' (Raw intensities box) and run again.")
    if note is None:
        return None
    layer = widget._find_output(output_name("rate", job.source_name), "rate")
    if layer is not None:
        prov = dict(layer.metadata.get("provenance") or {})
        if record is not None:
            mark_relative(prov, record)
        else:
            prov["rate_level"] = "relative"
            prov["rate_level_note"] = "relative: the inputs were not volume fractions"
        layer.metadata = {**layer.metadata, "provenance": prov, "rate_level": "relative"}
    widget.status_label.setText(f"{widget.status_label.text()} {note}")
    return note
