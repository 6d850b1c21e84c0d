"""One entry point and one input step for untiled and tiled solves (issue #14, item 1).

``infer_rates(..., tile=None | int | "auto")``: the tiled path reuses the untiled path's checks, density split,
label handling, noise model, coefficients and radius rule, so the same input gives the same errors, the same
radius and the same maps whichever path runs it.
"""

from __future__ import annotations

import numpy as np
import pytest

import napari_mollifier as nm
from napari_mollifier import tiling
from napari_mollifier.errors import MollifierInputError
from napari_mollifier.simulate import smooth_random_field

PARAMS = {"l2": 0.0234}
N = 96


def _fields(n: int = N, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    phi_e = smooth_random_field((n, n), 6, 0.2, 0.5, seed=seed + 1) + 0.005 * rng.standard_normal((n, n))
    phi_h = smooth_random_field((n, n), 6, 0.1, 0.4, seed=seed + 2) + 0.005 * rng.standard_normal((n, n))
    return {"phi_h": phi_h, "phi_e": phi_e}


def _with_nan(f):
    f = dict(f)
    f["phi_e"] = f["phi_e"].copy()
    f["phi_e"][3, 4] = np.nan
    return f


def _constant(f):
    return dict(f, phi_h=np.full_like(f["phi_h"], 0.3))


BAD = {
    "unknown noise": ({}, dict(noise="bogus")),
    "negative noise": ({}, dict(noise=-1.0)),
    "radius word": ({}, dict(radius="big")),
    "radius below the model's order": ({}, dict(radius=1)),
    "radius above the image": ({}, dict(radius=500)),
    "unknown uncertainty": ({}, dict(uncertainty="guess")),
    "unknown radius rule": ({}, dict(radius_rule="eyeball")),
    "roi of another shape": ({}, dict(roi=np.ones((10, 10), bool))),
    "empty roi": ({}, dict(roi=np.zeros((N, N), bool))),
    "NaN pixels without mask mode": ("nan", dict(boundary="reflect")),
    "negative bootstrap count": ({}, dict(n_bootstrap=-5)),
    "negative seed": ({}, dict(seed=-1)),
    "zero pixel size": ({}, dict(pixel_size=0.0)),
    "NaN coefficient": ({}, dict(params={"l2": float("nan")})),
    "constant field": ("constant", {}),
    "missing field": ("missing", {}),
    "unknown model": ({}, dict(model="no-such-model")),
}


def _input(kind):
    f = _fields()
    if kind == "nan":
        return _with_nan(f)
    if kind == "constant":
        return _constant(f)
    if kind == "missing":
        return {"phi_h": f["phi_h"]}
    return f


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_the_same_error_on_both_paths(case):
    kind, bad = BAD[case]
    kwargs = dict(params=PARAMS, pixel_size=0.02, device="cpu", uncertainty="none")
    kwargs.update(bad)
    messages = []
    for path in ({}, {"tile": 64}, {"tile": "auto"}):
        with pytest.raises(MollifierInputError) as err:
            nm.infer_rates(_input(kind), **kwargs, **path)
        messages.append(str(err.value))
    with pytest.raises(MollifierInputError) as err:
        tiling.infer_tiled(_input(kind), tile=64, **kwargs)
    messages.append(str(err.value))
    assert len(set(messages)) == 1, messages
    assert len(messages[0]) > 20  # says what is wrong and how to fix it


def test_same_radius_and_maps_untiled_and_tiled():
    """The auto radius, the rate, the residual and the propagated uncertainty agree on both paths (a 96 px image
    lies inside the central crop the tiled path chooses its radius on)."""
    f = _fields(seed=4)
    roi = np.zeros((N, N), bool)
    roi[10:86, 12:84] = True
    kwargs = dict(params=PARAMS, pixel_size=0.02, device="cpu", roi=roi)
    untiled = nm.infer_rates(f, **kwargs)
    tiled = nm.infer_rates(f, tile=48, **kwargs)
    wrapper = tiling.infer_tiled(f, tile=48, **kwargs)
    assert tiled.provenance["tiling"]["tiles"] > 1
    assert untiled.radius == tiled.radius == wrapper.radius
    assert untiled.provenance["noise_model"] == tiled.provenance["noise_model"]
    assert untiled.provenance["param_sources"] == tiled.provenance["param_sources"]
    for a, b in ((untiled.rate, tiled.rate), (untiled.residual, tiled.residual)):
        both = np.isfinite(a) & np.isfinite(b)
        assert both[roi].mean() > 0.99
        np.testing.assert_allclose(b[both], a[both], rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(tiled.rate, wrapper.rate)
    both = np.isfinite(untiled.uncertainty) & np.isfinite(tiled.uncertainty)
    np.testing.assert_allclose(tiled.uncertainty[both], untiled.uncertainty[both], rtol=1e-6)


def test_tile_argument_is_checked():
    with pytest.raises(MollifierInputError, match="tile"):
        nm.infer_rates(_fields(), params=PARAMS, pixel_size=0.02, tile="big")
    with pytest.raises(MollifierInputError, match="tile"):
        nm.infer_rates(_fields(), params=PARAMS, pixel_size=0.02, tile=0)


def test_auto_tile_stays_untiled_when_it_fits():
    f = _fields(64, seed=2)
    kwargs = dict(params=PARAMS, pixel_size=0.02, device="cpu", radius=4, uncertainty="none")
    auto = nm.infer_rates(f, tile="auto", **kwargs)
    plain = nm.infer_rates(f, **kwargs)
    assert "tiling" not in auto.provenance
    np.testing.assert_array_equal(auto.rate, plain.rate)
