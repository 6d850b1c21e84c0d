"""npe2 reader and writer contributions (no Qt, no napari import: plain functions on paths and arrays).

Readers: ``get_*_reader(path)`` returns a reader function for a path it can read, and None for anything else
(never raising on a path it does not claim). The reader function returns napari ``LayerDataTuple`` s in physical
units (micrometres): one image layer per channel, with ``scale``, ``units``, ``axis_labels`` and the file's
metadata (and a saved result's provenance) in ``metadata``. Errors on a claimed file that turns out to be bad
(truncated TIFF, zarr folder without an array, table with missing or non-numeric columns) are
:class:`~napari_mollifier.errors.MollifierInputError` s that name the problem.

Writers: image layers -> one OME-TIFF / OME-Zarr with one channel per layer (layers of one shape), physical
pixel size from the first layer's ``scale`` (and ``units``), and the layers' provenance (output layers of the
Rate maps widget carry it in ``metadata["provenance"]``) as metadata. Atomic: a failed write leaves no file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_mollifier._napari.layer_data import image_layer_data
from napari_mollifier.errors import MollifierInputError

__all__ = [
    "get_tiff_reader",
    "get_zarr_reader",
    "get_smlm_reader",
    "read_tiff_layers",
    "read_zarr_layers",
    "read_smlm_layers",
    "write_ome_tiff_layers",
    "write_ome_zarr_layers",
]


def _single(path) -> str | None:
    """Napari may pass a list of paths: a reader here takes exactly one."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        return str(path)
    except Exception:  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
        return None


def _safe(check, path) -> bool:
    try:
        return bool(check(path))
    except Exception:  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
        return False


# --------------------------------------------------------------------------- readers
def read_tiff_layers(path) -> list:
    from napari_mollifier.io import read_tiff

    return _restore_display(image_layer_data(read_tiff(_single(path))))


def _restore_display(layers: list) -> list:
    """Restore, per layer, the colormap, contrast limits and colour-bar title saved by the writers.

    They are in ``"display"`` of the file's description.
    """
    for _data, kwargs, _kind in layers:
        meta = kwargs.get("metadata") or {}
        display = (meta.get("mollifier") or {}).get("display") if isinstance(meta.get("mollifier"), dict) else None
        if not isinstance(display, dict) or not display:
            continue
        key = meta.get("channel_name")
        entry = display.get(key) if key in display else (next(iter(display.values())) if len(display) == 1 else None)
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("colormap"), str):
            kwargs["colormap"] = entry["colormap"]
            kwargs.pop("blending", None)
        limits = entry.get("contrast_limits")
        if isinstance(limits, (list, tuple)) and len(limits) == 2:
            kwargs["contrast_limits"] = [float(v) for v in limits]
        label = entry.get("colorbar_label")
        if isinstance(label, str) and label:  # shown by layer_style.restyle_on_insert (the Rate maps dock)
            kwargs["metadata"] = {**meta, "colorbar_label": label[:200]}
    return layers


def read_zarr_layers(path) -> list:
    from napari_mollifier.io import read_zarr
    from napari_mollifier.io.zarr import read_zarr_labels

    img = read_zarr(_single(path))
    layers = image_layer_data(img)
    grid = layers[0][1]  # the image layers' placement (scale, translate, units), one entry per axis
    spatial = [i for i, a in enumerate(grid["axis_labels"]) if a in "zyx"]
    for name, data in read_zarr_labels(_single(path)).items():
        n = data.ndim
        kwargs = {"name": f"{img.name} [{name}]", "scale": (1.0,) * n,
                  "metadata": {"path": img.metadata.get("path"), "label_image": name}}
        if len(spatial) >= n:  # on the image's grid, in its unit, like the image layers (issue 15)
            kwargs.update({k: tuple(grid[k][i] for i in spatial[-n:])
                           for k in ("scale", "translate", "units") if k in grid})
        layers.append((data, kwargs, "labels"))
    return layers


def read_smlm_layers(path, **options) -> list:
    from napari_mollifier.io import read_smlm

    img = read_smlm(_single(path), **options)
    (data, kwargs, kind), = image_layer_data(img)
    kwargs.update({"name": f"{img.name} density", "colormap": "gray"})
    return [(data, kwargs, kind)]


def get_tiff_reader(path):
    """Reader for TIFF/OME-TIFF files (TIFF suffix and header), else None."""
    from napari_mollifier.io import is_tiff

    p = _single(path)
    return read_tiff_layers if p is not None and _safe(is_tiff, p) else None


def get_zarr_reader(path):
    """Reader for zarr / OME-Zarr folders, else None."""
    from napari_mollifier.io import is_zarr

    p = _single(path)
    return read_zarr_layers if p is not None and _safe(is_zarr, p) else None


