"""Euchromatin balance (2nd order): ``l2 lap(phi_e) = lambda phi_e - phi_h``.

Closed form ``lambda = (phi_h + l2 lap(phi_e)) / phi_e``. ``l2 = D / G_ac`` is a squared length; the default 1.04
is in the reference data's box units (10 x 10 box) and was calibrated on the authors' finite-element states
(docs/science.md, "The chromatin models"); pass it in your pixel-size units for real images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import Coefficient, Model


@dataclass(frozen=True)
class ChromatinBalance(Model):
    """Second-order chromatin balance: ``l2 lap(phi_e) = lambda phi_e - phi_h`` (docs/science.md)."""

    name: str = "chromatin-balance"
    summary: str = "l2 lap(phi_e) = lambda phi_e - phi_h (2nd order)"
    inputs: tuple = ("phi_h", "phi_e")
    positive_denominator: bool = True
    coefficients: dict = field(
        default_factory=lambda: {"l2": Coefficient(1.04, 2, "D / G_ac, squared length (pixel-size units squared)")}
    )

    def needs(self, ndim: int) -> dict[str, tuple[str, ...]]:
        """List the mollified derivatives read: ``phi_h``, ``phi_e``, ``lap(phi_e)`` (see :meth:`Model.needs`)."""
        return {"phi_h": ("u",), "phi_e": ("u", "lap")}

    def rate(self, d: dict, params: dict) -> torch.Tensor:
        """Evaluate the closed form ``lambda = (phi_h + l2 lap(phi_e)) / phi_e`` (see :meth:`Model.rate`)."""
        return (d["phi_h"]["u"] + params["l2"] * d["phi_e"]["lap"]) / d["phi_e"]["u"]

    def residual(self, d: dict, rate: torch.Tensor, params: dict) -> torch.Tensor:
        """Evaluate the residual ``l2 lap(phi_e) - lambda phi_e + phi_h`` (see :meth:`Model.residual`)."""
        return params["l2"] * d["phi_e"]["lap"] - rate * d["phi_e"]["u"] + d["phi_h"]["u"]

    def denominator(self, d: dict, params: dict) -> torch.Tensor:
        """Return the denominator ``phi_e`` (see :meth:`Model.denominator`)."""
        return d["phi_e"]["u"]
