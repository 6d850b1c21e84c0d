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

Steps and early stop
    :func:`fit_network` runs :func:`setup_network` (checks, normalised data, layers, loss scales, seeded base
    model), :func:`train_network` (Adam, cosine learning rate over ``iterations``, PDE-weight warm-up) and
    :func:`evaluate_network` (one forward pass at the full PDE weight), and returns a :class:`NetworkFit`. After
    the warm-up the training stops early once the loss has not improved on its best value by more than
    ``rel_tol`` (relative, default :data:`DEFAULT_REL_TOL`) for ``patience`` steps (default
    :data:`DEFAULT_PATIENCE`); the steps run and whether it stopped early are in the result.
"""

from __future__ import annotations

import dataclasses
import math
import os
import resource
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import MollifierInputError, RunCancelled
from ..kernels import half_width
from ..models import Model, get_model
from ..mollifier import Mollifier, derivatives, key_terms
from .base_models import BASE_MODELS, make_base_model

__all__ = ["fit_network", "setup_network", "train_network", "evaluate_network", "NetworkFit", "NetworkProblem",
           "TrainingLog", "EarlyStop", "warm_up", "DERIVATIVES_VIA", "DEFAULT_ITERATIONS", "DEFAULT_PATIENCE",
           "DEFAULT_REL_TOL"]

DERIVATIVES_VIA = ("mollifier", "autodiff")
_BOUNDARIES = ("extend", "mask", "reflect", "replicate", "periodic", "zeros")


# --------------------------------------------------------------------------------------------- memory meter
class _MemoryMeter:
    """Measure the peak memory of a block (a context manager).

    Exact on CUDA (``torch.cuda.max_memory_allocated`` above the allocation at the start), approximate on the
    CPU (peak resident set size above the start, sampled every 2 ms).
    """

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
    """Count the bytes of the tensors autograd saves for the backward pass (distinct storages).

    A device-independent measure of a training step's activation memory.
    """

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
    """Pay the one-time cost of the first fit now.

    Constructing the first ``torch.optim`` optimizer imports ``torch._dynamo`` (about 800 modules, 1-1.5 s on
    one core, with pauses of ~0.1 s that hold the interpreter lock). A GUI calls this in a background thread when
    it opens, so that no run pays it; idempotent and cheap after the first call.
    """
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
    """Return ``{key: derivative}`` of the per-point function ``f`` ``(N,)`` of ``coords`` by nested autograd.

    ``coords`` is ``(N, ndim)``; ``scale[j]`` converts a normalised-coordinate derivative to physical units along
    axis ``j``.

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


# --------------------------------------------------------------------------------------------- defaults
#: Default (largest) number of optimiser steps of the network methods: the one default of the API
#: (:func:`fit_network`, :func:`napari_mollifier.infer_rates`), the CLI (``--iterations``) and the widgets. 100
#: steps (1500 before the early stop was added): on the plugin's sample (256 x 256 px, radius 28 px) the map's correlation with
#: the truth is 0.986 after 100 steps, 0.990 after 200 (direct method: 0.9985), and a step took 1.6-3.5 s on a shared
#: 2-core CPU under a load of 5-7 (``benchmarks/bench_network.py``).
DEFAULT_ITERATIONS = 100
#: Early stop: the fit stops once the loss has not improved on its best value by more than
#: :data:`DEFAULT_REL_TOL` (relative) for :data:`DEFAULT_PATIENCE` consecutive steps after the PDE-weight warm-up.
DEFAULT_PATIENCE = 25
#: Relative improvement of the best loss that counts as progress for the early stop.
DEFAULT_REL_TOL = 1e-3


