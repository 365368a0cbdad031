"""The package's import graph, read with ``ast``: no circle, no upward import, a core free of the CLI.

Every module of ``detailclip_cli`` is parsed (nothing is imported), and every ``import x`` and
``from x import y`` in it, at module level or inside a function, relative ones resolved, becomes
an edge of the module graph. The layers are those of ``docs/design.md``:

    errors, version, allocator < config, choices, presets, recipes, device, distributed < data < model < method
    < store < training | use (peers) < core (the public surface) < plots, tools < cli

An import inside a function counts like any other: hiding an import in a function does not
take it out of the graph, so it cannot hide a circle either. Imports under ``if TYPE_CHECKING:``
count too (a type from a higher layer is still a dependency on it).

``python tests/test_layers.py`` prints the graph's function-level imports of the package's own
modules with what each saves at start-up, for reviewing lazy imports by hand.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

import detailclip_cli  # cheap on purpose: no torch

PACKAGE_DIR = Path(detailclip_cli.__file__).resolve().parent
ROOT = "detailclip_cli"

# Module (or package: covers everything under it) -> (rank, name). Higher ranks may import lower ones.
LAYERS: dict[str, tuple[int, str]] = {
    f"{ROOT}": (0, "version"),  # only the package's own __init__ (``__version__``); see layer_of
    f"{ROOT}.errors": (0, "errors"),
    f"{ROOT}.allocator": (0, "allocator"),
    f"{ROOT}.version": (0, "version"),
    f"{ROOT}._version": (0, "version"),
    f"{ROOT}.core.config": (1, "config"),
    f"{ROOT}.core.choices": (1, "choices"),
    f"{ROOT}.core.presets": (1, "presets"),
    f"{ROOT}.core.recipes": (1, "recipes"),
    f"{ROOT}.core.device": (1, "device"),
    f"{ROOT}.core.distributed": (1, "distributed"),
    f"{ROOT}.core.files": (1, "files"),
    f"{ROOT}.core.data": (2, "data"),
    f"{ROOT}.core.model": (3, "model"),
    f"{ROOT}.core.method": (4, "method"),
    f"{ROOT}.core.store": (5, "store"),
    f"{ROOT}.core.training": (6, "training"),
    f"{ROOT}.core.use": (6, "use"),
    f"{ROOT}.core": (7, "core"),  # only core/__init__.py, the public surface; see layer_of
    f"{ROOT}.plots": (8, "plots"),
    f"{ROOT}.tools": (8, "tools"),
    f"{ROOT}.cli": (9, "cli"),
    f"{ROOT}.__main__": (9, "cli"),
}
# Same rank, and still neither may import the other.
PEERS = {frozenset({"training", "use"})}
# Libraries the core must never import (people-facing output belongs to the CLI and the plots).
NOT_IN_CORE = {"typer", "rich", "matplotlib"}
# Imports worth deferring to a function: each costs a noticeable part of a second at start-up.
HEAVY = {"torch", "torchvision", "open_clip", "timm", "matplotlib", "numpy", "PIL", "safetensors",
         "sklearn", "skimage"}


@dataclass(frozen=True)
class Edge:
    """One import statement's target, as seen from the module holding it."""

    source: str  # the importing module
    target: str  # a module of the package, or the top-level name of an outside one
    line: int
    internal: bool  # target is a module of this package
    in_function: bool  # inside a def (runs when called, not when the module is imported)
    type_checking: bool  # under ``if TYPE_CHECKING:`` (never runs)
    comment: bool  # a ``#`` comment on the import's line or above it, in its block of imports

    def where(self) -> str:
        return f"{self.source}:{self.line}{' (in a function)' if self.in_function else ''}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def lazy_tables(modules: dict[str, Path]) -> dict[str, dict[str, str]]:
    """Packages that load their names on first use: package -> {name: the module defining it}.

    Such a package's ``__init__`` holds a literal ``_MODULES = {"name": "module", ...}`` read by
    its ``__getattr__``, so ``from pkg import name`` loads that module, not just the package.
    """
    tables = {}
    for name, path in modules.items():
        if not is_package(name, modules):
            continue
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target = node.target if isinstance(node, ast.AnnAssign) else (
                node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
            if isinstance(target, ast.Name) and target.id == "_MODULES" and isinstance(node.value, ast.Dict):
                tables[name] = {k.value: v.value for k, v in zip(node.value.keys, node.value.values)
                                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)}
    return tables


