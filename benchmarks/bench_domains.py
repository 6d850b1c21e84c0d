"""Domain analysis benchmarks: (1) the whole pipeline on one real-sized nucleus (2.7 million localisations) on the
CPU: wall time and peak memory; (2) the lab's geometric per-domain rate vs the mollifier rate map averaged per
domain, on simulated nuclei with known lambda.

Usage::

    python benchmarks/bench_domains.py --part scale      # ~1-2 min: 2.7 M localisations, targets < 2 min, < 4 GB
    python benchmarks/bench_domains.py --part compare    # ~1 min: 3 simulated nuclei
    python benchmarks/bench_domains.py                   # both

Each part prints a table and writes its sub-section of ``benchmarks/RESULTS.md`` (between
``<!-- bench_domains:PART:start -->`` / ``:end -->`` markers) with machine, date and command, unless
``--no-write``.

Scale: localisations of a synthetic nucleus (lattice of disk domains + lamina band,
:func:`napari_mollifier.domains.synthetic.lattice_nucleus`) are written to a CSV first; the measured pipeline runs
in a fresh child process: ``read_localisations`` (CSV) + ``analyse_localisations`` (lab defaults: 1 in 4
analysed, Voronoi, outline, 50th percentile threshold, DBSCAN eps 30 nm / 3, geometry, rates, images) + ``save``.
Peak memory is the child's peak resident set size (``ru_maxrss``: everything, Qhull included).

Compare: nuclei whose domain geometry obeys the lab's law for a known lambda field (hexagonal lattice of pitch d,
domain radius ``R = d sqrt(lambda / (1 + lambda))`` at each centre, so that ``R^2 / (d^2 - R^2) = lambda``), whose
volume fractions are the exact steady state of the chromatin-balance model for the same lambda field
(``phi_w`` = 0.2 in domains and the lamina band, 0.8 elsewhere inside, 0.9 outside, smoothed over 1 px;
l2 = 0.0234 um^2), and whose localisations are Poisson samples of the chromatin density ``1 - phi_w`` (zero
outside the nucleus). Estimators per detected interior domain: (G) the lab's closed form on the recovered R and d;
(M-true) ``infer_rates`` on the true phi_h / phi_e (what a two-channel experiment measures) averaged over the
domain's pixels; (M-seg) ``infer_rates`` on the phi_h / phi_e implied by the segmentation (the single H2B channel
path). Truth: lambda at the detected domain's centre.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402

REPO = _common.REPO
_common.use_checkout_src()
NAME = "bench_domains"
HEADING = "## Heterochromatin domains (`benchmarks/bench_domains.py`)"


def _machine() -> str:
    import scipy
    import sklearn

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return _common.machine([f"{mem:.0f} GiB RAM", f"Python {platform.python_version()}", f"numpy {np.__version__}",
                            f"scipy {scipy.__version__}", f"scikit-learn {sklearn.__version__}"])


def _load() -> str:
    return _common.load_average(all_three=True)


def write_results(path: Path, part: str, body: str) -> None:
    _common.write_section(path, NAME, body, part=part, heading=HEADING)


# --------------------------------------------------------------------------- part 1: scale
_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {src!r})
t0 = time.perf_counter()
from napari_mollifier.io.smlm import read_localisations
from napari_mollifier.domains import analyse_localisations
t_import = time.perf_counter() - t0
t = time.perf_counter()
locs = read_localisations({csv!r})
t_read = time.perf_counter() - t
marks = []
t = time.perf_counter()
res = analyse_localisations(locs["x"], locs["y"], progress=lambda k, n, info: marks.append(
    (info["step"], time.perf_counter())))
t_an = time.perf_counter() - t
t1 = time.perf_counter()
res.save({out!r}, "cell")
t_save = time.perf_counter() - t1
steps, prev = [], t
for name, tt in marks:
    steps.append((name, tt - prev)); prev = tt
print(json.dumps({{"n": int(locs["x"].size), "import": t_import, "read": t_read, "analyse": t_an,
                  "save": t_save, "total": time.perf_counter() - t0, "steps": steps,
                  "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "summary": {{k: v for k, v in res.summary.items() if not isinstance(v, dict)}},
                  "median_spacing": float(np.median(res.table["spacing_nm"])) if res.n_domains else None}}))
""".replace("import json,", "import numpy as np, json,")


