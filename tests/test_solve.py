"""infer_rates against ground truth: reference FE states, forward simulations with known rates."""

import numpy as np
import pytest

import napari_mollifier as nm
from napari_mollifier import simulate as S
from napari_mollifier.calibrate import calibrate
from napari_mollifier.errors import MollifierInputError, RunCancelled


def _reference(shared_data, lam, noise=0.0, seed=0):
    d = np.load(shared_data / "chromatin_steady_states.npz")
    w = d[f"lam{lam}_uniform__phi_w"][:-1, :-1].astype(float)  # drop the duplicated periodic node
    pd = d[f"lam{lam}_uniform__phi_d"][:-1, :-1].astype(float)
    rng = np.random.default_rng(seed)
    w = w + noise * rng.standard_normal(w.shape)
    pd = pd + noise * rng.standard_normal(pd.shape)
    return {"phi_h": (1 - w + pd) / 2, "phi_e": (1 - w - pd) / 2}, float(d[f"lam{lam}_uniform__G_me"][0, 0])


@pytest.mark.parametrize("lam", ["0.5", "1.0", "1.5"])
def test_reference_uniform_cases(shared_data, lam):
    fields, truth = _reference(shared_data, lam)
    res = nm.infer_rates(fields, pixel_size=0.05, boundary="periodic", n_bootstrap=0)
    rate = res.rate[np.isfinite(res.rate)]
    assert abs(rate.mean() / truth - 1) < 0.005
    assert rate.std() / rate.mean() <= 0.02
    noisy, _ = _reference(shared_data, lam, noise=0.01)  # 1 % of the volume-fraction range, on phi_w and phi_d
    res_n = nm.infer_rates(noisy, pixel_size=0.05, boundary="periodic", n_bootstrap=0)
    rate_n = res_n.rate[np.isfinite(res_n.rate)]
    assert abs(rate_n.mean() / truth - 1) < 0.01
    assert rate_n.std() / rate_n.mean() <= 0.05
    pf = nm.infer_rates(fields, model="chromatin-phase-field", pixel_size=0.05, boundary="periodic", n_bootstrap=0)
    assert abs(np.nanmean(pf.rate) / rate.mean() - 1) < 0.02


def test_calibrate_reproduces_l2(shared_data):
    for lam in ("0.5", "1.0", "1.5"):
        fields, truth = _reference(shared_data, lam)
        out = calibrate(fields, truth, "chromatin-balance", pixel_size=0.05, radius=8, boundary="periodic")
        assert out["fitted"]["l2"] == pytest.approx(1.04, abs=0.02)


def test_calibrate_phase_field_on_reference(shared_data):
    """The FE states are the phase-field model with the prototype's a = 1 (double well kept), not a = 2.08."""
    for lam in ("0.5", "1.5"):
        fields, truth = _reference(shared_data, lam)
        out = calibrate(fields, truth, "chromatin-phase-field", pixel_size=0.05, radius=8, boundary="periodic")
        assert out["fitted"]["a"] == pytest.approx(1.0, abs=0.02)
        assert out["relative_residual"] < 0.02


def test_calibrate_on_simulation_recovers_coefficient():
    w = S.smooth_random_field((96, 96), 5, 0.2, 0.7, seed=3)
    st = S.chromatin_steady_state(w, 0.8, pixel_size=0.05, params={"l2": 0.7})
    out = calibrate({"phi_h": st["phi_h"], "phi_e": st["phi_e"]}, 0.8, pixel_size=0.05, radius=6,
                    boundary="periodic")
    assert out["fitted"]["l2"] == pytest.approx(0.7, rel=0.01)


def _heterogeneous(shape=(160, 160), noise=0.01, seed=1):
    lam = S.smooth_random_field(shape, 40, 0.5, 1.5, seed=seed)
    w = S.smooth_random_field(shape, 6, 0.2, 0.7, seed=seed + 1)
    st = S.chromatin_steady_state(w, lam, pixel_size=0.05)
    rng = np.random.default_rng(seed + 2)
    wn = w + noise * rng.standard_normal(shape)
    pdn = st["phi_d"] + noise * rng.standard_normal(shape)
    return {"phi_h": (1 - wn + pdn) / 2, "phi_e": (1 - wn - pdn) / 2}, lam


def test_heterogeneous_rate_correlation_and_coverage():
    fields, lam = _heterogeneous()
    yy, xx = np.mgrid[0:160, 0:160]
    roi = (yy - 80) ** 2 / 60**2 + (xx - 75) ** 2 / 70**2 < 1
    res = nm.infer_rates(fields, pixel_size=0.05, roi=roi, boundary="periodic", n_bootstrap=40)
    inside = roi & np.isfinite(res.rate)
    assert inside.sum() > 0.99 * roi.sum()
    assert np.isnan(res.rate[~roi]).all() and np.isnan(res.uncertainty[~roi]).all()
    r = np.corrcoef(res.rate[inside], lam[inside])[0, 1]
    assert r >= 0.9, r
    coverage = np.mean(np.abs(res.rate - lam)[inside] <= 2 * res.uncertainty[inside])
    assert 0.85 <= coverage <= 0.99, coverage


