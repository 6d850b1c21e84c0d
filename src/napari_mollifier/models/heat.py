"""Steady heat equation with spatially varying diffusivity (2nd order): ``0 = lambda lap(u) + m``.

Closed form ``lambda = -m / lap(u)``; undefined where ``lap(u) ~ 0``. ``m`` is the source field, in the units of
``u`` per unit time; ``lambda`` is in squared length (pixel-size units) per unit time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import Model


@dataclass(frozen=True)
class Heat(Model):
    """Steady heat equation with a source: ``0 = lambda lap(u) + m``."""

    name: str = "heat"
    summary: str = "0 = lambda lap(u) + m (2nd order)"
    inputs: tuple = ("u", "m")
    coefficients: dict = field(default_factory=dict)

    def needs(self, ndim: int) -> dict[str, tuple[str, ...]]:
        """List the mollified derivatives read: ``lap(u)`` and ``m`` (see :meth:`Model.needs`)."""
        return {"u": ("lap",), "m": ("u",)}

    def rate(self, d: dict, params: dict) -> torch.Tensor:
        """Evaluate the closed form ``lambda = -m / lap(u)`` (see :meth:`Model.rate`)."""
        return -d["m"]["u"] / d["u"]["lap"]

    def residual(self, d: dict, rate: torch.Tensor, params: dict) -> torch.Tensor:
        """Evaluate the residual ``lambda lap(u) + m`` (see :meth:`Model.residual`)."""
        return rate * d["u"]["lap"] + d["m"]["u"]

    def denominator(self, d: dict, params: dict) -> torch.Tensor:
        """Return the denominator ``lap(u)`` (see :meth:`Model.denominator`)."""
        return d["u"]["lap"]
