"""Issue 13, item 5: rates that can only be relative (a density split with assumed shares, converted intensities)
are shown as "relative rate (lambda / median)"; the absolute map stays in the RateResult."""

from __future__ import annotations

import csv

import numpy as np
import pytest

import napari_mollifier as nm
from napari_mollifier.fractions import RELATIVE_RATE_LABEL, relative_map
from napari_mollifier.simulate import synthetic_nucleus


@pytest.fixture(scope="module")
def sample():
    return synthetic_nucleus(shape=(64, 64), pixel_size=0.02, seed=0, noise=0.01)


def _solve(fields, sample, roi=None):
    return nm.infer_rates(fields, params=sample["params"], pixel_size=sample["pixel_size"],
                          roi=sample["nucleus"] if roi is None else roi, n_bootstrap=2, radius=6, device="cpu")


def test_density_split_is_relative(sample):
    res = _solve({"density": sample["phi_h"] + sample["phi_e"]}, sample)
    assert res.relative and res.rate_label == RELATIVE_RATE_LABEL == "relative rate (lambda / median)"
    inside = np.isfinite(res.rate)
    median = float(np.median(res.rate[inside]))
    np.testing.assert_allclose(res.relative_rate[inside], res.rate[inside] / median)  # the absolute map is kept
    assert np.nanmedian(res.relative_rate) == pytest.approx(1.0)
    np.testing.assert_allclose(res.display_rate, res.relative_rate, equal_nan=True)
    unc = np.isfinite(res.uncertainty) & inside
    np.testing.assert_allclose(res.relative_uncertainty[unc], res.uncertainty[unc] / median)
    rec = res.provenance["relative_map"]
    assert rec["quantity"] == RELATIVE_RATE_LABEL and rec["medians"]["1"] == pytest.approx(median)
    row = res.table()[0]
    assert row["quantity"] == RELATIVE_RATE_LABEL
    rel = res.relative_rate[inside]
    assert row["relative_iqr"] == pytest.approx(np.subtract(*np.percentile(rel, [75, 25])))
    assert row["median"] == pytest.approx(median)  # the absolute columns are unchanged


def test_fractions_given_directly_stay_absolute(sample):
    res = _solve({"phi_h": sample["phi_h"], "phi_e": sample["phi_e"]}, sample)
    assert not res.relative and res.rate_label == "rate lambda"
    assert "relative_map" not in res.provenance and "quantity" not in res.table()[0]
    np.testing.assert_array_equal(res.display_rate, res.rate)
    # the level is right here: the median of the map is the truth's (what a relative map would throw away)
    n = sample["nucleus"] & np.isfinite(res.rate)
    assert np.median(res.rate[n]) == pytest.approx(np.median(sample["rate"][n]), rel=0.1)


def test_relative_map_per_roi():
    rate = np.array([[1.0, 2.0, 3.0, np.nan], [10.0, 20.0, 30.0, -1.0]])
    labels = np.array([[1, 1, 1, 0], [2, 2, 2, 3]])
    rel, medians = relative_map(rate, labels)
    np.testing.assert_allclose(rel[0, :3], [0.5, 1.0, 1.5])
    np.testing.assert_allclose(rel[1, :3], [0.5, 1.0, 1.5])
    assert np.isnan(rel[0, 3]) and np.isnan(rel[1, 3])  # outside, and an ROI with a negative median
    assert medians == {"1": 2.0, "2": 20.0, "3": -1.0}


def test_saved_result_stays_relative(sample, tmp_path):
    res = _solve({"density": sample["phi_h"] + sample["phi_e"]}, sample)
    back = nm.load_result(res.save(tmp_path / "r.npz"))
    assert back.relative
    np.testing.assert_allclose(back.relative_rate, res.relative_rate, equal_nan=True)


def test_cli_density_table_is_labelled_relative(sample, tmp_path, capsys):
    tifffile = pytest.importorskip("tifffile")
    from napari_mollifier import cli

    path = tmp_path / "dens.tif"
    tifffile.imwrite(path, (sample["phi_h"] + sample["phi_e"]).astype(np.float32))
    roi = tmp_path / "roi.tif"
    tifffile.imwrite(roi, sample["nucleus"].astype(np.uint8))
    out = tmp_path / "out"
    assert cli.main(["infer", str(path), "--roi", str(roi), "--pixel-size", "0.02", "--out", str(out),
                     "--param", f"l2={sample['params']['l2']}", "--radius", "6", "--n-bootstrap", "0",
                     "--quiet"]) == 0
    with open(out / "dens_rois.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["quantity"] == RELATIVE_RATE_LABEL and float(rows[0]["relative_iqr"]) > 0
    res = nm.load_result(next(out.glob("dens.*tif")))
    assert res.relative and res.provenance["relative_map"]["medians"]["1"] == pytest.approx(float(rows[0]["median"]))
