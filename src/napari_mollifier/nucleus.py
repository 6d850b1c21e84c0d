"""Detect the nucleus when no ROI is given, so that background pixels never enter the solve.

Recipe (scikit-image): total chromatin (``phi_h + phi_e``, or the density channel), smoothed by a Gaussian of
``sigma`` pixels; a global threshold (Otsu by default, or triangle); the largest connected component; holes
filled; then shrunk by ``ceil(sigma)`` pixels, which undoes the widening by the smoothing, so that the mask errs
on the inside. The mask and how it was obtained are returned, to be shown (a Labels layer, a file among the CLI outputs)
and recorded in the provenance.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage as ndi

from .errors import MollifierInputError

__all__ = ["detect_nucleus", "total_chromatin"]

METHODS = ("otsu", "triangle")
#: the kept component must hold at least this share of the above-threshold pixels: one nucleus on background gives
#: 0.94-0.99 (synthetic nuclei), a crop inside a nucleus 0.10-0.43 (bright domains in pieces), several nuclei ~1/n
MIN_LARGEST_SHARE = 0.6


def total_chromatin(fields: dict) -> np.ndarray:
    """Return the total chromatin ``phi_h + phi_e`` of the fields as a float image.

    Parameters
    ----------
    fields : dict
        ``{"phi_h", "phi_e"}``, or a ``density`` channel, or any one field.

    Returns
    -------
    numpy.ndarray
        ``phi_h + phi_e``, else the ``density`` channel, else the one field given (float64).

    Raises
    ------
    MollifierInputError
        If ``fields`` is not a non-empty dict, or holds several fields of which none is the total.
    """
    if not isinstance(fields, dict) or not fields:
        raise MollifierInputError("fields must be a dict of images, e.g. {'phi_h': ..., 'phi_e': ...}")
    if "phi_h" in fields and "phi_e" in fields:
        return np.asarray(fields["phi_h"], float) + np.asarray(fields["phi_e"], float)
    if "density" in fields:
        return np.asarray(fields["density"], float)
    if len(fields) == 1:
        return np.asarray(next(iter(fields.values())), float)
    raise MollifierInputError(f"cannot tell the total chromatin from the fields {sorted(fields)}: pass an roi")


def detect_nucleus(image: ArrayLike | dict, sigma: float = 2.0, method: str = "otsu") -> tuple[np.ndarray, dict]:
    """Detect the nucleus of a chromatin image (recipe in the module docstring).

    Parameters
    ----------
    image : array or dict
        Total chromatin image (2-D or 3-D), or the fields dict of ``infer_rates``.
    sigma : float
        Gaussian smoothing, pixels.
    method : {"otsu", "triangle"}
        Global threshold of the smoothed image.

    Returns
    -------
    mask : numpy.ndarray of bool
        The nucleus, of the image's shape.
    info : dict
        ``method``, ``sigma``, ``threshold``, ``margin`` (px the mask was shrunk by, undoing the smoothing), ``fraction`` (of the image inside), ``components`` (before keeping
        the largest), ``largest_share`` (of the above-threshold pixels in the kept component), ``description``.

    Raises
    ------
    MollifierInputError
        No contrast; the image has no background (the "nucleus" would cover > 98 % of it); or no single nucleus
        (the largest bright component holds less than :data:`MIN_LARGEST_SHARE` of the bright pixels: a crop inside
        a nucleus, or several nuclei). The fix: pass an ROI, or choose the whole image on purpose (``roi=None`` /
        ``--roi whole``).
    """
    from skimage import filters, morphology

    if method not in METHODS:
        raise MollifierInputError(f"unknown nucleus detection method {method!r}: use one of {METHODS}")
    img = total_chromatin(image) if isinstance(image, dict) else np.asarray(image, float)
    finite = np.isfinite(img)
    if not finite.any():
        raise MollifierInputError("the image has no finite pixel: no nucleus can be detected")
    filled = np.where(finite, img, np.nanmedian(img[finite]))
    smooth = ndi.gaussian_filter(filled, float(sigma))
    values = smooth[finite]
    if values.max() == values.min():
        raise MollifierInputError("the image is constant: no nucleus can be detected; pass an ROI (--roi FILE)")
    threshold = float(filters.threshold_otsu(values) if method == "otsu" else filters.threshold_triangle(values))
    labels, n = ndi.label((smooth > threshold) & finite)
    if n == 0:
        raise MollifierInputError("no pixel above the nucleus threshold: pass an ROI (--roi FILE)")
    sizes = np.bincount(labels.ravel())[1:]
    mask = labels == (int(np.argmax(sizes)) + 1)
    mask = ndi.binary_fill_holes(mask) if mask.ndim == 2 else np.stack([ndi.binary_fill_holes(s) for s in mask])
    # the smoothing widens the bright region by about sigma: shrink it back, so that the mask errs on the inside
    # and no background pixel enters the solve
    margin = int(np.ceil(float(sigma)))
    if margin:
        ball = morphology.disk(margin) if mask.ndim == 2 else morphology.ball(margin)
        mask = ndi.binary_erosion(mask, ball)
    fraction = float(mask.mean())
    share = float(sizes.max() / sizes.sum())
    if share < MIN_LARGEST_SHARE:
        raise MollifierInputError(
            f"no single nucleus detected: the bright pixels fall into {n} pieces, the largest holding {share:.0%} of "
            "them (an image cropped inside a nucleus, or several nuclei); pass an ROI (--roi FILE, a Shapes or "
            "Labels layer) to map one region, or choose the whole image on purpose (roi=None, --roi whole)")
    if fraction > 0.98:
        raise MollifierInputError(
            f"nucleus detection found no background ({fraction:.0%} of the image is above the threshold): the image "
            "is probably cropped inside the nucleus; choose the whole image on purpose (roi=None, --roi whole) or "
            "pass an ROI")
    info = {"method": method, "sigma": float(sigma), "threshold": threshold, "fraction": round(fraction, 4),
            "components": int(n), "margin": margin,
            # share of the above-threshold pixels in the kept component: ~1 for one nucleus on background; small
            # for a crop inside a nucleus (bright domains in pieces) or for several nuclei
            "largest_share": round(share, 4),
            "description": f"largest component of the total chromatin smoothed over {sigma:g} px above the "
                           f"{method} threshold {threshold:.4g}, holes filled, shrunk by {margin} px ({fraction:.0%} of the image)"}
    return mask, info