def test_uniform_noisy_coverage(shared_data):
    fields, truth = _reference(shared_data, "1.0", noise=0.01, seed=5)
    res = nm.infer_rates(fields, pixel_size=0.05, boundary="periodic", n_bootstrap=40)
    ok = np.isfinite(res.uncertainty)
    coverage = np.mean(np.abs(res.rate - truth)[ok] <= 2 * res.uncertainty[ok])
    assert 0.85 <= coverage <= 0.99, coverage


@pytest.mark.slow
def test_heat_varying_diffusivity():
    n, h = 128, 1.0 / 128
    y, x = np.mgrid[0:n, 0:n] * h
    lam = S.smooth_random_field((n, n), 32, 0.5, 1.5, seed=4)
    u = -(x - 0.5) ** 2 - (y - 0.5) ** 2 + 0.05 * np.sin(2 * np.pi * x)  # lap(u) < 0 everywhere
    lap = -4 - 0.05 * (2 * np.pi) ** 2 * np.sin(2 * np.pi * x)
    m = -lam * lap  # 0 = lambda lap(u) + m
    rng = np.random.default_rng(0)
    un = u + 0.01 * np.abs(u).max() * rng.standard_normal(u.shape) * 0.01
    mn = m + 0.01 * np.abs(m).max() * rng.standard_normal(m.shape)
    res = nm.infer_rates({"u": un, "m": mn}, model="heat", pixel_size=h, n_bootstrap=0)
    ok = np.isfinite(res.rate)
    assert ok.mean() > 0.98
    assert np.corrcoef(res.rate[ok], lam[ok])[0, 1] >= 0.95


def test_langevin_rate_in_time():
    t = np.linspace(0, 2, 801)  # one period of the rate; u grows like e^t
    rate = 0.5 + 0.4 * np.sin(2 * np.pi * t / 2)
    series = S.langevin_series(rate, dt=t[1] - t[0])
    u = series["u"] + 0.01 * np.std(series["u"]) * np.random.default_rng(0).standard_normal(t.size)
    res = nm.infer_rates({"u": u}, model="langevin", pixel_size=t[1] - t[0], n_bootstrap=0)
    ok = np.isfinite(res.rate)
    assert np.corrcoef(res.rate[ok], rate[ok])[0, 1] >= 0.95


def test_irregular_roi_has_no_edge_band():
    """ROI maps equal the full-image solve inside the ROI (roi_mode='image'), and an isolated ROI solve is
    unbiased up to its edge on noise-free data."""
    fields, lam = _heterogeneous(shape=(96, 96), noise=0.0, seed=7)
    yy, xx = np.mgrid[0:96, 0:96]
    roi = ((yy - 45) ** 2 / 30**2 + (xx - 50) ** 2 / 38**2 < 1) & ~((yy - 30) ** 2 + (xx - 60) ** 2 < 8**2)
    full = nm.infer_rates(fields, pixel_size=0.05, radius=8, n_bootstrap=0)
    part = nm.infer_rates(fields, pixel_size=0.05, radius=8, roi=roi, n_bootstrap=0)
    np.testing.assert_allclose(part.rate[roi], full.rate[roi], rtol=1e-10)
    iso = nm.infer_rates(fields, pixel_size=0.05, radius=8, roi=roi, roi_mode="isolate", n_bootstrap=0)
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(roi)
    band, core = roi & (dist <= 4), roi & (dist > 8)
    err = np.abs(iso.rate - lam)
    assert np.isfinite(iso.rate[roi]).mean() > 0.98
    assert np.nanmedian(err[band]) < 0.05 and np.nanmedian(err[core]) < 0.02


def test_label_image_gives_one_solve_per_label():
    fields, _ = _heterogeneous(shape=(96, 96), noise=0.0, seed=2)
    labels = np.zeros((96, 96), int)
    labels[10:45, 10:50] = 1
    labels[55:90, 40:85] = 2
    res = nm.infer_rates(fields, pixel_size=0.05, radius=6, roi=labels, roi_mode="isolate", n_bootstrap=0)
    assert [row["label"] for row in res.table()] == [1, 2]
    assert res.table()[0]["n_pixels"] == 35 * 40
    assert res.table()[0]["area"] == pytest.approx(35 * 40 * 0.05**2)
    assert np.isnan(res.rate[labels == 0]).all() and np.isfinite(res.rate[labels > 0]).mean() > 0.98


