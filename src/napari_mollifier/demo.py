"""The README's main job: infer the rate map of the synthetic nucleus and compare it with the known truth.

Run ``python -m napari_mollifier.demo``. Prints the radius chosen, Pearson r and errors inside the nucleus, the
uncertainty coverage, and the per-ROI table; ``--out DIR`` also writes the maps as ``.npy`` files.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .simulate import synthetic_nucleus
from .solve import infer_rates

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .result import RateResult


def run(noise: float = 0.01, seed: int = 0, out: str | None = None, n_bootstrap: int = 40) -> dict:
    """Simulate the synthetic nucleus, infer its rate map and score it against the truth.

    Parameters
    ----------
    noise : float
        Standard deviation of the Gaussian noise added to the volume fractions.
    seed : int
        Seed of the synthetic nucleus, its noise and the solve.
    out : str, optional
        Folder for the maps (``rate``, ``uncertainty``, ``residual``, ``ground_truth_rate`` as ``.npy``).
    n_bootstrap : int
        Bootstrap samples of the solve.

    Returns
    -------
    dict
        ``scores`` (``radius_px``, ``pearson_r``, ``relative_l2_error``, ``coverage_2sigma`` inside the nucleus,
        ``seconds``, ``device``) and ``result`` (the :class:`~napari_mollifier.RateResult`).
    """
    sample = synthetic_nucleus(shape=(256, 256), pixel_size=0.02, seed=seed, noise=noise)
    start = time.perf_counter()
    res = infer_rates(
        {"phi_h": sample["phi_h"], "phi_e": sample["phi_e"]}, model=sample["model"], params=sample["params"],
        pixel_size=sample["pixel_size"], roi=sample["nucleus"], seed=seed, n_bootstrap=n_bootstrap,
    )
    seconds = time.perf_counter() - start
    inside = np.isfinite(res.rate) & sample["nucleus"]
    truth, est = sample["rate"][inside], res.rate[inside]
    scores = {
        "radius_px": res.radius,
        "pearson_r": float(np.corrcoef(est, truth)[0, 1]),
        "relative_l2_error": float(np.linalg.norm(est - truth) / np.linalg.norm(truth)),
        "coverage_2sigma": float(np.mean(np.abs(est - truth) <= 2 * res.uncertainty[inside])),
        "seconds": seconds,
        "device": res.provenance["device"],
    }
    if out:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        for name in ("rate", "uncertainty", "residual"):
            np.save(path / f"{name}.npy", getattr(res, name))
        np.save(path / "ground_truth_rate.npy", sample["rate"])
    return {"scores": scores, "result": res}


#: Where a map has no value (outside the nucleus): mid grey, a colour that none of the figure's colour maps takes
#: (viridis, magma, coolwarm, RdBu_r: every colour at least 0.3 away in RGB; tests/test_demo_figure.py).
MASKED_COLOUR = "#808080"


def figure(sample: dict, result: RateResult, scores: dict, title: str | None = None) -> Figure:
    """Draw the demo figure: inputs, true and inferred rate, uncertainty, residual.

    Every panel has a scale bar (1 um) and a colour bar labelled with the quantity and its unit; pixels outside
    the nucleus are :data:`MASKED_COLOUR`. A result whose level is relative (``result.relative``) is shown as
    "relative rate (lambda / median)", its truth divided by the truth's median in the same way.

    Parameters
    ----------
    sample : dict
        The synthetic nucleus (:func:`napari_mollifier.simulate.synthetic_nucleus`).
    result : RateResult
        The solve of ``sample``.
    scores : dict
        The scores of :func:`run`.
    title : str, optional
        Figure title (default: the correlation, error and coverage of ``scores`` in words).

    Returns
    -------
    matplotlib.figure.Figure
        The figure, 2 x 3 panels.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import colormaps
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    inside = sample["nucleus"]
    truth = np.where(inside, sample["rate"], np.nan)
    model = str(result.provenance.get("model", ""))
    unit = "no unit" if model.startswith("chromatin") else "model units"
    if result.relative:
        truth = truth / np.nanmedian(truth)
        rate, sigma = result.relative_rate, result.relative_uncertainty
        rate_label = "relative rate λ / median (no unit)"
        sigma_label = "1 s.d. of λ / median (no unit)"
    else:
        rate, sigma = result.rate, result.uncertainty
        rate_label = (f"rate λ = Γ$_\\mathrm{{me}}$ / Γ$_\\mathrm{{ac}}$ ({unit})" if model.startswith("chromatin")
                      else f"rate λ ({unit})")
        sigma_label = f"1 s.d. of λ ({unit})"
    rate_lim = np.nanpercentile(truth, [1, 99])
    panels = [
        ("heterochromatin", sample["phi_h"], "magma", None, "volume fraction φ$_h$"),
        ("euchromatin", sample["phi_e"], "viridis", None, "volume fraction φ$_e$"),
        ("true rate", truth, "coolwarm", rate_lim, rate_label),
        (f"inferred rate (kernel radius {result.radius:g} px)", rate, "coolwarm", rate_lim, rate_label),
        ("uncertainty of the inferred rate" if np.isfinite(sigma).any() else "no uncertainty computed",
         np.where(np.isfinite(sigma), sigma, np.nan), "magma", None,
         sigma_label),
        ("residual (unexplained by the model)", result.residual, "RdBu_r", "symmetric",
         "residual (volume fraction)"),
    ]
    px = float(np.atleast_1d(result.provenance.get("pixel_size", sample.get("pixel_size", 1.0)))[0])
    fig, axes = plt.subplots(2, 3, figsize=(11, 7.6), constrained_layout=True)
    for ax, (name, data, cmap_name, lim, label) in zip(axes.ravel(), panels, strict=True):
        cmap = colormaps[cmap_name].with_extremes(bad=MASKED_COLOUR)
        kw = {}
        if isinstance(lim, str):  # "symmetric"
            m = np.nanpercentile(np.abs(data), 99) if np.isfinite(data).any() else 1.0
            kw = {"vmin": -m, "vmax": m}
        elif lim is not None:
            kw = {"vmin": lim[0], "vmax": lim[1]}
        im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, **kw)
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
        bar = fig.colorbar(im, ax=ax, shrink=0.8)
        bar.set_label(label, fontsize=9)
        ax.add_artist(AnchoredSizeBar(ax.transData, 1.0 / px, "1 µm", "lower left", pad=0.4, color="white",
                                      frameon=False, size_vertical=max(1.0, 0.01 * data.shape[0]),
                                      label_top=True))
    if title is None:
        covered = (f", truth within two uncertainties at {100 * scores['coverage_2sigma']:.0f} % of pixels"
                   if np.isfinite(sigma).any() else "")
        title = (f"Simulated nucleus: the inferred rate map against the true one\n"
                 f"correlation with the truth {scores['pearson_r']:.2f}, typical error "
                 f"{100 * scores['relative_l2_error']:.0f} %{covered}; grey: outside the nucleus (no value)")
    fig.suptitle(title, fontsize=11)
    return fig


def save_figure(path: str | Path, sample: dict, result: RateResult, scores: dict) -> None:
    """Write :func:`figure` to ``path`` (PNG, atomically).

    Parameters
    ----------
    path : str or Path
        The PNG file.
    sample, result, scores
        As in :func:`figure`.
    """
    import matplotlib.pyplot as plt

    from .io import atomic_path

    fig = figure(sample, result, scores)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the demo from the command line (``python -m napari_mollifier.demo``).

    ``argv`` are the arguments (default: ``sys.argv[1:]``); returns the exit status, 0.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=0.01, help="Gaussian noise std added to the fractions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic nucleus and its noise (default 0)")
    parser.add_argument("--out", default=None, help="folder for the maps (.npy); none written without it")
    args = parser.parse_args(argv)
    print(f"Synthetic nucleus 256 x 256, pixel 20 nm, noise std {args.noise}; model chromatin-balance")
    outcome = run(args.noise, args.seed, args.out)
    for key, value in outcome["scores"].items():
        print(f"  {key:>18}: {value:.4g}" if isinstance(value, float) else f"  {key:>18}: {value}")
    print("  per ROI:", outcome["result"].table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
