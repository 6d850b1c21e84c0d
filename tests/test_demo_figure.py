"""Issue 13, item 6: the demo figure (scale bar, colour-bar labels with units, masked pixels in a colour no map
takes, a plain title), the CLI help describing every option, and CLI errors naming the --channels flag."""

from __future__ import annotations

import numpy as np
import pytest

import napari_mollifier as nm
from napari_mollifier import cli, demo
from napari_mollifier.simulate import synthetic_nucleus

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def sample():
    return synthetic_nucleus(shape=(64, 64), pixel_size=0.02, seed=0, noise=0.01)


def _scores(res, sample):
    inside = np.isfinite(res.rate) & sample["nucleus"]
    est, truth = res.rate[inside], sample["rate"][inside]
    return {"pearson_r": float(np.corrcoef(est, truth)[0, 1]),
            "relative_l2_error": float(np.linalg.norm(est - truth) / np.linalg.norm(truth)),
            "coverage_2sigma": float(np.mean(np.abs(est - truth) <= 2 * res.uncertainty[inside]))}


def _figure(fields, sample):
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgb

    res = nm.infer_rates(fields, params=sample["params"], pixel_size=0.02, roi=sample["nucleus"], radius=6,
                         n_bootstrap=2, device="cpu")
    fig = demo.figure(sample, res, _scores(res, sample))
    maps = [ax for ax in fig.axes if ax.images and ax.get_title()]
    bars = [ax for ax in fig.axes if ax not in maps]
    info = {"title": fig._suptitle.get_text(), "titles": [ax.get_title() for ax in maps],
            "bar_labels": [ax.get_ylabel() for ax in bars], "scale_bars": [], "bad": [], "distance": []}
    for ax in maps:
        from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

        sizebars = [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]
        info["scale_bars"].append([(sb.txt_label.get_text(), sb.size_bar.get_children()[0].get_width())
                                   for sb in sizebars])
        cmap = ax.images[0].get_cmap()
        bad = np.array(cmap.get_bad()[:3])
        info["bad"].append(bad)
        lut = cmap(np.linspace(0, 1, 256))[:, :3]
        info["distance"].append(float(np.min(np.linalg.norm(lut - bad, axis=1))))
        assert np.allclose(bad, to_rgb(demo.MASKED_COLOUR))
    plt.close(fig)
    return info, res


def test_demo_figure(sample):
    info, res = _figure({"phi_h": sample["phi_h"], "phi_e": sample["phi_e"]}, sample)
    assert len(info["titles"]) == 6 and len(info["bar_labels"]) == 6
    # a 1 um scale bar on every panel, 50 px long at 20 nm per pixel
    assert all(sb == [("1 µm", pytest.approx(50.0))] for sb in info["scale_bars"]), info["scale_bars"]
    labels = info["bar_labels"]
    assert labels[0] == "volume fraction φ$_h$" and labels[1] == "volume fraction φ$_e$"
    assert labels[2] == labels[3] and labels[2].startswith("rate λ") and labels[2].endswith("(no unit)")
    assert labels[4] == "1 s.d. of λ (no unit)" and labels[5] == "residual (volume fraction)"
    # the masked (outside-the-nucleus) colour is far from every colour a map can take
    assert min(info["distance"]) >= 0.3, info["distance"]
    title = info["title"]
    assert title.startswith("Simulated nucleus: the inferred rate map against the true one")
    assert "correlation with the truth" in title and "grey: outside the nucleus" in title
    assert "L2" not in title and "sigma" not in title and "Pearson" not in title


def test_demo_figure_relative(sample):
    info, res = _figure({"density": sample["phi_h"] + sample["phi_e"]}, sample)
    assert res.relative
    assert info["bar_labels"][3] == "relative rate λ / median (no unit)"


def _help(*argv) -> dict:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    return {opt: action.help or "" for action in sub[argv[0]]._actions for opt in action.option_strings}


@pytest.mark.parametrize("command, option, words", [
    ("demo", "--out", ["output folder"]),
    ("demo", "--noise", ["noise", "volume fraction"]),
    ("demo", "--seed", ["seed"]),
    ("demo", "--n-bootstrap", ["noise realisations"]),
    ("infer", "--model", ["closed form", "chromatin-balance"]),
    ("infer", "--radius", ["pixels", "auto", "larger radius", "to compare cells"]),
    ("infer", "--roi-mode", ["image", "isolate"]),
    ("infer", "--kernel", ["poly", "sep", "bump"]),
    ("infer", "--boundary", ["mask", "reflect", "periodic"]),
])
def test_cli_help_describes_every_option(command, option, words):
    helps = _help(command)
    text = helps[option]
    assert all(w in text for w in words), (option, text)
    undocumented = [o for o, h in helps.items() if len(h) < 10 and o not in ("-h", "--help", "-q")]
    assert not undocumented, undocumented


def test_channel_count_error_names_the_flag(tmp_path, sample, capsys):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "three.ome.tif"
    tifffile.imwrite(path, np.stack([sample["phi_h"], sample["phi_e"], sample["phi_e"]]), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.02, "PhysicalSizeXUnit": "µm",
                               "PhysicalSizeY": 0.02, "PhysicalSizeYUnit": "µm"})
    fast = ["--radius", "4", "--n-bootstrap", "0", "--param", "l2=0.0234", "--quiet", "--out", str(tmp_path / "o")]
    assert cli.main(["infer", str(path), *fast]) == 1
    err = capsys.readouterr().err
    assert "has 3 channels" in err and "--channels 0,1" in err and "channels=" not in err, err
    assert cli.main(["infer", str(path), "--channels", "0,1,2", *fast]) == 1
    err = capsys.readouterr().err
    assert "needs 2 channel(s)" in err and "got --channels" in err and "channels=" not in err, err