@pytest.mark.slow
def test_progress_every_percent_cancel_and_determinism():
    fields, _ = _heterogeneous(shape=(64, 64), noise=0.01, seed=3)
    calls = []
    # a long run (100 bootstrap samples) reports at least every 1 %; the default run is a few steps long
    res1 = nm.infer_rates(fields, pixel_size=0.05, progress=lambda s, t, i: calls.append((s, t)), n_bootstrap=100,
                          uncertainty="bootstrap")
    steps = [s for s, _ in calls]
    total = calls[-1][1]
    assert steps[-1] == total and max(np.diff([0] + steps)) / total <= 0.01
    res2 = nm.infer_rates(fields, pixel_size=0.05, n_bootstrap=100, uncertainty="bootstrap")
    np.testing.assert_array_equal(res1.rate, res2.rate)
    np.testing.assert_array_equal(res1.uncertainty, res2.uncertainty)
    assert res1.provenance["device"] == "cpu" and res1.provenance["seed"] == 0
    assert res1.provenance["input_hashes"] == res2.provenance["input_hashes"]
    seen = []

    def cancel():
        seen.append(1)
        return len(seen) > 5

    with pytest.raises(RunCancelled):
        nm.infer_rates(fields, pixel_size=0.05, cancel=cancel, n_bootstrap=100, uncertainty="bootstrap")
    assert len(seen) == 6  # stopped at the first step after cancel() said True


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"fields": {"phi_h": np.ones((20, 20))}}, "missing"),
        ({"fields": {"phi_h": np.ones((20, 20)), "phi_e": np.ones((21, 20))}}, "same shape"),
        ({"fields": {"phi_h": np.ones((4, 20, 20, 3)), "phi_e": np.ones((4, 20, 20, 3))}}, "RGB"),
        ({"fields": {"phi_h": np.ones((32, 32, 3)), "phi_e": np.ones((32, 32, 3))}}, "RGB"),
        ({"model": "nope"}, "unknown model"),
        ({"params": {"bogus": 1}}, "no coefficient"),
        ({"roi": np.zeros((32, 32), bool)}, "ROI is empty"),
        ({"method": "magic"}, "unknown method"),
        ({"radius": "big"}, "radius"),
        ({"pixel_size": -1}, "pixel_size"),
        ({"device": "cuda"} if not __import__("torch").cuda.is_available() else {"method": "x"}, "cuda|method"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"fields": {"phi_h": np.full((32, 32), 0.3), "phi_e": np.full((32, 32), 0.3)}}
    args.update(kwargs)
    with pytest.raises((MollifierInputError, ValueError), match=match):
        nm.infer_rates(**args)


def test_single_density_channel_uses_documented_split():
    from napari_mollifier.density import split_density

    s = S.synthetic_nucleus(shape=(96, 96), pixel_size=0.02, seed=1)
    density = 1 - s["phi_w"]
    fractions, assumption = split_density(density, s["nucleus"])
    np.testing.assert_allclose(fractions["phi_h"] + fractions["phi_e"] + fractions["phi_w"], 1.0)
    assert (fractions["phi_e"] > 0).all() and assumption["method"] == "linear"
    # denser pixels get a larger heterochromatin share
    share = fractions["phi_h"] / (fractions["phi_h"] + fractions["phi_e"])
    assert np.corrcoef(share[s["nucleus"]], density[s["nucleus"]])[0, 1] > 0.99
    res = nm.infer_rates({"density": density}, params=s["params"], pixel_size=0.02, roi=s["nucleus"], radius=8,
                         n_bootstrap=0)
    assert res.provenance["density_split"]["method"] == "linear"
    assert np.isfinite(res.rate[s["nucleus"]]).mean() > 0.95
    with pytest.raises(MollifierInputError, match="constant"):
        split_density(np.ones((20, 20)))


def test_zero_or_negative_euchromatin_is_refused_or_masked():
    fields, _ = _heterogeneous(shape=(64, 64), noise=0.0, seed=4)
    bad = {"phi_h": fields["phi_h"], "phi_e": -fields["phi_e"]}
    with pytest.raises(MollifierInputError, match="euchromatin"):
        nm.infer_rates(bad, pixel_size=0.05, radius=6, n_bootstrap=0)
    holed = {"phi_h": fields["phi_h"], "phi_e": fields["phi_e"].copy()}
    holed["phi_e"][20:40, 20:40] = 0.0  # a patch without euchromatin: NaN there, finite elsewhere
    res = nm.infer_rates(holed, pixel_size=0.05, radius=4, n_bootstrap=0)
    assert np.isnan(res.rate[28:32, 28:32]).all()
    assert np.isfinite(res.rate[:10, :10]).all()
