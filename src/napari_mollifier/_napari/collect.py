"""Reading the Rate maps widget's inputs into a :class:`~napari_mollifier._napari.job._Job` (main thread).

:class:`JobCollector` (a mixin of :class:`~napari_mollifier._napari.widget.MollifierWidget`) snapshots the input
layers, the ROI and the settings, and refuses bad inputs with a :class:`~napari_mollifier.errors.MollifierInputError`
that says how to fix them; the module's functions read a layer's grid and units.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from napari.layers import Shapes

from .job import DETECTED_NUCLEUS, _background_fraction, _Job, solver_kwargs, whole_image_roi

__all__ = ["JobCollector", "WHOLE_IMAGE", "WHOLE_IMAGE_ALL", "WHOLE_CHOICES", "INPUT_LABELS"]

#: ROI choice without a layer: the detected nucleus where the image has background, else the whole image.
WHOLE_IMAGE = "(whole image)"
#: ROI choice that solves every pixel, background included, on purpose.
WHOLE_IMAGE_ALL = "(whole image, including background)"
WHOLE_CHOICES = (WHOLE_IMAGE, WHOLE_IMAGE_ALL)
#: Friendly labels of the model inputs (any other input is shown by its key).
INPUT_LABELS = {
    "phi_h": "Heterochromatin (phi_h)",
    "phi_e": "Euchromatin (phi_e)",
    "density": "Density",
    "u": "Field u",
    "m": "Source m",
}


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


def _layer_units(layer) -> tuple[str, ...]:
    """Return the (y, x) units of a layer as text (``("pixel", "pixel")`` where napari has none)."""
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


def _full_resolution(layer):
    """Return the layer's array (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data



class JobCollector:
    """Builds the job of a run from the widget's layers and controls (mixin)."""

    def _pixel_size(self, layer) -> tuple[float, float]:
        return tuple(float(s) for s in np.asarray(layer.scale, dtype=float)[-2:])

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
            idx = tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(point, lead_shape, strict=True))
            leads = [idx]
            out_lead = (1,) * len(lead_shape)
        else:
            leads = [()]
            out_lead = ()

        from .relative import with_record
        from .rois import roi_labels
        from .solver_threads import widget_solver_threads

        # ROI (main thread: it reads layers)
        choice = self.roi_combo.currentText()
        roi_layer = self._layer(choice) if choice not in WHOLE_CHOICES else None
        detect = roi_layer is None and choice != WHOLE_IMAGE_ALL  # issue 15: the CLI's default, no --roi
        detections: list = []
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
            elif detect:
                roi, info, note = whole_image_roi(fields)
                if roi is None:
                    detect = False  # one slice without a nucleus: the whole image for every slice, as asked
                    notes.append(note + (f" (slice {lead})" if lead else ""))
                detections.append(info)
            slices.append((lead, fields, roi))
        if roi_layer is None and not detect and detections:  # back to the whole image in every slice
            slices = [(lead, fields, None) for lead, fields, _roi in slices]
        if roi_layer is None and not detect and slices:
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
        shape2d_job = next(iter(slices[0][1].values())).shape
        estimate = run_time_note(shape2d_job, n_runs=len(slices), **counts)
        notes += [estimate] if estimate else []
        from napari_mollifier.validation import estimate_run_seconds

        seconds = estimate_run_seconds(shape2d_job, **counts)["seconds"] * len(slices)
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
            roi_name=roi_layer.name if roi_layer is not None else (DETECTED_NUCLEUS if detect else None),
            notes=notes,
            threads=widget_solver_threads(seconds),
            detections=detections if detect else None,
        )

