"""Rate maps from files, recorded so that they can be re-run.

The entry points are :func:`infer_files`, :func:`run_job` and :func:`run_batch`.

:func:`infer_files` reads the inputs, builds the fields, calls :func:`~napari_mollifier.infer_rates` (tiled when
the image does not fit in memory, :mod:`napari_mollifier.tiling`) and adds two entries to the provenance:

* ``provenance["inputs"]``: every file read, as ``{"role", "path" (absolute), "sha256"}`` (role ``image``,
  ``phi_h``, ``phi_e`` or ``roi``; a zarr folder is hashed file by file);
* ``provenance["call"]``: ``{"function", "load", "kwargs"}`` -- how the fields were built from the files
  (channels, time point, pixel size, SMLM rendering) and every argument of the solver, with the device resolved
  (``"auto"`` -> ``"cpu"``), so :func:`napari_mollifier.rerun` repeats exactly the same computation.

How a chromatin input is given:

* one multi-channel image: ``channels=(i, j)`` are the indices (or OME channel names) of phi_h and phi_e along
  the channel axis; a 2-channel image defaults to ``(0, 1)``;
* two single-channel files: ``phi_h=...``, ``phi_e=...``;
* one single-channel image or an SMLM table: a chromatin *density*, split into volume fractions by
  :func:`napari_mollifier.density.split_density` (a documented assumption, recorded in the provenance).
"""

from __future__ import annotations

import csv
import errno
import time
import warnings
from pathlib import Path

import numpy as np

from ..errors import MollifierInputError, MollifierOutputError, MollifierWarning
from ..io._common import ImageData, check_input_path, file_sha256, to_json
from ..io.publish import pause, publish
from ..models import get_model

__all__ = ["infer_files", "load_fields", "run_job", "run_batch", "write_outputs", "job_name", "OUTPUT_FORMATS"]

OUTPUT_FORMATS = {"ome-tif": ".ome.tif", "ome-zarr": ".ome.zarr", "npz": ".npz"}
_SOLVER_KEYS = ("model", "params", "radius", "method", "device", "seed", "kernel", "boundary", "roi_mode",
                "uncertainty", "n_bootstrap", "noise", "noise_correlation", "radius_rule", "iterations", "base",
                "allow_constant")
#: Pixel size used when a file has none and none is given (lengths, and coefficients such as l2, in pixels).
DEFAULT_PIXEL_SIZE = 1.0


def _record(role: str, path) -> dict:
    p = check_input_path(path)
    return {"role": role, "path": str(p.resolve()), "sha256": file_sha256(p)}


def _squeeze_extra(img: ImageData, t, keep: int | None) -> ImageData:
    """Remove a time axis (pick ``t``) and singleton axes other than the channel axis ``keep``."""
    if "t" in img.axes:
        n = img.shape[img.axes.index("t")]
        if t is None and n > 1:
            raise MollifierInputError(f"{img.name} has {n} time points: choose one with t=INDEX (--t)")
        img = img.take("t", 0 if t is None else int(t))
    elif t not in (None, 0):
        raise MollifierInputError(f"{img.name} has no time axis; t={t} cannot be used")
    changed = True
    while changed:
        changed = False
        for i, a in enumerate(img.axes):
            if a in "zyx" or (keep is not None and a == img.axes[keep]):
                continue
            if img.shape[i] == 1:
                img = img.take(a, 0)
                changed = True
                break
    return img


def _channel_index(img: ImageData, ch) -> int:
    if isinstance(ch, (int, np.integer)):
        return int(ch)
    text = str(ch).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    names = [str(n).lower() for n in (img.channel_names or [])]
    if text.lower() in names:
        return names.index(text.lower())
    raise MollifierInputError(
        f"{img.name}: no channel named {text!r}" + (f" (channels: {img.channel_names})" if img.channel_names else
                                                   " (the file has no channel names: use indices 0, 1...)")
    )


