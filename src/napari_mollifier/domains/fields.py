"""The volume fractions a domain segmentation implies (for ``infer_rates``): a documented assumption.

From the localisation density image ``rho`` (smoothed by ``smoothing_nm``), the nucleus mask and the domain mask
``M`` (interior domains and the LAD band, 1 inside):

1. chromatin fraction ``phi_c = 1 - phi_w = c_min + (c_max - c_min) n`` with
   ``n = clip((rho - p_1) / (p_99 - p_1), 0, 1)`` (percentiles inside the nucleus; defaults 0.2 .. 0.8, the two
   levels of the binarised STORM fields of the model's authors);
2. heterochromatin share ``s = s_min + (s_max - s_min) m`` with ``m`` = ``M`` smoothed by the same Gaussian
   (defaults 0.1 .. 0.9, so that phi_e > 0 everywhere): chromatin inside the domains is heterochromatin, outside
   it is euchromatin;
3. ``phi_h = s phi_c``, ``phi_e = (1 - s) phi_c``.

Every rate computed from these fields depends on this split; its numbers are returned with the fields.
"""

from __future__ import annotations

import numpy as np

from ..errors import renamed_keyword

__all__ = ["segmentation_fields", "DEFAULT_FIELDS"]

DEFAULT_FIELDS = {"smoothing_nm": 40.0, "percentiles": (1.0, 99.0), "chromatin": (0.2, 0.8),
                  "hetero_share": (0.1, 0.9)}


def segmentation_fields(density, domain_mask, nucleus, pixel_size: float | None = None, *,
                        pixel_size_nm: float | None = None, **options) -> tuple[dict, dict]:
    """Build the fields the segmentation implies: ``({"phi_h", "phi_e", "phi_w"}, assumption)``.

    The mapping is in the module docstring. The grid has pixels of ``pixel_size`` nm (``pixel_size_nm``: its
    deprecated name); ``options`` override :data:`DEFAULT_FIELDS`.
    """
    from scipy import ndimage

    pixel_size = renamed_keyword("pixel_size", pixel_size, "pixel_size_nm", pixel_size_nm, required=True)

    opts = dict(DEFAULT_FIELDS, **options)
    sigma = float(opts["smoothing_nm"]) / float(pixel_size)
    rho = ndimage.gaussian_filter(np.asarray(density, float), sigma)
    m = ndimage.gaussian_filter(np.asarray(domain_mask, float), sigma)
    inside = np.asarray(nucleus, bool)
    lo, hi = np.percentile(rho[inside], opts["percentiles"]) if inside.any() else (0.0, 1.0)
    n = np.clip((rho - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(rho)
    c0, c1 = opts["chromatin"]
    s0, s1 = opts["hetero_share"]
    phi_c = c0 + (c1 - c0) * n
    share = s0 + (s1 - s0) * np.clip(m, 0, 1)
    fields = {"phi_h": share * phi_c, "phi_e": (1 - share) * phi_c, "phi_w": 1 - phi_c}
    assumption = dict(opts, percentile_values=(float(lo), float(hi)),
                      summary="domain segmentation split: chromatin in domains is heterochromatin, outside is "
                              "euchromatin; chromatin fraction from the localisation density")
    return fields, assumption