class _Imports(ast.NodeVisitor):
    """Collects the edges of one module, knowing whether each import sits in a function."""

    def __init__(self, name: str, modules: dict[str, Path], lines: list[str],
                 lazy: dict[str, dict[str, str]] | None = None):
        self.name, self.modules, self.lines = name, modules, lines
        self.lazy = lazy or {}
        self.edges: list[Edge] = []
        self.functions = 0
        self.type_checking = 0

    def _add(self, node: ast.stmt, dotted: str) -> None:
        # A module of the package keeps its full name (one that does not exist too, so that
        # test_every_import_names_a_module can name it); an outside one its top-level name.
        internal = dotted.split(".")[0] == ROOT
        line = node.lineno
        # A comment on the line, or above it in the block of imports it belongs to.
        comment, above = "#" in self.lines[line - 1], line - 2
        while not comment and above >= 0 and self.lines[above].strip().startswith(("#", "import ", "from ")):
            comment, above = self.lines[above].strip().startswith("#"), above - 1
        edge = Edge(self.name, dotted if internal else dotted.split(".")[0], line, internal,
                    self.functions > 0, self.type_checking > 0, comment)
        if edge not in self.edges:  # ``from m import a, b`` is one edge to m
            self.edges.append(edge)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.functions += 1
        self.generic_visit(node)
        self.functions -= 1

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        self.type_checking += guarded
        for child in node.body:
            self.visit(child)
        self.type_checking -= guarded
        self.visit(node.test)
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative: from the importing module's package, up level - 1 packages
            package = self.name if is_package(self.name, self.modules) else self.name.rpartition(".")[0]
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module;
            # a name of a lazy package's table, the module that table names.
            if submodule in self.modules:
                self._add(node, submodule)
            else:
                self._add(node, self.lazy.get(base, {}).get(alias.name, base))


def read_graph() -> tuple[dict[str, Path], list[Edge]]:
    """Parse every module of the package: (modules, import edges)."""
    modules = package_modules()
    lazy = lazy_tables(modules)
    edges = []
    for name, path in modules.items():
        text = path.read_text(encoding="utf-8")
        visitor = _Imports(name, modules, text.splitlines(), lazy)
        visitor.visit(ast.parse(text, filename=str(path)))
        edges += visitor.edges
    return modules, edges