def _spatial(img: ImageData, what: str) -> ImageData:
    extra = [a for a in img.axes if a not in "zyx"]
    if extra:
        raise MollifierInputError(
            f"{img.name}: {what} still has non-spatial axes {''.join(extra)!r} (shape {img.shape}, axes "
            f"{img.axes!r}): pick one channel/time point"
        )
    if len(img.axes) not in (2, 3):
        raise MollifierInputError(f"{img.name}: {what} must be 2-D or 3-D, got axes {img.axes!r}")
    return img


def _smlm_options(smlm: dict | None) -> dict | None:
    """Return the SMLM rendering options of a load recipe, the pixel size under its current name.

    Records written before the rename say ``pixel_size_nm``.
    """
    if not smlm:
        return None
    smlm = dict(smlm)
    if "pixel_size_nm" in smlm and "pixel_size" not in smlm:
        smlm["pixel_size"] = smlm.pop("pixel_size_nm")
    return smlm


def load_fields(records: list[dict], load: dict, model="chromatin-balance") -> tuple[dict, np.ndarray | None,
                                                                                    tuple, dict]:
    """Build ``(fields, roi, pixel_size, info)`` from input records and a ``load`` recipe (see the module doc).

    ``records``: ``[{"role", "path"}]``; ``load``: ``{"channels", "t", "pixel_size", "smlm"}``.
    """
    from ..io import read_image, read_labels

    m = get_model(model)
    paths = {r["role"]: r["path"] for r in records}
    smlm = _smlm_options(load.get("smlm"))
    t = load.get("t")
    channels = load.get("channels")
    override = load.get("pixel_size")
    info: dict = {}
    if "phi_h" in paths or "phi_e" in paths:
        if set(m.inputs) != {"phi_h", "phi_e"}:
            raise MollifierInputError(f"phi_h/phi_e files were given but model {m.name!r} needs {m.inputs}")
        images = {}
        for role in ("phi_h", "phi_e"):
            if role not in paths:
                raise MollifierInputError(f"the {role} file is missing: give both phi_h and phi_e")
            img = _squeeze_extra(read_image(paths[role], smlm=smlm), t, None)
            if img.channel_axis is not None and img.n_channels > 1:
                raise MollifierInputError(
                    f"{paths[role]} has {img.n_channels} channels: a {role} file must hold one channel "
                    "(or give one multi-channel file with channels=phi_h,phi_e)"
                )
            if img.channel_axis is not None:
                img = img.channel(0)
            images[role] = _spatial(img, role)
        ref = images["phi_h"]
        if images["phi_e"].shape != ref.shape:
            raise MollifierInputError(f"phi_h {ref.shape} and phi_e {images['phi_e'].shape} differ in shape")
        if (ref.has_physical_size and images["phi_e"].has_physical_size
                and not np.allclose(ref.pixel_size, images["phi_e"].pixel_size, rtol=1e-6)):
            raise MollifierInputError(
                f"phi_h and phi_e files have different pixel sizes ({ref.pixel_size} vs "
                f"{images['phi_e'].pixel_size} um)"
            )
        _check_field_memory(ref, 2, paths["phi_h"])
        fields = {k: v.to_numpy(np.float64) for k, v in images.items()}
        info["source"] = ref.name
    else:
        if "image" not in paths:
            raise MollifierInputError("no input image given")
        img = read_image(paths["image"], smlm=smlm)
        keep = img.channel_axis
        img = _squeeze_extra(img, t, keep)
        keep_ax = img.channel_axis
        n = img.n_channels
        if channels is None or len(channels) == 0:
            if keep_ax is None or n == 1:
                channels = [0]
            elif n == len(m.inputs):
                channels = list(range(n))
            else:
                names = f" ({', '.join(img.channel_label(i) for i in range(n))})"
                raise MollifierInputError(
                    f"{paths['image']} has {n} channels{names}: choose the {', '.join(m.inputs)} channels, e.g. "
                    f"channels={','.join(str(i) for i in range(len(m.inputs)))}"
                )
        if len(channels) != len(m.inputs) and not (len(channels) == 1 and "phi_e" in m.inputs):
            raise MollifierInputError(
                f"model {m.name!r} needs {len(m.inputs)} channel(s) ({', '.join(m.inputs)})"
                + (" or one density channel" if "phi_e" in m.inputs else "") + f", got channels={list(channels)}"
            )
        idx = [_channel_index(img, c) for c in channels]
        for i in idx:
            if not -n <= i < n:
                raise MollifierInputError(f"{paths['image']}: channel {i} does not exist (it has {n})")
        picked = [_spatial(img.channel(i), f"channel {i}") for i in idx]
        _check_field_memory(picked[0], len(picked) if len(idx) == len(m.inputs) else 3, paths["image"])
        if len(idx) == len(m.inputs):
            fields = {k: p.to_numpy(np.float64) for k, p in zip(m.inputs, picked, strict=True)}
        else:
            fields = {"density": picked[0].to_numpy(np.float64)}
        ref = picked[0]
        info.update({"source": img.name, "channels": [img.channel_label(i) if keep_ax is not None else "single"
                                                      for i in idx]})
        load["channels"] = idx
    source = ref.metadata.get("path", ref.name)
    if override is not None:
        ref = ref.with_pixel_size(override)
        info["pixel_size_source"] = "given"
    elif ref.has_physical_size:
        info["pixel_size_source"] = "file"
    elif load.get("params_given"):
        raise MollifierInputError(
            f"{source} has no physical pixel size (no pixel-size metadata), and the coefficients given (--param) "
            "are in um: pass the pixel size (pixel_size=..., --pixel-size-um UM)"
        )
    else:
        ref = ref.with_pixel_size(DEFAULT_PIXEL_SIZE)
        info["pixel_size_source"] = (f"default: {DEFAULT_PIXEL_SIZE:g} per pixel ({source} has no pixel-size "
                                     "metadata); lengths and coefficients are in pixels")
        warnings.warn(
            f"{source} has no physical pixel size (no pixel-size metadata): using the default pixel size "
            f"{DEFAULT_PIXEL_SIZE:g} (lengths, and "
            "the model's coefficients, in pixels); pass pixel_size / --pixel-size-um UM to set it", MollifierWarning,
            stacklevel=2)
    pixel_size = ref.pixel_size
    shape = next(iter(fields.values())).shape
    roi = None
    if "roi" in paths:
        roi = read_labels(paths["roi"], shape)
        _check_roi_scale(paths["roi"], ref)
    if load.get("intensities") is not None:  # raw intensities -> volume fractions (napari_mollifier.fractions)
        from ..fractions import fractions_from_loaded

        fields, info["fractions"] = fractions_from_loaded(fields, roi, load["intensities"], ref.pixel_size)
    info["shape"] = shape
    return fields, roi, pixel_size, info


