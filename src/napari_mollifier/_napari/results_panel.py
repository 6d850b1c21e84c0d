"""The per-ROI table and the histogram of the "Rate maps" dock (issue #14: one concept per module).

:class:`ResultsPanel` (a mixin of :class:`~napari_mollifier._napari.widget.MollifierWidget`) builds the
"Per-ROI rate" box and fills it from a run's :class:`~napari_mollifier.result.RateResult` objects.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from .job import _Job

__all__ = ["ResultsPanel"]

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


class ResultsPanel:
    """The table and histogram of the Rate maps widget (mixin; uses its viewer, ``_rate_title`` and export slots)."""

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
        """Draw the rate histogram of each ROI (0.5-99.5 % range), replacing the previous run's.

        The previous bars and legend are removed rather than the axes cleared (``Axes.clear`` rebuilds the ticks
        and spines: ~20 ms of the viewer's thread per run, issue 15).
        """
        ax = self.axes
        for artist in [*ax.patches, *ax.lines, *ax.collections]:
            artist.remove()
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.set_prop_cycle(None)  # the first ROI gets the first colour again
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
                counts, _ = np.histogram(values, bins=bins)
                ax.stairs(counts, bins, fill=True, alpha=0.55, label=f"ROI {lab}")
            ax.relim()
            ax.autoscale_view()
            if 1 < len(pooled) <= 10:
                legend = ax.legend(fontsize=7, frameon=False)
                for t in legend.get_texts():
                    t.set_color(ax.xaxis.label.get_color())
        self._style_axes()
        self.canvas.setVisible(True)
        self.canvas.draw_when_shown()
