"""Example input files made by the package itself, so that every example of the documentation runs as printed.

* :func:`raw_intensities`: a microscope-like two-channel image from known volume fractions (offsets, unequal
  brightness of the two marks, camera noise) -- the input the intensity conversion is for;
* :func:`write_sample_nucleus`: the synthetic nucleus as an OME-TIFF (two channels, raw intensities or true
  fractions, with its pixel size) plus its nucleus ROI and true rate map;
* :func:`write_localisation_table`: a small localisation table (ThunderSTORM-style ``x [nm], y [nm]``) of a
  nucleus with heterochromatin domains.

From the command line: ``python -m napari_mollifier.examples DIR`` writes all of them to ``DIR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

__all__ = ["raw_intensities", "write_sample_nucleus", "write_localisation_table", "write_all"]


def raw_intensities(sample: dict, *, brightness: tuple[float, float] = (2400.0, 800.0),
                    offset: tuple[float, float] = (180.0, 95.0), noise: float = 4.0, seed: int = 0) -> dict:
    """Simulate raw microscope counts ``offset + brightness * phi`` of the two marks of a synthetic nucleus.

    Parameters
    ----------
    sample : dict
        A sample of :func:`napari_mollifier.simulate.synthetic_nucleus` (``phi_h``, ``phi_e``, ``nucleus``).
    brightness, offset : tuple of float
        Counts per unit volume fraction and background counts of channel ``h`` and ``e``.
    noise : float
        Standard deviation of the Gaussian camera noise, counts.
    seed : int
        Seed of the noise.

    Returns
    -------
    dict
        ``h`` (H3K9me3, heterochromatin) and ``e`` (H3K27ac, euchromatin): ``offset + brightness * phi`` inside
        the nucleus, ``offset`` outside, plus the noise; and the ``offset``, ``brightness`` and ``noise`` used.
    """
    rng = np.random.default_rng(seed)
    inside = sample["nucleus"]
    out = {"offset": tuple(offset), "brightness": tuple(brightness), "noise": float(noise)}
    for key, phi, b, o in (("h", sample["phi_h"], brightness[0], offset[0]),
                           ("e", sample["phi_e"], brightness[1], offset[1])):
        out[key] = o + b * np.where(inside, phi, 0.0) + noise * rng.standard_normal(phi.shape)
    return out


def write_sample_nucleus(folder: str | Path, *, shape: tuple[int, int] = (128, 128), pixel_size: float = 0.02,
                         seed: int = 0, raw: bool = True, name: str = "cell", roi_margin_px: int = 6) -> dict:
    """Write the synthetic nucleus, its ROI, nucleus mask and true rate map to ``folder`` as OME-TIFFs.

    The files are ``NAME.ome.tif`` (channels H3K9me3, H3K27ac as raw intensities, or phi_h, phi_e with
    ``raw=False``; pixel size in um), ``NAME_nucleus.ome.tif`` (the nucleus mask), ``NAME_roi.ome.tif`` (the
    nucleus shrunk by ``roi_margin_px``, 1 inside: an ROI drawn about one kernel radius inside the nuclear edge)
    and ``NAME_true_rate.ome.tif``.

    Parameters
    ----------
    folder : str or Path
        Output folder (created if missing).
    shape : tuple of int
        Image shape, pixels.
    pixel_size : float
        Pixel size, um.
    seed : int
        Seed of the synthetic nucleus and of the camera noise.
    raw : bool
        Write raw intensities (:func:`raw_intensities`) rather than the true volume fractions.
    name : str
        Stem ``NAME`` of the file names.
    roi_margin_px : int
        Pixels the ROI is shrunk by from the nucleus.

    Returns
    -------
    dict
        ``{"image", "roi", "nucleus", "truth"}`` (paths as str), ``params`` (the sample's coefficients in um)
        and ``pixel_size``.
    """
    from scipy import ndimage as ndi

    from .io import write_ome_tiff
    from .simulate import synthetic_nucleus

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sample = synthetic_nucleus(shape=tuple(shape), pixel_size=pixel_size, seed=seed)
    if raw:
        ints = raw_intensities(sample, seed=seed)
        channels = {"H3K9me3": ints["h"].astype(np.float32), "H3K27ac": ints["e"].astype(np.float32)}
    else:
        channels = {"phi_h": sample["phi_h"], "phi_e": sample["phi_e"]}
    paths = {"image": folder / f"{name}.ome.tif", "roi": folder / f"{name}_roi.ome.tif",
             "nucleus": folder / f"{name}_nucleus.ome.tif", "truth": folder / f"{name}_true_rate.ome.tif"}
    write_ome_tiff(paths["image"], channels, pixel_size, dtype=np.float32 if raw else np.float64,
                   description={"description": sample["description"], "raw_intensities": raw})
    roi = ndi.distance_transform_edt(sample["nucleus"]) > roi_margin_px
    write_ome_tiff(paths["roi"], {"roi": roi.astype(np.uint8)}, pixel_size, dtype=np.uint8)
    write_ome_tiff(paths["nucleus"], {"nucleus": sample["nucleus"].astype(np.uint8)}, pixel_size, dtype=np.uint8)
    write_ome_tiff(paths["truth"], {"rate": sample["rate"]}, pixel_size)
    return {**{k: str(v) for k, v in paths.items()}, "params": dict(sample["params"]),
            "pixel_size": float(pixel_size)}


def write_localisation_table(path: str | Path, *, semi_axes_nm: tuple[float, float] = (1500.0, 1200.0),
                             spacing_nm: float = 300.0, radius_nm: float = 80.0, seed: int = 0) -> str:
    """Write a small localisation table (``x [nm], y [nm]``, ~40 000 rows) of a nucleus with domains.

    The nucleus has a hexagonal lattice of heterochromatin domains and a lamina band
    (:func:`napari_mollifier.domains.synthetic.lattice_nucleus`).

    Parameters
    ----------
    path : str or Path
        The CSV file to write (atomically; its folder is created if missing).
    semi_axes_nm : tuple of float
        Semi-axes of the elliptic nucleus, nm.
    spacing_nm, radius_nm : float
        Lattice spacing and radius of the domains, nm.
    seed : int
        Seed of the localisations.

    Returns
    -------
    str
        ``path``.
    """
    from .domains.synthetic import lattice_nucleus
    from .io import atomic_path

    s = lattice_nucleus(semi_axes_nm=semi_axes_nm, spacing_nm=spacing_nm, radius_nm=radius_nm,
                        centre_nm=(2000.0, 2000.0), seed=seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.column_stack([s["x"], s["y"]]), delimiter=",", header="x [nm],y [nm]", comments="",
                   fmt="%.2f")
    return str(path)


def write_all(folder: str | Path) -> dict:
    """Write every example input of the documentation to ``folder``.

    The files are ``cell.ome.tif`` (raw intensities) with ``cell_roi.ome.tif``, ``cell_nucleus.ome.tif`` and
    ``cell_true_rate.ome.tif``, ``fractions.ome.tif`` (true volume fractions) with ``fractions_roi.ome.tif``, its
    two channels as ``phi_h.ome.tif`` and ``phi_e.ome.tif``, and ``cell1.csv`` (localisations).

    Parameters
    ----------
    folder : str or Path
        Output folder (created if missing).

    Returns
    -------
    dict
        ``raw`` and ``fractions`` (as from :func:`write_sample_nucleus`), ``table``, ``phi_h`` and ``phi_e``
        (paths as str).
    """
    folder = Path(folder)
    from .io import read_image, write_ome_tiff

    out = {"raw": write_sample_nucleus(folder, raw=True, name="cell"),
           "fractions": write_sample_nucleus(folder, raw=False, name="fractions"),
           "table": write_localisation_table(folder / "cell1.csv")}
    img = read_image(out["fractions"]["image"])
    for i, key in enumerate(("phi_h", "phi_e")):
        out[key] = str(write_ome_tiff(folder / f"{key}.ome.tif", {key: img.channel(i).to_numpy()},
                                      out["fractions"]["pixel_size"]))
    return out


def main(argv: list[str] | None = None) -> int:
    """Write the examples from the command line (``python -m napari_mollifier.examples DIR``).

    Arguments and exit status are as in :func:`napari_mollifier.demo.main`.
    """
    parser = argparse.ArgumentParser(prog="python -m napari_mollifier.examples",
                                     description="Write the documentation's example inputs to a folder.")
    parser.add_argument("folder", nargs="?", default=".")
    args = parser.parse_args(argv)
    out = write_all(args.folder)
    for path in (out["raw"]["image"], out["raw"]["roi"], out["raw"]["nucleus"], out["raw"]["truth"],
                 out["fractions"]["image"], out["fractions"]["roi"], out["phi_h"], out["phi_e"], out["table"]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