def _check_field_memory(img: ImageData, n_fields: int, path) -> None:
    """Refuse an image whose float64 fields (and the solver's copies of them) cannot fit in memory.

    This runs before any pixel is converted: the shape is read lazily from the file's metadata (a compressed file
    can claim far more pixels than it has bytes).
    """
    from ..validation import check_memory

    pixels = int(np.prod([int(n) for n in img.shape], dtype=object))
    need = pixels * 8 * n_fields * 3  # float64 fields, their working copies and the solver's inputs
    check_memory(need, f"{path} ({' x '.join(str(int(n)) for n in img.shape)} px, {n_fields} field(s) in float64)",
                 "crop or bin the image (or pick a smaller region, z range or time point), or run on a machine with "
                 "more memory")


def _check_roi_scale(path, ref: ImageData) -> None:
    """Check that an ROI file with its own physical pixel size matches the image's (else it covers another region)."""
    from ..io import read_image

    img = read_image(path)
    if not (img.has_physical_size and ref.has_physical_size):
        return
    own = img.pixel_size[-len(ref.pixel_size):]
    if len(own) == len(ref.pixel_size) and not np.allclose(own, ref.pixel_size, rtol=1e-6):
        raise MollifierInputError(
            f"{path}: the ROI's pixel size {tuple(round(v, 6) for v in own)} um differs from the image's "
            f"{tuple(round(v, 6) for v in ref.pixel_size)} um, so it would outline another region: draw or "
            "resample the ROI on the image's pixel grid"
        )


