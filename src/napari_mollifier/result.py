"""The outcome of a rate inference: maps, the radius used, per-ROI statistics and provenance."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["RateResult", "register_file_io"]

# The file formats live in napari_mollifier.io.results, which depends on this module and never the reverse: it
# registers its writer and reader here when it is imported (importing napari_mollifier imports it).
_FILE_IO: dict = {}


def register_file_io(*, save, load) -> None:
    """Set the functions behind :meth:`RateResult.save` and :meth:`RateResult.load`.

    Parameters
    ----------
    save : callable
        ``save(result, path, **kwargs) -> Path`` (:func:`napari_mollifier.io.save_result`).
    load : callable
        ``load(path) -> RateResult`` (:func:`napari_mollifier.io.load_result`).
    """
    _FILE_IO.update(save=save, load=load)


def _file_io(name: str):
    if name not in _FILE_IO:  # cannot happen through `import napari_mollifier`, whose __init__ imports io
        raise RuntimeError("RateResult.save/load need napari_mollifier.io: import napari_mollifier.io first")
    return _FILE_IO[name]


@dataclass
class RateResult:
    """Rate map with its uncertainty and PDE residual, all shaped like the input image (NaN outside the ROI).

    Relative against absolute: where the level of the rate rests on an assumption -- a single density channel split
    into fractions with assumed shares (``provenance["density_split"]``), or intensities converted with an
    assumed mark ratio -- :attr:`relative` is True, ``provenance["rate_level"]`` is ``"relative"`` and
    ``provenance["relative_map"]`` records the ROI medians. Show :attr:`relative_rate` (``rate`` divided by the
    median of its ROI, labelled :attr:`rate_label` = "relative rate (lambda / median)"); :attr:`rate` keeps the
    absolute map as computed.

    Attributes
    ----------
    rate : ndarray
        The inferred rate (``lambda = G_me / G_ac`` for the chromatin models; see the model for units).
    uncertainty : ndarray
        One standard deviation of ``rate`` (parametric bootstrap; see ``provenance["uncertainty"]``).
    residual : ndarray
        PDE residual with the reported rate smoothed at the kernel scale (zero where the model holds there).
    fields : dict of str -> ndarray
        The mollified input fields (``"phi_h"``, ``"phi_e"``... smoothed by the kernel).
    radius : float
        Kernel radius used, in pixels (the choice when ``radius="auto"``).
    labels : ndarray of int
        ROI label of every pixel (0 = outside every ROI).
    roi_stats : list of dict
        Per ROI: ``label``, ``n_pixels``, ``area`` (physical units^ndim), ``mean``, ``median``, ``q25``, ``q75``,
        ``iqr``, ``radius`` and ``mean_uncertainty`` of the rate.
    provenance : dict
        Everything needed to re-run: versions, model, coefficients, pixel size, radius, method, device, seed,
        hashes of the inputs.
    """

    rate: np.ndarray
    uncertainty: np.ndarray
    residual: np.ndarray
    fields: dict = field(default_factory=dict)
    radius: float = 0.0
    labels: np.ndarray | None = None
    roi_stats: list = field(default_factory=list)
    provenance: dict = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The name of the model that was solved (``provenance["model"]``)."""
        return self.provenance.get("model", "")

    @property
    def pixel_size(self):
        """The pixel size of the run (``provenance["pixel_size"]``; 1.0 when not recorded)."""
        return self.provenance.get("pixel_size", 1.0)

    @property
    def relative(self) -> bool:
        """True where only the pattern of the rate is meaningful, not its level (see the class notes)."""
        return self.provenance.get("rate_level") == "relative"

    @property
    def rate_label(self) -> str:
        """The name of the map to show: ``"relative rate (lambda / median)"`` or ``"rate lambda"``."""
        from .fractions import RELATIVE_RATE_LABEL

        return RELATIVE_RATE_LABEL if self.relative else "rate lambda"

    @property
    def relative_rate(self) -> np.ndarray:
        """``rate`` divided by the median rate of its ROI; for any result, relative or not.

        NaN outside the ROIs, and in an ROI whose median is not positive.
        """
        from .fractions import relative_map

        return relative_map(self.rate, self.labels)[0]

    @property
    def relative_uncertainty(self) -> np.ndarray:
        """``uncertainty`` on the scale of ``relative_rate`` (divided by the same ROI medians)."""
        from .fractions import relative_map

        _, medians = relative_map(self.rate, self.labels)
        labels = np.isfinite(self.rate).astype(int) if self.labels is None else np.asarray(self.labels)
        scale = np.full(np.shape(self.rate), np.nan)
        for lab, median in medians.items():
            if np.isfinite(median) and median > 0:
                scale[labels == int(lab)] = 1.0 / median
        return self.uncertainty * scale

    @property
    def display_rate(self) -> np.ndarray:
        """The map to show: ``relative_rate`` when ``relative`` is true, else ``rate``."""
        return self.relative_rate if self.relative else self.rate

    def table(self) -> list[dict]:
        """Return the per-ROI statistics (a list of rows, ready for ``csv.DictWriter`` or ``pandas.DataFrame``)."""
        return [dict(row) for row in self.roi_stats]

    def save(self, path, **kwargs):
        """Write the whole result to ``path`` with its provenance and return the path.

        The format (``.npz``, ``.ome.tif`` or ``.ome.zarr``) is chosen by the name; :func:`load_result` (or
        :meth:`RateResult.load`) reads it back unchanged. The write is atomic (temporary name, then rename).
        """
        return _file_io("save")(self, path, **kwargs)

    @classmethod
    def load(cls, path) -> RateResult:
        """Read a result written by :meth:`save`."""
        return _file_io("load")(path)

    def __repr__(self) -> str:
        """Summarise the result in one line: model, shape, radius, ROIs, mean rate, device."""
        inside = np.isfinite(self.rate)
        mean = float(np.nanmean(self.rate)) if inside.any() else float("nan")
        return (
            f"RateResult(model={self.model!r}, shape={self.rate.shape}, radius={self.radius:g} px, "
            f"rois={len(self.roi_stats)}, mean rate={mean:.4g}, device={self.provenance.get('device')!r})"
        )
