"""Raw intensities -> volume fractions, the "relative" label, and the negative-rate flags (issue 16).

Every check is against a forward simulation with known fractions and rates
(:func:`napari_mollifier.simulate.synthetic_nucleus`): the raw intensities are made from the true fractions with
different brightness, offsets and background per channel, as a microscope would record them.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import napari_mollifier as nm
from napari_mollifier.errors import MollifierInputError, MollifierWarning
from napari_mollifier.examples import raw_intensities
from napari_mollifier.fractions import DEFAULT_TOTAL_FRACTION, NEGATIVE_RATE_LIMIT, intensities_to_fractions
from napari_mollifier.simulate import synthetic_nucleus


@pytest.fixture(scope="module")
def sample():
    return synthetic_nucleus(shape=(128, 128), pixel_size=0.02, seed=3)


@pytest.fixture(scope="module")
def raw(sample):
    return raw_intensities(sample, seed=5)


def _r(a, b, where):
    ok = where & np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def test_raw_intensities_are_not_fractions(sample, raw):
    """The test input really is a microscope-like image: offsets, unequal brightness, no fraction scale."""
    h, e = raw["h"], raw["e"]
    n = sample["nucleus"]
    assert np.median(h[~n]) > 50 and np.median(e[~n]) > 50  # a background offset
    assert h[n].max() > 10 and e[n].max() > 10  # counts, not fractions
    ratio_raw = np.median(h[n]) / np.median(e[n])
    ratio_true = np.median(sample["phi_h"][n]) / np.median(sample["phi_e"][n])
    assert abs(ratio_raw / ratio_true - 1) > 0.3  # the two marks' brightness differs


def test_conversion_recovers_the_fraction_pattern(sample, raw):
    n = sample["nucleus"]
    fractions, record = intensities_to_fractions(raw["h"], raw["e"], nucleus=n)
    for key in ("phi_h", "phi_e"):
        assert _r(fractions[key], sample[key], n) >= 0.98, key
        assert np.isnan(fractions[key][~n]).all()  # outside the nucleus: missing data
        assert np.nanmin(fractions[key]) >= 0
    total = (fractions["phi_h"] + fractions["phi_e"])[n]
    assert np.mean(total) == pytest.approx(DEFAULT_TOTAL_FRACTION, rel=1e-9)
    # the background is found outside the nucleus: the offsets used to make the image, within the noise
    assert record["background"]["phi_h"] == pytest.approx(raw["offset"][0], abs=3 * raw["noise"])
    assert record["background"]["phi_e"] == pytest.approx(raw["offset"][1], abs=3 * raw["noise"])
    assert record["level"] == "relative" and record["calibrated"] is False
    assert "relative" in record["summary"]
    assert fractions.record == record


def test_conversion_total_fraction_and_percentile(sample, raw):
    n = sample["nucleus"]
    f, rec = intensities_to_fractions(raw["h"], raw["e"], nucleus=n, total_fraction=0.25, percentile=95)
    assert np.mean((f["phi_h"] + f["phi_e"])[n]) == pytest.approx(0.25)
    assert rec["percentile"] == 95 and rec["total_fraction"] == 0.25
    f2, _ = intensities_to_fractions(raw["h"], raw["e"], nucleus=n, outside="keep")
    assert np.isfinite(f2["phi_h"]).all()
    f3, rec3 = intensities_to_fractions(raw["h"], raw["e"], nucleus=n, background=raw["offset"])
    assert rec3["background_source"] == "given"
    assert _r(f3["phi_h"], sample["phi_h"], n) >= 0.98


@pytest.mark.parametrize("kwargs, match", [
    ({"total_fraction": 1.5}, "total_fraction"),
    ({"total_fraction": 0.0}, "total_fraction"),
    ({"percentile": 20}, "percentile"),
    ({"outside": "zero"}, "outside"),
    ({"nucleus": np.zeros((128, 128), bool)}, "nucleus"),
    ({"nucleus": np.ones((12, 12), bool)}, "shape"),
    ({"background": (1e9, 0.0)}, "no signal above its background"),
    ({"mark_ratio": -1}, "mark_ratio"),
    ({"mark_ratio": "estimate"}, "needs l2 and pixel_size"),
])
def test_conversion_refuses_bad_input(sample, raw, kwargs, match):
    kwargs = dict({"nucleus": sample["nucleus"]}, **kwargs)
    with pytest.raises(MollifierInputError, match=match):
        intensities_to_fractions(raw["h"], raw["e"], **kwargs)
    with pytest.raises(MollifierInputError, match="shape"):
        intensities_to_fractions(raw["h"], raw["e"][:10])


def _interior(sample, margin=6):
    from scipy import ndimage as ndi

    return ndi.distance_transform_edt(sample["nucleus"]) > margin


@pytest.mark.slow
def test_the_table_redone_api(sample, raw):
    """Acceptance: raw intensities -> conversion (background outside the nucleus, mark ratio estimated) -> ROI
    drawn one kernel radius (6 px) inside the nuclear edge, as the docs say -> l2 in um^2: pattern r >= 0.95 with
    the truth, labelled relative; the same data with the box-unit default l2
    (1.04, read as um^2) warns of negative rates and marks them."""
    n = sample["nucleus"]
    l2, px = sample["params"]["l2"], sample["pixel_size"]
    fields, record = intensities_to_fractions(raw["h"], raw["e"], nucleus=n, mark_ratio="estimate", l2=l2,
                                              pixel_size=px)
    true_ratio = np.percentile(sample["phi_h"][n], 99) / np.percentile(sample["phi_e"][n], 99)
    assert record["mark_ratio"] == pytest.approx(true_ratio, rel=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MollifierWarning)  # a good run does not warn
        res = nm.infer_rates(fields, params=sample["params"], pixel_size=px, roi=_interior(sample), n_bootstrap=4)
    r = _r(res.rate, sample["rate"], _interior(sample))
    assert r >= 0.95, r
    assert res.provenance["rate_level"] == "relative"
    assert res.provenance["fractions"]["method"] == "intensities_to_fractions"
    assert res.provenance["negative_rate"]["warned"] is False
    assert res.roi_stats[0]["negative_fraction"] <= NEGATIVE_RATE_LIMIT

    with pytest.warns(MollifierWarning, match=r"negative in \d+% of the ROI.*coefficient units.*volume fractions"
                                               r".*background"):
        bad = nm.infer_rates(fields, params={"l2": 1.04}, pixel_size=px, roi=n, n_bootstrap=4)
    share = bad.roi_stats[0]["negative_fraction"]
    assert share > NEGATIVE_RATE_LIMIT
    negative = np.isfinite(bad.rate) & (bad.rate < 0)
    assert share == pytest.approx(negative[n].sum() / np.isfinite(bad.rate[n]).sum())
    assert np.isposinf(bad.uncertainty[negative]).all()  # marked, and the rate keeps its value
    assert np.isfinite(bad.uncertainty[np.isfinite(bad.rate) & (bad.rate >= 0)]).all()
    assert bad.provenance["negative_rate"]["warned"] is True


def test_a_wrong_mark_ratio_changes_the_pattern(sample, raw):
    """Why the ratio matters (and why the level is relative): the default ratio 1 is ~1.8x off on this sample."""
    n = sample["nucleus"]
    fields, _ = intensities_to_fractions(raw["h"], raw["e"], nucleus=n)
    res = nm.infer_rates(fields, params=sample["params"], pixel_size=sample["pixel_size"], roi=n, n_bootstrap=0,
                         radius=8)
    assert _r(res.rate, sample["rate"], _interior(sample)) < 0.9


def test_fractions_given_directly_are_labelled_as_given(sample):
    n = sample["nucleus"]
    res = nm.infer_rates({"phi_h": sample["phi_h"], "phi_e": sample["phi_e"]}, params=sample["params"],
                         pixel_size=sample["pixel_size"], roi=n, n_bootstrap=0, radius=8)
    assert res.provenance["rate_level"] == "as given"
    assert "fractions" not in res.provenance
    dens = nm.infer_rates({"density": sample["phi_h"] + sample["phi_e"]}, params=sample["params"],
                          pixel_size=sample["pixel_size"], roi=n, n_bootstrap=0, radius=8)
    assert dens.provenance["rate_level"] == "relative"


def test_non_chromatin_models_are_not_flagged():
    """The flags are for ratios of rates (chromatin models) only."""
    from napari_mollifier.simulate import heat_steady_state

    y, x = np.mgrid[0:64, 0:64] / 64
    rate = 1 + 0.5 * np.sin(2 * np.pi * x) * np.cos(2 * np.pi * y)
    st = heat_steady_state(rate, np.ones_like(rate) + 0.3 * np.cos(2 * np.pi * x), pixel_size=1 / 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MollifierWarning)
        res = nm.infer_rates({"u": st["u"], "m": st["m"]}, model="heat", pixel_size=1 / 64, radius=6,
                             n_bootstrap=0, boundary="periodic")
    assert "negative_rate" not in res.provenance


@pytest.mark.slow
def test_the_table_redone_cli(tmp_path, capsys):
    """The same path on the command line: a raw-intensity OME-TIFF made by the package, an ROI file,
    ``--intensities --nucleus FILE --mark-ratio estimate --param l2=...``: r >= 0.95, the provenance says relative, a run with
    the box-unit l2 prints a warning line, and ``mollifier rerun`` repeats the conversion."""
    import json

    from napari_mollifier.cli import main
    from napari_mollifier.examples import write_sample_nucleus
    from napari_mollifier.io import load_result, read_image

    files = write_sample_nucleus(tmp_path / "in", seed=3)
    l2 = files["params"]["l2"]
    out = tmp_path / "out"
    args = ["infer", files["image"], "--roi", files["roi"], "--intensities", "--nucleus", files["nucleus"],
            "--mark-ratio", "estimate",
            "--param", f"l2={l2}", "--n-bootstrap", "4", "--out", str(out), "-q"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.err
    res = load_result(out / "cell.ome.tif")
    truth = read_image(files["truth"]).to_numpy()
    roi = read_image(files["roi"]).to_numpy().squeeze() > 0
    assert _r(res.rate, np.squeeze(truth), roi) >= 0.95
    prov = json.loads((out / "cell.provenance.json").read_text())["provenance"]
    assert prov["rate_level"] == "relative" and prov["fractions"]["mark_ratio_source"].startswith("estimated")
    # issue 13: the relative level is labelled in the table, and the medians of the relative map are recorded
    import csv

    with open(out / "cell_rois.csv") as fh:
        row = next(csv.DictReader(fh))
    assert row["quantity"] == "relative rate (lambda / median)"
    assert prov["relative_map"]["medians"]["1"] == pytest.approx(float(row["median"]))
    assert res.relative and np.nanmedian(res.relative_rate[roi]) == pytest.approx(1.0, abs=0.02)
    assert main(["rerun", str(out / "cell.provenance.json"), "-q"]) == 0
    assert "identical" in capsys.readouterr().out

    assert main(["infer", files["image"], "--roi", files["roi"], "--intensities", "--param", "l2=1.04",
                 "--radius", "8", "--n-bootstrap", "0", "--out", str(tmp_path / "bad"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "mollifier: warning: cell: the rate lambda = Gamma_me / Gamma_ac is negative in" in err
    assert "coefficient units" in err

    assert main(["infer", files["image"], "--total-fraction", "0.3", "--out", str(tmp_path / "x")]) == 1
    assert "go with --intensities" in capsys.readouterr().err
    assert main(["infer", files["image"], "--intensities", "--mark-ratio", "estimate",
                 "--out", str(tmp_path / "y")]) == 1
    assert "needs l2" in capsys.readouterr().err
