"""Langevin-type growth (1st order in time): ``u_t = u + lambda(t)``.

The field is a 1-D time series ``u(t)`` sampled every ``pixel_size`` time units; closed form
``lambda = u_t - u``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import Model


@dataclass(frozen=True)
class Langevin(Model):
    """1-D relaxation in time: ``u_t = u + lambda(t)``."""

    name: str = "langevin"
    summary: str = "u_t = u + lambda(t) (1st order, 1-D in time)"
    inputs: tuple = ("u",)
    coefficients: dict = field(default_factory=dict)
    ndim: int = 1

    def needs(self, ndim: int) -> dict[str, tuple[str, ...]]:
        """List the mollified derivatives read: ``u`` and ``u_t`` (key ``"x"``; see :meth:`Model.needs`)."""
        return {"u": ("u", "x")}

    def rate(self, d: dict, params: dict) -> torch.Tensor:
        """Evaluate the closed form ``lambda = u_t - u`` (see :meth:`Model.rate`)."""
        return d["u"]["x"] - d["u"]["u"]

    def residual(self, d: dict, rate: torch.Tensor, params: dict) -> torch.Tensor:
        """Evaluate the residual ``u_t - u - lambda`` (see :meth:`Model.residual`)."""
        return d["u"]["x"] - d["u"]["u"] - rate

    def denominator(self, d: dict, params: dict) -> torch.Tensor:
        """Return ones: the closed form does not divide (see :meth:`Model.denominator`)."""
        return torch.ones_like(d["u"]["u"])
