"""Nucleus outline from a localisation cloud.

Density image -> Gaussian smoothing -> Otsu -> largest component, holes filled (scikit-image / scipy.ndimage).

The smoothing width (default 200 nm) must exceed the gaps between heterochromatin domains so that the
euchromatin between them counts as nucleus; the Otsu threshold then separates the nucleus from the sparse
background. The outline's distance map (nm from the edge, inside) is what the lamina-associated domains are
judged by.
"""

from __future__ import annotations

import numpy as np

from ..errors import MollifierInputError, renamed_keyword

__all__ = ["nucleus_mask", "edge_distance_nm"]


def nucleus_mask(counts, pixel_size: float | None = None, *, smoothing_nm: float = 200.0,
                 pixel_size_nm: float | None = None) -> tuple[np.ndarray, float]:
    """Find the nucleus in a localisation count image: ``(mask, threshold)``.

    ``mask`` is the nucleus (bool image) on the count image's grid of ``pixel_size`` nm, ``threshold`` the Otsu
    threshold used on the smoothed counts (localisations per pixel). ``pixel_size_nm`` is the deprecated name of
    ``pixel_size``.
    """
    pixel_size = renamed_keyword("pixel_size", pixel_size, "pixel_size_nm", pixel_size_nm, required=True)
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    img = ndimage.gaussian_filter(np.asarray(counts, float), float(smoothing_nm) / float(pixel_size),
                                  mode="constant")
    if not np.ptp(img) > 0:
        raise MollifierInputError("the localisation image is empty or constant: no nucleus outline can be found")
    thr = float(threshold_otsu(img))
    mask = img > thr
    lab, n = ndimage.label(mask)
    if n == 0:
        raise MollifierInputError("no nucleus found in the localisations (check the coordinates' unit)")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    mask = ndimage.binary_fill_holes(lab == int(np.argmax(sizes)))
    return mask, thr


def edge_distance_nm(mask, pixel_size: float | None = None, *, pixel_size_nm: float | None = None) -> np.ndarray:
    """Return the distance (nm) from every pixel inside ``mask`` to the nearest pixel outside it (0 outside).

    The pixels are ``pixel_size`` nm; the mask's edge is taken half a pixel beyond the last inside pixel centre.
    ``pixel_size_nm`` is the deprecated name of ``pixel_size``.
    """
    pixel_size = renamed_keyword("pixel_size", pixel_size, "pixel_size_nm", pixel_size_nm, required=True)
    from scipy import ndimage

    padded = np.pad(np.asarray(mask, bool), 1)
    d = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
    return np.where(mask, (d - 0.5) * float(pixel_size), 0.0)
