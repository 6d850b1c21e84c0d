"""Shared pytest fixtures for napari-mollifier."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: ``shared/`` lies beside the repository clone (``../shared``), in CI too.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data_path() -> Path | None:
    """The ``../shared/data`` folder beside the repository, or None if absent."""
    return SHARED_DATA if SHARED_DATA.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    """Path of ``../shared/data``; skips the test where it is absent."""
    path = shared_data_path()
    if path is None:
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return path


# --------------------------------------------------------------- widget tests (helpers: widget_support.py)
PLUGIN = "napari-mollifier"


@pytest.fixture
def _plugin_registered():
    """The plugin is discovered from its installed entry point; register the manifest when running from src/."""
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    if PLUGIN not in pm:
        pm.register(PluginManifest.from_file(REPO_ROOT / "napari.yaml"))
    return pm


@pytest.fixture
def sample_viewer(make_napari_viewer, _plugin_registered):
    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "nucleus")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Rate maps")
    return viewer, widget
