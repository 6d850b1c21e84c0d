"""Fourth-order phase-field chromatin model (the form of the paper's authors), at steady state.

    d phi_d / dt = M lap(mu_d) + 2 (lambda phi_e - phi_h) = 0,
    mu_d = -a phi_e + phi_h (phi_max - phi_h)(phi_max - 2 phi_h) - l_int^2 lap(phi_d),   phi_d = phi_h - phi_e

Closed form ``lambda = (phi_h - M lap(mu_d) / 2) / phi_e``. The pointwise part of ``mu_d`` is mollified as one
derived field ``mu_loc = -a phi_e + phi_h (phi_max - phi_h)(phi_max - 2 phi_h)``, so
``lap(mu_d) = lap(mu_loc) - l_int^2 biharm(phi_d)``. ``a = 1.0`` (dimensionless) is the prototype's value and is
what the reference finite-element states satisfy once the double-well term is kept: on them
:func:`napari_mollifier.calibrate` fits ``a = 0.99`` for all three rates, the forward solver reproduces
``phi_d`` to 0.05 % with ``a = 1`` (2 % with ``a = 2.08``) and the inverse rate has CV 0.01 % (1-3 % with 2.08).
``a = 2.08`` (``M a / 2 = l2 = 1.04``) is only the value that makes the *balance* form, which drops the
double well, fit the same data. The mobility ``M`` is a squared length (1 in the reference data's
box units, the paper's form) and ``l_int`` a length, both in pixel-size units, so the model keeps its meaning
in micrometres (same convention as :func:`napari_mollifier.simulate.chromatin_steady_state`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import Coefficient, Model


@dataclass(frozen=True)
class ChromatinPhaseField(Model):
    """Fourth-order phase-field form: ``0 = M lap(mu_d) + 2 (lambda phi_e - phi_h)`` (docs/science.md)."""

    name: str = "chromatin-phase-field"
    summary: str = "0 = M lap(mu_d) + 2 (lambda phi_e - phi_h), 4th order"
    inputs: tuple = ("phi_h", "phi_e")
    positive_denominator: bool = True
    coefficients: dict = field(
        default_factory=lambda: {
            "a": Coefficient(1.0, 0, "euchromatin interaction (dimensionless; calibrated 0.99 on the reference data)"),
            "phi_max": Coefficient(0.7, 0, "maximal heterochromatin fraction of the double well"),
            "l_int": Coefficient(0.03, 1, "interface length (pixel-size units)"),
            "mobility": Coefficient(1.0, 2, "M = D / G_ac scale, squared length (pixel-size units squared)"),
        }
    )

    def derived(self, fields: dict, params: dict) -> dict:
        """Compute ``phi_h``, ``phi_e``, ``mu_loc`` and ``phi_d = phi_h - phi_e`` (see :meth:`Model.derived`)."""
        phi_h, phi_e = fields["phi_h"], fields["phi_e"]
        pm = params["phi_max"]
        mu_loc = -params["a"] * phi_e + phi_h * (pm - phi_h) * (pm - 2 * phi_h)
        return {"phi_h": phi_h, "phi_e": phi_e, "mu_loc": mu_loc, "phi_d": phi_h - phi_e}

    def needs(self, ndim: int) -> dict[str, tuple[str, ...]]:
        """List the derivatives read: ``phi_h``, ``phi_e``, ``lap(mu_loc)``, ``biharm(phi_d)`` (:meth:`Model.needs`)."""
        return {"phi_h": ("u",), "phi_e": ("u",), "mu_loc": ("lap",), "phi_d": ("biharm",)}

    def _lap_mu(self, d, params):
        return params["mobility"] * (d["mu_loc"]["lap"] - params["l_int"] ** 2 * d["phi_d"]["biharm"])

    def rate(self, d: dict, params: dict) -> torch.Tensor:
        """Evaluate the closed form ``lambda = (phi_h - M lap(mu_d) / 2) / phi_e`` (see :meth:`Model.rate`)."""
        return (d["phi_h"]["u"] - 0.5 * self._lap_mu(d, params)) / d["phi_e"]["u"]

    def residual(self, d: dict, rate: torch.Tensor, params: dict) -> torch.Tensor:
        """Evaluate the residual ``M lap(mu_d) + 2 (lambda phi_e - phi_h)`` (see :meth:`Model.residual`)."""
        return self._lap_mu(d, params) + 2 * (rate * d["phi_e"]["u"] - d["phi_h"]["u"])

    def denominator(self, d: dict, params: dict) -> torch.Tensor:
        """Return the denominator ``phi_e`` (see :meth:`Model.denominator`)."""
        return d["phi_e"]["u"]
