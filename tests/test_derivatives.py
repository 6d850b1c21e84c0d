"""Mollified derivatives against ground truth: polynomials, trigonometric fields, spectral derivatives."""

import math
from unittest.mock import patch

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage

from napari_mollifier import Mollifier, MollifierInputError, derivatives
from napari_mollifier.kernels import half_width, multi_indices
from napari_mollifier.mollifier import default_keys, key_terms

LETTERS = {1: "x", 2: "yx", 3: "zyx"}


def _random_poly(ndim, degree, rng):
    return {b: rng.normal() for b in multi_indices(ndim, degree)}


def _eval_poly(poly, coords, alpha=None):
    """Value of the polynomial (or of its ``alpha`` derivative) at coordinates (array-axis order)."""
    total = np.zeros_like(coords[0])
    for exps, coef in poly.items():
        term = np.full_like(coords[0], coef)
        for c, e, a in zip(coords, exps, alpha or (0,) * len(exps), strict=True):
            if a > e:
                term = term * 0
                break
            term = term * (math.factorial(e) / math.factorial(e - a)) * c ** (e - a)
        total = total + term
    return total


def _exact_key(poly, coords, key, ndim):
    return sum(c * _eval_poly(poly, coords, alpha) for alpha, c in key_terms(key, ndim))


def _coords(shape, spacing):
    axes = [(np.arange(n) - n / 2) * h for n, h in zip(shape, spacing, strict=True)]
    return list(np.meshgrid(*axes, indexing="ij"))


def _order(key, ndim):
    return max(sum(a) for a, _ in key_terms(key, ndim))


@pytest.mark.parametrize("kernel", ["poly", "bump", "poly5", "sep"])
@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.3, 0.7)])
@pytest.mark.parametrize("key", default_keys(2) + ("xxx", "xxyy", "yyyy", "xyyy"))
def test_polynomial_exactness_2d(kernel, spacing, key):
    """The n-th mollified derivative of a polynomial of degree n + 1 is exact (interior, any radius)."""
    rng = np.random.default_rng(abs(hash((kernel, spacing, key))) % 2**32)
    order = _order(key, 2)
    shape = (40, 44)
    coords = _coords(shape, spacing)
    poly = _random_poly(2, order + 1, rng)
    field = _eval_poly(poly, coords)
    for radius in (order + 1, order + 2.5, 9):
        out = derivatives(field, radius, pixel_size=spacing, kernel=kernel, which=(key,))[key]
        h = half_width(radius)
        inner = (slice(h, -h or None), slice(h, -h or None))
        want = _exact_key(poly, coords, key, 2)[inner]
        scale = max(1.0, np.abs(want).max(), np.abs(field).max() / min(spacing) ** order)
        np.testing.assert_allclose(out[inner], want, atol=1e-9 * scale, err_msg=f"radius {radius}")


@pytest.mark.parametrize("ndim,spacing", [(1, (0.25,)), (3, (2.0, 0.5, 0.5))])
def test_polynomial_exactness_1d_3d(ndim, spacing):
    rng = np.random.default_rng(ndim)
    shape = {1: (64,), 3: (20, 22, 24)}[ndim]
    coords = _coords(shape, spacing)
    keys = default_keys(ndim) + ({1: ("xxx", "xxxx"), 3: ("zzzz", "xxzz", "xyz")}[ndim])
    for key in keys:
        order = _order(key, ndim)
        poly = _random_poly(ndim, order + 1, rng)
        field = _eval_poly(poly, coords)
        radius = order + 2
        out = derivatives(field, radius, pixel_size=spacing, which=(key,))[key]
        h = half_width(radius)
        inner = tuple(slice(h, -h) for _ in range(ndim))
        want = _exact_key(poly, coords, key, ndim)[inner]
        scale = max(1.0, np.abs(field).max() / min(spacing) ** order)
        np.testing.assert_allclose(out[inner], want, atol=1e-9 * scale, err_msg=key)


