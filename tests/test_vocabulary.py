"""One vocabulary (issue #14 item 4): ``pixel_size`` everywhere, the old names still work with a FutureWarning,
and the command line's choices and defaults are the library's constants.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

import napari_mollifier as nm
from napari_mollifier import cli
from napari_mollifier.errors import MollifierInputError


def _renamed(call_old, call_new):
    """``call_old()`` warns once (FutureWarning, pointing at this file) and gives what ``call_new()`` gives."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        old = call_old()
    future = [x for x in w if issubclass(x.category, FutureWarning)]
    assert len(future) == 1 and "deprecated" in str(future[0].message), [str(x.message) for x in w]
    assert future[0].filename == __file__, future[0].filename
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        new = call_new()
    return old, new


def _field(n=48, h=0.5):
    y, x = np.mgrid[0:n, 0:n] * h
    return x**2 + 3 * x * y


def test_derivatives_spacing_is_a_deprecated_pixel_size():
    f = _field()
    old, new = _renamed(
        lambda: nm.derivatives(f, 6, spacing=0.5, which=("xx", "xy")),
        lambda: nm.derivatives(f, 6, pixel_size=0.5, which=("xx", "xy")),
    )
    assert new["xx"][24, 24] == pytest.approx(2.0) and new["xy"][24, 24] == pytest.approx(3.0)
    assert all(np.array_equal(old[k], new[k]) for k in new)
    positional = nm.derivatives(f, 6, 0.5, which=("xx", "xy"))  # the third positional argument is still the pixel size
    assert np.array_equal(positional["xx"], new["xx"])
    with pytest.raises(MollifierInputError, match="pixel_size"):
        nm.derivatives(f, 6, pixel_size=0.25, spacing=0.5)  # two different values


def test_mollifier_layer_spacing_is_a_deprecated_pixel_size():
    torch = pytest.importorskip("torch")
    x = torch.as_tensor(_field(), dtype=torch.float64)[None, None]
    old, new = _renamed(
        lambda: nm.Mollifier(radius=6, spacing=0.5, which=("lap",)).to(torch.float64)(x),
        lambda: nm.Mollifier(radius=6, pixel_size=0.5, which=("lap",)).to(torch.float64)(x),
    )
    assert float(new["lap"][0, 0, 24, 24]) == pytest.approx(2.0)
    assert torch.equal(old["lap"], new["lap"])


def test_derivatives_tiled_spacing_is_a_deprecated_pixel_size():
    pytest.importorskip("dask")
    from napari_mollifier import tiling

    f = _field()
    old, new = _renamed(
        lambda: tiling.derivatives_tiled(f, 6, spacing=0.5, which=("xx", "xy"), tile=24),
        lambda: tiling.derivatives_tiled(f, 6, pixel_size=0.5, which=("xx", "xy"), tile=24),
    )
    assert new["xx"][24, 24] == pytest.approx(2.0) and new["xy"][24, 24] == pytest.approx(3.0)
    assert all(np.array_equal(old[k], new[k]) for k in new)
    positional = tiling.derivatives_tiled(f, 6, 0.5, which=("xx", "xy"), tile=24)  # the third positional argument
    assert np.array_equal(positional["xx"], new["xx"])
    with pytest.raises(MollifierInputError, match="pixel_size"):
        tiling.derivatives_tiled(f, 6, pixel_size=0.25, spacing=0.5)  # two different values


def test_domains_functions_take_pixel_size_in_nm():
    from napari_mollifier.domains import density_image
    from napari_mollifier.domains.synthetic import sample_image
    from napari_mollifier.io.smlm import render_localisations

    x = np.array([5.0, 15.0, 25.0, 26.0])
    y = np.array([5.0, 5.0, 25.0, 27.0])
    old, new = _renamed(lambda: density_image(x, y, pixel_size_nm=10.0), lambda: density_image(x, y, pixel_size=10.0))
    # 1 localisation per 10 x 10 nm pixel = 1e4 per um^2; the last pixel holds two
    assert new[0, 0] == pytest.approx(1e4) and new[2, 2] == pytest.approx(2e4) and np.array_equal(old, new)
    old, new = _renamed(
        lambda: render_localisations(x, y, pixel_size_nm=10.0), lambda: render_localisations(x, y, pixel_size=10.0)
    )
    assert new[0].sum() == 4 and new[0][2, 2] == 2 and np.array_equal(old[0], new[0])
    density = np.full((4, 4), 2e4)  # 2e4 per um^2 on 50 nm pixels: 50 per pixel on average
    old, new = _renamed(
        lambda: sample_image(density, pixel_size_nm=50.0, seed=1),
        lambda: sample_image(density, pixel_size=50.0, seed=1),
    )
    assert np.array_equal(old["x"], new["x"]) and 600 < new["x"].size < 1000 and new["x"].max() < 200
    with pytest.raises(TypeError, match="pixel_size"):
        density_image(x, y)


