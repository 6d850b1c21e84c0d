"""Zarr and OME-Zarr: read level 0 of a (multiscale) image lazily; write maps as OME-Zarr with provenance.

Reading (:func:`read_zarr`) opens the store read-only and wraps the array in dask, so only the chunks that are
looked at (or computed on) are ever loaded. For OME-Zarr (NGFF 0.4, ``multiscales`` in the group attributes,
or 0.5, under ``ome``) the first dataset of the first multiscale is used; its scale is the product of the
dataset's and the multiscale's ``coordinateTransformations`` ``scale`` entries, its origin their
``translation``; axis names, types and units come from ``axes`` (spatial units converted to micrometres; a
spatial axis without a unit has an unknown physical size). Channel names come from ``omero.channels[].label``.
A plain zarr array, or a group holding one array, is read as it is (pixel size unknown).

Writing (:func:`write_ome_zarr`): NGFF 0.4 in zarr format 2 (read by napari-ome-zarr, Fiji's N5/OME-Zarr
readers and ome-zarr-py): the maps are the channels of the image at path ``0``, further arrays sit beside it,
label images under ``labels/``, the provenance in the group attribute ``mollifier``. The folder is written under
a temporary name beside the target and renamed when complete.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MollifierInputError
from ._common import ImageData, atomic_path, check_input_path, check_maps, from_json, length_factor_um, to_json

__all__ = ["is_zarr", "read_zarr", "read_zarr_labels", "write_ome_zarr", "open_group"]

_META_FILES = ("zarr.json", ".zgroup", ".zarray")


def is_zarr(path) -> bool:
    """Tell whether ``path`` is a folder that is a zarr store (zarr metadata inside, or a name ending ``.zarr``)."""
    try:
        p = Path(path)
        if not p.is_dir():
            return False
        return any((p / n).is_file() for n in _META_FILES) or p.name.lower().endswith(".zarr")
    except (OSError, TypeError, ValueError):
        return False


def _open(path: Path):
    import zarr

    if not path.is_dir():
        check_input_path(path)  # a device, FIFO... is named as such
        raise MollifierInputError(f"{path}: no such folder (a zarr store is a folder)")
    if not any((path / n).is_file() for n in _META_FILES):
        raise MollifierInputError(
            f"{path} is not a zarr store: it has no zarr metadata (zarr.json, .zgroup or .zarray), so it holds "
            "no array"
        )
    try:
        return zarr.open(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
        raise MollifierInputError(f"{path}: the zarr store cannot be opened ({type(exc).__name__}: {exc})") from None


def open_group(path):
    """Open the zarr group at ``path`` (read-only), with a clear error for anything else."""
    import zarr

    node = _open(Path(path))
    if not isinstance(node, zarr.Group):
        raise MollifierInputError(f"{path} is a zarr array, not a group")
    return node


def _ome_attrs(attrs: dict) -> dict:
    """NGFF metadata whatever the version (0.5 keeps it under ``ome``)."""
    if isinstance(attrs.get("ome"), dict):
        return {**attrs, **attrs["ome"]}
    return attrs


def _axis_letter(axis) -> str:
    if isinstance(axis, str):
        name, kind = axis.lower(), ""
    else:
        name, kind = str(axis.get("name", "")).lower(), str(axis.get("type", "")).lower()
    if name in ("c", "channel", "ch") or kind == "channel":
        return "c"
    if name in ("t", "time") or kind == "time":
        return "t"
    if name in ("z", "y", "x"):
        return name
    return "q"


def _transform(transforms, ndim) -> tuple[np.ndarray, np.ndarray]:
    scale, translate = np.ones(ndim), np.zeros(ndim)
    for tr in transforms or []:
        if not isinstance(tr, dict):
            continue
        if tr.get("type") == "scale" and "scale" in tr and len(tr["scale"]) == ndim:
            scale = scale * np.asarray(tr["scale"], dtype=float)
        elif tr.get("type") == "translation" and "translation" in tr and len(tr["translation"]) == ndim:
            translate = translate + np.asarray(tr["translation"], dtype=float)
    return scale, translate


#: Most chunks a zarr array may have to be wrapped lazily (dask builds one task per chunk).
MAX_CHUNKS = 10_000_000


def _lazy(array):
    import dask.array as da

    shape = tuple(int(n) for n in array.shape)
    chunks = tuple(int(c) for c in (getattr(array, "chunks", None) or shape))
    n_chunks = 1
    for n, c in zip(shape, chunks, strict=True):
        n_chunks *= -(-n // max(c, 1))
    if n_chunks > MAX_CHUNKS:
        pixels = 1
        for n in shape:
            pixels *= n
        raise MollifierInputError(
            f"the zarr array claims shape {shape} ({_big(pixels)} pixels in {_big(n_chunks)} chunks of {chunks}): "
            "far more than any image; its .zarray / zarr.json metadata is corrupt or hostile: check the file"
        )
    return da.from_zarr(array)


def _big(n: int) -> str:
    return str(n) if n < 10**12 else f"~1e{len(str(n)) - 1}"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_zarr(path, *, level: int = 0) -> ImageData:
    """Read a zarr array or an (OME-)Zarr image lazily (dask), level ``level`` of a multiscale.

    Raises
    ------
    MollifierInputError
        The folder is not a zarr store, holds no array, or its OME metadata names an array that is missing.
    """
    import zarr

    path = Path(path)
    node = _open(path)
    metadata = {"path": str(path.resolve()), "format": "zarr"}
    if isinstance(node, zarr.Array):
        return _plain(node, path, metadata)
    attrs = _ome_attrs(dict(node.attrs))
    mollifier = attrs.get("mollifier")
    if isinstance(mollifier, str):
        try:
            mollifier = from_json(mollifier)
        except ValueError:
            mollifier = None
    if isinstance(mollifier, dict):
        metadata["mollifier"] = mollifier
        if "provenance" in mollifier:
            metadata["provenance"] = mollifier["provenance"]
    multiscales = attrs.get("multiscales")
    if not multiscales:
        arrays = sorted(name for name, _ in node.arrays())
        if not arrays:
            raise MollifierInputError(
                f"{path}: the zarr group holds no array (and no OME 'multiscales' metadata): nothing to read"
            )
        if len(arrays) > 1 and "0" not in arrays:
            raise MollifierInputError(
                f"{path}: the zarr group holds several arrays ({', '.join(arrays)}) and no OME 'multiscales' "
                f"metadata: open one of them, e.g. {path / arrays[0]}"
            )
        return _plain(node["0" if "0" in arrays else arrays[0]], path, metadata)
    ms = multiscales[0]
    datasets = ms.get("datasets") or []
    if not datasets:
        raise MollifierInputError(f"{path}: OME 'multiscales' lists no dataset (no array to read)")
    if not 0 <= level < len(datasets):
        raise MollifierInputError(f"{path}: level {level} does not exist (the multiscale has {len(datasets)})")
    ds = datasets[level]
    try:
        array = node[ds["path"]]
    except (KeyError, TypeError):
        raise MollifierInputError(
            f"{path}: the OME metadata names the array {ds.get('path')!r}, but the group has no such array"
        ) from None
    if not isinstance(array, zarr.Array):
        raise MollifierInputError(f"{path}: {ds.get('path')!r} is a group, not an array")
    ndim = array.ndim
    axes_meta = ms.get("axes") or list("tczyx"[-ndim:])
    if len(axes_meta) != ndim:
        raise MollifierInputError(f"{path}: OME 'axes' has {len(axes_meta)} entries for a {ndim}-D array")
    letters = [_axis_letter(a) for a in axes_meta]
    s1, t1 = _transform(ds.get("coordinateTransformations"), ndim)
    s2, t2 = _transform(ms.get("coordinateTransformations"), ndim)
    scale, translate = s1 * s2, t1 * s2 + t2
    units = []
    for i, (letter, axis) in enumerate(zip(letters, axes_meta, strict=True)):
        unit = axis.get("unit") if isinstance(axis, dict) else None
        if letter in "zyx":
            f = length_factor_um(unit)
            if f is None:
                units.append(None)
            else:
                scale[i] *= f
                translate[i] *= f
                units.append("um")
        elif letter == "t" and unit:
            units.append(str(unit))
        else:
            units.append(None)
    if letters.count("c") > 1:
        letters = [a if a != "c" or i == letters.index("c") else "q" for i, a in enumerate(letters)]
    omero = attrs.get("omero") or {}
    names = [ch.get("label") for ch in omero.get("channels", []) if isinstance(ch, dict)] or None
    if names is not None and ("c" not in letters or len(names) != array.shape[letters.index("c")]):
        names = None
    metadata.update({"format": "ome-zarr", "ngff_version": ms.get("version") or attrs.get("version"),
                     "dataset": ds["path"]})
    return ImageData(data=_lazy(array), axes="".join(letters), scale=tuple(float(s) for s in scale),
                     units=tuple(units), channel_names=names, translate=tuple(float(t) for t in translate),
                     metadata=metadata, name=_stem(path))


def _plain(array, path: Path, metadata: dict) -> ImageData:
    ndim = array.ndim
    if ndim < 2:
        raise MollifierInputError(f"{path}: the zarr array is {ndim}-D; an image needs at least 2 axes (y, x)")
    attrs = dict(array.attrs)
    dims = attrs.get("_ARRAY_DIMENSIONS") or getattr(getattr(array, "metadata", None), "dimension_names", None)
    if dims and len(dims) == ndim and all(d is not None for d in dims):
        axes = "".join(_axis_letter(str(d)) for d in dims)
    else:
        axes = "q" * (ndim - 2) + "yx"
    if axes.count("c") > 1:
        axes = "".join(a if a != "c" or i == axes.index("c") else "q" for i, a in enumerate(axes))
    return ImageData(data=_lazy(array), axes=axes, scale=(1.0,) * ndim, units=(None,) * ndim,
                     metadata=metadata, name=_stem(path))


def read_zarr_labels(path) -> dict:
    """OME-Zarr label images (``labels/<name>``, level 0) as ``{name: dask array}``; empty when there are none."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
        if not isinstance(node, zarr.Group) or "labels" not in node:
            return {}
        group = node["labels"]
        names = _ome_attrs(dict(group.attrs)).get("labels") or []
        out = {}
        for name in names:
            sub = group[name]
            ms = _ome_attrs(dict(sub.attrs)).get("multiscales") or [{"datasets": [{"path": "0"}]}]
            out[str(name)] = _lazy(sub[ms[0]["datasets"][0]["path"]])
        return out
    except Exception:  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
        return {}