def _trig(n, length=2 * np.pi):
    h = length / n
    y, x = np.meshgrid(np.arange(n) * h, np.arange(n) * h, indexing="ij")
    f = np.sin(2 * x) * np.cos(3 * y)
    exact = {
        "x": 2 * np.cos(2 * x) * np.cos(3 * y),
        "yy": -9 * f,
        "xy": -6 * np.cos(2 * x) * np.sin(3 * y),
        "lap": -13 * f,
        "biharm": 169 * f,
    }
    return f, exact, h


def test_convergence_on_trigonometric_field():
    """Error falls like (R h)^2 as the grid is refined at a fixed radius in pixels."""
    errors = []
    for n in (64, 128, 256):
        f, exact, h = _trig(n)
        out = derivatives(f, 6, pixel_size=h, boundary="periodic", which=tuple(exact))
        errors.append({k: np.abs(out[k] - v).max() / np.abs(v).max() for k, v in exact.items()})
    for key in errors[0]:
        rates = [math.log2(errors[i][key] / errors[i + 1][key]) for i in range(2)]
        assert min(rates) > 1.8, (key, rates)
        assert errors[-1][key] < 1e-2, (key, errors[-1][key])  # measured 7e-3 worst (x)


def test_periodic_matches_spectral_derivative():
    """Periodic mode == spectral derivative of the field multiplied by the kernel's transfer function."""
    n, length = 192, 10.0
    h = length / n
    rng = np.random.default_rng(0)
    spec = np.zeros((n, n), complex)
    spec[:4, :4] = rng.normal(size=(4, 4)) + 1j * rng.normal(size=(4, 4))
    f = np.fft.ifft2(spec).real * n
    out = derivatives(f, 6, pixel_size=h, boundary="periodic", which=("u", "x", "yy", "xy", "lap", "biharm"))
    k = 2 * np.pi * np.fft.fftfreq(n, d=h)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    symbols = {"u": 1, "x": 1j * kx, "yy": -(ky**2), "xy": -kx * ky, "lap": -(kx**2 + ky**2),
               "biharm": (kx**2 + ky**2) ** 2}
    # wavenumbers <= 3 * 2 pi / L: smoothing bias ~ (R h k)^2 / 40 ~ 1 %
    for key, sym in symbols.items():
        spectral = np.fft.ifft2(np.fft.fft2(f) * sym).real
        err = np.abs(out[key] - spectral).max() / np.abs(spectral).max()
        assert err < 0.02, (key, err)
    # and exactly: the output is the correlation with the key kernel (wrap-around correct)
    wk = np.zeros((n, n))
    from napari_mollifier.mollifier import _make_plan

    plan = _make_plan(6, h, "poly", "periodic", ("lap",), 2, "auto", (n, n))
    kern = plan.key_kernels(torch.float64, "cpu").numpy()[0]
    hw = half_width(6)
    for dy in range(-hw, hw + 1):
        for dx in range(-hw, hw + 1):
            wk += kern[dy + hw, dx + hw] * np.roll(f, (-dy, -dx), axis=(0, 1))
    np.testing.assert_allclose(out["lap"], wk, atol=1e-9 * np.abs(wk).max())


def _irregular_mask(shape, seed=0):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    mask = (yy - shape[0] * 0.45) ** 2 / 16**2 + (xx - shape[1] * 0.5) ** 2 / 21**2 < 1
    mask |= (yy - 12) ** 2 + (xx - 15) ** 2 < 9**2
    mask &= ~((yy - 30) ** 2 + (xx - 38) ** 2 < 4**2)  # a hole
    return mask


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("kernel", ["poly", "bump"])
def test_mask_mode_exact_up_to_irregular_edge(method, kernel):
    shape = (56, 64)
    mask = _irregular_mask(shape)
    spacing = (0.4, 0.5)
    coords = _coords(shape, spacing)
    rng = np.random.default_rng(1)
    field_outside = rng.normal(size=shape) * 1e3  # garbage outside the mask must not leak in
    for key in ("u", "x", "y", "xx", "xy", "lap", "biharm"):
        order = _order(key, 2)
        poly = _random_poly(2, order + 1, rng)
        field = np.where(mask, _eval_poly(poly, coords), field_outside)
        field[~mask & (rng.random(shape) < 0.1)] = np.nan  # NaN outside the mask is allowed
        out = derivatives(field, order + 3, pixel_size=spacing, mask=mask, which=(key,), kernel=kernel,
                          method=method)[key]
        want = _exact_key(poly, coords, key, 2)
        assert np.isnan(out[~mask]).all()
        finite = np.isfinite(out) & mask
        assert finite.sum() >= 0.97 * mask.sum(), (key, mask.sum() - finite.sum())
        scale = max(1.0, np.abs(want[mask]).max())
        np.testing.assert_allclose(out[finite], want[finite], atol=1e-7 * scale, err_msg=key)


