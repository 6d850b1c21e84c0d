"""Estimate the length coefficient ``l2 = D / G_ac`` of the chromatin-balance model from the image itself.

``l2`` is a squared length. Its default (1.04) is in the reference data's box units, which mean nothing for a
real image in um. Two independent estimates are offered (docs/science.md, "Estimating l2 from the image"):

``"self-consistency"`` (default)
    The rate map of the balance model is linear in ``l2``::

        lambda(l2) = A + l2 B,   A = phi_h_R / phi_e_R,   B = lap(phi_e)_R / phi_e_R

    (mollified at radius ``R``). Smoothing is linear, so ``(lambda phi_e)_R = phi_h_R + l2 lap(phi_e)_R`` holds
    exactly, and ``lambda(l2_true)`` is a kernel-weighted average of the true rate: it carries no texture at the
    scale of the heterochromatin domains as long as the true rate varies on larger scales than the domains. A
    wrong ``l2`` leaves ``(l2 - l2_true) B`` in the map, i.e. the domain texture of ``lap(phi_e)``. So ``l2`` is
    the value that leaves the map least correlated with ``B`` at the domain scale: with ``H`` a high-pass filter
    (the field minus its Gaussian average over ``2 R``),
    ``l2 = -<H A, H B> / <H B, H B>`` over the ROI (least squares, closed form). Image noise in ``B`` biases this
    towards 0 (errors in variables); the noise terms ``<H dA, H dB>`` and ``<H dB, H dB>`` are measured by adding
    noise of the estimated level (:func:`napari_mollifier.noise.estimate_noise`) and subtracted. ``R`` is the
    smallest radius on a ladder at which noise makes up at most 30 % of ``<H B, H B>``. The standard error is a
    block jackknife over 16 image blocks.
``"spacing"``
    The lab's relation ``Gamma_ac = D / d^2`` gives ``l2 = c d^2`` with ``d`` the spacing between heterochromatin
    domains (mean distance to the 5 nearest domain centres, as in :mod:`napari_mollifier.domains.rates`),
    measured on an Otsu segmentation of the high-passed ``phi_h``. ``c`` = :data:`SPACING_C`, calibrated on the
    three finite-element reference states (``l2 = 1.04`` box units). This assumes that the image's domains form
    like those of the reference states; the synthetic nucleus (whose domains are drawn, not formed) has ``c``
    2.8x smaller, so this estimate is an order-of-magnitude cross-check, not the default.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .errors import MollifierInputError, find_stack_level

__all__ = ["estimate_coefficients", "domain_spacing_of_image", "resolve_coefficients", "is_physical", "SPACING_C",
           "ESTIMATORS"]

#: ``c`` in ``l2 = c d^2``: mean of 1.04 / d^2 over the three finite-element reference states (lambda = 0.5, 1,
#: 1.5; d = 1.19, 1.13, 1.44 box units, giving c = 0.74, 0.82, 0.50). tests/test_coefficients.py re-measures it.
SPACING_C = 0.69
#: ``c`` measured the same way on the forward model (:func:`napari_mollifier.simulate.synthetic_nucleus`, whose
#: domains are drawn with a fixed size of ~100 nm; 0.23-0.27 at 10-40 nm pixels): in docs/science.md, not used.
SPACING_C_SYNTHETIC = 0.25

ESTIMATORS = ("self-consistency", "spacing")
_LADDER = (3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0)
_NOISE_FRACTION = 0.3


def _fractions(fields, roi):
    if not isinstance(fields, dict):
        raise MollifierInputError("fields must be a dict {'phi_h': array, 'phi_e': array} (or {'density': array})")
    if set(fields) == {"density"}:
        from .density import split_density

        fields, _ = split_density(fields["density"], None if roi is None else np.asarray(roi) > 0)
    missing = [k for k in ("phi_h", "phi_e") if k not in fields]
    if missing:
        raise MollifierInputError(f"estimating l2 needs the fields phi_h and phi_e; missing {missing}")
    ph = np.asarray(fields["phi_h"], dtype=np.float64)
    pe = np.asarray(fields["phi_e"], dtype=np.float64)
    if ph.shape != pe.shape or ph.ndim != 2:
        raise MollifierInputError(f"estimating l2 needs two 2-D fields of one shape, got {ph.shape} and {pe.shape}")
    return ph, pe


def _region(shape, roi, ph, pe):
    valid = np.isfinite(ph) & np.isfinite(pe)
    if roi is None:
        return valid
    roi = np.asarray(roi)
    if roi.shape != shape:
        raise MollifierInputError(f"roi shape {roi.shape} does not match the image shape {shape}")
    return valid & (roi > 0)


def _smooth(f, mask, s):
    w = ndi.gaussian_filter(mask.astype(float), s)
    return ndi.gaussian_filter(np.where(mask, f, 0.0), s) / np.maximum(w, 1e-12)


def _ab(ph, pe, px, mask, radius):
    from .mollifier import derivatives

    if mask.all():  # every pixel valid: plain convolutions (fast); the ROI only selects where we look  # noqa: SIM108 - clearer as a block
        kw = {"boundary": "reflect"}
    else:
        kw = {"mask": mask}
    dh = derivatives(np.where(mask, ph, 0.0), radius, pixel_size=px, which=("u",), ndim=2, **kw)
    de = derivatives(np.where(mask, pe, 0.0), radius, pixel_size=px, which=("u", "lap"), ndim=2, **kw)
    with np.errstate(divide="ignore", invalid="ignore"):
        den = np.where(de["u"] > 1e-3 * np.nanmedian(np.abs(de["u"][mask])), de["u"], np.nan)
        return dh["u"] / den, de["lap"] / den


def _self_consistency(ph, pe, px, mask, valid, noise, n_noise, seed):
    from .noise import estimate_noise

    if noise == "auto":
        levels = (estimate_noise(np.where(mask, ph, 0.0), mask), estimate_noise(np.where(mask, pe, 0.0), mask))
    else:
        levels = (float(noise), float(noise))
    extent = min(np.ptp(np.nonzero(mask)[k]) + 1 for k in range(2))
    ladder = [r for r in _LADDER if r <= extent / 8] or [_LADDER[0]]
    table, chosen = [], None
    for radius in ladder:
        a, b = _ab(ph, pe, px, valid, radius)
        use = mask & np.isfinite(a) & np.isfinite(b) & ndi.binary_erosion(mask, iterations=int(radius))
        if use.sum() < 100:
            break
        s = 2.0 * radius
        ha = a - _smooth(np.where(use, a, 0.0), use, s)
        hb = b - _smooth(np.where(use, b, 0.0), use, s)
        rng = np.random.default_rng(seed)
        nab, nbb = np.zeros(ph.shape), np.zeros(ph.shape)
        for _ in range(n_noise if max(levels) > 0 else 0):
            a2, b2 = _ab(ph + levels[0] * rng.standard_normal(ph.shape), pe + levels[1] * rng.standard_normal(
                ph.shape), px, valid, radius)
            da = a2 - a
            db = b2 - b
            da = da - _smooth(np.where(use, da, 0.0), use, s)
            db = db - _smooth(np.where(use, db, 0.0), use, s)
            nab += np.nan_to_num(da * db) / n_noise
            nbb += np.nan_to_num(db * db) / n_noise
        num = (-(ha * hb) + nab)[use]
        den = (hb * hb - nbb)[use]
        signal = float(np.mean((hb * hb)[use]))
        fraction = float(np.mean(nbb[use]) / signal) if signal > 0 else 1.0
        value = float(num.mean() / den.mean()) if den.mean() > 0 else float("nan")
        yy, xx = np.nonzero(use)
        block = (4 * (yy - yy.min()) // (np.ptp(yy) + 1)) * 4 + 4 * (xx - xx.min()) // (np.ptp(xx) + 1)
        jack = np.array([num[block != k].mean() / den[block != k].mean() for k in range(16) if (block == k).any()])
        n = len(jack)
        stderr = float(np.sqrt((n - 1) / n * np.sum((jack - jack.mean()) ** 2))) if n > 1 else float("nan")
        table.append({"radius_px": radius, "l2": value, "stderr": stderr, "noise_fraction": round(fraction, 4),
                      "pixels": int(use.sum())})
        if fraction <= _NOISE_FRACTION and np.isfinite(value) and value > 0:
            chosen = table[-1]
            break
    if chosen is None:
        ok = [t for t in table if np.isfinite(t["l2"]) and t["l2"] > 0]
        if not ok:
            raise MollifierInputError(
                "l2 could not be estimated by self-consistency: the image shows no domain texture that the rate "
                "map could absorb (too noisy, too small, or no heterochromatin domains). Set it yourself: "
                "params={'l2': VALUE} (--param l2=VALUE, lengths in um^2)")
        chosen = min(ok, key=lambda t: t["noise_fraction"])
    return chosen, table, levels


def domain_spacing_of_image(phi_h, pixel_size, roi=None) -> dict:
    """Spacing ``d`` between heterochromatin domains of a ``phi_h`` image, in the unit of ``pixel_size``.

    ``phi_h`` is high-passed (minus its Gaussian average over 20 px, which removes the nucleus outline),
    thresholded by Otsu inside the ROI, and split into connected domains (>= 3 px); ``d`` is the median over
    domains of the mean distance to the 5 nearest other domain centres. Returns ``{"spacing", "n_domains",
    "mean_diameter"}``.
    """
    from skimage.filters import threshold_otsu

    from .domains.rates import domain_spacing

    ph = np.asarray(phi_h, dtype=np.float64)
    mask = np.isfinite(ph) if roi is None else (np.asarray(roi) > 0) & np.isfinite(ph)
    px = float(np.mean(np.atleast_1d(pixel_size)))
    s = 20.0
    f = ph - _smooth(np.where(mask, ph, 0.0), mask, s)
    values = f[mask]
    if values.size < 50 or values.max() == values.min():
        return {"spacing": float("nan"), "n_domains": 0, "mean_diameter": float("nan")}
    lab, n = ndi.label((f > threshold_otsu(values)) & mask)
    sizes = ndi.sum(np.ones_like(f), lab, range(1, n + 1))
    keep = np.nonzero(sizes >= 3)[0] + 1
    if keep.size < 3:
        return {"spacing": float("nan"), "n_domains": int(keep.size), "mean_diameter": float("nan")}
    centres = np.array(ndi.center_of_mass(np.ones_like(f), lab, keep))
    spacing = domain_spacing(centres[:, 0], centres[:, 1])
    return {"spacing": float(np.median(spacing) * px), "n_domains": int(keep.size),
            "mean_diameter": float(2 * np.sqrt(sizes[keep - 1].mean() / np.pi) * px)}


def estimate_coefficients(fields: dict, pixel_size, model="chromatin-balance", roi=None,
                          method: str = "self-consistency", noise="auto", n_noise: int = 4, seed: int = 0) -> dict:
    """Estimate ``l2 = D / G_ac`` of the chromatin-balance model from the image (module docstring).

    Parameters
    ----------
    fields : dict
        ``{"phi_h", "phi_e"}`` volume fractions (2-D), or ``{"density"}`` (split as in ``infer_rates``).
    pixel_size : float or (float, float)
        Pixel size; the estimate is in this unit squared (um^2 for um).
    model : str
        Only ``"chromatin-balance"`` (the phase-field form's coefficients cannot be estimated this way).
    roi : array, optional
        Nucleus mask or label image; the estimate uses the pixels with ``roi > 0`` (all finite pixels without).
    method : {"self-consistency", "spacing"}
    noise : "auto" or float
        Noise level of the fields (estimated from the image by default).
    n_noise : int
        Noise realisations for the errors-in-variables correction (self-consistency).
    seed : int

    Returns
    -------
    dict
        ``params`` ({"l2": value}), ``l2``, ``stderr``, ``method``, ``description`` (one sentence: how the value
        was obtained), ``diagnostics`` (radius ladder, noise fractions, domain spacing and the spacing-based value
        as a cross-check).
    """
    name = getattr(model, "name", model)
    if name != "chromatin-balance":
        raise MollifierInputError(
            f"estimate_coefficients supports model 'chromatin-balance' only, got {name!r}: give the coefficients of "
            f"{name!r} yourself (params=..., --param KEY=VALUE)")
    if method not in ESTIMATORS:
        raise MollifierInputError(f"unknown estimation method {method!r}: use one of {ESTIMATORS}")
    ph, pe = _fractions(fields, roi)
    px = tuple(float(v) for v in np.broadcast_to(np.atleast_1d(np.asarray(pixel_size, float)), (2,)))
    if not all(np.isfinite(px)) or min(px) <= 0:
        raise MollifierInputError(f"pixel_size must be positive, got {pixel_size!r}")
    mask = _region(ph.shape, roi, ph, pe)
    if mask.sum() < 400:
        raise MollifierInputError(f"the ROI has {int(mask.sum())} valid pixels: too few to estimate l2 (>= 400)")
    spacing = domain_spacing_of_image(ph, px, mask)
    from_spacing = SPACING_C * spacing["spacing"] ** 2
    diagnostics = {"domain_spacing": spacing["spacing"], "n_domains": spacing["n_domains"],
                   "l2_from_spacing": from_spacing, "spacing_c": SPACING_C}
    if method == "spacing":
        if not np.isfinite(from_spacing):
            raise MollifierInputError("no heterochromatin domains found in phi_h to measure their spacing: set l2 "
                                      "yourself (params={'l2': VALUE}, --param l2=VALUE)")
        value, stderr = float(from_spacing), float("nan")
        description = (f"l2 = c d^2 = {SPACING_C:g} x ({spacing['spacing']:.4g})^2 from the spacing d of "
                       f"{spacing['n_domains']} heterochromatin domains (c calibrated on the finite-element "
                       "reference states)")
    else:
        valid = np.isfinite(ph) & np.isfinite(pe)  # derivatives from every valid pixel (like roi_mode="image")
        chosen, table, levels = _self_consistency(ph, pe, px, mask, valid, noise, int(n_noise), seed)
        value, stderr = chosen["l2"], chosen["stderr"]
        diagnostics.update({"radius_px": chosen["radius_px"], "noise_fraction": chosen["noise_fraction"],
                            "ladder": table, "noise": list(levels), "highpass_px": 2 * chosen["radius_px"]})
        description = (f"l2 = {value:.4g} +- {stderr:.2g} estimated by self-consistency: the value that leaves the "
                       f"rate map least correlated with lap(phi_e)/phi_e at the domain scale (radius "
                       f"{chosen['radius_px']:g} px, noise-corrected)")
    return {"params": {"l2": value}, "l2": value, "stderr": stderr, "method": method,
            "description": description, "diagnostics": diagnostics}


# --------------------------------------------------------------------------- the units policy
#: Units that mean "no physical unit": lengths are in pixels (or the model's box units).
UNITLESS = (None, "", "px", "pixel", "pixels", "none")
COEFFICIENT_MODES = ("auto", "default")


def is_physical(unit) -> bool:
    """Tell whether ``unit`` names a physical length unit (``"um"``, ``"nm"``...), not pixels."""
    return (str(unit).strip().lower() if unit is not None else None) not in UNITLESS


def resolve_coefficients(model, given=None, mode=None, fields=None, pixel_size=1.0, unit=None, roi=None,
                         seed: int = 0) -> tuple[dict, dict, dict | None]:
    """Resolve the coefficients of a run and where each came from: ``(params, sources, estimate)``.

    * ``given`` (dict): those values are used (source ``"given"``);
    * ``mode="default"``: the others take the model's defaults (``"default (box units)"``), with a
      :class:`~napari_mollifier.errors.MollifierWarning` when the pixel size has a physical ``unit`` and a length
      coefficient is among them;
    * ``mode="auto"``: the missing length coefficient ``l2`` is estimated (:func:`estimate_coefficients`,
      source ``"estimated (...)"``);
    * ``mode=None`` (the policy): missing coefficients without a length take their defaults; a missing length
      coefficient takes its box-unit default only when ``unit`` is not physical. With a physical unit it is
      estimated, with a warning that says so (chromatin-balance), or the run stops with a
      :class:`~napari_mollifier.errors.MollifierInputError` that names it and how to set it (other models).
    """
    from .errors import MollifierWarning
    from .models import get_model

    m = get_model(model)
    if mode not in (None,) + COEFFICIENT_MODES:
        raise MollifierInputError(f"params must be a dict of coefficients, 'auto' or 'default', got {mode!r}")
    given = dict(given or {})
    params = m.params(given)  # checks the names
    sources = {k: ("given" if k in given else "default (box units)" if m.coefficients[k].length_power else "default")
               for k in params}
    lengths = [k for k, c in m.coefficients.items() if c.length_power and k not in given]
    physical = is_physical(unit)
    unit_text = str(unit) if physical else "pixels"
    if not lengths or (mode is None and not physical):
        return params, sources, None
    if mode == "default":
        if physical:
            import warnings

            warnings.warn(
                f"the box-unit default(s) {', '.join(f'{k} = {params[k]:g}' for k in lengths)} are applied to an "
                f"image in {unit_text}: the rate map is likely wrong; estimate {lengths[0]} (params='auto', "
                f"--params auto) or set it (--param {lengths[0]}=VALUE, in {unit_text}^2)", MollifierWarning,
                stacklevel=find_stack_level())
        return params, sources, None
    hint = ", ".join(f"{k}=VALUE" for k in lengths)
    if m.name != "chromatin-balance":
        raise MollifierInputError(
            f"model {m.name!r}: the length coefficient(s) {', '.join(lengths)} were not given for an image in "
            f"{unit_text}, and the model's defaults are in the reference data's box units: set them with "
            f"params={{...}} or --param {hint} (in {unit_text} to the coefficient's power), or pass "
            "params='default' / --params default to use the box-unit values on purpose")
    if fields is None:
        raise MollifierInputError(f"l2 was not given for an image in {unit_text}: set it (--param l2=VALUE)")
    est = estimate_coefficients(fields, pixel_size, m.name, roi=roi, seed=seed)
    params["l2"] = est["l2"]
    sources["l2"] = f"estimated ({est['description']})"
    if mode is None:
        import warnings

        warnings.warn(
            f"l2 was not given for an image in {unit_text} (the default 1.04 is in box units): "
            f"{est['description'].replace('l2 = ', 'using l2 = ', 1)} {unit_text}^2. Set it yourself with "
            f"params={{'l2': VALUE}} / --param l2=VALUE, or --params auto to estimate it without this warning",
            MollifierWarning, stacklevel=find_stack_level())
    return params, sources, est
