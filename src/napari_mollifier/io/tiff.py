"""TIFF and OME-TIFF: read an image with its physical pixel size; write maps as OME-TIFF with provenance.

Reading (:func:`read_tiff`) uses the first image series at full resolution. The pixel size comes from, in this
order: the OME-XML ``Pixels`` element (``PhysicalSizeX/Y/Z`` with their units, ``TimeIncrement``); ImageJ
metadata (``unit``, ``spacing``, ``finterval``, with ``XResolution``/``YResolution``); the TIFF resolution tags
when their unit is centimetre (resolutions in inches are the 72/300 dpi of screen and print tools, not a
microscope's pixel, and are ignored). Spatial sizes are converted to micrometres. Axes other than y and x
(``t``, ``c``, ``z``) are kept. Files larger than ``lazy_bytes`` are read lazily (dask over the TIFF's own tiles
or strips) so they are never loaded whole.

Writing (:func:`write_ome_tiff`): every map is a channel of the first image; further series (mollified fields,
ROI labels) follow; the provenance is JSON in the OME ``Image/Description``. The file is written to a temporary
name in the target folder and renamed, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import MollifierInputError
from ._common import ImageData, atomic_path, check_input_path, check_maps, from_json, length_factor_um, to_json

__all__ = ["is_tiff", "read_tiff", "write_ome_tiff", "read_ome_tiff_series", "TIFF_SUFFIXES"]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".ome.tif", ".ome.tiff")
_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Files above this size are read lazily (dask) instead of into memory.
LAZY_BYTES = 1 << 30
_AXIS_MAP = {"T": "t", "C": "c", "Z": "z", "Y": "y", "X": "x", "S": "c"}


def _has_suffix(path: Path) -> bool:
    return path.name.lower().endswith(TIFF_SUFFIXES)


def is_tiff(path) -> bool:
    """Tell whether ``path`` is an existing file with a TIFF suffix and a TIFF header (classic or BigTIFF)."""
    try:
        path = Path(path)
        if not path.is_file() or not _has_suffix(path):
            return False
        with open(path, "rb") as fh:
            return fh.read(4) in _MAGIC
    except (OSError, TypeError, ValueError):
        return False


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _open(path: Path):
    import tifffile

    check_input_path(path, allow_store=False)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head not in _MAGIC:
        raise MollifierInputError(f"{path} is not a TIFF file (its first bytes are {head!r}, not a TIFF header)")
    logger = logging.getLogger("tifffile")
    cap = _Capture()
    logger.addHandler(cap)
    propagate, logger.propagate = logger.propagate, False
    try:
        tf = tifffile.TiffFile(path)
        if not tf.series:
            tf.close()
            raise MollifierInputError(f"{path}: the TIFF file holds no image (empty, or corrupt: its image directory "
                                      "cannot be read): export the image again")
        _check_complete(tf, path, cap.messages)
        return tf
    except MollifierInputError:
        raise
    except Exception as exc:  # tifffile raises many types on corrupt files  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
        detail = cap.messages[0] if cap.messages else f"{type(exc).__name__}: {exc}"
        raise MollifierInputError(f"{path} is not a readable TIFF file (truncated or corrupt: {detail})") from None
    finally:
        logger.removeHandler(cap)
        logger.propagate = propagate


def _check_complete(tf, path: Path, messages) -> None:
    """Every strip/tile of the first series must lie inside the file (a truncated copy fails here)."""
    size = os.path.getsize(path)
    series = tf.series[0]
    pages = getattr(series, "pages", None) or []
    for page in pages:
        if page is None:
            raise MollifierInputError(f"{path}: TIFF page missing (truncated or corrupt file)")
        offsets = np.asarray(getattr(page, "dataoffsets", ()), dtype=np.uint64)
        counts = np.asarray(getattr(page, "databytecounts", ()), dtype=np.uint64)
        if offsets.size and counts.size == offsets.size:
            end = int((offsets + counts).max())
            if end > size:
                raise MollifierInputError(
                    f"{path} is truncated: image data ends at byte {end} but the file has {size} bytes "
                    "(an incomplete copy or download?)"
                )
    if any("invalid page offset" in m for m in messages):
        raise MollifierInputError(f"{path} is truncated or corrupt: {messages[0] if messages else 'pages missing'}")


def _ome_info(xml: str, index: int = 0) -> dict:
    """Physical sizes, units, channel names and description of OME Image ``index``."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    images = [el for el in root if el.tag.endswith("}Image") or el.tag == "Image"]
    if index >= len(images):
        return {}
    image = images[index]
    info: dict = {"name": image.get("Name")}
    for el in image:
        if el.tag.endswith("Description") and el.text:
            info["description"] = el.text
        if el.tag.endswith("Pixels"):
            px = el
            for ax in "XYZ":
                value = px.get(f"PhysicalSize{ax}")
                if value is not None:
                    info[ax.lower()] = (float(value), px.get(f"PhysicalSize{ax}Unit", "µm"))
            if px.get("TimeIncrement") is not None:
                info["t"] = (float(px.get("TimeIncrement")), px.get("TimeIncrementUnit", "s"))
            info["channels"] = [ch.get("Name") for ch in px if ch.tag.endswith("Channel")]
    return info


