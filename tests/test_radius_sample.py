"""The radius rule on a pixel sample (solve._lepski_sample): Lepski's medians read a regular subsample of each
label, so the rungs are computed at those pixels only (DerivativeLadder.at_pixels); values, variances and the
chosen radius equal the full-image computation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_mollifier as nm
import napari_mollifier.methods.direct as direct
import napari_mollifier.solve as solve
from napari_mollifier.methods.direct import DerivativeLadder, _jacobian, propagate
from napari_mollifier.models import get_model
from napari_mollifier.noise import NoiseModel
from napari_mollifier.simulate import synthetic_nucleus


def _ladder(kernel, where=None, n=96):
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:n, 0:n]
    mask = (yy - n / 2) ** 2 / (0.42 * n) ** 2 + (xx - n / 2) ** 2 / (0.35 * n) ** 2 <= 1
    phi_e = 0.6 + 0.1 * np.sin(xx / 7.0) * np.cos(yy / 9.0) + 0.01 * rng.standard_normal((n, n))
    phi_h = 0.3 + 0.05 * np.cos(xx / 5.0 + yy / 11.0) + 0.01 * rng.standard_normal((n, n))
    fields = {"phi_h": torch.as_tensor(phi_h), "phi_e": torch.as_tensor(phi_e)}
    model = get_model("chromatin-balance")
    params = {"l2": 1.04}
    return DerivativeLadder(model, params, fields, (1.0, 1.0), kernel, "mask", mask, where, 30.0), mask


@pytest.mark.parametrize("windows", [True, False])
@pytest.mark.parametrize("kernel", ["poly", "sep"])
@pytest.mark.parametrize("radius", [3.0, 7.33, 17.89])
def test_derivatives_at_pixels_equal_the_full_image(kernel, radius, windows, monkeypatch):
    """Both engines (gathered windows at the pixels; the full image, then read) give the full image's values."""
    monkeypatch.setattr(direct, "windows_pay", lambda *a: windows)
    ladder, mask = _ladder(kernel)
    pixels = torch.as_tensor(np.flatnonzero(mask)[::3])
    full = ladder.at(radius)
    ladder._recent.clear()  # force the sampled computation, not a read of the cached full maps
    part = ladder.at_pixels(radius, pixels)
    for name, keys in full.items():
        for key, value in keys.items():
            want = value.reshape(-1)[pixels].numpy()
            got = part[name][key].numpy()
            assert np.array_equal(np.isnan(want), np.isnan(got)), (name, key)
            ok = np.isfinite(want)
            assert ok.mean() > 0.9
            scale = np.abs(want[ok]).max()
            assert np.abs(got[ok] - want[ok]).max() <= 1e-9 * scale, (name, key)


def test_propagated_variance_at_pixels_equals_the_full_image():
    ladder, mask = _ladder("poly")
    pixels = torch.as_tensor(np.flatnonzero(mask)[::5])
    noise = NoiseModel(sigma={"phi_h": 0.01, "phi_e": 0.012}, correlation_length=1.0, cross={"phi_h|phi_e": 0.2})
    jac = _jacobian(ladder)

    def form(d):
        return ladder.model.rate(d, ladder.params)

    rate, var, _ = propagate(ladder, 9.16, ladder.at(9.16), form, noise, mask, jac)
    ladder._recent.clear()
    everywhere = np.ones(pixels.numel(), bool)
    rate_s, var_s, _ = propagate(ladder, 9.16, ladder.at_pixels(9.16, pixels), form, noise, everywhere, jac,
                                 pixels=pixels)
    want_r, want_v = rate.reshape(-1)[pixels].numpy(), var.reshape(-1)[pixels].numpy()
    ok = np.isfinite(want_v)
    assert ok.mean() > 0.9
    np.testing.assert_allclose(rate_s.numpy()[ok], want_r[ok], rtol=1e-9)
    np.testing.assert_allclose(var_s.numpy()[ok], want_v[ok], rtol=1e-5)  # cached variances are float32


