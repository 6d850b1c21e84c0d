"""Re-run a recorded computation: ``rerun(provenance) -> RateResult``, the same numbers on the CPU.

A result made from files (the ``mollifier`` CLI, :func:`napari_mollifier.app.jobs.infer_files`) carries in its
provenance the input files with their sha256 (``provenance["inputs"]``) and the exact call
(``provenance["call"]``: how the fields were built and every solver argument, device resolved). :func:`rerun`
finds the files again, refuses any whose bytes changed, rebuilds the fields the same way, checks that they hash
to the recorded arrays (``provenance["input_hashes"]``) and calls the same function with the same arguments.
On the CPU (float64, seeded bootstrap) that reproduces the saved maps bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MollifierInputError
from ..result import RateResult

__all__ = ["rerun", "read_provenance", "compare_results", "check_provenance"]

#: Largest provenance JSON read (a real one is a few kB; the ROI table of thousands of labels some MB).
MAX_PROVENANCE_BYTES = 64 << 20
_ROLES = ("image", "phi_h", "phi_e", "roi")
_FUNCTIONS = ("napari_mollifier.infer_rates", "napari_mollifier.tiling.infer_tiled")


def _type_error(key: str, expected: str, value) -> MollifierInputError:
    return MollifierInputError(f"provenance key {key} must be {expected}, got {type(value).__name__} "
                               f"{str(value)[:60]!r}: the provenance file is damaged or was edited; use the one the "
                               "run wrote")


def check_provenance(prov: dict) -> None:
    """Check the types and bounds of a provenance's ``inputs`` and ``call`` before anything is read or run.

    A bad entry is a :class:`MollifierInputError` naming its key.
    """
    from ..validation import check_solver_arguments

    inputs, call = prov.get("inputs"), prov.get("call")
    if not isinstance(inputs, list):
        raise _type_error("inputs", "a list of input records", inputs)
    for i, rec in enumerate(inputs):
        if not isinstance(rec, dict):
            raise _type_error(f"inputs[{i}]", "a record {role, path, sha256}", rec)
        if rec.get("role") not in _ROLES:
            raise _type_error(f"inputs[{i}].role", f"one of {_ROLES}", rec.get("role"))
        if not isinstance(rec.get("path"), str) or not rec["path"]:
            raise _type_error(f"inputs[{i}].path", "a file path", rec.get("path"))
        if rec["path"].lower().endswith(".json"):
            raise MollifierInputError(f"provenance key inputs[{i}].path names {rec['path']}, a JSON file: an input "
                                      "of a run is an image, never a provenance record")
        if rec.get("sha256") is not None and not isinstance(rec["sha256"], str):
            raise _type_error(f"inputs[{i}].sha256", "a hex digest", rec["sha256"])
    if not isinstance(call, dict):
        raise _type_error("call", "a record {function, load, kwargs}", call)
    if call.get("function", "napari_mollifier.infer_rates") not in _FUNCTIONS:
        raise _type_error("call.function", f"one of {_FUNCTIONS}", call.get("function"))
    kwargs = call.get("kwargs")
    if not isinstance(kwargs, dict):
        raise _type_error("call.kwargs", "a record of solver arguments", kwargs)
    load = call.get("load") or {}
    if not isinstance(load, dict):
        raise _type_error("call.load", "a record {channels, t, pixel_size, smlm}", load)
    for key in ("model", "method", "kernel", "boundary", "roi_mode", "device", "base"):
        if key in kwargs and kwargs[key] is not None and not isinstance(kwargs[key], str):
            raise _type_error(f"call.kwargs.{key}", "a name (text)", kwargs[key])
    radius = kwargs.get("radius", "auto")
    if radius != "auto" and (isinstance(radius, bool) or not isinstance(radius, (int, float))):
        raise _type_error("call.kwargs.radius", "'auto' or a number of pixels", radius)
    if "tile" in kwargs and (isinstance(kwargs["tile"], bool) or not isinstance(kwargs["tile"], int)
                             or not 16 <= kwargs["tile"] <= 2**20):
        raise _type_error("call.kwargs.tile", "a tile size of 16 .. 1048576 px", kwargs["tile"])
    check_solver_arguments(model=kwargs.get("model", "chromatin-balance"), params=kwargs.get("params"),
                           pixel_size=kwargs.get("pixel_size"), n_bootstrap=kwargs.get("n_bootstrap", 0),
                           iterations=kwargs.get("iterations"), seed=kwargs.get("seed", 0),
                           noise=kwargs.get("noise", "auto"), prefix="call.kwargs")
    if load.get("pixel_size") is not None:
        from ..validation import check_pixel_size

        check_pixel_size(load["pixel_size"], key="call.load.pixel_size", unit="um")
    if load.get("t") is not None and (isinstance(load["t"], bool) or not isinstance(load["t"], int)):
        raise _type_error("call.load.t", "a time-point index", load["t"])
    channels = load.get("channels")
    if channels is not None and (not isinstance(channels, list)
                                 or not all(isinstance(c, (int, str)) and not isinstance(c, bool) for c in channels)):
        raise _type_error("call.load.channels", "a list of channel indices or names", channels)
    smlm = load.get("smlm")
    if smlm is not None:
        if not isinstance(smlm, dict):
            raise _type_error("call.load.smlm", "a record of SMLM rendering options", smlm)
        key = "pixel_size" if "pixel_size" in smlm else "pixel_size_nm"  # the name before the rename
        px = smlm.get(key, 20.0)
        if isinstance(px, bool) or not isinstance(px, (int, float)) or not 1e-3 <= px <= 1e9:
            raise _type_error(f"call.load.smlm.{key}", "a pixel size in nm (0.001 .. 1e9)", px)


def read_provenance(source) -> tuple[dict, Path | None]:
    """``(provenance, folder it came from)`` from a dict, a RateResult, a provenance JSON or a result file."""
    from ..io import from_json, load_result
    from ..io.results import result_format

    if isinstance(source, RateResult):
        return dict(source.provenance), None
    if isinstance(source, dict):
        return (dict(source["provenance"]) if "provenance" in source and "call" not in source else dict(source)), None
    from ..io._common import check_input_path

    path = check_input_path(source)
    if path.is_file() and path.name.lower().endswith(".json"):
        if path.stat().st_size > MAX_PROVENANCE_BYTES:
            raise MollifierInputError(f"{path}: {path.stat().st_size} bytes is far too large for a provenance "
                                      f"record (at most {MAX_PROVENANCE_BYTES}): give the *.provenance.json of a run")
        try:
            data = from_json(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise MollifierInputError(f"{path}: not a JSON provenance file ({exc})") from None
        if not isinstance(data, dict):
            raise MollifierInputError(f"{path}: not a provenance record")
        prov = data["provenance"] if "provenance" in data else data  # noqa: SIM401 - layer lists are not dicts
        if not isinstance(prov, dict):
            raise _type_error("provenance", "a record", prov)
        return prov, path.parent
    try:
        result_format(path)
    except MollifierInputError:
        raise MollifierInputError(
            f"{path}: give a provenance JSON (*.provenance.json) or a saved result (.ome.tif, .ome.zarr, .npz)"
        ) from None
    return load_result(path).provenance, path.parent


def _locate(record: dict, search: list[Path], check: bool) -> Path:
    """Return the recorded path if it is there, else a file of the same name in one of the ``search`` folders.

    When checking, that file must also have the same sha256.
    """
    from ..io import file_sha256
    from ..io._common import check_input_path

    path = Path(record["path"])
    digest = record.get("sha256") if check else None
    if path.exists() or path.is_symlink():
        return check_input_path(path)  # a regular file or a zarr store, before it is hashed or read
    others = []
    for folder in search:
        candidate = Path(folder) / path.name
        if candidate.exists():
            check_input_path(candidate)
            if digest is None or file_sha256(candidate) == digest:
                return candidate
            others.append(str(candidate))
    note = f"; {', '.join(others)} has other contents" if others else ""
    raise MollifierInputError(
        f"input {record.get('role', '')} file {path} was not found (looked also in {[str(s) for s in search]}"
        f"{note}): restore it or pass data_dir=the folder that holds it"
    )


def rerun(source, *, device: str | None = None, data_dir=None, check_hashes: bool = True, progress=None) -> RateResult:
    """Repeat the computation recorded in ``source`` and return its :class:`RateResult`.

    Parameters
    ----------
    source : dict, RateResult, or path
        A provenance dict, a result, a ``*.provenance.json`` written by the CLI, or a saved result file.
    device : str, optional
        Run on another device than the recorded one (results then agree only to float32 round-off on a GPU).
    data_dir : path, optional
        Where to look for input files that are no longer at their recorded path (matched by file name; the
        folder of a provenance/result file is searched too).
    check_hashes : bool
        Refuse inputs whose sha256 differs from the recorded one (default). The rebuilt fields are always
        checked against ``provenance["input_hashes"]``.

    Raises
    ------
    MollifierInputError
        The provenance has no ``inputs``/``call`` record (results of ``infer_rates`` on in-memory arrays cannot
        be re-run from files), an input is missing or changed, or the rebuilt fields differ.
    """
    from ..io import file_sha256
    from ..solve import infer_rates
    from ..tiling import infer_tiled, tiled_kwargs
    from .jobs import load_fields

    prov, origin = read_provenance(source)
    inputs, call = prov.get("inputs"), prov.get("call")
    if not inputs or not isinstance(call, dict) or "kwargs" not in call:
        raise MollifierInputError(
            "this provenance has no 'inputs'/'call' record, so it cannot be re-run: only results computed from "
            "files (the mollifier CLI or napari_mollifier.app.jobs.infer_files) record how to repeat them"
        )
    check_provenance(prov)
    search = [Path(p) for p in ([data_dir] if data_dir else [])] + ([origin] if origin else [])
    records = []
    for rec in inputs:
        path = _locate(rec, search, check_hashes)
        if check_hashes and rec.get("sha256"):
            digest = file_sha256(path)
            if digest != rec["sha256"]:
                raise MollifierInputError(
                    f"input {path} has changed since the run (sha256 {digest[:12]}... != recorded "
                    f"{rec['sha256'][:12]}...): the result cannot be reproduced from it"
                )
        records.append({**rec, "path": str(path)})
    kwargs = dict(call["kwargs"])
    load = dict(call.get("load") or {})
    fields, roi, _, _ = load_fields(records, load, kwargs.get("model", "chromatin-balance"))
    if device is not None:
        kwargs["device"] = device
    tile = kwargs.pop("tile", None)
    if call.get("function", "").endswith("infer_tiled"):
        result = infer_tiled(fields, roi=roi, tile=int(tile), progress=progress, **tiled_kwargs(kwargs))
    else:
        result = infer_rates(fields, roi=roi, progress=progress, **kwargs)
    recorded = prov.get("input_hashes")
    if recorded and result.provenance.get("input_hashes") != recorded:
        raise MollifierInputError(
            "the fields rebuilt from the input files differ from the recorded ones (input_hashes mismatch): "
            "the files or the reader changed"
        )
    if tile is not None:
        kwargs["tile"] = tile
    result.provenance["inputs"] = records
    result.provenance["call"] = {**call, "kwargs": kwargs}
    result.provenance["rerun_of"] = {"created": prov.get("created"), "device": prov.get("device"),
                                     "software": prov.get("software")}
    return result


def compare_results(a: RateResult, b: RateResult) -> dict:
    """Compare two results map by map.

    Gives the max absolute difference per map (``rate``, ``uncertainty``, ``residual``, each field) and whether the
    NaN patterns agree; ``identical`` is True when every map is bit-for-bit equal.
    """
    out = {}
    identical = True
    pairs = [(k, getattr(a, k), getattr(b, k)) for k in ("rate", "uncertainty", "residual")]
    pairs += [(f"fields.{k}", a.fields[k], b.fields.get(k)) for k in a.fields]
    for name, x, y in pairs:
        if y is None or np.shape(x) != np.shape(y):
            out[name] = float("inf")
            identical = False
            continue
        x, y = np.asarray(x), np.asarray(y)
        same_nan = bool(np.array_equal(np.isnan(x), np.isnan(y)))
        both = np.isfinite(x) & np.isfinite(y)
        diff = float(np.max(np.abs(x[both] - y[both]))) if both.any() else 0.0
        out[name] = diff if same_nan else float("inf")
        identical &= same_nan and bool(np.array_equal(x, y, equal_nan=True))
    out["identical"] = identical
    return out