def test_mask_all_true_is_edge_corrected_image():
    """A full mask treats the image border like a mask edge: exact on polynomials everywhere."""
    coords = _coords((40, 40), (1, 1))
    f = coords[1] ** 3 - 2 * coords[0] ** 2 * coords[1]
    out = derivatives(f, 6, mask=np.ones((40, 40), bool), which=("xx", "lap"))
    np.testing.assert_allclose(out["xx"], 6 * coords[1], atol=1e-8)
    np.testing.assert_allclose(out["lap"], 6 * coords[1] - 4 * coords[1], atol=1e-8)


@pytest.mark.parametrize("boundary", ["reflect", "replicate", "periodic", "zeros"])
def test_direct_equals_fft(boundary):
    rng = np.random.default_rng(2)
    f = rng.normal(size=(3, 50, 47))
    a = derivatives(f, 6.5, pixel_size=(0.5, 2.0), boundary=boundary, method="direct")
    b = derivatives(f, 6.5, pixel_size=(0.5, 2.0), boundary=boundary, method="fft")
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-10 * max(1, np.abs(a[key]).max()), err_msg=key)
    f32 = torch.tensor(f, dtype=torch.float32)
    a = derivatives(f32, 6.5, boundary=boundary, method="direct")
    b = derivatives(f32, 6.5, boundary=boundary, method="fft")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-4 * float(a[key].abs().max()), rtol=0)


def test_direct_equals_fft_masked_3d():
    rng = np.random.default_rng(3)
    f = rng.normal(size=(14, 16, 18))
    mask = np.zeros(f.shape, bool)
    mask[2:13, 3:15, 1:17] = True
    a = derivatives(f, 3, ndim=3, mask=mask, which=("u", "z", "lap"), method="direct")
    b = derivatives(f, 3, ndim=3, mask=mask, which=("u", "z", "lap"), method="fft")
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-8 * np.nanmax(np.abs(a[key])), err_msg=key)


def _blobs(shape, centres, radius):
    """Discs (balls in 3-D) of ``radius`` px around ``centres``."""
    grid = np.indices(shape)
    return np.any([sum((g - x) ** 2 for g, x in zip(grid, c, strict=True)) < radius**2 for c in centres], axis=0)