def _resolution(page, unit_factor) -> dict:
    """Pixel size from the X/YResolution tags (pixels per unit) when ``unit_factor`` (um per unit) is known."""
    out = {}
    for ax, tag in (("x", "XResolution"), ("y", "YResolution")):
        t = page.tags.get(tag)
        if t is None:
            continue
        num, den = t.value if isinstance(t.value, tuple) else (t.value, 1)
        if num and den and num / den > 0:
            out[ax] = den / num * unit_factor
    return out


def _physical(tf, page, axes: str) -> tuple[dict, dict]:
    """``({axis: size}, {axis: unit})``: spatial sizes in um, time in its own unit."""
    sizes, units = {}, {}
    if tf.is_ome and tf.ome_metadata:
        info = _ome_info(tf.ome_metadata)
        for ax in "xyz":
            if ax in info:
                value, unit = info[ax]
                f = length_factor_um(unit)
                if f is not None and value > 0:
                    sizes[ax], units[ax] = value * f, "um"
        if "t" in info and info["t"][0] > 0:
            sizes["t"], units["t"] = info["t"][0], str(info["t"][1])
        if sizes:
            return sizes, units
    ij = tf.imagej_metadata if tf.is_imagej else None
    if ij:
        unit = str(ij.get("unit") or "")
        if "\\u" in unit:
            unit = unit.encode("ascii", "backslashreplace").decode("unicode_escape")
        f = length_factor_um(unit or None)
        if f is not None:
            res = _resolution(page, f)
            for ax, v in res.items():
                sizes[ax], units[ax] = v, "um"
            if "spacing" in ij and "z" in axes:
                sizes["z"], units["z"] = float(ij["spacing"]) * f, "um"
        if ij.get("finterval"):
            sizes["t"], units["t"] = float(ij["finterval"]), "s"
        return sizes, units
    unit_tag = page.tags.get("ResolutionUnit")
    if unit_tag is not None and int(unit_tag.value) == 3:  # centimetre
        for ax, v in _resolution(page, 1e4).items():
            sizes[ax], units[ax] = v, "um"
    return sizes, units