# --------------------------------------------------------------------------------------------- result
@dataclass
class NetworkFit:
    """Result of :func:`fit_network`.

    Attributes
    ----------
    rate : ndarray
        Rate map (float64), NaN outside the mask.
    smoothed : dict
        ``{input: smoothed field u}`` (NaN outside the mask).
    residual : ndarray
        PDE residual with the closed-form rate smoothed at the kernel scale (or with the rate head).
    loss_history : list of float
        Loss of every step run.
    iterations : int
        Steps run (``len(loss_history)``): ``max_iterations``, or fewer after an early stop.
    max_iterations : int
        Steps asked for (the cosine learning-rate schedule spans them).
    stopped_early : bool
        True when the early stop ended the fit before ``max_iterations``.
    final_loss : dict
        ``loss``, ``data`` and ``pde`` of the final fields.
    peak_memory_bytes : int
        Peak memory of the training and evaluation; exact on CUDA, approximate (process RSS) on the CPU.
    memory_measure : str
        How ``peak_memory_bytes`` was measured.
    graph_bytes : int or None
        Bytes autograd saved for the backward pass of the first step (``measure_graph=True``).
    seconds : float
        Whole call.
    train_seconds : float
        The training steps only.
    device : str
    settings : dict
        The settings used (base, radius, kernel, learning rate, PDE weight, early stop...).

    Notes
    -----
    ``fit["rate"]`` (dict-style access: the return type was a dict before) still works for one release
    through :meth:`__getitem__`; use the attributes.
    """

    rate: np.ndarray
    smoothed: dict
    residual: np.ndarray
    loss_history: list
    iterations: int
    max_iterations: int
    stopped_early: bool
    final_loss: dict
    peak_memory_bytes: int
    memory_measure: str
    graph_bytes: int | None
    seconds: float
    train_seconds: float
    device: str
    settings: dict

    def __getitem__(self, key: str) -> object:
        """Return the attribute ``key`` (dict-style ``fit["rate"]``, kept for one release: use the attributes).

        Parameters
        ----------
        key : str
            An attribute name.

        Returns
        -------
        object
            The attribute's value.

        Raises
        ------
        KeyError
            If ``key`` is not an attribute.
        """
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> tuple:
        """Return the attribute names (dict-style access, kept for one release).

        Returns
        -------
        tuple of str
            The field names of the dataclass.
        """
        return tuple(f.name for f in dataclasses.fields(self))

    def __iter__(self) -> Iterator[str]:
        """Iterate over :meth:`keys` (dict-style, kept for one release)."""
        return iter(self.keys())


