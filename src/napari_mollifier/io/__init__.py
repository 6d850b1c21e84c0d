"""Files in and out: TIFF/OME-TIFF, Zarr/OME-Zarr, SMLM localisation tables; results with provenance.

Readers return an :class:`ImageData` (array -- lazy dask for large files --, axes, physical scale in
micrometres, channel names, metadata): plain data, no napari (``napari_mollifier._napari.layer_data`` turns it into
napari layers). Writers are atomic (temporary name + ``os.replace``) and never touch their inputs.

>>> from napari_mollifier import io
>>> img = io.read_image("cell.ome.tif")          # doctest: +SKIP
>>> img.axes, img.pixel_size, img.channel_names  # doctest: +SKIP
('cyx', (0.02, 0.02), ['H3K9me3', 'H3K27ac'])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MollifierInputError
from ._common import ImageData, atomic_path, check_input_path, file_sha256, from_json, to_json
from .results import load_result, save_result
from .smlm import is_localisation_table, read_localisations, read_smlm, render_localisations
from .tiff import is_tiff, read_tiff, write_ome_tiff
from .zarr import is_zarr, read_zarr, write_ome_zarr

__all__ = [
    "ImageData",
    "read_image",
    "read_tiff",
    "read_zarr",
    "read_smlm",
    "read_localisations",
    "render_localisations",
    "read_labels",
    "image_kind",
    "is_tiff",
    "is_zarr",
    "is_localisation_table",
    "write_ome_tiff",
    "write_ome_zarr",
    "save_result",
    "load_result",
    "file_sha256",
    "atomic_path",
    "to_json",
    "from_json",
]


def image_kind(path) -> str | None:
    """``"tiff"``, ``"zarr"``, ``"smlm"``, ``"npy"`` or None (a file none of the readers takes)."""
    if is_tiff(path):
        return "tiff"
    if is_zarr(path):
        return "zarr"
    if is_localisation_table(path):
        return "smlm"
    p = Path(path)
    if p.is_file() and p.name.lower().endswith(".npy"):
        return "npy"
    return None


def read_image(path, *, smlm: dict | None = None, lazy: bool | None = None) -> ImageData:
    """Read any supported image: TIFF/OME-TIFF, (OME-)Zarr folder, SMLM table (rendered), ``.npy``.

    Parameters
    ----------
    smlm : dict, optional
        Options of :func:`read_smlm` (``pixel_size`` in nm, ``method``, ``sigma_nm``, ``unit``...).
    lazy : bool, optional
        TIFF only: read through dask (default: for files over 1 GiB). Zarr is always lazy.
    """
    p = check_input_path(path)
    kind = image_kind(p)
    if kind == "tiff":
        return read_tiff(p, lazy=lazy)
    if kind == "zarr":
        return read_zarr(p)
    if kind == "smlm":
        return read_smlm(p, **(smlm or {}))
    if kind == "npy":
        try:
            data = np.load(p, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise MollifierInputError(f"{p}: not a readable .npy array ({exc})") from None
        if data.ndim < 2:
            raise MollifierInputError(f"{p}: a {data.ndim}-D array is not an image")
        axes = "q" * (data.ndim - 2) + "yx"
        return ImageData(data=data, axes=axes, scale=(1.0,) * data.ndim, units=(None,) * data.ndim,
                         metadata={"path": str(p.resolve()), "format": "npy"}, name=p.stem)
    lower = p.name.lower()
    if lower.endswith((".tif", ".tiff")):
        return read_tiff(p)  # raises the precise "not a TIFF" error
    if lower.endswith((".csv", ".tsv")):
        return read_smlm(p, **(smlm or {}))  # raises the precise "missing columns" error
    if p.is_dir():
        return read_zarr(p)  # raises "not a zarr store"
    raise MollifierInputError(
        f"{p}: unsupported file type: use a TIFF/OME-TIFF, an (OME-)Zarr folder, an SMLM table (.csv) or .npy"
    )


def read_labels(path, shape=None) -> np.ndarray:
    """Read an ROI label image (0 = background) from any readable image file, checked against ``shape``."""
    from ..validation import check_memory

    img = read_image(path)
    pixels = int(np.prod([int(n) for n in img.shape], dtype=object))
    check_memory(pixels * 8 * 3, f"the ROI {path} ({' x '.join(str(int(n)) for n in img.shape)} px)",
                 "give an ROI of the image's size (crop or bin it like the image)")
    data = img.to_numpy()
    if data.ndim > 2 and shape is not None and data.shape != tuple(shape):
        squeezed = np.squeeze(data)
        data = squeezed if squeezed.shape == tuple(shape) else data
    if shape is not None and data.shape != tuple(shape):
        raise MollifierInputError(f"{path}: ROI shape {data.shape} does not match the image shape {tuple(shape)}")
    if data.dtype.kind == "f":
        finite = np.isfinite(data)
        if not np.all(data[finite] == np.round(data[finite])):
            raise MollifierInputError(f"{path}: an ROI must be a mask or integer label image, not fractional values")
        data = np.where(finite, data, 0)
    if data.dtype.kind not in "biuf":
        raise MollifierInputError(f"{path}: an ROI must be a mask or integer label image, got dtype {data.dtype}")
    return data.astype(np.int64)
