"""The "Heterochromatin domains" dock widget: localisations -> domains -> the lab's geometric rates.

Source: a localisation table file, a Points layer (coordinates in the layer's world unit, um or nm), or an
image layer made by the SMLM reader (its ``metadata["path"]`` names the table). Run calls
:func:`napari_mollifier.domains.analyse_localisations` in a napari ``thread_worker`` (a generator yielding
progress), then adds: the domain Labels, the nucleus Labels, the localisations as Points coloured by log10
density (at most ``MAX_POINTS`` of them), the per-domain Gamma_ac / Gamma_me / lambda images, and phi_h / phi_e
images tagged ``metadata["field"]`` so that the "Rate maps" widget picks them up; plus a per-domain table (CSV
export) and a summary. Every added layer carries ``metadata["mollifier_domains"] = True``; a re-run replaces them.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFileDialog, QTableWidgetItem, QWidget

from .domains_form import THRESHOLDS, build_domains_form  # noqa: F401  (re-exported)
from .domains_report import (  # noqa: F401  (re-exported: tests and the docs use them from here)
    TABLE_HEADERS,
    TABLE_SHOWN,
    details_text,
    handoff_metadata,
    plain_summary,
)

__all__ = ["DomainsWidget", "MAX_POINTS", "FILE_SOURCE"]

FILE_SOURCE = "(table file)"
MAX_POINTS = 200_000
_META = "mollifier_domains"
_MAX_ROWS = 5000


def _work(x, y, params, cancel: threading.Event):
    """Run the analysis as a generator for ``thread_worker``, yielding ``(step, total, text)``.

    Returns ``("done", DomainResult)``, ``("cancelled", None)`` or ``("error", exception)`` (errors are handed
    back, not raised in the worker).
    """
    from napari_mollifier.domains import analyse_localisations

    q: queue.Queue = queue.Queue()
    box = {}

    def target():
        try:
            box["result"] = analyse_localisations(
                x, y, progress=lambda k, n, info: q.put((k, n, info.get("step", ""))), cancel=cancel.is_set,
                **params)
        except BaseException as exc:  # handed to the main thread below  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
            box["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    th.start()
    while th.is_alive() or not q.empty():
        try:  # noqa: SIM105 - explicit
            yield q.get(timeout=0.05)
        except queue.Empty:
            pass
    th.join()
    from napari_mollifier.errors import RunCancelled

    if isinstance(box.get("error"), RunCancelled):
        return "cancelled", None
    if "error" in box:
        return "error", box["error"]
    return "done", box["result"]


class DomainsWidget(QWidget):
    """Dock widget: heterochromatin domains and geometric rates from localisations (module docstring)."""

    #: Emitted when a run ends and the widget is ready again: "done", "error" or "cancelled".
    run_done = Signal(str)

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.result = None
        self._cancel = threading.Event()
        self._close_watcher = None
        self._started = 0.0
        self._build()
        self.refresh_sources()
        self.viewer.layers.events.inserted.connect(lambda e=None: self.refresh_sources())
        self.viewer.layers.events.removed.connect(lambda e=None: self.refresh_sources())
        from .layer_style import warm_colorbar_glyphs

        warm_colorbar_glyphs(self.viewer)  # the maps' colour-bar text, in idle turns

    # ------------------------------------------------------------------ layout
    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Once the controls hold their real text: the dock as wide as they need (see ``fit_width``)."""
        from ._qt_layout import fit_width

        fit_width(self)
        super().showEvent(event)

    def _build(self) -> None:
        build_domains_form(self)  # the controls: domains_form.py
        self.source_combo.currentTextChanged.connect(self._on_source_changed)
        self.threshold_combo.currentIndexChanged.connect(self._on_threshold_changed)
        from ._qt_layout import fit_width

        fit_width(self)


    def _on_source_changed(self, *_args) -> None:
        """'Points layer unit' only for a Points source."""
        layer = self.viewer.layers[self.source_combo.currentText()] if (  # noqa: SIM401 - layer lists are not dicts
            self.source_combo.currentText() in self.viewer.layers) else None
        is_points = layer is not None and layer.__class__.__name__ == "Points"
        self.points_unit.setVisible(is_points)
        self.points_unit_label.setVisible(is_points)
        if is_points:
            unit = str(getattr(layer, "units", ("",))[-1]) if getattr(layer, "units", None) else ""
            if unit in ("nanometer", "nm"):
                self.points_unit.setCurrentText("nm")
            elif unit in ("micrometer", "um", "µm"):
                self.points_unit.setCurrentText("µm")

    def _on_threshold_changed(self, index: int) -> None:
        from napari_mollifier.domains import DEFAULTS as D

        self.threshold_value.setEnabled(index != 1)
        if index == 0:
            self.threshold_value.setSuffix(" %")
            self.threshold_value.setValue(D["percentile"])
        elif index == 2:
            self.threshold_value.setSuffix(" /µm²")

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Localisation table", "", "Tables (*.csv *.tsv)")
        if path:
            self.path_edit.setText(path)
            self.source_combo.setCurrentText(FILE_SOURCE)

    def refresh_sources(self) -> None:
        """Fill the source list: the file entry, Points layers, and SMLM-reader image layers."""
        current = self.source_combo.currentText()
        names = [FILE_SOURCE]
        for ly in self.viewer.layers:
            if ly.metadata.get(_META):
                continue
            if ly.__class__.__name__ == "Points" or ly.metadata.get("format") == "smlm-table":
                names.append(ly.name)
        self.source_combo.blockSignals(True)
        self.source_combo.clear()
        self.source_combo.addItems(names)
        if current in names and not (current == FILE_SOURCE and not self.path_edit.text().strip()):
            self.source_combo.setCurrentText(current)
        elif len(names) > 1:
            self.source_combo.setCurrentIndex(1)
        self.source_combo.blockSignals(False)
        self._on_source_changed()

    # ------------------------------------------------------------------ run
    def _params(self) -> dict:
        kind = self.threshold_combo.currentIndex()
        p = {"pixel_size": self.pixel_spin.value(), "eps_nm": self.eps_spin.value(),
             "min_samples": self.min_samples_spin.value(), "min_points": self.min_points_spin.value(),
             "subsample": self.subsample_spin.value(), "diffusivity": self.d_spin.value()}
        if kind == 0:
            p.update(threshold="percentile", percentile=self.threshold_value.value())
        elif kind == 1:
            p["threshold"] = "otsu"
        else:
            p["threshold"] = float(self.threshold_value.value())
        return p

    def _localisations(self):
        """``(x, y, name)`` in nm from the chosen source (main thread); MollifierInputError for bad input."""
        from napari_mollifier.errors import MollifierInputError
        from napari_mollifier.io.smlm import read_localisations

        src = self.source_combo.currentText()
        if src == FILE_SOURCE:
            path = self.path_edit.text().strip()
            if not path:
                raise MollifierInputError("choose a localisation table file (or a Points layer)")
            locs = read_localisations(path)
            return locs["x"], locs["y"], Path(path).name.rsplit(".", 1)[0]
        layer = self.viewer.layers[src]
        if layer.__class__.__name__ == "Points":
            data = np.asarray(layer.data, float)
            if data.ndim != 2 or data.shape[1] < 2 or len(data) == 0:
                raise MollifierInputError(f"Points layer {src!r} has no 2-D points")
            world = data[:, -2:] * np.asarray(layer.scale[-2:]) + np.asarray(layer.translate[-2:])
            f = 1000.0 if self.points_unit.currentText() in ("µm", "um") else 1.0
            return world[:, 1] * f, world[:, 0] * f, src
        path = layer.metadata.get("path")
        if not path:
            raise MollifierInputError(f"layer {src!r} does not name its localisation table")
        locs = read_localisations(path)
        return locs["x"], locs["y"], src

    def run(self) -> None:
        """Start the analysis (refused while one runs)."""
        from napari_mollifier.errors import MollifierInputError

        if self.worker is not None:
            show_info("Heterochromatin domains: a run is in progress")
            return
        try:
            x, y, name = self._localisations()
            params = self._params()
        except (MollifierInputError, OSError) as exc:
            show_error(f"Heterochromatin domains: {exc}")
            self.status_label.setText(f"Not started: {exc}")
            self.run_done.emit("error")
            return
        self._name = name
        self._cancel = threading.Event()
        self._started = time.perf_counter()
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setValue(0)
        self.status_label.setText(f"Running on {len(x)} localisations...")
        # the previous result stays in its layers, but not in the table: it would read as this run's
        self.table.setRowCount(0)
        self.summary_label.setText("(running: the table and summary will show the new result)")
        self.details.setVisible(False)
        self.export_button.setEnabled(False)
        from .runner import CloseWatcher, start_worker, task_list_enabled  # shared with the Rate maps widget

        if self._close_watcher is None:  # closing the widget or the viewer stops the run; nothing is added then
            self._close_watcher = CloseWatcher(self, self._cancel_on_close)
        self._close_watcher.watch()
        desc = "Heterochromatin domains" if task_list_enabled() else None  # napari's task list: opt-in
        self.worker = start_worker(_work, x, y, params, self._cancel, desc=desc,
                                   yielded=self._on_progress, returned=self._on_returned,
                                   errored=self._on_errored, aborted=self._on_aborted)

    def _cancel_on_close(self) -> None:
        self._cancel.set()

    def cancel(self) -> None:
        """Stop the running analysis at its next step; nothing is added."""
        self._cancel.set()
        self.cancel_button.setEnabled(False)
        self.status_label.setText("Cancelling...")

    def _on_progress(self, value) -> None:
        from .runner import advance_task_bar

        k, n, text = value
        self.progress_bar.setValue(int(100 * k / max(n, 1)))
        advance_task_bar(self.worker, k / max(n, 1))
        self.status_label.setText(f"{text}...")

    def _ready(self, outcome: str) -> None:
        self.worker = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.run_done.emit(outcome)

    def _on_errored(self, exc) -> None:
        from napari_mollifier.errors import MollifierInputError

        msg = str(exc) if isinstance(exc, MollifierInputError) else f"{type(exc).__name__}: {exc}"
        show_error(f"Heterochromatin domains: {msg}")
        self.status_label.setText(f"Failed: {msg}")
        self._ready("error")

    def _on_aborted(self) -> None:  # napari task list "cancel" (worker.quit)
        self._cancel.set()
        self.status_label.setText("Cancelled: nothing added")
        self._ready("cancelled")

    def _on_returned(self, value) -> None:
        outcome, result = value
        if self._close_watcher is not None and self._close_watcher.closed:
            outcome = "cancelled"  # the widget or the viewer closed during the run: nothing is added
        if outcome == "cancelled":
            self.status_label.setText("Cancelled: nothing added")
            self._ready("cancelled")
            return
        if outcome == "error":
            self._on_errored(result)
            return
        try:
            self._publish(result)
        except Exception as exc:  # a layer could not be added: say so, stay usable  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
            show_error(f"Heterochromatin domains: could not show the result: {exc}")
            self._ready("error")
            return
        self.progress_bar.setValue(100)
        self.status_label.setText(f"Done in {time.perf_counter() - self._started:.1f} s")
        self._ready("done")

    # ------------------------------------------------------------------ outputs
    def _put(self, name, data, kind, **kwargs):
        kwargs.setdefault("metadata", {})
        kwargs["metadata"][_META] = True
        if name in self.viewer.layers and self.viewer.layers[name].metadata.get(_META):
            self.viewer.layers.remove(name)
        add = {"image": self.viewer.add_image, "labels": self.viewer.add_labels, "points": self.viewer.add_points}
        return add[kind](data, name=name, **kwargs)

    def _publish(self, res) -> None:
        from napari_mollifier._napari.layer_data import napari_supports_units

        self.result = res
        n = self._name
        grid = {"scale": res.scale_um, "translate": res.translate_um, "axis_labels": ("y", "x")}
        if napari_supports_units():
            grid["units"] = ("um", "um")
        s = res.summary
        d_um2_s = float(res.params["diffusivity"])
        # not an ROI candidate for Rate maps (each domain would be an ROI); the nucleus is
        self._put(f"domains [{n}]", res.labels, "labels", metadata={"roi_candidate": False}, **grid)
        self._put(f"nucleus [{n}]", res.nucleus.astype(np.int32), "labels", visible=False, **grid)
        from .layer_style import DOMAIN_LABELS, show_colorbar

        for key, cmap in (("gamma_ac", "viridis"), ("gamma_me", "magma"), ("lambda", "plasma")):
            layer = self._put(f"{key} [{n}]", res.maps[key], "image", colormap=cmap, visible=key == "lambda",
                              metadata={"unit": "1/s" if key != "lambda" else "1", "diffusivity_um2_s": d_um2_s},
                              **grid)
            show_colorbar(layer, DOMAIN_LABELS[key])  # with the quantity and its unit (issue 13)
        handoff = handoff_metadata(res)
        for key in ("phi_h", "phi_e"):  # short names: "rate [phi_h [cell]]" fits napari's layer list
            self._put(f"{key} [{n}]", res.fields[key], "image", visible=False,
                      metadata={"field": key, "assumption": res.fields_assumption, **handoff}, **grid)
        keep = np.flatnonzero(np.isfinite(res.density))
        if keep.size > MAX_POINTS:
            keep = np.sort(np.random.default_rng(0).choice(keep, MAX_POINTS, replace=False))
        pts = np.column_stack([res.y[keep], res.x[keep]]) / 1000.0
        logd = np.log10(res.density[keep])
        pgrid = {k: v for k, v in grid.items() if k == "units"}
        # hidden: 10^5 dots would cover the domains and the lambda map (switch on in the layer list)
        self._put(f"localisations [{n}]", pts, "points", size=0.01, border_width=0, visible=False,
                  features={"log10_density_per_um2": logd, "domain": res.domain[keep]},
                  face_color="log10_density_per_um2", face_colormap="turbo", **pgrid)
        self.summary_label.setText(plain_summary(s, d_um2_s))
        self.details_label.setText(details_text(s, res.fields_assumption, d_um2_s))
        self.details.setVisible(True)
        rows = min(res.n_domains, _MAX_ROWS)
        self.table.setRowCount(rows)
        for j, col in enumerate(TABLE_SHOWN):
            vals = res.table[col]
            for i in range(rows):
                v = vals[i]
                text = str(int(v)) if col == "domain" else f"{float(v):.4g}"
                self.table.setItem(i, j, QTableWidgetItem(text))
        self.table.resizeColumnsToContents()
        self.export_button.setEnabled(True)

    def export_table(self, path) -> Path:
        """Write the per-domain table (all rows, all columns) as CSV, atomically."""
        return self.result.write_table(path)

    def _export_dialog(self) -> None:
        if self.result is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export per-domain table", f"{self._name}_domains.csv",
                                              "CSV files (*.csv)")
        if path:
            try:
                self.export_table(path)
            except OSError as exc:
                show_error(f"Heterochromatin domains: could not write {path}: {exc}")
