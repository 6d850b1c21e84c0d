"""Bad input, faults and cancel through the API, the files layer and the CLI (docs/reliability.md, issue #6).

Every test checks the four promises of a row: the exception type (or, in the CLI, one ``mollifier: error:``
line on stderr, a non-zero exit and no traceback), a message that names the problem and the fix, input arrays
and files unchanged (bytes compared before and after), and no partial output (folder listings compared).
"""

from __future__ import annotations

import errno
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")

import napari_mollifier as nm  # noqa: E402
from napari_mollifier import cli, derivatives, solve, tiling  # noqa: E402
from napari_mollifier.app import jobs  # noqa: E402
from napari_mollifier.errors import (  # noqa: E402
    MollifierInputError,
    MollifierMemoryError,
    MollifierOutputError,
    MollifierWarning,
    RunCancelled,
)
from napari_mollifier.simulate import synthetic_nucleus  # noqa: E402

FAST = ["--radius", "4", "--n-bootstrap", "2", "--quiet"]
L2 = ["--param", "l2=0.0234"]


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def nucleus():
    return synthetic_nucleus(shape=(64, 64), pixel_size=0.02, noise=0.0, seed=0)


def _fields(s):
    return {"phi_h": s["phi_h"].copy(), "phi_e": s["phi_e"].copy()}


