"""Tiled runs (dask map_overlap with a halo) equal untiled runs; memory estimates and automatic tiling."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dask.array")

import napari_mollifier as nm  # noqa: E402
from napari_mollifier import tiling  # noqa: E402
from napari_mollifier.errors import MollifierInputError  # noqa: E402
from napari_mollifier.simulate import smooth_random_field  # noqa: E402

PARAMS = {"l2": 0.0234}


def _fields(n: int, seed: int = 0, holes: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    phi_e = smooth_random_field((n, n), 6, 0.2, 0.5, seed=seed + 1) + 0.005 * rng.standard_normal((n, n))
    phi_h = smooth_random_field((n, n), 6, 0.1, 0.4, seed=seed + 2)
    if holes:
        phi_e[n // 4: n // 4 + 9, n // 3: n // 3 + 15] = np.nan  # missing pixels inside the image
    return {"phi_h": phi_h, "phi_e": phi_e}


def _max_diff(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert np.array_equal(np.isnan(a), np.isnan(b)), "NaN patterns differ"
    both = np.isfinite(a)
    return float(np.max(np.abs(a[both] - b[both]))) if both.any() else 0.0


@pytest.fixture(scope="module")
def big():
    return _fields(2048)


def test_derivatives_2048_tiled_equals_untiled(big):
    keys = ("u", "x", "lap")
    ref = nm.derivatives(big["phi_e"], 4, pixel_size=0.02, which=keys)
    tiled = tiling.derivatives_tiled(big["phi_e"], 4, pixel_size=0.02, which=keys, tile=1024)
    assert tiled["lap"].shape == (2048, 2048)
    for k in keys:
        assert _max_diff(ref[k], tiled[k]) <= 1e-5, k


@pytest.mark.slow
def test_infer_rates_2048_tiled_equals_untiled(big):
    # the solver's defaults (boundary="mask": exact edges) with a fixed radius and no bootstrap
    kwargs = dict(params=PARAMS, pixel_size=0.02, radius=3, n_bootstrap=0, method="direct", device="cpu")
    ref = nm.infer_rates(big, **kwargs)
    ticks = []
    tiled = tiling.infer_tiled(big, tile=1024, progress=lambda s, t, i: ticks.append((s, t)), **kwargs)
    assert ticks[-1] == (4, 4)
    assert _max_diff(ref.rate, tiled.rate) <= 1e-5
    assert _max_diff(ref.residual, tiled.residual) <= 1e-5
    for k in ref.fields:
        assert _max_diff(ref.fields[k], tiled.fields[k]) <= 1e-5
    assert tiled.provenance["input_hashes"] == ref.provenance["input_hashes"]
    assert tiled.provenance["tiling"]["tiles"] == 4 and tiled.provenance["tiling"]["halo"] == 4
    assert tiled.roi_stats[0]["median"] == pytest.approx(ref.roi_stats[0]["median"], abs=1e-9)


@pytest.mark.parametrize("boundary", ["periodic", "zeros", "replicate"])
def test_derivatives_tiled_boundaries(boundary):
    f = _fields(150)["phi_h"]
    ref = nm.derivatives(f, 5, pixel_size=0.5, boundary=boundary, which=("u", "xy", "lap"))
    tiled = tiling.derivatives_tiled(f, 5, pixel_size=0.5, boundary=boundary, which=("u", "xy", "lap"), tile=40)
    for k in ref:
        assert _max_diff(ref[k], tiled[k]) <= 1e-9


def test_derivatives_tiled_mask_mode():
    f = _fields(150, holes=True)["phi_e"]
    mask = np.isfinite(f)
    ref = nm.derivatives(f, 5, mask=mask, which=("u", "lap"))
    tiled = tiling.derivatives_tiled(f, 5, mask=mask, which=("u", "lap"), tile=48)
    for k in ref:
        assert _max_diff(ref[k], tiled[k]) <= 1e-8


@pytest.mark.parametrize("roi_mode", ["image", "isolate"])
def test_infer_tiled_mask_mode_with_labels_and_holes(roi_mode):
    fields = _fields(160, seed=3, holes=True)
    labels = np.zeros((160, 160), np.int64)
    labels[10:120, 15:150] = 1
    labels[125:155, 5:90] = 2
    kwargs = dict(params=PARAMS, pixel_size=0.02, radius=4, n_bootstrap=0, device="cpu", roi=labels,
                  roi_mode=roi_mode)
    ref = nm.infer_rates(fields, **kwargs)
    tiled = tiling.infer_tiled(fields, tile=56, **kwargs)
    assert _max_diff(ref.rate, tiled.rate) <= 1e-8
    assert _max_diff(ref.residual, tiled.residual) <= 1e-8
    assert np.array_equal(ref.labels, tiled.labels)
    assert [s["label"] for s in tiled.roi_stats] == [1, 2]
    for a, b in zip(ref.roi_stats, tiled.roi_stats, strict=True):
        assert a["median"] == pytest.approx(b["median"], abs=1e-9) and a["n_pixels"] == b["n_pixels"]


def test_propagated_uncertainty_equals_the_untiled_one():
    """The default uncertainty is propagated from a noise model estimated once on the whole image: tile-local."""
    fields = _fields(128, seed=5)
    kwargs = dict(params=PARAMS, pixel_size=0.02, radius=4, device="cpu", boundary="reflect")
    ref = nm.infer_rates(fields, **kwargs)
    tiled = tiling.infer_tiled(fields, tile=64, **kwargs)
    assert _max_diff(ref.rate, tiled.rate) <= 1e-8
    both = np.isfinite(ref.uncertainty) & np.isfinite(tiled.uncertainty)
    assert both[ref.rate >= 0].mean() > 0.95
    np.testing.assert_allclose(tiled.uncertainty[both], ref.uncertainty[both], rtol=1e-6)
    assert tiled.provenance["noise_model"] == ref.provenance["noise_model"]


@pytest.mark.slow
def test_uncertainty_is_a_bootstrap_per_tile():
    fields = _fields(128, seed=5)
    kwargs = dict(params=PARAMS, pixel_size=0.02, radius=4, n_bootstrap=4, device="cpu", boundary="reflect",
                  uncertainty="bootstrap")
    ref = nm.infer_rates(fields, **kwargs)
    tiled = tiling.infer_tiled(fields, tile=64, **kwargs)
    assert _max_diff(ref.rate, tiled.rate) <= 1e-8  # the rate is the same
    # random fields are no steady state: ~18 % of the rate is negative, and flagged with uncertainty +inf
    # (napari_mollifier.fractions.flag_result); compare where the rate is not negative
    finite = np.isfinite(ref.uncertainty) & np.isfinite(tiled.uncertainty)
    assert finite[ref.rate >= 0].mean() > 0.95
    ratio = np.median(tiled.uncertainty[finite]) / np.median(ref.uncertainty[finite])
    assert 0.5 < ratio < 2.0  # same noise level, other draws
    assert "per tile" in tiled.provenance["tiling"]["uncertainty"]
    again = tiling.infer_tiled(fields, tile=64, **kwargs)
    assert np.array_equal(again.uncertainty, tiled.uncertainty, equal_nan=True)  # seeded per tile


def test_tiled_auto_radius_is_chosen_once():
    fields = _fields(96, seed=7)
    res = tiling.infer_tiled(fields, tile=48, params=PARAMS, pixel_size=0.02, radius="auto", n_bootstrap=0,
                             device="cpu", boundary="reflect")
    assert res.provenance["radius"] == "auto"
    assert res.radius == res.provenance["radius_choice"]["tiled"]["radius"] >= 3
    with pytest.raises(MollifierInputError, match="method='direct' only"):
        tiling.infer_tiled(fields, tile=48, method="network", radius=4)


def test_memory_estimate():
    small = tiling.estimate_memory((512, 512), 6)
    large = tiling.estimate_memory((1024, 1024), 6)
    assert large["bytes"] == pytest.approx(4 * small["bytes"], rel=0.01)
    assert 1000 < small["bytes_per_pixel"] < 3000  # measured ~1.8 kB per pixel for this case
    assert tiling.estimate_memory((512, 512), 6, boundary="reflect")["bytes"] < small["bytes"]
    assert tiling.estimate_memory((512, 512), 6, device="cuda")["bytes"] == pytest.approx(small["bytes"] / 2)
    assert tiling.estimate_memory((64, 64, 64), 4, model=None, which=("lap",))["bytes"] > 0
    assert tiling.available_memory("cpu") > 0


def test_plan_tiles():
    shape = (2048, 2048)
    est = tiling.estimate_memory(shape, 6)["bytes"]
    assert tiling.plan_tiles(shape, 6, memory_limit=2 * est).tile is None
    plan = tiling.plan_tiles(shape, 6, memory_limit=est // 8)
    assert plan.tile is not None and plan.tile % 64 == 0 and 64 <= plan.tile < 2048
    assert tiling.estimate_memory((plan.tile + 2 * plan.halo,) * 2, 6)["bytes"] <= est // 8
    assert "tiled" in plan.reason
    with pytest.raises(MollifierInputError, match=r"needs ~.*radius 6 px.*smaller radius"):
        tiling.plan_tiles(shape, 6, memory_limit=10_000)
    assert tiling.plan_tiles(shape, 6, tile=512).tile == 512
    assert tiling.plan_tiles(shape, 6, tile=None).tile is None


@pytest.mark.slow
def test_files_tile_automatically_and_rerun_exactly(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    from napari_mollifier.app.jobs import infer_files
    from napari_mollifier.io import write_ome_tiff

    fields = _fields(160, seed=11)
    path = write_ome_tiff(tmp_path / "big.ome.tif", fields, 0.02)
    assert tifffile.imread(path).shape == (2, 160, 160)
    limit = tiling.estimate_memory((96, 96), 4)["bytes"]  # room for ~96 px tiles only
    res = infer_files(path, memory_limit=limit, params=PARAMS, radius=4, n_bootstrap=2, device="cpu")
    call = res.provenance["call"]
    assert call["function"].endswith("infer_tiled") and call["kwargs"]["tile"] == 64
    assert "tiling" in res.provenance
    untiled = nm.infer_rates(fields, params=PARAMS, pixel_size=0.02, radius=4, n_bootstrap=0, device="cpu")
    assert _max_diff(untiled.rate, res.rate) <= 1e-8
    again = nm.rerun(res)
    assert np.array_equal(again.rate, res.rate, equal_nan=True)
    assert np.array_equal(again.uncertainty, res.uncertainty, equal_nan=True)


def test_infer_auto_decides():
    fields = _fields(96, seed=13)
    kwargs = dict(params=PARAMS, pixel_size=0.02, radius=4, n_bootstrap=0, device="cpu")
    whole = tiling.infer_auto(fields, **kwargs)
    assert "tiling" not in whole.provenance  # fits in memory: untiled
    forced = tiling.infer_auto(fields, tile=48, **kwargs)
    assert forced.provenance["tiling"]["tiles"] == 4
    assert _max_diff(whole.rate, forced.rate) <= 1e-8
