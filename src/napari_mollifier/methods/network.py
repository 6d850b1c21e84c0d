"""Mollified network fits (arXiv 2505.11682) and the autodiff-PINN baseline: ``fit_network``.

Mollified network (``derivatives_via="mollifier"``)
    A base model (:mod:`.base_models`) outputs latent fields ``g``, one channel per input field (normalised:
    ``g = mean + std * output``), on the image grid extended by the kernel half-width on every side
    (``boundary="extend"``, default), so that one *valid* correlation gives ``u`` and its derivatives on every
    pixel with no padding assumption and no edge correction; the extension is constrained only through ``u``
    inside the mask. The model's pointwise derived fields are computed from the latent and *then* mollified
    (``model.derived(g)``, e.g. the phase-field ``mu_loc(phi_h, phi_e)``), exactly as the direct closed form does
    with the observed fields: the latent plays the role of the unsmoothed field, and ``g = data`` gives the
    direct estimate back (up to the edge handling). The smoothed fields and every derivative the model needs are
    correlations of ``g`` with the fixed kernel and its analytic derivatives (one
    :class:`~napari_mollifier.mollifier.Mollifier` call per step, FFT); no derivative is taken through the
    network. ``boundary="mask"`` (latent on the image grid, masked moment-corrected convolutions) and the padding
    modes are available too.

Autodiff baseline (``derivatives_via="autodiff"``)
    The paper's baseline: the *same* :class:`~.base_models.FourierMLP` (same seed, same initial weights); its
    output at the mask pixels is the field itself and every derivative is nested
    ``torch.autograd.grad(..., create_graph=True)`` with respect to the input coordinates. Same loss.

Loss (both): ``data + weight_pde * pde``
    * ``data``: mean over the mask of ``((u - f) / std(f))^2``, averaged over the input fields (``u``: the
      mollified field, or the network output for autodiff; ``f``: the observed field).
    * ``pde``: mean over the mask of ``(residual(d, lambda_s) / s)^2``, ``s^2`` the mean square over the mask of
      the residual with a zero rate on the mollified data (the size of the reaction term), so that the weight is
      dimensionless. With the closed form (default where it is regular) ``lambda = model.rate(d)`` and
      ``lambda_s`` is that rate smoothed by the same kernel (masked normalised convolution): the PDE term
      penalises the part of the closed-form rate that varies below the kernel scale (the rate is identifiable
      only above it, docs/science.md), and it is the residual ``infer_rates`` reports. With a rate head the base model
      has one more output channel ``h`` and ``lambda = lambda_0 + s_0 (h * eta)`` (the head mollified, so smooth
      at the kernel scale; ``lambda_0``, ``s_0`` the median and IQR of the direct estimate), fitted through the
      residual. The PDE weight ramps up from 0 over the first ``warmup`` fraction of the steps.

The returned ``rate`` is the closed form of the fitted fields (or the head), NaN outside the mask.
"""

from __future__ import annotations

import math
import os
import resource
import threading
import time

import numpy as np
import torch

from ..errors import MollifierInputError, RunCancelled
from ..models import Model, get_model
from ..kernels import half_width
from ..mollifier import Mollifier, derivatives, key_terms
from .base_models import BASE_MODELS, make_base_model

__all__ = ["fit_network", "warm_up", "DERIVATIVES_VIA"]

DERIVATIVES_VIA = ("mollifier", "autodiff")
_BOUNDARIES = ("extend", "mask", "reflect", "replicate", "periodic", "zeros")