# --------------------------------------------------------------------------------------------- set-up
class NetworkProblem:
    """A set-up network fit (:func:`setup_network`), ready to train.

    It holds the normalised data, the mollifier layers, the scales of the loss from the direct closed form and the
    seeded base model; :meth:`evaluate` is one forward pass.

    Parameters
    ----------
    fields, model, params, pixel_size, radius, mask
        As in :func:`fit_network`.
    base, derivatives_via, iterations, lr, weight_pde, device, seed, kernel, rate_head, warmup, boundary, dtype, \
base_options, data_on
        As in :func:`fit_network`.

    Raises
    ------
    MollifierInputError
        On an unknown option, missing or mismatched fields, an empty mask, or ``iterations < 1``.
    """

    def __init__(self, fields: dict, model: str | Model, params: dict | None, pixel_size: float | tuple,
                 radius: float, mask: np.ndarray | None, *, base: str, derivatives_via: str, iterations: int,
                 lr: float | None, weight_pde: float | None, device: str | torch.device, seed: int, kernel: str,
                 rate_head: bool | str, warmup: float, boundary: str, dtype: torch.dtype | None,
                 base_options: dict | None, data_on: str) -> None:
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
        iterations = _check_iterations(iterations)
        if not isinstance(fields, dict):
            raise MollifierInputError(f"fields must be a dict {{name: array}} with keys {m.inputs}")
        missing = [k for k in m.inputs if k not in fields]
        if missing:
            raise MollifierInputError(f"model {m.name!r} needs fields {m.inputs}; missing {missing}")
        arrays = {k: np.asarray(fields[k], dtype=np.float64) for k in m.inputs}
        shape = next(iter(arrays.values())).shape
        if any(a.shape != shape for a in arrays.values()):
            raise MollifierInputError(
                f"all fields must have the same shape, got {[a.shape for a in arrays.values()]}")
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

        self.model, self.p, self.shape, self.ndim, self.spacing = m, p, shape, ndim, spacing
        self.autodiff, self.data_on, self.boundary, self.dev, self.dtype = autodiff, data_on, boundary, dev, dtype
        self.mask_np, self.lr, self.iterations = mask_np, lr, iterations
        names = self.names = list(m.inputs)
        n_in = self.n_in = len(names)
        needs = self.needs = m.needs(ndim)
        derived_names = self.derived_names = list(needs)
        keys = tuple(dict.fromkeys(["u"] + [k for ks in needs.values() for k in ks]))
        mask_t = self.mask_t = torch.as_tensor(mask_np, device=dev)
        self.n_mask = int(mask_np.sum())
        self.mean = torch.tensor([arrays[k][mask_np].mean() for k in names], dtype=dtype, device=dev)
        self.std = torch.tensor([max(arrays[k][mask_np].std(), 1e-12) for k in names], dtype=dtype, device=dev)
        chan = self.chan = (n_in,) + (1,) * ndim
        obs = torch.stack([torch.as_tensor(np.where(mask_np, arrays[k], 0.0), dtype=dtype, device=dev)
                           for k in names])
        self.obs_n = (obs - self.mean.view(chan)) / self.std.view(chan) * mask_t  # (C, *S), 0 outside the mask

        # Layers. "extend": valid correlation of a latent on the extended grid (padding mode irrelevant, cropped).
        half = half_width(radius)
        pad = half if boundary == "extend" and not autodiff else 0
        layer_boundary = {"extend": "zeros", "mask": "reflect"}.get(boundary, boundary)
        method = "direct" if boundary == "mask" else "fft"
        self.mollifier = Mollifier(radius, spacing, kernel, layer_boundary, which=keys, ndim=ndim,
                                   method=method).to(dev)
        self.smoother = Mollifier(radius, spacing, kernel, "reflect", which=("u",), ndim=ndim).to(dev)
        self.crop = (slice(None),) + tuple(slice(pad, pad + n) for n in shape)

        # From the direct closed form on the data (on the CPU, float64, once): the PDE-residual scale (makes
        # weight_pde dimensionless), the rate's typical value and spread (the rate head's output scaling), and
        # whether the closed form's denominator changes sign inside the mask (it is then singular on a curve).
        with torch.no_grad():
            inside = torch.as_tensor(mask_np)
            dd = m.derived({k: torch.as_tensor(np.where(mask_np, arrays[k], 0.0)) for k in names}, p)
            d0 = {k: derivatives(dd[k], radius, pixel_size=spacing, kernel=kernel, mask=mask_np, which=needs[k],
                                 ndim=ndim) for k in derived_names}
            r_zero = _finite(m.residual(d0, torch.zeros((), dtype=torch.float64), p))[inside]
            self.res_scale = float(torch.sqrt((r_zero**2).mean()).clamp_min(1e-30))
            rate0 = m.rate(d0, p)[inside]
            rate0 = rate0[torch.isfinite(rate0)].numpy()
            q25, q50, q75 = np.percentile(rate0, [25, 50, 75]) if rate0.size else (0.0, 0.0, 1.0)
            self.rate_center = float(q50)
            self.rate_spread = float(max(q75 - q25, 1e-6 * max(abs(q50), 1.0)))
            denom = m.denominator(d0, p)[inside]
            denom = denom[torch.isfinite(denom)]
            sign_change = bool(denom.numel()) and min(float((denom > 0).double().mean()),
                                                      float((denom < 0).double().mean())) > 0.01
        if rate_head == "auto":
            rate_head = sign_change
        elif not isinstance(rate_head, bool):
            raise MollifierInputError(f"rate_head must be True, False or 'auto', got {rate_head!r}")
        self.rate_head = rate_head
        self.weight_pde = (1.0 if rate_head else 10.0) if weight_pde is None else float(weight_pde)
        self.warm = max(int(round(float(warmup) * iterations)), 0)

        n_out = n_in + (1 if rate_head else 0)
        options = dict(base_options or {})
        if base == "mlp":
            options.setdefault("feature_scale", (max(radius / 2.0, 1.0), max(max(shape) / 2.0, radius / 2.0, 1.0)))
        cnn_inputs = self.obs_n[None] if base == "cnn" else None
        net = make_base_model(base, shape, n_out, inputs=cnn_inputs, pad=pad, seed=seed, **options)
        self.net = net.to(device=dev, dtype=dtype)

        if autodiff:
            flat_mask = mask_t.reshape(-1)
            self.flat_idx = torch.nonzero(flat_mask, as_tuple=False)[:, 0]
            self.coords_in = self.net.coords.to(dtype)[self.flat_idx].clone()
            # d/dx_phys = scale * d/dx_norm
            self.scale = [2.0 / (max(n - 1, 1) * h) for n, h in zip(shape, spacing, strict=True)]
            self.obs_in = self.obs_n.reshape(n_in, -1)[:, self.flat_idx]  # (C, N)
        self.settings = {"base": base, "derivatives_via": derivatives_via, "radius": radius, "kernel": kernel,
                         "boundary": boundary, "rate_head": bool(rate_head), "lr": lr, "weight_pde": self.weight_pde,
                         "data_on": data_on, "seed": int(seed), "iterations": iterations,
                         "dtype": str(dtype).replace("torch.", "")}

    # -- layers
    def mollify(self, stack: torch.Tensor) -> dict:
        """Mollify a stack of latent fields onto the image grid.

        Parameters
        ----------
        stack : torch.Tensor
            ``(D, *S_latent)``.

        Returns
        -------
        dict
            ``{key: (D, *S)}``.
        """
        out = self.mollifier(stack[None], mask=self.mask_t if self.boundary == "mask" else None)
        return {k: v[0][self.crop] for k, v in out.items()}

    def smooth(self, x: torch.Tensor) -> torch.Tensor:
        """Smooth a rate map ``(*S)`` to the kernel scale: normalised convolution over the mask (NaN-free inside).

        Parameters
        ----------
        x : torch.Tensor
            A map ``(*S)``.

        Returns
        -------
        torch.Tensor
            The smoothed map, 0 where undefined.
        """
        y = self.smoother(_finite(x)[None, None], mask=self.mask_t)["u"][0, 0]
        return torch.where(torch.isfinite(y), y, torch.zeros((), dtype=y.dtype, device=y.device))

    def d_from_latent(self, g: torch.Tensor) -> tuple[dict, dict]:
        """Compute the mollified derivatives of the derived fields of the latent ``g``, and ``u``.

        Parameters
        ----------
        g : torch.Tensor
            The latent fields ``(C, *S_latent)``.

        Returns
        -------
        d : dict
            ``{derived field: {key: (*S)}}``.
        u : dict
            ``{input: mollified field (*S)}``.
        """
        names, derived_names = self.names, self.derived_names
        gf = {k: g[i] for i, k in enumerate(names)}
        derived = self.model.derived(gf, self.p)
        extra = [k for k in names if k not in derived_names]
        stack = torch.stack([derived[k] for k in derived_names] + [gf[k] for k in extra])
        out = self.mollify(stack)
        d = {k: {kk: out[kk][j] for kk in self.needs[k]} for j, k in enumerate(derived_names)}
        order = derived_names + extra
        u = {k: out["u"][order.index(k)] for k in names}
        return d, u

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """Scatter values at the mask pixels (autodiff) onto a grid, 0 outside the mask.

        Parameters
        ----------
        values : torch.Tensor
            ``(N,)``, one per mask pixel.

        Returns
        -------
        torch.Tensor
            The grid ``(*S)``.
        """
        grid = torch.zeros(math.prod(self.shape), dtype=values.dtype, device=self.dev)
        return grid.index_put((self.flat_idx,), values).reshape(self.shape)

    def ramp(self, step: int) -> float:
        """Return the PDE weight at ``step``: linear from 0 over the warm-up.

        The data fix the fields first; a PDE weight at full strength from the start can pull the fields to trivial
        solutions, e.g. u = const, m = 0 for the heat equation.

        Parameters
        ----------
        step : int
            The training step (from 0).

        Returns
        -------
        float
            The weight.
        """
        return self.weight_pde * min(1.0, (step + 1) / self.warm) if self.warm > 0 else self.weight_pde

    def evaluate(self, w_pde: float | None = None) -> tuple:
        """Run one forward pass.

        Parameters
        ----------
        w_pde : float, optional
            Weight of the PDE term (default: the full weight).

        Returns
        -------
        tuple
            ``(loss, data, pde, rate, residual, smoothed)`` (tensors; grids on the image).
        """
        w_pde = self.weight_pde if w_pde is None else w_pde
        m, p, names, n_in, mean, std = self.model, self.p, self.names, self.n_in, self.mean, self.std
        mask_t = self.mask_t
        if self.autodiff:
            coords = self.coords_in.detach().requires_grad_(True)
            out = self.net.at(coords)  # (N, n_out)
            pts = {k: mean[i] + std[i] * out[:, i] for i, k in enumerate(names)}
            derived = m.derived(pts, p)
            d = {k: _autograd_keys(derived[k], coords, self.needs[k], self.ndim, self.scale)
                 for k in self.derived_names}
            data = ((out[:, :n_in].T - self.obs_in) ** 2).mean()
            if self.rate_head:
                rate = self.scatter(self.rate_center + self.rate_spread * out[:, n_in])
                rate_s = rate
            else:
                rate = self.scatter(m.rate(d, p))
                rate_s = self.smooth(rate)
            resid = self.scatter(m.residual(d, rate_s.reshape(-1)[self.flat_idx], p))
            smoothed = {k: self.scatter(pts[k]) for k in names}
        else:
            out = self.net()[0]  # (n_out, *S_latent)
            g = mean.view(self.chan) + std.view(self.chan) * out[:n_in]
            d, u = self.d_from_latent(g)
            if self.data_on == "u":
                fit = torch.stack([(u[k] - mean[i]) / std[i] for i, k in enumerate(names)])
            else:
                fit = out[:n_in][self.crop]
            data = (_finite(fit - self.obs_n) ** 2 * mask_t).sum() / (self.n_mask * n_in)
            if self.rate_head:
                rate = self.rate_center + self.rate_spread * self.mollify(out[n_in:])["u"][0]
                rate_s = rate
            else:
                rate = m.rate(d, p)
                rate_s = self.smooth(rate)
            resid = m.residual(d, rate_s, p)
            smoothed = u
        ok = mask_t & torch.isfinite(resid)
        pde = (_finite(resid / self.res_scale) ** 2 * ok).sum() / ok.sum().clamp_min(1)
        return data + w_pde * pde, data, pde, rate, resid, smoothed

    def to_np(self, x: torch.Tensor) -> np.ndarray:
        """Return a float64 numpy copy of the grid tensor ``x`` ``(*S)``, NaN outside the mask."""
        a = x.detach().to("cpu", torch.float64).numpy().copy()
        a[~self.mask_np] = np.nan
        return a


