"""The built wheel carries the npe2 manifest (the top-level napari.yaml)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TOP_MANIFEST = REPO_ROOT / "napari.yaml"
PKG_MANIFEST = REPO_ROOT / "src" / "napari_mollifier" / "napari.yaml"


def test_package_manifest_is_the_top_level_file():
    """src/napari_mollifier/napari.yaml is the (symlinked) top-level manifest."""
    assert TOP_MANIFEST.is_file()
    assert PKG_MANIFEST.exists(), f"{PKG_MANIFEST} missing (should link to ../../napari.yaml)"
    assert PKG_MANIFEST.read_bytes() == TOP_MANIFEST.read_bytes()


@pytest.mark.slow  # in CI's full run; out of the development run (under 5 min, CONTRIBUTING)
@pytest.mark.skipif(
    importlib.util.find_spec("pip") is None, reason="pip (wheel build tool) is not installed"
)
def test_wheel_contains_manifest(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout + proc.stderr
    if proc.returncode != 0 and "No matching distribution found for hatchling" in out:
        pytest.skip("build backend hatchling cannot be installed (no package index)")
    assert proc.returncode == 0, out

    wheels = list(tmp_path.glob("napari_mollifier-*.whl"))
    assert len(wheels) == 1, out
    with zipfile.ZipFile(wheels[0]) as zf:
        names = zf.namelist()
        assert "napari_mollifier/napari.yaml" in names
        assert names.count("napari_mollifier/napari.yaml") == 1
        assert zf.read("napari_mollifier/napari.yaml") == TOP_MANIFEST.read_bytes()
        assert "napari_mollifier/_napari/sample_data.py" in names
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        ep_text = zf.read(entry_points).decode()
    assert "[napari.manifest]" in ep_text
    assert "napari-mollifier = napari_mollifier:napari.yaml" in ep_text
