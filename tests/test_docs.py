"""The documentation: the site builds with ``mkdocs build --strict`` (no warning), its pages carry the API and
the benchmark results, its Python examples run, and the numbers it quotes match the code."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from html import escape as html_escape
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"

_MKDOCS_MODULES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_mkdocs() -> str | None:
    for name in _MKDOCS_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # parent package missing (mkdocstrings_handlers)
            found = False
        if not found:
            return f"{name} is not installed (pip install -e '.[docs]')"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built once with ``mkdocs build --strict`` into a temporary folder."""
    missing = _missing_mkdocs()
    if missing:
        pytest.skip(missing)
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")  # mkdocs-material's banner is not a build warning
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO_ROOT / "mkdocs.yml"),
         "--site-dir", str(out)],
        cwd=REPO_ROOT,  # snippet paths (benchmarks/RESULTS.md) are relative to the repository root
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    warnings = [line for line in log.splitlines() if line.lstrip().startswith(("WARNING", "ERROR"))]
    assert not warnings, "\n".join(warnings)
    return out


def _page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text(encoding="utf-8")


def test_site_builds_strict(site):
    for page in ("getting-started", "science", "scripting", "cli", "cluster", "benchmarks", "reliability", "api"):
        assert (site / page / "index.html").is_file(), page
    assert (site / "index.html").is_file()


def test_cli_page_shows_the_real_help(site):
    """docs/cli.md's reference is the --help of this checkout's parser (docs/_mkdocs_hooks.py), every option."""
    from napari_mollifier.cli import build_parser

    html = _page(site, "cli")
    assert "<!-- mollifier-help" not in html
    for command in ("infer", "rerun", "demo"):
        assert f"usage: mollifier {command}" in html, command
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for option in (s for a in sub["infer"]._actions for s in a.option_strings):
        assert option in html, option


def test_api_page_documents_the_public_api(site):
    html = _page(site, "api")
    for ident in (
        "napari_mollifier.infer_rates",
        "napari_mollifier.RateResult",
        "napari_mollifier.derivatives",
        "napari_mollifier.Mollifier",
        "napari_mollifier.calibrate.calibrate",
        "napari_mollifier.split_density",
        "napari_mollifier.simulate.synthetic_nucleus",
        "napari_mollifier.simulate.chromatin_steady_state",
        "napari_mollifier.models.Model",
        "napari_mollifier.models.chromatin_balance.ChromatinBalance",
        "napari_mollifier.models.chromatin_phase_field.ChromatinPhaseField",
    ):
        assert f'id="{ident}"' in html, ident
    # docstring parameters are rendered, not just the headings
    assert "quasi-optimality" in html and "n_bootstrap" in html
    # Sphinx roles in docstrings are turned into references by docs/_mkdocs_hooks.py
    assert ":func:<code>" not in html and ":class:<code>" not in html


def test_benchmarks_page_includes_results_file(site):
    html = _page(site, "benchmarks")
    results = (REPO_ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    machines = re.findall(r"^- (?:Date|Machine): (.+)$", results, flags=re.M)
    assert machines, "RESULTS.md has no Date/Machine lines"
    for line in machines:  # every run's date and machine line is on the page, as the file says it
        assert html_escape(line, quote=False) in html, line


def test_getting_started_images_are_on_the_site(site):
    text = (DOCS / "getting-started.md").read_text(encoding="utf-8")
    for image in re.findall(r"\]\((images/[^)]+)\)", text):
        assert (site / image).is_file(), image


def test_scripting_examples_run(tmp_path, monkeypatch):
    """The ```python blocks of docs/scripting.md run, in order, in one namespace (```py blocks are shown only)."""
    text = (DOCS / "scripting.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "docs_scripting"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/scripting.md, python block {i + 1}", "exec"), namespace)
    assert namespace["r"] > 0.9  # the first example's Pearson r against the known truth


