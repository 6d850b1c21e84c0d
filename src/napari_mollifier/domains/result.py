"""``DomainResult``: what the domain analysis returns, and its writers (CSV table, JSON summary, OME-TIFFs).

All images share one grid: pixel ``pixel_size_nm``, origin ``origin_nm = (y0, x0)`` (the centre of pixel
``[i, j]`` is at ``(y0 + (i + 1/2) px, x0 + (j + 1/2) px)``). Every file is written atomically.
"""

from __future__ import annotations

import csv
import io as _io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DomainResult", "TABLE_COLUMNS"]

TABLE_COLUMNS = ("domain", "centre_x_nm", "centre_y_nm", "n_localisations", "radius_nm", "diameter_nm",
                 "spacing_nm", "edge_distance_nm", "gamma_ac", "gamma_me", "lambda")


@dataclass
class DomainResult:
    """Domains of one nucleus.

    Attributes
    ----------
    x, y, density, dense, cluster, domain, lad : arrays, one entry per analysed localisation
        Coordinates (nm), Voronoi density (per um^2), above threshold, DBSCAN cluster (-1 none), interior
        domain id (0 none), in a lamina-associated cluster.
    table : dict of column -> array
        One row per interior domain (:data:`TABLE_COLUMNS`; Gamma in 1/s for D in um^2/s, lengths in nm).
    summary : dict
        Domain count, mean diameter (nm), LAD thickness (nm), threshold, log-normal fits ...
    density_image, nucleus, labels, lad_mask, maps, fields
        Images on the grid (``maps``: ``gamma_ac``, ``gamma_me``, ``lambda`` per domain, NaN outside domains;
        ``fields``: ``phi_h``, ``phi_e``, ``phi_w`` implied by the segmentation, see ``fields_assumption``).
    """

    x: np.ndarray
    y: np.ndarray
    density: np.ndarray
    dense: np.ndarray
    cluster: np.ndarray
    domain: np.ndarray
    lad: np.ndarray
    table: dict
    summary: dict
    params: dict
    pixel_size_nm: float
    origin_nm: tuple
    density_image: np.ndarray
    nucleus: np.ndarray
    labels: np.ndarray
    lad_mask: np.ndarray
    maps: dict
    fields: dict
    fields_assumption: dict = field(default_factory=dict)

    @property
    def n_domains(self) -> int:
        """The number of interior domains (rows of ``table``)."""
        return int(len(self.table["domain"]))

    @property
    def scale_um(self) -> tuple:
        """Napari scale (um) of the images: the pixel size, per axis (y, x)."""
        return (self.pixel_size_nm / 1000.0,) * 2

    @property
    def translate_um(self) -> tuple:
        """Napari translate (um) so that pixel centres sit at their physical positions."""
        return tuple((o + self.pixel_size_nm / 2) / 1000.0 for o in self.origin_nm)

    def table_csv(self) -> str:
        """Return the per-domain table as CSV text (header + one row per interior domain)."""
        buf = _io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(TABLE_COLUMNS)
        cols = [np.asarray(self.table[c]) for c in TABLE_COLUMNS]
        for row in zip(*cols, strict=True):
            w.writerow([int(v) if np.issubdtype(type(v), np.integer) else f"{float(v):.6g}" for v in row])
        return buf.getvalue()

    def write_table(self, path) -> Path:
        """Write the per-domain table (CSV), atomically."""
        from ..io._common import atomic_path

        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.write_text(self.table_csv(), encoding="utf-8")
        return path

    def save(self, out_dir, name: str = "domains") -> dict:
        """Write the result as five files into ``out_dir`` and return their paths.

        The files are ``NAME_domains.csv``, ``NAME_summary.json``, ``NAME_labels.ome.tif`` (domain labels, LAD band,
        nucleus), ``NAME_gamma.ome.tif`` (gamma_ac, gamma_me, lambda) and ``NAME_fields.ome.tif`` (phi_h, phi_e,
        phi_w: ``mollifier infer NAME_fields.ome.tif --channels 0,1`` reads it).

        The five files are one unit (:func:`napari_mollifier.io.publish.publish`): written into a staging folder
        and moved into place together, under the folder's write lock; a failure or interrupt leaves none of them
        (and an older result of the same name as it was).
        """
        from ..io._common import to_json
        from ..io.publish import publish
        from ..io.tiff import write_ome_tiff

        out = Path(out_dir)
        desc = {"summary": self.summary, "params": self.params, "origin_nm": list(self.origin_nm),
                "pixel_size_nm": self.pixel_size_nm, "fields_assumption": self.fields_assumption}
        px = self.pixel_size_nm / 1000.0
        files = {"table": f"{name}_domains.csv", "labels": f"{name}_labels.ome.tif",
                 "gamma": f"{name}_gamma.ome.tif", "fields": f"{name}_fields.ome.tif",
                 "summary": f"{name}_summary.json"}

        def write(staging: Path) -> list:
            (staging / files["table"]).write_text(self.table_csv(), encoding="utf-8")
            write_ome_tiff(staging / files["labels"],
                           {"domains": self.labels, "lad": self.lad_mask.astype(np.int32),
                            "nucleus": self.nucleus.astype(np.int32)}, px, description=desc, dtype=np.int32)
            write_ome_tiff(staging / files["gamma"], dict(self.maps), px, description=desc)
            write_ome_tiff(staging / files["fields"], dict(self.fields), px, description=desc)
            (staging / files["summary"]).write_text(to_json(desc, indent=2), encoding="utf-8")
            return list(files.values())  # the summary last

        publish(out, f"{name}_domains", write)
        return {k: out / v for k, v in files.items()}
