"""Every example of the documentation runs as printed (issue 16).

The ```python / ```py blocks of each page in docs/ run in order in one namespace per page; the ```bash blocks run
with bash (``set -e``), all in a temporary folder that holds the example inputs the pages use, made by the
package itself (:func:`napari_mollifier.examples.write_all`: ``cell.ome.tif`` raw intensities with
``cell_roi.ome.tif`` / ``cell_nucleus.ome.tif``, ``fractions.ome.tif`` true fractions, ``cell1.csv``
localisations). A block is skipped only when the line before it says why, as an HTML comment (invisible on the
site)::

    <!-- no-ci: needs a CUDA GPU -->

A page whose example breaks fails here, with the page and block number in the traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"
_FENCE = re.compile(r"^([ \t]*)```(\w+)[^\n]*\n(.*?)^\1```[ \t]*$", flags=re.S | re.M)  # also in tabs
_NO_CI = re.compile(r"<!--\s*no-ci:\s*(.+?)\s*-->\s*$")
RUN = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}


def blocks(text: str) -> list[dict]:
    """``[{"lang", "code", "skip" (reason or None), "line"}]`` of the fenced code blocks of a page."""
    out = []
    import textwrap

    for m in _FENCE.finditer(text):
        lang = RUN.get(m.group(2))
        if lang is None:
            continue
        before = text[: m.start()].rstrip("\n").splitlines()
        reason = None
        if before:
            hit = _NO_CI.search(before[-1])
            reason = hit.group(1) if hit else None
        out.append({"lang": lang, "code": textwrap.dedent(m.group(3)), "skip": reason,
                    "line": text[: m.start()].count("\n") + 1})
    return out


PAGES = sorted(p.name for p in DOCS.glob("*.md"))
#: Pages whose examples take long (whole CLI runs; scripting.md also runs in test_docs.py): run by CI, not by
#: the development run (-m "not slow").
SLOW_PAGES = ("cli.md", "your-own-image.md", "scripting.md")


def test_block_parser():
    text = ("a\n\n<!-- no-ci: needs a GPU -->\n```python\nx = 1\n```\n\n```bash\necho hi\n```\n```text\nno\n```\n"
            "=== \"tab\"\n\n    <!-- no-ci: installs packages -->\n    ```bash\n    pip install x\n    ```\n"
            "    ```py\n    y = 2\n    ```\n")
    found = blocks(text)
    assert [(b["lang"], b["skip"]) for b in found] == [("python", "needs a GPU"), ("bash", None),
                                                         ("bash", "installs packages"), ("python", None)]
    assert found[0]["code"] == "x = 1\n" and found[3]["code"] == "y = 2\n"


def test_every_page_has_only_runnable_or_marked_blocks():
    """A skipped block must say why; at least most examples run."""
    total = skipped = 0
    for name in PAGES:
        for b in blocks((DOCS / name).read_text(encoding="utf-8")):
            total += 1
            skipped += b["skip"] is not None
            assert b["skip"] is None or len(b["skip"]) > 5, (name, b["line"])
    assert total > 20 and skipped < total / 2, (total, skipped)


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory):
    from napari_mollifier.examples import write_all

    folder = tmp_path_factory.mktemp("docs-examples")
    write_all(folder)
    return folder


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PAGES else p for p in PAGES])
def test_docs_page_examples_run(page, example_dir, tmp_path, monkeypatch):
    import shutil

    runnable = [b for b in blocks((DOCS / page).read_text(encoding="utf-8")) if b["skip"] is None]
    if not runnable:
        pytest.skip(f"{page} has no runnable example")
    work = tmp_path / "work"
    shutil.copytree(example_dir, work)
    monkeypatch.chdir(work)
    env = dict(os.environ, MPLBACKEND="Agg")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    namespace: dict = {"__name__": f"docs_{page[:-3].replace('-', '_')}"}
    for i, b in enumerate(runnable):
        where = f"docs/{page}, line {b['line']} ({b['lang']} block {i + 1})"
        if b["lang"] == "python":
            exec(compile(b["code"], where, "exec"), namespace)
        else:
            proc = subprocess.run(["bash", "-e", "-c", b["code"]], cwd=work, env=env, capture_output=True,
                                  text=True, timeout=600, stdin=subprocess.DEVNULL)
            assert proc.returncode == 0, f"{where} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
