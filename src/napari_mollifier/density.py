"""From one chromatin-density channel to volume fractions (phi_h, phi_e, phi_w): a documented assumption.

A single density image (H2B or DNA STORM/SMLM reconstruction) does not say which chromatin is hetero- and which
is euchromatin, so a split must be assumed, and every result computed from it depends on that assumption:

1. normalise: ``n = clip((I - p_lo) / (p_hi - p_lo), 0, 1)`` with the 1st and 99th percentiles of the image
   inside the nucleus;
2. chromatin fraction: ``phi_c = 1 - phi_w = c_min + (c_max - c_min) n`` (defaults 0.2 .. 0.8, the two levels of
   the binarised STORM fields of the paper's authors);
3. heterochromatin share of the chromatin, ``"linear"``: ``s = s_min + (s_max - s_min) n`` -- denser chromatin is
   more heterochromatic (``s`` in 0.1 .. 0.9 so that ``phi_e > 0`` everywhere); ``phi_h = s phi_c``,
   ``phi_e = (1 - s) phi_c``.

The assumption's name and numbers are returned (and recorded in the provenance of the solve) so the user sees it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from .errors import MollifierInputError

__all__ = ["split_density", "DEFAULT_SPLIT"]

DEFAULT_SPLIT = {"method": "linear", "percentiles": (1.0, 99.0), "chromatin": (0.2, 0.8), "hetero_share": (0.1, 0.9)}


def split_density(density: ArrayLike, nucleus: ArrayLike | None = None, **options: object) -> tuple[dict, dict]:
    """Split a chromatin-density image into volume fractions (formulas in the module docstring).

    Parameters
    ----------
    density : array
        Chromatin density (any units; only its ranks between the percentiles matter).
    nucleus : array of bool, optional
        Pixels used for the percentiles (default: all finite pixels).
    **options
        Overrides of :data:`DEFAULT_SPLIT` (``percentiles``, ``chromatin``, ``hetero_share``).

    Returns
    -------
    fields : dict
        ``{"phi_h", "phi_e", "phi_w"}`` (float64 images of the density's shape).
    assumption : dict
        The split's options, the percentile values and a one-line ``summary`` (for the provenance).

    Raises
    ------
    MollifierInputError
        On unknown options or split method, no finite pixel in the nucleus, or a constant image.
    """
    unknown = set(options) - set(DEFAULT_SPLIT)
    if unknown:
        raise MollifierInputError(f"unknown density-split options {sorted(unknown)}: use {sorted(DEFAULT_SPLIT)}")
    opts = dict(DEFAULT_SPLIT, **options)
    if opts["method"] != "linear":
        raise MollifierInputError(f"unknown density split {opts['method']!r}: only 'linear' is available")
    img = np.asarray(density, dtype=np.float64)
    region = np.isfinite(img) if nucleus is None else (np.asarray(nucleus, bool) & np.isfinite(img))
    if not region.any():
        raise MollifierInputError("the density image has no finite pixel inside the nucleus")
    lo, hi = np.percentile(img[region], opts["percentiles"])
    if not hi > lo:
        raise MollifierInputError(
            "the density image is constant inside the nucleus: there is no contrast to split into hetero- and "
            "euchromatin; check the channel and the ROI"
        )
    n = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    c_min, c_max = opts["chromatin"]
    s_min, s_max = opts["hetero_share"]
    phi_c = c_min + (c_max - c_min) * n
    share = s_min + (s_max - s_min) * n
    fields = {"phi_h": share * phi_c, "phi_e": (1 - share) * phi_c, "phi_w": 1 - phi_c}
    assumption = dict(opts, percentile_values=(float(lo), float(hi)),
                      summary="single density channel split linearly: denser chromatin is more heterochromatic")
    return fields, assumption