@pytest.mark.parametrize("method", ["fft", "direct"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_edge_values_by_boxes_equal_the_whole_image(monkeypatch, method, ndim):
    """Mask-edge sums read from one box per group of edge pixels (blobs far apart, one at the image border) equal
    the whole-image correlation; the boxes are used, one per blob."""
    from napari_mollifier import masked

    shape = (90, 110) if ndim == 2 else (36, 40, 44)
    half = 4
    centres = [(18, 20), (70, 85), (5, 100)] if ndim == 2 else [(9, 10, 10), (27, 30, 34)]
    mask = _blobs(shape, centres, 8)
    rng = np.random.default_rng(0)
    src = torch.as_tensor(np.where(mask, rng.normal(size=(2,) + shape), 0.0))[:, None]
    inner = ndimage.binary_erosion(mask, iterations=3)
    pos = torch.as_tensor(np.flatnonzero(mask & ~inner))
    basis = torch.as_tensor(rng.normal(size=((2 * half + 1) ** ndim, 5)))
    monkeypatch.setattr(masked, "_use_windows", lambda *a: False)
    boxes = masked._edge_boxes(pos.numpy(), shape, half)
    assert boxes is not None and len(boxes) == len(centres)
    by_boxes = masked._edge_values(src, basis, pos, shape, half, method)
    monkeypatch.setattr(masked, "_edge_boxes", lambda *a: None)
    whole = masked._edge_values(src, basis, pos, shape, half, method)
    assert by_boxes.shape == whole.shape == (2, pos.numel(), 5)
    np.testing.assert_allclose(by_boxes.numpy(), whole.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("ndim", [2, 3])
def test_field_spectrum_by_boxes_equals_the_whole_image_where_read(ndim):
    """A FieldSpectrum told which pixels will be read transforms boxes around them only: its correlations equal
    the whole-image ones there (blobs far apart, one at the image border), for every half-width up to max_half."""
    from napari_mollifier import masked

    shape = (96, 120) if ndim == 2 else (40, 44, 48)
    centres = [(20, 22), (70, 90), (6, 112)] if ndim == 2 else [(10, 10, 11), (29, 32, 36)]
    where = _blobs(shape, centres, 7)
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.normal(size=(2, 1) + shape))
    max_half = 6
    assert masked._boxes(where, max_half) is not None
    boxed = masked.FieldSpectrum(x, max_half, where)
    whole = masked.FieldSpectrum(x, max_half)
    assert boxed.boxes is not None and whole.boxes is None
    for half in (2, max_half):
        weight = torch.as_tensor(rng.normal(size=(3,) + (2 * half + 1,) * ndim))
        a, b = boxed.correlate(weight), whole.correlate(weight)
        assert a.shape == b.shape == (2, 3) + shape
        np.testing.assert_allclose(a.numpy()[..., where], b.numpy()[..., where], rtol=1e-10, atol=1e-10)


@pytest.mark.slow
def test_gradcheck_float64():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 9, 10, dtype=torch.float64, requires_grad=True)
    layer = Mollifier(radius=3, which=("u", "x", "lap"))

    def fn(t):
        out = layer(t)
        return out["u"], out["x"], out["lap"]

    assert torch.autograd.gradcheck(fn, (x,))
    mask = torch.ones(9, 10, dtype=torch.bool)
    mask[0:3, 0:4] = False

    def fn_masked(t):
        out = derivatives(t[0, 0], 3, mask=mask, which=("u", "xy"))
        return torch.nan_to_num(out["u"]), torch.nan_to_num(out["xy"])

    assert torch.autograd.gradcheck(fn_masked, (x,))
    big = torch.randn(1, 1, 10, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda t: derivatives(t, 5, which=("biharm",), method="fft")["biharm"], (big,)
    )


def test_network_trains_through_layer():
    """Gradients reach a parameter upstream of the layer: fit g so that lap(g * eta) matches a target."""
    torch.manual_seed(0)
    target = derivatives(torch.randn(1, 1, 24, 24, dtype=torch.float64), 4, which=("lap",))["lap"]
    g = torch.zeros(1, 1, 24, 24, dtype=torch.float64, requires_grad=True)
    layer = Mollifier(radius=4, which=("lap",)).to(torch.float64)
    opt = torch.optim.Adam([g], lr=0.1)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = ((layer(g)["lap"] - target) ** 2).mean()
        loss.backward()
        first = first or float(loss)
        opt.step()
    assert float(loss) < 0.1 * first


def test_module_matches_function_and_shapes():
    rng = np.random.default_rng(4)
    f = rng.normal(size=(2, 3, 30, 31))
    layer = Mollifier(radius=5, pixel_size=(0.5, 0.25)).to(torch.float64)
    out = layer(torch.tensor(f))
    ref = derivatives(f, 5, pixel_size=(0.5, 0.25))
    assert set(out) == set(ref) == set(default_keys(2))
    for key in ref:
        assert tuple(out[key].shape) == f.shape
        np.testing.assert_allclose(out[key].numpy(), ref[key], atol=1e-12 * max(1, np.abs(ref[key]).max()))


def test_types_and_dtypes_preserved():
    f = np.random.default_rng(5).normal(size=(20, 20)).astype(np.float32)
    out = derivatives(f, 4, which=("u",))
    assert isinstance(out["u"], np.ndarray) and out["u"].dtype == np.float32
    t = torch.tensor(f)
    out = derivatives(t, 4, which=("u",))
    assert isinstance(out["u"], torch.Tensor) and out["u"].dtype == torch.float32


def test_integer_and_bool_inputs_are_converted():
    f = np.arange(400).reshape(20, 20) % 7
    ref = derivatives(f.astype(np.float64), 4, which=("lap",))["lap"]
    np.testing.assert_allclose(derivatives(f.astype(np.uint8), 4, which=("lap",))["lap"], ref)
    np.testing.assert_allclose(derivatives(torch.tensor(f), 4, which=("lap",))["lap"].numpy(), ref, rtol=1e-5,
                               atol=1e-5)
    assert derivatives(f > 3, 4, which=("u",))["u"].dtype == np.float64


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"field": np.full((20, 20), np.nan)}, "NaN"),
        ({"field": np.where(np.eye(20) > 0, np.inf, 0.0)}, "NaN/inf"),
        ({"radius": 2, "which": ("lap",)}, "too small"),
        ({"radius": 4, "which": ("biharm",)}, "too small"),
        ({"radius": 25}, "larger than the image"),
        ({"field": np.zeros(20), "ndim": 2}, "dimension"),
        ({"mask": np.zeros((20, 20), bool)}, "empty"),
        ({"mask": np.ones((10, 10), bool)}, "mask shape"),
        ({"which": ("xq",)}, "unknown derivative key"),
        ({"which": ("xxxxx",)}, "maximum is 4"),
        ({"spacing": (1.0, -1.0)}, "positive"),
        ({"spacing": [[1.0, 2.0], [3.0, 4.0]]}, "one per axis"),
        ({"boundary": "mirror"}, "unknown boundary"),
        ({"kernel": "gauss"}, "unknown kernel"),
        ({"field": np.zeros((20, 20), complex)}, "real"),
        ({"ndim": 4}, "1-D, 2-D and 3-D"),
    ],
)
def test_bad_input_raises_clear_value_error(kwargs, match):
    args = {"field": np.zeros((20, 20)), "radius": 5}
    args.update(kwargs)
    with pytest.raises(MollifierInputError, match=match):
        derivatives(**args)