def test_science_page_quotes_the_code_defaults():
    """The coefficient tables of docs/science.md show the defaults the models really use."""
    from napari_mollifier.models import MODELS
    from napari_mollifier.simulate import BOX_UNIT_UM

    text = (DOCS / "science.md").read_text(encoding="utf-8")
    for name in ("chromatin-balance", "chromatin-phase-field"):
        section = text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        rows = dict(re.findall(r"^\| `(\w+)`[^|]*\| ([-0-9.]+) \|", section, flags=re.M))
        defaults = {k: c.default for k, c in MODELS[name].coefficients.items()}
        assert {k: float(v) for k, v in rows.items()} == defaults, name
    assert f"one box unit = {BOX_UNIT_UM:g} µm" in text


def test_citation_version_matches_package():
    from napari_mollifier import __version__

    text = (REPO_ROOT / "CITATION.cff").read_text(encoding="utf-8")
    assert re.search(rf'^version: "{re.escape(__version__)}"$', text, flags=re.M), "CITATION.cff version"
    assert "2505.11682" in text


def test_citation_cff_is_valid():
    """CITATION.cff validates against the Citation File Format 1.2.0 JSON schema (what ``cffconvert --validate``
    checks). The schema is a copy of https://citation-file-format.github.io/1.2.0/schema.json (CC BY 4.0,
    tests/data/README.md); cffconvert itself pins jsonschema < 4, which napari cannot share an environment with."""
    jsonschema = pytest.importorskip("jsonschema")
    yaml = pytest.importorskip("yaml")
    import json

    schema = json.loads((REPO_ROOT / "tests" / "data" / "cff-schema-1.2.0.json").read_text(encoding="utf-8"))
    citation = yaml.safe_load((REPO_ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(citation)]
    assert not errors, errors
    # the validator does reject a broken file (an author without a name field)
    assert list(validator.iter_errors({**citation, "authors": [{"nme": "x"}]}))
    assert citation["license"] == "BSD-3-Clause"
    assert citation["preferred-citation"]["url"] == "https://arxiv.org/abs/2505.11682"


def test_contributing_model_example_works(monkeypatch):
    """The one-file model of CONTRIBUTING.md runs as printed and recovers its analytic rate: for
    ``u = exp(0.8 x + 0.6 y)``, ``lap(u) = u``, so ``D lap(u) = lambda u`` gives ``lambda = D`` everywhere."""
    import numpy as np

    import napari_mollifier as nm

    text = (REPO_ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    section = text.split("## Add a PDE model in one file", 1)[1]
    code = re.search(r"^```python\n(.*?)^```", section, flags=re.S | re.M).group(1)
    # run it as the module src/napari_mollifier/models/screened_poisson.py would be (its relative import too)
    import types

    module = types.ModuleType("napari_mollifier.models.screened_poisson")
    module.__package__ = "napari_mollifier.models"
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, "CONTRIBUTING.md model example", "exec"), module.__dict__)
    model = module.ScreenedPoisson()

    h = 0.05
    y, x = np.mgrid[0:64, 0:64] * h
    u = np.exp(0.8 * x + 0.6 * y)
    res = nm.infer_rates({"u": u}, model=model, pixel_size=h, radius=6, n_bootstrap=0)
    rate = res.rate[np.isfinite(res.rate)]
    assert rate.size > 0.9 * u.size
    np.testing.assert_allclose(rate, 1.0, rtol=1e-2)  # exp is not a low-degree polynomial: ~0.2 % off
    res = nm.infer_rates({"u": u}, model=model, params={"D": 2.5}, pixel_size=h, radius=6, n_bootstrap=0)
    np.testing.assert_allclose(res.rate[np.isfinite(res.rate)], 2.5, rtol=1e-2)
    # registering it is one line in models/__init__.py: the MODELS dict is built from a tuple of instances
    init = (REPO_ROOT / "src" / "napari_mollifier" / "models" / "__init__.py").read_text(encoding="utf-8")
    assert re.search(r"^MODELS: dict\[str, Model\] = \{m\.name: m for m in \(", init, flags=re.M)
