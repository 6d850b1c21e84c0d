"""``analyse_localisations``: a localisation table -> heterochromatin domains -> the lab's geometric rates.

The steps (Kant et al., Nat Commun 2024, H2B STORM; the lab's MATLAB defaults in brackets):

1. a random ``1 / subsample`` of the localisations is analysed [the lab's MATLAB used 4], with duplicates removed;
   the default ``subsample=0`` means automatic: every localisation up to :data:`AUTO_SUBSAMPLE_MAX` of them
   (analysing 1 in 4 biases the result: on :func:`.synthetic.lattice_nucleus` it finds 169 of 233 domains and a
   48 nm lamina band instead of 98 nm), and beyond that the smallest ``N`` that brings the count under it;
2. Voronoi density per localisation (:mod:`.voronoi`) and a density image at ``pixel_size`` (nm);
3. nucleus outline (:mod:`.outline`); density threshold: a percentile of the densities [50th], Otsu on
   log10 density, or a number (localisations / um^2); the value is returned;
4. DBSCAN on the dense localisations inside the nucleus [eps 30 nm, min_samples 3]; clusters of at least
   ``min_points`` [35] localisations; lamina-associated (within ``lad_fraction`` [5 %] of the nucleus'
   equivalent radius of its edge, or ``lad_distance_nm``) vs interior domains (:mod:`.segment`);
5. per interior domain: centre, equivalent radius R, spacing d (mean distance to the 5 nearest interior domain
   centres), Gamma_ac = D / d^2, Gamma_me = Gamma_ac / ((d / R)^2 - 1), lambda (:mod:`.rates`); log-normal fits;
6. images: domain labels, LAD band, per-domain Gamma maps, and the phi_h / phi_e / phi_w fields the
   segmentation implies (:mod:`.fields`), all on one grid (origin ``origin_nm``, pixel ``pixel_size`` nm).
"""

from __future__ import annotations

import numpy as np

from ..errors import MollifierInputError, RunCancelled, renamed_keyword
from .fields import segmentation_fields
from .outline import edge_distance_nm, nucleus_mask
from .rates import domain_spacing, geometric_rates, lognormal_fit
from .result import DomainResult
from .segment import cluster_geometry, cluster_localisations, rasterise_labels
from .voronoi import check_localisations, density_image, voronoi_density

__all__ = ["analyse_localisations", "analyse_table", "DEFAULTS", "THRESHOLD_METHODS", "AUTO_SUBSAMPLE_MAX",
           "auto_subsample"]

THRESHOLD_METHODS = ("percentile", "otsu")

#: ``subsample=0`` (automatic) analyses every localisation up to this many (about 10 s on 2 busy cores for
#: 128k points); beyond it, 1 in ``ceil(n / AUTO_SUBSAMPLE_MAX)``.
AUTO_SUBSAMPLE_MAX = 300_000

#: Defaults of :func:`analyse_localisations`, by parameter name (the lab's MATLAB values where it has one;
#: ``subsample`` 0 = automatic, the lab used 4; ``pixel_size`` in nm).
DEFAULTS = {
    "subsample": 0, "seed": 0, "neighbours": False, "threshold": "percentile", "percentile": 50.0,
    "eps_nm": 30.0, "min_samples": 3, "min_points": 35, "lad_fraction": 0.05, "lad_distance_nm": None,
    "pixel_size": 20.0, "outline_smoothing_nm": 200.0, "diffusivity": 1.0, "spacing_neighbours": 5,
    "precision_nm": 0.0, "margin_nm": 500.0,
}
_D = DEFAULTS
_STEPS = 7


def _resolve_threshold(density, method, percentile):
    finite = density[np.isfinite(density)]
    if finite.size == 0:
        raise MollifierInputError("no localisation has a bounded Voronoi cell: too few or collinear points")
    if isinstance(method, (int, float, np.floating)) and not isinstance(method, bool):
        value = float(method)
        if not np.isfinite(value) or value <= 0:
            raise MollifierInputError(f"a density threshold must be a positive number per um^2, got {method!r}")
        return value, "value"
    if method == "percentile":
        p = float(percentile)
        if not 0 <= p <= 100:
            raise MollifierInputError(f"the threshold percentile must be in 0..100, got {percentile!r}")
        return float(np.percentile(finite, p)), f"percentile {p:g}"
    if method == "otsu":
        from skimage.filters import threshold_otsu

        return float(10 ** threshold_otsu(np.log10(finite))), "otsu (log10 density)"
    raise MollifierInputError(f"unknown threshold {method!r}: use {THRESHOLD_METHODS} or a density per um^2")


