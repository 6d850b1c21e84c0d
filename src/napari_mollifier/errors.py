"""Exception types of the public API.

Every exception raised for bad input is a ``ValueError`` subclass, so callers that only know
``ValueError`` still catch it; the message names the problem and the fix.
"""

from __future__ import annotations

__all__ = ["MollifierInputError", "RunCancelled"]


class MollifierInputError(ValueError):
    """Input that cannot give a correct answer (NaN pixels, a radius larger than the image, an empty mask...)."""


class RunCancelled(Exception):
    """A run stopped because its ``cancel()`` callback returned True; nothing partial is returned."""
