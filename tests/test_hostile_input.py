"""Hostile input (issue 17): devices and FIFOs, memory bombs, unbounded work, crafted provenances, domains batches.

Every refusal is a MollifierInputError (or one ``mollifier: error:`` line) naming the bad value and the fix, and
comes before the expensive part: devices and FIFOs within 1 s, memory bombs under ``ulimit -v`` within 5 s of the
call (the interpreter's start-up, importing torch, is not counted: it is the same for every run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")

import napari_mollifier as nm  # noqa: E402
from napari_mollifier import cli, validation  # noqa: E402
from napari_mollifier.app import jobs  # noqa: E402
from napari_mollifier.app.rerun import read_provenance, rerun  # noqa: E402
from napari_mollifier.errors import MollifierInputError, MollifierWarning  # noqa: E402
from napari_mollifier.io import load_result, read_image, write_ome_tiff  # noqa: E402
from napari_mollifier.io.publish import is_leftover  # noqa: E402
from napari_mollifier.simulate import synthetic_nucleus  # noqa: E402

FAST = ["--radius", "4", "--n-bootstrap", "0", "--quiet", "--param", "l2=0.0234", "--roi", "whole"]  # l2 given
ULIMIT_KB = 3_000_000  # 3 GB of address space: enough to import torch and run a small job, not for a bomb


@pytest.fixture(scope="module")
def sample():
    return synthetic_nucleus(shape=(40, 40), pixel_size=0.02, seed=0, noise=0.01)


@pytest.fixture(scope="module")
def run(sample, tmp_path_factory):
    """A tiny image and a result of it written by the CLI (radius 4, no bootstrap)."""
    folder = tmp_path_factory.mktemp("run")
    image = folder / "cell.ome.tif"
    write_ome_tiff(image, {"phi_h": sample["phi_h"], "phi_e": sample["phi_e"]}, 0.02)
    out = folder / "out"
    assert cli.main(["infer", str(image), "--out", str(out), *FAST]) == 0
    return {"image": image, "out": out, "provenance": out / "cell.provenance.json"}


@pytest.fixture()
def fifo(tmp_path):
    def make(name):
        path = tmp_path / name
        os.mkfifo(path)
        return path

    return make


def _refused_fast(call, *fragments, limit=1.0):
    started = time.perf_counter()
    with pytest.raises(MollifierInputError) as info:
        call()
    elapsed = time.perf_counter() - started
    assert elapsed < limit, f"refused after {elapsed:.2f} s"
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


# --------------------------------------------------------------------------- devices, FIFOs, folders
@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_dev_zero_and_fifos_are_refused_within_a_second(fifo, run, tmp_path):
    _refused_fast(lambda: jobs.infer_files("/dev/zero"), "/dev/zero is a character device, not a regular file")
    pipe = fifo("cell.ome.tif")
    _refused_fast(lambda: jobs.infer_files(pipe), "is a FIFO (named pipe), not a regular file")
    _refused_fast(lambda: jobs.infer_files(run["image"], roi=pipe), "FIFO")
    _refused_fast(lambda: read_image(pipe), "FIFO")
    _refused_fast(lambda: nm.io.read_localisations(fifo("locs.csv")), "FIFO")
    _refused_fast(lambda: load_result(pipe), "FIFO")
    _refused_fast(lambda: read_provenance(fifo("x.provenance.json")), "FIFO")
    for target in ("/dev/zero", str(pipe)):  # a provenance naming a device or a FIFO
        record = json.loads(run["provenance"].read_text())
        record["provenance"]["inputs"][0]["path"] = target
        crafted = tmp_path / "crafted.provenance.json"
        crafted.write_text(json.dumps(record))
        _refused_fast(lambda: rerun(crafted), "not a regular file")  # noqa: B023 - called within the same iteration


def test_cli_dev_zero_and_fifo_one_line_and_no_output(fifo, tmp_path, capsys):
    pipe = fifo("ff.tif")
    for source in ("/dev/zero", str(pipe)):
        started = time.perf_counter()
        code = cli.main(["infer", source, "--out", str(tmp_path / "out"), *FAST])
        assert time.perf_counter() - started < 1.0
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.startswith("mollifier: error:")]
        assert code == 1 and len(lines) == 1 and "not a regular file" in lines[0] and "Traceback" not in err
        assert not (tmp_path / "out").exists()


def test_a_folder_that_is_not_a_store_is_refused_before_hashing(tmp_path):
    folder = tmp_path / "lib"
    folder.mkdir()
    for i in range(50):
        (folder / f"f{i}.so").write_bytes(os.urandom(1000))
    _refused_fast(lambda: jobs.infer_files(folder), "is a folder, not an image file or a zarr store")
    _refused_fast(lambda: nm.io.file_sha256(folder), "not an image file or a zarr store")


# --------------------------------------------------------------------------- memory bombs under ulimit -v
def _write_bombs(folder: Path) -> dict:
    import zlib

    n = -(-50000 // 256)
    tile = zlib.compress(bytes(256 * 256))
    tifffile.imwrite(folder / "bomb.tif", (tile for _ in range(2 * n * n)), shape=(2, 50000, 50000),
                     dtype=np.uint8, tile=(256, 256), compression="zlib")
    store = folder / "bomb.zarr"
    store.mkdir()
    (store / ".zarray").write_text(json.dumps({"zarr_format": 2, "shape": [10**31, 10**31], "chunks": [1000, 1000],
                                               "dtype": "<f8", "compressor": None, "fill_value": 0.0,
                                               "order": "C", "filters": None}))
    (folder / "bomb.csv").write_text("x,y\n0,0\n926000,926000\n")  # 32 bytes: 926 um apart at 20 nm/px
    return {"tiff": folder / "bomb.tif", "zarr": store, "smlm": folder / "bomb.csv"}


_BOMB_SCRIPT = textwrap.dedent("""
    import json, sys, time, io, contextlib
    from napari_mollifier import cli
    from napari_mollifier._napari import io_hooks
    path, out, reader = sys.argv[1], sys.argv[2], sys.argv[3]
    err = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stderr(err):
        code = cli.main(["infer", path, "--out", out, "--radius", "4", "--n-bootstrap", "0", "--quiet"])
    elapsed = time.perf_counter() - started
    t0 = time.perf_counter()
    try:
        getattr(io_hooks, reader)(path)
        napari = "read"
    except Exception as exc:
        napari = type(exc).__name__ + ": " + str(exc)
    print(json.dumps({"code": code, "seconds": elapsed, "stderr": err.getvalue(), "napari": napari,
                      "napari_seconds": time.perf_counter() - t0}))
