"""What the "Heterochromatin domains" dock says about a result, in words and units (Qt-free; issue #15).

The table's columns and headers, the plain summary, the statistics behind it, and the metadata of the phi_h / phi_e
layers that hands the model coefficient to the "Rate maps" dock.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TABLE_HEADERS", "TABLE_SHOWN", "details_text", "handoff_metadata", "plain_summary"]

TABLE_SHOWN = ("domain", "radius_nm", "spacing_nm", "gamma_ac", "gamma_me", "lambda")
#: Table headers in words, with units (the CSV export keeps the column keys).
TABLE_HEADERS = {
    "domain": "Domain",
    "radius_nm": "Radius (nm)",
    "spacing_nm": "Spacing to neighbours (nm)",
    "gamma_ac": "Acetylation rate Γac (1/s)",
    "gamma_me": "Methylation rate Γme (1/s)",
    "lambda": "Rate ratio λ = Γme/Γac",
}

def handoff_metadata(res) -> dict:
    """Metadata for the phi_h / phi_e layers: the Rate maps widget reads the model's coefficient from it.

    The chromatin-balance model's ``l2 = D / Gamma_ac`` (a squared length, docs/science.md); the domains give
    ``Gamma_ac = D / d^2`` per domain, so ``l2`` in µm² is ``D`` over the median ``Gamma_ac`` (the median squared
    spacing). Empty when no domain has a finite rate.
    """
    g = np.asarray(res.table["gamma_ac"], float)
    g = g[np.isfinite(g) & (g > 0)]
    if g.size == 0:
        return {}
    l2 = float(res.params["diffusivity"]) / float(np.median(g))
    return {"model": "chromatin-balance", "params": {"l2": l2}, "params_unit": "um",
            "params_origin": f"domain analysis: l2 = D / median Γac = {l2:.4g} µm²"}


def plain_summary(s: dict, diffusivity: float) -> str:
    """Describe the result in plain words (the statistics go to :func:`details_text`)."""
    n = s["n_domains"]
    text = (f"Found {n} heterochromatin domain{'s' if n != 1 else ''} inside the nucleus, "
            f"{s['mean_diameter_nm']:.0f} nm across on average and {s['mean_spacing_nm']:.0f} nm apart. "
            f"Along the nuclear edge, a dense band {s['lad_thickness_nm']:.0f} nm thick "
            f"(in {s['n_lad_clusters']} piece{'s' if s['n_lad_clusters'] != 1 else ''}). Rates assume D = {diffusivity:g} µm²/s.")
    if s.get("n_rates_undefined"):
        text += (f" {s['n_rates_undefined']} domain(s) are as far apart as they are wide: no rate for them "
                 "(blank in the maps).")
    if s.get("subsample", 1) > 1:
        text += f" Analysed 1 in {s['subsample']} localisations (faster; finds fewer, smaller domains)."
    return text


def details_text(s: dict, assumption: dict, diffusivity: float) -> str:
    """List the statistics behind the summary, each named and with its unit."""
    def fit(key, unit):
        f = s.get(key) or {}
        mu, sigma = f.get("mu", float("nan")), f.get("sigma", float("nan"))
        return f"median {np.exp(mu):.3g}{unit}, spread ×{np.exp(sigma):.3g} (log-normal fit: μ {mu:.3g}, σ {sigma:.3g})"

    lines = [
        f"Localisations: {s['n_localisations_input']} read, {s['n_localisations_analysed']} analysed.",
        f"Density threshold: {s['density_threshold_per_um2']:.4g} localisations per µm² ({s['threshold_method']}).",
        f"Nucleus: {s['nucleus_area_um2']:.3g} µm², {s['nucleus_diameter_nm']:.0f} nm across.",
        f"Edge band (lamina-associated domains, LADs): clusters within {s['lad_distance_nm']:.0f} nm of the edge; "
        f"{100 * s['lad_fraction_of_dense']:.0f} % of the dense localisations.",
        f"Radius: {fit('fit_radius_nm', ' nm')}.",
        f"Spacing: {fit('fit_spacing_nm', ' nm')}.",
        f"Acetylation rate Γac = D / spacing²: {fit('fit_gamma_ac', ' 1/s')}.",
        f"Methylation rate Γme = Γac / ((spacing / radius)² − 1): {fit('fit_gamma_me', ' 1/s')}.",
        f"Rate ratio λ = Γme / Γac: {fit('fit_lambda', '')}.",
        f"Domains without a rate (spacing ≤ radius): {s['n_rates_undefined']}.",
        f"phi_h / phi_e layers: {assumption.get('summary', '')}.",
    ]
    return "\n".join(lines)
