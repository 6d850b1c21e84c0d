"""The sample-data contribution, headless and in a real napari viewer.

GUI tests need napari, a Qt binding, pytest-qt and a display: run them under
``xvfb-run`` (see README.md). They skip with a reason where those are missing.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

PLUGIN = "napari-mollifier"
SAMPLE_KEY = "nucleus"
LAYER_NAMES = ("euchromatin (phi_e)", "heterochromatin (phi_h)", "ground truth rate")


def _gui_skip_reason() -> str | None:
    for mod in ("napari", "qtpy", "pytestqt"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed"
    try:
        import qtpy  # noqa: F401  (raises if no Qt binding is installed)
    except Exception as exc:  # QtBindingsNotFoundError and friends  # noqa: BLE001 - reported to the user, never raised into the viewer/caller
        return f"no usable Qt binding: {exc}"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY")
        or os.environ.get("WAYLAND_DISPLAY")
        or os.environ.get("QT_QPA_PLATFORM")
    ):
        return "no display: run the tests under xvfb-run (see README.md)"
    return None


_GUI_SKIP = _gui_skip_reason()
requires_gui = pytest.mark.skipif(_GUI_SKIP is not None, reason=_GUI_SKIP or "")


@functools.lru_cache(maxsize=1)
def _expected():
    from napari_mollifier._napari.sample_data import SAMPLE_KWARGS
    from napari_mollifier.simulate import synthetic_nucleus

    return synthetic_nucleus(**SAMPLE_KWARGS)


def test_sample_layer_data_headless():
    """The contribution returns image LayerDataTuples without importing Qt."""
    code = textwrap.dedent(
        """
        import sys
        from napari_mollifier._napari.sample_data import make_sample_nucleus
        layers = make_sample_nucleus()
        bad = sorted(m for m in sys.modules
                     if m in ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6")
                     or m.startswith(("napari.", "qtpy.", "PyQt6.", "PyQt5.")))
        assert not bad, bad
        print(len(layers))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "3"

    from napari_mollifier._napari.sample_data import make_sample_nucleus

    sim = _expected()
    px = float(sim["pixel_size"])
    layers = make_sample_nucleus()
    assert [kw["name"] for _, kw, _ in layers] == list(LAYER_NAMES)
    for data, kw, layer_type in layers:
        assert layer_type == "image"
        assert data.shape == (256, 256)
        assert kw["scale"] == (px, px)
        assert kw["axis_labels"] == ("y", "x")
        assert kw["metadata"]["description"] == sim["description"]
    by_name = {kw["name"]: (data, kw) for data, kw, _ in layers}
    np.testing.assert_array_equal(by_name["heterochromatin (phi_h)"][0], sim["phi_h"])
    np.testing.assert_array_equal(by_name["euchromatin (phi_e)"][0], sim["phi_e"])
    rate, rate_kw = by_name["ground truth rate"]
    np.testing.assert_array_equal(rate, sim["rate"])
    assert rate_kw["visible"] is False
    assert rate_kw["colormap"] == "viridis"
    np.testing.assert_array_equal(rate_kw["metadata"]["nucleus_mask"], sim["nucleus"])


@requires_gui
def test_open_sample_in_viewer(make_napari_viewer, tmp_path: Path):
    sim = _expected()
    px = float(sim["pixel_size"])

    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, SAMPLE_KEY)

    names = [layer.name for layer in viewer.layers]
    for name in LAYER_NAMES:
        assert name in names, names

    for name in LAYER_NAMES:
        layer = viewer.layers[name]
        np.testing.assert_allclose(layer.scale, (px, px))
        assert tuple(layer.axis_labels) == ("y", "x")
        if hasattr(layer, "units"):
            assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]

    gt = viewer.layers["ground truth rate"]
    assert gt.visible is False
    assert gt.colormap.name == "viridis"
    np.testing.assert_array_equal(np.asarray(gt.data), sim["rate"])
    np.testing.assert_array_equal(np.asarray(viewer.layers["heterochromatin (phi_h)"].data), sim["phi_h"])
    np.testing.assert_array_equal(np.asarray(viewer.layers["euchromatin (phi_e)"].data), sim["phi_e"])

    png = tmp_path / "sample.png"
    shot = viewer.screenshot(path=str(png), canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[0] > 0 and shot.shape[1] > 0
    assert shot.shape[2] in (3, 4)
    # Something was drawn: the visible chromatin layers are not one flat colour.
    assert np.ptp(shot[..., :3]) > 0
    assert png.is_file() and png.stat().st_size > 0
