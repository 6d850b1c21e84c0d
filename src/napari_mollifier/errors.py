"""Exception and warning types of the public API.

Every exception raised for bad input is a ``ValueError`` subclass, so callers that only know
``ValueError`` still catch it; the message names the problem and the fix. Failed writes raise an ``OSError``
subclass; a run that does not fit in the device's memory raises :class:`MollifierMemoryError` (a
:class:`MollifierInputError`: the input is too large for the device, and the message says what to change).
"""

from __future__ import annotations

import warnings

__all__ = ["MollifierInputError", "MollifierMemoryError", "MollifierOutputError", "MollifierWarning",
           "RunCancelled", "renamed_keyword", "find_stack_level"]


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


def renamed_keyword(new_name: str, new_value, old_name: str, old_value, *, default=None, required: bool = False,
                    stacklevel: int = 3):
    """Return the value of a keyword renamed from ``old_name`` to ``new_name``.

    That is ``old_value`` (with a ``FutureWarning``) when the old name was given, else ``new_value``.

    Parameters
    ----------
    new_name, old_name : str
        The keyword's name now and before (for the messages).
    new_value, old_value
        What the caller passed under each name; ``old_value`` is None when the old name was not used.
    default
        ``new_value`` when the caller did not give it (both names given with different values is an error).
    required : bool
        Raise ``TypeError`` (as for a missing argument) when neither name was given.
    stacklevel : int
        Of the warning: 3 points at the caller of the function that calls this.

    Returns
    -------
    object
        The value to use.
    """
    if old_value is None:
        if required and new_value is None:
            raise TypeError(f"missing the argument {new_name!r}")
        return new_value
    warnings.warn(f"{old_name}= is deprecated and will be removed: use {new_name}= (same meaning)", FutureWarning,
                  stacklevel=stacklevel)
    if new_value is not None and not _equal(new_value, default) and not _equal(new_value, old_value):
        raise MollifierInputError(f"give {new_name} once: {new_name}={new_value!r} and the deprecated "
                                  f"{old_name}={old_value!r} disagree")
    return old_value


def find_stack_level() -> int:
    """Return the ``stacklevel`` that makes a warning point at the first caller outside this package (the user's line).

    Call it in the function that calls ``warnings.warn``; it counts the frames of the package above it, so the
    warning names the user's ``infer_rates(...)`` line however deep inside the package it was raised.

    Returns
    -------
    int
        ``stacklevel`` for :func:`warnings.warn`.
    """
    import inspect
    import os

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame = inspect.currentframe()
    level = 0
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame = frame.f_back
        level += 1
    del frame
    return max(level, 1)


def _equal(a, b) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # arrays of several values
        return False