def snapshot(folder) -> dict:
    """``{relative path: sha256}`` of every file below ``folder`` (empty when it does not exist)."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _same_arrays(before: dict, after: dict) -> None:
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])  # NaN == NaN here


def _cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(code, err, *words) -> str:
    """Exit 1, exactly one ``mollifier: error:`` line naming every word, no traceback; returns the line."""
    assert code == 1, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("mollifier: error:")]
    job_lines = [ln for ln in lines if "job(s) failed" not in ln]
    assert len(job_lines) == 1, err
    for w in words:
        assert w.lower() in job_lines[0].lower(), (w, job_lines[0])
    return job_lines[0]


def _write_two_channel(path, phi_h, phi_e, px_nm=20.0, dtype=np.float64):
    tifffile.imwrite(path, np.stack([phi_h, phi_e]).astype(dtype), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": px_nm, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": px_nm, "PhysicalSizeYUnit": "nm"})
    return path


@pytest.fixture
def data(tmp_path, nucleus):
    """Input files of the CLI rows: a good 2-channel OME-TIFF, its ROI, and a folder to snapshot."""
    folder = tmp_path / "data"
    folder.mkdir()
    good = _write_two_channel(folder / "cell.ome.tif", nucleus["phi_h"], nucleus["phi_e"])
    roi = folder / "roi.tif"
    tifffile.imwrite(roi, nucleus["nucleus"].astype(np.uint8))
    return {"dir": folder, "good": good, "roi": roi}


# --------------------------------------------------------------------------- API: missing and undefined data
def test_nan_inf_pixels_are_missing_data_and_inputs_untouched(nucleus):
    clean = _fields(nucleus)
    holed = _fields(nucleus)
    holed["phi_h"][30:34, 30:34] = np.nan
    holed["phi_e"][10, 50] = np.inf
    before = {k: v.copy() for k, v in holed.items()}
    ref = nm.infer_rates(clean, params=nucleus["params"], pixel_size=0.02, radius=4, n_bootstrap=0)
    res = nm.infer_rates(holed, params=nucleus["params"], pixel_size=0.02, radius=4, n_bootstrap=0)
    _same_arrays(before, holed)
    bad = ~np.isfinite(holed["phi_h"]) | ~np.isfinite(holed["phi_e"])
    assert np.isnan(res.rate[bad]).all() and (res.labels[bad] == 0).all()
    # beyond twice the kernel support from the bad pixels the map is the clean one, to round-off
    yy, xx = np.mgrid[0:64, 0:64]
    far = np.ones((64, 64), bool)
    for y, x in np.argwhere(bad):
        far &= np.maximum(abs(yy - y), abs(xx - x)) > 8
    ok = far & np.isfinite(ref.rate)
    assert ok.sum() > 1000
    np.testing.assert_allclose(res.rate[ok], ref.rate[ok], rtol=1e-9, atol=1e-12)
    with pytest.raises(MollifierInputError, match=r"17 pixel\(s\) are NaN/inf.*boundary='mask'"):
        nm.infer_rates(holed, params=nucleus["params"], pixel_size=0.02, radius=4, boundary="periodic")
    with pytest.raises(MollifierInputError, match="NaN/inf pixel.*inside the mask.*fill or mask"):
        derivatives(holed["phi_h"], 4, mask=np.ones((64, 64), bool), which=("u", "lap"))
    _same_arrays(before, holed)


def test_constant_image_is_refused_unless_allowed():
    uniform = {"phi_h": np.full((32, 32), 0.3), "phi_e": np.full((32, 32), 0.6)}
    with pytest.raises(MollifierInputError,
                       match=r"'phi_h' is constant over the image \(every pixel = 0.3\).*allow_constant=True"):
        nm.infer_rates(uniform, radius=4, n_bootstrap=0)
    with pytest.raises(MollifierInputError, match="constant over the image"):
        tiling.infer_tiled(uniform, radius=4, tile=16, n_bootstrap=0)
    roi = np.zeros((32, 32), bool)
    roi[8:24, 8:24] = True
    varied = {"phi_h": uniform["phi_h"] + 0.01 * np.arange(32)[None, :] * ~roi, "phi_e": uniform["phi_e"]}
    with pytest.raises(MollifierInputError, match=r"'phi_h' is constant over the ROI"):
        nm.infer_rates(varied, radius=4, roi=roi, roi_mode="isolate")
    # deliberately accepted: the uniform steady state, lambda = phi_h / phi_e (lap = 0), residual 0
    res = nm.infer_rates(uniform, radius=4, n_bootstrap=4, allow_constant=True)
    np.testing.assert_allclose(res.rate, 0.5, rtol=1e-10)
    np.testing.assert_allclose(res.residual, 0.0, atol=1e-10)
    assert np.nanmax(res.uncertainty) < 1e-6  # no noise in the data (round-off only): the estimate says so
    # a constant background around a contrasted nucleus is fine
    s = synthetic_nucleus(shape=(64, 64), pixel_size=0.02, seed=0)
    f = _fields(s)
    f["phi_h"][~s["nucleus"]] = 0.1
    nm.infer_rates(f, params=s["params"], pixel_size=0.02, radius=4, roi=s["nucleus"], n_bootstrap=0)


def test_a_uniform_tile_inside_a_contrasted_image_is_solved():
    s = synthetic_nucleus(shape=(96, 96), pixel_size=0.02, seed=2)
    f = _fields(s)
    f["phi_h"][:40, :40] = 0.2  # one tile of 32 px is flat; the image is not
    f["phi_e"][:40, :40] = 0.4
    untiled = nm.infer_rates(f, params=s["params"], pixel_size=0.02, radius=4, n_bootstrap=0)
    tiled = tiling.infer_tiled(f, params=s["params"], pixel_size=0.02, radius=4, tile=32, n_bootstrap=0)
    np.testing.assert_allclose(tiled.rate, untiled.rate, rtol=1e-9, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(untiled.rate[5:25, 5:25], 0.5, rtol=1e-9)  # the flat patch: phi_h / phi_e


def test_zero_or_negative_euchromatin(nucleus):
    f = _fields(nucleus)
    f["phi_e"] = -f["phi_e"]
    before = {k: v.copy() for k, v in f.items()}
    with pytest.raises(MollifierInputError, match=r"undefined in 100% of the ROI because phi_e.*check the channel"):
        nm.infer_rates(f, params=nucleus["params"], pixel_size=0.02, radius=4, n_bootstrap=0)
    _same_arrays(before, f)
    f = _fields(nucleus)
    f["phi_e"][20:30, 20:30] = 0.0  # a patch without euchromatin: NaN there only
    res = nm.infer_rates(f, params=nucleus["params"], pixel_size=0.02, radius=4, n_bootstrap=0)
    assert np.isnan(res.rate[23:27, 23:27]).all()
    assert np.isfinite(res.rate[45:60, 45:60]).all()


def test_empty_roi_and_roi_without_valid_pixels(nucleus):
    f = _fields(nucleus)
    with pytest.raises(MollifierInputError, match=r"ROI is empty.*draw an ROI over the nucleus"):
        nm.infer_rates(f, pixel_size=0.02, radius=4, roi=np.zeros((64, 64), bool))
    with pytest.raises(MollifierInputError, match="ROI is empty"):
        tiling.infer_tiled(f, pixel_size=0.02, radius=4, roi=np.zeros((64, 64), int), tile=32)
    roi = np.zeros((64, 64), bool)
    roi[5:9, 5:9] = True
    f["phi_h"][roi] = np.nan
    with pytest.raises(MollifierInputError, match=r"ROI 1 contains no valid \(finite\) pixel"):
        nm.infer_rates(f, pixel_size=0.02, radius=4, roi=roi)


def test_roi_smaller_than_the_kernel(nucleus):
    f = _fields(nucleus)
    roi = np.zeros((64, 64), bool)
    roi[30:33, 30:33] = True  # 3 x 3 px, kernel radius 6 px
    with pytest.raises(MollifierInputError, match=r"ROI \(3 x 3 px\).*kernel radius 6 px.*roi_mode='image'"):
        nm.infer_rates(f, params=nucleus["params"], pixel_size=0.02, radius=6, roi=roi, roi_mode="isolate",
                       n_bootstrap=0)
    # with roi_mode="image" (default) the derivatives come from the whole image: the small ROI is fine and
    # reports exactly the whole-image map
    whole = nm.infer_rates(f, params=nucleus["params"], pixel_size=0.02, radius=6, n_bootstrap=0)
    small = nm.infer_rates(f, params=nucleus["params"], pixel_size=0.02, radius=6, roi=roi, n_bootstrap=0)
    np.testing.assert_allclose(small.rate[roi], whole.rate[roi], rtol=1e-10)
    assert np.isnan(small.rate[~roi]).all()


def test_kernel_larger_than_the_image():
    f = {"phi_h": np.random.default_rng(0).uniform(0.2, 0.3, (32, 24)),
         "phi_e": np.random.default_rng(1).uniform(0.4, 0.5, (32, 24))}
    with pytest.raises(MollifierInputError, match=r"kernel \(radius 40 px\) is larger than the image "
                                                  r"\(32 x 24 px\): use a smaller radius \(<= 24 px\) or radius='auto'"):
        nm.infer_rates(f, radius=40)
    with pytest.raises(MollifierInputError, match=r"kernel \(radius 40 px\) is larger than the image \(32 x 24 px\)"):
        tiling.infer_tiled(f, radius=40, tile=16)
    tiny = {k: v[:2, :2] for k, v in f.items()}
    with pytest.raises(MollifierInputError, match="at least 3 px along every axis"):
        nm.infer_rates(tiny)
    with pytest.raises(MollifierInputError, match=r"radius 2 px is too small.*radius >= 3 px"):
        nm.infer_rates(f, radius=2)
    with pytest.raises(MollifierInputError, match="larger than the image"):
        derivatives(f["phi_h"], 40)
    with pytest.raises(MollifierInputError, match="larger than the input"):
        nm.Mollifier(radius=40)(torch.zeros(1, 1, 32, 24))


@pytest.mark.parametrize("shape,match", [
    ((48, 48, 3), "look like an RGB/RGBA image.*pick the channel"),
    ((48, 48, 4), "RGB/RGBA"),
    ((2, 2, 2, 16, 16), r"takes 2-D or 3-D fields, got shape \(2, 2, 2, 16, 16\): pick one channel or slice"),
])
def test_rgb_and_5d_input(shape, match):
    rng = np.random.default_rng(0)
    f = {"phi_h": rng.uniform(0.2, 0.3, shape), "phi_e": rng.uniform(0.4, 0.5, shape)}
    with pytest.raises(MollifierInputError, match=match):
        nm.infer_rates(f)


def test_integer_and_bool_dtypes(nucleus):
    ints = {k: np.round(v * 1000).astype(np.uint16) for k, v in _fields(nucleus).items()}
    floats = {k: v.astype(np.float64) for k, v in ints.items()}
    a = nm.infer_rates(ints, params=nucleus["params"], pixel_size=0.02, radius=4, n_bootstrap=3)
    b = nm.infer_rates(floats, params=nucleus["params"], pixel_size=0.02, radius=4, n_bootstrap=3)
    np.testing.assert_array_equal(a.rate, b.rate)
    np.testing.assert_array_equal(a.uncertainty, b.uncertainty)
    assert ints["phi_h"].dtype == np.uint16  # the caller's arrays are not converted in place
    # the closed form is scale-free: counts (x 1000) give the map of the fractions they stand for
    c = nm.infer_rates({k: v / 1000.0 for k, v in floats.items()}, params=nucleus["params"], pixel_size=0.02,
                       radius=4, n_bootstrap=0)
    np.testing.assert_allclose(a.rate, c.rate, rtol=1e-9, equal_nan=True)
    mask = np.zeros((40, 40), bool)
    mask[8:30, 5:35] = True
    d_bool = derivatives(mask, 4, which=("u", "lap"))
    d_float = derivatives(mask.astype(np.float64), 4, which=("u", "lap"))
    for k in d_bool:
        np.testing.assert_array_equal(d_bool[k], d_float[k])


# --------------------------------------------------------------------------- API: files
def test_no_pixel_size_metadata_uses_a_stated_default(tmp_path, nucleus):
    h, e = tmp_path / "h.tif", tmp_path / "e.tif"
    tifffile.imwrite(h, nucleus["phi_h"])
    tifffile.imwrite(e, nucleus["phi_e"])
    img = nm.read_image(h)
    assert not img.has_physical_size and img.units == (None, None)
    before = snapshot(tmp_path)
    with pytest.warns(MollifierWarning, match=r"no physical pixel size.*default pixel size 1 .*--pixel-size"):
        res = jobs.infer_files(phi_h=h, phi_e=e, radius=4, n_bootstrap=0)
    assert res.provenance["pixel_size"] == [1.0, 1.0]
    assert res.provenance["pixel_size_source"].startswith("default: 1 per pixel")
    assert res.provenance["call"]["load"]["pixel_size"] is None
    with pytest.raises(MollifierInputError, match=r"no physical pixel size.*coefficients given.*--pixel-size"):
        jobs.infer_files(phi_h=h, phi_e=e, radius=4, params={"l2": 0.0234})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a given pixel size (and l2, else it is estimated with a warning): none
        given = jobs.infer_files(phi_h=h, phi_e=e, pixel_size=0.02, radius=4, n_bootstrap=0, params={"l2": 0.0234})
    assert given.provenance["pixel_size_source"] == "given"
    assert snapshot(tmp_path) == before


def test_roi_file_with_another_pixel_size(tmp_path, data, nucleus):
    roi = tmp_path / "roi40.ome.tif"
    tifffile.imwrite(roi, nucleus["nucleus"].astype(np.uint8), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 40.0, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 40.0, "PhysicalSizeYUnit": "nm"})
    with pytest.raises(MollifierInputError, match=r"ROI's pixel size \(0.04, 0.04\) um differs from the image's "
                                                  r"\(0.02, 0.02\) um.*resample the ROI"):
        jobs.infer_files(data["good"], roi=roi, radius=4, n_bootstrap=0)


def _truncated(folder, good):
    p = folder / "truncated.tif"
    p.write_bytes(good.read_bytes()[:1500])
    return p


def _corrupt(folder, good):
    p = folder / "corrupt.tif"
    raw = bytearray(good.read_bytes())
    raw[4:8] = b"\xff\xff\xff\x7f"  # first IFD offset far past the end of the file
    p.write_bytes(bytes(raw))
    return p


def _zarr_without_array(folder, good):
    p = folder / "empty.zarr"
    zarr.open_group(str(p), mode="w")
    return p


def _csv_missing(folder, good):
    p = folder / "locs_missing.csv"
    p.write_text("id,x [nm]\n1,10\n2,20\n")
    return p


def _csv_text(folder, good):
    p = folder / "locs_text.csv"
    p.write_text("x [nm],y [nm]\n10,20\nabc,30\n")
    return p


BAD_FILES = [
    (_truncated, r"truncated"),
    (_corrupt, r"holds no image \(empty, or corrupt"),
    (_zarr_without_array, r"holds no array|no array"),
    (_csv_missing, r"missing column.*y"),
    (_csv_text, r"holds text"),
]


@pytest.mark.parametrize("make,match", BAD_FILES, ids=["truncated-tiff", "corrupt-tiff", "zarr-no-array",
                                                       "csv-missing-column", "csv-text"])
def test_bad_files_are_refused_and_untouched(data, make, match):
    bad = make(data["dir"], data["good"])
    before = snapshot(data["dir"])
    with pytest.raises(MollifierInputError, match=match):
        nm.read_image(bad).to_numpy()
    assert snapshot(data["dir"]) == before


# --------------------------------------------------------------------------- API: writes
@pytest.fixture(scope="module")
def small_result(nucleus):
    return nm.infer_rates(_fields(nucleus), params=nucleus["params"], pixel_size=0.02, radius=4, n_bootstrap=2,
                          roi=nucleus["nucleus"])


def test_output_folder_not_writable(tmp_path, small_result):
    blocker = tmp_path / "a_file"
    blocker.write_bytes(b"x")
    before = snapshot(tmp_path)
    with pytest.raises(MollifierOutputError, match=r"cannot write the outputs to .*a_file/out.*nothing was written"
                                                   r".*choose another output folder") as exc:
        jobs.write_outputs(small_result, blocker / "out", "cell")
    assert exc.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert isinstance(exc.value, OSError)
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


@pytest.mark.parametrize("stage", ["maps", "fields", "table", "provenance"])
def test_disk_full_mid_write_leaves_nothing(tmp_path, monkeypatch, small_result, stage):
    out = tmp_path / "out"
    out.mkdir()
    (out / "cell.ome.tif").write_bytes(b"an earlier result")  # must survive a failed overwrite
    before = snapshot(out)
    full = OSError(errno.ENOSPC, "No space left on device")
    if stage in ("maps", "fields"):
        calls = {"n": 0}
        original = tifffile.TiffWriter.write

        def write(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] == (1 if stage == "maps" else 2):
                raise full
            return original(self, *args, **kwargs)

        monkeypatch.setattr(tifffile.TiffWriter, "write", write)
    elif stage == "table":
        import csv

        monkeypatch.setattr(csv.DictWriter, "writerows", lambda self, rows: (_ for _ in ()).throw(full))
    else:
        original_write_text = Path.write_text

        def write_text(self, *args, **kwargs):
            if self.name.endswith(".provenance.json"):
                raise full
            return original_write_text(self, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(MollifierOutputError, match="No space left on device; nothing was written: free disk space"):
        jobs.write_outputs(small_result, out, "cell")
    assert snapshot(out) == before  # no new file, no temporary or staging file, the old result intact
    assert sorted(p.name for p in out.iterdir()) == ["cell.ome.tif"]


def test_interrupt_mid_write_leaves_nothing(tmp_path, monkeypatch, small_result):
    original = tifffile.TiffWriter.write
    calls = {"n": 0}

    def write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffWriter, "write", write)
    with pytest.raises(KeyboardInterrupt):
        jobs.write_outputs(small_result, tmp_path / "out", "cell")
    assert snapshot(tmp_path) == {}


def test_write_outputs_complete_set(tmp_path, small_result):
    paths = jobs.write_outputs(small_result, tmp_path, "cell")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.ome.tif", "cell.provenance.json", "cell_rois.csv"]
    back = nm.load_result(paths["result"])
    np.testing.assert_array_equal(back.rate, small_result.rate)


# --------------------------------------------------------------------------- API: out of memory
def _oom_above(monkeypatch, pixels: int, counter: dict | None = None):
    """Make the solver's derivative calls raise torch.OutOfMemoryError on fields larger than ``pixels``."""
    real = solve.derivatives

    def fake(field, radius, **kwargs):
        n = int(np.prod(tuple(field.shape)[-2:]))
        if n > pixels:
            if counter is not None:
                counter["oom"] = counter.get("oom", 0) + 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real(field, radius, **kwargs)

    monkeypatch.setattr(solve, "derivatives", fake)


