"""What a PDE model is: the fields it reads, the derivatives it needs, its closed form and its residual.

A model works on *mollified* quantities: ``d[name][key]`` is the mollified derivative ``key`` (``"u"``, ``"lap"``,
``"x"``...) of the input or derived field ``name``, in physical units. Coefficients with a length dimension are in
the units of the image's pixel size (``l2`` in um^2 when the pixel size is in um).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import MollifierInputError

__all__ = ["Model", "Coefficient"]


@dataclass(frozen=True)
class Coefficient:
    """A model coefficient: default value, length dimension (``l2`` has 2: it scales with pixel_size^2), meaning."""

    default: float
    length_power: int = 0
    doc: str = ""


@dataclass(frozen=True)
class Model:
    """Base class of the PDE models; subclasses fill the class attributes and the three methods."""

    name: str = ""
    summary: str = ""
    inputs: tuple[str, ...] = ()
    coefficients: dict = field(default_factory=dict)
    ndim: int = 2  # spatial dimensions of the fields (1 for the Langevin time series)
    rate_symbol: str = "lambda"
    positive_denominator: bool = False  # True where the divisor is a physical fraction that must be > 0

    def params(self, overrides: dict | None = None) -> dict:
        """Default coefficients with ``overrides`` applied; unknown names are an error."""
        values = {k: c.default for k, c in self.coefficients.items()}
        for key, value in (overrides or {}).items():
            if key not in values:
                raise MollifierInputError(
                    f"model {self.name!r} has no coefficient {key!r}: its coefficients are {sorted(values)}"
                )
            values[key] = float(value)
        return values

    def derived(self, fields: dict, params: dict) -> dict:
        """Fields to mollify, computed pointwise from the inputs (default: the inputs themselves)."""
        return dict(fields)

    def needs(self, ndim: int) -> dict[str, tuple[str, ...]]:
        """``{derived field: derivative keys}`` that :meth:`rate` and :meth:`residual` read."""
        raise NotImplementedError

    def rate(self, d: dict, params: dict) -> torch.Tensor:
        """Separable closed form: the rate from mollified quantities."""
        raise NotImplementedError

    def residual(self, d: dict, rate: torch.Tensor, params: dict) -> torch.Tensor:
        """PDE residual for a given rate field (zero where the model holds)."""
        raise NotImplementedError

    def denominator(self, d: dict, params: dict) -> torch.Tensor:
        """The quantity the closed form divides by (the rate is undefined where it is ~0)."""
        raise NotImplementedError