def infer_files(image=None, *, phi_h=None, phi_e=None, roi=None, channels=None, t=None, pixel_size=None,
                smlm: dict | None = None, tile="auto", memory_limit=None, progress=None, cancel=None,
                coefficients=None, intensities: dict | None = None, **kwargs):
    """Infer a rate map from files and record the inputs and the call for :func:`napari_mollifier.rerun`.

    Parameters
    ----------
    image : path, optional
        A multi-channel image (``channels`` picks phi_h, phi_e), a single-channel density image or an SMLM table.
    phi_h, phi_e : path, optional
        Two single-channel files instead of ``image``.
    roi : path, "auto" or None
        A label image (0 = background) of the same shape; ``"auto"``: the nucleus is detected
        (:func:`napari_mollifier.nucleus.detect_nucleus`, recorded in ``provenance["nucleus_detection"]``);
        ``None``: the whole image.
    channels : sequence of int or str, optional
        Channel indices or names, in the order of the model's inputs (one channel = a density).
    t : int, optional
        Time point of a time series.
    pixel_size : float or sequence, optional
        Override of the file's pixel size, in um. A file without one is read at :data:`DEFAULT_PIXEL_SIZE` per
        pixel with a :class:`~napari_mollifier.errors.MollifierWarning` (recorded in
        ``provenance["pixel_size_source"]``), unless coefficients (``params``) are given: then it is required.
    smlm : dict, optional
        Rendering of SMLM tables (``pixel_size`` in nm, ``method``, ``sigma_nm``, ``unit``).
    tile : "auto", int or None
        See :func:`napari_mollifier.tiling.plan_tiles`.
    coefficients : None, "auto" or "default"
        How coefficients missing from ``params`` are set (:func:`napari_mollifier.coefficients.resolve_coefficients`):
        ``None`` -- the units policy: with a physical pixel size (from the file or given), ``l2`` is estimated from
        the image with a warning; ``"auto"`` -- estimated; ``"default"`` -- the box-unit defaults. Resolved once for
        the whole image (also when it runs in tiles), recorded in ``provenance["param_sources"]``.
    intensities : dict, optional
        The two channels are raw intensities: convert them with
        :func:`napari_mollifier.fractions.intensities_to_fractions` (nucleus = the ROI) with these options
        (``{}`` for the defaults); recorded in ``provenance["fractions"]``, and the rate's level is relative.
    **kwargs
        Arguments of :func:`~napari_mollifier.infer_rates` (``model``, ``params``, ``radius``, ``method``, ``device``,
        ``seed``, ``n_bootstrap``...).
    """
    from ..solve import resolve_device
    from ..tiling import infer_with_retry, plan_tiles

    records = []
    if image is not None:
        if phi_h is not None or phi_e is not None:
            raise MollifierInputError("give either one image (with channels) or phi_h and phi_e files, not both")
        records.append(_record("image", image))
    else:
        if phi_h is None or phi_e is None:
            raise MollifierInputError("give an image, or both a phi_h and a phi_e file")
        records += [_record("phi_h", phi_h), _record("phi_e", phi_e)]
    detect = isinstance(roi, str) and roi == "auto"
    if roi is not None and not detect:
        records.append(_record("roi", roi))
    unknown = set(kwargs) - set(_SOLVER_KEYS)
    if unknown:
        raise MollifierInputError(f"unknown argument(s) {sorted(unknown)}: infer_rates takes {_SOLVER_KEYS}")
    model = kwargs.get("model", "chromatin-balance")
    load = {"channels": None if channels is None else list(channels), "t": t,
            "pixel_size": None if pixel_size is None else [float(v) for v in np.atleast_1d(pixel_size)],
            "smlm": dict(smlm) if smlm else None}
    if intensities is not None:
        load["intensities"] = dict(intensities)
    recipe = dict(load, params_given=isinstance(kwargs.get("params"), dict) and bool(kwargs.get("params")))
    fields, roi_arr, px, info = load_fields(records, recipe, model)
    load["channels"] = recipe["channels"]  # resolved to indices by load_fields
    detection = None
    if detect:  # issue 13: no ROI given -> detect the nucleus, so that no background pixel enters the solve
        from ..nucleus import detect_nucleus

        try:
            mask, detection = detect_nucleus(fields)
            roi_arr = mask.astype(np.int64)
        except MollifierInputError as exc:
            warnings.warn(f"no nucleus detected ({exc}); the whole image is solved: pass an ROI (--roi FILE) or "
                          "--roi whole to choose the whole image on purpose", MollifierWarning, stacklevel=2)
    solver = {k: v for k, v in kwargs.items() if k in _SOLVER_KEYS}
    from ..coefficients import resolve_coefficients  # issue 13: the units policy, once for the whole image

    physical = str(info.get("pixel_size_source")) in ("file", "given")
    given = solver.get("params")
    if isinstance(given, str):
        coefficients, given = given, None
    params, sources, estimate = resolve_coefficients(model, given, coefficients, fields, px, "um" if physical else None,
                                                     roi_arr, solver.get("seed", 0))
    solver["params"] = params
    solver["device"] = str(resolve_device(solver.get("device", "auto")))
    solver["pixel_size"] = list(px)
    shape = info["shape"]
    radius = solver.get("radius", "auto")
    method = solver.get("method", "direct")
    r_est = float(min(shape) / 4.0) if isinstance(radius, str) else float(radius)
    plan = plan_tiles(shape, r_est, model, device=solver["device"], boundary=solver.get("boundary", "mask"),
                      tile=tile if method == "direct" else None, memory_limit=memory_limit)
    tiled = plan.tile is not None and any(n > plan.tile for n in shape)
    started = time.perf_counter()
    from ..plausibility import PlausibilityWarning, warn_implausible

    plausibility = warn_implausible(fields, px, "um" if physical else None, roi_arr)  # once, on the whole image
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PlausibilityWarning)  # not again per tile
        result, used, retries = infer_with_retry(fields, roi=roi_arr, tile=plan.tile if tiled else None,
                                                 progress=progress, cancel=cancel, **solver)
    if used is not None:
        function = "napari_mollifier.tiling.infer_tiled"
        solver["tile"] = int(used)
    else:
        function = "napari_mollifier.infer_rates"
    memory = {"estimate_bytes": plan.estimate, "budget_bytes": plan.budget, "plan": plan.reason}
    if retries:
        memory["retries"] = retries
    result.provenance["inputs"] = records
    result.provenance["pixel_size_source"] = info.get("pixel_size_source")
    result.provenance["param_sources"] = sources
    result.provenance["coefficient_estimate"] = estimate
    result.provenance["unit"] = "um" if physical else None
    result.provenance["plausibility"] = plausibility
    result.provenance["call"] = {"function": function, "load": load, "kwargs": solver, "memory": memory}
    result.provenance["source"] = info
    result.provenance["roi_source"] = ("detected" if detection else "whole image" if roi is None or detect
                                       else "given")
    if detection:
        result.provenance["nucleus_detection"] = detection
    if info.get("fractions") is not None:
        from ..fractions import label_relative, mark_relative

        mark_relative(result.provenance, info["fractions"])
        label_relative(result.provenance, result.rate, result.labels, result.roi_stats)
    result.provenance.setdefault("seconds_total", round(time.perf_counter() - started, 3))
    return result


