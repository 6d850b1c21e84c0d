"""Result display of the Rate maps widget: output layers, the per-ROI table, the histogram, CSV and OME-TIFF.

:class:`ResultsDisplay` (a mixin of :class:`~napari_mollifier._napari.widget.MollifierWidget`) turns a run's
:class:`~napari_mollifier.result.RateResult` objects into layers on the main thread, and takes them back if adding
one fails (no partial result). The maps and their contrast limits are made in the worker thread
(:func:`.outputs.prepare_outputs`); the rate layer comes first, a new layer gets an event-loop turn of its own
(the viewer repaints in between), and the layers updated in place share one turn (one repaint, issue 15).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from ._qt_layout import alive as _alive
from ._qt_layout import set_progress as _set_progress
from .eta import format_seconds as _format_seconds
from .job import _explain_cancel, _Job, _Outcome
from .outputs import OUTPUT_STYLE, output_name, prepare_outputs, robust_limits, stack_slices  # noqa: F401  (re-exported)

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


_LazyCanvas = None


def _lazy_canvas_class():
    """Return a matplotlib Qt canvas class that renders a changed figure when Qt paints it, not at once (issue 15).

    ``draw_idle`` renders at the next event-loop turn even where the canvas is off screen (the histogram is often
    scrolled out of the dock: ~60 ms of the viewer's thread, with the interpreter lock, for nothing after every
    run); :meth:`draw_when_shown` leaves the rendering to the canvas's next paint, which Qt makes only when it is
    on screen (or grabbed).
    """
    global _LazyCanvas
    if _LazyCanvas is None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg

        class LazyFigureCanvas(FigureCanvasQTAgg):
            _figure_changed = False

            def draw_when_shown(self) -> None:
                self._figure_changed = True
                self.update()

            def paintEvent(self, event):  # noqa: N802 - Qt override
                if self._figure_changed:
                    self._figure_changed = False
                    self.draw()
                super().paintEvent(event)

        _LazyCanvas = LazyFigureCanvas
    return _LazyCanvas


class ResultsDisplay:
    """Output layers, table and histogram of the Rate maps widget (mixin; uses its viewer and result controls)."""

    def _build_results(self) -> QGroupBox:
        """Build the "Per-ROI rate" box: the table, Export CSV / Save maps, and the histogram (hidden until a run)."""
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
        self.export_button.clicked.connect(self._export_dialog)
        self.save_button.clicked.connect(self._save_dialog)
        return res_box

    def _build_histogram(self, layout) -> None:
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.2), dpi=90, layout="constrained")
        self.canvas = _lazy_canvas_class()(self.figure)
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
        if batch:
            def in_place(todo=tuple(batch)):
                for one in todo:
                    one()

            rate_new = bool(outputs) and is_new(next(o for o in outputs if o.kind == "rate"))
            steps.insert(1 if rate_new else 0, in_place)  # right after the rate (a new rate layer: its own turn)

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
        """Create or update the output layer ``name``; its follow-up step (show a new layer) or None.

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
            style_output(new, kind, provenance, job.unit)  # colour bar with quantity and unit (issue 13)
            if index is None:
                under = self._find_output(below, "rate") if below is not None else None
                index = self.viewer.layers.index(under) if under is not None else len(self.viewer.layers)
            with _no_activation(self.viewer.layers):
                self.viewer.layers.insert(index, new)
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
        for (lead, _, _), res in zip(job.slices, results, strict=True):
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
        self.canvas.draw_when_shown()

    # ------------------------------------------------------------------ CSV
    def export_csv(self, path: str | Path) -> Path:
        """Write the per-ROI table of the last run (all statistics, one row per ROI and slice) to ``path``.

        Parameters
        ----------
        path : str or pathlib.Path
            The CSV file to write.

        Returns
        -------
        pathlib.Path
            The file written.

        Raises
        ------
        RuntimeError
            No run yet.
        """
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
        """Return the rate and uncertainty layers of the last run (those present in the viewer), rate first.

        Returns
        -------
        list of napari.layers.Image
            Empty before a run.
        """
        if self._last_job is None:
            return []
        out = []
        for kind in ("rate", "uncertainty"):
            layer = self._find_output(output_name(kind, self._last_job.source_name), kind)
            if layer is not None:
                out.append(layer)
        return out

    def save_maps(self, path: str | Path) -> Path:
        """Write the last run's rate (and uncertainty) maps to one OME-TIFF with the plugin's writer.

        The file keeps the pixel size, the provenance, and each map's colormap and contrast limits: napari's
        File > Open (the napari-mollifier reader) restores them.

        Parameters
        ----------
        path : str or pathlib.Path
            The file; ``.ome.tif`` is added or replaces ``.tif``.

        Returns
        -------
        pathlib.Path
            The file written, its name ending in ``.ome.tif``.

        Raises
        ------
        RuntimeError
            No rate map to save (no run yet, or its layers were deleted).
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

