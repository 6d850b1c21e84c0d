"""ruff, with the rule set in pyproject.toml ([tool.ruff]), is clean on the whole repository (CI runs it here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert exe, "ruff is not installed: pip install -e '.[testing]' (it is in the testing extra)"
    out = subprocess.run([exe, "check", "--no-cache", "--output-format", "concise", str(REPO_ROOT)],
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
