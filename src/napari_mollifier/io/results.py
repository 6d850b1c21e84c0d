"""Save a :class:`~napari_mollifier.result.RateResult` and load it back, exactly.

Formats, chosen by the file name:

* ``.npz`` -- numpy archive: every map as an array, the rest (radius, ROI table, provenance) as JSON;
* ``.ome.tif`` / ``.tif`` -- OME-TIFF: rate, uncertainty and residual as the three channels of the first image
  (float64, physical pixel size), the mollified fields and the ROI labels as further images, everything else as
  JSON in the first image's OME ``Description``;
* ``.ome.zarr`` / ``.zarr`` -- OME-Zarr (NGFF 0.4): the maps as the channels of the image, fields under
  ``fields/``, labels under ``labels/roi``, the rest in the group attribute ``mollifier``.

All three round-trip every field of the result bit for bit. Writes go to a temporary name in the target folder
and are renamed when complete (``os.replace``), so a failed write leaves no partial file.
"""

from __future__ import annotations

import io as _stdio
from pathlib import Path

import numpy as np

from ..errors import MollifierInputError
from ..result import RateResult, register_file_io
from ._common import atomic_path, check_input_path, from_json, to_json
from .tiff import read_ome_tiff_series, write_ome_tiff
from .zarr import open_group, write_ome_zarr

__all__ = ["save_result", "load_result", "result_format", "MAPS", "FORMAT_NAME"]

MAPS = ("rate", "uncertainty", "residual")
FORMAT_NAME = "napari-mollifier result"
FORMAT_VERSION = 1


def result_format(path) -> str:
    """``"npz"``, ``"tiff"`` or ``"zarr"`` from the file name (error for anything else)."""
    name = Path(path).name.lower()
    if name.endswith(".npz"):
        return "npz"
    if name.endswith((".ome.tif", ".ome.tiff", ".tif", ".tiff")):
        return "tiff"
    if name.endswith((".ome.zarr", ".zarr")):
        return "zarr"
    raise MollifierInputError(f"unknown result format for {path}: use a name ending .npz, .ome.tif or .ome.zarr")


def _header(result: RateResult, unit: str) -> dict:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "maps": list(MAPS),
        "fields": list(result.fields),
        "has_labels": result.labels is not None,
        "radius": float(result.radius),
        "roi_stats": result.roi_stats,
        "pixel_size_unit": unit,
        "provenance": result.provenance,
    }


def _pixel_size(result: RateResult, ndim: int):
    px = result.provenance.get("pixel_size", 1.0)
    values = np.atleast_1d(np.asarray(px, dtype=float))
    return values if values.size == ndim else np.broadcast_to(values[:1], (ndim,))


def save_result(result: RateResult, path, *, unit: str = "µm") -> Path:
    """Write ``result`` to ``path`` (format from the suffix, see the module docstring); returns the path.

    ``unit`` names the unit of ``provenance["pixel_size"]`` (micrometres for the CLI and the readers).
    """
    path = Path(path)
    fmt = result_format(path)
    header = _header(result, unit)
    maps = {k: np.asarray(getattr(result, k), dtype=np.float64) for k in MAPS}
    ndim = maps["rate"].ndim
    px = _pixel_size(result, ndim)
    fields = {k: np.asarray(v, dtype=np.float64) for k, v in result.fields.items()}
    labels = None if result.labels is None else np.asarray(result.labels)
    if fmt == "npz":
        arrays = dict(maps)
        arrays.update({f"field__{k}": v for k, v in fields.items()})
        if labels is not None:
            arrays["labels"] = labels
        arrays["header"] = np.array(to_json(header))
        buffer = _stdio.BytesIO()
        np.savez_compressed(buffer, **arrays)
        with atomic_path(path) as tmp:
            tmp.write_bytes(buffer.getvalue())
        return path
    if fmt == "tiff":
        extra = []
        if fields:
            extra.append(("fields:" + ",".join(fields), np.stack(list(fields.values()))))
        if labels is not None:
            extra.append(("labels", labels.astype(np.int32 if labels.max(initial=0) < 2**31 else np.int64)))
        return write_ome_tiff(path, maps, px, unit=unit, description=header, extra=extra)
    ngff_unit = "micrometer" if unit in ("µm", "um", "micrometer") else unit
    return write_ome_zarr(path, maps, px, unit=ngff_unit, attrs=header,
                          extra={f"fields/{k}": v for k, v in fields.items()},
                          labels=None if labels is None else {"roi": labels.astype(np.int32)})


def _from_header(header: dict, maps: dict, fields: dict, labels) -> RateResult:
    return RateResult(
        rate=maps["rate"], uncertainty=maps["uncertainty"], residual=maps["residual"], fields=fields,
        radius=float(header.get("radius", 0.0)), labels=labels, roi_stats=list(header.get("roi_stats", [])),
        provenance=dict(header.get("provenance", {})),
    )


def _check_header(header, path) -> dict:
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise MollifierInputError(f"{path} is not a napari-mollifier result (no result header found)")
    return header


def load_result(path) -> RateResult:
    """Read a result written by :func:`save_result` (or :meth:`RateResult.save`)."""
    path = Path(path)
    fmt = result_format(path)
    check_input_path(path, allow_store=fmt == "zarr")
    if fmt == "npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                header = _check_header(from_json(str(z["header"])), path)
                maps = {k: z[k] for k in MAPS}
                fields = {k: z[f"field__{k}"] for k in header.get("fields", [])}
                labels = z["labels"] if header.get("has_labels") else None
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, MollifierInputError):
                raise
            raise MollifierInputError(f"{path}: not a readable result archive ({exc})") from None
        return _from_header(header, maps, fields, labels)
    if fmt == "tiff":
        series, header = read_ome_tiff_series(path)
        header = _check_header(header, path)
        stack = series[0][1]
        maps = {k: stack[i] for i, k in enumerate(header["maps"])}
        fields, labels = {}, None
        for name, arr in series[1:]:
            if name.startswith("fields"):
                names = header.get("fields", [])
                arr = arr if len(names) != 1 or arr.ndim == stack.ndim else arr[None]
                fields = {k: arr[i] for i, k in enumerate(names)}
            elif name == "labels":
                labels = arr.astype(np.int64)
        return _from_header(header, maps, fields, labels)
    group = open_group(path)
    header = dict(group.attrs).get("mollifier")
    header = _check_header(header, path)
    stack = np.asarray(group["0"][...])
    maps = {k: stack[i] for i, k in enumerate(header["maps"])}
    fields = {k: np.asarray(group[f"fields/{k}"][...]) for k in header.get("fields", [])}
    labels = np.asarray(group["labels/roi/0"][...]).astype(np.int64) if header.get("has_labels") else None
    return _from_header(header, maps, fields, labels)


register_file_io(save=save_result, load=load_result)
