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
