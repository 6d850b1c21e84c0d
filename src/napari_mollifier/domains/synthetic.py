"""Synthetic localisation clouds with known domains (tests, benchmarks, demos).

:func:`lattice_nucleus` draws an inhomogeneous Poisson process by thinning (exact, no pixels): an elliptic
nucleus (semi-axes ``a, b``) of euchromatin density ``rho_e``, a lamina band of density ``rho_lad`` between the
ellipse and the ellipse with semi-axes ``a - t, b - t``, and disks of radius ``R`` and density ``rho_h`` centred on
a (jittered) hexagonal lattice of pitch ``d`` (so every interior domain's 5-nearest-neighbour spacing is ``d``
without jitter), kept where the whole disk lies at least ``gap`` inside the band. :func:`sample_image` draws
Poisson counts from a density image (e.g. chromatin ``1 - phi_w`` from :func:`napari_mollifier.simulate.
synthetic_nucleus`) and places them uniformly in their pixels. Densities are localisations per um^2.
"""

from __future__ import annotations

import numpy as np

from ..errors import renamed_keyword

__all__ = ["lattice_nucleus", "sample_image", "ellipse_band_thickness"]


def ellipse_band_thickness(a, b, t) -> float:
    """Return the mean thickness (nm) of the band between ellipses (a, b) and (a - t, b - t).

    That is area / outer perimeter (Ramanujan's perimeter).
    """
    area = np.pi * (a * b - (a - t) * (b - t))
    h = ((a - b) / (a + b)) ** 2
    per = np.pi * (a + b) * (1 + 3 * h / (10 + np.sqrt(4 - 3 * h)))
    return float(area / per)


def _hex_centres(a, b, d, jitter, rng):
    rows = np.arange(-int(b / (d * np.sqrt(3) / 2)) - 1, int(b / (d * np.sqrt(3) / 2)) + 2)
    cols = np.arange(-int(a / d) - 2, int(a / d) + 3)
    j, i = np.meshgrid(rows, cols, indexing="ij")
    cx = (i + 0.5 * (j % 2)) * d
    cy = j * d * np.sqrt(3) / 2
    c = np.column_stack([cy.ravel(), cx.ravel()]).astype(float)
    if jitter > 0:
        c += rng.normal(0, jitter, c.shape)
    return c


def lattice_nucleus(*, semi_axes_nm=(3000.0, 2500.0), spacing_nm=300.0, radius_nm=80.0, jitter_nm=0.0,
                    lad_thickness_nm=100.0, rho_e=3000.0, rho_h=12000.0, rho_lad=12000.0, rho_background=0.0,
                    gap_nm=None, centre_nm=(5000.0, 5000.0), seed=0) -> dict:
    """Localisations of an elliptic nucleus with a hexagonal lattice of disk domains and a lamina band.

    ``radius_nm`` may be a number or a function ``f(cy, cx) -> radii`` (nm, centre coordinates relative to the
    nucleus centre) for domains whose size varies in space. ``gap_nm`` (default ``spacing_nm / 2``) is the
    clearance between the disks and the lamina band.

    Returns
    -------
    dict
        ``x, y`` (nm), ``centres`` ((n, 2) y, x in nm, absolute), ``radii`` (nm), ``spacing_nm``,
        ``n_domains``, ``lad_thickness_nm`` (true mean band thickness, area / perimeter), ``truth_density``
        (callable ``f(y, x)`` -> per um^2), ``semi_axes_nm``, ``centre_nm``.
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    a, b = (float(v) for v in semi_axes_nm)
    t = float(lad_thickness_nm)
    d = float(spacing_nm)
    gap = d / 2 if gap_nm is None else float(gap_nm)
    cen = _hex_centres(a, b, d, float(jitter_nm), rng)
    radii = (np.asarray(radius_nm(cen[:, 0], cen[:, 1]), float) if callable(radius_nm)
             else np.full(len(cen), float(radius_nm)))
    # keep disks whose every point lies inside the inner ellipse shrunk by R + gap
    shrink_a, shrink_b = a - t - radii - gap, b - t - radii - gap
    ok = (shrink_a > 0) & (shrink_b > 0)
    ok &= (cen[:, 1] / np.where(ok, shrink_a, 1)) ** 2 + (cen[:, 0] / np.where(ok, shrink_b, 1)) ** 2 <= 1
    cen, radii = cen[ok], radii[ok]
    tree = cKDTree(cen) if len(cen) else None
    rmax = float(radii.max()) if len(radii) else 0.0
    y0, x0 = (float(v) for v in centre_nm)

    def density(yy, xx):
        yy, xx = np.asarray(yy, float) - y0, np.asarray(xx, float) - x0
        out = np.full(np.broadcast(yy, xx).shape, float(rho_background))
        outer = (xx / a) ** 2 + (yy / b) ** 2 <= 1
        inner = (xx / (a - t)) ** 2 + (yy / (b - t)) ** 2 <= 1
        out[outer] = rho_e
        out[outer & ~inner] = rho_lad
        if tree is not None:
            dist, k = tree.query(np.column_stack([yy.ravel(), xx.ravel()]), distance_upper_bound=rmax + 1e-9)
            hit = np.isfinite(dist)
            hit[hit] = dist[hit] <= radii[k[hit]]
            out.ravel()[hit] = rho_h
        return out

    rho_max = max(rho_e, rho_h, rho_lad, rho_background)
    margin = 500.0
    box = ((-b - margin, b + margin), (-a - margin, a + margin))
    area_um2 = (2 * (a + margin)) * (2 * (b + margin)) / 1e6
    n = rng.poisson(rho_max * area_um2)
    yy = rng.uniform(*box[0], n) + y0
    xx = rng.uniform(*box[1], n) + x0
    keep = rng.uniform(0, rho_max, n) < density(yy, xx)
    return {"x": xx[keep], "y": yy[keep], "centres": cen + np.array([y0, x0]), "radii": radii,
            "spacing_nm": d, "n_domains": int(len(cen)),
            "lad_thickness_nm": ellipse_band_thickness(a, b, t), "truth_density": density,
            "semi_axes_nm": (a, b), "centre_nm": (y0, x0)}


def sample_image(density, pixel_size: float | None = None, *, origin_nm=(0.0, 0.0), seed=0,
                 pixel_size_nm: float | None = None) -> dict:
    """Poisson localisations from a density image (localisations per um^2 per pixel), uniform within pixels.

    ``pixel_size`` is the image's pixel size in nm (``pixel_size_nm``: its deprecated name). Returns ``{"x", "y"}``
    in nm (pixel ``[i, j]`` covers ``y0 + i px .. y0 + (i + 1) px``).
    """
    pixel_size = renamed_keyword("pixel_size", pixel_size, "pixel_size_nm", pixel_size_nm, required=True)
    rng = np.random.default_rng(seed)
    px = float(pixel_size)
    lam = np.clip(np.asarray(density, float), 0, None) * px**2 / 1e6
    counts = rng.poisson(lam)
    iy, ix = np.nonzero(counts)
    reps = counts[iy, ix]
    iy, ix = np.repeat(iy, reps), np.repeat(ix, reps)
    y = origin_nm[0] + (iy + rng.uniform(size=iy.size)) * px
    x = origin_nm[1] + (ix + rng.uniform(size=ix.size)) * px
    return {"x": x, "y": y}
