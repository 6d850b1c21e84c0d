"""The output maps of a "Rate maps" run, ready for the layers, without Qt (issue 15: array work off the viewer).

:func:`prepare_outputs` runs in the worker thread once the solve is over: it stacks the slices, picks the maps
to show (relative where the level is relative) and computes each map's contrast limits, so that the viewer's
thread only hands finished arrays to napari. :data:`OUTPUT_STYLE`, :func:`output_name` and :func:`robust_limits`
are the naming and styling rules of the output layers (re-exported by :mod:`.results` and :mod:`.widget`).
Module-level imports: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["OUTPUT_STYLE", "PreparedOutput", "output_name", "prepare_outputs", "robust_limits", "stack_slices"]

#: Output layers: kind -> (colormap, visible, symmetric contrast limits).
OUTPUT_STYLE = {
    "rate": ("viridis", True, False),
    # uncertainty and residual: hidden under the rate map (issue 15); switch them on in the layer list
    "uncertainty": ("magma", False, False),
    "residual": ("PiYG", False, True),
    "smoothed": ("gray", False, False),
}


def output_name(kind: str, source_name: str, field_name: str | None = None) -> str:
    """Name of an output layer: ``"rate [<image>]"``, ``"phi_e smoothed [<phi_e's own image>]"``...

    Parameters
    ----------
    kind : str
        ``"rate"``, ``"uncertainty"``, ``"residual"`` or ``"smoothed"``.
    source_name : str
        The input layer it comes from.
    field_name : str, optional
        The smoothed field's key (``"phi_e"``), for ``kind="smoothed"``.

    Returns
    -------
    str
        The layer name.
    """
    prefix = f"{field_name} smoothed" if kind == "smoothed" else kind
    return f"{prefix} [{source_name}]"


def robust_limits(values: np.ndarray, symmetric: bool = False) -> tuple[float, float]:
    """Contrast limits from the 2nd-98th percentiles of the finite values (symmetric about 0 if asked).

    Parameters
    ----------
    values : numpy.ndarray
        The map (NaN allowed).
    symmetric : bool
        Limits ``(-h, h)`` with ``h`` the 98th percentile of ``|values|``.

    Returns
    -------
    tuple of float
        ``(low, high)`` with ``low < high``.
    """
    finite = np.asarray(values)[np.isfinite(values)]
    if finite.size == 0:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    if symmetric:
        half = float(np.percentile(np.abs(finite), 98))
        if not half > 0:
            half = float(np.max(np.abs(finite))) or 1.0
        return (-half, half)
    lo, hi = (float(v) for v in np.percentile(finite, [2, 98]))
    if not hi > lo:
        lo, hi = float(finite.min()), float(finite.max())
    if not hi > lo:
        pad = abs(lo) * 1e-3 or 1e-3
        lo, hi = lo - pad, hi + pad
    return (lo, hi)


def stack_slices(arrays: list, lead: tuple) -> np.ndarray:
    """Stack one 2-D map per slice into the output's shape ``lead + (Y, X)`` (a single map as it is when no lead).

    Parameters
    ----------
    arrays : list of numpy.ndarray
        One ``(Y, X)`` map per slice, in slice order.
    lead : tuple of int
        The leading (non-spatial) shape of the output stack; ``()`` for a single 2-D image.

    Returns
    -------
    numpy.ndarray
        The stacked maps.
    """
    arr = np.stack(arrays) if len(arrays) > 1 or lead else arrays[0]
    return arr.reshape(lead + arr.shape[-2:]) if lead else arr


@dataclass
class PreparedOutput:
    """One output map of a run, ready for its layer.

    ``kind`` and ``field_name`` as in :func:`output_name`; ``name`` the layer's name; ``data`` the (stacked) map;
    ``limits`` its contrast limits (None for a map without a finite value: the layer is removed).
    """

    kind: str
    field_name: str | None
    name: str
    data: np.ndarray
    limits: tuple[float, float] | None


def prepare_outputs(job, results: list) -> list[PreparedOutput]:
    """Make the output maps of a run, bottom to top: the smoothed fields, residual, uncertainty, and the rate.

    Called in the worker thread (:func:`napari_mollifier._napari.job._run_job`) so that the viewer's thread does no
    array work; the widget calls it itself for a job run another way.

    Parameters
    ----------
    job : napari_mollifier._napari.job._Job
        The run (its slices, the leading shape of the output stack, the input layers' names).
    results : list of napari_mollifier.result.RateResult
        One result per slice.

    Returns
    -------
    list of PreparedOutput
        In layer order, bottom to top; an uncertainty map without a finite value (network method) has
        ``limits`` None.
    """
    from .relative import shown_maps  # the relative map where the level is relative (issue 13)

    lead = job.out_lead_shape

    def stack(arrays):
        return stack_slices(arrays, lead)

    keys = [k for k in results[0].fields if all(k in r.fields for r in results)]
    maps = [("smoothed", k, stack([r.fields[k] for r in results])) for k in keys]
    shown = [shown_maps(r) for r in results]
    maps += [
        ("residual", None, stack([r.residual for r in results])),
        ("uncertainty", None, stack([u for _, u in shown])),
        ("rate", None, stack([m for m, _ in shown])),
    ]
    out = []
    for kind, field_name, data in maps:
        own = job.input_names.get(field_name, job.source_name) if kind == "smoothed" else job.source_name
        name = output_name(kind, own, field_name)
        if kind == "uncertainty" and not np.isfinite(data).any():
            out.append(PreparedOutput(kind, field_name, name, data, None))  # network: no uncertainty map
            continue
        out.append(PreparedOutput(kind, field_name, name, data, robust_limits(data, symmetric=OUTPUT_STYLE[kind][2])))
    return out