def test_nan_inside_mask_is_refused_but_outside_is_fine():
    f = np.zeros((20, 20))
    f[0, 0] = np.nan
    mask = np.ones((20, 20), bool)
    with pytest.raises(ValueError, match="inside the mask"):
        derivatives(f, 3, mask=mask, which=("u",))
    mask[:3, :3] = False
    out = derivatives(f, 3, mask=mask, which=("u",))["u"]
    assert np.isfinite(out[mask]).all() and np.allclose(out[mask], 0)


def test_isolated_mask_pixels_are_nan_not_garbage():
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    mask[28, 28] = True  # an isolated pixel: no 2-D fit possible
    f = np.ones((30, 30))
    out = derivatives(f, 4, mask=mask, which=("x",))["x"]
    assert np.isnan(out[28, 28])
    np.testing.assert_allclose(out[5:25, 5:25], 0, atol=1e-10)


small_fields = hnp.arrays(np.float64, st.tuples(st.integers(12, 24), st.integers(12, 24)),
                          elements=st.floats(-100, 100, allow_nan=False, width=64))


@settings(max_examples=25, deadline=None)
@given(f=small_fields, a=st.floats(-3, 3), b=st.floats(-3, 3), radius=st.sampled_from([5, 6.5, 8]),
       boundary=st.sampled_from(["reflect", "replicate", "periodic", "zeros"]))
def test_linearity_property(f, a, b, radius, boundary):
    g = np.flipud(f).copy()
    keys = ("u", "x", "lap", "biharm")
    lhs = derivatives(a * f + b * g, radius, boundary=boundary, which=keys)
    df, dg = derivatives(f, radius, boundary=boundary, which=keys), derivatives(g, radius, boundary=boundary,
                                                                                  which=keys)
    for key in keys:
        scale = 1 + np.abs(df[key]).max() + np.abs(dg[key]).max()
        np.testing.assert_allclose(lhs[key], a * df[key] + b * dg[key], atol=1e-9 * scale * (1 + abs(a) + abs(b)))


