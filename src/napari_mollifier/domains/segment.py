"""Dense localisations -> heterochromatin domains: DBSCAN clusters, their geometry, interior vs lamina-associated.

* clusters: ``sklearn.cluster.DBSCAN(eps, min_samples)`` on the dense localisations (the lab's defaults
  eps = 30 nm, min_samples = 3, on a 1/4 random subsample of the localisations); noise gets -1;
* geometry per cluster from its second moments (vectorised): centre = mean position; covariance ``C`` (minus
  ``precision^2 I`` for the localisation blur); equivalent radius ``R = 2 det(C)^(1/4)``, which is exactly the
  radius of a uniformly filled disk and ``sqrt(a b)`` (the area-equivalent radius) of a uniform ellipse with
  semi-axes ``a, b`` (the lab takes sqrt(area / pi) of an alpha shape of the points instead);
* classes: clusters with fewer than ``min_points`` localisations are discarded (the lab: 35); a cluster with a
  localisation within ``lad_distance_nm`` of the nucleus edge is lamina-associated (LAD; the lab: 5 % of the
  nucleus' equivalent radius), the rest are interior domains;
* LAD thickness = area of the LAD band (its rasterised, closed pixels) / perimeter of the nucleus.
"""

from __future__ import annotations

import numpy as np

from ..errors import MollifierInputError, renamed_keyword

__all__ = ["cluster_localisations", "cluster_geometry", "rasterise_labels"]


def cluster_localisations(x, y, *, eps_nm: float = 30.0, min_samples: int = 3) -> np.ndarray:
    """DBSCAN labels (0..n-1, -1 = noise) of the localisations (nm)."""
    from sklearn.cluster import DBSCAN

    if not (np.isfinite(eps_nm) and eps_nm > 0):
        raise MollifierInputError(f"DBSCAN eps must be a positive distance in nm, got {eps_nm!r}")
    if int(min_samples) < 1:
        raise MollifierInputError(f"DBSCAN min_samples must be >= 1, got {min_samples!r}")
    if len(x) == 0:
        return np.zeros(0, np.int64)
    return DBSCAN(eps=float(eps_nm), min_samples=int(min_samples), algorithm="kd_tree").fit_predict(
        np.column_stack([x, y]))


def cluster_geometry(x, y, labels, *, precision_nm: float = 0.0) -> dict:
    """Per cluster ``0..max(labels)``: ``n``, ``cx``, ``cy`` (nm), ``radius`` (nm, ``2 det(C)^(1/4)``)."""
    labels = np.asarray(labels)
    keep = labels >= 0
    lab = labels[keep]
    n_cl = int(lab.max()) + 1 if lab.size else 0
    if n_cl == 0:
        return {k: np.zeros(0) for k in ("n", "cx", "cy", "radius")}
    xs, ys = x[keep], y[keep]
    x0, y0 = xs.mean(), ys.mean()
    xs, ys = xs - x0, ys - y0

    def s(w=None):
        return np.bincount(lab, weights=w, minlength=n_cl)

    n = s()
    mx, my = s(xs) / n, s(ys) / n
    vxx = s(xs * xs) / n - mx**2 - precision_nm**2
    vyy = s(ys * ys) / n - my**2 - precision_nm**2
    vxy = s(xs * ys) / n - mx * my
    det = np.clip(vxx * vyy - vxy**2, 0, None)
    return {"n": n.astype(np.int64), "cx": mx + x0, "cy": my + y0, "radius": 2.0 * det**0.25}


def rasterise_labels(x, y, ids, pixel_size=None, origin_nm=None, shape=None, *, close_px: int = 1,
                     pixel_size_nm=None) -> np.ndarray:
    """Rasterise the localisations with ``ids > 0`` into a label image (int32, 0 = background).

    The grid has pixels of ``pixel_size`` nm from ``origin_nm`` (y0, x0) and ``shape``; the labels are closed by
    ``close_px`` pixels (grown into the background by ``close_px`` and the grown rim that touches background
    removed). ``pixel_size_nm``: deprecated name of ``pixel_size``.
    """
    pixel_size = renamed_keyword("pixel_size", pixel_size, "pixel_size_nm", pixel_size_nm, required=True)
    if origin_nm is None or shape is None:
        raise TypeError("rasterise_labels needs origin_nm and shape")
    from scipy import ndimage
    from skimage.segmentation import expand_labels

    ny, nx = shape
    img = np.zeros(shape, np.int32)
    sel = ids > 0
    iy = np.floor((y[sel] - origin_nm[0]) / pixel_size).astype(np.int64)
    ix = np.floor((x[sel] - origin_nm[1]) / pixel_size).astype(np.int64)
    ok = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    img[iy[ok], ix[ok]] = ids[sel][ok]
    if close_px > 0:
        grown = expand_labels(img, close_px)
        rim = ndimage.binary_dilation(grown == 0, iterations=close_px)
        img = np.where(rim & (img == 0), 0, grown).astype(np.int32)
    return img
