"""Plausibility checks of an input, each a clear :class:`PlausibilityWarning` (a ``MollifierWarning``).

Warned, not refused: the run still goes ahead, but the user learns that the numbers look wrong.

* the pixel size is implausible for a super-resolution chromatin image: over 1 um or under 1 nm per pixel
  (checked when its unit is known: ``unit="um"``/``"nm"``..., and always in the CLI, which reads it in um);
* the nucleus (the ROI; the whole image without one) is wider than 50 um;
* the volume fractions ``phi_h``, ``phi_e`` fall outside [0, 1], or ``phi_h + phi_e`` exceeds 1, over more than
  1 % of the ROI (raw intensities instead of fractions, or swapped/unnormalised channels).
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike

from .errors import MollifierWarning

__all__ = ["PlausibilityWarning", "check_plausibility", "warn_implausible", "UNIT_TO_UM"]

UNIT_TO_UM = {"um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "micrometer": 1.0, "micrometre": 1.0,
              "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "mm": 1e3, "millimeter": 1e3, "m": 1e6}
PIXEL_UM = (1e-3, 1.0)
NUCLEUS_UM = 50.0
FRACTION_SHARE = 0.01


class PlausibilityWarning(MollifierWarning):
    """An input that is implausible for a chromatin image (see :mod:`napari_mollifier.plausibility`)."""


def _um(unit):
    if unit is None:
        return None
    return UNIT_TO_UM.get(str(unit).strip().lower().replace("micrometers", "micrometer"))


def check_plausibility(fields: dict, pixel_size: float | ArrayLike, unit: str | None = None,
                       roi: ArrayLike | None = None) -> list[str]:
    """List the plausibility problems of an input (the checks of the module docstring).

    Parameters
    ----------
    fields : dict
        ``{name: image}``; the volume-fraction checks need ``phi_h`` and ``phi_e``.
    pixel_size : float or array_like
        Pixel size, one value or one per axis, in ``unit``.
    unit : str, optional
        Unit of ``pixel_size`` (a key of :data:`UNIT_TO_UM`, e.g. ``"um"``, ``"nm"``); without it the pixel size
        and nucleus width are not checked.
    roi : array_like, optional
        The nucleus (``> 0`` inside); default: the whole image.

    Returns
    -------
    list of str
        One sentence per problem (what looks wrong and what to check); empty when none.
    """
    notes = []
    spacing = np.atleast_1d(np.asarray(pixel_size, dtype=np.float64))
    scale = _um(unit)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in fields.items()}
    shape = next(iter(arrays.values())).shape
    inside = np.ones(shape, bool) if roi is None else np.asarray(roi) > 0
    if scale is not None and spacing.size:
        px_um = spacing * scale
        if np.any(px_um > PIXEL_UM[1]) or np.any(px_um < PIXEL_UM[0]):
            shown = ", ".join(f"{v:g}" for v in np.unique(px_um))
            notes.append(
                f"the pixel size {shown} um is implausible for a super-resolution chromatin image (expected 1 nm to "
                f"1 um per pixel): was it given in nm instead of um (--pixel-size takes um)?")
        if inside.any():
            where = np.nonzero(inside)
            axes = range(len(shape) - min(len(shape), 2), len(shape))  # the two in-plane axes
            width = max((np.ptp(where[a]) + 1) * float(np.broadcast_to(px_um, (len(shape),))[a]) for a in axes)
            if width > NUCLEUS_UM:
                notes.append(
                    f"the nucleus ({'the ROI' if roi is not None else 'the whole image, no ROI given'}) is "
                    f"{width:.3g} um wide, more than {NUCLEUS_UM:g} um: check the pixel size and the ROI")
    if "phi_h" in arrays and "phi_e" in arrays and inside.any():
        ph, pe = arrays["phi_h"][inside], arrays["phi_e"][inside]
        ok = np.isfinite(ph) & np.isfinite(pe)
        ph, pe = ph[ok], pe[ok]
        if ph.size:
            outside = float(np.mean((ph < 0) | (ph > 1) | (pe < 0) | (pe > 1)))
            over = float(np.mean(ph + pe > 1))
            if outside > FRACTION_SHARE:
                notes.append(
                    f"phi_h or phi_e lies outside [0, 1] in {outside:.1%} of the ROI (range {ph.min():.3g}..."
                    f"{ph.max():.3g} and {pe.min():.3g}...{pe.max():.3g}): the inputs are volume fractions; "
                    "convert raw intensities (background subtracted, both channels on one scale) first")
            if over > FRACTION_SHARE:
                notes.append(
                    f"phi_h + phi_e exceeds 1 in {over:.1%} of the ROI: volume fractions cannot sum to more than 1 "
                    "(raw intensities, or channels on different scales?)")
    return notes


def warn_implausible(fields: dict, pixel_size: float | ArrayLike, unit: str | None = None,
                     roi: ArrayLike | None = None, stacklevel: int = 3) -> list[str]:
    """Run :func:`check_plausibility` and issue each problem as a :class:`PlausibilityWarning`.

    Parameters
    ----------
    fields, pixel_size, unit, roi
        As in :func:`check_plausibility`.
    stacklevel : int
        Passed to :func:`warnings.warn` (3: the caller of the function that called this one).

    Returns
    -------
    list of str
        The notes of :func:`check_plausibility`.
    """
    notes = check_plausibility(fields, pixel_size, unit, roi)
    for note in notes:
        warnings.warn(note, PlausibilityWarning, stacklevel=stacklevel)
    return notes