@pytest.fixture(scope="module")
def big():
    return synthetic_nucleus(shape=(128, 128), pixel_size=0.02, seed=3)


def test_out_of_memory_is_a_clear_error_and_leaves_no_broken_state(monkeypatch, big):
    f = _fields(big)
    ref = nm.infer_rates(f, params=big["params"], pixel_size=0.02, radius=4, n_bootstrap=0)
    _oom_above(monkeypatch, 100 * 100)
    with pytest.raises(MollifierMemoryError, match=r"out of memory on cpu for a 128 x 128 px run "
                                                   r"\(OutOfMemoryError: CUDA out of memory.*run it in tiles.*"
                                                   r"device='cpu'"):
        nm.infer_rates(f, params=big["params"], pixel_size=0.02, radius=4, n_bootstrap=0)
    monkeypatch.undo()
    again = nm.infer_rates(f, params=big["params"], pixel_size=0.02, radius=4, n_bootstrap=0)
    np.testing.assert_array_equal(again.rate, ref.rate)


def test_out_of_memory_retries_in_tiles(monkeypatch, big):
    f = _fields(big)
    ref = nm.infer_rates(f, params=big["params"], pixel_size=0.02, radius=4, n_bootstrap=0)
    seen = {}
    _oom_above(monkeypatch, 100 * 100, seen)
    with pytest.warns(MollifierWarning, match="out of memory on cpu with the untiled run: retrying in 64 px tiles"):
        res = tiling.infer_auto(f, params=big["params"], pixel_size=0.02, radius=4, n_bootstrap=0, device="cpu")
    assert seen["oom"] == 1
    assert res.provenance["tiling"]["tile"] == 64 and len(res.provenance["memory_retries"]) == 1
    np.testing.assert_allclose(res.rate, ref.rate, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_out_of_memory_everywhere_gives_up_with_the_fix(monkeypatch, big):
    seen = {}
    _oom_above(monkeypatch, 10, seen)
    with pytest.warns(MollifierWarning), pytest.raises(MollifierMemoryError,
                                                       match=r"device='cpu'.*tiles down to 64 px were tried"):
        tiling.infer_auto(_fields(big), params=big["params"], pixel_size=0.02, radius=4, n_bootstrap=0)
    assert seen["oom"] == 2  # untiled, then 64 px tiles (the first tile fails and stops the run)


def test_out_of_memory_in_files_retries_and_records(tmp_path, monkeypatch, big):
    path = _write_two_channel(tmp_path / "big.ome.tif", big["phi_h"], big["phi_e"])
    ref = jobs.infer_files(path, params={"l2": 0.0234}, radius=4, n_bootstrap=0)
    _oom_above(monkeypatch, 100 * 100)
    with pytest.warns(MollifierWarning, match="retrying in 64 px tiles"):
        res = jobs.infer_files(path, params={"l2": 0.0234}, radius=4, n_bootstrap=0)
    call = res.provenance["call"]
    assert call["function"] == "napari_mollifier.tiling.infer_tiled" and call["kwargs"]["tile"] == 64
    assert "out of memory" in call["memory"]["retries"][0]["error"]
    np.testing.assert_allclose(res.rate, ref.rate, rtol=1e-9, atol=1e-12, equal_nan=True)
    monkeypatch.undo()
    again = nm.rerun(res)  # the recorded tiled call repeats exactly
    np.testing.assert_array_equal(again.rate, res.rate)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_cuda_out_of_memory_is_caught(monkeypatch, big):
    """On a GPU: a real allocation failure inside the solver becomes MollifierMemoryError, and memory is freed."""
    real = solve.derivatives

    def hog(field, radius, **kwargs):
        free, _ = torch.cuda.mem_get_info()
        torch.empty(int(free * 2), dtype=torch.uint8, device="cuda")  # more than is free: a real OOM
        return real(field, radius, **kwargs)

    monkeypatch.setattr(solve, "derivatives", hog)
    base = torch.cuda.memory_allocated()
    with pytest.raises(MollifierMemoryError, match="out of memory on cuda"):
        nm.infer_rates(_fields(big), params=big["params"], pixel_size=0.02, radius=4, n_bootstrap=0, device="cuda")
    assert torch.cuda.memory_allocated() <= base + 16 * 2**20


# --------------------------------------------------------------------------- API: cancel
def test_cancel_during_a_network_fit(nucleus):
    calls, progress = [], []

    def cancel():
        calls.append(len(progress))
        return len(progress) >= 25

    with pytest.raises(RunCancelled, match="cancelled; nothing was returned"):
        nm.infer_rates(_fields(nucleus), params=nucleus["params"], pixel_size=0.02, radius=4, method="network",
                       iterations=400, cancel=cancel, progress=lambda s, t, i: progress.append(i.get("stage")))
    assert len(progress) == 25 and progress[-1] == "network fit"  # stopped at the first check after True
    assert calls[-1] == 25 and calls.count(25) == 1


def test_cancel_during_a_tiled_run(big):
    ticks = []
    with pytest.raises(RunCancelled):
        tiling.infer_tiled(_fields(big), params=big["params"], pixel_size=0.02, radius=4, tile=32, n_bootstrap=0,
                           progress=lambda s, t, i: ticks.append((s, t)), cancel=lambda: len(ticks) >= 3)
    assert len(ticks) == 3 and ticks[-1][1] == 16  # 3 of 16 tiles, then stopped before the 4th


def test_cancel_in_a_file_job_writes_nothing(tmp_path, data):
    out = tmp_path / "out"
    before = snapshot(data["dir"])
    row = jobs.run_job({"image": data["good"]}, out, radius=4, n_bootstrap=50, params={"l2": 0.0234},
                       cancel=lambda: True)
    assert row["status"] == "error" and row["error_type"] == "RunCancelled"
    assert snapshot(out) == {} and snapshot(data["dir"]) == before


# --------------------------------------------------------------------------- CLI
def test_cli_nan_pixels_give_nan_maps(tmp_path, data, nucleus, capsys):
    f = _fields(nucleus)
    f["phi_h"][30:34, 30:34] = np.nan
    path = _write_two_channel(data["dir"] / "holed.ome.tif", f["phi_h"], f["phi_e"])
    before = snapshot(data["dir"])
    code, _, err = _cli(capsys, "infer", path, "--roi", "whole", "--out", tmp_path / "out", *FAST, *L2)
    assert code == 0, err
    res = nm.load_result(tmp_path / "out" / "holed.ome.tif")
    assert np.isnan(res.rate[30:34, 30:34]).all() and np.isfinite(res.rate).mean() > 0.9
    assert snapshot(data["dir"]) == before


def _cli_case(name, data, nucleus, tmp_path):
    """(argv, words of the error line) of each CLI bad-input row; files are made in data['dir']."""
    folder, good = data["dir"], data["good"]
    if name == "constant":
        return [_write_two_channel(folder / "flat.ome.tif", np.full((64, 64), 0.3), np.full((64, 64), 0.6))], \
            ["flat", "constant", "--allow-constant"]
    if name == "negative-euchromatin":
        return [_write_two_channel(folder / "neg.ome.tif", nucleus["phi_h"], -nucleus["phi_e"])], \
            ["phi_e (euchromatin)", "check the channel assignment"]
    if name == "empty-roi":
        roi = folder / "empty_roi.tif"
        tifffile.imwrite(roi, np.zeros((64, 64), np.uint8))
        return [good, "--roi", roi], ["ROI is empty", "draw an ROI"]
    if name == "roi-smaller-than-kernel":
        roi = folder / "dot.tif"
        dot = np.zeros((64, 64), np.uint8)
        dot[30:33, 30:33] = 1
        tifffile.imwrite(roi, dot)
        return [good, "--roi", roi, "--roi-mode", "isolate", "--radius", "6"], ["ROI (3 x 3 px)",
                                                                              "kernel radius 6 px",
                                                                              "roi_mode='image'"]
    if name == "kernel-larger-than-image":
        return [good, "--radius", "500"], ["larger than the image", "use a smaller radius (<= 64 px)"]
    if name == "rgb":
        p = folder / "rgb.tif"
        tifffile.imwrite(p, (np.random.default_rng(0).uniform(0, 255, (64, 64, 3))).astype(np.uint8),
                         photometric="rgb")
        return [p], ["has 3 channels", "choose the phi_h, phi_e channels"]
    if name == "5d":
        p = folder / "tczyx.ome.tif"
        tifffile.imwrite(p, np.random.default_rng(0).uniform(0.2, 0.4, (3, 2, 4, 32, 32)).astype(np.float32),
                         ome=True, metadata={"axes": "TCZYX"})
        return [p], ["3 time points", "--t"]
    if name == "roi-other-pixel-size":
        roi = folder / "roi40.ome.tif"
        tifffile.imwrite(roi, nucleus["nucleus"].astype(np.uint8), ome=True,
                         metadata={"axes": "YX", "PhysicalSizeX": 40.0, "PhysicalSizeXUnit": "nm",
                                   "PhysicalSizeY": 40.0, "PhysicalSizeYUnit": "nm"})
        return [good, "--roi", roi], ["differs from the image's", "resample the ROI"]
    if name == "missing-file":
        return [folder / "nope.tif"], ["nope.tif", "no such file"]
    for make, match in BAD_FILES:
        if make.__name__.lstrip("_").replace("_", "-") == name:
            return [make(folder, good)], [match.split("|")[0].replace("\\", "").split(".*")[0]]
    raise KeyError(name)


CLI_CASES = ["constant", "negative-euchromatin", "empty-roi", "roi-smaller-than-kernel", "kernel-larger-than-image",
             "rgb", "5d", "roi-other-pixel-size", "missing-file", "truncated", "corrupt", "zarr-without-array",
             "csv-missing", "csv-text"]


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_bad_input_one_line_nonzero_nothing_written(tmp_path, data, nucleus, capsys, name):
    argv, words = _cli_case(name, data, nucleus, tmp_path)
    before = snapshot(data["dir"])
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "infer", *FAST, *L2, "--out", out, *argv)  # the case's options come last
    _one_error(code, err, *words)
    assert snapshot(data["dir"]) == before
    assert not out.exists()  # the folder this run made is removed again: nothing of the failed run is left


