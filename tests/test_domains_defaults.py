"""The domain analysis' defaults recover the plugin's own synthetic nucleus (count, size, lamina band within 5 %)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")


def test_defaults_recover_the_synthetic_nucleus():
    from napari_mollifier.domains import DEFAULTS, analyse_localisations
    from napari_mollifier.domains.synthetic import lattice_nucleus

    s = lattice_nucleus(seed=0)
    res = analyse_localisations(s["x"], s["y"])  # the defaults, as the widget and the CLI use them
    summary = res.summary
    assert DEFAULTS["subsample"] == 0 and summary["subsample"] == 1  # 128k points: all analysed
    assert summary["n_domains"] == pytest.approx(s["n_domains"], rel=0.05)
    assert summary["mean_diameter_nm"] == pytest.approx(2 * float(np.mean(s["radii"])), rel=0.05)
    assert summary["lad_thickness_nm"] == pytest.approx(s["lad_thickness_nm"], rel=0.05)


def test_automatic_subsample_rule():
    from napari_mollifier.domains.pipeline import AUTO_SUBSAMPLE_MAX, auto_subsample
    from napari_mollifier.errors import MollifierInputError

    assert auto_subsample(AUTO_SUBSAMPLE_MAX) == 1
    assert auto_subsample(AUTO_SUBSAMPLE_MAX + 1) == 2
    assert auto_subsample(3_000_000) == 10
    assert auto_subsample(3_000_000, 4) == 4  # an explicit choice is kept
    from napari_mollifier.domains import analyse_localisations

    rng = np.random.default_rng(0)
    with pytest.raises(MollifierInputError, match="subsample"):
        analyse_localisations(rng.uniform(0, 1e3, 500), rng.uniform(0, 1e3, 500), subsample=-1)