def part_scale(n_target: int, seed: int) -> str:
    import json

    from napari_mollifier.domains.synthetic import lattice_nucleus

    # density chosen so that the nucleus (10 x 8 um ellipse) holds ~n_target localisations
    frac_h = np.pi * 80**2 / (np.sqrt(3) / 2 * 300**2)
    area = np.pi * 5000 * 4000 / 1e6
    rho_e = n_target / area / (1 + 3 * frac_h)
    t = time.perf_counter()
    s = lattice_nucleus(semi_axes_nm=(5000.0, 4000.0), centre_nm=(6000.0, 6000.0), rho_e=rho_e, rho_h=4 * rho_e,
                        rho_lad=4 * rho_e, seed=seed)
    gen = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "locs.csv"
        np.savetxt(csv, np.column_stack([s["x"], s["y"]]), delimiter=",", fmt="%.2f", header="x [nm],y [nm]",
                   comments="")
        size_mb = csv.stat().st_size / 2**20
        code = _CHILD.format(src=str(REPO / "src"), csv=str(csv), out=str(Path(tmp) / "out"))
        load0 = _load()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        load1 = _load()
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        r = json.loads(proc.stdout.strip().splitlines()[-1])
    sm = r["summary"]
    steps = " | ".join(f"{name} {sec:.1f} s" for name, sec in r["steps"])
    verdict_t = "meets" if r["total"] < 120 else "misses"
    verdict_m = "meets" if r["rss_gib"] < 4 else "misses"
    body = f"""### Whole pipeline on {r['n'] / 1e6:.2f} million localisations (CPU)

- Date: {_common.utc_stamp()}
- Machine: {_machine()}
- Load average (1/5/15 min): {load0} at the start, {load1} at the end
- Command: `python benchmarks/bench_domains.py --part scale`

Synthetic nucleus: 10 x 8 um ellipse, hexagonal lattice of disk domains (R = 80 nm, d = 300 nm,
{s['n_domains']} interior domains), 100 nm lamina band (mean thickness {s['lad_thickness_nm']:.1f} nm), densities
{rho_e:.0f} / {4 * rho_e:.0f} localisations per um^2 (euchromatin / domains); CSV of {size_mb:.0f} MiB (generated in
{gen:.1f} s, not timed). The library's defaults: 1 in {sm.get('subsample', '?')} analysed (automatic: every
localisation up to 300,000 of them; the lab's MATLAB used 1 in 4), 50th percentile, DBSCAN 30 nm / 3, 20 nm images.

| stage | wall time |
|---|---|
| import | {r['import']:.1f} s |
| read CSV (`read_localisations`) | {r['read']:.1f} s |
| `analyse_localisations` | {r['analyse']:.1f} s ({steps}) |
| save (CSV, JSON, 3 OME-TIFFs) | {r['save']:.1f} s |
| **total** | **{r['total']:.1f} s** (target < 120 s: {verdict_t}) |
| **peak RSS** | **{r['rss_gib']:.2f} GiB** (target < 4 GiB: {verdict_m}) |

Recovered on this nucleus: {sm['n_domains']} interior domains (truth {s['n_domains']}), mean diameter
{sm['mean_diameter_nm']:.1f} nm (truth 160), median spacing {r['median_spacing']:.1f} nm (truth 300; mean
{sm['mean_spacing_nm']:.1f} nm, raised by the domains at the lattice's rim), LAD thickness {sm['lad_thickness_nm']:.1f} nm
(truth {s['lad_thickness_nm']:.1f}), threshold {sm['density_threshold_per_um2']:.0f} /um^2.
"""
    return body