def test_cli_integer_tiff_equals_float(tmp_path, data, nucleus, capsys):
    counts = {k: np.round(v * 1000) for k, v in _fields(nucleus).items()}
    a = _write_two_channel(data["dir"] / "u16.ome.tif", counts["phi_h"], counts["phi_e"], dtype=np.uint16)
    b = _write_two_channel(data["dir"] / "f64.ome.tif", counts["phi_h"], counts["phi_e"])
    code, _, err = _cli(capsys, "infer", a, b, "--roi", "whole", "--out", tmp_path / "out", *FAST, *L2)
    assert code == 0, err
    ra = nm.load_result(tmp_path / "out" / "u16.ome.tif")
    rb = nm.load_result(tmp_path / "out" / "f64.ome.tif")
    np.testing.assert_array_equal(ra.rate, rb.rate)
    assert np.isfinite(ra.rate).mean() > 0.9


def test_cli_no_pixel_size_warns_with_the_default(tmp_path, nucleus, capsys):
    h, e = tmp_path / "h.tif", tmp_path / "e.tif"
    tifffile.imwrite(h, nucleus["phi_h"])
    tifffile.imwrite(e, nucleus["phi_e"])
    code, _, err = _cli(capsys, "infer", "--phi-h", h, "--phi-e", e, "--out", tmp_path / "out", *FAST)
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("mollifier: warning:")]
    assert len(notes) == 1 and "default pixel size 1" in notes[0] and "--pixel-size" in notes[0]
    res = nm.load_result(tmp_path / "out" / "h.ome.tif")
    assert res.provenance["pixel_size"] == [1.0, 1.0]
    assert res.provenance["pixel_size_source"].startswith("default")
    # with coefficients in um the default would be wrong: refused
    code, _, err = _cli(capsys, "infer", "--phi-h", h, "--phi-e", e, "--out", tmp_path / "out2", *FAST, *L2)
    _one_error(code, err, "no physical pixel size", "--pixel-size")


