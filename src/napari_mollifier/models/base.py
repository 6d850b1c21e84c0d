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
        """Return the default coefficients with ``overrides`` applied.

        Parameters
        ----------
        overrides : dict or None
            ``{coefficient name: value}``; values are converted to float.

        Returns
        -------
        dict
            ``{coefficient name: float}`` for every coefficient of the model.

        Raises
        ------
        MollifierInputError
            If ``overrides`` names a coefficient the model does not have.
        """
        values = {k: c.default for k, c in self.coefficients.items()}
        for key, value in (overrides or {}).items():
            if key not in values:
                raise MollifierInputError(
                    f"model {self.name!r} has no coefficient {key!r}: its coefficients are {sorted(values)}"
                )
            values[key] = float(value)
        return values

    def derived(self, fields: dict, params: dict) -> dict:
        """Compute the fields to mollify pointwise from the inputs (default: the inputs themselves).

        Parameters
        ----------
        fields : dict
            ``{input name: tensor}`` of the model's :attr:`inputs`.
        params : dict
            Coefficients, as from :meth:`params`.

        Returns
        -------
        dict
            ``{derived field name: tensor}``, the fields whose derivatives :meth:`needs` lists.
        """
        return dict(fields)

    def needs(self, ndim: int) -> dict[str, tuple[str, ...]]:
        """List the mollified derivatives that :meth:`rate` and :meth:`residual` read.

        Parameters
        ----------
        ndim : int
            Number of spatial dimensions of the fields.

        Returns
        -------
        dict
            ``{derived field: derivative keys}`` (keys such as ``"u"``, ``"lap"``, ``"x"``).
        """
        raise NotImplementedError

    def rate(self, d: dict, params: dict) -> torch.Tensor:
        """Evaluate the separable closed form: the rate from mollified quantities.

        Parameters
        ----------
        d : dict
            ``d[name][key]``: mollified derivative ``key`` of derived field ``name``, in physical units.
        params : dict
            Coefficients, as from :meth:`params`.

        Returns
        -------
        torch.Tensor
            The rate field, in the units stated in the model's module docstring.
        """
        raise NotImplementedError

    def residual(self, d: dict, rate: torch.Tensor, params: dict) -> torch.Tensor:
        """Evaluate the PDE residual for a given rate field (zero where the model holds).

        Parameters
        ----------
        d, params
            As in :meth:`rate`.
        rate : torch.Tensor
            The rate field.

        Returns
        -------
        torch.Tensor
            The residual, in the units of the PDE's terms.
        """
        raise NotImplementedError

    def denominator(self, d: dict, params: dict) -> torch.Tensor:
        """Return the quantity the closed form divides by (the rate is undefined where it is ~0).

        Parameters
        ----------
        d, params
            As in :meth:`rate`.

        Returns
        -------
        torch.Tensor
            The denominator field.
        """
        raise NotImplementedError
