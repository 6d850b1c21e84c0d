"""Property-based fuzzing of ``derivatives`` and ``infer_rates`` (issue #6).

Over random shapes, dtypes, radii, masks/ROIs and NaN patterns the functions either return, or raise
``MollifierInputError`` (the documented exception; ``RunCancelled`` cannot occur without a ``cancel``). When they
return, NaN appears only where it is documented:

* ``derivatives``: outside the mask, and at mask pixels whose local moment system is singular (too few mask
  pixels around them). Every pixel whose whole kernel window lies inside the mask and the image is finite; without
  a mask, finite input gives finite output everywhere.
* ``infer_rates``: outside the ROI, at non-finite pixels, where the closed form's divisor is ~0 or negative, and
  where the derivatives are undefined. With a euchromatin field bounded away from 0, every ROI pixel whose kernel
  window holds only valid pixels has a finite rate, residual and (with a bootstrap) a finite, non-negative
  uncertainty.

Example counts are small (the file runs in well under a minute on two cores); the seeds of the random arrays are
drawn by hypothesis, so failures shrink to a reproducible case.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import napari_mollifier as nm  # noqa: E402
from napari_mollifier.errors import MollifierInputError  # noqa: E402
from napari_mollifier.kernels import half_width  # noqa: E402

FUZZ = settings(deadline=None, max_examples=80, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
DTYPES = ["float64", "float32", "int16", "uint8", "bool"]


def _support(radius: float, ndim: int) -> np.ndarray:
    """Footprint of the kernel window: offsets with |x| < radius (where the kernels are non-zero)."""
    h = half_width(radius)
    axes = np.meshgrid(*([np.arange(-h, h + 1)] * ndim), indexing="ij")
    return sum(a.astype(float) ** 2 for a in axes) < radius**2


def _interior(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels whose whole kernel window lies inside ``mask`` and inside the image."""
    return ndimage.binary_erosion(mask, structure=_support(radius, mask.ndim), border_value=0)


def _field(rng, shape, dtype):
    if dtype == "bool":
        return rng.random(shape) > 0.5
    if dtype in ("int16", "uint8"):
        return rng.integers(0, 200, shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)


@FUZZ
@given(
    ndim=st.sampled_from([1, 2, 2, 3]),
    sizes=st.lists(st.integers(3, 24), min_size=3, max_size=3),
    dtype=st.sampled_from(DTYPES),
    radius_fraction=st.floats(0.0, 1.1),
    which=st.sampled_from([("u",), ("u", "lap"), ("x", "yy"), None, ("biharm",)]),
    mask_kind=st.sampled_from(["none", "random", "blob", "empty", "full"]),
    nan_kind=st.sampled_from(["none", "outside", "inside"]),
    seed=st.integers(0, 2**16),
)
def test_derivatives_fuzz(ndim, sizes, dtype, radius_fraction, which, mask_kind, nan_kind, seed):
    rng = np.random.default_rng(seed)
    shape = tuple(sizes[:ndim])
    radius = 1.0 + radius_fraction * (min(shape) - 1.0)  # mostly valid; below order + 1 and above the image too
    if ndim == 1 and which is not None and any(c in "yz" for k in which for c in k if k not in ("u", "lap",
                                                                                                   "biharm")):
        which = ("u", "xx")
    field = _field(rng, shape, dtype)
    mask = None
    if mask_kind == "random":
        mask = rng.random(shape) > 0.3
    elif mask_kind == "blob":
        mask = ndimage.binary_dilation(rng.random(shape) > 0.97, iterations=3) if min(shape) > 2 else \
            np.ones(shape, bool)
    elif mask_kind == "empty":
        mask = np.zeros(shape, bool)
    elif mask_kind == "full":
        mask = np.ones(shape, bool)
    if nan_kind != "none" and field.dtype.kind == "f":
        holes = rng.random(shape) > 0.8
        if nan_kind == "outside" and mask is not None:
            holes &= ~mask
        field = field.copy()
        field[holes] = np.nan
    before = field.copy()
    kwargs = {"which": which, "ndim": ndim, "mask": mask}
    try:
        out = nm.derivatives(field, radius, **kwargs)
    except MollifierInputError as exc:
        event(f"refused: {str(exc)[:40]}")
        return  # documented: radius out of range, empty mask, NaN inside the mask / without one...
    event("returned")
    np.testing.assert_array_equal(field, before)  # the input is never modified
    expected_dtype = np.float32 if dtype == "float32" else np.float64
    for key, value in out.items():
        assert value.shape == shape and value.dtype == expected_dtype, key
        if mask is None:
            assert np.isfinite(value).all(), key  # finite input (NaN would have raised), finite output
        else:
            assert np.isnan(value[~mask]).all(), key
            assert np.isfinite(value[_interior(mask, radius)]).all(), key