def _check_iterations(iterations) -> int:
    if iterations is None or isinstance(iterations, bool):
        raise MollifierInputError(f"iterations must be an integer >= 1 (default {DEFAULT_ITERATIONS}), "
                                  f"got {iterations!r}")
    iterations = int(iterations)
    if iterations < 1:
        raise MollifierInputError(f"iterations must be >= 1 (default {DEFAULT_ITERATIONS}), got {iterations}")
    return iterations


def setup_network(fields: dict, model: str | Model, params: dict | None, pixel_size: float | tuple,
                  radius: float, mask: np.ndarray | None = None, *, base: str = "mlp",
                  derivatives_via: str = "mollifier", iterations: int = DEFAULT_ITERATIONS,
                  lr: float | None = None, weight_pde: float | None = None, device: str | torch.device = "cpu",
                  seed: int = 0, kernel: str = "poly", rate_head: bool | str = "auto", warmup: float = 0.2,
                  boundary: str = "extend", dtype: torch.dtype | None = None, base_options: dict | None = None,
                  data_on: str = "u") -> NetworkProblem:
    """Set up a network fit: the first step of :func:`fit_network`.

    Check the inputs, normalise the data, build the mollifier layers and the seeded base model, and take the loss
    scales from the direct closed form.

    Parameters
    ----------
    fields, model, params, pixel_size, radius, mask, base, derivatives_via, iterations, lr, weight_pde, device, \
seed, kernel, rate_head, warmup, boundary, dtype, base_options, data_on
        As in :func:`fit_network` (``iterations`` sets the warm-up length).

    Returns
    -------
    NetworkProblem
        The problem, ready for :func:`train_network`.

    Raises
    ------
    MollifierInputError
        As :class:`NetworkProblem`.
    """
    return NetworkProblem(fields, model, params, pixel_size, radius, mask, base=base,
                          derivatives_via=derivatives_via, iterations=iterations, lr=lr, weight_pde=weight_pde,
                          device=device, seed=seed, kernel=kernel, rate_head=rate_head, warmup=warmup,
                          boundary=boundary, dtype=dtype, base_options=base_options, data_on=data_on)


