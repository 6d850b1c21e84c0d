"""The solver's error model against ground truth: noise estimation, propagated uncertainty, coverage, radius rule."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage

import napari_mollifier as nm
from napari_mollifier import simulate as S
from napari_mollifier.errors import MollifierInputError
from napari_mollifier.kernels import corrected_kernel
from napari_mollifier.noise import NoiseModel, blur_white_noise, estimate_noise_model, gaussian_autocorrelation

L2 = 0.0234  # um^2, the sample's coefficient at 20 nm pixels
PX = 0.02


def _noisy(shape, rate, sigma, corr, seed, w_scale=6):
    """Steady state for ``rate`` on a smooth nucleoplasm, with noise of std ``sigma`` and correlation length
    ``corr`` px added to phi_w and phi_d (so phi_h and phi_e each get sigma / sqrt(2), uncorrelated)."""
    w = S.smooth_random_field(shape, w_scale, 0.2, 0.7, seed=seed + 1)
    st = S.chromatin_steady_state(w, rate, pixel_size=PX, params={"l2": L2})
    rng = np.random.default_rng(seed + 2)
    nw = sigma * blur_white_noise(rng.standard_normal(shape), corr)
    nd = sigma * blur_white_noise(rng.standard_normal(shape), corr)
    wn, dn = w + nw, st["phi_d"] + nd
    return {"phi_h": (1 - wn + dn) / 2, "phi_e": (1 - wn - dn) / 2}


@pytest.mark.parametrize("corr", [0.0, 1.0, 2.0])
def test_noise_model_recovers_level_and_correlation(corr):
    shape = (160, 160)
    fields = _noisy(shape, 1.0, 0.01, corr, seed=3)
    model = estimate_noise_model(fields)
    for k in fields:
        assert model.sigma[k] == pytest.approx(0.01 / np.sqrt(2), rel=0.12), (k, model.sigma)
    # near white noise the length itself is ill-determined (rho(1) ~ exp(-1 / 4c^2) vanishes): compare rho(1)
    lag1 = gaussian_autocorrelation(model.correlation_length, 1)
    want = gaussian_autocorrelation(corr, 1)
    rho1 = lag1[len(lag1) // 2 + 1] if lag1.size > 1 else 0.0
    rho1_true = want[len(want) // 2 + 1] if want.size > 1 else 0.0
    assert abs(rho1 - rho1_true) <= 0.1, (model.correlation_length, rho1, rho1_true)
    assert abs(model.cross["phi_h|phi_e"]) < 0.1


def test_noise_model_sees_correlation_between_fields():
    """Noise on phi_d only: phi_h and phi_e get the same noise with opposite signs (r = -1)."""
    w = S.smooth_random_field((128, 128), 6, 0.2, 0.7, seed=1)
    st = S.chromatin_steady_state(w, 1.0, pixel_size=PX, params={"l2": L2})
    d = st["phi_d"] + 0.01 * np.random.default_rng(0).standard_normal(w.shape)
    model = estimate_noise_model({"phi_h": (1 - w + d) / 2, "phi_e": (1 - w - d) / 2})
    assert model.cross["phi_h|phi_e"] < -0.95
    assert model.sigma["phi_h"] == pytest.approx(0.005, rel=0.1)


@pytest.mark.parametrize("corr", [0.0, pytest.param(1.5, marks=pytest.mark.slow)])
def test_propagated_uncertainty_agrees_with_bootstrap(corr):
    """Uniform rate (no smoothing bias): the propagated map and a 60-sample bootstrap of the same noise model agree
    (median ratio within 10 %), and both cover the truth."""
    fields = _noisy((96, 96), 0.8, 0.01, corr, seed=5)
    kw = dict(params={"l2": L2}, pixel_size=PX, radius=6, boundary="periodic")
    prop = nm.infer_rates(fields, **kw)
    boot = nm.infer_rates(fields, uncertainty="bootstrap", n_bootstrap=60, **kw)
    ok = np.isfinite(prop.uncertainty) & np.isfinite(boot.uncertainty)
    ratio = np.median(prop.uncertainty[ok] / boot.uncertainty[ok])
    assert 0.9 <= ratio <= 1.1, ratio
    assert prop.provenance["uncertainty_method"] == "propagate"
    assert prop.provenance["noise_model"]["correlation_length_px"] == pytest.approx(corr, abs=0.35)


def test_propagated_uncertainty_at_mask_edges_matches_bootstrap():
    """Pixels whose kernel is re-solved at the ROI's edge (roi_mode="isolate") get their own propagated variance.
    At the smallest radius (no bias term: R / 1.25 is below the model's minimum) this is the noise part alone."""
    fields = _noisy((96, 96), 0.8, 0.001, 0.0, seed=6)  # low noise: the rate stays positive even at R = 3
    yy, xx = np.mgrid[0:96, 0:96]
    roi = (yy - 48) ** 2 + (xx - 48) ** 2 < 38**2
    kw = dict(params={"l2": L2}, pixel_size=PX, radius=3, roi=roi, roi_mode="isolate", noise=0.001 / np.sqrt(2))
    prop = nm.infer_rates(fields, **kw)
    boot = nm.infer_rates(fields, uncertainty="bootstrap", n_bootstrap=60, **kw)
    dist = ndimage.distance_transform_edt(roi)
    finite = np.isfinite(prop.uncertainty) & np.isfinite(boot.uncertainty)
    edge = roi & (dist < 3) & finite
    inner = roi & (dist > 6) & finite
    assert np.median(prop.uncertainty[edge]) > 1.5 * np.median(prop.uncertainty[inner])  # edges are noisier
    ratio = np.median(prop.uncertainty[edge] / boot.uncertainty[edge])
    assert 0.9 <= ratio <= 1.1, ratio


def _coverage(res, truth, where):
    ok = where & np.isfinite(res.rate) & np.isfinite(res.uncertainty)
    return float(np.mean(np.abs(res.rate - truth)[ok] <= 2 * res.uncertainty[ok]))


@pytest.mark.parametrize("corr", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("kind", ["uniform", "smooth"])
def test_two_sigma_coverage_table(kind, corr):
    """The coverage table of docs/science.md: 2-sigma coverage within 0.85-0.99 for white and correlated noise,
    uniform and smoothly varying rates, at the default settings (auto radius, propagated uncertainty)."""
    shape = (128, 128)
    rate = 0.8 if kind == "uniform" else S.smooth_random_field(shape, 40, 0.5, 1.5, seed=11)
    fields = _noisy(shape, rate, 0.01, corr, seed=12)
    res = nm.infer_rates(fields, params={"l2": L2}, pixel_size=PX, boundary="periodic")
    truth = np.broadcast_to(rate, shape)
    cov = _coverage(res, truth, np.ones(shape, bool))
    assert 0.85 <= cov <= 0.99, (cov, res.radius, res.provenance["noise_model"])
    check = res.provenance["noise_model"]["texture_check"]
    assert check["applied"] is False, check  # noise, not texture: the estimate is kept


@pytest.mark.slow
def test_auto_radius_keeps_the_smooth_nucleus_sharp():
    s = S.synthetic_nucleus((256, 256), noise=0.01, seed=0)
    res = nm.infer_rates({"phi_h": s["phi_h"], "phi_e": s["phi_e"]}, params=s["params"], pixel_size=PX,
                         roi=s["nucleus"])
    ok = s["nucleus"] & np.isfinite(res.rate)
    assert np.corrcoef(res.rate[ok], s["rate"][ok])[0, 1] >= 0.99
    assert 0.85 <= _coverage(res, s["rate"], s["nucleus"]) <= 0.99
    ladder = res.provenance["radius_choice"]["1"]["ladder"]
    assert ladder[-1]["accepted"] is False or ladder[-1]["radius"] == res.radius  # it stopped where it rejected


def _texture_state():
    """The noise-free steady state whose rate is white noise around 1 (std 0.3): 128² px, ``l2`` = (4 px)²."""
    shape = (128, 128)
    lam = 1.0 + 0.3 * np.random.default_rng(0).standard_normal(shape)
    w = S.smooth_random_field(shape, 6, 0.2, 0.7, seed=2)
    l2 = (4 * PX) ** 2
    return lam, l2, S.chromatin_steady_state(w, lam, pixel_size=PX, params={"l2": l2})


def test_auto_radius_small_for_noise_free_rate_at_the_pixel_scale():
    """No added noise, a rate that is white noise around its mean: the rule stays within 1.5x of the smallest radius
    (quasi-optimality went several times larger), and the map follows the truth at the scale it can be seen."""
    lam, l2, st = _texture_state()
    fields = {"phi_h": st["phi_h"], "phi_e": st["phi_e"]}
    kw = dict(params={"l2": l2}, pixel_size=PX, boundary="periodic", uncertainty="none")
    lep = nm.infer_rates(fields, **kw)
    qo = nm.infer_rates(fields, radius_rule="quasi-optimality", **kw)
    ok = np.isfinite(lep.rate)
    # the estimated "noise" here is the rate's own pixel-scale texture (phi_h and phi_e anti-correlated 0.998, their
    # sum smooth: from two fields alone it looks like anti-correlated channel noise, docs/science.md); the texture
    # check (napari_mollifier.texture) tells it from noise by the autocorrelation of the map's fine-scale part and
    # scales the noise down, so the rule stays within 1.5x of the smallest radius the model allows (issue #12)
    assert lep.radius <= 1.5 * 3.0, lep.radius
    assert lep.provenance["noise_model"]["texture_check"]["applied"] is True
    assert lep.radius < qo.radius / 2, (lep.radius, qo.radius)
    # the map is the truth seen through the kernel of its radius (r 1.000), and follows the truth at ~1 px
    seen = ndimage.correlate(lam, corrected_kernel("poly", lep.radius, (0, 0)), mode="wrap")
    assert np.corrcoef(lep.rate[ok], seen[ok])[0, 1] >= 0.99
    truth = ndimage.gaussian_filter(lam, 1, mode="wrap")
    assert np.corrcoef(lep.rate[ok], truth[ok])[0, 1] >= 0.9
    # told that the data are (nearly) noise-free, the rule stays at the smallest radii too
    told = nm.infer_rates(fields, **dict(kw, noise=1e-4))
    assert told.radius <= 1.5 * 3.0, told.radius
    ok = np.isfinite(told.rate)
    assert np.corrcoef(told.rate[ok], lam[ok])[0, 1] >= 0.7  # the pixel-scale rate itself (r 0.78 at 3 px)
    # a tiled run makes the same check once for the whole image: same noise model, same radius
    tiled = nm.infer_rates(fields, tile=64, **kw)
    assert tiled.radius == lep.radius
    assert tiled.provenance["noise_model"] == lep.provenance["noise_model"]


def test_texture_check_reads_the_roi_wherever_it_lies():
    """The check reads the window with the most ROI pixels, not the image's centre: a nucleus in a corner of a
    larger image gets the same check (not skipped, not applied: its noise is noise), radius and map as alone."""
    s = S.synthetic_nucleus((256, 256), noise=0.01, seed=0)
    fields = {k: s[k] for k in ("phi_h", "phi_e")}
    pad = ((384, 0), (0, 384))
    big = {k: np.pad(v, pad, mode="edge") for k, v in fields.items()}
    roi = np.pad(s["nucleus"], pad)
    kw = dict(params=s["params"], pixel_size=PX, uncertainty="none")
    alone = nm.infer_rates(fields, roi=s["nucleus"], **kw)
    corner = nm.infer_rates(big, roi=roi, **kw)
    check = corner.provenance["noise_model"]["texture_check"]
    assert "skipped" not in check and check["applied"] is False, check
    (y0, y1), (x0, x1) = check["window"]
    assert roi[y0:y1, x0:x1].sum() >= 0.9 * s["nucleus"][:256, :256].sum()  # the nucleus, not the empty centre
    assert check["acf_observed"] == alone.provenance["noise_model"]["texture_check"]["acf_observed"]
    assert corner.radius == alone.radius
    np.testing.assert_allclose(corner.rate[384:, :256], alone.rate, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_texture_check_out_of_memory_keeps_the_estimate(monkeypatch):
    """An out-of-memory error inside the check (its four closed-form solves) skips the check with a record; the
    run goes on with the estimated noise level, as without the check."""
    import torch

    from napari_mollifier import solve

    _, l2, st_ = _texture_state()
    fields = {"phi_h": st_["phi_h"], "phi_e": st_["phi_e"]}
    kw = dict(params={"l2": l2}, pixel_size=PX, boundary="periodic", uncertainty="none")
    real_rate = solve._Context.rate

    def rate(self, *args, **kwargs):
        if self.region is not None and self.boundary == "periodic" and self.region.all():  # the check's solves
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real_rate(self, *args, **kwargs)

    monkeypatch.setattr(solve._Context, "rate", rate)
    res = nm.infer_rates(fields, **kw)
    check = res.provenance["noise_model"]["texture_check"]
    assert check["applied"] is False and check["skipped"].startswith("out of memory"), check
    monkeypatch.undo()
    told = nm.infer_rates(fields, **dict(kw, noise=res.provenance["noise_model"]["sigma"],
                                         noise_correlation=res.provenance["noise_model"]["correlation_length_px"]))
    assert res.radius == told.radius > 1.5 * 3.0  # the unscaled estimate: the rule climbs as without the check


def test_auto_runs_noise_model_gives_its_uncertainty_at_a_fixed_radius():
    """Where the texture check scaled the noise down (auto radius), passing the auto run's recorded noise model to
    a fixed-radius run at the same radius gives the same uncertainty map (docs/science.md); without it the
    fixed-radius run uses the unscaled estimate."""
    _, l2, st_ = _texture_state()
    rng = np.random.default_rng(7)
    wn = st_["phi_w"] + 0.001 * rng.standard_normal(st_["phi_w"].shape)
    dn = st_["phi_d"] + 0.001 * rng.standard_normal(st_["phi_d"].shape)
    fields = {"phi_h": (1 - wn + dn) / 2, "phi_e": (1 - wn - dn) / 2}
    kw = dict(params={"l2": l2}, pixel_size=PX, boundary="periodic")
    auto = nm.infer_rates(fields, **kw)
    p = auto.provenance["noise_model"]
    assert p["texture_check"]["applied"] is True, p
    model = NoiseModel(sigma=p["sigma"], correlation_length=p["correlation_length_px"], cross=p["cross_correlation"])
    fixed = nm.infer_rates(fields, radius=auto.radius, noise=model, **kw)
    np.testing.assert_allclose(fixed.uncertainty, auto.uncertainty, rtol=1e-9, equal_nan=True)
    plain = nm.infer_rates(fields, radius=auto.radius, **kw)
    assert "texture_check" not in plain.provenance["noise_model"]
    assert np.nanmedian(plain.uncertainty) > 1.1 * np.nanmedian(auto.uncertainty)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(bool, st.tuples(st.integers(1, 30), st.integers(1, 30))), st.integers(1, 12))
def test_fullest_window_holds_the_most_roi_pixels(mask, side):
    from napari_mollifier.texture import _fullest_window

    window = _fullest_window(mask, side)
    h, w = (min(n, side) for n in mask.shape)
    assert [sl.stop - sl.start for sl in window] == [h, w]
    best = max(mask[i:i + h, j:j + w].sum() for i in range(mask.shape[0] - h + 1)
               for j in range(mask.shape[1] - w + 1))
    assert mask[window].sum() == best


def test_noise_that_cannot_be_estimated_is_refused_with_the_fix():
    tiny = {"phi_h": np.random.default_rng(0).random((9, 9)) * 0.1 + 0.2, "phi_e": np.full((9, 9), 0.5)}
    tiny["phi_e"] = tiny["phi_e"] + 0.01 * np.random.default_rng(1).random((9, 9))
    before = {k: v.copy() for k, v in tiny.items()}
    with pytest.raises(MollifierInputError, match=r"cannot be estimated.*pass noise="):
        nm.infer_rates(tiny, radius=3)
    for k in tiny:
        np.testing.assert_array_equal(tiny[k], before[k])
    # the fix works: the noise given, the same call runs
    res = nm.infer_rates(tiny, radius=3, noise=0.01)
    assert np.isfinite(res.uncertainty).any()
    # a field without any pixel-to-pixel variation (a linear ramp): nothing to estimate from
    ramp = {"phi_h": 0.2 + 0.001 * np.arange(64)[None, :] * np.ones((64, 1)), "phi_e": tiny["phi_e"].mean()
            + 0.001 * np.arange(64)[:, None] * np.ones((1, 64))}
    with pytest.raises(MollifierInputError, match=r"no pixel-to-pixel variation.*noise="):
        nm.infer_rates(ramp, radius=4)


def test_given_noise_model_and_bad_noise_values():
    fields = _noisy((64, 64), 0.8, 0.01, 1.0, seed=7)
    given = NoiseModel(sigma={"phi_h": 0.007, "phi_e": 0.007}, correlation_length=1.0)
    res = nm.infer_rates(fields, params={"l2": L2}, pixel_size=PX, radius=5, noise=given)
    same = nm.infer_rates(fields, params={"l2": L2}, pixel_size=PX, radius=5, noise=0.007, noise_correlation=1.0)
    np.testing.assert_allclose(res.uncertainty, same.uncertainty, rtol=1e-12, equal_nan=True)
    white = nm.infer_rates(fields, params={"l2": L2}, pixel_size=PX, radius=5, noise=0.007)
    ok = np.isfinite(res.uncertainty)
    assert np.median(res.uncertainty[ok]) > 1.3 * np.median(white.uncertainty[ok])  # correlated noise averages less
    for bad, match in [({"noise": float("nan")}, "noise = nan is not a non-negative finite number"),
                       ({"noise": -1.0}, "noise = -1.0 is not a non-negative finite number"),
                       ({"noise": {"phi_x": 0.1}}, "phi_x"),
                       ({"noise": 0.01, "noise_correlation": -2}, "noise_correlation"),
                       ({"uncertainty": "jackknife"}, "unknown uncertainty"),
                       ({"radius_rule": "guess"}, "unknown radius_rule")]:
        with pytest.raises(MollifierInputError, match=match):
            nm.infer_rates(fields, params={"l2": L2}, pixel_size=PX, radius=5, **bad)


def test_many_labels_share_the_whole_image_work():
    """A label image: one pass up the radius ladder for all labels (roi_mode="image"); each label's map equals its
    own single-label run."""
    s = S.synthetic_nucleus((128, 128), noise=0.01, seed=1)
    fields = {"phi_h": s["phi_h"], "phi_e": s["phi_e"]}
    labels = np.zeros((128, 128), int)
    labels[20:60, 20:60] = 1
    labels[70:110, 30:90] = 2
    kw = dict(params=s["params"], pixel_size=PX, noise=0.01 / np.sqrt(2))
    both = nm.infer_rates(fields, roi=labels, **kw)
    for lab in (1, 2):
        one = nm.infer_rates(fields, roi=labels == lab, **kw)
        m = labels == lab
        np.testing.assert_allclose(both.rate[m], one.rate[m], rtol=1e-9, atol=1e-12)
        assert both.provenance["radius_used"][str(lab)] == one.provenance["radius_used"]["1"]


def test_small_labels_share_the_radius_chosen_on_their_union():
    """Labels below OWN_RADIUS_MIN_PIXELS pool their pixels for the radius rule: many small labels give the map,
    radius and uncertainty of one label of the same pixels (the 1000-label benchmark relies on it)."""
    from napari_mollifier.solve import OWN_RADIUS_MIN_PIXELS

    s = S.synthetic_nucleus((128, 128), noise=0.01, seed=2)
    fields = {"phi_h": s["phi_h"], "phi_e": s["phi_e"]}
    labels = np.zeros((128, 128), int)
    k = 0
    for i in range(8):
        for j in range(10):
            k += 1
            labels[24 + 10 * i: 24 + 10 * i + 5, 14 + 10 * j: 14 + 10 * j + 9] = k
    assert np.bincount(labels.ravel())[1:].max() < OWN_RADIUS_MIN_PIXELS
    kw = dict(params=s["params"], pixel_size=PX)
    many = nm.infer_rates(fields, roi=labels, **kw)
    one = nm.infer_rates(fields, roi=labels > 0, **kw)
    m = labels > 0
    assert set(many.provenance["radius_used"].values()) == {one.provenance["radius_used"]["1"]}
    assert all(c["pooled"] == k for c in many.provenance["radius_choice"].values())
    np.testing.assert_allclose(many.rate[m], one.rate[m], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(many.uncertainty[m], one.uncertainty[m], rtol=1e-6)
    assert len(many.roi_stats) == k and many.roi_stats[5]["n_pixels"] == 45


def test_correlated_noise_kernel_smoothing_is_separable_and_exact():
    """``rho (*) K`` by one 1-D pass per axis for the Gaussian autocorrelation equals the full 2-D correlation; a
    non-separable rho takes the full correlation."""
    import torch
    import torch.nn.functional as F

    from napari_mollifier.methods.direct import _correlate_same, _separable_factors
    from napari_mollifier.noise import gaussian_autocorrelation

    kernels = torch.as_tensor(np.random.default_rng(0).standard_normal((5, 17, 17)))
    for c in (0.7, 2.5):
        rho = torch.as_tensor(gaussian_autocorrelation(c, 2), dtype=torch.float64)
        assert _separable_factors(rho) is not None
        h = (rho.shape[0] - 1) // 2
        full = F.conv2d(kernels[:, None], rho[None, None], padding=h)[:, 0]
        np.testing.assert_allclose(_correlate_same(kernels, rho).numpy(), full.numpy(), rtol=0, atol=1e-12)
    cross = torch.zeros((5, 5), dtype=torch.float64)
    cross[2, :] = cross[:, 2] = 1.0  # a plus sign: not an outer product
    assert _separable_factors(cross) is None
    full = F.conv2d(kernels[:, None], cross[None, None], padding=2)[:, 0]
    np.testing.assert_allclose(_correlate_same(kernels, cross).numpy(), full.numpy(), atol=1e-12)


def test_noise_responses_use_only_windows_inside_the_image_and_mask():
    """The second-difference responses equal the definition: ``D_s`` along every axis on the pixels whose whole
    ``(2 s + 1)^d`` window is inside the image and the mask (a box erosion of the mask)."""
    from scipy import ndimage

    from napari_mollifier.noise import _responses

    rng = np.random.default_rng(3)
    image = rng.standard_normal((30, 41)).cumsum(axis=1)
    mask = rng.random(image.shape) > 0.15
    for step in (1, 2, 3):
        kernel = np.zeros(2 * step + 1)
        kernel[[0, step, 2 * step]] = [1.0, -2.0, 1.0]
        full = ndimage.correlate1d(ndimage.correlate1d(image, kernel, axis=0), kernel, axis=1)
        inside = ndimage.binary_erosion(mask, np.ones((2 * step + 1,) * 2, bool))
        inside[:step] = inside[-step:] = False
        inside[:, :step] = inside[:, -step:] = False
        np.testing.assert_allclose(_responses(image, mask, step), full[inside], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_responses(image, None, step), full[step:-step, step:-step].ravel(),
                                   rtol=1e-12, atol=1e-12)
