"""From raw intensities of two marks to volume fractions, and the flags on maps that cannot mean anything.

**Intensities -> volume fractions** (:func:`intensities_to_fractions`). The chromatin models take the volume
fractions ``phi_h`` (heterochromatin, e.g. H3K9me3) and ``phi_e`` (euchromatin, e.g. H3K27ac). A microscope
gives intensities ``I = offset + brightness * phi`` with an offset (camera, background, out-of-focus light) and a
brightness that differ between the two channels. The conversion, per channel ``c``:

1. background ``b_c``: the median of the channel *outside* the nucleus (or a number you give);
2. scale ``s_c``: a robust high percentile (default the 99th) of ``I_c - b_c`` *inside* the nucleus, so that
   ``n_c = max(I_c - b_c, 0) / s_c`` is about 1 in the brightest chromatin of each mark;
3. mark ratio ``rho`` (default 1): ``n_h <- rho n_h``, the fraction of the brightest heterochromatin over that of
   the brightest euchromatin. The image cannot tell it; give it from a calibration, or estimate it with
   :func:`estimate_mark_ratio` (``mark_ratio="estimate"``: an assumption, see there);
4. total chromatin fraction ``T`` (default :data:`DEFAULT_TOTAL_FRACTION`, accepted range
   :data:`TOTAL_FRACTION_RANGE`): ``phi_c = k n_c`` with one factor ``k`` for both marks, chosen so that the
   mean of ``phi_h + phi_e`` inside the nucleus is ``T``;
5. pixels outside the nucleus become NaN (missing data: the solver then uses only nucleus pixels).

What this can and cannot give: the offsets are removed, so the *pattern* of each fraction is right. The relative
brightness of the two marks (antibody, dye, exposure) is unknown, so each mark is scaled by its own percentile
times ``rho``, and ``T`` is an assumption. For the chromatin-balance model ``T`` cancels, but ``rho`` does not: a
ratio 20 % off lowers the rate's correlation with the truth to about 0.93-0.95 on the synthetic nucleus, a
factor 2 off to about 0.5-0.75 (docs: "Your own image"). The *level* of a rate map computed from converted
fractions is therefore **relative** (comparable between cells imaged and converted the same way, not an absolute ``Gamma_me /
Gamma_ac``). The record returned says so (``"level": "relative"``) and :func:`napari_mollifier.infer_rates`
copies it into ``provenance["fractions"]`` and ``provenance["rate_level"]``.

**Negative rates** (:func:`flag_result`, called by :func:`napari_mollifier.infer_rates` at the end of every
run of a chromatin model). ``lambda = Gamma_me / Gamma_ac`` is a ratio of two rates and cannot be negative. When
more than :data:`NEGATIVE_RATE_LIMIT` (1 %) of an ROI has ``lambda < 0`` a
:class:`~napari_mollifier.errors.MollifierWarning` names the likely causes and the fix. Every negative pixel is
marked, whatever its share: ``uncertainty = +inf`` there (the value has no meaning at any error bar; the rate
map keeps the value, so nothing is hidden), ``roi_stats[i]["negative_fraction"]`` and
``provenance["negative_rate"]`` give the share.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from .errors import MollifierInputError, MollifierWarning

if TYPE_CHECKING:
    from .models import Model

__all__ = [
    "intensities_to_fractions",
    "estimate_mark_ratio",
    "fractions_from_loaded",
    "mark_relative",
    "Fractions",
    "flag_result",
    "DEFAULT_TOTAL_FRACTION",
    "TOTAL_FRACTION_RANGE",
    "DEFAULT_PERCENTILE",
    "NEGATIVE_RATE_LIMIT",
]

#: Mean chromatin volume fraction ``phi_h + phi_e`` inside the nucleus assumed by the conversion.
DEFAULT_TOTAL_FRACTION = 0.4
#: Accepted values of ``total_fraction`` (a nucleus is neither empty of chromatin nor solid chromatin).
TOTAL_FRACTION_RANGE = (0.05, 0.9)
#: Percentile of the background-subtracted intensity inside the nucleus that scales each mark.
DEFAULT_PERCENTILE = 99.0
#: Share of an ROI with a negative rate above which a run warns.
NEGATIVE_RATE_LIMIT = 0.01

_RELATIVE = ("relative: the two marks' relative brightness and the total chromatin fraction are assumptions of "
             "the intensity conversion, so only the pattern of the map (and comparisons between cells converted "
             "the same way) is meaningful, not its level")


class Fractions(dict):
    """``{"phi_h": array, "phi_e": array}`` with the conversion's record as :attr:`record`.

    A plain ``dict`` for every purpose (pass it to :func:`napari_mollifier.infer_rates` as ``fields``); the
    record travels with it into the result's provenance.
    """

    record: dict

    def __init__(self, *args: object, record: dict | None = None, **kwargs: object) -> None:
        """Build the dict from ``args`` and ``kwargs`` as :class:`dict` does, with ``record`` (copied) attached.

        Parameters
        ----------
        *args, **kwargs
            As for :class:`dict`.
        record : dict, optional
            The conversion's record.
        """
        super().__init__(*args, **kwargs)
        self.record = dict(record or {})


def _as_image(name: str, value) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype == object or np.iscomplexobj(arr) or arr.dtype.kind not in "biuf":
        raise MollifierInputError(f"the {name} intensity image must be a real numeric image, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise MollifierInputError(f"the {name} intensity image must be 2-D or 3-D (one channel), got shape "
                                  f"{arr.shape}: pick one channel and one time point")
    return arr.astype(np.float64)


def _nucleus_mask(nucleus, shape) -> np.ndarray | None:
    if nucleus is None:
        return None
    mask = np.asarray(nucleus)
    if mask.shape != shape:
        raise MollifierInputError(f"the nucleus mask has shape {mask.shape}, the images {shape}: draw the ROI on "
                                  "the image's pixel grid")
    if mask.dtype.kind == "f":
        mask = np.nan_to_num(mask) > 0
    return mask.astype(bool) if mask.dtype == bool else mask > 0


def intensities_to_fractions(h: ArrayLike, e: ArrayLike, nucleus: ArrayLike | None = None,
                             total_fraction: float = DEFAULT_TOTAL_FRACTION,
                             percentile: float = DEFAULT_PERCENTILE,
                             background: tuple[float, float] | None = None,
                             outside: str = "nan", mark_ratio: float | str = 1.0, l2: float | None = None,
                             pixel_size: float | ArrayLike | None = None) -> tuple[Fractions, dict]:
    """Convert raw intensities of a heterochromatin and a euchromatin mark to volume fractions ``phi_h``, ``phi_e``.

    The steps and what the result means are in the module docstring: background outside the nucleus, each mark
    scaled by a robust high percentile inside it, one common factor so that the mean chromatin fraction inside
    the nucleus is ``total_fraction``. The level of any rate computed from the result is *relative*.

    Parameters
    ----------
    h, e : array
        Raw intensities of the heterochromatin mark (e.g. H3K9me3) and the euchromatin mark (e.g. H3K27ac), same
        shape (2-D or 3-D), any units and offsets.
    nucleus : array of bool or int, optional
        The nucleus (non-zero = inside), e.g. the ROI you solve in. Without it the whole image is taken as
        nucleus and the background is the 1st percentile of each channel (give ``background`` if the image has
        no background pixels).
    total_fraction : float
        Mean of ``phi_h + phi_e`` inside the nucleus (default 0.4, accepted 0.05 .. 0.9).
    percentile : float
        Percentile (50 .. 100) of the background-subtracted intensity inside the nucleus that scales each mark.
    background : None or (float, float)
        Background intensities of ``h`` and ``e``; default: the median outside the nucleus.
    outside : {"nan", "keep"}
        Pixels outside the nucleus become NaN (missing data, the default) or keep their converted value.
    mark_ratio : float or "estimate"
        ``phi_h`` of the brightest heterochromatin over ``phi_e`` of the brightest euchromatin (their
        ``percentile``-th percentiles in the nucleus). The image cannot tell it (the marks' relative brightness
        is unknown); default 1. A number from a calibration, or ``"estimate"``: :func:`estimate_mark_ratio`
        (assumes that the rate varies on larger scales than the chromatin domains; needs ``l2`` and
        ``pixel_size``; chromatin-balance model). A wrong ratio changes the rate's *pattern* too, not only its
        level (docs: "Your own image").
    l2, pixel_size : float, optional
        For ``mark_ratio="estimate"``: the coefficient ``l2`` and the pixel size, in the same length unit.

    Returns
    -------
    fractions : Fractions
        ``{"phi_h", "phi_e"}`` (float64), a dict to pass to :func:`napari_mollifier.infer_rates`; its ``record``
        goes into the result's provenance.
    record : dict
        What was done: backgrounds, scales, the common factor, the total fraction, pixels clipped at zero and
        ``"level": "relative"``.

    Raises
    ------
    MollifierInputError
        Images of different shapes, an empty nucleus, a ``total_fraction`` or ``percentile`` out of range, or a
        channel without signal above its background inside the nucleus.
    """
    hi, ei = _as_image("heterochromatin (h)", h), _as_image("euchromatin (e)", e)
    if hi.shape != ei.shape:
        raise MollifierInputError(f"the two intensity images differ in shape: h {hi.shape}, e {ei.shape}")
    try:
        total_fraction = float(total_fraction)
        percentile = float(percentile)
    except (TypeError, ValueError):
        raise MollifierInputError("total_fraction and percentile must be numbers") from None
    lo_t, hi_t = TOTAL_FRACTION_RANGE
    if not lo_t <= total_fraction <= hi_t:
        raise MollifierInputError(
            f"total_fraction {total_fraction:g} is outside {lo_t:g} .. {hi_t:g}: it is the mean chromatin volume "
            f"fraction phi_h + phi_e inside the nucleus (default {DEFAULT_TOTAL_FRACTION:g})"
        )
    if not 50.0 <= percentile <= 100.0:
        raise MollifierInputError(f"percentile {percentile:g} is outside 50 .. 100: it picks the bright chromatin "
                                  f"that scales each mark (default {DEFAULT_PERCENTILE:g})")
    if outside not in ("nan", "keep"):
        raise MollifierInputError(f"outside must be 'nan' or 'keep', got {outside!r}")
    finite = np.isfinite(hi) & np.isfinite(ei)
    mask = _nucleus_mask(nucleus, hi.shape)
    inside = finite if mask is None else (mask & finite)
    if not inside.any():
        raise MollifierInputError("the nucleus has no finite pixel: draw the ROI over the nucleus")
    outside_px = finite & ~inside if mask is not None else np.zeros_like(finite)

    record: dict = {"method": "intensities_to_fractions", "total_fraction": total_fraction,
                    "total_fraction_range": list(TOTAL_FRACTION_RANGE), "percentile": percentile,
                    "nucleus_pixels": int(inside.sum()), "outside": outside if mask is not None else "none",
                    "level": "relative", "calibrated": False}
    if background is not None:
        try:
            bg = [float(b) for b in background]
        except TypeError:
            bg = [float(background)] * 2
        if len(bg) != 2 or not all(np.isfinite(bg)):
            raise MollifierInputError(f"background must be two numbers (h, e), got {background!r}")
        record["background_source"] = "given"
    elif outside_px.sum() >= 10:
        bg = [float(np.median(hi[outside_px])), float(np.median(ei[outside_px]))]
        record["background_source"] = f"median outside the nucleus ({int(outside_px.sum())} px)"
    else:
        bg = [float(np.percentile(hi[inside], 1)), float(np.percentile(ei[inside], 1))]
        record["background_source"] = ("1st percentile of the image (no nucleus mask, or fewer than 10 pixels "
                                       "outside it): give background=(h, e) if the image has no background")
    scaled, scales, clipped = {}, [], {}
    for name, img, b in (("phi_h", hi, bg[0]), ("phi_e", ei, bg[1])):
        sub = img - b
        s = float(np.percentile(sub[inside], percentile))
        if not s > 0:
            label = "heterochromatin (h)" if name == "phi_h" else "euchromatin (e)"
            raise MollifierInputError(
                f"the {label} channel has no signal above its background ({b:.4g}) inside the nucleus (its "
                f"{percentile:g}th percentile is {s + b:.4g}): check the channel, the nucleus ROI and the background"
            )
        clipped[name] = float(np.mean(sub[inside] < 0))
        scaled[name] = np.clip(sub, 0.0, None) / s
        scales.append(s)
    if isinstance(mark_ratio, str):
        if mark_ratio != "estimate":
            raise MollifierInputError(f"mark_ratio must be a positive number or 'estimate', got {mark_ratio!r}")
        if l2 is None or pixel_size is None:
            raise MollifierInputError("mark_ratio='estimate' needs l2 and pixel_size (same length unit, e.g. "
                                      "l2=0.0234 um^2 and pixel_size=0.02 um)")
        trial = {k: np.where(finite & (inside if mask is None else mask), v, np.nan) for k, v in scaled.items()}
        ratio, estimate = estimate_mark_ratio(trial, l2=l2, pixel_size=pixel_size, nucleus=inside)
        record["mark_ratio_source"] = estimate["summary"]
        record["mark_ratio_estimate"] = estimate
    else:
        try:
            ratio = float(mark_ratio)
        except (TypeError, ValueError):
            raise MollifierInputError(f"mark_ratio must be a positive number or 'estimate', got {mark_ratio!r}") \
                from None
        if not (np.isfinite(ratio) and ratio > 0):
            raise MollifierInputError(f"mark_ratio must be a positive number or 'estimate', got {mark_ratio!r}")
        record["mark_ratio_source"] = "given" if ratio != 1.0 else (
            "default 1: the brightest chromatin of both marks is assumed to hold the same volume fraction")
    record["mark_ratio"] = ratio
    scaled["phi_h"] = scaled["phi_h"] * ratio
    mean_sum = float(np.mean((scaled["phi_h"] + scaled["phi_e"])[inside]))
    factor = total_fraction / mean_sum
    out = {}
    for name in ("phi_h", "phi_e"):
        phi = scaled[name] * factor
        phi[~finite] = np.nan
        if mask is not None and outside == "nan":
            phi[~mask] = np.nan
        out[name] = phi
    over = float(np.mean((out["phi_h"] + out["phi_e"])[inside] > 1.0))
    record.update({
        "background": {"phi_h": bg[0], "phi_e": bg[1]},
        "scale": {"phi_h": scales[0], "phi_e": scales[1]},
        "factor": factor,
        "clipped_below_background": clipped,
        "sum_above_one": over,
        "summary": (f"background {bg[0]:.4g} / {bg[1]:.4g} subtracted ({record['background_source']}); each mark "
                    f"divided by its {percentile:g}th percentile in the nucleus, phi_h times the mark ratio "
                    f"{ratio:.3g} ({record['mark_ratio_source'].split(':')[0]}); both scaled so that the mean "
                    f"phi_h + phi_e in the nucleus is {total_fraction:g}. " + _RELATIVE),
    })
    if over > 0.01:
        warnings.warn(
            f"phi_h + phi_e exceeds 1 in {over:.1%} of the nucleus after the conversion: total_fraction "
            f"{total_fraction:g} is too high for this image's contrast; use a smaller total_fraction",
            MollifierWarning, stacklevel=2)
    return Fractions(out, record=record), record


def estimate_mark_ratio(fractions: dict, l2: float, pixel_size: float | ArrayLike,
                        nucleus: ArrayLike | None = None, radius: float | None = None) -> tuple[float, dict]:
    """Estimate the factor on ``phi_h`` that makes the chromatin-balance rate smoothest at the domain scale.

    For the balance model ``lambda = (phi_h + l2 lap(phi_e)) / phi_e = c A + B`` with ``A = phi_h / phi_e`` and
    ``B = l2 lap(phi_e) / phi_e`` (mollified at ``radius``). A wrong ratio ``c`` adds ``(c - 1) A``, which carries
    the domain pattern of the chromatin. **Assumption**: the true rate varies on larger scales than the domains,
    so the estimate is the ``c`` that minimises the high-pass energy of ``c A + B`` (a Gaussian high-pass of
    width 3 ``radius``) inside the nucleus shrunk by ``radius``: ``c = -<HP A, HP B> / <HP A, HP A>``. When the rate
    itself changes at the scale of the domains the estimate is biased: compare with a calibration when you have
    one. On the synthetic nucleus (tests/test_fractions.py) it recovers the ratio to about 10 % low.

    Parameters
    ----------
    fractions : dict
        ``{"phi_h", "phi_e"}`` converted with ratio 1.
    l2 : float
        The balance model's ``l2``, in the length unit of ``pixel_size`` squared.
    pixel_size : float or array_like
        Pixel size, one value or one per axis.
    nucleus : array_like, optional
        The nucleus (``> 0`` inside); default: the finite pixels.
    radius : float, optional
        Mollifier radius, pixels; default ``max(4, 0.8 sqrt(l2) / pixel_size)``.

    Returns
    -------
    ratio : float
        ``c``, the factor on ``phi_h``.
    info : dict
        ``radius_px``, ``pixels`` used, ``high_pass_sigma_px``, ``ratio`` and a ``summary``.

    Raises
    ------
    MollifierInputError
        If fewer than 100 pixels lie one radius inside the nucleus, or the estimate is not a positive number.
    """
    from scipy import ndimage as ndi

    from .mollifier import derivatives

    ph, pe = (np.asarray(fractions[k], dtype=np.float64) for k in ("phi_h", "phi_e"))
    spacing = tuple(float(v) for v in np.broadcast_to(np.atleast_1d(np.asarray(pixel_size, float)), (ph.ndim,)))
    px = float(np.sqrt(np.mean(np.square(spacing))))
    if radius is None:
        radius = max(4.0, 0.8 * np.sqrt(float(l2)) / px)
    valid = np.isfinite(ph) & np.isfinite(pe)
    region = valid if nucleus is None else (valid & (np.asarray(nucleus) > 0))
    inner = ndi.binary_erosion(region, iterations=int(np.ceil(radius)))
    if inner.sum() < 100:
        raise MollifierInputError(
            f"the nucleus is too small to estimate the mark ratio ({int(inner.sum())} px left one kernel radius "
            f"({radius:.3g} px) inside its edge): give mark_ratio as a number"
        )
    dh = derivatives(np.nan_to_num(ph), radius, pixel_size=spacing, mask=valid, which=("u",))
    de = derivatives(np.nan_to_num(pe), radius, pixel_size=spacing, mask=valid, which=("u", "lap"))
    uh, ue, lap = (np.asarray(x) for x in (dh["u"], de["u"], de["lap"]))
    with np.errstate(divide="ignore", invalid="ignore"):
        a_map, b_map = uh / ue, float(l2) * lap / ue
    ok = inner & np.isfinite(a_map) & np.isfinite(b_map) & (ue > 0)
    sigma = 3.0 * radius
    weight = ndi.gaussian_filter(ok.astype(float), sigma)

    def high_pass(x):
        low = ndi.gaussian_filter(np.where(ok, x, 0.0), sigma) / np.maximum(weight, 1e-12)
        return (x - low)[ok]

    a, b = high_pass(a_map), high_pass(b_map)
    denom = float(np.dot(a, a))
    ratio = -float(np.dot(a, b)) / denom if denom > 0 else float("nan")
    if not (np.isfinite(ratio) and ratio > 0):
        raise MollifierInputError(
            f"the mark ratio could not be estimated (got {ratio:.3g}): the rate shows no domain-scale structure to "
            "remove, or l2 / the pixel size are in different units; give mark_ratio as a number"
        )
    info = {"radius_px": float(radius), "pixels": int(ok.sum()), "high_pass_sigma_px": sigma, "ratio": ratio,
            "summary": f"estimated {ratio:.3g} (smoothest chromatin-balance rate at the domain scale, radius "
                       f"{radius:.3g} px; assumes the rate varies on larger scales than the domains)"}
    return ratio, info


def fractions_from_loaded(fields: dict, roi: ArrayLike | None, options: dict | None,
                          pixel_size: ArrayLike | None = None) -> tuple[Fractions, dict]:
    """Convert two loaded intensity channels to volume fractions (:func:`intensities_to_fractions`).

    Used by the command line (``--intensities``, ``--nucleus``) and :func:`napari_mollifier.rerun`.

    Parameters
    ----------
    fields : dict
        ``{"phi_h", "phi_e"}`` as read from the file (raw intensities of the two marks).
    roi : array_like, optional
        The nucleus when ``options`` names no ``nucleus_file`` (``> 0`` inside).
    options : dict, optional
        Keyword arguments of :func:`intensities_to_fractions`, plus ``nucleus_file`` (a labels image).
    pixel_size : array_like, optional
        Pixel size per axis, for ``mark_ratio="estimate"``.

    Returns
    -------
    tuple of (Fractions, dict)
        As :func:`intensities_to_fractions`.

    Raises
    ------
    MollifierInputError
        If ``fields`` is not exactly the two channels ``phi_h`` and ``phi_e``, or the conversion refuses.
    """
    if set(fields) != {"phi_h", "phi_e"}:
        raise MollifierInputError(
            "the intensity conversion needs two channels (a heterochromatin mark such as H3K9me3 and a euchromatin "
            f"mark such as H3K27ac), got {sorted(fields)}: give --channels H,E, or drop --intensities"
        )
    options = dict(options or {})
    nucleus_file = options.pop("nucleus_file", None)
    if nucleus_file is not None:
        from .io import read_labels

        nucleus = read_labels(nucleus_file, np.shape(fields["phi_h"])) > 0
    else:
        nucleus = None if roi is None else np.asarray(roi) > 0
    if options.get("mark_ratio") == "estimate" and pixel_size is not None:
        options.setdefault("pixel_size", list(pixel_size))
    return intensities_to_fractions(fields["phi_h"], fields["phi_e"], nucleus=nucleus, **options)


#: The name of a rate whose level is only relative (issue 13, item 5): layers, tables and figures use it.
RELATIVE_RATE_LABEL = "relative rate (lambda / median)"


def relative_map(rate: ArrayLike, labels: ArrayLike | None = None) -> tuple[np.ndarray, dict]:
    """Divide each pixel's rate by the median rate of its ROI.

    ``labels`` (int, 0 = outside) gives the ROIs; without it the finite pixels are one ROI. An ROI whose median is
    not a positive finite number gets NaN (a ratio of rates with a median <= 0 has no relative level).

    Parameters
    ----------
    rate : array_like
        The rate map.
    labels : array_like of int, optional
        ROI labels (0 = outside).

    Returns
    -------
    relative : numpy.ndarray
        ``rate / median`` (no unit), NaN outside the ROIs.
    medians : dict
        ``{str(label): median rate}``.
    """
    rate = np.asarray(rate, dtype=np.float64)
    labels = np.isfinite(rate).astype(int) if labels is None else np.asarray(labels)
    out = np.full(rate.shape, np.nan)
    medians = {}
    for lab in np.unique(labels):
        if lab <= 0:
            continue
        region = (labels == lab) & np.isfinite(rate)
        median = float(np.median(rate[region])) if region.any() else float("nan")
        medians[str(int(lab))] = median
        if np.isfinite(median) and median > 0:
            out[region] = rate[region] / median
    return out, medians


def label_relative(provenance: dict, rate: ArrayLike, labels: ArrayLike | None, stats: list[dict]) -> dict | None:
    """Record the relative map of a run whose ``provenance["rate_level"]`` is ``"relative"`` (in place).

    The record goes to ``provenance["relative_map"]`` (the ROI medians it divides by); each per-ROI row gets
    ``quantity`` and the relative map's ``relative_mean``, ``relative_q25``, ``relative_q75``, ``relative_iqr``
    (its median is 1). The absolute map is unchanged (``RateResult.rate``).

    Parameters
    ----------
    provenance : dict
        The run's provenance (updated).
    rate : array_like
        The rate map.
    labels : array_like of int, optional
        ROI labels (0 = outside); default: the finite pixels are one ROI.
    stats : list of dict
        Per-ROI rows with a ``label`` key (updated).

    Returns
    -------
    dict or None
        The record, or None for an absolute level.
    """
    if provenance.get("rate_level") != "relative":
        provenance.pop("relative_map", None)
        return None
    rel, medians = relative_map(rate, labels)
    lab = np.isfinite(np.asarray(rate)).astype(int) if labels is None else np.asarray(labels)
    for row in stats:
        values = rel[(lab == row["label"]) & np.isfinite(rel)]
        q25, q75 = (float(v) for v in np.percentile(values, [25, 75])) if values.size else (np.nan, np.nan)
        row.update({"quantity": RELATIVE_RATE_LABEL,
                    "relative_mean": float(values.mean()) if values.size else float("nan"),
                    "relative_q25": q25, "relative_q75": q75, "relative_iqr": q75 - q25})
    record = {"quantity": RELATIVE_RATE_LABEL, "divided_by": "the median rate of each ROI", "medians": medians,
              "absolute": "RateResult.rate keeps the rate as computed; its level rests on assumed shares "
                          "(density split) or an assumed mark ratio, so only the relative map is shown"}
    provenance["relative_map"] = record
    return record


def mark_relative(provenance: dict, record: dict) -> None:
    """Record the conversion in ``provenance["fractions"]`` and label the rate's level relative.

    Parameters
    ----------
    provenance : dict
        The run's provenance (updated in place).
    record : dict
        The conversion's record (``"calibrated"`` true labels the level ``"calibrated"`` instead).
    """
    provenance["fractions"] = dict(record)
    provenance["rate_level"] = "relative" if not record.get("calibrated") else "calibrated"
    provenance["rate_level_note"] = _RELATIVE


# --------------------------------------------------------------------------- flags on the result
def _is_ratio_of_rates(model) -> bool:
    """Chromatin models: the rate is ``Gamma_me / Gamma_ac`` (>= 0 by definition)."""
    return "phi_e" in getattr(model, "inputs", ())


def flag_result(model: Model, fields: dict, split: dict | None, rate: np.ndarray, uncertainty: np.ndarray,
                labels: np.ndarray, stats: list[dict], provenance: dict, *, stacklevel: int = 3) -> dict | None:
    """Label the level of a finished run and flag its negative rates (in place; called by ``infer_rates``).

    * ``provenance["fractions"]``: the conversion record when ``fields`` came from
      :func:`intensities_to_fractions`; ``provenance["rate_level"]``: ``"relative"`` (converted intensities, a
      split density) or ``"as given"`` (fractions given directly: absolute only if they are true volume
      fractions and the coefficients are in the image's units);
    * chromatin models: ``provenance["negative_rate"]`` (share of the ROI with ``rate < 0``, per label),
      ``roi_stats[i]["negative_fraction"]``, ``uncertainty = +inf`` where ``rate < 0``, and a
      :class:`MollifierWarning` when the share exceeds :data:`NEGATIVE_RATE_LIMIT` in any ROI.

    Parameters
    ----------
    model : Model
        The run's model.
    fields : dict
        The run's fields (a :class:`Fractions` carries its conversion record).
    split : dict or None
        The density split's assumption (:func:`napari_mollifier.density.split_density`), None when none was made.
    rate, uncertainty : numpy.ndarray
        The rate map and its uncertainty (``uncertainty`` is updated).
    labels : numpy.ndarray of int
        ROI labels (0 = outside).
    stats : list of dict
        Per-ROI rows (updated).
    provenance : dict
        The run's provenance (updated).
    stacklevel : int
        Passed to :func:`warnings.warn`.

    Returns
    -------
    dict or None
        ``provenance["negative_rate"]`` for a chromatin model, else None.
    """
    record = getattr(fields, "record", None)
    if record:
        mark_relative(provenance, record)
    elif split:
        provenance["rate_level"] = "relative"
        provenance["rate_level_note"] = "relative: a single density channel was split into fractions by an assumption"
    else:
        provenance.setdefault("rate_level", "as given")
        provenance.setdefault("rate_level_note", "as given: absolute only if phi_h and phi_e are volume "
                                                 "fractions and the coefficients are in the image's units")
    label_relative(provenance, rate, labels, stats)  # the relative map (issue 13, item 5)
    if not _is_ratio_of_rates(model):
        return None
    per_label, worst = {}, (0.0, None)
    for row in stats:
        region = labels == row["label"]
        values = rate[region]
        values = values[np.isfinite(values)]
        share = float(np.mean(values < 0)) if values.size else 0.0
        row["negative_fraction"] = share
        per_label[str(row["label"])] = share
        if share > worst[0]:
            worst = (share, row["label"])
    negative = np.isfinite(rate) & (rate < 0)
    uncertainty[negative] = np.inf
    provenance["negative_rate"] = {
        "fraction": per_label, "limit": NEGATIVE_RATE_LIMIT, "warned": worst[0] > NEGATIVE_RATE_LIMIT,
        "marked": "uncertainty = +inf where rate < 0 (the rate map keeps the negative values)",
    }
    if worst[0] > NEGATIVE_RATE_LIMIT:
        message = negative_rate_message(worst[0], worst[1], len(stats))
        provenance["negative_rate"]["message"] = message
        warnings.warn(message, MollifierWarning, stacklevel=stacklevel)
    return provenance["negative_rate"]


def negative_rate_message(share: float, label: int | None = None, n_rois: int = 1) -> str:
    """Compose the warning for a run with ``share`` of an ROI below zero (likely causes and the fix).

    Parameters
    ----------
    share : float
        Share of the ROI with ``rate < 0``.
    label : int, optional
        The ROI's label (named when there are several ROIs).
    n_rois : int
        Number of ROIs of the run.

    Returns
    -------
    str
        The warning text.
    """
    where = f"ROI {label}" if n_rois > 1 and label is not None else "the ROI"
    return (
        f"the rate lambda = Gamma_me / Gamma_ac is negative in {share:.0%} of {where}: a ratio of two rates cannot "
        "be negative, so this map does not mean anything as it stands. Likely causes: (1) coefficient units -- "
        "l2 must be in the image's length unit squared (um^2 for a pixel size in um, e.g. l2 = 0.0234 um^2; the "
        "model default 1.04 is in box units); (2) the inputs are not volume fractions -- convert raw intensities "
        "first (intensities_to_fractions, --intensities, or 'Convert to fractions' in the widget); "
        "(3) a background offset was not subtracted; (4) the ROI reaches the nuclear edge, where the kernel "
        "straddles the envelope -- draw it one kernel radius inside. The negative pixels have an infinite "
        "uncertainty"
    )