# --------------------------------------------------------------------------------------------- training
class EarlyStop:
    """Early stop: stop once the loss has not improved on its best value for ``patience`` steps.

    Improvement means by more than ``rel_tol`` (relative); steps are counted from the step ``start`` (the end of
    the PDE-weight warm-up: before it the loss changes because its weight does). ``patience=None`` or 0 never
    stops.

    Parameters
    ----------
    patience : int or None
        Steps without improvement before stopping.
    rel_tol : float
        Relative improvement that counts, in ``[0, 1)``.
    start : int
        First step counted.

    Raises
    ------
    MollifierInputError
        If ``patience`` is negative or ``rel_tol`` outside ``[0, 1)``.
    """

    def __init__(self, patience: int | None, rel_tol: float, start: int = 0) -> None:
        if patience is not None and (isinstance(patience, bool) or int(patience) < 0):
            raise MollifierInputError(f"patience must be None or an integer >= 0, got {patience!r}")
        rel_tol = float(rel_tol)
        if not (math.isfinite(rel_tol) and 0.0 <= rel_tol < 1.0):
            raise MollifierInputError(f"rel_tol must be a number in [0, 1), got {rel_tol!r}")
        self.patience = int(patience) if patience else 0
        self.rel_tol, self.start = rel_tol, int(start)
        self.best, self.best_step = math.inf, None

    def update(self, step: int, loss: float) -> bool:
        """Record the loss of ``step``.

        Parameters
        ----------
        step : int
            The training step.
        loss : float
            Its loss.

        Returns
        -------
        bool
            True when the fit should stop after it.
        """
        if not self.patience or step < self.start:
            return False
        if self.best_step is None or loss < self.best * (1.0 - self.rel_tol):
            self.best, self.best_step = loss, step
            return False
        return step - self.best_step >= self.patience


