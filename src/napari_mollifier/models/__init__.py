"""PDE models, registered by name. Adding a model is one file: subclass :class:`Model` and register it here."""

from __future__ import annotations

from .base import Coefficient, Model
from .chromatin_balance import ChromatinBalance
from .chromatin_phase_field import ChromatinPhaseField
from .heat import Heat
from .langevin import Langevin

MODELS: dict[str, Model] = {m.name: m for m in (ChromatinBalance(), ChromatinPhaseField(), Heat(), Langevin())}

__all__ = ["MODELS", "Model", "Coefficient", "get_model"]


def get_model(name: str | Model) -> Model:
    """Look up the registered model called ``name``.

    Parameters
    ----------
    name : str or Model
        A key of :data:`MODELS`; a :class:`Model` instance is returned as is.

    Returns
    -------
    Model
        The model.

    Raises
    ------
    ValueError
        If no model is registered under ``name``.
    """
    if isinstance(name, Model):
        return name
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}: choose one of {sorted(MODELS)}") from None