def read_tiff(path, *, lazy: bool | None = None) -> ImageData:
    """Read a TIFF/OME-TIFF image (first series, full resolution) with its physical scale.

    Parameters
    ----------
    path : str or Path
    lazy : bool, optional
        Read through dask (chunks = the file's tiles/strips) instead of into memory; default: for files larger
        than :data:`LAZY_BYTES`.

    Raises
    ------
    MollifierInputError
        Not a TIFF file, a truncated or corrupt one.
    """
    path = Path(path)
    tf = _open(path)
    keep_open = False
    try:
        series = tf.series[0]
        axes_raw = series.axes.upper()
        axes = "".join(_AXIS_MAP.get(a, "q") for a in axes_raw)
        if axes.count("c") > 1:  # channels and samples: keep the first as c
            first = axes.index("c")
            axes = "".join("q" if (a == "c" and i != first) else a for i, a in enumerate(axes))
        sizes, units = _physical(tf, series.pages[0] if series.pages else tf.pages[0], axes)
        info = _ome_info(tf.ome_metadata) if tf.is_ome and tf.ome_metadata else {}
        metadata = {"path": str(path.resolve()), "format": "ome-tiff" if tf.is_ome else "tiff",
                    "file_axes": axes_raw}
        if info.get("description"):
            try:
                described = from_json(info["description"])
                if isinstance(described, dict) and "provenance" in described:
                    metadata["provenance"] = described["provenance"]
                    metadata["mollifier"] = described
            except ValueError:
                metadata["description"] = info["description"]
        channels = info.get("channels") or None
        if tf.is_imagej and tf.imagej_metadata and tf.imagej_metadata.get("Labels") and "c" in axes:
            channels = list(tf.imagej_metadata["Labels"])
        if lazy is None:  # large files, and files large for the memory left, are read lazily
            from ..validation import memory_budget

            lazy = series.nbytes > min(LAZY_BYTES, memory_budget() // 8)
        if lazy:
            import dask.array as da
            import zarr

            store = series.aszarr()
            array = zarr.open(store, mode="r")
            blocks = int(np.prod([-(-n // max(c, 1)) for n, c in zip(array.shape, array.chunks, strict=True)],
                                 dtype=object))
            # the file's tiles/strips as dask chunks; a file of very many small tiles or strips gets ~128 MB chunks
            # made of whole tiles instead, so that it does not make a task graph of millions of tasks
            data = da.from_zarr(array, chunks="auto" if blocks > 10_000 else None)
            keep_open = True  # the store reads from the open file
        else:
            try:
                data = series.asarray()
            except Exception as exc:  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
                raise MollifierInputError(
                    f"{path}: could not read the image data (truncated or corrupt TIFF: {type(exc).__name__}: {exc})"
                ) from None
    finally:
        if not keep_open:
            tf.close()
    scale = tuple(float(sizes.get(a, 1.0)) for a in axes)
    unit_list = tuple(units.get(a) if a in sizes else None for a in axes)
    if channels is not None and "c" in axes and len(channels) != data.shape[axes.index("c")]:
        channels = None
    name = path.name
    for suffix in sorted(TIFF_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return ImageData(data=data, axes=axes, scale=scale, units=unit_list, channel_names=channels,
                     metadata=metadata, name=name)


def read_ome_tiff_series(path) -> tuple[list[tuple[str, np.ndarray]], dict]:
    """All series of an OME-TIFF as ``[(name, array)]``, plus the JSON description of the first image."""
    path = Path(path)
    tf = _open(path)
    try:
        out = []
        from ..validation import check_memory

        check_memory(sum(int(s.nbytes) for s in tf.series) * 2, f"reading {path}",
                     "the file claims more pixels than fit in memory: check that it is a napari-mollifier result")
        for s in tf.series:
            try:
                out.append((s.name or "", s.asarray()))
            except Exception as exc:  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
                raise MollifierInputError(f"{path}: could not read series {s.name!r} ({exc})") from None
        info = _ome_info(tf.ome_metadata) if tf.is_ome and tf.ome_metadata else {}
    finally:
        tf.close()
    description = {}
    if info.get("description"):
        try:
            description = from_json(info["description"])
        except ValueError:
            description = {"description": info["description"]}
    return out, description


def _ome_axes(ndim_spatial: int, with_channels: bool) -> str:
    return ("C" if with_channels else "") + "ZYX"[-ndim_spatial:]


def write_ome_tiff(path, channels: dict, pixel_size=1.0, *, unit: str = "µm", description: dict | None = None,
                   extra: list | None = None, dtype=np.float64) -> Path:
    """Write named maps as the channels of one OME-TIFF image (plus extra series), atomically.

    Parameters
    ----------
    path : str or Path
        Target (``.ome.tif``); written as ``.<name>.tmp-*`` in the same folder, then renamed onto it.
    channels : dict of str -> array
        Maps of one shape (2-D or 3-D), one channel each, in this order.
    pixel_size : float or sequence
        Physical pixel size per spatial axis, in ``unit``.
    description : dict, optional
        Stored as JSON in the OME ``Image/Description`` (provenance, ROI table...).
    extra : list of (name, array), optional
        Further images (e.g. ``("labels", int array)``, ``("fields", stacked array)``) written as more series;
        a 3-D entry with one more axis than the maps is written with a channel axis.
    dtype : numpy dtype
        Storage type of the maps (float64 keeps the numbers exactly).
    """
    import tifffile

    path = Path(path)
    arrays, shape, px = check_maps(channels, pixel_size)
    nsp = len(shape)
    spatial = {"PhysicalSizeX": float(px[-1]), "PhysicalSizeXUnit": unit,
               "PhysicalSizeY": float(px[-2]), "PhysicalSizeYUnit": unit}
    if nsp == 3:
        spatial.update({"PhysicalSizeZ": float(px[0]), "PhysicalSizeZUnit": unit})
    stack = np.stack(arrays).astype(dtype, copy=False)
    meta = {"axes": _ome_axes(nsp, True), "Name": "maps", "Channel": {"Name": [str(k) for k in channels]},
            **spatial}
    if description is not None:
        meta["Description"] = to_json(description)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, ome=True, bigtiff=stack.nbytes > 2**31) as tw:
        tw.write(stack, metadata=meta)
        for name, arr in extra or []:
            arr = np.asarray(arr)
            with_c = arr.ndim == nsp + 1
            m = {"axes": _ome_axes(nsp, with_c), "Name": str(name), **spatial}
            if with_c and isinstance(name, str) and ":" in name:
                m["Name"], labels = name.split(":", 1)
                m["Channel"] = {"Name": labels.split(",")}
            tw.write(arr, metadata=m)
    return path
