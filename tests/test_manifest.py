"""The npe2 manifest validates for the installed plugin, and every
``python_name`` it declares imports and is callable."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2", reason="npe2 is not installed")
from npe2 import PluginManifest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
TOP_MANIFEST = REPO_ROOT / "napari.yaml"
DIST_NAME = "napari-mollifier"


def _python_names() -> list[str]:
    pm = PluginManifest.from_file(TOP_MANIFEST)
    return [cmd.python_name for cmd in pm.contributions.commands or [] if cmd.python_name]


def test_installed_manifest_validates():
    """What ``npe2 validate napari-mollifier`` does, through the Python API."""
    pm = PluginManifest.from_distribution(DIST_NAME)
    assert pm.name == DIST_NAME
    assert pm.display_name == "Mollifier rate maps"
    # The installed plugin serves the top-level manifest (same contributions).
    top = PluginManifest.from_file(TOP_MANIFEST)
    assert pm.contributions == top.contributions
    pm.validate_imports()


@pytest.mark.slow  # in CI's full run; out of the development run (under 5 min, CONTRIBUTING)
def test_npe2_validate_cli():
    proc = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", DIST_NAME, "--imports"],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout


def test_manifest_declares_sample():
    pm = PluginManifest.from_file(TOP_MANIFEST)
    keys = [s.key for s in pm.contributions.sample_data or []]
    assert "nucleus" in keys


@pytest.mark.parametrize("python_name", _python_names())
def test_python_name_is_callable(python_name: str):
    module_name, _, attr = python_name.partition(":")
    assert attr, f"python_name {python_name!r} lacks ':attribute'"
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    assert callable(obj), f"{python_name} is not callable"