@settings(max_examples=25, deadline=None)
@given(f=small_fields, shift=st.tuples(st.integers(-6, 6), st.integers(-6, 6)), radius=st.sampled_from([5, 7]))
def test_translation_equivariance_periodic(f, shift, radius):
    keys = ("u", "y", "xy", "lap", "biharm")
    base = derivatives(f, radius, boundary="periodic", which=keys)
    moved = derivatives(np.roll(f, shift, axis=(0, 1)), radius, boundary="periodic", which=keys)
    for key in keys:
        np.testing.assert_allclose(moved[key], np.roll(base[key], shift, axis=(0, 1)),
                                   atol=1e-9 * (1 + np.abs(base[key]).max()))


@settings(max_examples=20, deadline=None)
@given(c=st.floats(-1e3, 1e3), radius=st.floats(5, 9), boundary=st.sampled_from(["reflect", "replicate", "periodic"]))
def test_constant_field_property(c, radius, boundary):
    out = derivatives(np.full((20, 22), c), radius, boundary=boundary)
    np.testing.assert_allclose(out["u"], c, atol=1e-10 * (1 + abs(c)))
    for key in set(out) - {"u"}:
        np.testing.assert_allclose(out[key], 0, atol=1e-9 * (1 + abs(c)))


def test_where_limits_mask_mode_output_without_changing_it():
    rng = np.random.default_rng(9)
    f = rng.normal(size=(48, 50))
    mask = np.ones(f.shape, bool)
    where = np.zeros(f.shape, bool)
    where[10:30, 5:45] = True
    full = derivatives(f, 6, mask=mask, which=("u", "lap"))
    part = derivatives(f, 6, mask=mask, which=("u", "lap"), where=where)
    for key in full:
        np.testing.assert_allclose(part[key][where], full[key][where], rtol=1e-12, atol=1e-12)
        assert np.isnan(part[key][~where]).all()
    with pytest.raises(MollifierInputError, match="needs a `mask`"):
        derivatives(f, 6, where=where)