def layer_of(module: str) -> tuple[int, str] | None:
    """The layer of a package module: its own entry or that of the closest package holding it."""
    if module in LAYERS:
        return LAYERS[module]
    parts = module.split(".")
    for end in range(len(parts) - 1, 1, -1):  # never the bare package or bare core: those are exact
        prefix = ".".join(parts[:end])
        if prefix in LAYERS and prefix not in (ROOT, f"{ROOT}.core"):
            return LAYERS[prefix]
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest circle through each strongly connected group of modules (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:  # recursion depth is bounded by the package's ~70 modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1 or v in graph.get(v, ()):
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for group in groups:
        members, start = set(group), group[0]
        # Breadth-first from start back to start inside the group: the shortest circle through it.
        parent: dict[str, str] = {}
        queue = deque([start])
        while queue:
            v = queue.popleft()
            if start in graph.get(v, ()) and (v != start or not parent):
                path = [start]
                while v != start:
                    path.append(v)
                    v = parent[v]
                cycles.append([start, *reversed(path[1:]), start])
                break
            for w in sorted(graph.get(v, ())):
                if w in members and w not in parent and w != start:
                    parent[w] = v
                    queue.append(w)
    return cycles


def internal_graph(edges: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for e in edges:
        # A package's __init__ taking a name from itself is no circle between modules.
        if e.internal and e.target != e.source:
            graph.setdefault(e.source, set()).add(e.target)
    return graph


def parents(module: str) -> list[str]:
    """The packages Python runs before ``module`` (``a``, ``a.b`` for ``a.b.c``)."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def loaded_at_import(module: str, modules: dict[str, Path], edges: list[Edge]) -> set[str]:
    """Outside libraries (top-level names) that importing ``module`` loads, through the package too."""
    at_import: dict[str, list[Edge]] = {}
    for e in edges:
        if not e.in_function and not e.type_checking:
            at_import.setdefault(e.source, []).append(e)
    seen, todo, outside = set(), [module, *parents(module)], set()
    while todo:
        m = todo.pop()
        if m in seen or m not in modules:
            continue
        seen.add(m)
        for e in at_import.get(m, ()):
            if e.internal:
                todo += [e.target, *parents(e.target)]
            else:
                outside.add(e.target)
    return outside


@dataclass(frozen=True)
class LazyImport:
    edge: Edge
    saves: frozenset[str]  # heavy libraries the deferred import keeps out of the importer's start-up

    def line(self) -> str:
        saves = ", ".join(sorted(self.saves)) or "nothing"
        note = "commented" if self.edge.comment else "no comment"
        return f"{self.edge.where()} -> {self.edge.target}: saves {saves}; {note}"


def lazy_internal_imports() -> list[LazyImport]:
    """Function-level imports of the package's own modules in the same or a lower layer.

    Each with the heavy libraries it keeps out of its module's import: an import that saves
    nothing is there for no start-up reason (a leftover, or a dodged circle).
    """
    modules, edges = read_graph()
    found = []
    for e in edges:
        if not (e.internal and e.in_function):
            continue
        source, target = layer_of(e.source), layer_of(e.target)
        if source is None or target is None or target[0] > source[0]:
            continue  # unplaced or upward: the layering test reports those
        own = loaded_at_import(e.source, modules, edges)
        theirs = loaded_at_import(e.target, modules, edges)
        found.append(LazyImport(e, frozenset((theirs - own) & HEAVY)))
    return found


# ---------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def graph():
    return read_graph()


def test_the_graph_sees_every_kind_of_import(graph):
    """The reader itself: relative, function-level and ``from pkg import submodule`` imports resolve."""
    modules, edges = graph
    assert len(modules) > 30 and f"{ROOT}.cli" in modules and f"{ROOT}.core.model.vit" in modules
    internal = [e for e in edges if e.internal]
    assert any(e.in_function for e in internal)  # the CLI defers its core imports for --help
    assert {e.target for e in edges if not e.internal} >= {"torch", "typer"}

    # And on a hand-made module: every form, with the edges it must give.
    src = (
        "import os\n"
        "import detailclip_cli.core.model.vit\n"
        "from . import errors\n"
        "from .core.model import vit, removal\n"
        "from .core.config import ModelConfig  # a name, not a module\n"
        "def f():\n"
        "    # deferred\n"
        "    from .core.data import readers\n"
    )
    made_up = {name: Path(file) for name, file in [
        (ROOT, "__init__.py"), (f"{ROOT}.errors", "errors.py"), (f"{ROOT}.plots", "plots.py"),
        (f"{ROOT}.core", "__init__.py"), (f"{ROOT}.core.config", "config.py"),
        (f"{ROOT}.core.model", "__init__.py"), (f"{ROOT}.core.model.vit", "vit.py"),
        (f"{ROOT}.core.model.removal", "removal.py"), (f"{ROOT}.core.data", "__init__.py"),
        (f"{ROOT}.core.data.readers", "readers.py"),
    ]}
    visitor = _Imports(f"{ROOT}.plots", made_up, src.splitlines())
    visitor.visit(ast.parse(src))
    got = [(e.target, e.internal, e.in_function, e.comment) for e in visitor.edges]
    core = f"{ROOT}.core"
    assert got == [
        ("os", False, False, False),
        (f"{core}.model.vit", True, False, False),
        (f"{ROOT}.errors", True, False, False),
        (f"{core}.model.vit", True, False, False),
        (f"{core}.model.removal", True, False, False),
        (f"{core}.config", True, False, True),
        (f"{core}.data.readers", True, True, True),
    ]


def test_every_module_has_a_layer(graph):
    """A new module is placed in docs/design.md's table (and in LAYERS here) before it is used."""
    modules, _ = graph
    unplaced = [m for m in modules if layer_of(m) is None]
    assert not unplaced, f"modules in no layer of docs/design.md: {unplaced}"


def test_every_import_names_a_module(graph):
    """``import m`` and ``from m import name`` name a module of the package (or it would fail)."""
    modules, edges = graph
    missing = [f"{e.where()} imports {e.target}" for e in edges if e.internal and e.target not in modules]
    assert not missing, "imports of modules that do not exist:\n  " + "\n  ".join(missing)


def test_no_import_circle(graph):
    modules, edges = graph
    cycles = find_cycles(internal_graph(edges))
    lines = {(e.source, e.target): e for e in edges if e.internal}
    shown = [" -> ".join(f"{lines[a, b].where()}" for a, b in zip(c, c[1:])) + f" -> {c[-1]}" for c in cycles]
    assert not cycles, "import circles:\n  " + "\n  ".join(shown)


def test_no_import_from_a_lower_layer_to_a_higher_one(graph):
    modules, edges = graph
    upward = []
    for e in edges:
        if not e.internal or e.source == e.target:
            continue
        source, target = layer_of(e.source), layer_of(e.target)
        if source is None or target is None:
            continue  # test_every_module_has_a_layer names it
        peers = frozenset({source[1], target[1]}) in PEERS
        if target[0] > source[0] or peers:
            upward.append(f"{e.where()} [{source[0]} {source[1]}] imports {e.target} [{target[0]} {target[1]}]")
    assert not upward, "imports against the layers of docs/design.md:\n  " + "\n  ".join(upward)


def test_the_core_never_imports_typer_rich_or_matplotlib(graph):
    """Not directly, and not through any module of the package it imports (at any depth)."""
    modules, edges = graph
    by_source: dict[str, list[Edge]] = {}
    for e in edges:
        by_source.setdefault(e.source, []).append(e)
    offenders = []
    for start in (m for m in modules if m == f"{ROOT}.core" or m.startswith(f"{ROOT}.core.")):
        came_from: dict[str, Edge | None] = {start: None}
        queue = deque([start])
        while queue:
            m = queue.popleft()
            for e in by_source.get(m, ()):
                if e.internal and e.target not in came_from:
                    came_from[e.target] = e
                    queue.append(e.target)
                elif not e.internal and e.target in NOT_IN_CORE:
                    chain, step = [e], came_from[m]
                    while step is not None:
                        chain.append(step)
                        step = came_from[step.source]
                    offenders.append(" -> ".join(s.where() for s in reversed(chain)) + f" -> {e.target}")
                    break
    assert not offenders, "the core reaches the CLI's or the plots' libraries:\n  " + "\n  ".join(offenders)


@pytest.mark.slow
def test_importing_every_core_module_loads_no_typer_rich_or_matplotlib():
    """At run time too: no outside library the core uses drags them in."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import detailclip_cli.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'detailclip_cli.core.'):\n"
        "    importlib.import_module(m.name)\n"
        f"bad = sorted(m for m in {sorted(NOT_IN_CORE)!r} if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_graph_finds_a_circle_and_an_upward_import():
    """The checks can fail: a made-up graph with a circle, and an edge against the layers."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert layer_of(f"{ROOT}.core.data.readers") == (2, "data")
    assert layer_of(f"{ROOT}.core") == (7, "core")
    assert layer_of(f"{ROOT}.core.training.loop")[0] == layer_of(f"{ROOT}.core.use.zeroshot")[0]
    assert frozenset({"training", "use"}) in PEERS
    assert layer_of(f"{ROOT}.core.unknown") is None and layer_of(f"{ROOT}.unknown") is None


# Libraries whose import alone takes most of a second; the rest of HEAVY costs less.
HEAVIEST = {"torch", "open_clip", "timm", "matplotlib"}

if __name__ == "__main__":
    lazy = lazy_internal_imports()
    groups = {
        "save nothing at start-up (a leftover, or a dodged circle that may no longer exist)":
            [i for i in lazy if not i.saves],
        "save only lighter libraries (numpy, PIL, torchvision, safetensors, ...)":
            [i for i in lazy if i.saves and not i.saves & HEAVIEST],
        "save torch, open_clip, timm or matplotlib (start-up time; each wants a comment saying so)":
            [i for i in lazy if i.saves & HEAVIEST],
    }
    print(f"{len(lazy)} function-level imports of the package's own modules (same or lower layer):")
    for title, items in groups.items():
        print(f"\n{len(items)} {title}:")
        for item in sorted(items, key=lambda item: (item.edge.source, item.edge.line)):
            print("  " + item.line())
