"""Plausibility warnings (issue 13): pixel size, nucleus width, volume fractions -- through the API and the CLI."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_mollifier import MollifierWarning, cli, infer_rates
from napari_mollifier.plausibility import PlausibilityWarning, check_plausibility
from napari_mollifier.simulate import synthetic_nucleus

tifffile = pytest.importorskip("tifffile")


@pytest.fixture(scope="module")
def sample():
    return synthetic_nucleus(shape=(64, 64), pixel_size=0.02, seed=0, noise=0.01)


def _fields(sample, h=1.0, e=1.0):
    return {"phi_h": h * sample["phi_h"], "phi_e": e * sample["phi_e"]}


def _run(fields, pixel_size, unit="um", roi=None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = infer_rates(fields, params={"l2": 0.0234}, pixel_size=pixel_size, unit=unit, roi=roi, radius=4,
                          n_bootstrap=0, device="cpu")
    notes = [str(w.message) for w in caught if issubclass(w.category, PlausibilityWarning)]
    assert res.provenance["plausibility"] == notes
    return notes


def test_api_clean_sample_gives_no_warning(sample):
    assert _run(_fields(sample), 0.02, roi=sample["nucleus"]) == []
    assert issubclass(PlausibilityWarning, MollifierWarning)


def test_api_pixel_size(sample):
    for px, unit in ((20.0, "um"), (0.0005, "um"), (0.5, "nm")):
        notes = _run(_fields(sample), px, unit, roi=sample["nucleus"])
        assert any("pixel size" in n and "implausible" in n for n in notes), (px, unit, notes)
    assert _run(_fields(sample), 20.0, "nm", roi=sample["nucleus"]) == []  # 20 nm is fine
    assert not any("pixel size" in n for n in _run(_fields(sample), 20.0, None))  # no unit: cannot tell


def test_api_nucleus_width(sample):
    notes = _run(_fields(sample), 0.9, roi=None)  # 64 px x 0.9 um = 58 um, a plausible pixel size
    assert len(notes) == 1 and "57.6 um wide, more than 50 um" in notes[0]
    assert _run(_fields(sample), 0.5, roi=None) == []  # 32 um


def test_api_fractions(sample):
    notes = _run(_fields(sample, h=3.0), 0.02, roi=sample["nucleus"])
    assert any("outside [0, 1]" in n for n in notes)
    notes = _run({"phi_h": np.full((64, 64), 0.6) + sample["phi_h"] * 0.1, "phi_e": sample["phi_e"] * 0 + 0.5
                  + 0.05 * sample["phi_e"]}, 0.02, roi=sample["nucleus"])
    assert any("phi_h + phi_e exceeds 1" in n for n in notes)
    # under 1 % of the ROI is tolerated
    f = _fields(sample)
    f["phi_h"] = f["phi_h"].copy()
    f["phi_h"][32, 32] = 1.5
    assert check_plausibility(f, 0.02, "um", sample["nucleus"]) == []


@pytest.fixture
def write(tmp_path, sample):
    def write(name, h=1.0, um=0.02):
        path = tmp_path / name
        tifffile.imwrite(path, np.stack([h * sample["phi_h"], sample["phi_e"]]), ome=True,
                         metadata={"axes": "CYX", "PhysicalSizeX": um, "PhysicalSizeXUnit": "µm",
                                   "PhysicalSizeY": um, "PhysicalSizeYUnit": "µm"})
        roi = tmp_path / f"roi_{name}.tif"
        tifffile.imwrite(roi, sample["nucleus"].astype(np.uint8))
        return [str(path), "--roi", str(roi)]
    return write


FAST = ["--radius", "4", "--n-bootstrap", "0", "--param", "l2=0.0234", "--quiet"]


def test_cli_warnings(tmp_path, write, capsys):
    assert cli.main(["infer", *write("ok.ome.tif"), "--out", str(tmp_path / "o"), *FAST]) == 0
    err = capsys.readouterr().err  # (R = 4 px on 1 % noise leaves some negative rates: that warning is not ours)
    assert "implausible" not in err and "outside [0, 1]" not in err and "um wide" not in err, err
    assert cli.main(["infer", *write("px.ome.tif"), "--pixel-size", "20", "--out", str(tmp_path / "p"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "mollifier: warning: px: the pixel size 20 um is implausible" in err and "in nm instead of um" in err
    assert "um wide, more than 50 um" in err
    assert cli.main(["infer", *write("raw.ome.tif", h=3.0), "--out", str(tmp_path / "r"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "outside [0, 1]" in err and err.count("outside [0, 1]") == 1


def test_cli_small_pixel_and_fraction_sum(tmp_path, write, sample, capsys):
    """The two warnings test_cli_warnings leaves out: a pixel under 1 nm, and phi_h + phi_e over 1."""
    assert cli.main(["infer", *write("tiny.ome.tif"), "--pixel-size", "0.0005", "--out", str(tmp_path / "t"),
                     *FAST]) == 0
    err = capsys.readouterr().err
    assert "mollifier: warning: tiny: the pixel size 0.0005 um is implausible" in err, err
    assert "um wide" not in err and "outside [0, 1]" not in err
    path = tmp_path / "sum.ome.tif"
    tifffile.imwrite(path, np.stack([0.6 + 0.1 * sample["phi_h"], 0.5 + 0.05 * sample["phi_e"]]), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.02, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": 0.02, "PhysicalSizeYUnit": "µm"})
    roi = tmp_path / "roi_sum.tif"
    tifffile.imwrite(roi, sample["nucleus"].astype(np.uint8))
    assert cli.main(["infer", str(path), "--roi", str(roi), "--out", str(tmp_path / "s"), *FAST]) == 0
    err = capsys.readouterr().err
    assert "phi_h + phi_e exceeds 1 in" in err and err.count("exceeds 1 in") == 1 and "outside [0, 1]" not in err