def _chromatin(rng, shape):
    """Smooth positive fields: phi_e in [0.3, 0.6], phi_h in [0.1, 0.4]."""
    def smooth(lo, hi):
        f = ndimage.gaussian_filter(rng.normal(size=shape), 3.0, mode="wrap")
        f = (f - f.min()) / (np.ptp(f) or 1.0)
        return lo + (hi - lo) * f

    return smooth(0.1, 0.4), smooth(0.3, 0.6)


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(
    ny=st.integers(2, 40).filter(lambda n: n != 3),
    nx=st.integers(6, 40),
    dtype=st.sampled_from(["float64", "float32", "uint16"]),
    radius=st.one_of(st.just("auto"), st.floats(0.04, 1.05)),
    roi_kind=st.sampled_from(["none", "box", "box", "labels", "empty", "speck"]),
    roi_mode=st.sampled_from(["image", "image", "isolate"]),
    nan_kind=st.sampled_from(["none", "none", "pixels", "block", "all-in-roi"]),
    n_bootstrap=st.sampled_from([0, 2]),
    seed=st.integers(0, 2**16),
)
def test_infer_rates_fuzz(ny, nx, dtype, radius, roi_kind, roi_mode, nan_kind, n_bootstrap, seed):
    rng = np.random.default_rng(seed)
    shape = (ny, nx)
    if radius != "auto":  # a fraction of the image: mostly valid, sometimes below 3 px or above the image
        radius = 2.0 + radius * (min(shape) - 2.0)
    phi_h, phi_e = _chromatin(rng, shape)
    if dtype == "uint16":
        phi_h, phi_e = (np.round(1000 * phi_h).astype(np.uint16), np.round(1000 * phi_e).astype(np.uint16))
    else:
        phi_h, phi_e = phi_h.astype(dtype), phi_e.astype(dtype)
    roi = None
    if roi_kind == "box":
        roi = np.zeros(shape, bool)
        roi[ny // 4: max(ny // 4 + 1, 3 * ny // 4), nx // 4: max(nx // 4 + 1, 3 * nx // 4)] = True
    elif roi_kind == "labels":
        roi = np.zeros(shape, np.int32)
        roi[: ny // 2, :] = 1
        roi[ny // 2:, :] = 2
    elif roi_kind == "empty":
        roi = np.zeros(shape, bool)
    elif roi_kind == "speck":
        roi = np.zeros(shape, bool)
        roi[ny // 2, nx // 2] = True
    if nan_kind != "none" and phi_h.dtype.kind == "f":
        phi_h = phi_h.copy()
        if nan_kind == "pixels":
            phi_h[rng.random(shape) > 0.95] = np.nan
        elif nan_kind == "block":
            phi_h[ny // 3: ny // 3 + 3, nx // 3: nx // 3 + 3] = np.nan
        else:
            phi_h[(roi > 0) if roi is not None else np.ones(shape, bool)] = np.nan
    fields = {"phi_h": phi_h, "phi_e": phi_e}
    before = {k: v.copy() for k, v in fields.items()}
    try:
        res = nm.infer_rates(fields, pixel_size=0.05, radius=radius, roi=roi, roi_mode=roi_mode,
                             n_bootstrap=n_bootstrap, params={"l2": 0.01})
    except MollifierInputError as exc:
        event(f"refused: {str(exc)[:40]}")
        return
    event("returned")
    for k in fields:
        np.testing.assert_array_equal(fields[k], before[k])
    valid = np.isfinite(np.asarray(phi_h, float)) & np.isfinite(np.asarray(phi_e, float))
    inside = (np.ones(shape, bool) if roi is None else np.asarray(roi) > 0) & valid
    np.testing.assert_array_equal(res.labels > 0, inside)
    for name in ("rate", "uncertainty", "residual"):
        assert np.isnan(getattr(res, name)[~inside]).all(), name  # NaN outside the ROI and at bad pixels
    for lab in np.unique(res.labels[res.labels > 0]):
        region = res.labels == lab
        r = res.roi_stats[[s["label"] for s in res.roi_stats].index(lab)]["radius"]
        deriv_mask = region if roi_mode == "isolate" else valid
        # the residual smooths the rate again with the same kernel, so it needs twice the window
        core = region & _interior(deriv_mask, r)
        assert np.isfinite(res.rate[core]).all()
        core2 = region & _interior(deriv_mask, 2 * r - 1)
        assert np.isfinite(res.residual[core2]).all()
        if n_bootstrap:
            sigma = res.uncertainty[core]
            assert np.isfinite(sigma).all() and (sigma >= 0).all()
        finite = res.rate[region][np.isfinite(res.rate[region])]
        assert np.all(np.abs(finite) < 1e6)  # no overflow-sized values from a near-zero divisor
