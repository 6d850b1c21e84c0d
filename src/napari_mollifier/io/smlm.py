"""Single-molecule localisation tables (SMLM) -> a chromatin density image at a chosen pixel size.

Accepted tables: comma, tab or semicolon separated text with a header line, e.g. ThunderSTORM's export
(``"id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]",...,"uncertainty [nm]"``), or a plain
``x,y`` table. Recognised coordinate columns: ``x``/``y`` with an optional unit in brackets or parentheses
(``x [nm]``, ``y (um)``, ``x [px]``), ``x_nm``, ``xnm``, ``position x``. Coordinates without a unit are taken in
``unit`` (default nanometres); pixel coordinates (``[px]``) need the camera pixel size.

Rendering (:func:`render_localisations`): ``"histogram"`` counts localisations per pixel; ``"gaussian"`` spreads
each localisation as a normalised Gaussian of standard deviation ``sigma`` (the median of an ``uncertainty``
column when there is one, else one pixel), so both images sum to the number of localisations. The pixel size
is recorded as the image scale (micrometres); the image grid starts at the coordinate origin (0, 0) when all
coordinates are non-negative (so images of one field of view share a grid), else at the smallest coordinate.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from ..errors import MollifierInputError, renamed_keyword
from ._common import ImageData, check_input_path, length_factor_um

__all__ = ["is_localisation_table", "read_localisations", "render_localisations", "read_smlm", "SMLM_SUFFIXES",
           "RENDER_METHODS", "DEFAULT_RENDER_METHOD", "DEFAULT_RENDER_PIXEL_SIZE"]

SMLM_SUFFIXES = (".csv", ".tsv")
#: How a table becomes an image: counts per pixel, or counts blurred by a Gaussian.
RENDER_METHODS = ("histogram", "gaussian")
DEFAULT_RENDER_METHOD = "histogram"
#: Pixel size of a rendered table, nm.
DEFAULT_RENDER_PIXEL_SIZE = 20.0
_COORD = re.compile(
    r"^(?:pos(?:ition)?[ _]?)?(?P<axis>[xyz])(?:c|_?(?P<u1>nm|um|µm|px|pix|pixels?))?"
    r"(?:\s*[\[\(](?P<u2>[^\]\)]*)[\]\)])?$"
)
_UNCERTAINTY = re.compile(r"^(uncertainty|precision|loc[_ ]?prec|uncertainty_xy|sigma_?xy)(?:\s*[\[\(](?P<u>[^\]\)]*)[\]\)])?$")
_SMLM_HINTS = ("frame", "photon", "intensity", "uncertainty", "sigma", "offset", "bkgstd", "chi2", "precision")
_MAX_HEADER = 1 << 16


def _normalise(name: str) -> str:
    return name.strip().strip('"').strip("'").strip().lower()


def _header(path: Path) -> tuple[list[str], str] | None:
    """``(column names, delimiter)`` of the first line, or None if it is not text."""
    try:
        with open(path, "rb") as fh:
            raw = fh.readline(_MAX_HEADER)
    except OSError:
        return None
    if b"\0" in raw:
        return None
    try:
        line = raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        try:
            line = raw.decode("latin-1").strip()
        except UnicodeDecodeError:
            return None
    if not line:
        return None
    delim = max((",", "\t", ";"), key=line.count)
    if line.count(delim) == 0:
        delim = ","
    names = next(csv.reader([line], delimiter=delim, quotechar='"'))
    return [_normalise(n) for n in names], delim


def _coordinate_columns(names: list[str]) -> dict:
    """``{axis: (column index, unit or None)}`` for the recognised x, y (z) columns."""
    found = {}
    for i, n in enumerate(names):
        m = _COORD.match(n)
        if m and m.group("axis") not in found:
            unit = m.group("u2") or m.group("u1")
            found[m.group("axis")] = (i, unit.strip() if unit else None)
    return found


def is_localisation_table(path) -> bool:
    """Tell whether ``path`` is a ``.csv``/``.tsv`` file whose header looks like a localisation table.

    That is, it has an x or y column, or typical SMLM columns such as ``frame`` and ``uncertainty``.
    """
    try:
        p = Path(path)
        if not p.is_file() or not p.name.lower().endswith(SMLM_SUFFIXES):
            return False
        head = _header(p)
    except (OSError, TypeError, ValueError):
        return False
    if head is None:
        return False
    names, _ = head
    if _coordinate_columns(names):
        return True
    return sum(any(h in n for h in _SMLM_HINTS) for n in names) >= 2


def _unit_factor_nm(unit, path, axis, default_unit, camera_pixel_nm) -> float:
    """Nanometres per coordinate unit."""
    unit = (unit or default_unit or "").strip().lower()
    if unit in ("px", "pix", "pixel", "pixels"):
        if camera_pixel_nm is None:
            raise MollifierInputError(
                f"{path}: column {axis!r} is in camera pixels: pass camera_pixel_nm (the camera pixel size in nm)"
            )
        return float(camera_pixel_nm)
    f = length_factor_um(unit)
    if f is None:
        raise MollifierInputError(f"{path}: unknown unit {unit!r} of column {axis!r} (use nm or um)")
    return f * 1000.0


def read_localisations(path, *, unit: str = "nm", camera_pixel_nm: float | None = None) -> dict:
    """Read a localisation table: ``{"x", "y"}`` in nm (and ``"uncertainty"`` in nm when present).

    Raises
    ------
    MollifierInputError
        Missing x or y column, text in a numeric column, no rows.
    """
    path = check_input_path(path, allow_store=False)
    head = _header(path)
    if head is None:
        raise MollifierInputError(f"{path} is not a text table (no header line)")
    names, delim = head
    cols = _coordinate_columns(names)
    missing = [a for a in "xy" if a not in cols]
    if missing:
        raise MollifierInputError(
            f"{path}: missing column(s) {', '.join(missing)}: a localisation table needs x and y columns "
            f"(e.g. 'x [nm]', 'y [nm]' as ThunderSTORM writes them, or 'x', 'y'); found {names}"
        )
    use = [cols["x"][0], cols["y"][0]]
    unc = next(((i, m.group("u")) for i, n in enumerate(names) if (m := _UNCERTAINTY.match(n))), None)
    if unc is not None:
        use.append(unc[0])
    try:
        table = np.loadtxt(path, delimiter=delim, skiprows=1, usecols=use, dtype=np.float64, ndmin=2,
                           encoding="utf-8-sig", quotechar='"')
    except ValueError as exc:
        raise MollifierInputError(f"{path}: a numeric column holds text or is malformed ({exc})") from None
    if table.shape[0] == 0:
        raise MollifierInputError(f"{path}: the table has a header but no localisations")
    fx = _unit_factor_nm(cols["x"][1], path, "x", unit, camera_pixel_nm)
    fy = _unit_factor_nm(cols["y"][1], path, "y", unit, camera_pixel_nm)
    out = {"x": table[:, 0] * fx, "y": table[:, 1] * fy}
    if unc is not None:
        out["uncertainty"] = table[:, 2] * _unit_factor_nm(unc[1], path, "uncertainty", unit, camera_pixel_nm)
    finite = np.isfinite(out["x"]) & np.isfinite(out["y"])
    if not finite.any():
        raise MollifierInputError(f"{path}: no localisation has finite x and y")
    out = {k: v[finite] for k, v in out.items()}
    out["columns"] = {"x": names[cols["x"][0]], "y": names[cols["y"][0]]}
    return out


def render_localisations(x_nm, y_nm, *, pixel_size: float = DEFAULT_RENDER_PIXEL_SIZE,
                         method: str = DEFAULT_RENDER_METHOD, sigma_nm: float | None = None, origin_nm=None, shape=None,
                         pixel_size_nm: float | None = None) -> tuple[np.ndarray, tuple]:
    """Density image (localisations per pixel) and its origin ``(y0, x0)`` in nm.

    ``pixel_size`` is the image's pixel size in nm (``pixel_size_nm``: its deprecated name); ``method`` one of
    :data:`RENDER_METHODS`. ``method="gaussian"`` blurs the histogram with a Gaussian of ``sigma_nm`` (default one
    pixel), which equals summing one normalised Gaussian per localisation sampled at pixel centres up to the
    binning.
    """
    from scipy import ndimage

    pixel_size = renamed_keyword("pixel_size", pixel_size, "pixel_size_nm", pixel_size_nm,
                                 default=DEFAULT_RENDER_PIXEL_SIZE)

    if method not in RENDER_METHODS:
        raise MollifierInputError(f"unknown rendering {method!r}: use one of {RENDER_METHODS}")
    px = float(pixel_size)
    if not np.isfinite(px) or px <= 0:
        raise MollifierInputError(f"pixel size must be a positive number of nm, got {pixel_size!r}")
    x, y = np.asarray(x_nm, float), np.asarray(y_nm, float)
    if origin_nm is None:
        y0 = 0.0 if y.min() >= 0 else np.floor(y.min() / px) * px
        x0 = 0.0 if x.min() >= 0 else np.floor(x.min() / px) * px
    else:
        y0, x0 = (float(v) for v in origin_nm)
    if shape is None:
        shape = (int(np.floor((y.max() - y0) / px)) + 1, int(np.floor((x.max() - x0) / px)) + 1)
    ny, nx = (int(n) for n in shape)
    if ny * nx > 2**31:
        raise MollifierInputError(f"a {ny} x {nx} px image at {px:g} nm/px is too large: use a larger pixel size")
    from ..validation import check_memory

    span = max((x.max() - x0), (y.max() - y0)) / 1000.0
    # the histogram (float64), the Gaussian blur's copy, and the fractions made from it downstream
    check_memory(ny * nx * 8 * (3 if method == "gaussian" else 2),
                 f"rendering the localisations at {px:g} nm/px (a {ny} x {nx} px image; they span {span:.4g} um)",
                 "use a larger pixel size (--smlm-pixel), crop the table to one nucleus, or check the coordinate "
                 "unit (--smlm-unit)")
    image, _, _ = np.histogram2d(y, x, bins=(ny, nx), range=((y0, y0 + ny * px), (x0, x0 + nx * px)))
    if method == "gaussian":
        sigma = float(sigma_nm if sigma_nm is not None else px) / px
        if sigma > 0:
            image = ndimage.gaussian_filter(image, sigma, mode="constant", truncate=4.0)
    return image, (y0, x0)


def read_smlm(path, *, pixel_size: float = DEFAULT_RENDER_PIXEL_SIZE, method: str = DEFAULT_RENDER_METHOD,
              sigma_nm: float | None = None, unit: str = "nm", camera_pixel_nm: float | None = None,
              pixel_size_nm: float | None = None) -> ImageData:
    """Read a localisation table and render it to a density image (scale = pixel size in um).

    Arguments as in :func:`render_localisations` (``pixel_size`` in nm; ``pixel_size_nm`` its deprecated name);
    ``unit`` and ``camera_pixel_nm`` as in :func:`read_localisations`.
    """
    pixel_size = renamed_keyword("pixel_size", pixel_size, "pixel_size_nm", pixel_size_nm,
                                 default=DEFAULT_RENDER_PIXEL_SIZE)
    path = Path(path)
    locs = read_localisations(path, unit=unit, camera_pixel_nm=camera_pixel_nm)
    if method == "gaussian" and sigma_nm is None and "uncertainty" in locs:
        finite = locs["uncertainty"][np.isfinite(locs["uncertainty"])]
        sigma_nm = float(np.median(finite)) if finite.size else None
    image, (y0, x0) = render_localisations(locs["x"], locs["y"], pixel_size=pixel_size, method=method,
                                           sigma_nm=sigma_nm)
    px_um = float(pixel_size) / 1000.0
    meta = {
        "path": str(path.resolve()),
        "format": "smlm-table",
        "n_localisations": int(locs["x"].size),
        "render": {"method": method, "pixel_size_nm": float(pixel_size),
                   "sigma_nm": None if method == "histogram" else float(sigma_nm if sigma_nm is not None
                                                                         else pixel_size)},
        "columns": locs["columns"],
    }
    name = path.name.rsplit(".", 1)[0]
    return ImageData(data=image, axes="yx", scale=(px_um, px_um), units=("um", "um"),
                     translate=(y0 / 1000.0, x0 / 1000.0), metadata=meta, name=name)