# --------------------------------------------------------------------------- part 2: compare
def _nucleus(lam_fn, seed, px_nm=20.0, shape=(360, 360), d=300.0):
    """Known-lambda nucleus: geometry from the lab's law, fields from the balance model, Poisson localisations."""
    from scipy import ndimage

    from napari_mollifier.domains.synthetic import _hex_centres, sample_image
    from napari_mollifier.simulate import chromatin_steady_state

    ny, nx = shape
    cy0, cx0 = ny * px_nm / 2, nx * px_nm / 2
    a, b, t = 3000.0, 2500.0, 100.0
    yy, xx = (np.mgrid[0:ny, 0:nx] + 0.5) * px_nm
    ey, ex = yy - cy0, xx - cx0
    lam = lam_fn(ey, ex)
    outer = (ex / a) ** 2 + (ey / b) ** 2 <= 1
    inner = (ex / (a - t)) ** 2 + (ey / (b - t)) ** 2 <= 1
    rng = np.random.default_rng(seed)
    cen = _hex_centres(a, b, d, 0.0, rng)
    lam_c = lam_fn(cen[:, 0], cen[:, 1])
    rad = d * np.sqrt(lam_c / (1 + lam_c))
    ok = ((cen[:, 1] / (a - t - rad - d / 2)) ** 2 + (cen[:, 0] / (b - t - rad - d / 2)) ** 2) <= 1
    cen, rad = cen[ok], rad[ok]
    dom = np.zeros(shape, bool)
    for (cy, cx), r in zip(cen, rad, strict=True):
        dom |= (ey - cy) ** 2 + (ex - cx) ** 2 <= r**2
    dense = dom | (outer & ~inner)
    phi_w = np.where(outer, np.where(dense, 0.2, 0.8), 0.9)
    phi_w = ndimage.gaussian_filter(phi_w, 1.0, mode="wrap")
    st = chromatin_steady_state(phi_w, lam, px_nm / 1000, "chromatin-balance", {"l2": 0.0234}, tol=1e-9)
    loc = sample_image(15000.0 * (1 - phi_w) * outer, px_nm, seed=seed)
    return {"lam": lam, "phi_h": st["phi_h"], "phi_e": st["phi_e"], "nucleus": outer, "loc": loc,
            "n_true": len(cen), "lam_fn": lam_fn, "px": px_nm, "centre": (cy0, cx0)}


def _per_domain_mean(rate, labels, n):
    ok = np.isfinite(rate) & (labels > 0)
    s = np.bincount(labels[ok], weights=rate[ok], minlength=n + 1)[1:]
    c = np.bincount(labels[ok], minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / c, np.nan)


def _stats(est, truth, pair=False):
    """Median |relative error|, mean ratio and Pearson r of ``est`` against ``truth`` (r: NaN where ``truth`` is
    uniform, unless ``pair``: then ``truth`` is another estimate and r is their correlation)."""
    ok = np.isfinite(est) & np.isfinite(truth)
    if pair:
        r = float(np.corrcoef(est[ok], truth[ok])[0, 1]) if ok.sum() > 2 else float("nan")
        return {"r": r}
    rel = np.abs(est[ok] - truth[ok]) / truth[ok]
    varies = ok.sum() > 2 and np.std(truth[ok]) > 1e-6 * abs(np.mean(truth[ok]))
    r = float(np.corrcoef(est[ok], truth[ok])[0, 1]) if varies else float("nan")
    return {"n": int(ok.sum()), "median_rel": float(np.median(rel)) if ok.any() else float("nan"),
            "mean_ratio": float(np.mean(est[ok]) / np.mean(truth[ok])) if ok.any() else float("nan"), "r": r}