# --------------------------------------------------------------------------------------------- memory meter
class _MemoryMeter:
    """Peak memory of a block: exact on CUDA (``torch.cuda.max_memory_allocated`` above the allocation at the
    start), approximate on the CPU (peak resident set size above the start, sampled every 2 ms)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0
        self.how = ""

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.how = "cuda: torch.cuda.max_memory_allocated minus the allocation at the start (exact)"
            return self
        self._base = self._rss()
        if self._base is None:
            self._maxrss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.how = "approximate (cpu): growth of the process's maximum RSS (getrusage), 0 if not exceeded"
            return self
        self.how = "approximate (cpu): peak process RSS above the RSS at the start, sampled every 2 ms"
        self._max = self._base
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                rss = self._rss() or 0
                if rss > self._max:
                    self._max = rss
                self._stop.wait(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device) - self._base)
        elif self._base is None:
            grow = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self._maxrss0
            self.peak_bytes = int(max(grow, 0) * 1024)
        else:
            self._stop.set()
            self._thread.join()
            self._max = max(self._max, self._rss() or 0)
            self.peak_bytes = int(self._max - self._base)
        return False


class _GraphMeter:
    """Bytes of the tensors autograd saves for the backward pass (distinct storages): a device-independent
    measure of a training step's activation memory."""

    def __init__(self):
        self.bytes = 0
        self._seen = set()

    def pack(self, t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            key = (storage.data_ptr(), t.device.type)
            if key not in self._seen:
                self._seen.add(key)
                self.bytes += storage.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    @staticmethod
    def unpack(t):
        return t


# --------------------------------------------------------------------------------------------- helpers
def warm_up() -> None:
    """Pay the one-time cost of the first fit now: constructing the first ``torch.optim`` optimizer imports
    ``torch._dynamo`` (about 800 modules, 1-1.5 s on one core, with pauses of ~0.1 s that hold the interpreter
    lock). A GUI calls this in a background thread when it opens, so that no run pays it; idempotent and cheap
    after the first call."""
    torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.0)


def _as_mask(mask, shape) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise MollifierInputError(f"mask shape {m.shape} does not match the fields' shape {tuple(shape)}")
    m = m.astype(bool) if m.dtype != bool else m
    if not m.any():
        raise MollifierInputError("mask is empty (no pixel inside)")
    return m


