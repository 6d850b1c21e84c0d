"""Kernel families: analytic derivatives and discrete moment conditions."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_mollifier import kernels as K


def _moment(kernel, beta):
    h = (kernel.shape[0] - 1) // 2
    axis = np.arange(-h, h + 1, dtype=np.float64)
    grids = np.meshgrid(*([axis] * kernel.ndim), indexing="ij")
    return float((kernel * math.prod(g**b for g, b in zip(grids, beta, strict=True))).sum())


ALPHAS_2D = [a for a in K.multi_indices(2, 4)]


@pytest.mark.parametrize("family", ["poly", "poly5", "bump"])
@pytest.mark.parametrize("alpha", ALPHAS_2D)
def test_moment_conditions_2d(family, alpha):
    order = sum(alpha)
    for radius in (order + 1, order + 2.5, 9):
        k = K.corrected_kernel(family, radius, alpha)
        for beta in K.multi_indices(2, order + 1):
            want = math.prod(math.factorial(a) for a in alpha) if beta == alpha else 0.0
            assert _moment(k, beta) == pytest.approx(want, abs=1e-9 * max(1, want) * radius**order)


@pytest.mark.parametrize("ndim", [1, 3])
def test_moment_conditions_1d_3d(ndim):
    for alpha in K.multi_indices(ndim, 4):
        order = sum(alpha)
        k = K.corrected_kernel("poly", order + 2, alpha)
        for beta in K.multi_indices(ndim, order + 1):
            want = math.prod(math.factorial(a) for a in alpha) if beta == alpha else 0.0
            assert _moment(k, beta) == pytest.approx(want, abs=1e-8 * max(1, want))


def test_sampled_bump_derivatives_have_wrong_moments():
    """The trap of SCIENCE.md: raw samples of the bump's 4th derivative miss 4! badly; the correction fixes it."""
    raw = K.analytic_kernel("bump", 8, (0, 4))
    assert abs(_moment(raw, (0, 4)) - 24) > 10
    assert _moment(K.corrected_kernel("bump", 8, (0, 4)), (0, 4)) == pytest.approx(24, rel=1e-10)


def test_analytic_derivative_matches_finite_difference_of_profile():
    """The sampled analytic kernel is the true derivative of eta: compare with a fine central difference."""
    radius = 6.0
    for family in ("poly", "bump"):
        fam, power = K.parse_kernel(family)
        x = np.arange(-5, 6, dtype=np.float64)
        eps = 1e-4

        def eta_1d(xv):
            return K.radial_profile_derivatives(fam, power, (xv / radius) ** 2, 0)[0]  # noqa: B023 - called within the same iteration

        norm = eta_1d(x).sum()
        numeric = (eta_1d(x + eps) - eta_1d(x - eps)) / (2 * eps) / norm
        analytic = K.analytic_kernel(family, radius, (1,))
        # correlation form carries (-1)^order
        np.testing.assert_allclose(analytic, -numeric, atol=1e-7)


def test_kernel_is_a_mollifier():
    for family in ("poly", "bump"):
        eta = K.analytic_kernel(family, 7, (0, 0))
        assert eta.min() >= 0
        assert eta.sum() == pytest.approx(1.0)
        assert np.allclose(eta, eta[::-1, :]) and np.allclose(eta, eta.T)


def test_tensor_built_in_requested_dtype_and_device():
    t = K.derivative_kernel("poly", 5, (2, 0), dtype=torch.float32, device="cpu")
    assert t.dtype == torch.float32 and t.device.type == "cpu" and t.shape == (9, 9)


@pytest.mark.parametrize("bad", ["gauss", "poly3", 3])
def test_bad_kernel_names(bad):
    with pytest.raises(ValueError):
        K.parse_kernel(bad)


@settings(max_examples=30, deadline=None)
@given(
    radius=st.floats(min_value=5.0, max_value=14.0),
    alpha=st.sampled_from(ALPHAS_2D),
    family=st.sampled_from(["poly", "bump", "poly6", "poly12"]),
)
def test_moments_property(radius, alpha, family):
    order = sum(alpha)
    k = K.corrected_kernel(family, radius, alpha)
    target = math.prod(math.factorial(a) for a in alpha)
    assert _moment(k, alpha) == pytest.approx(target, rel=1e-8)
    assert _moment(k, (0, 0)) == pytest.approx(float(order == 0), abs=1e-10)
