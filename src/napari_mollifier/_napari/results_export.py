"""Exports of the "Rate maps" dock: the per-ROI table as CSV and the maps as OME-TIFF (written atomically).

:class:`ResultsExport` (a mixin of :class:`~napari_mollifier._napari.widget.MollifierWidget`) holds the public
:meth:`export_csv`, :meth:`output_layers` and :meth:`save_maps` and the two file dialogs.
"""

from __future__ import annotations

import csv
from pathlib import Path

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog

from .outputs import output_name

__all__ = ["ResultsExport"]


class ResultsExport:
    """CSV and OME-TIFF exports of the last run (mixin; uses the widget's ``_rows``, ``_last_job``, outputs)."""

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
        from napari_mollifier.io import atomic_path

        with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
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