def _autograd_keys(f: torch.Tensor, coords: torch.Tensor, keys, ndim: int, scale) -> dict:
    """``{key: derivative}`` of the per-point function ``f`` ``(N,)`` of ``coords`` ``(N, ndim)`` by nested
    autograd; ``scale[j]`` converts a normalised-coordinate derivative to physical units along axis ``j``.

    Each ``autograd.grad`` of a cached derivative gives all of its first derivatives at once (the network acts
    per point, so the gradient of the sum is the pointwise gradient), cached by multi-index.
    """
    cache = {(0,) * ndim: f}

    def get(alpha):
        if alpha in cache:
            return cache[alpha]
        i = max(j for j in range(ndim) if alpha[j] > 0)
        beta = tuple(a - (j == i) for j, a in enumerate(alpha))
        fb = get(beta)
        (grad,) = torch.autograd.grad(fb.sum(), coords, create_graph=True, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(coords)
        for j in range(ndim):
            cache.setdefault(tuple(b + (k == j) for k, b in enumerate(beta)), grad[:, j] * scale[j])
        return cache[alpha]

    out = {}
    for key in keys:
        total = None
        for alpha, coef in key_terms(key, ndim):
            term = get(alpha) * coef
            total = term if total is None else total + term
        out[key] = total
    return out


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


# --------------------------------------------------------------------------------------------- main entry
def fit_network(
    fields: dict,
    model,
    params: dict | None,
    pixel_size,
    radius: float,
    mask=None,
    *,
    base: str = "mlp",
    derivatives_via: str = "mollifier",
    iterations: int = 1500,
    lr: float | None = None,
    weight_pde: float | None = None,
    device="cpu",
    seed: int = 0,
    progress=None,
    cancel=None,
    kernel: str = "poly",
    rate_head="auto",
    warmup: float = 0.2,
    boundary: str = "extend",
    dtype: torch.dtype | None = None,
    base_options: dict | None = None,
    data_on: str = "u",
    measure_graph: bool = False,
    monitor=None,
    monitor_every: int = 10,
) -> dict:
    """Fit a mollified network (or the autodiff-PINN baseline) to observed fields; return the rate map.

    Parameters
    ----------
    fields : dict
        ``{name: array}`` for every name in ``model.inputs`` (same shape, 1-D to 3-D).
    model : str or Model
        A registered model name or instance (:mod:`napari_mollifier.models`).
    params : dict or None
        Model coefficients (overrides of the defaults), in the pixel size's units.
    pixel_size : float or tuple
        Physical pixel size (per axis).
    radius : float
        Mollifier support radius in pixels. For autodiff it only sets the scale at which the closed-form rate is
        smoothed in the PDE term (and the Fourier-feature scale, identical to the mollified run).
    mask : bool array, optional
        Pixels where the data and the PDE are enforced and the outputs reported. ``None``: the whole grid.
        Values of ``fields`` outside the mask are ignored (may be NaN).
    base : {"mlp", "cnn", "rbf"}
        Base model (:mod:`.base_models`). Autodiff allows only ``"mlp"``.
    derivatives_via : {"mollifier", "autodiff"}
    iterations : int
        Adam steps (learning rate cosine-decayed to a tenth).
    lr : float, optional
        Learning rate; default 5e-3 (mlp), 1e-3 (cnn), 1e-2 (rbf).
    weight_pde : float, optional
        Weight of the dimensionless PDE term (ramped up from 0 over the first ``warmup`` fraction of the
        iterations). Default 10 with the closed form (the term is then a smoothness prior on the rate at the
        kernel scale), 1 with a rate head (the term determines the rate; the data must keep the fields).
    device : str or torch.device
        Every tensor is created there (``"cuda"`` works).
    seed : int
        Seeds the base model's initialisation; same seed -> identical outputs on the CPU.
    progress : callable, optional
        ``progress(step, total, info)`` after every iteration (``info``: ``loss``, ``data``, ``pde``,
        ``iteration``).
    cancel : callable, optional
        ``cancel() -> bool``, checked before every iteration; True raises :class:`RunCancelled`.
    kernel : str
        Mollifier kernel (``"poly"``, ``"poly<k>"``, ``"bump"``).
    rate_head : bool or "auto"
        Learn the rate as an extra (mollified) output channel instead of the closed form. ``"auto"`` (default):
        only where the closed form's denominator (``model.denominator`` on the mollified data) changes sign on
        more than 1 % of the mask pixels each way, so the closed form is singular along a curve (e.g. the heat
        equation's ``lap(u)``, which must change sign on a periodic or insulated domain).
    warmup : float
        Fraction of the iterations over which the PDE weight ramps linearly from 0 (the data fix the fields
        first; a full PDE weight from the start can pull the fit to a trivial solution such as ``u = const``,
        ``m = 0`` for the heat equation).
    boundary : str
        ``"extend"`` (default): the latent lives on the image grid extended by the kernel half-width on every
        side, so one valid correlation gives ``u`` on every pixel with no padding or edge correction (the
        extension is constrained only through ``u`` inside the mask). ``"mask"``: latent on the image grid,
        masked moment-corrected convolutions (exact at edges, several times slower). Or a padding mode
        (``"reflect"``, ``"replicate"``, ``"periodic"``, ``"zeros"``).
    dtype : torch.dtype, optional
        Network and convolution precision; default float32 (the one-off direct estimate used for scaling is
        float64 on the CPU).
    base_options : dict, optional
        Extra keyword arguments of the base model.
    data_on : {"u", "g"}
        Compare the mollified field ``u`` (default) or the latent ``g`` with the data.
    measure_graph : bool
        Also count the bytes autograd saves for the backward pass of the first step (``graph_bytes``).
    monitor : callable, optional
        ``monitor(step, train_seconds, rate)`` every ``monitor_every`` iterations and once at the end, with the
        rate map (numpy) of that iteration's forward pass and the training time so far (monitor time excluded):
        for time-to-accuracy benchmarks.

    Returns
    -------
    dict
        ``rate`` (numpy, NaN outside the mask), ``smoothed`` ({input: smoothed field ``u``}), ``residual`` (the PDE
        residual with the closed-form rate smoothed at the kernel scale, or with the rate head), ``loss_history``
        (one float per iteration), ``iterations``, ``final_loss``, ``peak_memory_bytes`` and ``memory_measure``
        (exact on CUDA; approximate, from the process RSS, on the CPU), ``graph_bytes`` (or None), ``seconds``
        (whole call), ``train_seconds`` (the iterations only),
        ``device``, ``settings``.
    """
    started = time.perf_counter()
    m: Model = get_model(model)
    p = m.params(params)
    if base not in BASE_MODELS:
        raise MollifierInputError(f"unknown base model {base!r}: use one of {BASE_MODELS}")
    if derivatives_via not in DERIVATIVES_VIA:
        raise MollifierInputError(f"derivatives_via must be one of {DERIVATIVES_VIA}, got {derivatives_via!r}")
    autodiff = derivatives_via == "autodiff"
    if autodiff and base != "mlp":
        raise MollifierInputError("derivatives_via='autodiff' needs base='mlp' (a function of the coordinates)")
    if boundary not in _BOUNDARIES:
        raise MollifierInputError(f"unknown boundary {boundary!r}: use one of {_BOUNDARIES}")
    if data_on not in ("u", "g"):
        raise MollifierInputError(f"data_on must be 'u' or 'g', got {data_on!r}")
    iterations = int(iterations)
    if iterations < 1:
        raise MollifierInputError(f"iterations must be >= 1, got {iterations}")
    if not isinstance(fields, dict):
        raise MollifierInputError(f"fields must be a dict {{name: array}} with keys {m.inputs}")
    missing = [k for k in m.inputs if k not in fields]
    if missing:
        raise MollifierInputError(f"model {m.name!r} needs fields {m.inputs}; missing {missing}")
    arrays = {k: np.asarray(fields[k], dtype=np.float64) for k in m.inputs}
    shape = next(iter(arrays.values())).shape
    if any(a.shape != shape for a in arrays.values()):
        raise MollifierInputError(f"all fields must have the same shape, got {[a.shape for a in arrays.values()]}")
    ndim = len(shape)
    if ndim not in (1, 2, 3):
        raise MollifierInputError(f"fields must be 1-D to 3-D, got shape {shape}")
    spacing = tuple(float(v) for v in np.broadcast_to(np.asarray(pixel_size, dtype=np.float64), (ndim,)))
    mask_np = _as_mask(mask, shape) & np.all([np.isfinite(a) for a in arrays.values()], axis=0)
    if not mask_np.any():
        raise MollifierInputError("no finite pixel inside the mask")
    dev = torch.device(device)
    dtype = dtype or torch.float32
    lr = float(lr) if lr is not None else {"mlp": 5e-3, "cnn": 1e-3, "rbf": 1e-2}[base]
    radius = float(radius)

    names = list(m.inputs)
    n_in = len(names)
    needs = m.needs(ndim)
    derived_names = list(needs)
    keys = tuple(dict.fromkeys(["u"] + [k for ks in needs.values() for k in ks]))
    mask_t = torch.as_tensor(mask_np, device=dev)
    n_mask = int(mask_np.sum())
    mean = torch.tensor([arrays[k][mask_np].mean() for k in names], dtype=dtype, device=dev)
    std = torch.tensor([max(arrays[k][mask_np].std(), 1e-12) for k in names], dtype=dtype, device=dev)
    chan = (n_in,) + (1,) * ndim
    obs = torch.stack([torch.as_tensor(np.where(mask_np, arrays[k], 0.0), dtype=dtype, device=dev) for k in names])
    obs_n = (obs - mean.view(chan)) / std.view(chan) * mask_t  # (C, *S), 0 (the mean) outside the mask

    # Layers. "extend": valid correlation of a latent on the extended grid (padding mode irrelevant, cropped).
    half = half_width(radius)
    pad = half if boundary == "extend" and not autodiff else 0
    layer_boundary = {"extend": "zeros", "mask": "reflect"}.get(boundary, boundary)
    method = "direct" if boundary == "mask" else "fft"
    mollifier = Mollifier(radius, spacing, kernel, layer_boundary, which=keys, ndim=ndim, method=method).to(dev)
    smoother = Mollifier(radius, spacing, kernel, "reflect", which=("u",), ndim=ndim).to(dev)
    crop = (slice(None),) + tuple(slice(pad, pad + n) for n in shape)

    def mollify(stack: torch.Tensor) -> dict:
        """``(D, *S_latent)`` -> ``{key: (D, *S)}`` on the image grid."""
        out = mollifier(stack[None], mask=mask_t if boundary == "mask" else None)
        return {k: v[0][crop] for k, v in out.items()}

    def smooth(x: torch.Tensor) -> torch.Tensor:
        """A rate map ``(*S)`` at the kernel scale: normalised convolution over the mask (NaN-free inside)."""
        y = smoother(_finite(x)[None, None], mask=mask_t)["u"][0, 0]
        return torch.where(torch.isfinite(y), y, torch.zeros((), dtype=y.dtype, device=y.device))

    def d_from_latent(g: torch.Tensor):
        """Mollified derivatives of the derived fields of the latent ``g`` ``(C, *S_latent)``, and ``u``."""
        gf = {k: g[i] for i, k in enumerate(names)}
        derived = m.derived(gf, p)
        extra = [k for k in names if k not in derived_names]
        stack = torch.stack([derived[k] for k in derived_names] + [gf[k] for k in extra])
        out = mollify(stack)
        d = {k: {kk: out[kk][j] for kk in needs[k]} for j, k in enumerate(derived_names)}
        order = derived_names + extra
        u = {k: out["u"][order.index(k)] for k in names}
        return d, u

    # From the direct closed form on the data (on the CPU, float64, once): the PDE-residual scale (makes weight_pde
    # dimensionless), the rate's typical value and spread (the rate head's output scaling), and whether the
    # closed form's denominator changes sign inside the mask (the closed form is then singular on a curve).
    with torch.no_grad():
        inside = torch.as_tensor(mask_np)
        dd = m.derived({k: torch.as_tensor(np.where(mask_np, arrays[k], 0.0)) for k in names}, p)
        d0 = {k: derivatives(dd[k], radius, spacing=spacing, kernel=kernel, mask=mask_np, which=needs[k], ndim=ndim)
              for k in derived_names}
        r_zero = _finite(m.residual(d0, torch.zeros((), dtype=torch.float64), p))[inside]
        res_scale = float(torch.sqrt((r_zero**2).mean()).clamp_min(1e-30))
        rate0 = m.rate(d0, p)[inside]
        rate0 = rate0[torch.isfinite(rate0)].numpy()
        q25, q50, q75 = np.percentile(rate0, [25, 50, 75]) if rate0.size else (0.0, 0.0, 1.0)
        rate_center, rate_spread = float(q50), float(max(q75 - q25, 1e-6 * max(abs(q50), 1.0)))
        denom = m.denominator(d0, p)[inside]
        denom = denom[torch.isfinite(denom)]
        sign_change = bool(denom.numel()) and min(float((denom > 0).double().mean()),
                                                  float((denom < 0).double().mean())) > 0.01
    if rate_head == "auto":
        rate_head = sign_change
    elif not isinstance(rate_head, bool):
        raise MollifierInputError(f"rate_head must be True, False or 'auto', got {rate_head!r}")
    weight_pde = (1.0 if rate_head else 10.0) if weight_pde is None else float(weight_pde)
    warm = max(int(round(float(warmup) * iterations)), 0)

    def ramp(step: int) -> float:
        """PDE weight at ``step``: linear from 0 over the warm-up (the data fix the fields first; a PDE
        weight at full strength from the start can pull the fields to trivial solutions, e.g. u = const, m = 0
        for the heat equation)."""
        return weight_pde * min(1.0, (step + 1) / warm) if warm > 0 else weight_pde

    n_out = n_in + (1 if rate_head else 0)
    options = dict(base_options or {})
    if base == "mlp":
        options.setdefault("feature_scale", (max(radius / 2.0, 1.0), max(max(shape) / 2.0, radius / 2.0, 1.0)))
    cnn_inputs = obs_n[None] if base == "cnn" else None
    net = make_base_model(base, shape, n_out, inputs=cnn_inputs, pad=pad, seed=seed, **options)
    net = net.to(device=dev, dtype=dtype)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * min(s / iterations, 1.0))))

    if autodiff:
        flat_mask = mask_t.reshape(-1)
        flat_idx = torch.nonzero(flat_mask, as_tuple=False)[:, 0]
        coords_in = net.coords.to(dtype)[flat_idx].clone()
        scale = [2.0 / (max(n - 1, 1) * h) for n, h in zip(shape, spacing)]  # d/dx_phys = scale * d/dx_norm
        obs_in = obs_n.reshape(n_in, -1)[:, flat_idx]  # (C, N)

        def scatter(values: torch.Tensor) -> torch.Tensor:
            grid = torch.zeros(math.prod(shape), dtype=values.dtype, device=dev)
            return grid.index_put((flat_idx,), values).reshape(shape)

    def evaluate(w_pde: float = weight_pde):
        """One evaluation: loss, data, pde, rate, residual (grids) and smoothed fields."""
        if autodiff:
            coords = coords_in.detach().requires_grad_(True)
            out = net.at(coords)  # (N, n_out)
            pts = {k: mean[i] + std[i] * out[:, i] for i, k in enumerate(names)}
            derived = m.derived(pts, p)
            d = {k: _autograd_keys(derived[k], coords, needs[k], ndim, scale) for k in derived_names}
            data = ((out[:, :n_in].T - obs_in) ** 2).mean()
            if rate_head:
                rate = scatter(rate_center + rate_spread * out[:, n_in])
                rate_s = rate
            else:
                rate = scatter(m.rate(d, p))
                rate_s = smooth(rate)
            resid = scatter(m.residual(d, rate_s.reshape(-1)[flat_idx], p))
            smoothed = {k: scatter(pts[k]) for k in names}
        else:
            out = net()[0]  # (n_out, *S_latent)
            g = mean.view(chan) + std.view(chan) * out[:n_in]
            d, u = d_from_latent(g)
            if data_on == "u":
                fit = torch.stack([(u[k] - mean[i]) / std[i] for i, k in enumerate(names)])
            else:
                fit = out[:n_in][crop]
            data = (_finite(fit - obs_n) ** 2 * mask_t).sum() / (n_mask * n_in)
            if rate_head:
                rate = rate_center + rate_spread * mollify(out[n_in:])["u"][0]
                rate_s = rate
            else:
                rate = m.rate(d, p)
                rate_s = smooth(rate)
            resid = m.residual(d, rate_s, p)
            smoothed = u
        ok = mask_t & torch.isfinite(resid)
        pde = (_finite(resid / res_scale) ** 2 * ok).sum() / ok.sum().clamp_min(1)
        return data + w_pde * pde, data, pde, rate, resid, smoothed

    def to_np(x):
        a = x.detach().to("cpu", torch.float64).numpy().copy()
        a[~mask_np] = np.nan
        return a

    history: list[float] = []
    graph_bytes = None
    train_seconds = 0.0
    with _MemoryMeter(dev) as meter:
        for step in range(iterations):
            if cancel is not None and cancel():
                raise RunCancelled(f"network fit cancelled at iteration {step} of {iterations}")
            tick = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            if measure_graph and step == 0:
                gm = _GraphMeter()
                with torch.autograd.graph.saved_tensors_hooks(gm.pack, gm.unpack):
                    loss, data, pde, rate, *_ = evaluate(ramp(step))
                graph_bytes = gm.bytes
            else:
                loss, data, pde, rate, *_ = evaluate(ramp(step))
            loss.backward()
            optimizer.step()
            schedule.step()
            value = float(loss.detach())  # also synchronises an accelerator, so the step time is real
            train_seconds += time.perf_counter() - tick
            history.append(value)
            if monitor is not None and step % max(int(monitor_every), 1) == 0:
                monitor(step, train_seconds, to_np(rate))
            if progress is not None:
                progress(step + 1, iterations, {"loss": value, "data": float(data.detach()),
                                                "pde": float(pde.detach()), "iteration": step + 1})
        if autodiff:  # derivatives need the graph
            loss, data, pde, rate, resid, smoothed = evaluate()
        else:
            with torch.no_grad():
                loss, data, pde, rate, resid, smoothed = evaluate()
        if monitor is not None:
            monitor(iterations, train_seconds, to_np(rate))

    return {
        "rate": to_np(rate),
        "smoothed": {k: to_np(v) for k, v in smoothed.items()},
        "residual": to_np(resid),
        "loss_history": history,
        "iterations": iterations,
        "final_loss": {"loss": float(loss.detach()), "data": float(data.detach()), "pde": float(pde.detach())},
        "peak_memory_bytes": int(meter.peak_bytes),
        "memory_measure": meter.how,
        "graph_bytes": graph_bytes,
        "seconds": time.perf_counter() - started,
        "train_seconds": train_seconds,
        "device": str(dev),
        "settings": {"base": base, "derivatives_via": derivatives_via, "radius": radius, "kernel": kernel,
                     "boundary": boundary, "rate_head": bool(rate_head), "lr": lr, "weight_pde": weight_pde,
                     "data_on": data_on, "seed": int(seed), "iterations": iterations,
                     "dtype": str(dtype).replace("torch.", "")},
    }