def test_cli_output_folder_not_writable_fails_before_computing(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setattr(jobs, "infer_files", lambda *a, **k: pytest.fail("computed before checking --out"))
    before = snapshot(data["dir"])
    code, out, err = _cli(capsys, "infer", data["good"], "--out", data["good"] / "out", *FAST, *L2)
    line = [ln for ln in err.splitlines() if ln.startswith("mollifier: error:")]
    assert code == 1 and len(line) == 1 and "Traceback" not in err
    assert "cannot write the outputs to" in line[0] and "choose another output folder (--out)" in line[0]
    assert out == "" and snapshot(data["dir"]) == before
    code, _, err = _cli(capsys, "demo", "--out", data["good"] / "demo", "--quiet")
    assert code == 1 and "cannot write the outputs" in err and "Traceback" not in err
    assert snapshot(data["dir"]) == before


def test_cli_disk_full_mid_write(tmp_path, data, capsys, monkeypatch):
    original = tifffile.TiffWriter.write
    calls = {"n": 0}

    def write(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffWriter, "write", write)
    before = snapshot(data["dir"])
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "infer", data["good"], "--out", out, *FAST, *L2)
    _one_error(code, err, "No space left on device", "nothing was written", "free disk space")
    assert calls["n"] == 2 and not out.exists() and snapshot(data["dir"]) == before


