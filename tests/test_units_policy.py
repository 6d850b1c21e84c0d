"""Units policy (issue 13): an image in um without l2 never gets the box-unit default silently -- API and CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_mollifier import MollifierInputError, MollifierWarning, cli, infer_rates
from napari_mollifier.simulate import synthetic_nucleus

tifffile = pytest.importorskip("tifffile")


@pytest.fixture(scope="module")
def sample():
    return synthetic_nucleus(shape=(192, 192), pixel_size=0.02, seed=0, noise=0.01)


def _scores(rate, truth, inside):
    ok = inside & np.isfinite(rate)
    return np.nanmedian(rate[ok]) / np.median(truth[inside]), np.corrcoef(rate[ok], truth[ok])[0, 1]


def test_api_estimates_l2_for_um_images_and_says_so(sample):
    fields = {"phi_h": sample["phi_h"], "phi_e": sample["phi_e"]}
    with pytest.warns(MollifierWarning, match="l2 was not given"):
        res = infer_rates(fields, pixel_size=0.02, unit="um", roi=sample["nucleus"], radius=8, n_bootstrap=0,
                          device="cpu")
    src = res.provenance["param_sources"]["l2"]
    assert src.startswith("estimated (") and "self-consistency" in src
    assert res.provenance["params"]["l2"] == pytest.approx(sample["params"]["l2"], rel=0.25)
    median, r = _scores(res.rate, sample["rate"], sample["nucleus"])
    assert abs(median - 1) <= 0.10 and r >= 0.8
    assert res.provenance["unit"] == "um"


def test_api_params_auto_and_given_and_default(sample):
    fields = {"phi_h": sample["phi_h"], "phi_e": sample["phi_e"]}
    kw = dict(pixel_size=0.02, roi=sample["nucleus"], radius=8, n_bootstrap=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", MollifierWarning)  # asked for: no warning
        auto = infer_rates(fields, params="auto", **kw)
        given = infer_rates(fields, params={"l2": 0.0234}, unit="um", **kw)
    # no unit: the box-unit default, as before (unit-less pixel sizes); on these um fields it rightly warns of
    # negative rates (napari_mollifier.fractions.flag_result)
    with pytest.warns(MollifierWarning, match="negative"):
        pixels = infer_rates(fields, **kw)
    assert auto.provenance["param_sources"]["l2"].startswith("estimated")
    assert auto.provenance["coefficient_estimate"]["method"] == "self-consistency"
    assert given.provenance["param_sources"] == {"l2": "given"}
    assert pixels.provenance["param_sources"] == {"l2": "default (box units)"}
    with pytest.warns(MollifierWarning, match="l2 = 1.04"):
        default = infer_rates(fields, params="default", unit="um", **kw)
    assert default.provenance["params"]["l2"] == 1.04
    assert default.provenance["param_sources"]["l2"] == "default (box units)"


def test_api_other_models_stop_naming_the_coefficients(sample):
    fields = {"phi_h": sample["phi_h"], "phi_e": sample["phi_e"]}
    with pytest.raises(MollifierInputError, match="l_int.*mobility|mobility.*l_int"):
        infer_rates(fields, model="chromatin-phase-field", pixel_size=0.02, unit="um", radius=6, n_bootstrap=0,
                    device="cpu")
    with pytest.raises(MollifierInputError, match="'auto' or 'default'"):
        infer_rates(fields, params="guess", pixel_size=0.02, unit="um", radius=6, n_bootstrap=0, device="cpu")


@pytest.fixture
def ome(tmp_path, sample):
    """The issue's case: a two-channel OME-TIFF at 0.02 um per pixel and a nucleus mask."""
    path = tmp_path / "cell.ome.tif"
    tifffile.imwrite(path, np.stack([sample["phi_h"], sample["phi_e"]]), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.02, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": 0.02, "PhysicalSizeYUnit": "µm"})
    roi = tmp_path / "mask.tif"
    tifffile.imwrite(roi, sample["nucleus"].astype(np.uint8))
    return path, roi


@pytest.mark.slow
def test_cli_without_param_estimates_l2_and_warns(tmp_path, ome, sample, capsys):
    path, roi = ome
    out = tmp_path / "out"
    code = cli.main(["infer", str(path), "--roi", str(roi), "--out", str(out), "--n-bootstrap", "0", "--quiet"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "warning" in stderr and "l2" in stderr and "--param l2" in stderr
    from napari_mollifier import load_result

    res = load_result(out / "cell.ome.tif")
    median, r = _scores(res.rate, sample["rate"], sample["nucleus"])
    assert abs(median - 1) <= 0.10 and r >= 0.8, (median, r)
    record = json.loads((out / "cell.provenance.json").read_text())["provenance"]
    assert record["param_sources"]["l2"].startswith("estimated")
    assert record["call"]["kwargs"]["params"]["l2"] == pytest.approx(record["params"]["l2"])  # rerun repeats it


def test_cli_params_default_warns_and_auto_is_quiet(tmp_path, ome, capsys):
    path, roi = ome
    fast = ["--roi", str(roi), "--n-bootstrap", "0", "--radius", "8", "--quiet"]
    assert cli.main(["infer", str(path), "--params", "default", "--out", str(tmp_path / "d"), *fast]) == 0
    _, stderr = capsys.readouterr()
    assert "l2 = 1.04" in stderr and "--params auto" in stderr
    assert cli.main(["infer", str(path), "--params", "auto", "--out", str(tmp_path / "a"), *fast]) == 0
    _, stderr = capsys.readouterr()
    assert "l2" not in stderr
    record = json.loads((tmp_path / "a" / "cell.provenance.json").read_text())["provenance"]
    assert record["param_sources"]["l2"].startswith("estimated")


def test_cli_help_describes_every_option_and_channel_error_names_the_flag(tmp_path, sample, capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("infer", "demo"):
        for action in sub[name]._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help text"
    path = tmp_path / "three.ome.tif"
    tifffile.imwrite(path, np.stack([sample["phi_h"], sample["phi_e"], sample["phi_e"]]), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.02, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": 0.02, "PhysicalSizeYUnit": "µm"})
    assert cli.main(["infer", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--channels 0,1" in err and " channels=" not in err