def part_compare(radius_px: float) -> str:
    import napari_mollifier as nm
    from napari_mollifier.domains import analyse_localisations

    cases = [
        ("uniform lambda = 0.08", lambda y, x: np.full(np.broadcast(y, x).shape, 0.08)),
        ("uniform lambda = 0.15", lambda y, x: np.full(np.broadcast(y, x).shape, 0.15)),
        ("gradient lambda 0.06 .. 0.18 along x", lambda y, x: 0.12 + 0.06 * np.clip(np.asarray(x) / 2600, -1, 1)
         + 0 * np.asarray(y)),
    ]
    rows, t_all = [], time.perf_counter()
    for k, (label, fn) in enumerate(cases):
        s = _nucleus(fn, seed=10 + k)
        res = analyse_localisations(s["loc"]["x"], s["loc"]["y"], subsample=1, margin_nm=0.0)
        n = res.n_domains
        truth = fn(res.table["centre_y_nm"] - s["centre"][0], res.table["centre_x_nm"] - s["centre"][1])
        geo = np.asarray(res.table["lambda"])
        oy, ox = (int(round(o / s["px"])) for o in res.origin_nm)
        h, w = res.labels.shape
        lab_full = np.zeros(s["lam"].shape, np.int32)
        lab_full[oy:oy + h, ox:ox + w] = res.labels[:lab_full.shape[0] - oy, :lab_full.shape[1] - ox]
        kw = dict(model="chromatin-balance", params={"l2": 0.0234}, pixel_size=s["px"] / 1000, radius=radius_px,
                  n_bootstrap=0)
        noise = np.random.default_rng(100 + k).normal(0.0, 0.01, (2,) + s["phi_h"].shape)
        m_true = nm.infer_rates({"phi_h": s["phi_h"] + noise[0], "phi_e": s["phi_e"] + noise[1]}, roi=s["nucleus"],
                                **kw).rate
        m_seg_img = nm.infer_rates({"phi_h": res.fields["phi_h"], "phi_e": res.fields["phi_e"]}, roi=res.nucleus,
                                   **kw).rate
        mt = _per_domain_mean(m_true, lab_full, n)
        ms = _per_domain_mean(m_seg_img, res.labels, n)
        rows.append((label, s["n_true"], n, _stats(geo, truth), _stats(mt, truth), _stats(ms, truth),
                     _stats(geo, mt, pair=True), _stats(ms, mt, pair=True)))
    wall = time.perf_counter() - t_all

    def f(st):
        return f"{st['median_rel'] * 100:.1f} % / {st['mean_ratio']:.3f} / {st['r']:.3f}"

    table = "\n".join(f"| {lab} | {nt} / {nd} | {f(g)} | {f(mt)} | {f(ms)} | {gm['r']:.3f} | {sm['r']:.3f} |"
                      for lab, nt, nd, g, mt, ms, gm, sm in rows)
    body = f"""### Geometric (lab) vs mollifier rate per domain, known lambda

- Date: {_common.utc_stamp()}
- Machine: {_machine()}
- Load average: {_load()} at the end
- Command: `python benchmarks/bench_domains.py --part compare`

Simulated nuclei (6 x 5 um ellipse on a 360 x 360 grid of 20 nm, lattice pitch d = 300 nm, R from the lab's law,
balance-model steady state, ~15000 x chromatin localisations per um^2; module docstring). Mollifier: direct
method, radius {radius_px:g} px, no bootstrap; M-true gets Gaussian noise of std 0.01 (volume fraction) on phi_h and
phi_e. Each cell: median |relative error|, then the ratio mean(estimate) : mean(truth), then
Pearson r, over the detected interior domains (r is undefined, nan, where lambda is uniform); the last two columns
are Pearson r between two estimates over the same domains (where lambda is uniform they correlate only errors).
Total wall time
{wall:.0f} s.

| nucleus | domains true / found | G: lab closed form vs truth | M-true: mollifier on true fields vs truth | M-seg: mollifier on segmentation fields vs truth | r(G, M-true) | r(M-seg, M-true) |
|---|---|---|---|---|---|---|
{table}
"""
    return body


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("scale", "compare", "all"), default="all")
    p.add_argument("--n", type=int, default=2_700_000, help="localisations of the scale benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--radius", type=float, default=8.0, help="mollifier radius (px) of the comparison")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    parts = ["scale", "compare"] if args.part == "all" else [args.part]
    for part in parts:
        body = part_scale(args.n, args.seed) if part == "scale" else part_compare(args.radius)
        print(body)
        if not args.no_write:
            write_results(args.results, part, body)
            print(f"wrote the {NAME}:{part} section of {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