def test_mask_edge_windows_backward_saves_no_index():
    """The mask-mode edge windows: same values and gradient as plain indexing, and autograd keeps the two index
    vectors, not the (edges x window) int64 index (it was most of the mask-mode share of a network step's graph)."""
    from napari_mollifier.masked import _gather_windows

    flat = torch.randn(2, 400, dtype=torch.float64, requires_grad=True)
    centre = torch.tensor([30, 31, 31, 200, 370])
    offsets = torch.arange(-25, 26)
    assert torch.equal(_gather_windows(flat, centre, offsets), flat[:, centre[:, None] + offsets[None]])
    assert torch.autograd.gradcheck(lambda f: _gather_windows(f, centre, offsets), (flat,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (saved.append(t.numel()), t)[1], lambda t: t):
        _gather_windows(flat, centre, offsets).sum().backward()
    assert max(saved) <= offsets.numel()  # never centre.numel() * offsets.numel()


_SEP_KEYS = ("u", "x", "y", "xx", "yy", "xy", "lap", "biharm", "xxyy", "xyy", "yyyy")


@settings(max_examples=30, deadline=None)
@given(height=st.integers(20, 90), width=st.integers(20, 150), batch=st.integers(1, 2),
       radius=st.sampled_from([5, 6.5, 9, 14, 20]), keys=st.sets(st.sampled_from(_SEP_KEYS), min_size=1),
       boundary=st.sampled_from(["reflect", "periodic", "zeros"]), double=st.booleans(),
       seed=st.integers(0, 2**16))
def test_separable_matrix_products_equal_the_grouped_convolutions(height, width, batch, radius, keys, boundary,
                                                                   double, seed):
    """The "sep" stack of a 2-D CPU field by blocked matrix products (napari_mollifier.separable) equals the 1-D
    grouped convolutions that autograd goes through, for any shape (blocks and row chunks that do not divide it),
    batch, key set (terms shared between keys), boundary and dtype."""
    from napari_mollifier import separable

    rng = np.random.default_rng(seed)
    dtype = torch.float64 if double else torch.float32
    field = torch.as_tensor(rng.standard_normal((batch, height, width)), dtype=dtype)
    which = tuple(sorted(keys))
    kw = dict(kernel="sep", boundary=boundary, which=which, pixel_size=(0.5, 1.5))
    with patch.object(separable, "_CHUNK_BYTES", 16 * 4 * 200), patch.object(separable, "_BLOCK", 24):
        fast = derivatives(field, radius, **kw)
    slow = derivatives(field.clone().requires_grad_(True), radius, **kw)
    tol = 1e-12 if double else 2e-6
    for key in which:
        want = slow[key].detach()
        assert fast[key].dtype == dtype and fast[key].shape == field.shape
        np.testing.assert_allclose(fast[key], want, atol=tol * float(want.abs().max()), err_msg=key)


def test_separable_matrix_products_in_mask_mode_and_under_forward_autograd():
    """Mask mode (edge pixels re-solved, interior from the products) equals the grouped-convolution path; a
    forward-mode dual tensor is not sent to the products (they write with out=) and its tangent is exact."""
    from torch.autograd import forward_ad as fwad

    rng = np.random.default_rng(4)
    field = torch.as_tensor(rng.standard_normal((70, 90)))
    yy, xx = np.mgrid[:70, :90]
    mask = (yy - 35) ** 2 / 30**2 + (xx - 45) ** 2 / 40**2 < 1
    kw = dict(kernel="sep", mask=mask, which=("u", "lap", "biharm", "xy"))
    for radius in (5, 22):  # 22: a window the grouped convolutions leave to the FFT, the products take
        fast = derivatives(field, radius, **kw)
        slow = derivatives(field.clone().requires_grad_(True), radius, **kw)
        for key in kw["which"]:
            want = slow[key].detach().numpy()
            np.testing.assert_allclose(fast[key].numpy(), want, atol=1e-10 * np.nanmax(np.abs(want)), err_msg=key)
    tangent = torch.as_tensor(rng.standard_normal((70, 90)))
    with fwad.dual_level():
        out = derivatives(fwad.make_dual(field, tangent), 6, kernel="sep", which=("lap",))["lap"]
        got = fwad.unpack_dual(out).tangent
    want = derivatives(tangent, 6, kernel="sep", which=("lap",))["lap"]  # the layer is linear
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-12 * float(want.abs().max()))


def test_large_outputs_in_huge_pages_hold_their_values_and_are_reused_only_when_free():
    """``empty_large``: a large tensor is a 2 MiB-aligned view of its own memory map (huge pages advised), writable;
    a numpy array made from it keeps the memory alive after the tensor is gone, and the map is handed out again
    only once nothing refers to it (then without new page faults); small tensors are ordinary."""
    import mmap

    from napari_mollifier import hugepages
    from napari_mollifier.hugepages import empty_large

    shape = (3, 1024, 1024)  # 12 MiB
    big = empty_large(shape, torch.float32)
    assert big.shape == shape and big.is_contiguous()
    huge = hasattr(mmap, "MADV_HUGEPAGE")
    if huge:
        assert big.data_ptr() % (2 * 2**20) == 0
    big.copy_(torch.arange(big.numel(), dtype=torch.float32).reshape(shape))
    arr = big[1:].numpy()  # a view's array
    ptr = big.data_ptr()
    del big
    other = empty_large(shape, torch.float32)  # the first map is still held by ``arr``: a new one
    other.fill_(-1.0)
    assert other.data_ptr() != ptr
    assert arr[1, 1023, 1023] == 3 * 2**20 - 1 and arr[0, 0, 1] == 2**20 + 1
    del arr
    again = empty_large(shape, torch.float32)  # now free: reused
    if huge:
        assert again.data_ptr() == ptr
    assert other[0, 0, 0] == -1.0  # the live one untouched
    small = empty_large((10, 10), torch.float64)
    assert small.dtype == torch.float64 and small.shape == (10, 10)
    assert hugepages.release() >= 2 * 12 * 2**20
