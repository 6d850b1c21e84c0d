"""The package's layers, read from the source with ``ast`` (nothing is imported).

* no import cycle between the package's modules at module level;
* ``io/`` (files in and out) imports only ``errors``, ``result`` and its own modules;
* the compute core (everything but ``_napari/``) imports no GUI toolkit (Qt, napari, magicgui) at module level,
  so the library and the CLI run without a display.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "napari_mollifier"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

GUI = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy")

#: What ``io/`` may import from the package, beyond itself.
IO_ALLOWED = {f"{PACKAGE}.errors", f"{PACKAGE}.result"}
#: Function-level exceptions of ``io/``: the memory check before a large read lives with the other input checks
#: (it needs the device memory query of the solver side); imported only when a file is read.
IO_ALLOWED_LAZY = {f"{PACKAGE}.validation"}



def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


class _Imports(ast.NodeVisitor):
    """``(imported module, at module level?)`` for every import statement of one module."""

    def __init__(self, module: str, is_package: bool, modules: set):
        self.module, self.is_package, self.modules = module, is_package, modules
        self.depth, self.type_checking = 0, 0
        self.found: list[tuple[str, bool]] = []

    def _add(self, name: str) -> None:
        if not self.type_checking:
            self.found.append((name, self.depth == 0))

    def visit_FunctionDef(self, node):  # noqa: N802 - ast.NodeVisitor's naming
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815
    visit_Lambda = visit_FunctionDef  # noqa: N815

    def visit_If(self, node):  # noqa: N802
        test = ast.unparse(node.test)
        guarded = test in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        self.type_checking += guarded
        for child in node.body:
            self.visit(child)
        self.type_checking -= guarded
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node):  # noqa: N802
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node):  # noqa: N802
        base = _resolve(self.module, self.is_package, node.level, node.module) if node.level else node.module
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.modules else base)


def import_graph(root: Path = SRC, package: str = PACKAGE) -> dict[str, list[tuple[str, bool]]]:
    """``{module: [(imported name, at module level?), ...]}`` for every module under ``root``."""
    files = {_module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        visitor = _Imports(name, path.name == "__init__.py", set(files))
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        graph[name] = visitor.found
    return graph


def internal(name: str, package: str = PACKAGE) -> bool:
    return name == package or name.startswith(package + ".")


def module_level_cycles(graph: dict, package: str = PACKAGE, ignore=frozenset()) -> list[list[str]]:
    """Cycles of the package-internal module-level import graph (one path per strongly connected component)."""
    edges = {
        m: sorted({t for t, top in imps if top and internal(t, package) and t in graph and (m, t) not in ignore})
        for m, imps in graph.items()
    }
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def strongconnect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges[v]:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return out


def io_violations(graph: dict, package: str = PACKAGE) -> list[str]:
    io = f"{package}.io"
    bad = []
    for module, imps in graph.items():
        if not (module == io or module.startswith(io + ".")):
            continue
        for target, top in imps:
            if not internal(target, package) or target == io or target.startswith(io + "."):
                continue
            allowed = {a.replace(PACKAGE, package, 1) for a in IO_ALLOWED}
            lazy = {a.replace(PACKAGE, package, 1) for a in IO_ALLOWED_LAZY}
            if target in allowed or (not top and target in lazy):
                continue
            bad.append(f"{module} imports {target} ({'module' if top else 'function'} level)")
    return bad


def gui_violations(graph: dict, package: str = PACKAGE) -> list[str]:
    gui_pkg = f"{package}._napari"
    bad = []
    for module, imps in graph.items():
        if module == gui_pkg or module.startswith(gui_pkg + "."):
            continue
        for target, top in imps:
            if top and (target.split(".")[0] in GUI or target == gui_pkg or target.startswith(gui_pkg + ".")):
                bad.append(f"{module} imports {target} at module level")
    return bad


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_sees_the_package(graph):
    assert f"{PACKAGE}.io.results" in graph and f"{PACKAGE}.app.jobs" in graph
    assert (f"{PACKAGE}.result", True) in graph[f"{PACKAGE}.io.results"]  # module level, resolved from ``..result``
    assert (f"{PACKAGE}.solve", False) in graph[f"{PACKAGE}.app.rerun"]  # function level


def test_no_module_level_import_cycles(graph):
    assert module_level_cycles(graph) == []


def test_only_the_napari_layer_imports_the_package_root(graph):
    """The package's ``__init__`` gathers the public API for users; the modules below it never import it (the
    napari layer on top may, for the public functions).
    """
    gui = f"{PACKAGE}._napari"
    users = sorted(
        m
        for m, imps in graph.items()
        if m != PACKAGE and not m.startswith(gui + ".") and any(t == PACKAGE for t, _ in imps)
    )
    assert users == []


def test_io_depends_only_on_errors_and_result(graph):
    assert io_violations(graph) == []


def test_compute_core_imports_no_gui_at_module_level(graph):
    assert gui_violations(graph) == []


def test_the_checks_catch_bad_imports(tmp_path):
    """Each rule fails on a package built to break it (so that the tests above can fail)."""
    root = tmp_path / "pkg"
    (root / "io").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "errors.py").write_text("")
    (root / "solve.py").write_text("from .io import tiff\nimport numpy\n")
    (root / "io" / "__init__.py").write_text("")
    (root / "io" / "tiff.py").write_text("from ..errors import E\n\n\ndef f():\n    from ..solve import g\n")
    (root / "gui.py").write_text("from qtpy import QtWidgets\n")
    g = import_graph(root, "pkg")
    assert io_violations(g, "pkg") == ["pkg.io.tiff imports pkg.solve (function level)"]
    assert gui_violations(g, "pkg") == ["pkg.gui imports qtpy at module level"]
    assert module_level_cycles(g, "pkg") == []
    (root / "io" / "tiff.py").write_text("from ..errors import E\nfrom .. import solve\n")
    g = import_graph(root, "pkg")
    assert module_level_cycles(g, "pkg") == [["pkg.io.tiff", "pkg.solve"]]