def job_name(job: dict) -> str:
    """Output name of a job: the stem of its image (or phi_h) file."""
    path = Path(job.get("image") or job.get("phi_h") or "result")
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".tiff", ".tif", ".zarr", ".csv", ".tsv", ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "result"
    return path.stem or "result"


def write_outputs(result, out_dir, name: str, fmt: str = "ome-tif", protect=()) -> dict:
    """Write the result (maps + provenance), the ROI table (CSV) and the provenance (JSON) of one job."""
    from ..io.results import save_result

    if fmt not in OUTPUT_FORMATS:
        raise MollifierInputError(f"unknown output format {fmt!r}: use one of {sorted(OUTPUT_FORMATS)}")
    out = Path(out_dir)
    paths = {
        "result": out / f"{name}{OUTPUT_FORMATS[fmt]}",
        "rois": out / f"{name}_rois.csv",
        "provenance": out / f"{name}.provenance.json",
    }
    guarded = {Path(p).resolve() for p in protect}
    for p in paths.values():
        if p.resolve() in guarded:
            raise MollifierInputError(f"refusing to overwrite the input {p}: choose another output folder")
    # One result is one unit (io.publish): the three outputs are written into a hidden staging folder, then
    # moved into place in one step under the folder's write lock (the provenance last: it names the others);
    # any failure or interrupt before that removes the staging folder and keeps an older result intact.

    def write(staging: Path) -> list:
        staged = {k: staging / p.name for k, p in paths.items()}
        save_result(result, staged["result"])
        pause("staged-maps")
        rows = result.table()
        with open(staged["rois"], "w", newline="") as fh:
            columns = list(rows[0]) if rows else ["label"]
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        record = {"format": "napari-mollifier provenance", "provenance": result.provenance,
                  "outputs": {k: p.name for k, p in paths.items() if k != "provenance"}}
        staged["provenance"].write_text(to_json(record, indent=2))
        return [paths[k].name for k in ("result", "rois", "provenance")]

    try:
        publish(out, name, write)
    except OSError as exc:
        raise _output_error(exc, out) from None
    return {k: str(p) for k, p in paths.items()}