def get_smlm_reader(path):
    """Reader for SMLM localisation tables (.csv/.tsv with x/y or typical SMLM columns), else None."""
    from napari_mollifier.io import is_localisation_table

    p = _single(path)
    return read_smlm_layers if p is not None and _safe(is_localisation_table, p) else None


# --------------------------------------------------------------------------- writers
def _length_factor(unit) -> float | None:
    from napari_mollifier.io._common import length_factor_um

    if unit is None:
        return None
    text = str(unit)
    if text in ("pixel", "px", "pixels"):
        return None
    return length_factor_um(text)


def _collect(layer_data: list) -> tuple[dict, list, dict]:
    """``(channels, pixel size in um, description)`` from napari layer data tuples."""
    channels: dict[str, np.ndarray] = {}
    provenance = None
    first_meta: dict[str, Any] = {}
    for data, meta, kind in layer_data:
        if kind != "image":
            raise MollifierInputError(f"only image layers can be written here, got a {kind} layer")
        if isinstance(data, (list, tuple)):  # multiscale: level 0
            data = data[0]
        array = np.asarray(data.compute() if hasattr(data, "compute") else data)
        name = str(meta.get("name") or f"layer {len(channels)}")
        while name in channels:
            name += "'"
        channels[name] = array
        if not first_meta:
            first_meta = meta
        md = meta.get("metadata") or {}
        if provenance is None and isinstance(md.get("provenance"), dict):
            provenance = md["provenance"]
    shapes = {a.shape for a in channels.values()}
    if len(shapes) != 1:
        raise MollifierInputError(f"layers of different shapes cannot share one file: {sorted(shapes)}")
    shape = shapes.pop()
    if len(shape) not in (2, 3):
        raise MollifierInputError(f"only 2-D or 3-D image layers can be written, got shape {shape}")
    nd = len(shape)
    scale = list(np.asarray(first_meta.get("scale", (1.0,) * nd), dtype=float)[-nd:])
    units = first_meta.get("units")
    px = []
    for i, s in enumerate(scale):
        unit = units[-nd:][i] if units is not None and len(units) >= nd else None
        f = _length_factor(unit)
        px.append(float(s) * f if f is not None else float(s))
    description = {"format": "napari layers", "layers": list(channels), "pixel_size_unit": "µm",
                   "display": _display(layer_data, list(channels))}
    if provenance is not None:
        description["provenance"] = provenance
    return channels, px, description


def _display(layer_data: list, names: list) -> dict:
    """Per channel: the layer's colormap name and contrast limits, for the reader to restore."""
    out = {}
    for name, (_data, meta, _kind) in zip(names, layer_data, strict=True):
        entry: dict[str, Any] = {}
        cmap = meta.get("colormap")
        cmap = cmap.get("name") if isinstance(cmap, dict) else getattr(cmap, "name", cmap)
        if isinstance(cmap, str):
            entry["colormap"] = cmap
        limits = meta.get("contrast_limits")
        if limits is not None and len(limits) == 2:
            entry["contrast_limits"] = [float(v) for v in limits]
        label = (meta.get("metadata") or {}).get("colorbar_label")
        if isinstance(label, str) and label:
            entry["colorbar_label"] = label[:200]
        out[name] = entry
    return out


def _write_layers(writer, path: str, layer_data: list, description_keyword: str) -> list[str]:
    """Write image layers with ``writer`` as one image, one channel per layer, in the layers' common dtype.

    ``writer`` is :func:`napari_mollifier.io.write_ome_tiff` or :func:`napari_mollifier.io.write_ome_zarr`, and
    ``description_keyword`` the name of its argument for the description (provenance, display) of
    :func:`_collect`. Returns ``[path written]``, as npe2 expects.
    """
    channels, px, description = _collect(layer_data)
    dtype = np.result_type(*[a.dtype for a in channels.values()])
    written = writer(Path(path), channels, px, dtype=dtype, **{description_keyword: description})
    return [str(written)]


def write_ome_tiff_layers(path: str, layer_data: list) -> list[str]:
    """npe2 writer: image layers -> one OME-TIFF (one channel per layer) with provenance."""
    from napari_mollifier.io import write_ome_tiff

    return _write_layers(write_ome_tiff, path, layer_data, "description")


def write_ome_zarr_layers(path: str, layer_data: list) -> list[str]:
    """npe2 writer: image layers -> one OME-Zarr image (one channel per layer) with provenance."""
    from napari_mollifier.io import write_ome_zarr

    return _write_layers(write_ome_zarr, path, layer_data, "attrs")