def test_sampled_radius_rule_chooses_what_the_full_maps_choose(monkeypatch):
    s = synthetic_nucleus((340, 340), noise=0.01, seed=3)
    assert s["nucleus"].sum() >= 2 * 20000  # large enough to be sampled (stride >= 2)
    fields = {"phi_h": s["phi_h"], "phi_e": s["phi_e"]}
    kw = dict(params=s["params"], pixel_size=s["pixel_size"], roi=s["nucleus"])
    sampled = nm.infer_rates(fields, **kw)
    monkeypatch.setattr(solve, "_lepski_sample", lambda flat, n: None)
    full = nm.infer_rates(fields, **kw)
    assert sampled.radius == full.radius
    table_s = sampled.provenance["radius_choice"]["1"]["ladder"]
    table_f = full.provenance["radius_choice"]["1"]["ladder"]
    assert [t["radius"] for t in table_s] == [t["radius"] for t in table_f]
    assert [t["accepted"] for t in table_s] == [t["accepted"] for t in table_f]
    np.testing.assert_allclose([t["max_standardised_change"] for t in table_s],
                               [t["max_standardised_change"] for t in table_f], atol=2e-3)
    np.testing.assert_allclose(sampled.rate, full.rate, rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(sampled.uncertainty, full.uncertainty, rtol=1e-5, equal_nan=True)


def test_lepski_statistic_per_label_equals_one_label_at_a_time():
    """One implementation of Lepski's statistic: all labels at once gives each label's own medians."""
    rng = np.random.default_rng(4)
    sizes = [1, 2, 7, 50, 301]
    owner = np.repeat(np.arange(len(sizes)), sizes)
    starts = np.searchsorted(owner, np.arange(len(sizes)))
    rate_k = rng.normal(size=owner.size)
    history = [(rng.normal(size=owner.size), rng.uniform(0.1, 2.0, size=owner.size)) for _ in range(3)]
    history[1][0][[3, 60]] = np.nan  # non-finite values are left out of the medians
    history[2][1][5] = 0.0  # a zero s.d. where the maps differ scores infinity
    together = direct.lepski_changes(rate_k, history, owner, starts)
    for i in range(len(sizes)):
        sel = owner == i
        alone = direct.lepski_changes(rate_k[sel], [(r[sel], s[sel]) for r, s in history])
        medians = []
        for r, s in history:
            diff, sd = np.abs(rate_k[sel] - r[sel]), s[sel]
            keep = np.isfinite(diff) & np.isfinite(sd)
            with np.errstate(divide="ignore"):
                z = np.where(sd[keep] > 0, diff[keep] / sd[keep], np.inf)
            medians.append(float(np.median(z)) if z.size else 0.0)
        expected = max(medians)
        assert together[i] == pytest.approx(alone[0]) and alone[0] == pytest.approx(expected)
        accepted, worst = direct.lepski_accepts(rate_k[sel], [(r[sel], s[sel]) for r, s in history])
        assert worst == pytest.approx(expected) and accepted == (expected <= direct.LEPSKI_KAPPA)


def test_lepski_medians_count_infinite_changes_and_skip_missing_values():
    """Per-label medians equal numpy's median of each label's values: NaN left out, +inf (a zero s.d. where the
    maps differ) counted, so that exact data (zero noise) reject a radius that changes the map."""
    rng = np.random.default_rng(7)
    for trial in range(200):
        n = int(rng.integers(1, 6))
        owner = np.sort(np.concatenate([np.arange(n), rng.integers(0, n, int(rng.integers(0, 200)))]))
        starts = np.searchsorted(owner, np.arange(n))
        z = rng.standard_normal(owner.size) ** 2
        z[rng.random(owner.size) < 0.2] = np.nan
        z[rng.random(owner.size) < 0.1 * (trial % 4)] = np.inf
        got = direct._label_medians(z, owner, starts)
        for i in range(n):
            values = z[owner == i][~np.isnan(z[owner == i])]
            assert got[i] == (np.median(values) if values.size else 0.0)
    exact = direct.lepski_changes(np.ones(50), [(np.zeros(50), np.zeros(50))])
    assert exact[0] == np.inf  # every s.d. 0 and every pixel changed: rejected