def _output_error(exc: OSError, out: Path) -> MollifierOutputError:
    """Build a one-line ``MollifierOutputError`` naming the folder, the cause and the fix (errno kept)."""
    if isinstance(exc, MollifierOutputError):
        return exc
    reason = exc.strerror or str(exc) or type(exc).__name__
    fix = {errno.ENOSPC: "free disk space or write elsewhere (--out)",
           getattr(errno, "EDQUOT", -1): "free space in your quota or write elsewhere (--out)",
           errno.EACCES: "choose a folder you can write to (--out)",
           errno.EROFS: "choose a folder on a writable disk (--out)"}.get(exc.errno,
                                                                        "choose another output folder (--out)")
    err = MollifierOutputError(f"cannot write the outputs to {out}: {reason}; nothing was written: {fix}")
    err.errno = exc.errno
    return err


def run_job(job: dict, out_dir, *, fmt: str = "ome-tif", name: str | None = None, progress=None,
            raise_errors: bool = False, on_warning=None, **options) -> dict:
    """Run one job (``{"image"}`` or ``{"phi_h", "phi_e"}``, optional ``"roi"``) and write its outputs.

    Returns a summary row; errors are caught into ``{"status": "error", "error": message}`` unless
    ``raise_errors``. ``on_warning(name, message)`` is called as each
    :class:`~napari_mollifier.errors.MollifierWarning` happens (e.g. the run-time estimate, before the solve).
    Safe to ship to a dask worker (only plain data in and out).
    """
    name = name or job_name(job)
    row = {"name": name, "input": str(job.get("image") or f"{job.get('phi_h')} + {job.get('phi_e')}"),
           "status": "ok"}
    started = time.perf_counter()
    others: list = []  # warnings that are not ours, passed on unchanged once the recording below has ended
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MollifierWarning)
            notes: list = []

            def flush():  # MollifierWarnings go into the row (and to on_warning as soon as they happen)
                pending = list(caught)
                caught.clear()
                for w in pending:
                    if issubclass(w.category, MollifierWarning):
                        text = str(w.message)
                        if text not in notes:
                            notes.append(text)
                            if on_warning is not None:
                                on_warning(name, text)
                    else:  # re-issued here it would be recorded again (and again): after the with block
                        others.append(w)
                if notes:
                    row["warnings"] = list(notes)

            def progress_and_warnings(step, total, info=None):
                flush()
                if progress is not None:
                    progress(step, total, info)

            try:
                pause("reading")
                result = infer_files(image=job.get("image"), phi_h=job.get("phi_h"), phi_e=job.get("phi_e"),
                                     roi=job.get("roi"), progress=progress_and_warnings, **options)
                protect = [v for k, v in job.items()
                           if k in ("image", "phi_h", "phi_e", "roi") and v and v != "auto"]
                nucleus = _write_detected_nucleus(result, out_dir, name)
                try:
                    row["outputs"] = write_outputs(result, out_dir, name, fmt, protect=protect)
                except BaseException:
                    if nucleus is not None:
                        nucleus.unlink(missing_ok=True)
                    raise
                if nucleus is not None:
                    row["outputs"]["nucleus"] = str(nucleus)
            finally:
                flush()
        rate = result.rate[np.isfinite(result.rate)]
        sigma = result.uncertainty[np.isfinite(result.uncertainty)]
        row.update({
            "shape": "x".join(str(n) for n in result.rate.shape),
            "pixel_um": float(np.mean(result.provenance.get("pixel_size", [np.nan]))),
            "radius_px": float(result.radius),
            "rois": len(result.roi_stats),
            "median_rate": float(np.median(rate)) if rate.size else float("nan"),
            "mean_uncertainty": float(sigma.mean()) if sigma.size else float("nan"),
            "tiled": "tiling" in result.provenance,
        })
    except Exception as exc:
        if raise_errors:
            raise
        text = str(exc).strip()
        message = text.splitlines()[0] if text else type(exc).__name__
        if not isinstance(exc, (MollifierInputError, OSError)) and text:
            message = f"{type(exc).__name__}: {message}"  # an unexpected error: say what kind
        row.update({"status": "error", "error": message, "error_type": type(exc).__name__})
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def _write_detected_nucleus(result, out_dir, name: str):
    """Write a detected nucleus mask as ``NAME_nucleus.ome.tif`` in ``out_dir``, recorded as the run's ROI input.

    The record lets ``mollifier rerun`` repeat the run on the same pixels. Returns None when the ROI was not detected.
    """
    if not result.provenance.get("nucleus_detection"):
        return None
    from ..io.tiff import write_ome_tiff

    path = Path(out_dir) / f"{name}_nucleus.ome.tif"
    try:
        write_ome_tiff(path, {"nucleus": (result.labels > 0).astype(np.uint8)}, result.provenance["pixel_size"],
                       description={"description": "nucleus detected by napari_mollifier.nucleus.detect_nucleus",
                                    **result.provenance["nucleus_detection"]}, dtype=np.uint8)
    except OSError as exc:
        raise _output_error(exc, Path(out_dir)) from None
    result.provenance["inputs"] = list(result.provenance.get("inputs") or []) + [_record("roi", path)]
    result.provenance["nucleus_detection"]["file"] = path.name
    return path


