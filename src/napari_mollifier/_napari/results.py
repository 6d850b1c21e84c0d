"""Output layers of the Rate maps widget: a run's maps published into the viewer.

The table and histogram are in :mod:`.results_panel`, the CSV and OME-TIFF exports in :mod:`.results_export`.

:class:`ResultsDisplay` (a mixin of :class:`~napari_mollifier._napari.widget.MollifierWidget`) turns a run's
:class:`~napari_mollifier.result.RateResult` objects into layers on the main thread, and takes them back if adding
one fails (no partial result). The maps and their contrast limits are made in the worker thread
(:func:`.outputs.prepare_outputs`); the rate layer comes first, a new layer gets an event-loop turn of its own
(the viewer repaints in between), and the layers updated in place share one turn (one repaint, issue 15).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from ._qt_layout import alive as _alive
from ._qt_layout import set_progress as _set_progress
from .eta import format_seconds as _format_seconds
from .job import _explain_cancel, _Job, _Outcome
from .outputs import OUTPUT_STYLE, output_name, prepare_outputs, robust_limits, stack_slices  # noqa: F401  (re-exported)
from .results_export import ResultsExport
from .results_panel import ResultsPanel

__all__ = ["ResultsDisplay", "output_name", "robust_limits"]

log = logging.getLogger("napari_mollifier._napari.widget")

_META_KEY = "mollifier_output"
#: Pause between two main-thread publishing turns (one new layer each, or all the in-place updates): 0 still
#: lets the viewer repaint and handle input in between (a zero timer fires once the pending events are handled).
_PUBLISH_GAP_MS = 0


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


@contextlib.contextmanager
def _same_extent_data(layer, viewer, same: bool):
    """Set ``layer.data`` without napari recomputing the viewer's dimensions, where the layer's extent is unchanged.

    napari recomputes the viewer's dimension ranges from every layer on each data event (~4 ms, and a run updates
    up to five output layers in place; issue 15). With the same shape and grid (``same``) the ranges come out the
    same, so that one callback is skipped; every other listener (the canvas, the layer list, colour bars) still
    runs. The callback is napari's private ``ViewerModel._on_layers_change``: where it is gone, nothing is blocked
    (only slower, not wrong; the emitter is never blocked as a whole).
    """
    callback = getattr(viewer, "_on_layers_change", None) if same else None
    if callback is None:
        yield
        return
    with layer.events.data.blocker(callback):
        yield


class ResultsDisplay(ResultsPanel, ResultsExport):
    """Output layers, table and histogram of the Rate maps widget (mixin; uses its viewer and result controls)."""

    def _on_returned(self, outcome: _Outcome) -> None:
        if self._window_closed:  # the viewer closed during the run: nothing is published into it
            outcome = _Outcome("cancelled", message=_explain_cancel())
        self._outcome = outcome
        if outcome.status == "ok" and self._job is not None:
            # new layers one per event-loop turn, so the viewer repaints in between (short stalls); the layers
            # updated in place in one turn (one repaint)
            try:
                self._pending = self._publish_steps(self._job, outcome.results, outcome.outputs)
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

    def _mark_results_stale(self, stale: bool) -> None:
        """During a run the table and histogram still show the previous run: say so, and grey them out."""
        if not _alive(self.results_box):
            return
        has_rows = bool(self._rows)
        title = f"Per-ROI {getattr(self, '_rate_title', 'rate')}"
        self.results_box.setTitle(f"{title} (previous run)" if stale and has_rows else title)
        self.table.setEnabled(not stale)
        self.canvas.setEnabled(not stale)

    # ------------------------------------------------------------------ outputs
    def _publish_steps(self, job: _Job, results: list, outputs: list | None = None) -> list:
        """List the main-thread steps (one per event-loop turn): create or update the output layers, then the table.

        The rate layer first (what the user waits for), then each new layer in a turn of its own (inserted under the
        rate layer: the stacking order stays smoothed fields, residual, uncertainty, rate), then all the layers
        updated in place in one turn, then the table, histogram and status line in the last turn.
        """
        if outputs is None:  # a job run without the worker's preparation
            outputs = prepare_outputs(job, results)
        lead = job.out_lead_shape
        prov = dict(results[0].provenance)
        widget_info = {
            "source_layers": dict(job.input_names),
            "roi_layer": job.roi_name,
            "slices": [list(s[0]) for s in job.slices] if lead else None,
        }
        detected = job.detections is not None
        if detected:  # "(whole image)" on an image with background: solved in the detected nucleus (issue 15)
            widget_info.update(roi_source="detected", nucleus_detection=list(job.detections))
        meta_prov = {**prov, "widget": widget_info}
        if len(results) > 1:
            meta_prov["per_slice"] = [r.provenance for r in results]
        rate_name = output_name("rate", job.source_name)

        def step(out):
            if out.limits is None:  # network: no uncertainty map
                return lambda: self._remove_output(out.name, out.kind)
            return lambda: self._set_output(out.name, out.kind, out.data, job, meta_prov, out.field_name,
                                            limits=out.limits, below=None if out.kind == "rate" else rate_name)

        def is_new(out):
            if out.limits is None:
                return False
            layer = self._find_output(out.name, out.kind)
            return layer is None or layer.ndim != out.data.ndim

        # the rate first, then the others (bottom to top); new layers one per turn, updates in one turn
        ordered = [o for o in outputs if o.kind == "rate"] + [o for o in outputs if o.kind != "rate"]
        steps: list = []
        batch: list = []
        for out in ordered:
            (steps.append if is_new(out) else batch.append)(step(out))
        if detected:
            nucleus = stack_slices([np.asarray(s[2] > 0, dtype=np.uint8) for s in job.slices], lead)
            nucleus_step = lambda: self._set_detected_nucleus(nucleus, job)  # noqa: E731
            from .job import DETECTED_NUCLEUS

            existing = next((ly for ly in self.viewer.layers if ly.name == DETECTED_NUCLEUS), None)
            (batch if existing is not None and existing.ndim == nucleus.ndim else steps).append(nucleus_step)

        def select_rate():
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
            _set_progress(self.progress_bar, 1000)
            done = (f"Done in {_format_seconds(time.perf_counter() - self._started)}: {job.kwargs['method']}, "
                    f"radius {radius_txt}.")
            if detected:
                from .job import detected_nucleus_note

                note = detected_nucleus_note(int(sum(int(np.count_nonzero(s[2])) for s in job.slices)))
                done += f" {note[0].upper()}{note[1:]}."
                show_info(f"Rate maps: {note}")
            self.status_label.setText(done)
            from .fractions_panel import report_run  # negative rates, relative level

            report_run(self, job, results)
            from .run_warnings import announce  # the warnings the solver issued (issue 13)

            announce(self, job, results)

        def select_and_finish():
            select_rate()
            finish()

        # every layer updated in place: the table and status in the same turn, so the run is over after one repaint
        # instead of two (~50 ms under software OpenGL; the turn stays short, benchmarks/bench_widget_stall.py)
        all_in_place = bool(batch) and not steps
        if all_in_place:
            batch.append(select_and_finish)
        if batch:
            def in_place(todo=tuple(batch)):
                for one in todo:
                    one()

            rate_new = bool(outputs) and is_new(next(o for o in outputs if o.kind == "rate"))
            steps.insert(1 if rate_new else 0, in_place)  # right after the rate (a new rate layer: its own turn)
        if not all_in_place:
            steps.append(select_and_finish)
        return steps

    def _set_detected_nucleus(self, mask: np.ndarray, job: _Job) -> None:
        """Add or update the Labels layer of the detected nucleus: what a "(whole image)" run solved (issue 15).

        Parameters
        ----------
        mask : numpy.ndarray of uint8
            1 inside the nucleus, on the grid of the output maps (a stack for a stack run).
        job : _Job
            The run: its geometry (scale, translate, units...) and the detection info.
        """
        from napari.layers import Labels

        from .job import DETECTED_NUCLEUS

        metadata = {"nucleus_detection": job.detections[0] if len(job.detections) == 1 else list(job.detections),
                    "roi_candidate": False, "source": job.source_name}
        layer = next((ly for ly in self.viewer.layers if ly.name == DETECTED_NUCLEUS), None)
        if layer is not None and isinstance(layer, Labels) and layer.ndim == mask.ndim:
            geom = job.geometry
            for attr in ("scale", "translate"):
                if attr in geom and not np.allclose(np.asarray(getattr(layer, attr), float), np.asarray(geom[attr])):
                    setattr(layer, attr, geom[attr])
            if "units" in geom and tuple(str(u) for u in layer.units) != tuple(geom["units"]):
                layer.units = geom["units"]
            layer.metadata = {**layer.metadata, **metadata}
            layer.data = mask
            return
        if layer is not None:  # another kind of layer, or another dimensionality: replaced
            self.viewer.layers.remove(layer)
        new = Labels(mask, name=DETECTED_NUCLEUS, opacity=0.8, metadata=metadata, **job.geometry)
        new.contour = 1  # the outline only: the rate map under it stays readable
        with _no_activation(self.viewer.layers):
            self.viewer.layers.append(new)
        self._added.append(new)

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

    def _set_output(self, name, kind, data, job: _Job, provenance, field_name, limits=None, below=None):
        """Create or update the output layer ``name``; its follow-up step (show a new layer, then its colour bar).

        A new layer is inserted under the rate layer ``below`` when that is in the viewer (else on top).
        """
        from .layer_style import style_output

        colormap, visible, symmetric = OUTPUT_STYLE[kind]
        if limits is None:
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
            if index is None:
                under = self._find_output(below, "rate") if below is not None else None
                index = self.viewer.layers.index(under) if under is not None else len(self.viewer.layers)
            with _no_activation(self.viewer.layers):
                self.viewer.layers.insert(index, new)
            self._added.append(new)

            def show():
                # the colour bar (quantity and unit, issue 13), then its title, each in a turn of its own: napari
                # builds an overlay's visuals when it is switched on and compiles their shaders at the next draw
                # (~0.1-0.3 s each under software OpenGL, benchmarks/bench_widget_stall.py)
                if visible:
                    new.visible = True

                def bar():
                    style_output(new, kind, provenance, job.unit, title=False)
                    return lambda: style_output(new, kind, provenance, job.unit)

                return bar

            return show
        # update in place: same layer, new data and grid; setters only where something changed (each one
        # refreshes the layer, and a refresh is a repaint)
        geom = job.geometry
        same_extent = tuple(layer.data.shape) == tuple(data.shape)
        for attr in ("scale", "translate", "rotate", "shear"):
            if not np.allclose(np.asarray(getattr(layer, attr), dtype=float), np.asarray(geom[attr], dtype=float)):
                setattr(layer, attr, geom[attr])
                same_extent = False
        if not np.allclose(layer.affine.affine_matrix, geom["affine"]):
            layer.affine = geom["affine"]
            same_extent = False
        if "units" in geom and hasattr(layer, "units") and tuple(str(u) for u in layer.units) != geom["units"]:
            layer.units = geom["units"]
            same_extent = False
        if "axis_labels" in geom and hasattr(layer, "axis_labels") and tuple(layer.axis_labels) != geom["axis_labels"]:
            layer.axis_labels = geom["axis_labels"]
            same_extent = False
        layer.metadata = metadata
        with _same_extent_data(layer, self.viewer, same_extent):
            layer.data = data
        layer.contrast_limits_range = limits
        layer.contrast_limits = limits
        style_output(layer, kind, provenance, job.unit)