def _chunks(shape, channel: bool) -> tuple:
    spatial = shape[1:] if channel else shape
    inner = tuple(min(n, 1024 if len(spatial) == 2 else 128) for n in spatial)
    return ((1,) + inner) if channel else inner


def _window(a: np.ndarray) -> dict:
    finite = a[np.isfinite(a)] if a.dtype.kind == "f" else a.ravel()
    if finite.size == 0:
        return {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}
    lo, hi = float(finite.min()), float(finite.max())
    return {"min": lo, "max": hi, "start": lo, "end": hi}


def _multiscale(name: str, axes: list, scale: list) -> dict:
    return {
        "version": "0.4",
        "name": name,
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }


def write_ome_zarr(path, channels: dict, pixel_size=1.0, *, unit: str = "micrometer", attrs: dict | None = None,
                   extra: dict | None = None, labels: dict | None = None, dtype=np.float64) -> Path:
    """Write named maps as the channels of an OME-Zarr image (NGFF 0.4, zarr format 2), atomically.

    Parameters
    ----------
    path : str or Path
        Target folder (``.ome.zarr``); built as ``.<name>.tmp-*`` beside it and renamed when complete.
    channels : dict of str -> array
        Maps of one shape (2-D or 3-D), one channel each.
    pixel_size : float or sequence
        Physical pixel size per spatial axis, in ``unit`` (an NGFF unit name such as ``"micrometer"``).
    attrs : dict, optional
        Stored (as JSON-safe values) in the group attribute ``mollifier`` (provenance, ROI table...).
    extra : dict of str -> array, optional
        Further arrays stored beside the image (``fields/phi_h``...).
    labels : dict of str -> int array, optional
        Label images (NGFF ``labels/<name>``).
    """
    import zarr

    path = Path(path)
    arrays, shape, px = check_maps(channels, pixel_size)
    nsp = len(shape)
    space = [{"name": a, "type": "space", "unit": unit} for a in "zyx"[-nsp:]]
    stack = np.stack(arrays).astype(dtype, copy=False)
    with atomic_path(path, directory=True) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        image = root.create_array("0", shape=stack.shape, dtype=stack.dtype, chunks=_chunks(stack.shape, True),
                                  fill_value=np.nan if stack.dtype.kind == "f" else 0)
        image[...] = stack
        meta = {
            "multiscales": [_multiscale("maps", [{"name": "c", "type": "channel"}] + space, [1.0] + px)],
            "omero": {"version": "0.4", "name": "maps", "channels": [
                {"label": str(k), "active": i == 0, "color": "FFFFFF", "window": _window(a)}
                for i, (k, a) in enumerate(zip(channels, arrays, strict=True))
            ]},
        }
        if attrs is not None:
            meta["mollifier"] = from_json(to_json(attrs))
        root.attrs.update(meta)
        for name, arr in (extra or {}).items():
            arr = np.asarray(arr)
            node = root.create_array(str(name), shape=arr.shape, dtype=arr.dtype, chunks=_chunks(arr.shape, False),
                                     fill_value=np.nan if arr.dtype.kind == "f" else 0)
            node[...] = arr
        if labels:
            lgroup = root.create_group("labels")
            lgroup.attrs.update({"labels": [str(k) for k in labels]})
            for name, arr in labels.items():
                arr = np.asarray(arr)
                sub = lgroup.create_group(str(name))
                node = sub.create_array("0", shape=arr.shape, dtype=arr.dtype, chunks=_chunks(arr.shape, False),
                                        fill_value=0)
                node[...] = arr
                sub.attrs.update({"multiscales": [_multiscale(str(name), space, px)],
                                  "image-label": {"version": "0.4"}})
    return path
