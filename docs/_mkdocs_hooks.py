"""MkDocs hooks (``hooks:`` in mkdocs.yml).

1. Sphinx roles in docstrings become cross-references. The package's docstrings use Sphinx roles
   (``:func:`napari_mollifier.density.split_density```), which mkdocstrings renders literally as
   ``:func:<code>...</code>``. Each one becomes an *optional* mkdocs-autorefs reference: a link where the target is
   documented on the site (API reference), plain code otherwise (no warning either way). A bare name
   (``:func:`derivatives```) is looked up as ``napari_mollifier.<name>``; a leading ``~`` shows the last component.
2. Double backticks left as text (reST literals in docstrings) become ``<code>`` (code blocks untouched).
3. ``<!-- mollifier-help: COMMAND -->`` in a page is replaced by the ``--help`` text of that ``mollifier``
   command (``main`` for the top level), generated from ``napari_mollifier.cli.build_parser()`` of this
   checkout's ``src/``, so the command line reference cannot drift from the code.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

_ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|obj|exc):<code>(~?)([\w.]+)</code>")
_HELP = re.compile(r"<!-- mollifier-help: ([\w-]+) -->")
_SRC = Path(__file__).resolve().parents[1] / "src"


def _reference(match: re.Match) -> str:
    tilde, name = match.groups()
    identifier = name if "." in name else f"napari_mollifier.{name}"
    shown = name.rsplit(".", 1)[-1] if tilde else name
    return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'


def _help_text(command: str) -> str:
    if str(_SRC) not in sys.path:
        sys.path.insert(0, str(_SRC))
    from napari_mollifier.cli import build_parser

    argv = ["--help"] if command == "main" else [command, "--help"]
    out = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"  # argparse wraps to the terminal width: fix it (fits the page)
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            build_parser().parse_args(argv)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    text = out.getvalue().strip()
    if not text:
        raise RuntimeError(f"mollifier {command} --help printed nothing")
    return f"```text\n{text}\n```"


def on_page_markdown(markdown: str, **kwargs) -> str:
    return _HELP.sub(lambda m: _help_text(m.group(1)), markdown)


# reST double-backtick literals that reach the HTML as text (in mkdocstrings' parameter tables, for example)
_DOUBLE_TICKS = re.compile(r"``([^`<>\n]+?)``")
_PRE = re.compile(r"(<pre[\s>].*?</pre>)", flags=re.S)


def _literals(html: str) -> str:
    parts = _PRE.split(html)  # leave code blocks alone
    return "".join(p if i % 2 else _DOUBLE_TICKS.sub(r"<code>\1</code>", p) for i, p in enumerate(parts))


def on_page_content(html: str, **kwargs) -> str:
    return _literals(_ROLE.sub(_reference, html))
