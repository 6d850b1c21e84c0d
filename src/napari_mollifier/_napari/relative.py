"""Relative against absolute in the widget (issue 13, item 5).

Where a run's level is only relative (``RateResult.relative``: intensities converted with an assumed mark ratio,
or a density split with assumed shares), the widget shows the relative map -- the rate divided by the median of its
ROI -- and labels the rate layer's colour bar, the per-ROI table and the histogram "relative rate (λ / median)".
The absolute map stays in ``widget.last_results[i].rate``.

* :func:`with_record`: input layers made by "Convert to fractions" carry the conversion's record; it is passed
  to ``infer_rates`` with the fields (``fractions.Fractions``), so the result is labelled relative by the solver
  itself, as in the API and the CLI.
* :func:`shown_maps`: the rate and uncertainty maps to put in the layers.
* :func:`table_values`, :func:`label_results`: the table's mean / median / IQR columns (of the relative map where
  relative) and the titles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from napari_mollifier.result import RateResult

    from .widget import MollifierWidget

RELATIVE_TITLE = "relative rate (λ / median)"


def with_record(fields: dict, layers: dict, meta_key: str) -> dict:
    """``fields`` with the conversion record of the input layers (``Fractions``), when they carry one.

    Parameters
    ----------
    fields : dict of str to numpy.ndarray
        The input fields of one slice.
    layers : dict of str to napari.layers.Image
        The input layers (their metadata may hold the record).
    meta_key : str
        The metadata key of the record (``"mollifier_fractions"``).

    Returns
    -------
    dict
        ``fields`` itself, or a :class:`napari_mollifier.fractions.Fractions` carrying the record.
    """
    record = next((ly.metadata.get(meta_key) for ly in layers.values() if meta_key in ly.metadata), None)
    if not record:
        return fields
    from napari_mollifier.fractions import Fractions

    return Fractions(fields, record=record)


def shown_maps(res: RateResult) -> tuple[np.ndarray, np.ndarray]:
    """Return the rate and uncertainty maps to show: relative where the result is relative, else as computed.

    Parameters
    ----------
    res : RateResult
        One result.

    Returns
    -------
    tuple of numpy.ndarray
        ``(rate, uncertainty)``.
    """
    if res.relative:
        return res.relative_rate, res.relative_uncertainty
    return res.rate, res.uncertainty


def table_values(row: dict) -> tuple[float, float, float]:
    """``(mean, median, IQR)`` of the table row: of the relative map (median 1) where the row is relative.

    Parameters
    ----------
    row : dict
        One row of ``RateResult.table()``.

    Returns
    -------
    tuple of float
        ``(mean, median, IQR)``.
    """
    if row.get("quantity"):
        return row["relative_mean"], 1.0, row["relative_iqr"]
    return row["mean"], row["median"], row["iqr"]


def label_results(widget: MollifierWidget, results: list) -> bool:
    """Title the table and the histogram for the run's level.

    Parameters
    ----------
    widget : MollifierWidget
        The Rate maps widget.
    results : list of RateResult
        The run's results.

    Returns
    -------
    bool
        Whether the level is relative.
    """
    relative = any(r.relative for r in results)
    widget._rate_title = RELATIVE_TITLE if relative else "rate"  # read by _style_axes, _mark_results_stale
    widget.results_box.setTitle(f"Per-ROI {widget._rate_title}")
    widget.axes.set_xlabel(widget._rate_title)
    return relative