def auto_subsample(n_localisations: int, subsample: int = 0) -> int:
    """Return the ``N`` of "analyse 1 in N": ``subsample`` itself when >= 1, else automatic (see :data:`DEFAULTS`)."""
    sub = int(subsample)
    if sub >= 1:
        return sub
    return max(1, -(-int(n_localisations) // AUTO_SUBSAMPLE_MAX))


def analyse_localisations(
    x, y, *, subsample: int = _D["subsample"], seed: int = _D["seed"], neighbours: bool = _D["neighbours"],
    threshold: str | float = _D["threshold"], percentile: float = _D["percentile"], eps_nm: float = _D["eps_nm"],
    min_samples: int = _D["min_samples"], min_points: int = _D["min_points"], lad_fraction: float = _D["lad_fraction"],
    lad_distance_nm: float | None = _D["lad_distance_nm"], pixel_size: float = _D["pixel_size"],
    outline_smoothing_nm: float = _D["outline_smoothing_nm"], diffusivity: float = _D["diffusivity"],
    spacing_neighbours: int = _D["spacing_neighbours"], precision_nm: float = _D["precision_nm"],
    margin_nm: float = _D["margin_nm"], progress=None, cancel=None, pixel_size_nm: float | None = None,
) -> DomainResult:
    """Heterochromatin domains and their geometric rates from localisations ``x, y`` (nm).

    Defaults: :data:`DEFAULTS`.

    Parameters
    ----------
    x, y : array_like
        Localisation coordinates in nm (e.g. :func:`napari_mollifier.io.smlm.read_localisations`).
    subsample : int
        Analyse 1 in ``subsample`` localisations; 0 = automatic (:func:`auto_subsample`: all up to
        :data:`AUTO_SUBSAMPLE_MAX`).
    seed : int
        Seed of the subsampling.
    neighbours : bool
        Pool each Voronoi cell with its neighbours for the density.
    threshold : str or float
        Density threshold of the dense localisations: one of :data:`THRESHOLD_METHODS` (``"percentile"`` of the
        densities inside the nucleus, ``"otsu"`` on log10 density) or a density per um^2.
    percentile : float
        The percentile (0..100) of ``threshold="percentile"``.
    eps_nm : float
        DBSCAN neighbourhood radius, nm.
    min_samples : int
        DBSCAN core-point count.
    min_points : int
        Smallest domain, in localisations (smaller clusters are dropped).
    lad_fraction : float
        Clusters closer to the nuclear edge than this fraction of the nucleus radius are lamina-associated (LAD),
        not interior domains.
    lad_distance_nm : float, optional
        The same distance in nm (overrides ``lad_fraction``).
    pixel_size : float
        Pixel size of the output images (density, labels, maps, fields), nm.
    outline_smoothing_nm : float
        Gaussian smoothing of the count image before the nucleus outline (Otsu), nm.
    diffusivity : float
        ``D`` in ``Gamma_ac = D / d^2``, um^2/s.
    spacing_neighbours : int
        ``k``: the domain spacing is the mean distance to the ``k`` nearest other domain centres.
    precision_nm : float
        Localisation blur removed from the domain radii, nm.
    margin_nm : float
        Image border around the localisations, nm.
    progress : callable, optional
        ``progress(step, total, info)`` after every step.
    cancel : callable, optional
        Returns True to stop (raises :class:`~napari_mollifier.errors.RunCancelled`).
    pixel_size_nm : float, optional
        Deprecated name of ``pixel_size`` (a ``FutureWarning``).

    Returns
    -------
    DomainResult
        Its ``params`` hold every value used, by the names above.
    """
    pixel_size = renamed_keyword("pixel_size", pixel_size, "pixel_size_nm", pixel_size_nm, default=_D["pixel_size"])
    p = {
        "subsample": subsample, "seed": seed, "neighbours": neighbours, "threshold": threshold,
        "percentile": percentile, "eps_nm": eps_nm, "min_samples": min_samples, "min_points": min_points,
        "lad_fraction": lad_fraction, "lad_distance_nm": lad_distance_nm, "pixel_size": pixel_size,
        "outline_smoothing_nm": outline_smoothing_nm, "diffusivity": diffusivity,
        "spacing_neighbours": spacing_neighbours, "precision_nm": precision_nm, "margin_nm": margin_nm,
    }
    x, y = check_localisations(x, y, min_points=10)
    try:
        px = float(pixel_size)
    except (TypeError, ValueError):
        px = float("nan")
    if not (np.isfinite(px) and px > 0):
        raise MollifierInputError(f"pixel_size must be a positive number of nm, got {pixel_size!r}")
    try:
        sub = int(p["subsample"])
    except (TypeError, ValueError):
        sub = -1
    if sub < 0:
        raise MollifierInputError(f"subsample must be an integer >= 1 (or 0 = automatic), got {p['subsample']!r}")

    def step(k, info):
        if cancel is not None and cancel():
            raise RunCancelled("domain analysis cancelled")
        if progress is not None:
            progress(k, _STEPS, {"step": info})

    n_input = int(x.size)
    xy = np.unique(np.column_stack([x, y]), axis=0)
    sub = auto_subsample(len(xy), sub)
    rng = np.random.default_rng(int(p["seed"]))
    if sub > 1:
        xy = xy[np.sort(rng.choice(len(xy), size=max(len(xy) // sub, 10), replace=False))]
    x, y = xy[:, 0].copy(), xy[:, 1].copy()
    del xy
    step(1, "subsampled")

    density, areas = voronoi_density(x, y, neighbours=bool(p["neighbours"]), return_areas=True)
    m = float(p["margin_nm"])
    origin = (np.floor((y.min() - m) / px) * px, np.floor((x.min() - m) / px) * px)
    shape = (int((y.max() + m - origin[0]) // px) + 1, int((x.max() + m - origin[1]) // px) + 1)
    if shape[0] * shape[1] > 2**28:
        raise MollifierInputError(f"a {shape[0]} x {shape[1]} px grid at {px:g} nm is too large: use a larger "
                                  "pixel_size (or check that the coordinates are in nm)")
    counts = density_image(x, y, px, origin_nm=origin, shape=shape) * (px**2 / 1e6)
    step(2, "voronoi density")

    nucleus, outline_thr = nucleus_mask(counts, px, smoothing_nm=float(p["outline_smoothing_nm"]))
    edge = edge_distance_nm(nucleus, px)
    iy = np.clip(((y - origin[0]) // px).astype(np.int64), 0, shape[0] - 1)
    ix = np.clip(((x - origin[1]) // px).astype(np.int64), 0, shape[1] - 1)
    in_nucleus = nucleus[iy, ix]
    loc_edge = edge[iy, ix]
    nucleus_area_nm2 = float(nucleus.sum()) * px**2
    nucleus_radius = float(np.sqrt(nucleus_area_nm2 / np.pi))
    threshold, thr_desc = _resolve_threshold(density[in_nucleus], p["threshold"], p["percentile"])
    dense = in_nucleus & np.isfinite(density) & (density >= threshold)
    step(3, "outline and threshold")

    clusters = np.full(x.size, -1, np.int64)
    clusters[dense] = cluster_localisations(x[dense], y[dense], eps_nm=float(p["eps_nm"]),
                                            min_samples=int(p["min_samples"]))
    step(4, "dbscan")

    geo = cluster_geometry(x, y, clusters, precision_nm=float(p["precision_nm"]))
    n_cl = geo["n"].size
    min_edge = np.full(n_cl, np.inf)
    if n_cl:
        sel = clusters >= 0
        np.minimum.at(min_edge, clusters[sel], loc_edge[sel])
    lad_dist = float(p["lad_distance_nm"]) if p["lad_distance_nm"] is not None else float(p["lad_fraction"]) * \
        nucleus_radius
    big = geo["n"] >= int(p["min_points"])
    is_lad = big & (min_edge <= lad_dist)
    is_int = big & ~is_lad
    interior_ids = np.zeros(n_cl + 1, np.int64)  # cluster -> domain id (1..N), index n_cl for noise (-1)
    interior_ids[np.flatnonzero(is_int)] = np.arange(1, int(is_int.sum()) + 1)
    domain_of = interior_ids[clusters]
    lad_of = np.concatenate([is_lad, [False]])[clusters]
    step(5, "domains")

    idx = np.flatnonzero(is_int)
    cx, cy, radius = geo["cx"][idx], geo["cy"][idx], geo["radius"][idx]
    spacing = domain_spacing(cy, cx, int(p["spacing_neighbours"]))
    rates = geometric_rates(radius / 1000.0, spacing / 1000.0, float(p["diffusivity"]))
    table = {
        "domain": np.arange(1, idx.size + 1), "centre_x_nm": cx, "centre_y_nm": cy,
        "n_localisations": geo["n"][idx], "radius_nm": radius, "diameter_nm": 2 * radius,
        "spacing_nm": spacing, "edge_distance_nm": min_edge[idx],
        "gamma_ac": rates["gamma_ac"], "gamma_me": rates["gamma_me"], "lambda": rates["lambda"],
    }

    labels = rasterise_labels(x, y, domain_of, px, origin, shape)
    lad_mask = rasterise_labels(x, y, lad_of.astype(np.int32), px, origin, shape) > 0
    lad_mask &= nucleus
    from skimage.measure import perimeter

    perim_nm = float(perimeter(nucleus)) * px
    lad_thickness = float(lad_mask.sum()) * px**2 / perim_nm if perim_nm > 0 and is_lad.any() else 0.0
    lut = {k: np.concatenate([[np.nan], rates[k]]) for k in ("gamma_ac", "gamma_me", "lambda")}
    maps = {k: np.where(labels > 0, v[labels], np.nan) for k, v in lut.items()}
    dens_img = density_image(x, y, px, origin_nm=origin, shape=shape)
    fields, assumption = segmentation_fields(dens_img, (labels > 0) | lad_mask, nucleus, px)
    step(6, "images")

    undefined = int(np.sum(~np.isfinite(rates["lambda"])))
    summary = {
        "n_localisations_input": n_input, "n_localisations_analysed": int(x.size), "subsample": sub,
        "density_threshold_per_um2": threshold, "threshold_method": thr_desc,
        "nucleus_area_um2": nucleus_area_nm2 / 1e6, "nucleus_diameter_nm": 2 * nucleus_radius,
        "n_domains": int(idx.size), "n_lad_clusters": int(is_lad.sum()),
        "mean_diameter_nm": float(np.mean(2 * radius)) if idx.size else float("nan"),
        "mean_spacing_nm": float(np.nanmean(spacing)) if np.isfinite(spacing).any() else float("nan"),
        "lad_thickness_nm": lad_thickness, "lad_distance_nm": lad_dist,
        "lad_fraction_of_dense": float(lad_of.sum() / max(int((clusters >= 0).sum()), 1)),
        "n_rates_undefined": undefined,
        "fit_radius_nm": lognormal_fit(radius), "fit_spacing_nm": lognormal_fit(spacing),
        "fit_gamma_ac": lognormal_fit(rates["gamma_ac"]), "fit_gamma_me": lognormal_fit(rates["gamma_me"]),
        "fit_lambda": lognormal_fit(rates["lambda"]),
    }
    step(7, "done")
    return DomainResult(
        x=x, y=y, density=density, dense=dense, cluster=clusters, domain=domain_of, lad=lad_of,
        table=table, summary=summary, params=p, pixel_size_nm=px, origin_nm=origin,
        density_image=dens_img, nucleus=nucleus, labels=labels, lad_mask=lad_mask, maps=maps, fields=fields,
        fields_assumption=assumption,
    )


def analyse_table(path, *, unit: str = "nm", camera_pixel_nm: float | None = None, progress=None, cancel=None,
                  **params) -> DomainResult:
    """Run :func:`analyse_localisations` on a localisation table file.

    The file is a ThunderSTORM / plain ``x, y`` CSV, read by :func:`napari_mollifier.io.smlm.read_localisations`;
    a table without x / y columns or with text in them is refused with
    :class:`~napari_mollifier.errors.MollifierInputError`.
    """
    from ..io.smlm import read_localisations

    locs = read_localisations(path, unit=unit, camera_pixel_nm=camera_pixel_nm)
    return analyse_localisations(locs["x"], locs["y"], progress=progress, cancel=cancel, **params)
