"""Base models for the mollified network: the grid -> latent fields ``g`` (one channel per input field).

Every base model is a ``torch.nn.Module`` whose ``forward()`` returns a tensor ``(1, C, *shape)`` on the grid
(``C = out_channels``). Derivatives are *not* taken through these models by the mollified method: the
:class:`~napari_mollifier.mollifier.Mollifier` layer correlates ``g`` with fixed kernels. Only
:class:`FourierMLP` is also a function of continuous coordinates (:meth:`FourierMLP.at`), which is what the
autodiff-PINN baseline differentiates.

* :class:`FourierMLP` -- PINN-style MLP on pixel coordinates normalised to ``[-1, 1]``, with random Fourier
  features ``[sin(2 pi B x), cos(2 pi B x)]`` (Tancik et al. 2020) and tanh activations (smooth, so the
  autodiff baseline can take 4th derivatives).
* :class:`SmallCNN` -- a few 3x3 convolutions on the observed fields (as input channels) with a residual
  connection: ``g = fields + CNN(fields)``, last layer initialised to zero, so training starts at the data.
* :class:`RBFGrid` -- a multi-resolution grid of learnable feature vectors, interpolated to every pixel with
  normalised Gaussian radial basis functions (smooth, infinitely differentiable, like the partition-of-unity
  feature grids of the "d-infinity grid" idea), concatenated over levels and decoded by a tiny MLP.

Initialisation is seeded: every random draw comes from a ``torch.Generator`` seeded with ``seed`` (on the CPU,
then moved), so a given seed gives the same parameters on every device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["FourierMLP", "SmallCNN", "RBFGrid", "BASE_MODELS", "make_base_model", "normalised_coordinates"]

BASE_MODELS = ("mlp", "cnn", "rbf")


def normalised_coordinates(shape: Sequence[int], pad: int = 0, dtype: torch.dtype = torch.float32,
                           device: torch.device | str = "cpu") -> torch.Tensor:
    """Return the normalised pixel-centre coordinates of a grid, in array-axis order.

    Parameters
    ----------
    shape : sequence of int
        Grid shape; its pixels span ``[-1, 1]`` on every axis.
    pad : int
        Extra pixels on each side, continuing the same spacing beyond ``[-1, 1]``.
    dtype : torch.dtype
        Dtype of the result.
    device : torch.device or str
        Device of the result.

    Returns
    -------
    torch.Tensor
        ``(N, ndim)`` with ``N = prod(n + 2 pad)``, C order.
    """
    axes = []
    for n in shape:
        step = 2.0 / (n - 1) if n > 1 else 1.0
        idx = torch.arange(-pad, n + pad, dtype=torch.float64)
        axes.append((-1.0 + step * idx if n > 1 else idx * step).to(dtype=dtype, device=device))
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def _init_linear(layer: nn.Linear, gen: torch.Generator, gain: float = 1.0) -> None:
    """Xavier-uniform weights and zero bias from ``gen`` (deterministic for a seed)."""
    fan_in, fan_out = layer.in_features, layer.out_features
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen, dtype=torch.float64) * 2 * bound - bound)
        layer.bias.zero_()


class FourierMLP(nn.Module):
    """MLP on random Fourier features of normalised pixel coordinates.

    Parameters
    ----------
    shape : tuple of int
        Image grid shape (array-axis order); its pixels span ``[-1, 1]``.
    out_channels : int
        Number of output channels.
    pad : int
        ``forward()`` evaluates the grid extended by ``pad`` pixels on every side (coordinates beyond
        ``[-1, 1]``), so that a mollifier's valid correlation returns exactly the image grid.
    feature_scale : float or (float, float)
        Length scale(s) in pixels of the features. One number ``s``: frequencies ``~ N(0, 1 / (2 pi s)^2)``
        cycles per pixel on every axis (typical wavelength ``2 pi s`` pixels). A pair ``(lo, hi)``: each feature
        gets its own ``s``, log-uniform in ``[lo, hi]`` (multi-scale features: smooth and fine content are both
        easy to fit). Converted to cycles per normalised unit with ``(n - 1) / 2`` pixels per unit.
    n_features : int
        Number of random frequencies (the embedding has ``2 n_features`` entries).
    width, depth : int
        Hidden width and number of hidden layers.
    seed : int
        Seed of the frequencies and the initial weights.
    """

    def __init__(self, shape: Sequence[int], out_channels: int, *, pad: int = 0,
                 feature_scale: float | tuple[float, float] = 4.0, n_features: int = 64,
                 width: int = 64, depth: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.image_shape = tuple(int(n) for n in shape)
        self.pad = int(pad)
        self.shape = tuple(n + 2 * self.pad for n in self.image_shape)  # grid of forward()
        self.out_channels = int(out_channels)
        gen = torch.Generator().manual_seed(int(seed))
        ndim = len(self.shape)
        lo, hi = (feature_scale, feature_scale) if isinstance(feature_scale, (int, float)) else feature_scale
        lo, hi = float(lo), float(hi)
        if not (0 < lo <= hi):
            raise ValueError(f"feature_scale must be positive (lo <= hi), got {feature_scale!r}")
        scales = lo * (hi / lo) ** torch.rand(int(n_features), generator=gen, dtype=torch.float64)  # pixels
        px_per_unit = torch.tensor([max(n - 1, 1) / 2.0 for n in self.image_shape], dtype=torch.float64)
        freqs = torch.randn((ndim, int(n_features)), generator=gen, dtype=torch.float64)
        freqs = freqs / (2 * math.pi * scales[None, :]) * px_per_unit[:, None]  # cycles per normalised unit
        self.register_buffer("freqs", freqs.float())
        self.register_buffer("coords", normalised_coordinates(self.image_shape, self.pad), persistent=False)
        layers, size = [], 2 * int(n_features)
        for _ in range(int(depth)):
            layer = nn.Linear(size, int(width))
            _init_linear(layer, gen)
            layers.append(layer)
            size = int(width)
        self.hidden = nn.ModuleList(layers)
        self.head = nn.Linear(size, self.out_channels)
        _init_linear(self.head, gen)

    def at(self, coords: torch.Tensor) -> torch.Tensor:
        """Evaluate the network at normalised coordinates (differentiable in ``coords``).

        Parameters
        ----------
        coords : torch.Tensor
            ``(N, ndim)`` normalised coordinates (as from :func:`normalised_coordinates`).

        Returns
        -------
        torch.Tensor
            ``(N, C)`` outputs.
        """
        proj = 2 * math.pi * coords @ self.freqs.to(coords.dtype)
        h = torch.cat([torch.sin(proj), torch.cos(proj)], dim=1)
        for layer in self.hidden:
            h = torch.tanh(layer(h))
        return self.head(h)

    def forward(self) -> torch.Tensor:
        """Evaluate the model on its whole (padded) grid.

        Returns
        -------
        torch.Tensor
            ``(1, out_channels, *shape)``.
        """
        dtype = self.head.weight.dtype
        out = self.at(self.coords.to(dtype))
        return out.T.reshape((1, self.out_channels) + self.shape)


class SmallCNN(nn.Module):
    """Residual conv net on the observed fields: ``g = x + net(x)`` with ``x`` the (normalised) fields.

    ``inputs`` ``(1, C_in, *shape)`` is stored as a buffer (the observed fields, normalised, 0 outside the mask),
    replicate-padded by ``pad`` pixels on every side (``forward()`` returns the extended grid);
    ``out_channels`` outputs; the first ``min(C_in, out_channels)`` outputs get the residual connection and the
    last layer starts at zero, so the initial ``g`` is the data itself (the "direct" estimate). 2-D and 3-D.

    Parameters
    ----------
    inputs : torch.Tensor
        ``(1, C_in, *shape)`` observed fields.
    out_channels : int
        Number of output channels.
    pad : int
        Replicate padding, pixels per side.
    width, depth, kernel_size : int
        Channels of the hidden layers, their number, and the convolution size.
    seed : int
        Seed of the initial weights.
    """

    def __init__(self, inputs: torch.Tensor, out_channels: int, *, pad: int = 0, width: int = 32, depth: int = 3,
                 kernel_size: int = 3, seed: int = 0) -> None:
        super().__init__()
        ndim = inputs.dim() - 2
        if ndim not in (1, 2, 3):
            raise ValueError(f"SmallCNN supports 1-D to 3-D grids, got input shape {tuple(inputs.shape)}")
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[ndim - 1]
        x = inputs.detach().to(torch.float64)
        if pad > 0:
            x = torch.nn.functional.pad(x, [int(pad)] * (2 * ndim), mode="replicate")
        self.register_buffer("inputs", x.float(), persistent=False)
        self.out_channels = int(out_channels)
        gen = torch.Generator().manual_seed(int(seed))
        layers, c = [], inputs.shape[1]
        for _ in range(int(depth)):
            layer = conv(c, int(width), kernel_size, padding=kernel_size // 2, padding_mode="replicate")
            self._init(layer, gen, last=False)
            layers.append(layer)
            c = int(width)
        self.hidden = nn.ModuleList(layers)
        self.head = conv(c, self.out_channels, kernel_size, padding=kernel_size // 2, padding_mode="replicate")
        self._init(self.head, gen, last=True)

    @staticmethod
    def _init(layer, gen, last: bool) -> None:
        fan_in = layer.in_channels * math.prod(layer.kernel_size)
        bound = 0.0 if last else math.sqrt(6.0 / fan_in)  # He-uniform-like for tanh; zero head
        with torch.no_grad():
            layer.weight.copy_(torch.rand(layer.weight.shape, generator=gen, dtype=torch.float64) * 2 * bound - bound)
            layer.bias.zero_()

    def forward(self) -> torch.Tensor:
        """Evaluate the model on its whole (padded) grid.

        Returns
        -------
        torch.Tensor
            ``(1, out_channels, *shape)``.
        """
        x = self.inputs.to(self.head.weight.dtype)
        h = x
        for layer in self.hidden:
            h = torch.tanh(layer(h))
        out = self.head(h)
        k = min(x.shape[1], self.out_channels)
        skip = torch.zeros_like(out)
        skip[:, :k] = x[:, :k]
        return out + skip


class RBFGrid(nn.Module):
    """Multi-resolution learnable feature grid, Gaussian-RBF interpolated, with a tiny MLP decoder.

    The grid is the image extended by ``pad`` pixels on every side. Level ``l`` has ``m_l`` nodes per axis
    (``levels`` values, each capped at the axis length) spread uniformly over
    the image; the feature at a pixel is ``sum_j w_j(x) F_j`` with separable Gaussian weights
    ``exp(-(x - x_j)^2 / (2 (s d_l)^2))`` normalised to sum to one along each axis (a smooth partition of unity),
    ``d_l`` the node spacing and ``s = rbf_width``. Features of all levels are concatenated and decoded by
    ``Linear -> tanh -> Linear`` to ``out_channels``.

    Parameters
    ----------
    shape : sequence of int
        Image grid shape.
    out_channels : int
        Number of output channels.
    pad : int
        Extra pixels on every side of the grid of ``forward()``.
    levels : sequence of int
        Nodes per axis of each level.
    features : int
        Features per node.
    hidden : int
        Width of the decoder.
    rbf_width : float
        ``s``, the Gaussian width in node spacings.
    seed : int
        Seed of the initial features and weights.
    """

    def __init__(self, shape: Sequence[int], out_channels: int, *, pad: int = 0,
                 levels: Sequence[int] = (4, 8, 16, 32), features: int = 4, hidden: int = 32,
                 rbf_width: float = 0.75, seed: int = 0) -> None:
        super().__init__()
        self.image_shape = tuple(int(n) for n in shape)
        self.shape = tuple(n + 2 * int(pad) for n in self.image_shape)  # grid of forward()
        self.out_channels = int(out_channels)
        gen = torch.Generator().manual_seed(int(seed))
        grids, weights = [], []
        for li, m in enumerate(levels):
            nodes = [max(2, min(int(m), n)) for n in self.shape]
            grids.append(nn.Parameter((torch.randn((features,) + tuple(nodes), generator=gen,
                                                   dtype=torch.float64) * 0.1).float()))
            for a, (n, k) in enumerate(zip(self.shape, nodes, strict=True)):
                self.register_buffer(f"w{li}_{a}", self._weights(n, k, rbf_width), persistent=False)
            weights.append(len(nodes))
        self.grids = nn.ParameterList(grids)
        self.decoder_in = nn.Linear(features * len(grids), int(hidden))
        self.decoder_out = nn.Linear(int(hidden), self.out_channels)
        _init_linear(self.decoder_in, gen)
        _init_linear(self.decoder_out, gen)

    @staticmethod
    def _weights(n: int, k: int, width: float) -> torch.Tensor:
        """``(n, k)`` normalised Gaussian interpolation weights from ``k`` nodes to ``n`` pixels on one axis."""
        x = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
        nodes = torch.linspace(0.0, 1.0, k, dtype=torch.float64)
        spacing = 1.0 / (k - 1)
        w = torch.exp(-0.5 * ((x[:, None] - nodes[None]) / (width * spacing)) ** 2)
        return (w / w.sum(dim=1, keepdim=True)).float()

    def _interpolate(self, li: int, grid: torch.Tensor) -> torch.Tensor:
        out = grid  # (F, k_0, ..., k_{d-1})
        for a in range(len(self.shape)):
            w = getattr(self, f"w{li}_{a}").to(grid.dtype)  # (n_a, k_a)
            out = torch.movedim(torch.tensordot(out, w, dims=([1 + a], [1])), -1, 1 + a)
        return out  # (F, *shape)

    def forward(self) -> torch.Tensor:
        """Evaluate the model on its whole (padded) grid.

        Returns
        -------
        torch.Tensor
            ``(1, out_channels, *shape)``.
        """
        feats = torch.cat([self._interpolate(li, g) for li, g in enumerate(self.grids)], dim=0)
        flat = feats.reshape(feats.shape[0], -1).T  # (N, F L)
        h = torch.tanh(self.decoder_in(flat))
        out = self.decoder_out(h)
        return out.T.reshape((1, self.out_channels) + self.shape)


def make_base_model(base: str, shape: Sequence[int], out_channels: int, *, inputs: torch.Tensor | None = None,
                    pad: int = 0, seed: int = 0, **options: object) -> nn.Module:
    """Build a base model by name; its ``forward()`` covers ``shape`` extended by ``pad`` pixels.

    Parameters
    ----------
    base : {"mlp", "cnn", "rbf"}
        :class:`FourierMLP`, :class:`SmallCNN` (needs ``inputs``) or :class:`RBFGrid`.
    shape : sequence of int
        Image grid shape.
    out_channels : int
        Number of output channels.
    inputs : torch.Tensor, optional
        ``(1, C_in, *shape)`` observed fields, for ``"cnn"``.
    pad : int
        Extra pixels on every side of the grid of ``forward()``.
    seed : int
        Seed of the initial weights.
    **options
        Further keyword arguments of the model's class.

    Returns
    -------
    torch.nn.Module
        The model.

    Raises
    ------
    ValueError
        On an unknown ``base``, or ``"cnn"`` without ``inputs``.
    """
    if base == "mlp":
        return FourierMLP(shape, out_channels, pad=pad, seed=seed, **options)
    if base == "cnn":
        if inputs is None:
            raise ValueError("base 'cnn' needs the observed fields as inputs")
        return SmallCNN(inputs, out_channels, pad=pad, seed=seed, **options)
    if base == "rbf":
        return RBFGrid(shape, out_channels, pad=pad, seed=seed, **options)
    raise ValueError(f"unknown base model {base!r}: use one of {BASE_MODELS}")
