"""Shared pieces of the readers and writers: the image record, units, atomic writes, hashing, JSON."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import stat
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MollifierInputError

__all__ = [
    "ImageData",
    "SPATIAL",
    "length_factor_um",
    "atomic_path",
    "file_sha256",
    "check_input_path",
    "to_json",
    "from_json",
    "json_default",
]

#: Axis letters of space (everything else -- c, t, q -- is not a length).
SPATIAL = "zyx"

# Length units -> micrometres. Readers convert every spatial scale to um so that model coefficients
# (``l2`` in um^2) mean the same thing whatever file the image came from.
_UM = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "micrometers": 1.0, "micrometres": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "nanometers": 1e-3, "nanometres": 1e-3,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3,
    "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4,
    "m": 1e6, "meter": 1e6, "metre": 1e6,
    "a": 1e-4, "å": 1e-4, "angstrom": 1e-4, "ångström": 1e-4,
    "pm": 1e-6, "picometer": 1e-6,
    "inch": 25400.0, "in": 25400.0,
}


def length_factor_um(unit) -> float | None:
    """Micrometres per ``unit`` (``"nm"`` -> 0.001), or None when ``unit`` is not a known length."""
    if unit is None:
        return None
    key = str(unit).strip().lower().replace(" ", "")
    return _UM.get(key)


@dataclass
class ImageData:
    """An image as read from a file: array (numpy or dask), axes, physical scale and metadata.

    Attributes
    ----------
    data : numpy.ndarray or dask.array.Array
        The pixels, in the file's axis order (lazy for large files).
    axes : str
        One lower-case letter per axis: ``t`` time, ``c`` channel, ``z``, ``y``, ``x`` space, ``q`` other.
    scale : tuple of float
        Size of a pixel along every axis; spatial axes in micrometres, ``t`` in ``units`` (1 for c and q).
    units : tuple of str or None
        ``"um"`` for spatial axes with a known physical size, ``None`` where the file gives none.
    channel_names : list of str or None
        One name per entry of the ``c`` axis.
    translate : tuple of float
        Origin of the image (same units as ``scale``).
    metadata : dict
        ``path``, ``format``, ``provenance`` (when the file holds a napari-mollifier result)...
    name : str
        A short name (file stem).
    """

    data: Any
    axes: str
    scale: tuple
    units: tuple
    channel_names: list | None = None
    translate: tuple | None = None
    metadata: dict = field(default_factory=dict)
    name: str = "image"

    def __post_init__(self):
        nd = len(self.data.shape)
        if len(self.axes) != nd or len(self.scale) != nd or len(self.units) != nd:
            raise ValueError(f"axes {self.axes!r}, scale {self.scale} and units {self.units} must have {nd} entries")
        if self.translate is None:
            self.translate = (0.0,) * nd

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def spatial_axes(self) -> str:
        return "".join(a for a in self.axes if a in SPATIAL)

    @property
    def pixel_size(self) -> tuple:
        """Scale of the spatial axes (um where ``has_physical_size``)."""
        return tuple(float(s) for a, s in zip(self.axes, self.scale, strict=True) if a in SPATIAL)

    @property
    def has_physical_size(self) -> bool:
        """True when every spatial axis has a physical size (in um)."""
        return all(u == "um" for a, u in zip(self.axes, self.units, strict=True) if a in SPATIAL)

    @property
    def channel_axis(self) -> int | None:
        """Index of the channel axis: ``c``, else a single unlabelled (``q``) axis, else None."""
        if "c" in self.axes:
            return self.axes.index("c")
        if self.axes.count("q") == 1:
            return self.axes.index("q")
        return None

    @property
    def n_channels(self) -> int:
        ax = self.channel_axis
        return 1 if ax is None else int(self.shape[ax])

    def channel_label(self, index: int) -> str:
        names = self.channel_names or []
        return str(names[index]) if index < len(names) and names[index] else f"channel {index}"

    def take(self, axis_letter: str, index: int) -> ImageData:
        """Return the image with one entry of an axis (``"c"``, ``"t"``...), that axis removed."""
        ax = self.axes.index(axis_letter)
        n = self.shape[ax]
        if not -n <= index < n:
            raise MollifierInputError(f"{self.name}: index {index} is out of range for axis {axis_letter!r} "
                                      f"of length {n}")
        data = self.data[(slice(None),) * ax + (index,)]
        keep = [i for i in range(len(self.axes)) if i != ax]
        names = self.channel_names if axis_letter != "c" and ax != self.channel_axis else None
        return replace(self, data=data, axes="".join(self.axes[i] for i in keep),
                       scale=tuple(self.scale[i] for i in keep), units=tuple(self.units[i] for i in keep),
                       translate=tuple(self.translate[i] for i in keep), channel_names=names)

    def channel(self, index: int) -> ImageData:
        """One channel (the channel axis removed); the image itself when it has no channel axis."""
        ax = self.channel_axis
        if ax is None:
            if index not in (0, -1):
                raise MollifierInputError(f"{self.name} has a single channel; channel {index} does not exist")
            return self
        return self.take(self.axes[ax], index)

    def with_pixel_size(self, pixel_size) -> ImageData:
        """Override the spatial scale (um): one number, or one per spatial axis."""
        values = np.atleast_1d(np.asarray(pixel_size, dtype=float))
        n = len(self.spatial_axes)
        if values.size not in (1, n) or not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise MollifierInputError(f"pixel size must be one positive number or {n} (one per spatial axis "
                                      f"{self.spatial_axes!r}), got {pixel_size!r}")
        values = list(np.broadcast_to(values, (n,)))
        scale, units = list(self.scale), list(self.units)
        for i, a in enumerate(self.axes):
            if a in SPATIAL:
                scale[i], units[i] = float(values.pop(0)), "um"
        return replace(self, scale=tuple(scale), units=tuple(units))

    def to_numpy(self, dtype=None) -> np.ndarray:
        data = self.data
        if hasattr(data, "compute"):
            data = data.compute()
        return np.asarray(data, dtype=dtype)


# --------------------------------------------------------------------------- atomic writes
def check_maps(channels: dict, pixel_size) -> tuple[list, tuple, list]:
    """Validate maps to be written together: ``(arrays, shape, pixel sizes per axis)`` or a clear error."""
    if not channels:
        raise MollifierInputError("nothing to write: no maps given")
    arrays = [np.asarray(a) for a in channels.values()]
    shape = arrays[0].shape
    if any(a.shape != shape for a in arrays):
        raise MollifierInputError(f"all maps must have one shape to share a file, got {[a.shape for a in arrays]}")
    if len(shape) not in (2, 3):
        raise MollifierInputError(f"maps must be 2-D or 3-D, got shape {shape}")
    px = [float(v) for v in np.broadcast_to(np.atleast_1d(np.asarray(pixel_size, dtype=float)), (len(shape),))]
    return arrays, shape, px


@contextlib.contextmanager
def atomic_path(path, *, directory: bool = False):
    """Yield a temporary path beside ``path``; on success move it onto ``path`` (``os.replace``).

    On any exception the temporary file or folder is removed and ``path`` is left as it was, so a failed write
    never leaves a half-written result. Folders (zarr) replace an existing folder of the same name only once the
    new one is complete. The folder's advisory write lock is held meanwhile, and leftovers of killed writers in
    it are cleared first (:mod:`napari_mollifier.io.publish`); a folder created here is removed again on failure.
    """
    from .publish import locked_folder

    path = Path(path)
    with locked_folder(path.parent):
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:10]}"
        try:
            yield tmp
            if directory:
                _replace_dir(tmp, path)
            else:
                os.replace(tmp, path)
        except BaseException:
            _remove(tmp)
            raise


def _replace_dir(tmp: Path, path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        os.replace(tmp, path)
        return
    if not path.is_dir() or path.is_symlink():
        raise MollifierInputError(f"cannot write the folder {path}: a file of that name exists")
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:10]}"
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _remove(p: Path) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink()
    except OSError:
        pass


# --------------------------------------------------------------------------- input paths
_ZARR_META = (".zarray", ".zgroup", "zarr.json")


def check_input_path(path, *, allow_store: bool = True) -> Path:
    """Return ``path`` if it is a regular file (or, with ``allow_store``, a folder holding zarr metadata).

    Anything else is a :class:`MollifierInputError` -- before anything is read or hashed, so a device
    (``/dev/zero``), a FIFO or a large folder that is not a store is refused at once instead of read without end.
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise MollifierInputError(f"{p}: no such file or folder") from None
    except OSError as exc:
        raise MollifierInputError(f"{p}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISREG(st.st_mode):
        return p
    if stat.S_ISDIR(st.st_mode):
        if allow_store and any((p / n).is_file() for n in _ZARR_META):
            return p
        raise MollifierInputError(
            f"{p} is a folder, not " + ("an image file or a zarr store (it has no .zarray, .zgroup or zarr.json)"
                                        if allow_store else "a file") + ": give an image file"
            + (" or a zarr folder" if allow_store else "")
        )
    kind = ("a character device" if stat.S_ISCHR(st.st_mode) else "a block device" if stat.S_ISBLK(st.st_mode)
            else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
            else "not a regular file")
    raise MollifierInputError(f"{p} is {kind}, not a regular file: give an image file (TIFF, zarr folder, SMLM "
                              "table or .npy) that can be read to its end")


# --------------------------------------------------------------------------- hashing
def file_sha256(path) -> str:
    """Return the sha256 of a file, or of a folder (zarr): every file's relative path and bytes, in sorted order.

    Anything else (a device, a FIFO, a folder that is not a zarr store) is refused before reading.
    """
    path = check_input_path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode())
            h.update(b"\0")
            _update_file(h, f)
        return h.hexdigest()
    _update_file(h, path)
    return h.hexdigest()


def _update_file(h, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


# --------------------------------------------------------------------------- JSON
def json_default(obj):
    """JSON encoder for numpy scalars and arrays, paths and tuples inside provenance."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _clean(obj):
    """Replace non-finite floats by strings so the JSON is strict (``NaN`` is not JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def _unclean(obj):
    if isinstance(obj, str) and obj in ("nan", "inf", "-inf"):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _unclean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unclean(v) for v in obj]
    return obj


def to_json(obj, **kwargs) -> str:
    """Strict JSON (non-finite floats as the strings "nan"/"inf"; numpy types as Python ones)."""
    return json.dumps(_clean(json.loads(json.dumps(obj, default=json_default))), **kwargs)


def from_json(text: str):
    """Inverse of :func:`to_json` (the strings "nan"/"inf" become floats again)."""
    try:
        return _unclean(json.loads(text))
    except RecursionError:
        raise ValueError("the JSON is nested too deeply to be a provenance or metadata record") from None
