"""Localisations -> heterochromatin domains -> geometric rates (napari_mollifier.domains), against known truth."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mollifier.domains import (
    analyse_localisations,
    analyse_table,
    geometric_rates,
    lognormal_fit,
    voronoi_areas,
    voronoi_density,
)
from napari_mollifier.domains.synthetic import lattice_nucleus, sample_image
from napari_mollifier.errors import MollifierInputError


@pytest.fixture(scope="module")
def lattice():
    s = lattice_nucleus(seed=1)
    return s, analyse_localisations(s["x"], s["y"], subsample=1)


def test_voronoi_areas_equal_scipy_voronoi_polygons():
    from scipy.spatial import Voronoi

    p = np.random.default_rng(3).uniform(0, 1000, (2000, 2))
    area = voronoi_areas(p[:, 0], p[:, 1])
    vor = Voronoi(p)
    ref = np.full(len(p), np.nan)
    for i, r in enumerate(vor.point_region):
        reg = vor.regions[r]
        if reg and -1 not in reg:
            q = vor.vertices[reg]
            ref[i] = 0.5 * abs(q[:, 0] @ np.roll(q[:, 1], 1) - q[:, 1] @ np.roll(q[:, 0], 1))
    assert np.array_equal(np.isfinite(area), np.isfinite(ref))
    ok = np.isfinite(ref)
    assert ok.sum() > 1900
    np.testing.assert_allclose(area[ok], ref[ok], rtol=1e-8)


def test_voronoi_duplicates_and_hull_are_nan():
    p = np.random.default_rng(0).uniform(0, 100, (200, 2))
    p = np.vstack([p, p[:1]])
    area = voronoi_areas(p[:, 0], p[:, 1])
    assert np.isnan(area[[0, -1]]).any()
    assert np.isfinite(area).sum() > 150


def test_voronoi_density_against_known_density(lattice):
    s, _ = lattice
    x, y = s["x"], s["y"]
    rho, area = voronoi_density(x, y, return_areas=True)
    truth = s["truth_density"](y, x)
    from scipy.spatial import cKDTree

    dist, k = cKDTree(s["centres"]).query(np.column_stack([y, x]))
    r = s["radii"][k]
    a, b = s["semi_axes_nm"]
    ey, ex = y - s["centre_nm"][0], x - s["centre_nm"][1]
    deep = (ex / (a - 300)) ** 2 + (ey / (b - 300)) ** 2 <= 1
    core = deep & (dist < r - 30) & np.isfinite(area)
    eu = deep & (dist > r + 40) & np.isfinite(area)
    # count / sum of cell areas is an unbiased local density: within 3 % of the truth in both phases
    assert core.sum() / area[core].sum() * 1e6 == pytest.approx(12000, rel=0.03)
    assert eu.sum() / area[eu].sum() * 1e6 == pytest.approx(3000, rel=0.03)
    assert np.all(truth[core] == 12000) and np.all(truth[eu] == 3000)
    # the per-localisation 1/A separates the phases: its medians are 1.0-1.2x the true densities
    assert 1.0 < np.median(rho[core]) / 12000 < 1.2
    assert 1.0 < np.median(rho[eu]) / 3000 < 1.2


def test_recovers_lattice_domains_within_5_percent(lattice):
    s, res = lattice
    sm = res.summary
    assert sm["n_domains"] == pytest.approx(s["n_domains"], rel=0.05)
    assert sm["mean_diameter_nm"] / 2 == pytest.approx(80.0, rel=0.05)
    assert np.median(res.table["spacing_nm"]) == pytest.approx(300.0, rel=0.05)
    assert sm["mean_spacing_nm"] == pytest.approx(300.0, rel=0.05)
    assert sm["n_lad_clusters"] >= 1
    assert sm["lad_thickness_nm"] == pytest.approx(s["lad_thickness_nm"], rel=0.1)
    # every true centre has a recovered centre within 15 nm
    from scipy.spatial import cKDTree

    d, _ = cKDTree(np.column_stack([res.table["centre_y_nm"], res.table["centre_x_nm"]])).query(s["centres"])
    assert np.mean(d < 15) > 0.95
    # the lab's closed form on the recovered geometry equals it on the true geometry (R = 80, d = 300 nm)
    truth = geometric_rates(0.08, 0.3, 1.0)
    assert np.median(res.table["lambda"]) == pytest.approx(float(truth["lambda"]), rel=0.1)
    assert np.median(res.table["gamma_ac"]) == pytest.approx(float(truth["gamma_ac"]), rel=0.1)
    # labels image: one label per table row, Gamma maps constant per domain
    assert set(np.unique(res.labels)) - {0} == set(res.table["domain"].tolist())
    i = int(res.table["domain"][0])
    vals = res.maps["lambda"][res.labels == i]
    assert np.all(vals == res.table["lambda"][0])
    assert np.all(np.isnan(res.maps["lambda"][res.labels == 0]))


def test_jittered_subsampled_otsu_lattice():
    s = lattice_nucleus(seed=2, jitter_nm=12.0, radius_nm=70.0, spacing_nm=320.0, rho_e=8000, rho_h=40000,
                        rho_lad=40000, semi_axes_nm=(2800.0, 2400.0))
    res = analyse_localisations(s["x"], s["y"], subsample=4, threshold="otsu", seed=5)
    assert res.summary["n_localisations_analysed"] == pytest.approx(s["x"].size / 4, rel=0.01)
    assert res.summary["n_domains"] == pytest.approx(s["n_domains"], rel=0.05)
    assert res.summary["mean_diameter_nm"] / 2 == pytest.approx(70.0, rel=0.05)
    assert np.median(res.table["spacing_nm"]) == pytest.approx(320.0, rel=0.05)
    assert res.summary["threshold_method"].startswith("otsu")
    assert 8000 / 4 < res.summary["density_threshold_per_um2"] < 40000 / 4 * 1.5


def test_closed_form_known_geometry():
    R = np.array([0.05, 0.1, 0.1, 0.3, 0.2])
    d = np.array([0.2, 0.3, 0.1, 0.2, 0.5])
    out = geometric_rates(R, d, diffusivity=2.0)
    np.testing.assert_allclose(out["gamma_ac"], 2.0 / d**2)
    expect_me = (2.0 / 0.09) / ((0.3 / 0.1) ** 2 - 1)  # 2.777...
    assert out["gamma_me"][1] == pytest.approx(expect_me, rel=1e-12)
    assert out["lambda"][1] == pytest.approx(0.01 / 0.08, rel=1e-12)
    assert out["lambda"][0] == pytest.approx(0.0025 / (0.04 - 0.0025), rel=1e-12)
    assert np.isnan(out["gamma_me"][2]) and np.isnan(out["lambda"][3])  # d <= R: undefined
    np.testing.assert_allclose(out["gamma_me"], out["gamma_ac"] * out["lambda"])
    with pytest.raises(MollifierInputError, match="diffusivity"):
        geometric_rates(R, d, diffusivity=0.0)


def test_lognormal_fit_recovers_parameters():
    v = np.random.default_rng(0).lognormal(mean=-1.3, sigma=0.4, size=20000)
    fit = lognormal_fit(np.concatenate([v, [np.nan, -1.0, 0.0]]))
    assert fit["mu"] == pytest.approx(-1.3, abs=0.01)
    assert fit["sigma"] == pytest.approx(0.4, rel=0.02)
    assert fit["mean"] == pytest.approx(np.exp(-1.3 + 0.08), rel=0.01)
    assert fit["n"] == 20000


def test_segmentation_fields_ready_for_infer_rates(lattice):
    import napari_mollifier as nm

    _, res = lattice
    f = res.fields
    np.testing.assert_allclose(f["phi_h"] + f["phi_e"] + f["phi_w"], 1.0, atol=1e-12)
    inside_dom = res.labels > 0
    eu = res.nucleus & ~inside_dom & ~res.lad_mask
    assert np.median(f["phi_h"][inside_dom]) > 3 * np.median(f["phi_h"][eu])
    assert np.all(f["phi_e"] > 0)
    out = nm.infer_rates({"phi_h": f["phi_h"][::2, ::2], "phi_e": f["phi_e"][::2, ::2]}, model="chromatin-balance",
                         params={"l2": 0.0234}, pixel_size=2 * res.pixel_size_nm / 1000, radius=8, n_bootstrap=0,
                         roi=res.nucleus[::2, ::2])
    vals = out.rate[res.nucleus[::2, ::2]]
    assert np.mean(np.isfinite(vals)) > 0.9


def test_simulate_nucleus_sampled_localisations():
    from napari_mollifier.simulate import synthetic_nucleus

    s = synthetic_nucleus(shape=(256, 256), pixel_size=0.02, seed=0)
    loc = sample_image(6000 * (1 - s["phi_w"]) * s["nucleus"], 20.0, seed=0)
    res = analyse_localisations(loc["x"], loc["y"], subsample=1, pixel_size=20, margin_nm=0, threshold="otsu",
                                min_points=10)
    oy, ox = (int(round(o / 20)) for o in res.origin_nm)
    seg = np.zeros(s["nucleus"].shape, bool)
    nuc = np.zeros_like(seg)
    h, w = res.labels.shape
    seg[oy:oy + h, ox:ox + w] = ((res.labels > 0) | res.lad_mask)[:256 - oy, :256 - ox]
    nuc[oy:oy + h, ox:ox + w] = res.nucleus[:256 - oy, :256 - ox]
    truth = (s["phi_w"] < 0.45) & s["nucleus"]

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert dice(nuc, s["nucleus"]) > 0.97
    assert dice(seg, truth) > 0.6
    assert res.summary["n_domains"] > 50 and res.summary["n_lad_clusters"] >= 1


def test_bad_tables_refused(tmp_path):
    p = tmp_path / "noy.csv"
    p.write_text("x [nm],frame\n1,2\n3,4\n")
    with pytest.raises(MollifierInputError, match="missing column"):
        analyse_table(p)
    q = tmp_path / "text.csv"
    q.write_text("x,y\n1,2\nabc,4\n")
    with pytest.raises(MollifierInputError, match="text"):
        analyse_table(q)
    with pytest.raises(MollifierInputError, match="numeric"):
        analyse_localisations(np.array(["1", "2"] * 10, dtype=object), np.arange(20.0))
    with pytest.raises(MollifierInputError, match="NaN"):
        analyse_localisations(np.r_[np.arange(20.0), np.nan], np.arange(21.0))
    with pytest.raises(TypeError, match="eps"):  # keyword-only parameters: a misspelt one is not ignored
        analyse_localisations(np.arange(20.0), np.arange(20.0) ** 2, eps=3)
    with pytest.raises(MollifierInputError, match="threshold"):
        rng = np.random.default_rng(0)
        analyse_localisations(rng.uniform(0, 1e3, 500), rng.uniform(0, 1e3, 500), subsample=1, threshold="max")


def test_save_writes_complete_files(lattice, tmp_path):
    import csv
    import json

    import tifffile

    _, res = lattice
    paths = res.save(tmp_path, "cell")
    rows = list(csv.DictReader(open(paths["table"])))  # noqa: SIM115 - closed explicitly
    assert len(rows) == res.n_domains
    np.testing.assert_allclose([float(r["radius_nm"]) for r in rows], res.table["radius_nm"], rtol=1e-5)
    summary = json.loads(paths["summary"].read_text())["summary"]
    assert summary["n_domains"] == res.n_domains
    lab = tifffile.imread(paths["labels"])
    assert np.array_equal(lab[0], res.labels)
    fields = tifffile.imread(paths["fields"])
    np.testing.assert_allclose(fields[0], res.fields["phi_h"])
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_cli_domains(lattice, tmp_path, capsys):
    from napari_mollifier.cli import main

    s, _ = lattice
    table = tmp_path / "locs.csv"
    np.savetxt(table, np.column_stack([s["x"], s["y"]]), delimiter=",", header="x [nm],y [nm]", comments="")
    assert main(["domains", str(table), "--out", str(tmp_path / "out"), "--subsample", "1"]) == 0
    out = capsys.readouterr().out
    assert "locs.csv: " in out and " domains, mean diameter " in out
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["locs_domains.csv", "locs_fields.ome.tif", "locs_gamma.ome.tif", "locs_labels.ome.tif",
                     "locs_summary.json"]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    assert main(["domains", str(bad), "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("mollifier: error:") and "missing column" in err[0]
    assert err[1] == "mollifier: 1 of 1 table(s) failed: bad.csv"
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voronoi_areas_scale_and_translation(seed):
    """Cell areas scale as s^2 and do not change under a large translation (coordinates are centred first)."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 500, 400), rng.uniform(0, 300, 400)
    a = voronoi_areas(x, y)
    s, off = rng.uniform(0.5, 3.0), rng.uniform(1e5, 1e6)
    b = voronoi_areas(s * x + off, s * y - off)
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    ok = np.isfinite(a)
    np.testing.assert_allclose(b[ok], s**2 * a[ok], rtol=1e-6)