""")


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    return _write_bombs(tmp_path_factory.mktemp("bombs"))


@pytest.mark.skipif(sys.platform != "linux", reason="ulimit -v and /proc are Linux")
@pytest.mark.parametrize("kind", ["tiff", "zarr", "smlm"])
def test_memory_bombs_are_refused_within_5_s_under_ulimit(bombs, kind, tmp_path):
    """A 7 MB zlib TIFF claiming 2 x 50000^2 px, a 5-line .zarray claiming 1e62 px and a 32-byte SMLM table
    two points 926 um apart: each refused from its metadata before any allocation, in the CLI and the napari
    reader, under a 3 GB address-space limit."""
    path = bombs[kind]
    assert path.stat().st_size < 10e6 if path.is_file() else True
    reader = {"tiff": "read_tiff_layers", "zarr": "read_zarr_layers", "smlm": "read_smlm_layers"}[kind]
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "-c", f'ulimit -v {ULIMIT_KB}; exec "$0" -c "$1" "$2" "$3" "$4"', sys.executable, _BOMB_SCRIPT,
         str(path), str(out), reader], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = [ln for ln in report["stderr"].splitlines() if ln.startswith("mollifier: error:")]
    assert report["code"] == 1 and len(lines) == 1 and "Traceback" not in report["stderr"], report
    assert report["seconds"] < 5.0, report
    expected = {"tiff": ("needs", "GB of memory", "crop or bin"), "zarr": ("claims shape", "corrupt or hostile"),
                "smlm": ("46301 x 46301 px", "GB of memory", "--smlm-pixel")}[kind]
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    assert not out.exists()
    if kind == "tiff":
        assert report["napari"] == "read"  # napari gets a lazy (dask) array: it never loads the whole file
    else:
        assert report["napari"].startswith("MollifierInputError") and expected[0] in report["napari"], report
    assert report["napari_seconds"] < 5.0


# --------------------------------------------------------------------------- bounded work, API
def _never(*args, **kwargs):
    raise AssertionError("work started before the arguments were checked")


@pytest.mark.parametrize("kwargs, fragments", [
    ({"n_bootstrap": -5}, ["n_bootstrap must be between 0 and 10000, got -5"]),
    ({"n_bootstrap": 2.7}, ["n_bootstrap must be a whole number", "2.7"]),
    ({"n_bootstrap": 10**400}, ["n_bootstrap must be between 0 and 10000, got an integer of 401 digits"]),
    ({"n_bootstrap": 1}, ["0 (no uncertainty) or at least 2"]),
    ({"iterations": 0, "method": "network"}, ["iterations must be between 1 and 1000000, got 0"]),
    ({"seed": -1}, ["seed must be between 0 and 18446744073709551615, got -1"]),
    ({"seed": 2**64}, ["seed must be between 0"]),
    ({"pixel_size": 1e300}, ["pixel_size 1e+300 is outside the accepted range"]),
    ({"pixel_size": 1e-300}, ["pixel_size 1e-300 is outside the accepted range"]),
    ({"pixel_size": float("nan")}, ["pixel_size nan is outside"]),
    ({"params": {"l2": float("nan")}}, ["coefficient l2 = nan is not a finite number"]),
    ({"params": {"l2": "big"}}, ["coefficient 'l2' must be a number"]),
    ({"noise": float("nan")}, ["noise = nan is not a non-negative finite number"]),
    ({"noise": {"phi_h": -1.0}}, ["noise of 'phi_h' = -1.0"]),
    ({"model": "nope"}, ["unknown model 'nope'"]),
    ({"model": {"a": 1}}, ["unknown model"]),
])
def test_bad_solver_arguments_are_refused_before_any_work(sample, kwargs, fragments):
    fields = {"phi_h": sample["phi_h"], "phi_e": sample["phi_e"]}
    message = _refused_fast(lambda: nm.infer_rates(fields, radius=4, progress=_never, **kwargs), *fragments)
    assert "NaN pixels" not in message and "phi_e (euchromatin)" not in message


@pytest.mark.parametrize("argv, fragment", [
    (["--n-bootstrap", "2.7"], "argument --n-bootstrap: n_bootstrap must be a whole number"),
    (["--n-bootstrap", "-5"], "argument --n-bootstrap: n_bootstrap must be between 0 and 10000"),
    (["--n-bootstrap", "1000000000"], "argument --n-bootstrap: n_bootstrap must be between 0 and 10000"),
    (["--seed", "-1"], "argument --seed: seed must be between 0 and 18446744073709551615, got -1"),
    (["--iterations", "0"], "argument --iterations: iterations must be between 1 and 1000000, got 0"),
    (["--pixel-size", "1e300"], "argument --pixel-size-um/--pixel-size: --pixel-size-um 1e+300 um is outside the accepted range"),
    (["--pixel-size-um", "1e-300"], "--pixel-size-um 1e-300 um is outside"),
])
def test_cli_bounds_are_usage_errors_before_any_work(run, argv, fragment, capsys, monkeypatch):
    monkeypatch.setattr(jobs, "infer_files", _never)
    with pytest.raises(SystemExit) as info:
        cli.main(["infer", str(run["image"]), "--out", str(run["out"].parent / "x"), *argv])
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_run_time_estimate_warns_before_a_long_run(run, tmp_path, monkeypatch):
    with pytest.warns(MollifierWarning, match=r"estimated to take about .* to cut it use fewer bootstrap samples"):
        est = validation.warn_run_time((1024, 1024), n_bootstrap=1000)
    assert est["solves"] == est["rungs"] + 2 + 2000
    with warnings.catch_warnings():
        warnings.simplefilter("error", MollifierWarning)
        assert validation.warn_run_time((64, 64), radius=4, n_bootstrap=0)["seconds"] < 1
    # the CLI says it as soon as it is known: before the result is written
    monkeypatch.setattr(validation, "RUN_TIME_WARN_S", 0.0)
    out = tmp_path / "out"
    seen = []
    row = jobs.run_job({"image": str(run["image"])}, out, radius=4, n_bootstrap=0,
                       on_warning=lambda name, text: seen.append((text, (out / "cell.ome.tif").exists())))
    assert row["status"] == "ok"
    notes = [(t, written) for t, written in seen if "estimated to take" in t]
    assert notes and not notes[0][1], seen


def test_isolated_hot_pixel_warns_and_clean_fields_do_not(sample):
    fields = {"phi_h": sample["phi_h"].copy(), "phi_e": sample["phi_e"]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nm.infer_rates(fields, radius=4, n_bootstrap=0, pixel_size=0.02)
    assert not [w for w in caught if "extreme pixel" in str(w.message)]
    fields["phi_h"][20, 21] = 1e300
    with pytest.warns(MollifierWarning, match=r"field 'phi_h' has 1 isolated extreme pixel\(s\) \(e.g. 1e\+300 at "
                                              r"\(20, 21\).*remove hot pixels"):
        nm.infer_rates(fields, radius=4, n_bootstrap=0, pixel_size=0.02)
    # two-level (binarised) fields and a bright multi-pixel structure are not isolated spikes
    binary = np.where(sample["phi_h"] > np.median(sample["phi_h"]), 0.8, 0.2)
    blob = sample["phi_h"].copy()
    blob[10:16, 10:16] = 50.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", MollifierWarning)
        assert validation.warn_extreme_pixels({"phi_h": binary, "blob": blob}) == []


# --------------------------------------------------------------------------- crafted provenances
def _crafted(run, tmp_path, edit, name="cell.provenance.json"):
    """A copy of the run's folder whose provenance JSON was changed by ``edit(record)`` (returns raw text when
    it returns a string)."""
    folder = tmp_path / "crafted"
    folder.mkdir(exist_ok=True)
    for p in run["out"].iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    record = json.loads(run["provenance"].read_text())
    text = edit(record)
    (folder / name).write_text(text if isinstance(text, str) else json.dumps(record))
    return folder / name


def _set(path, value):
    def edit(record):
        node = record["provenance"]
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        node[int(keys[-1]) if isinstance(node, list) else keys[-1]] = value

    return edit


@pytest.mark.parametrize("edit, fragments", [
    (lambda r: json.dumps(r).replace('"n_bootstrap": 0', '"n_bootstrap": ' + "9" * 400),
     ["provenance key call.kwargs.n_bootstrap must be between 0 and 10000, got an integer of 400 digits"]),
    (_set("call.kwargs.iterations", 0), ["provenance key call.kwargs.iterations must be between 1"]),
    (_set("call.kwargs.seed", -1), ["provenance key call.kwargs.seed must be between 0"]),
    (_set("call.kwargs.pixel_size", [1e300, 1e300]), ["provenance key call.kwargs.pixel_size 1e+300 is outside"]),
    (_set("call.kwargs.model", "nope"), ["provenance key call.kwargs.model: unknown model 'nope'"]),
    (_set("call.kwargs.model", ["x"]), ["provenance key call.kwargs.model must be a name"]),
    (_set("call.kwargs", [1, 2]), ["provenance key call.kwargs must be a record"]),
    (_set("call.kwargs.params", {"l2": "nan"}), ["coefficient l2 = nan is not a finite number"]),
    (_set("call.kwargs.noise", "nan"), ["noise = nan is not a non-negative finite number"]),
    (_set("call.load", "x"), ["provenance key call.load must be a record"]),
    (_set("inputs", {"a": 1}), ["provenance key inputs must be a list"]),
    (_set("inputs.0.path", 5), ["provenance key inputs[0].path must be a file path"]),
    (_set("inputs.0.role", "evil"), ["provenance key inputs[0].role must be one of"]),
    (_set("inputs.0.path", "/tmp/other.provenance.json"), ["a JSON file: an input of a run is an image"]),
    (lambda r: "[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
])
def test_crafted_provenance_is_refused_naming_the_key(run, tmp_path, capsys, edit, fragments):
    crafted = _crafted(run, tmp_path, edit)
    started = time.perf_counter()
    code = cli.main(["rerun", str(crafted), "--quiet"])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("mollifier: error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "TypeError" not in lines[0] and "RecursionError" not in lines[0]
    assert elapsed < 5.0


def test_provenance_cannot_point_rerun_at_another_result(run, tmp_path, capsys):
    for target in ("../other/cell.ome.tif", str(run["out"] / "cell.ome.tif"), ".."):
        crafted = _crafted(run, tmp_path, lambda r: json.dumps({**r, "outputs": {"result": target}}))  # noqa: B023 - called within the same iteration
        assert cli.main(["rerun", str(crafted), "--quiet"]) == 1
        assert "must be the bare file name of the result beside it" in capsys.readouterr().err
    # a result file beside the provenance that belongs to another run is named as such
    mixed = _crafted(run, tmp_path, _set("created", "1999-01-01T00:00:00Z"))
    assert cli.main(["rerun", str(mixed), "--quiet"]) == 1
    assert "are from different runs" in capsys.readouterr().err


# --------------------------------------------------------------------------- domains batches
@pytest.fixture(scope="module")
def locs(tmp_path_factory):
    from napari_mollifier.domains.synthetic import lattice_nucleus

    s = lattice_nucleus(seed=1)
    folder = tmp_path_factory.mktemp("locs")
    good = folder / "good.csv"
    np.savetxt(good, np.column_stack([s["x"], s["y"]]), delimiter=",", header="x [nm],y [nm]", comments="")
    bad = folder / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    return {"good": good, "bad": bad}


def test_domains_batch_goes_on_after_a_bad_table(locs, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(["domains", str(locs["bad"]), str(locs["good"]), "--out", str(out), "--subsample", "2"])
    captured = capsys.readouterr()
    assert code == 1
    err = captured.err.strip().splitlines()
    assert err[0].startswith("mollifier: error: bad.csv: ") and "missing column" in err[0]
    assert err[-1] == "mollifier: 1 of 2 table(s) failed: bad.csv"
    assert "good.csv: " in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["good_domains.csv", "good_fields.ome.tif", "good_gamma.ome.tif",
                                                     "good_labels.ome.tif", "good_summary.json"]


def test_domains_output_checks_come_before_computing(locs, tmp_path, capsys, monkeypatch):
    import napari_mollifier.domains as domains

    monkeypatch.setattr(domains, "analyse_table", _never)
    target = tmp_path / "a_file"
    target.write_text("x")
    assert cli.main(["domains", str(locs["good"]), "--out", str(target)]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err


def test_domains_five_outputs_are_all_or_nothing(locs, tmp_path, monkeypatch):
    from napari_mollifier.domains import analyse_table
    from napari_mollifier.io import tiff

    res = analyse_table(locs["good"], subsample=2)
    out = tmp_path / "out"
    res.save(out, "good")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    original = tiff.write_ome_tiff
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return original(*args, **kwargs)

    monkeypatch.setattr(tiff, "write_ome_tiff", failing)
    res.summary = dict(res.summary, n_domains=-1)
    with pytest.raises(OSError):
        res.save(out, "good")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old five, unchanged, nothing else
    fresh = tmp_path / "fresh"
    calls["n"] = 0
    with pytest.raises(OSError):
        res.save(fresh, "good")
    assert not fresh.exists()


# --------------------------------------------------------------------------- napari writers
def test_napari_writer_takes_the_lock_and_clears_leftovers(tmp_path):
    from napari_mollifier._napari import io_hooks

    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / ".maps.ome.tif.tmp-0123456789").write_bytes(b"partial")
    data = np.arange(64.0).reshape(8, 8)
    with pytest.warns(MollifierWarning, match="leftover of an interrupted run"):
        written = io_hooks.write_ome_tiff_layers(str(folder / "maps.ome.tif"),
                                                 [(data, {"name": "rate", "scale": (0.02, 0.02)}, "image")])
    assert [Path(p).name for p in written] == ["maps.ome.tif"]
    assert not [p for p in folder.iterdir() if is_leftover(p.name)]
    np.testing.assert_array_equal(tifffile.imread(written[0]), data)
