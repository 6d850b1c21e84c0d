"""Sample data contribution: a synthetic nucleus with known reaction rates.

Imports only numpy and :mod:`napari_mollifier.simulate` (no napari, no Qt), so
that the contribution can be called and tested headless.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_mollifier._napari.layer_data import napari_supports_units
from napari_mollifier.simulate import synthetic_nucleus

#: Arguments of the shipped sample; tests recompute the ground truth from these.
SAMPLE_KWARGS: dict[str, Any] = {
    "shape": (256, 256),
    "pixel_size": 0.02,
    "seed": 0,
    "noise": 0.01,
}

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]


def make_sample_nucleus() -> list[LayerDataTuple]:
    """Synthetic nucleus: heterochromatin, euchromatin and ground-truth rate.

    Returns napari ``LayerDataTuple`` s ``(data, kwargs, "image")`` in
    physical units (micrometres), ready for ``viewer.open_sample``.
    """
    sim = synthetic_nucleus(**SAMPLE_KWARGS)
    px = float(sim["pixel_size"])

    common_meta: dict[str, Any] = {
        "source": "napari-mollifier synthetic nucleus",
        "description": sim.get("description", ""),
        "params": sim.get("params", {}),
        "pixel_size_um": px,
        "model": sim.get("model", ""),
        "sample_kwargs": dict(SAMPLE_KWARGS),
    }

    def kwargs(name: str, field: str, **extra: Any) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "name": name,
            "scale": (px, px),
            "axis_labels": ("y", "x"),
            "metadata": {**common_meta, "field": field},
        }
        if napari_supports_units():
            kw["units"] = ("um", "um")
        kw.update(extra)
        return kw

    phi_h = np.asarray(sim["phi_h"])
    phi_e = np.asarray(sim["phi_e"])
    rate = np.asarray(sim["rate"])

    return [
        (
            phi_e,
            kwargs(
                "euchromatin (phi_e)",
                "phi_e",
                colormap="green",
                blending="additive",
            ),
            "image",
        ),
        (
            phi_h,
            kwargs(
                "heterochromatin (phi_h)",
                "phi_h",
                colormap="magenta",
                blending="additive",
            ),
            "image",
        ),
        (
            rate,
            kwargs(
                "ground truth rate",
                "rate",
                colormap="viridis",
                visible=False,
                metadata={
                    **common_meta,
                    "field": "rate",
                    "ground_truth": True,
                    # bool (y, x) mask of the nucleus, to score inferred rates
                    "nucleus_mask": np.asarray(sim["nucleus"], dtype=bool),
                },
            ),
            "image",
        ),
    ]