@dataclass
class TrainingLog:
    """What :func:`train_network` did: the loss of every step, whether it stopped early, its time."""

    loss_history: list
    stopped_early: bool
    train_seconds: float
    graph_bytes: int | None
    last_rate: torch.Tensor | None


def train_network(problem: NetworkProblem, *, iterations: int | None = None,
                  patience: int | None = DEFAULT_PATIENCE, rel_tol: float = DEFAULT_REL_TOL,
                  progress: Callable | None = None, cancel: Callable[[], bool] | None = None,
                  measure_graph: bool = False, monitor: Callable | None = None,
                  monitor_every: int = 10) -> TrainingLog:
    """Train a set-up network: the second step of :func:`fit_network`.

    Adam with the learning rate cosine-decayed to a tenth over ``iterations``, the PDE weight ramped up over the
    warm-up, and the early stop (:class:`EarlyStop`).

    Parameters
    ----------
    problem : NetworkProblem
        From :func:`setup_network` (trained in place).
    iterations : int, optional
        Largest number of steps (default: the set-up's).
    patience, rel_tol, progress, cancel, measure_graph, monitor, monitor_every
        As in :func:`fit_network`.

    Returns
    -------
    TrainingLog
        The loss of every step, whether it stopped early, the training time.

    Raises
    ------
    RunCancelled
        When ``cancel()`` returns True.
    """
    iterations = problem.iterations if iterations is None else _check_iterations(iterations)
    net = problem.net
    optimizer = torch.optim.Adam(net.parameters(), lr=problem.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * min(s / iterations, 1.0))))
    stopper = EarlyStop(patience, rel_tol, start=problem.warm)
    history: list[float] = []
    graph_bytes = None
    train_seconds = 0.0
    rate = None
    stopped = False
    for step in range(iterations):
        if cancel is not None and cancel():
            raise RunCancelled(f"network fit cancelled at iteration {step} of {iterations}")
        tick = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        if measure_graph and step == 0:
            gm = _GraphMeter()
            with torch.autograd.graph.saved_tensors_hooks(gm.pack, gm.unpack):
                loss, data, pde, rate, *_ = problem.evaluate(problem.ramp(step))
            graph_bytes = gm.bytes
        else:
            loss, data, pde, rate, *_ = problem.evaluate(problem.ramp(step))
        loss.backward()
        optimizer.step()
        schedule.step()
        value = float(loss.detach())  # also synchronises an accelerator, so the step time is real
        train_seconds += time.perf_counter() - tick
        history.append(value)
        if monitor is not None and step % max(int(monitor_every), 1) == 0:
            monitor(step, train_seconds, problem.to_np(rate))
        stopped = stopper.update(step, value) and step + 1 < iterations
        if progress is not None:
            info = {"loss": value, "data": float(data.detach()), "pde": float(pde.detach()), "iteration": step + 1}
            if stopped:
                info["stopped_early"] = True
            progress(step + 1, iterations, info)
        if stopped:
            break
    return TrainingLog(history, stopped, train_seconds, graph_bytes, rate)


