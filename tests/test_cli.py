"""The ``mollifier`` command line: infer on each input format, batches and errors, demo, rerun."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")
zarr = pytest.importorskip("zarr")

import napari_mollifier as nm  # noqa: E402
from napari_mollifier import cli  # noqa: E402
from napari_mollifier.errors import MollifierInputError  # noqa: E402
from napari_mollifier.io import file_sha256  # noqa: E402
from napari_mollifier.simulate import synthetic_nucleus  # noqa: E402

FAST = ["--radius", "4", "--n-bootstrap", "2", "--param", "l2=0.0234", "--quiet"]


@pytest.fixture(scope="module")
def sample():
    return synthetic_nucleus(shape=(64, 64), pixel_size=0.02, noise=0.01)


@pytest.fixture
def files(tmp_path, sample):
    """The sample as a 2-channel OME-TIFF, two single-channel TIFFs (no pixel size) and an ROI."""
    data = tmp_path / "data"
    data.mkdir()
    two = data / "cell.ome.tif"
    tifffile.imwrite(two, np.stack([sample["phi_h"], sample["phi_e"]]), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 20.0, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 20.0, "PhysicalSizeYUnit": "nm",
                               "Channel": {"Name": ["H3K9me3", "H3K27ac"]}})
    h, e = data / "h.tif", data / "e.tif"
    tifffile.imwrite(h, sample["phi_h"])
    tifffile.imwrite(e, sample["phi_e"])
    roi = data / "roi.tif"
    tifffile.imwrite(roi, sample["nucleus"].astype(np.uint8))
    return {"two": two, "h": h, "e": e, "roi": roi, "dir": data}


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_infer_two_channel_ome_tiff(tmp_path, files, capsys):
    before = {k: file_sha256(p) for k, p in files.items() if k != "dir"}
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, "infer", files["two"], "--channels", "H3K9me3,H3K27ac", "--roi",
                                files["roi"], "--out", out, *FAST)
    assert code == 0, stderr
    assert "cell" in stdout and "ok" in stdout and "median rate" in stdout  # the summary table
    assert sorted(p.name for p in out.iterdir()) == ["cell.ome.tif", "cell.provenance.json", "cell_rois.csv"]
    res = nm.load_result(out / "cell.ome.tif")
    assert res.rate.shape == (64, 64) and res.radius == 4.0
    assert np.isfinite(res.rate[files_nucleus(files)]).mean() > 0.9
    prov = res.provenance
    assert prov["pixel_size"] == pytest.approx([0.02, 0.02])
    assert [r["role"] for r in prov["inputs"]] == ["image", "roi"]
    assert prov["inputs"][0]["sha256"] == before["two"]
    assert prov["call"]["load"]["channels"] == [0, 1]
    assert prov["call"]["kwargs"]["device"] == "cpu" or prov["call"]["kwargs"]["device"].startswith(("cuda", "mps"))
    assert prov["call"]["kwargs"]["params"] == {"l2": 0.0234}
    rows = (out / "cell_rois.csv").read_text().splitlines()
    assert rows[0].startswith("label,") and len(rows) == 2
    record = json.loads((out / "cell.provenance.json").read_text())
    assert record["outputs"]["result"] == "cell.ome.tif"
    assert {k: file_sha256(p) for k, p in files.items() if k != "dir"} == before, "inputs must not be touched"


def files_nucleus(files):
    return tifffile.imread(files["roi"]) > 0


def test_infer_pairs_pixel_size_required(tmp_path, files, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, "infer", "--phi-h", files["h"], "--phi-e", files["e"], "--out", out, *FAST)
    assert code == 1
    line = [ln for ln in stderr.splitlines() if "error" in ln]
    assert line and "no physical pixel size" in line[0] and "--pixel-size" in line[0]
    assert "Traceback" not in stderr
    code, stdout, stderr = _run(capsys, "infer", "--pairs", files["h"], files["e"], "--pixel-size", "0.02",
                                "--out", out, *FAST)
    assert code == 0, stderr
    res = nm.load_result(out / "h.ome.tif")
    # no --roi: the detected nucleus is recorded as the run's ROI input (issue 13)
    assert [r["role"] for r in res.provenance["inputs"]] == ["phi_h", "phi_e", "roi"]
    assert res.provenance["roi_source"] == "detected"
    assert res.provenance["call"]["load"]["pixel_size"] == [0.02]


def test_infer_ome_zarr_input_and_output(tmp_path, sample, capsys):
    path = tmp_path / "cell.ome.zarr"
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    data = np.stack([sample["phi_h"], sample["phi_e"]])
    arr = root.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1, 32, 32))
    arr[...] = data
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.02, 0.02]}]}]}]
    out = tmp_path / "out"
    code, _, stderr = _run(capsys, "infer", path, "--format", "ome-zarr", "--out", out, *FAST)
    assert code == 0, stderr
    res = nm.load_result(out / "cell.ome.zarr")
    assert res.provenance["pixel_size"] == pytest.approx([0.02, 0.02])
    assert len(res.provenance["inputs"][0]["sha256"]) == 64


def test_infer_thunderstorm_csv(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 4000
    centre = rng.normal(0, 1, (n, 2))
    xy = 640 + 200 * centre  # a blob of localisations (nm)
    path = tmp_path / "locs.csv"
    lines = ['"id","frame","x [nm]","y [nm]","uncertainty [nm]"']
    lines += [f"{i + 1},{i % 100 + 1},{xy[i, 0]:.2f},{xy[i, 1]:.2f},8.0" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, _, stderr = _run(capsys, "infer", path, "--smlm-pixel", "20", "--smlm-render", "gaussian",
                           "--out", out, *FAST)
    assert code == 0, stderr
    res = nm.load_result(out / "locs.ome.tif")
    assert res.provenance["density_split"] is not None  # a density: the documented split was used
    assert res.provenance["pixel_size"] == pytest.approx([0.02, 0.02])
    assert res.provenance["call"]["load"]["smlm"]["method"] == "gaussian"


def test_batch_continues_after_a_bad_file(tmp_path, files, capsys):
    bad = files["dir"] / "bad.tif"
    bad.write_bytes(files["h"].read_bytes()[:300])  # truncated
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, "infer", bad, files["two"], "--out", out, *FAST)
    assert code == 1
    errors = [ln for ln in stderr.splitlines() if ln.startswith("mollifier: error:")]
    assert len(errors) == 1 and "bad" in errors[0] and "truncated" in errors[0]
    assert "Traceback" not in stderr
    assert (out / "cell.ome.tif").exists() and not list(out.glob("bad*"))
    assert "error" in stdout and "ok" in stdout


def test_usage_and_debug(tmp_path, files, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["infer", "--radius", "-3", str(files["two"])])
    assert exc.value.code == 2
    capsys.readouterr()
    code, _, stderr = _run(capsys, "infer", "--out", tmp_path)
    assert code == 1 and "no input" in stderr
    with pytest.raises(MollifierInputError, match="no physical pixel size"):
        cli.main(["infer", str(files["h"]), "--out", str(tmp_path), "--debug", *FAST])
    code, _, stderr = _run(capsys, "infer", files["two"], "--channels", "0,1,2", "--out", tmp_path, *FAST)
    assert code == 1 and "needs 2 channel" in stderr


def test_rerun_reproduces_exactly(tmp_path, files, capsys):
    out = tmp_path / "out"
    code, _, stderr = _run(capsys, "infer", files["two"], "--roi", files["roi"], "--out", out, *FAST)
    assert code == 0, stderr
    saved = nm.load_result(out / "cell.ome.tif")
    again = nm.rerun(out / "cell.provenance.json")
    for name in ("rate", "uncertainty", "residual"):
        assert np.array_equal(getattr(again, name), getattr(saved, name), equal_nan=True), name
    assert nm.rerun(saved).provenance["input_hashes"] == saved.provenance["input_hashes"]
    for source in (out / "cell.provenance.json", out / "cell.ome.tif"):
        code, stdout, stderr = _run(capsys, "rerun", source, "--quiet")
        assert code == 0, stderr
        assert "identical" in stdout
    # a changed input is refused, with one line
    data = tifffile.imread(files["two"])
    tifffile.imwrite(files["two"], data * 1.001, ome=True, metadata={"axes": "CYX"})
    code, _, stderr = _run(capsys, "rerun", out / "cell.provenance.json", "--quiet")
    assert code == 1 and "has changed since the run" in stderr and "Traceback" not in stderr
    # results from in-memory arrays cannot be re-run from files
    with pytest.raises(MollifierInputError, match="cannot be re-run"):
        nm.rerun(nm.infer_rates({"phi_h": data[0], "phi_e": data[1]}, radius=4, n_bootstrap=0, device="cpu"))


def test_rerun_finds_moved_inputs(tmp_path, files, capsys):
    out = tmp_path / "out"
    assert _run(capsys, "infer", files["two"], "--out", out, *FAST)[0] == 0
    moved = tmp_path / "moved"
    shutil.move(str(files["dir"]), moved)
    with pytest.raises(MollifierInputError, match="was not found"):
        nm.rerun(out / "cell.provenance.json")
    res = nm.rerun(out / "cell.provenance.json", data_dir=moved)
    assert np.array_equal(res.rate, nm.load_result(out / "cell.ome.tif").rate, equal_nan=True)


def test_demo_writes_maps_figure_table_and_reruns(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    from napari_mollifier import demo

    real = demo.synthetic_nucleus
    monkeypatch.setattr(demo, "synthetic_nucleus", lambda **kw: real(**{**kw, "shape": (64, 64)}))
    out = tmp_path / "demo"
    code, stdout, stderr = _run(capsys, "demo", "--out", out, "--n-bootstrap", "2", "--quiet")
    assert code == 0, stderr
    assert "pearson_r" in stdout
    names = {p.name for p in out.iterdir()}
    assert {"demo.ome.tif", "demo_figure.png", "demo_rois.csv", "demo.provenance.json", "demo_input.ome.tif",
            "demo_roi.ome.tif"} <= names
    png = (out / "demo_figure.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    res = nm.load_result(out / "demo.ome.tif")
    assert res.rate.shape == (64, 64)
    code, stdout, stderr = _run(capsys, "rerun", out / "demo.provenance.json", "--quiet")
    assert code == 0 and "identical" in stdout, stdout + stderr


def test_module_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "napari_mollifier.cli", "infer", "--help"], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "--channels" in proc.stdout and "phi_h" in proc.stdout and "--phi-h" in proc.stdout
    script = shutil.which("mollifier")
    if script is not None and Path(script).resolve().parent == Path(sys.executable).resolve().parent:
        proc = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "napari-mollifier" in proc.stdout


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="dask.distributed is not installed")
def test_batch_on_a_local_dask_cluster(tmp_path, files):
    from distributed import Client, LocalCluster

    from napari_mollifier.app.jobs import run_batch

    jobs = [{"image": str(files["two"]), "roi": str(files["roi"])}, {"image": str(files["two"])},
            {"image": str(files["h"])}]
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        rows = run_batch(jobs, tmp_path / "out", client=client, radius=4, n_bootstrap=0, params={"l2": 0.0234},
                         device="cpu")
    assert [r["name"] for r in rows] == ["cell", "cell_2", "h"]
    assert [r["status"] for r in rows] == ["ok", "ok", "error"]
    assert "pixel size" in rows[2]["error"]
    serial = nm.infer_rates(
        {"phi_h": tifffile.imread(files["two"])[0], "phi_e": tifffile.imread(files["two"])[1]},
        params={"l2": 0.0234}, pixel_size=0.02, roi=tifffile.imread(files["roi"]), radius=4, n_bootstrap=0,
        device="cpu")
    assert np.array_equal(nm.load_result(tmp_path / "out" / "cell.ome.tif").rate, serial.rate, equal_nan=True)