def test_cli_out_of_memory_retries_in_tiles(tmp_path, big, capsys, monkeypatch):
    path = _write_two_channel(tmp_path / "big.ome.tif", big["phi_h"], big["phi_e"])
    _oom_above(monkeypatch, 100 * 100)
    code, _, err = _cli(capsys, "infer", path, "--out", tmp_path / "out", *FAST, *L2)
    assert code == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("mollifier: warning:")]
    assert len(notes) == 1 and "out of memory" in notes[0] and "retrying in 64 px tiles" in notes[0]
    res = nm.load_result(tmp_path / "out" / "big.ome.tif")
    assert res.provenance["call"]["kwargs"]["tile"] == 64


def test_cli_interrupt_exits_130_and_writes_nothing(tmp_path, data, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(solve, "_direct", interrupted)
    before = snapshot(data["dir"])
    code, _, err = _cli(capsys, "infer", data["good"], "--out", tmp_path / "out", *FAST, *L2)
    assert code == 130 and err.strip().splitlines()[-1] == "mollifier: interrupted" and "Traceback" not in err
    assert snapshot(tmp_path / "out") == {} and snapshot(data["dir"]) == before


def test_cli_rerun_of_a_changed_input(tmp_path, data, capsys):
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "infer", data["good"], "--out", out, *FAST, *L2)
    assert code == 0, err
    original = data["good"].read_bytes()
    data["good"].write_bytes(original + b"\0")
    code, _, err = _cli(capsys, "rerun", out / "cell.provenance.json", "--quiet")
    _one_error(code, err, "has changed since the run", "cannot be reproduced")
    code, _, err = _cli(capsys, "rerun", tmp_path / "missing.provenance.json", "--quiet")
    _one_error(code, err, "no such file")