def test_analyse_localisations_takes_explicit_keywords():
    from napari_mollifier.domains import DEFAULTS, analyse_localisations
    from napari_mollifier.domains.synthetic import lattice_nucleus

    sig = inspect.signature(analyse_localisations)
    keyword_only = {n: p for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    assert {n: keyword_only[n].default for n in DEFAULTS} == DEFAULTS  # every default is the constant
    doc = analyse_localisations.__doc__
    assert all(f"\n    {n} :" in doc for n in keyword_only), [n for n in keyword_only if f"\n    {n} :" not in doc]

    s = lattice_nucleus(semi_axes_nm=(1200.0, 1000.0), seed=0)
    old, new = _renamed(
        lambda: analyse_localisations(s["x"], s["y"], subsample=2, pixel_size_nm=40.0),
        lambda: analyse_localisations(s["x"], s["y"], subsample=2, pixel_size=40.0),
    )
    assert new.pixel_size_nm == 40.0 and new.params["pixel_size"] == 40.0
    assert np.array_equal(old.labels, new.labels) and new.summary["n_domains"] == old.summary["n_domains"] > 10


def _sub(name):
    return next(a for a in cli.build_parser()._actions if a.dest == "command").choices[name]


def _options(name):
    return {opt: a for a in _sub(name)._actions for opt in a.option_strings}


def test_cli_choices_and_defaults_are_the_library_constants():
    from napari_mollifier.app.jobs import OUTPUT_FORMATS
    from napari_mollifier.coefficients import COEFFICIENT_MODES
    from napari_mollifier.io.smlm import DEFAULT_RENDER_METHOD, DEFAULT_RENDER_PIXEL_SIZE, RENDER_METHODS
    from napari_mollifier.models import MODELS
    from napari_mollifier.mollifier import BOUNDARIES
    from napari_mollifier.solve import METHODS, RADIUS_RULES, ROI_MODES, UNCERTAINTY_METHODS

    opts = _options("infer")
    assert tuple(opts["--method"].choices) == METHODS
    assert tuple(opts["--uncertainty"].choices) == UNCERTAINTY_METHODS
    assert tuple(opts["--radius-rule"].choices) == RADIUS_RULES
    assert tuple(opts["--roi-mode"].choices) == ROI_MODES
    assert sorted(opts["--model"].choices) == sorted(MODELS)
    assert tuple(opts["--boundary"].choices) == ("mask", *BOUNDARIES)
    assert tuple(opts["--params"].choices) == COEFFICIENT_MODES
    assert tuple(opts["--smlm-render"].choices) == RENDER_METHODS
    assert tuple(opts["--format"].choices) == tuple(OUTPUT_FORMATS)
    assert opts["--smlm-render"].default == DEFAULT_RENDER_METHOD
    assert opts["--smlm-pixel"].default == DEFAULT_RENDER_PIXEL_SIZE
    defaults = inspect.signature(nm.infer_rates).parameters
    for flag, arg in [
        ("--model", "model"),
        ("--method", "method"),
        ("--radius", "radius"),
        ("--seed", "seed"),
        ("--uncertainty", "uncertainty"),
        ("--n-bootstrap", "n_bootstrap"),
        ("--kernel", "kernel"),
        ("--radius-rule", "radius_rule"),
        ("--roi-mode", "roi_mode"),
        ("--boundary", "boundary"),
        ("--iterations", "iterations"),
        ("--device", "device"),
    ]:
        assert opts[flag].default == defaults[arg].default, flag


def test_cli_domains_choices_and_defaults_are_the_library_constants():
    from napari_mollifier.domains import DEFAULTS
    from napari_mollifier.domains.pipeline import THRESHOLD_METHODS

    opts = _options("domains")
    for flag, key in [
        ("--pixel-size-nm", "pixel_size"),
        ("--threshold", "threshold"),
        ("--eps", "eps_nm"),
        ("--percentile", "percentile"),
        ("--min-samples", "min_samples"),
        ("--seed", "seed"),
        ("--min-points", "min_points"),
        ("--subsample", "subsample"),
        ("--diffusivity", "diffusivity"),
    ]:
        assert opts[flag].default == DEFAULTS[key], flag
    assert all(cli._threshold(t) == t for t in THRESHOLD_METHODS)


def test_cli_pixel_size_flags_name_their_unit():
    parser = cli.build_parser()
    common = ["infer", "x.tif"]
    assert parser.parse_args([*common, "--pixel-size-um", "0.02"]).pixel_size == [0.02]
    assert parser.parse_args([*common, "--pixel-size", "0.02"]).pixel_size == [0.02]  # the old name, same option
    args = parser.parse_args(["domains", "locs.csv", "--pixel-size-nm", "10"])
    assert (args.pixel_size, args.pixel_size_old) == (10.0, None)


def test_cli_domains_old_pixel_size_flag_still_works_with_a_warning(tmp_path, capsys):
    from napari_mollifier.domains.synthetic import lattice_nucleus

    s = lattice_nucleus(semi_axes_nm=(1200.0, 1000.0), seed=0)
    table = tmp_path / "locs.csv"
    np.savetxt(table, np.column_stack([s["x"], s["y"]]), delimiter=",", header="x [nm],y [nm]", comments="")
    common = [str(table), "--subsample", "2", "--quiet"]
    assert cli.main(["domains", *common, "--pixel-size", "40", "--out", str(tmp_path / "old")]) == 0
    err = capsys.readouterr().err
    assert "--pixel-size is deprecated" in err and "--pixel-size-nm" in err
    assert cli.main(["domains", *common, "--pixel-size-nm", "40", "--out", str(tmp_path / "new")]) == 0
    assert "deprecated" not in capsys.readouterr().err
    import tifffile

    old = tifffile.imread(tmp_path / "old" / "locs_labels.ome.tif")
    new = tifffile.imread(tmp_path / "new" / "locs_labels.ome.tif")
    assert np.array_equal(old, new) and new.shape[-1] == pytest.approx((s["x"].max() - s["x"].min() + 1000) / 40, abs=3)
