"""Noise level of an image, for the uncertainty of a rate map.

Immerkaer's estimator (Computer Vision and Image Understanding 64, 1996), made robust: the image is filtered with
the separable second difference ``N = [1, -2, 1]`` along every axis, which removes any locally quadratic
signal and keeps white noise with gain ``||N||_2 = sqrt(6^d)``; the noise standard deviation is
``sigma = 1.4826 * median(|I (*) N|) / sqrt(6^d)`` (median absolute deviation, insensitive to edges).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["estimate_noise"]


def estimate_noise(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Standard deviation of additive white noise in ``image`` (same units as the image).

    Parameters
    ----------
    image : ndarray
        1-D, 2-D or 3-D image.
    mask : ndarray of bool, optional
        Only filter responses whose whole 3^d neighbourhood lies inside the mask are used.
    """
    image = np.asarray(image, dtype=np.float64)
    response = image
    for axis in range(image.ndim):
        response = ndimage.correlate1d(response, [1.0, -2.0, 1.0], axis=axis, mode="nearest")
    valid = np.ones(image.shape, bool)
    valid[tuple(slice(1, -1) for _ in range(image.ndim))] = False
    valid = ~valid
    if mask is not None:
        valid &= ndimage.binary_erosion(np.asarray(mask, bool), np.ones((3,) * image.ndim, bool))
    valid &= np.isfinite(response)
    if not valid.any():
        return 0.0
    return float(1.4826 * np.median(np.abs(response[valid])) / np.sqrt(6.0**image.ndim))