def test_cli_forced_tiles_and_rerun(tmp_path, data, capsys):
    """Regression: a tiled CLI run passed the network options (--iterations) on to infer_tiled and crashed."""
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "infer", data["good"], "--tile", "32", "--out", out, *FAST, *L2)
    assert code == 0, err
    res = nm.load_result(out / "cell.ome.tif")
    assert res.provenance["call"]["kwargs"]["tile"] == 32 and res.provenance["tiling"]["tiles"] == 4
    code, stdout, err = _cli(capsys, "rerun", out / "cell.provenance.json", "--quiet")
    assert code == 0 and "identical to the saved result" in stdout, stdout + err  # seeded per-tile bootstrap


# --------------------------------------------------------------------------- API: the remaining input rows
@pytest.mark.parametrize("change,match", [
    ({"phi_h": np.array([["a"] * 32] * 32)}, "must be a real numeric image"),
    ({"phi_h": np.ones((32, 32), complex)}, "must be a real numeric image"),
    ({"roi": np.ones((16, 16), bool)}, r"roi shape \(16, 16\) does not match the image shape \(32, 32\)"),
    ({"roi": np.full((32, 32), 0.5)}, "boolean mask or an integer label image"),
    ({"n_bootstrap": 1}, "0 .no uncertainty. or at least 2"),
    ({"roi_mode": "nucleus"}, "use 'image' or 'isolate'"),
])
def test_other_bad_arguments(change, match):
    rng = np.random.default_rng(0)
    args = {"phi_h": rng.uniform(0.2, 0.3, (32, 32)), "phi_e": rng.uniform(0.4, 0.5, (32, 32))}
    kwargs = {"radius": 4}
    for k, v in change.items():
        (args if k in args else kwargs)[k] = v
    with pytest.raises(MollifierInputError, match=match):
        nm.infer_rates(args, **kwargs)


