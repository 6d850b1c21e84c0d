#!/usr/bin/env python
"""Benchmark of the default solve, its error model and the separable derivative engine (a script, not a test).

Parts (``--parts``, default all):

``default``
    The default ``infer_rates`` call (radius "auto" by the Lepski rule, propagated uncertainty, boundary "mask",
    nucleus ROI) on the synthetic nucleus at 512 x 512, the first call in a fresh process (cold: kernel spectra and
    edge operators are built), a second nucleus in the same process (new image and ROI: what a click on another
    cell costs) and the median of three more on the first (warm, as when a user clicks Run again), against the
    physical yardstick in the same process: scipy's Gaussian-derivative stack of the same image (9 calls of
    ``ndimage.gaussian_filter`` with orders up to 4, sigma = 3 px) and one ``rfft2 + irfft2`` round trip. Then a
    2048 x 2048 image with four nuclei (a 2 x 2 mosaic of 1024 x 1024 synthetic nuclei, one label each), cold. The
    previous defaults (100-sample bootstrap, quasi-optimality) are not timed here (minutes per call).
``coverage``
    The 2-sigma coverage of the uncertainty map (fraction of ROI pixels with ``|rate - truth| <= 2 sigma``) for
    white noise and noise correlated over 1 and 2 px, uniform and smoothly varying rates (the table of
    docs/science.md), plus the median ratio of the propagated to a 60-sample bootstrap uncertainty.
``labels``
    1000 labels on a 256 x 256 image at the defaults against the same pixels as a single label.
``stack``
    The full 2-D derivative stack (u, x, y, xx, yy, xy, lap, biharm) of a 2048 x 2048 float32 image with the radial
    ``poly`` kernel and the separable ``sep`` kernel, against one FFT round trip, and the accuracy of both on a
    noisy trigonometric field at equal radius.

Results are printed and written to this script's section of ``benchmarks/RESULTS.md``::

    python benchmarks/bench_solver.py                       # all parts, ~5 min on 2 idle cores
    python benchmarks/bench_solver.py --parts default --device cuda
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import _common  # noqa: E402

_common.use_checkout_src()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

SECTION = "bench_solver"
ORDERS = [(0, 0), (0, 1), (1, 0), (0, 2), (2, 0), (1, 1), (0, 4), (4, 0), (2, 2)]


def _timed(fn, repeats=1):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _scipy_stack(image):
    for order in ORDERS:
        ndimage.gaussian_filter(image, 3.0, order=order)


def _fft_roundtrip(image):
    x = torch.as_tensor(image)
    torch.fft.irfft2(torch.fft.rfft2(x), s=x.shape)


def _r(res, truth, where):
    ok = where & np.isfinite(res.rate)
    return float(np.corrcoef(res.rate[ok], truth[ok])[0, 1])


def _coverage(res, truth, where):
    ok = where & np.isfinite(res.rate) & np.isfinite(res.uncertainty)
    return float(np.mean(np.abs(res.rate - truth)[ok] <= 2 * res.uncertainty[ok]))


def part_default(device: str) -> str:
    import napari_mollifier as nm
    from napari_mollifier.simulate import synthetic_nucleus

    lines = []
    s = synthetic_nucleus((512, 512), noise=0.01, seed=0)
    fields = {"phi_h": s["phi_h"], "phi_e": s["phi_e"]}
    kw = dict(params=s["params"], pixel_size=s["pixel_size"], roi=s["nucleus"], device=device)
    cold, res = _timed(lambda: nm.infer_rates(fields, **kw))
    warm, res = _timed(lambda: nm.infer_rates(fields, **kw), 3)
    s1 = synthetic_nucleus((512, 512), noise=0.01, seed=1)  # another nucleus: new image and mask, warm process
    kw1 = dict(params=s1["params"], pixel_size=s1["pixel_size"], roi=s1["nucleus"], device=device)
    new, res1 = _timed(lambda: nm.infer_rates({"phi_h": s1["phi_h"], "phi_e": s1["phi_e"]}, **kw1))
    t_scipy, _ = _timed(lambda: _scipy_stack(s["phi_e"]), 5)
    t_rt, _ = _timed(lambda: _fft_roundtrip(s["phi_e"]), 5)
    rows = [["512 x 512, 1 nucleus, cold (first call)", f"{cold:.2f} s", f"{cold / t_scipy:.1f}",
             f"{res.radius:g}", f"{_r(res, s['rate'], s['nucleus']):.4f}",
             f"{_coverage(res, s['rate'], s['nucleus']):.3f}"],
            ["512 x 512, another nucleus (new image and ROI, process warm)", f"{new:.2f} s",
             f"{new / t_scipy:.1f}", f"{res1.radius:g}", f"{_r(res1, s1['rate'], s1['nucleus']):.4f}",
             f"{_coverage(res1, s1['rate'], s1['nucleus']):.3f}"],
            ["512 x 512, 1 nucleus, warm (median of 3)", f"{warm:.2f} s", f"{warm / t_scipy:.1f}",
             f"{res.radius:g}", f"{_r(res, s['rate'], s['nucleus']):.4f}",
             f"{_coverage(res, s['rate'], s['nucleus']):.3f}"]]
    print(f"default 512: cold {cold:.2f} s, new nucleus {new:.2f} s, warm {warm:.2f} s, scipy stack {t_scipy:.3f} s, RT {t_rt * 1e3:.1f} ms",
          flush=True)

    tiles = [synthetic_nucleus((1024, 1024), noise=0.01, seed=k) for k in range(4)]
    big = {k: np.block([[tiles[0][k], tiles[1][k]], [tiles[2][k], tiles[3][k]]]) for k in ("phi_h", "phi_e", "rate")}
    labels = np.block([[tiles[0]["nucleus"] * 1, tiles[1]["nucleus"] * 2],
                       [tiles[2]["nucleus"] * 3, tiles[3]["nucleus"] * 4]])
    t_big, res_big = _timed(lambda: nm.infer_rates({"phi_h": big["phi_h"], "phi_e": big["phi_e"]},
                                                    params=s["params"], pixel_size=s["pixel_size"], roi=labels,
                                                    device=device))
    t_scipy_big, _ = _timed(lambda: _scipy_stack(big["phi_e"]), 2)
    radii = sorted(set(res_big.provenance["radius_used"].values()))
    rows.append(["2048 x 2048, 4 nuclei (4 labels), cold", f"{t_big:.2f} s", f"{t_big / t_scipy_big:.1f}",
                 ", ".join(f"{r:g}" for r in radii), f"{_r(res_big, big['rate'], labels > 0):.4f}",
                 f"{_coverage(res_big, big['rate'], labels > 0):.3f}"])
    print(f"default 2048 x 4 nuclei: {t_big:.2f} s (scipy stack {t_scipy_big:.3f} s)", flush=True)

    header = ["case", "time", "time / scipy stack", "radius (px)", "r with truth", "2-sigma coverage"]
    lines.append(f"Yardsticks in the same process: scipy Gaussian-derivative stack of one 512 x 512 field "
                 f"(9 x `gaussian_filter`, orders <= 4, sigma 3 px) **{t_scipy * 1e3:.1f} ms**, of one 2048 x 2048 "
                 f"field {t_scipy_big:.3f} s; one rfft2 + irfft2 round trip of 512 x 512 {t_rt * 1e3:.1f} ms.")
    lines.append("")
    lines.append(_md(header, rows))
    return "\n".join(lines)


def _noisy(shape, rate, sigma, corr, seed, l2=0.0234, px=0.02):
    from napari_mollifier import simulate as S
    from napari_mollifier.noise import blur_white_noise

    w = S.smooth_random_field(shape, 6, 0.2, 0.7, seed=seed + 1)
    st = S.chromatin_steady_state(w, rate, pixel_size=px, params={"l2": l2})
    rng = np.random.default_rng(seed + 2)
    wn = w + sigma * blur_white_noise(rng.standard_normal(shape), corr)
    dn = st["phi_d"] + sigma * blur_white_noise(rng.standard_normal(shape), corr)
    return {"phi_h": (1 - wn + dn) / 2, "phi_e": (1 - wn - dn) / 2}


def part_coverage(device: str) -> str:
    import napari_mollifier as nm
    from napari_mollifier import simulate as S

    shape = (128, 128)
    rows = []
    for kind in ("uniform", "smooth"):
        rate = 0.8 if kind == "uniform" else S.smooth_random_field(shape, 40, 0.5, 1.5, seed=11)
        truth = np.broadcast_to(rate, shape)
        for corr in (0.0, 1.0, 2.0):
            fields = _noisy(shape, rate, 0.01, corr, seed=12)
            kw = dict(params={"l2": 0.0234}, pixel_size=0.02, boundary="periodic", device=device)
            res = nm.infer_rates(fields, **kw)
            nm_ = res.provenance["noise_model"]
            rows.append([kind, f"{corr:g} px", f"{nm_['correlation_length_px']:.2f} px",
                         f"{nm_['sigma']['phi_h']:.4f} / {0.01 / np.sqrt(2):.4f}", f"{res.radius:g}",
                         f"{_coverage(res, truth, np.ones(shape, bool)):.3f}"])
            print("coverage", rows[-1], flush=True)
    header = ["rate", "noise correlation (true)", "estimated", "noise sigma phi_h (est. / true)", "auto radius (px)",
              "2-sigma coverage"]
    return ("128 x 128 steady states (l2 = 0.0234 um^2, 20 nm pixels, periodic), Gaussian noise of std 0.01 on "
            "phi_w and phi_d blurred to the stated correlation length; default call (Lepski radius, propagated "
            "uncertainty). The propagated/bootstrap agreement is checked in tests/test_uncertainty.py.\n\n"
            + _md(header, rows))


def part_stack(device: str) -> str:
    from napari_mollifier import derivatives

    keys = ("u", "x", "y", "xx", "yy", "xy", "lap", "biharm")
    torch.manual_seed(0)
    x = torch.randn(2048, 2048, dtype=torch.float32, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def best(fn, n=3):
        fn()
        sync()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t)
        return min(ts)

    t_rt = best(lambda: torch.fft.irfft2(torch.fft.rfft2(x), s=x.shape), 5)
    rows = []
    n = 512
    h = 0.1
    yy, xx = np.mgrid[0:n, 0:n] * h
    u = np.sin(2 * np.pi * xx / (96 * h) + 0.3) * np.sin(2 * np.pi * yy / (64 * h) + 1.1)
    lap_true = -((2 * np.pi / (96 * h)) ** 2 + (2 * np.pi / (64 * h)) ** 2) * u
    noisy = u + 0.01 * np.random.default_rng(0).standard_normal(u.shape)
    for radius in (5, 8, 12, 20):
        for kernel in ("poly", "sep"):
            t = best(lambda k=kernel, r=radius: derivatives(x, r, which=keys, kernel=k))
            est = derivatives(noisy, radius, pixel_size=h, which=("lap",), kernel=kernel)["lap"]
            inner = (slice(40, -40),) * 2
            err = np.linalg.norm(est[inner] - lap_true[inner]) / np.linalg.norm(lap_true[inner])
            rows.append([f"{radius:g}", kernel, f"{t:.3f} s", f"{t / t_rt:.1f}", f"{err:.3f}"])
            print("stack", rows[-1], flush=True)
    return (f"2048 x 2048 float32 on {device}, all 8 keys in one call (best of 3 after a warm-up); one rfft2 + "
            f"irfft2 round trip **{t_rt * 1e3:.1f} ms**. Accuracy: relative L2 error of lap on a 512 x 512 "
            "sin-product field (spacing 0.1, 1 % noise), interior.\n\n"
            + _md(["R (px)", "kernel", "stack time", "stack / round trip", "lap error"], rows))


def part_labels(device: str) -> str:
    """1000 labels on a 256 x 256 image at the defaults, against the same pixels as one label."""
    import napari_mollifier as nm
    from napari_mollifier.simulate import synthetic_nucleus

    s = synthetic_nucleus((256, 256), noise=0.01, seed=0)
    fields = {"phi_h": s["phi_h"], "phi_e": s["phi_e"]}
    labels = np.zeros((256, 256), int)
    k = 0
    for i in range(40):  # 40 x 25 blocks of 6 x 10 px inside the image
        for j in range(25):
            k += 1
            labels[8 + 6 * i: 8 + 6 * i + 5, 3 + 10 * j: 3 + 10 * j + 9] = k
    kw = dict(params=s["params"], pixel_size=s["pixel_size"], device=device)
    nm.infer_rates(fields, roi=labels > 0, **kw)  # warm-up: kernel spectra and operators
    t_one, one = _timed(lambda: nm.infer_rates(fields, roi=labels > 0, **kw), 3)
    t_many, many = _timed(lambda: nm.infer_rates(fields, roi=labels, **kw), 3)
    radii = sorted(set(many.provenance["radius_used"].values()))
    rows = [["1 label (the same pixels)", f"{t_one:.2f} s", "1.0", f"{one.radius:g}"],
            [f"{int(labels.max())} labels", f"{t_many:.2f} s", f"{t_many / t_one:.2f}",
             f"{len(radii)} distinct: {radii[0]:g}-{radii[-1]:g}"]]
    print("labels", rows, flush=True)
    return ("256 x 256 synthetic nucleus, default call (auto radius, propagated uncertainty), median of 3 warm calls; "
            "1000 labels of 5 x 9 px tiling the image vs the union of their pixels as one label. Target: under 3x.\n\n"
            + _md(["ROI", "time", "ratio", "radius (px)"], rows))


def _md(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="default,labels,coverage,stack")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    load0 = _common.load_average(True)
    blocks = {}
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for part in parts:
        blocks[part] = {"default": part_default, "coverage": part_coverage, "stack": part_stack,
                        "labels": part_labels}[part](args.device)
    load1 = _common.load_average(True)
    head = [
        f"- Date: {_common.utc_stamp()}",
        "- Machine: " + _common.machine([f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
                                         f"device {args.device}"]),
        f"- Command: `python benchmarks/bench_solver.py {shlex.join(argv or sys.argv[1:])}` "
        f"(total {time.perf_counter() - started:.0f} s)",
        f"- Load average (1/5/15 min) at start / end: {load0} / {load1} (2 cores: a load above 2 inflates times)",
    ]
    titles = {"default": "### The default solve against the physical yardstick",
              "coverage": "### Coverage of the uncertainty map",
              "stack": "### Derivative stack: radial against separable kernels",
              "labels": "### Many labels share the whole-image work"}
    body = "\n".join(head) + "\n\n" + "\n\n".join(f"{titles[p]}\n\n{blocks[p]}" for p in parts)
    print(body)
    if not args.no_write:
        _common.write_section(_common.RESULTS, SECTION, f"## Default solve, error model, separable kernels "
                              f"(`benchmarks/bench_solver.py`)\n\n{body}")


if __name__ == "__main__":
    main()
