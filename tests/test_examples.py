"""The scripted napari session in docs/examples runs headless (under xvfb) and saves a figure."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "examples" / "scripted_figure.py"


def _skip_reason() -> str | None:
    for module in ("napari", "qtpy", "npe2"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed"
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        or os.environ.get("QT_QPA_PLATFORM") in ("offscreen", "minimal")
    ):
        return "no display: run the tests under xvfb-run -a"
    return None


@pytest.mark.slow
@pytest.mark.gui
@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
def test_scripted_figure(tmp_path):
    out = tmp_path / "figure.png"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src")] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--size", "96", "--radius", "5", "--n-bootstrap", "2", "--width", "900",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=env, cwd=tmp_path,
    )
    if proc.returncode != 0 and any(s in proc.stderr for s in ("could not connect to display",
                                                                 "Could not load the Qt platform plugin",
                                                                 "no OpenGL", "GLX")):
        pytest.skip(f"no usable display/OpenGL for napari: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"wrote {out}" in proc.stdout
    from skimage.io import imread

    image = imread(out)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 200
    rgb = image[..., :3].astype(float)
    assert rgb.std() > 5, "the figure is blank"
    # three panels side by side: the middle third (the rate map) is not empty
    width = rgb.shape[1]
    assert rgb[:, width // 3: 2 * width // 3].max() > 50