def run_batch(jobs: list[dict], out_dir, *, client=None, fmt: str = "ome-tif", on_done=None,
              progress_factory=None, **options) -> list:
    """Run many jobs, serially or on a dask.distributed ``client`` (one task per job).

    Output names are made unique (``cell``, ``cell_2``...). ``on_done(row)`` is called as each job finishes;
    ``progress_factory(name)`` (serial runs only) returns the ``progress`` callback of a job. Workers must see
    the input files and ``out_dir`` under the same paths (a shared file system).
    """
    names, seen = [], {}
    for job in jobs:
        base = job_name(job)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    rows: list = [None] * len(jobs)
    if client is None:
        for i, (job, name) in enumerate(zip(jobs, names, strict=True)):
            progress = progress_factory(name) if progress_factory else None
            try:
                rows[i] = run_job(job, out_dir, fmt=fmt, name=name, progress=progress, **options)
            finally:
                close = getattr(progress, "close", None)
                if close:
                    close()
            if on_done:
                on_done(rows[i])
        return rows
    from distributed import as_completed

    options.pop("on_warning", None)  # workers report their warnings in the rows
    futures = [client.submit(run_job, job, str(out_dir), fmt=fmt, name=name, pure=False, **options)
               for job, name in zip(jobs, names, strict=True)]
    index = {f.key: i for i, f in enumerate(futures)}
    for future in as_completed(futures):
        row = future.result()
        rows[index[future.key]] = row
        if on_done:
            on_done(row)
    return rows