def test_seed_changes_only_the_uncertainty_and_scale_is_free(nucleus):
    f = _fields(nucleus)
    kw = {"params": nucleus["params"], "pixel_size": 0.02, "radius": 4, "n_bootstrap": 6, "roi": nucleus["nucleus"],
          "uncertainty": "bootstrap"}
    a = nm.infer_rates(f, seed=0, **kw)
    b = nm.infer_rates(f, seed=1, **kw)
    np.testing.assert_array_equal(a.rate, b.rate)
    assert not np.array_equal(a.uncertainty, b.uncertainty, equal_nan=True)
    # the propagated uncertainty (the default) draws nothing: the seed changes nothing
    p0 = nm.infer_rates(f, seed=0, **{**kw, "uncertainty": "propagate"})
    p1 = nm.infer_rates(f, seed=1, **{**kw, "uncertainty": "propagate"})
    np.testing.assert_array_equal(p0.uncertainty, p1.uncertainty)
    c = nm.infer_rates({k: 7.0 * v for k, v in f.items()}, seed=0, **kw)  # the closed form is a ratio
    np.testing.assert_allclose(c.rate, a.rate, rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(c.uncertainty, a.uncertainty, rtol=1e-6, atol=1e-12, equal_nan=True)
    keys = {"software", "model", "params", "pixel_size", "radius", "radius_used", "method", "kernel", "boundary",
            "roi_mode", "device", "seed", "n_bootstrap", "noise", "input_hashes", "roi_hash", "labels", "created"}
    assert keys <= set(a.provenance)


def test_three_d_fields_are_solved_with_three_d_derivatives():
    from napari_mollifier import simulate as S

    shape = (24, 40, 40)
    phi_w = S.smooth_random_field(shape, 10, 0.5, 0.7, seed=1)
    rate = S.smooth_random_field(shape, 16, 0.6, 1.4, seed=2)
    st = S.chromatin_steady_state(phi_w, rate, pixel_size=0.02, params={"l2": 0.0234})  # periodic 3-D state
    res = nm.infer_rates({"phi_h": st["phi_h"], "phi_e": st["phi_e"]}, params={"l2": 0.0234},
                         pixel_size=(0.02, 0.02, 0.02), radius=6, n_bootstrap=0, boundary="periodic")
    assert np.isfinite(res.rate).all()
    assert np.corrcoef(res.rate.ravel(), rate.ravel())[0, 1] > 0.999
    assert np.median(np.abs(res.rate - rate)) < 0.01
