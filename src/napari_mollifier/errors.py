"""Exception and warning types of the public API.

Every exception raised for bad input is a ``ValueError`` subclass, so callers that only know
``ValueError`` still catch it; the message names the problem and the fix. Failed writes raise an ``OSError``
subclass; a run that does not fit in the device's memory raises :class:`MollifierMemoryError` (a
:class:`MollifierInputError`: the input is too large for the device, and the message says what to change).
"""

from __future__ import annotations

__all__ = ["MollifierInputError", "MollifierMemoryError", "MollifierOutputError", "MollifierWarning",
           "RunCancelled"]


class MollifierInputError(ValueError):
    """Input that cannot give a correct answer (NaN pixels, a radius larger than the image, an empty mask...)."""


class MollifierMemoryError(MollifierInputError):
    """The run ran out of device memory (e.g. ``torch.OutOfMemoryError`` on a GPU); nothing was returned.

    :func:`napari_mollifier.tiling.infer_auto` and the CLI catch it and retry in smaller tiles.
    """


class MollifierOutputError(OSError):
    """An output could not be written (folder not writable, disk full...); no partial output was left."""


class MollifierWarning(UserWarning):
    """Something the user should know about a run that still went ahead (e.g. a default pixel size was used)."""


class RunCancelled(Exception):
    """A run stopped because its ``cancel()`` callback returned True; nothing partial is returned."""
