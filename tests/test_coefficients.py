"""estimate_coefficients: l2 from the image itself, checked on forward simulations with known l2 and on the
finite-element reference states."""

from pathlib import Path

import numpy as np
import pytest

from napari_mollifier import MollifierInputError, estimate_coefficients, infer_rates
from napari_mollifier.coefficients import SPACING_C, domain_spacing_of_image
from napari_mollifier.simulate import chromatin_steady_state, synthetic_nucleus

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "chromatin_steady_states.npz"
L2_SAMPLE = 1.04 * 0.15**2  # um^2, the synthetic nucleus's value


def forward(pixel_size, l2, seed=3, noise=0.01, shape=(256, 256)):
    """Synthetic nucleus geometry and rate map, steady state recomputed with the given l2 (um^2), plus noise."""
    s = synthetic_nucleus(shape=shape, pixel_size=pixel_size, seed=seed)
    st = chromatin_steady_state(s["phi_w"], s["rate"], pixel_size, params={"l2": l2})
    rng = np.random.default_rng(seed + 100)
    w = s["phi_w"] + noise * rng.standard_normal(shape)
    d = st["phi_d"] + noise * rng.standard_normal(shape)
    return {"phi_h": (1 - w + d) / 2, "phi_e": (1 - w - d) / 2}, s["nucleus"], s["rate"]


@pytest.mark.parametrize("pixel_size", [pytest.param(0.01, marks=pytest.mark.slow), 0.02,
                                        pytest.param(0.04, marks=pytest.mark.slow)])
@pytest.mark.parametrize("factor", [0.5, 2.0])  # l2 over a 4x range: 0.0117 .. 0.0468 um^2
def test_self_consistency_recovers_l2_and_median_rate(pixel_size, factor):
    l2 = L2_SAMPLE * factor
    fields, nucleus, truth = forward(pixel_size, l2)
    est = estimate_coefficients(fields, pixel_size, roi=nucleus)
    assert est["method"] == "self-consistency"
    assert abs(est["l2"] / l2 - 1) <= 0.25
    assert est["stderr"] > 0 and abs(est["l2"] - l2) <= 4 * est["stderr"] + 0.05 * l2
    assert "self-consistency" in est["description"] and est["diagnostics"]["noise_fraction"] <= 0.3
    result = infer_rates(fields, params=est["params"], pixel_size=pixel_size, roi=nucleus, radius=12,
                         n_bootstrap=0, device="cpu")
    median = np.nanmedian(result.rate[nucleus])
    assert abs(median / np.median(truth[nucleus]) - 1) <= 0.10


def test_wrong_l2_gives_wrong_median_is_not_the_check():
    """The median check above can fail: with the box-unit default l2 = 1.04 on um data the median is far off."""
    fields, nucleus, truth = forward(0.02, L2_SAMPLE)
    result = infer_rates(fields, params={"l2": 1.04}, pixel_size=0.02, roi=nucleus, radius=12, n_bootstrap=0,
                         device="cpu")
    assert abs(np.nanmedian(result.rate[nucleus]) / np.median(truth[nucleus]) - 1) > 0.10


def test_spacing_method_reports_its_value_and_is_not_the_default():
    fields, nucleus, _ = forward(0.02, L2_SAMPLE)
    est = estimate_coefficients(fields, 0.02, roi=nucleus, method="spacing")
    d = est["diagnostics"]["domain_spacing"]
    assert est["method"] == "spacing" and est["l2"] == pytest.approx(SPACING_C * d**2)
    assert 0.2 < d < 0.35  # um: the synthetic domains are ~100 nm across, ~0.28 um apart
    assert np.isnan(est["stderr"])


def test_refuses_other_models_and_tiny_rois():
    fields, nucleus, _ = forward(0.04, L2_SAMPLE, shape=(64, 64))
    with pytest.raises(MollifierInputError, match="chromatin-balance"):
        estimate_coefficients(fields, 0.04, model="chromatin-phase-field")
    tiny = np.zeros((64, 64), bool)
    tiny[:10, :10] = True
    with pytest.raises(MollifierInputError, match="too few"):
        estimate_coefficients(fields, 0.04, roi=tiny)
    with pytest.raises(MollifierInputError, match="method"):
        estimate_coefficients(fields, 0.04, method="magic")


def _reference_states():
    if not DATA.exists():
        pytest.skip(f"reference data not found at {DATA}")
    d = np.load(DATA)
    for lam in ("0.5", "1.0", "1.5"):
        w = d[f"lam{lam}_uniform__phi_w"][:-1, :-1]
        pd = d[f"lam{lam}_uniform__phi_d"][:-1, :-1]
        yield float(lam), {"phi_h": (1 - w + pd) / 2, "phi_e": (1 - w - pd) / 2}


def test_self_consistency_on_finite_element_states():
    """The FE states (box units, 0.05 per pixel) were made with l2 = 1.04: the estimate finds it within 25 %."""
    for _, fields in _reference_states():
        est = estimate_coefficients(fields, 0.05)
        assert abs(est["l2"] / 1.04 - 1) <= 0.25, est


def test_spacing_constant_is_the_reference_calibration():
    """SPACING_C is the mean of 1.04 / d^2 over the three reference states."""
    cs = [1.04 / domain_spacing_of_image(f["phi_h"], 0.05)["spacing"] ** 2 for _, f in _reference_states()]
    assert np.mean(cs) == pytest.approx(SPACING_C, abs=0.01)