# --------------------------------------------------------------------------------------------- evaluation
def evaluate_network(problem: NetworkProblem) -> dict:
    """Evaluate a trained network: the last step of :func:`fit_network`, one forward pass at the full PDE weight.

    Parameters
    ----------
    problem : NetworkProblem
        The trained problem.

    Returns
    -------
    dict
        ``{"rate", "residual", "smoothed", "final_loss"}`` in numpy (NaN outside the mask).
    """
    if problem.autodiff:  # derivatives need the graph
        loss, data, pde, rate, resid, smoothed = problem.evaluate()
    else:
        with torch.no_grad():
            loss, data, pde, rate, resid, smoothed = problem.evaluate()
    return {
        "rate": problem.to_np(rate),
        "smoothed": {k: problem.to_np(v) for k, v in smoothed.items()},
        "residual": problem.to_np(resid),
        "final_loss": {"loss": float(loss.detach()), "data": float(data.detach()), "pde": float(pde.detach())},
    }


# --------------------------------------------------------------------------------------------- main entry
def fit_network(
    fields: dict,
    model: str | Model,
    params: dict | None,
    pixel_size: float | tuple,
    radius: float,
    mask: np.ndarray | None = None,
    *,
    base: str = "mlp",
    derivatives_via: str = "mollifier",
    iterations: int = DEFAULT_ITERATIONS,
    patience: int | None = DEFAULT_PATIENCE,
    rel_tol: float = DEFAULT_REL_TOL,
    lr: float | None = None,
    weight_pde: float | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: Callable | None = None,
    cancel: Callable[[], bool] | None = None,
    kernel: str = "poly",
    rate_head: bool | str = "auto",
    warmup: float = 0.2,
    boundary: str = "extend",
    dtype: torch.dtype | None = None,
    base_options: dict | None = None,
    data_on: str = "u",
    measure_graph: bool = False,
    monitor: Callable | None = None,
    monitor_every: int = 10,
) -> NetworkFit:
    """Fit a mollified network (or the autodiff-PINN baseline) to observed fields; return the rate map.

    The three steps are :func:`setup_network`, :func:`train_network` and :func:`evaluate_network`.

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
        Derivatives by the mollifier layers, or by autograd of the coordinate network (the PINN baseline).
    iterations : int
        Largest number of Adam steps (default :data:`DEFAULT_ITERATIONS`; the learning rate is cosine-decayed to
        a tenth over them). The early stop may end the fit sooner.
    patience : int or None
        Early stop: the fit stops once the loss has not improved on its best value by more than ``rel_tol``
        (relative) for ``patience`` consecutive steps after the PDE-weight warm-up (default
        :data:`DEFAULT_PATIENCE`). ``None`` or 0: always run ``iterations`` steps. Recorded as
        :attr:`NetworkFit.stopped_early` and :attr:`NetworkFit.iterations` (steps run).
    rel_tol : float
        Relative improvement of the best loss that counts as progress (default :data:`DEFAULT_REL_TOL`).
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
        ``iteration``; and ``stopped_early: True`` on the last step of an early stop, where ``step < total``).
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
    NetworkFit
        ``rate`` (numpy, NaN outside the mask), ``smoothed``, ``residual``, ``loss_history``, ``iterations``
        (steps run), ``max_iterations``, ``stopped_early``, ``final_loss``, memory, times, ``device`` and
        ``settings`` (:class:`NetworkFit`).
    """
    started = time.perf_counter()
    problem = setup_network(fields, model, params, pixel_size, radius, mask, base=base,
                            derivatives_via=derivatives_via, iterations=iterations, lr=lr, weight_pde=weight_pde,
                            device=device, seed=seed, kernel=kernel, rate_head=rate_head, warmup=warmup,
                            boundary=boundary, dtype=dtype, base_options=base_options, data_on=data_on)
    stopper = EarlyStop(patience, rel_tol)  # checks the early-stop arguments before any training
    with _MemoryMeter(problem.dev) as meter:
        log = train_network(problem, patience=stopper.patience or None, rel_tol=stopper.rel_tol,
                            progress=progress, cancel=cancel, measure_graph=measure_graph, monitor=monitor,
                            monitor_every=monitor_every)
        final = evaluate_network(problem)
        if monitor is not None:
            monitor(len(log.loss_history), log.train_seconds, final["rate"])
    settings = dict(problem.settings, patience=stopper.patience or None, rel_tol=stopper.rel_tol)
    return NetworkFit(
        rate=final["rate"],
        smoothed=final["smoothed"],
        residual=final["residual"],
        loss_history=log.loss_history,
        iterations=len(log.loss_history),
        max_iterations=problem.iterations,
        stopped_early=log.stopped_early,
        final_loss=final["final_loss"],
        peak_memory_bytes=int(meter.peak_bytes),
        memory_measure=meter.how,
        graph_bytes=log.graph_bytes,
        seconds=time.perf_counter() - started,
        train_seconds=log.train_seconds,
        device=str(problem.dev),
        settings=settings,
    )
