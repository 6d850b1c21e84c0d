"""Nucleus detection when no ROI is given (issue 13): API and CLI, against the synthetic nucleus's own mask."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_mollifier import MollifierInputError, cli, load_result
from napari_mollifier.nucleus import detect_nucleus
from napari_mollifier.simulate import synthetic_nucleus

tifffile = pytest.importorskip("tifffile")


def dice(a, b):
    return 2 * np.sum(a & b) / (a.sum() + b.sum())


@pytest.mark.parametrize("seed,noise", [(0, 0.01), (1, 0.0), (2, 0.05)])
def test_detects_the_sample_nucleus(seed, noise):
    s = synthetic_nucleus(seed=seed, noise=noise)
    mask, info = detect_nucleus({"phi_h": s["phi_h"], "phi_e": s["phi_e"]})
    assert dice(mask, s["nucleus"]) >= 0.95
    assert not np.any(mask & ~s["nucleus"])  # no background pixel
    assert info["method"] == "otsu" and "threshold" in info["description"]
    tri, _ = detect_nucleus(s["phi_h"] + s["phi_e"], method="triangle")
    assert dice(tri, s["nucleus"]) >= 0.9


def test_refuses_images_without_background_or_contrast():
    image = np.ones((64, 64))
    image[:3, :3] = 0  # bright almost everywhere: no background to find
    with pytest.raises(MollifierInputError, match="whole image"):
        detect_nucleus(image, sigma=0)
    with pytest.raises(MollifierInputError, match="constant"):
        detect_nucleus(np.ones((32, 32)))
    with pytest.raises(MollifierInputError, match="method"):
        detect_nucleus(np.ones((32, 32)), method="magic")


@pytest.fixture(scope="module")
def sample():
    return synthetic_nucleus(shape=(96, 96), pixel_size=0.02, seed=0, noise=0.01)


@pytest.fixture
def ome(tmp_path, sample):
    path = tmp_path / "cell.ome.tif"
    tifffile.imwrite(path, np.stack([sample["phi_h"], sample["phi_e"]]), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.02, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": 0.02, "PhysicalSizeYUnit": "µm"})
    return path


FAST = ["--radius", "4", "--n-bootstrap", "2", "--param", "l2=0.0234", "--quiet"]


def test_cli_detects_the_nucleus_without_roi(tmp_path, ome, sample, capsys):
    out = tmp_path / "out"
    assert cli.main(["infer", str(ome), "--out", str(out), *FAST]) == 0, capsys.readouterr().err
    nucleus = tifffile.imread(out / "cell_nucleus.ome.tif").astype(bool).squeeze()
    assert dice(nucleus, sample["nucleus"]) >= 0.95
    res = load_result(out / "cell.ome.tif")
    solved = np.isfinite(res.rate)
    assert solved.any() and not np.any(solved & ~sample["nucleus"])  # no background pixel in the solve
    assert not np.any((res.labels > 0) & ~sample["nucleus"])
    record = json.loads((out / "cell.provenance.json").read_text())["provenance"]
    assert record["roi_source"] == "detected"
    assert record["nucleus_detection"]["file"] == "cell_nucleus.ome.tif"
    assert [r["role"] for r in record["inputs"]] == ["image", "roi"]
    capsys.readouterr()
    assert cli.main(["rerun", str(out / "cell.provenance.json")]) == 0  # the detected mask is a recorded input
    assert "identical" in capsys.readouterr().out


def test_cli_roi_whole_solves_the_whole_image(tmp_path, ome, capsys):
    out = tmp_path / "whole"
    assert cli.main(["infer", str(ome), "--roi", "whole", "--out", str(out), *FAST]) == 0
    assert not (out / "cell_nucleus.ome.tif").exists()
    res = load_result(out / "cell.ome.tif")
    assert np.all(res.labels > 0)
    record = json.loads((out / "cell.provenance.json").read_text())["provenance"]
    assert record["roi_source"] == "whole image" and "nucleus_detection" not in record


def test_refuses_a_crop_inside_the_nucleus_and_several_nuclei(tmp_path, capsys):
    """No single nucleus: the bright pixels in pieces (a crop of heterochromatin domains, four nuclei) -> refused
    with the fix, rather than solving one domain or one of four nuclei as "the nucleus"; the CLI then solves the
    whole image and says so."""
    s = synthetic_nucleus(shape=(128, 128), pixel_size=0.02, seed=1)
    crop = {k: s[k][44:84, 44:84] for k in ("phi_h", "phi_e")}
    with pytest.raises(MollifierInputError, match=r"no single nucleus detected.*pass an ROI"):
        detect_nucleus(crop)
    total = s["phi_h"] + s["phi_e"]
    four = np.block([[total, total], [total, total]])
    with pytest.raises(MollifierInputError, match=r"no single nucleus detected.*4 pieces.*25%"):
        detect_nucleus(four)
    mask, info = detect_nucleus(total)  # one nucleus on background: accepted
    assert info["largest_share"] >= 0.9 and dice(mask, s["nucleus"]) >= 0.9
    path = tmp_path / "crop.ome.tif"
    tifffile.imwrite(path, np.stack([crop["phi_h"], crop["phi_e"]]), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.02, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": 0.02, "PhysicalSizeYUnit": "µm"})
    out = tmp_path / "out"
    assert cli.main(["infer", str(path), "--out", str(out), *FAST]) == 0
    assert "no single nucleus detected" in capsys.readouterr().err
    assert not (out / "crop_nucleus.ome.tif").exists()
    assert np.all(load_result(out / "crop.ome.tif").labels > 0)
