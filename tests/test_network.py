"""Mollified-network rate inference (``napari_mollifier.methods``) against known ground truth.

The reference problem is the 4th-order chromatin phase-field model: an exact steady state
(:func:`chromatin_steady_state`) for a smooth known rate map (correlation length 16 px, well above the 6 px kernel
radius), with Gaussian noise of std 0.01 added to phi_h and phi_e, inside an elliptical mask.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from napari_mollifier.errors import MollifierInputError, RunCancelled
from napari_mollifier.methods import fit_network
from napari_mollifier.methods.base_models import FourierMLP, RBFGrid, SmallCNN
from napari_mollifier.models import get_model
from napari_mollifier.mollifier import derivatives
from napari_mollifier.simulate import chromatin_steady_state, smooth_random_field

MODEL = "chromatin-phase-field"
PIXEL = 0.2  # box units: sqrt(M a / 2) = 1.02 box = 5 px
RADIUS = 6.0


def _ellipse(n: int) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n]
    return ((yy - (n - 1) / 2) / (0.45 * n)) ** 2 + ((xx - (n - 1) / 2) / (0.42 * n)) ** 2 < 1


def _problem(n: int, seed: int = 0, noise: float = 0.01):
    shape = (n, n)
    phi_w = smooth_random_field(shape, 3, 0.2, 0.7, seed=1 + seed)
    rate = smooth_random_field(shape, 16, 0.5, 1.5, seed=2 + seed)
    st = chromatin_steady_state(phi_w, rate, PIXEL, MODEL)
    rng = np.random.default_rng(100 + seed)
    fields = {k: st[k] + noise * rng.standard_normal(shape) for k in ("phi_h", "phi_e")}
    return fields, rate, _ellipse(n)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These grids are small: one intra-op thread is faster than two, and much faster on a busy 2-core runner
    (OpenMP threads spin against other processes)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def problem():
    return _problem(64)


@pytest.fixture(scope="module")
def small():
    fields, rate, mask = _problem(32)
    return fields, rate, mask


def _pearson(estimate, truth, mask) -> float:
    ok = mask & np.isfinite(estimate)
    assert ok.sum() > 0.9 * mask.sum(), "the estimate is undefined on more than 10 % of the mask"
    return float(np.corrcoef(estimate[ok], truth[ok])[0, 1])


def _direct(fields, mask):
    """The separable closed form on the raw noisy fields, same kernel and radius, masked convolutions."""
    m = get_model(MODEL)
    p = m.params()
    derived = m.derived({k: torch.as_tensor(v) for k, v in fields.items()}, p)
    d = {k: derivatives(derived[k], RADIUS, pixel_size=PIXEL, mask=mask, which=keys) for k, keys in m.needs(2).items()}
    return m.rate(d, p).numpy()


@pytest.mark.slow  # in CI's full run; out of the development run (under 5 min, CONTRIBUTING)
def test_mollified_network_recovers_rate_and_beats_direct(problem):
    fields, truth, mask = problem
    out = fit_network(fields, MODEL, None, PIXEL, RADIUS, mask, iterations=300, seed=0)
    r_net = _pearson(out.rate, truth, mask)
    direct = _direct(fields, mask)
    r_direct = _pearson(direct, truth, mask)
    assert r_net >= 0.9, f"network r = {r_net:.3f} (direct {r_direct:.3f})"
    assert r_net >= r_direct, f"network r = {r_net:.3f} < direct r = {r_direct:.3f}"
    # also away from the mask edge (one kernel radius in), where the direct kernels are not one-sided
    inner = ndimage.binary_erosion(mask, iterations=int(RADIUS))
    r_net_in, r_direct_in = _pearson(out.rate, truth, inner), _pearson(direct, truth, inner)
    assert r_net_in >= r_direct_in, f"interior: network r = {r_net_in:.3f} < direct r = {r_direct_in:.3f}"
    # the fitted smoothed fields follow the data to about the noise level (0.01)
    for k in ("phi_h", "phi_e"):
        rms = np.sqrt(np.nanmean((out.smoothed[k] - fields[k])[mask] ** 2))
        assert rms < 0.02, (k, rms)
    assert np.all(np.isnan(out.rate[~mask]))
    assert np.isfinite(out.rate[mask]).all()
    assert np.isfinite(out.residual[mask]).all()
    assert out.loss_history[-1] < 0.2 * out.loss_history[0]
    assert out.iterations == 300 and len(out.loss_history) == 300
    assert out.peak_memory_bytes >= 0 and out.seconds > 0


def test_autodiff_baseline_runs_and_is_finite(small):
    fields, _, mask = small
    out = fit_network(fields, MODEL, None, PIXEL, 5, mask, derivatives_via="autodiff", iterations=2, seed=0,
                      measure_graph=True)
    assert np.isfinite(out.rate[mask]).all()
    assert np.isfinite(out.residual[mask]).all()
    assert all(np.isfinite(out.smoothed[k][mask]).all() for k in ("phi_h", "phi_e"))
    assert np.all(np.isfinite(out.loss_history))
    assert out.graph_bytes > 0
    with pytest.raises(MollifierInputError, match="base='mlp'"):
        fit_network(fields, MODEL, None, PIXEL, 5, mask, derivatives_via="autodiff", base="cnn", iterations=1)


def test_autodiff_derivatives_match_the_model_for_a_known_function():
    """The nested-autograd helper returns physical-unit derivatives (checked on u = x^2 y^2 / 4 + x^4 / 12)."""
    from napari_mollifier.methods.network import _autograd_keys

    coords = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    coords.requires_grad_(True)
    h, n = 0.5, 11  # physical x = (xn + 1) (n - 1) h / 2
    scale = [2.0 / ((n - 1) * h)] * 2
    y, x = [(coords[:, i] + 1) * (n - 1) * h / 2 for i in range(2)]
    f = x**2 * y**2 / 4 + x**4 / 12
    d = _autograd_keys(f, coords, ("u", "x", "lap", "biharm", "xxyy"), 2, scale)
    torch.testing.assert_close(d["x"], x * y**2 / 2 + x**3 / 3)
    torch.testing.assert_close(d["lap"], y**2 / 2 + x**2 + x**2 / 2)
    torch.testing.assert_close(d["xxyy"], torch.ones_like(x))
    torch.testing.assert_close(d["biharm"], 2 + 2 * torch.ones_like(x))


@pytest.mark.slow  # in CI's full run; out of the development run (under 5 min, CONTRIBUTING)
def test_progress_at_least_every_percent(small):
    fields, _, mask = small
    calls = []
    fit_network(fields, MODEL, None, PIXEL, RADIUS, mask, iterations=150,
                base="rbf", progress=lambda s, t, i: calls.append((s, t, i)))
    steps = [c[0] for c in calls]
    assert len(calls) >= 100
    assert steps[-1] == 150 and all(c[1] == 150 for c in calls)
    gaps = np.diff([0] + steps)
    assert gaps.max() <= 150 / 100 + 1e-9
    assert all("loss" in c[2] and np.isfinite(c[2]["loss"]) for c in calls)


def test_cancel_stops_within_one_iteration(small):
    fields, _, mask = small
    done = []
    state = {"n": 0}

    def cancel():
        state["n"] += 1
        return len(done) >= 3

    with pytest.raises(RunCancelled):
        fit_network(fields, MODEL, None, PIXEL, RADIUS, mask, iterations=200, cancel=cancel,
                    progress=lambda s, t, i: done.append(s))
    assert len(done) == 3  # the check before iteration 4 stopped it
    assert state["n"] == 4


@pytest.mark.parametrize("via", ["mollifier", "autodiff"])
def test_same_seed_gives_identical_outputs(small, via):
    fields, _, mask = small
    # autodiff through 4th derivatives costs seconds per step: check its determinism on the 2nd-order model
    model = "chromatin-balance" if via == "autodiff" else MODEL
    kwargs = dict(iterations=5 if via == "autodiff" else 20, seed=3, derivatives_via=via)
    radius = RADIUS
    a = fit_network(fields, model, None, PIXEL, radius, mask, **kwargs)
    b = fit_network(fields, model, None, PIXEL, radius, mask, **kwargs)
    np.testing.assert_array_equal(a.rate, b.rate)
    np.testing.assert_array_equal(a.residual, b.residual)
    for k in a.smoothed:
        np.testing.assert_array_equal(a.smoothed[k], b.smoothed[k])
    assert a.loss_history == b.loss_history
    c = fit_network(fields, model, None, PIXEL, radius, mask, **dict(kwargs, seed=4))
    assert not np.array_equal(a.rate, c.rate)


@pytest.mark.parametrize("base", ["mlp", "cnn", "rbf"])
@pytest.mark.parametrize("rate_head", [False, True])
def test_each_base_model_runs(small, base, rate_head):
    fields, truth, mask = small
    out = fit_network(fields, MODEL, None, PIXEL, RADIUS, mask, base=base, rate_head=rate_head, iterations=20)
    assert set(out.smoothed) == {"phi_h", "phi_e"}
    for arr in [out.rate, out.residual, *out.smoothed.values()]:
        assert arr.shape == truth.shape and arr.dtype == np.float64
        assert np.isfinite(arr[mask]).all() and np.isnan(arr[~mask]).all()
    assert out.settings["rate_head"] is rate_head
    assert out.loss_history[-1] < out.loss_history[0]


@pytest.mark.parametrize("boundary", ["mask", "reflect"])
def test_other_boundaries_run(small, boundary):
    fields, _, mask = small
    out = fit_network(fields, MODEL, None, PIXEL, RADIUS, mask, boundary=boundary, iterations=5)
    assert np.isfinite(out.rate[mask]).sum() > 0.9 * mask.sum()


def test_heat_rate_head_is_chosen_automatically():
    """lap(u) changes sign on a periodic grid, so the closed form is singular there: 'auto' picks the head."""
    from napari_mollifier.simulate import heat_steady_state

    n = 32
    rate = smooth_random_field((n, n), 10, 0.5, 1.5, seed=2)
    st = heat_steady_state(rate, smooth_random_field((n, n), 8, -1, 1, seed=5), 0.2)
    out = fit_network({"u": st["u"], "m": st["m"]}, "heat", None, 0.2, 5, None, base="rbf", iterations=20)
    assert out.settings["rate_head"] is True
    assert np.isfinite(out.rate).all()


def test_base_models_are_seeded_and_shaped():
    a = FourierMLP((10, 12), 2, pad=3, seed=1)
    b = FourierMLP((10, 12), 2, pad=3, seed=1)
    assert a().shape == (1, 2, 16, 18)
    torch.testing.assert_close(a(), b())
    assert RBFGrid((10, 12), 3, pad=2, seed=0)().shape == (1, 3, 14, 16)
    x = torch.randn(1, 2, 10, 12)
    cnn = SmallCNN(x, 2, pad=2)
    out = cnn()
    assert out.shape == (1, 2, 14, 16)
    torch.testing.assert_close(out[..., 2:-2, 2:-2], x)  # zero-initialised head: starts at the data


def test_input_errors(small):
    fields, _, mask = small
    with pytest.raises(MollifierInputError):
        fit_network(fields, MODEL, None, PIXEL, RADIUS, mask, base="transformer", iterations=1)
    with pytest.raises(MollifierInputError):
        fit_network({"phi_h": fields["phi_h"]}, MODEL, None, PIXEL, RADIUS, mask, iterations=1)
    with pytest.raises(MollifierInputError):
        fit_network(fields, MODEL, None, PIXEL, RADIUS, mask, derivatives_via="finite-differences", iterations=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda(small):
    fields, _, mask = small
    for via in ("mollifier", "autodiff"):
        out = fit_network(fields, MODEL, None, PIXEL, 5, mask, derivatives_via=via, iterations=5, device="cuda")
        assert out.device.startswith("cuda")
        assert np.isfinite(out.rate[mask]).all()
        assert out.peak_memory_bytes > 0 and out.memory_measure.startswith("cuda")


# --------------------------------------------------------------------------------------------- early stop, defaults
def test_early_stop_rule_on_a_known_loss_sequence():
    """The rule: after ``start``, stop once the best loss has not improved by more than ``rel_tol`` (relative)
    for ``patience`` steps."""
    from napari_mollifier.methods.network import EarlyStop

    losses = [100.0, 50.0, 40.0, 30.0, 20.0, 19.99, 19.995, 19.99, 19.999, 19.98]
    stop = EarlyStop(patience=3, rel_tol=1e-2, start=2)
    decisions = [stop.update(s, v) for s, v in enumerate(losses)]
    # best 20.0 at step 4; 19.99 etc. are < 1 % better, so steps 5, 6, 7 do not count: stop at step 7
    assert decisions == [False] * 7 + [True] + [True] * 2
    assert stop.best == 20.0 and stop.best_step == 4
    # before ``start`` nothing counts, even a flat loss
    flat = EarlyStop(patience=2, rel_tol=1e-3, start=5)
    assert [flat.update(s, 1.0) for s in range(8)] == [False] * 7 + [True]
    # patience None or 0: never
    assert not any(EarlyStop(None, 1e-3).update(s, 1.0) for s in range(100))
    assert not any(EarlyStop(0, 1e-3).update(s, 1.0) for s in range(100))
    with pytest.raises(MollifierInputError):
        EarlyStop(-1, 1e-3)
    with pytest.raises(MollifierInputError):
        EarlyStop(10, 1.5)


@pytest.mark.slow  # in CI's full run; out of the development run (under 5 min, CONTRIBUTING)
def test_early_stop_triggers_on_an_easy_problem_and_is_recorded(small):
    fields, truth, mask = small
    calls = []
    kwargs = dict(base="rbf", iterations=400, seed=0)
    out = fit_network(fields, MODEL, None, PIXEL, RADIUS, mask, patience=10, rel_tol=0.02,
                      progress=lambda s, t, i: calls.append((s, t, i)), **kwargs)
    warm = round(0.2 * 400)
    assert out.stopped_early and warm + 10 <= out.iterations < 400
    assert out.max_iterations == 400 and len(out.loss_history) == out.iterations
    assert out.settings["patience"] == 10 and out.settings["rel_tol"] == 0.02
    # the progress callback saw every step run, the last one flagged
    assert [c[0] for c in calls] == list(range(1, out.iterations + 1))
    assert calls[-1][2].get("stopped_early") is True and all("stopped_early" not in c[2] for c in calls[:-1])
    # the rule held: the last 10 steps did not beat the best loss since the warm-up by 2 %
    h = np.array(out.loss_history)
    assert h[-10:].min() >= h[warm:-10].min() * (1 - 0.02)
    # same seed, no early stop: the same first steps, all 400 run, and the early map is about as good
    full = fit_network(fields, MODEL, None, PIXEL, RADIUS, mask, patience=None, **kwargs)
    assert not full.stopped_early and full.iterations == 400 and full.settings["patience"] is None
    assert full.loss_history[: out.iterations] == out.loss_history
    r_early, r_full = _pearson(out.rate, truth, mask), _pearson(full.rate, truth, mask)
    assert r_early >= r_full - 0.05, (r_early, r_full)
    assert r_early >= 0.8, r_early


def test_zero_or_missing_iterations_are_refused(small):
    from napari_mollifier import infer_rates
    from napari_mollifier.methods.network import DEFAULT_ITERATIONS
    from napari_mollifier.validation import check_iterations

    fields, _, mask = small
    for bad in (0, -3, None):
        with pytest.raises(MollifierInputError, match="iterations"):
            fit_network(fields, MODEL, None, PIXEL, RADIUS, mask, iterations=bad)
    with pytest.raises(MollifierInputError, match="iterations must be between 1 and"):
        check_iterations(0)
    assert check_iterations(None) is None  # None: the default
    with pytest.raises(MollifierInputError, match=f"default {DEFAULT_ITERATIONS}"):
        check_iterations(0)
    with pytest.raises(MollifierInputError, match="iterations"):
        infer_rates(fields, model=MODEL, pixel_size=PIXEL, radius=RADIUS, method="network", iterations=0)


def test_one_iterations_default_for_the_api_the_cli_and_the_estimate(small, monkeypatch):
    import inspect

    import napari_mollifier.solve as solve
    from napari_mollifier import infer_rates
    from napari_mollifier.cli import build_parser
    from napari_mollifier.methods.network import DEFAULT_ITERATIONS, setup_network
    from napari_mollifier.validation import MAX_ITERATIONS, estimate_run_seconds

    assert inspect.signature(fit_network).parameters["iterations"].default == DEFAULT_ITERATIONS
    assert inspect.signature(setup_network).parameters["iterations"].default == DEFAULT_ITERATIONS
    assert estimate_run_seconds((64, 64), radius=8, method="network")["iterations"] == DEFAULT_ITERATIONS
    # the CLI: no default of its own (None -> the library's), and its help quotes the constant
    parser = build_parser()
    infer = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("infer"))
    action = next(a for a in infer._actions if a.dest == "iterations")
    assert action.default is None
    assert f"default {DEFAULT_ITERATIONS}" in action.help and str(MAX_ITERATIONS) in action.help
    with pytest.raises(SystemExit):
        infer.parse_args(["x.tif", "--iterations", "0"])
    # infer_rates with iterations=None runs the library default (patched small here), and records the fit
    monkeypatch.setattr(solve, "DEFAULT_ITERATIONS", 4)
    fields, _, mask = small
    stages = []
    res = infer_rates(fields, model=MODEL, pixel_size=PIXEL, radius=RADIUS, method="network", roi=mask,
                      n_bootstrap=0, progress=lambda s, t, i: stages.append(i.get("stage")))
    assert res.provenance["iterations"] == 4 and stages.count("network fit") == 4
    assert res.provenance["network_fit"] == {"1": {"iterations_run": 4, "stopped_early": False}}
    assert res.provenance["early_stop"]["patience"] >= 1
