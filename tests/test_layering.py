"""The layering rule of docs/architecture.md, checked on the source with ast: every ``import`` of a slimkit
module (at module level and inside functions; ``if TYPE_CHECKING:`` imports are left out of the cycle check
only) goes to the importer's own layer or below, the module import graph has no cycle, and no module
imports a private (``_name``) name from another module (nor reads one as ``module._name``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "slimkit"

# Lowest first. A module may import from its own layer or any layer below; never from above.
LAYERS: list[tuple[str, ...]] = [
    ("slimkit.errors",),
    ("slimkit._io", "slimkit.progress"),
    ("slimkit.config", "slimkit.context", "slimkit.registry", "slimkit.codecs"),
    ("slimkit.data", "slimkit.models", "slimkit.graph", "slimkit.analysis", "slimkit.evaluation"),
    ("slimkit.passes",),
    ("slimkit.exporters",),
    ("slimkit.pipeline", "slimkit.recipes"),
    ("slimkit.api", "slimkit.search", "slimkit.auto"),
    ("slimkit.cli",),
    ("slimkit",),
]

# Imports against the rule, each with why. Empty since issue 16 part A moved the export code out of passes/quantize
# and apply_pass into registry.py. An entry must still exist (test_known_exceptions_still_exist), so this list can
# only shrink.
KNOWN: dict[tuple[str, str], str] = {}


def layer_of(module: str, layers: list[tuple[str, ...]] = LAYERS) -> int:
    """Index of the layer of ``module``: the longest listed prefix wins (``slimkit.config.search`` is config)."""
    best, where = -1, None
    for i, names in enumerate(layers):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, where = len(name), i
    if where is None:
        raise AssertionError(f"{module} is in no layer: add its package to LAYERS and to docs/architecture.md")
    return where


def module_name(path: Path, root: Path = ROOT) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def _absolute(module: str, is_pkg: bool, node: ast.ImportFrom) -> str | None:
    if not node.level:
        return node.module
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (never executed)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def collect(package: Path = PACKAGE, root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]], list[str]]:
    """``(edges, runtime_edges, private)``: module -> imported slimkit modules (all imports; without
    TYPE_CHECKING ones), and ``private`` problems ("a.py:12 imports _x from b")."""
    files = {module_name(p, root): p for p in sorted(package.rglob("*.py"))}
    modules = {name for name, _ in files}
    edges: dict[str, set[str]] = {}
    runtime: dict[str, set[str]] = {}
    private: list[str] = []
    for (mod, is_pkg), path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        typing_only = _type_checking_nodes(tree)
        aliases: dict[str, str] = {}  # local name -> slimkit module it is bound to
        for node in ast.walk(tree):
            found: list[str] = []
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.split(".")[0] == "slimkit":
                        found.append(a.name)
                        if a.asname:
                            aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(mod, is_pkg, node)
                if not target or target.split(".")[0] != "slimkit":
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in modules:  # ``from slimkit.search import space``: the submodule
                        found.append(sub)
                        aliases[a.asname or a.name] = sub
                        continue
                    found.append(target)
                    if a.name.startswith("_") and not a.name.startswith("__") and target != mod:
                        private.append(f"{path.relative_to(root)}:{node.lineno} imports {a.name} from {target}")
            for target in found:
                target = target if target in modules else _nearest(target, modules)
                if target is None or target == mod:
                    continue
                edges.setdefault(mod, set()).add(target)
                if id(node) not in typing_only:
                    runtime.setdefault(mod, set()).add(target)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != mod):
                private.append(f"{path.relative_to(root)}:{node.lineno} reads {node.value.id}.{node.attr} "
                               f"({aliases[node.value.id]})")
    return edges, runtime, private


def _nearest(name: str, modules: set[str]) -> str | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules:
            return ".".join(parts[:i])
    return None


def layer_violations(edges: dict[str, set[str]], layers: list[tuple[str, ...]] = LAYERS) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in edges.items() for b in targets if layer_of(b, layers) > layer_of(a, layers))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    nodes = sorted(set(edges) | {b for t in edges.values() for b in t})
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, set[str]], dict[str, set[str]], list[str]]:
    return collect()


def test_imports_follow_the_layers(graph) -> None:
    edges, _, _ = graph
    bad = [f"{a} -> {b}" for a, b in layer_violations(edges) if (a, b) not in KNOWN]
    assert not bad, "imports against the layering rule (docs/architecture.md):\n" + "\n".join(bad)


def test_known_exceptions_still_exist(graph) -> None:
    edges, _, _ = graph
    stale = [f"{a} -> {b}" for a, b in KNOWN if b not in edges.get(a, set())]
    assert not stale, "remove these from KNOWN, they are fixed:\n" + "\n".join(stale)


def test_no_import_cycles(graph) -> None:
    _, runtime, _ = graph
    known = {frozenset(k) for k in KNOWN}
    found = [c for c in cycles(runtime) if not (len(c) == 2 and frozenset(c) in known)]
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_private_names_across_modules(graph) -> None:
    _, _, private = graph
    assert not private, "private names used across modules:\n" + "\n".join(private)


# ------------------------------------------------------------------ the checks themselves catch what they should
def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "slimkit"


def test_checks_catch_an_upward_import_a_cycle_and_a_private_name(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {
        "slimkit/__init__.py": "",
        "slimkit/errors.py": "",
        "slimkit/passes/__init__.py": "",
        "slimkit/passes/a.py": "def f():\n    from slimkit.exporters.b import g\n    return g\n",  # function level
        "slimkit/exporters/__init__.py": "",
        "slimkit/exporters/b.py": "from slimkit.exporters import c\n\ndef g():\n    return c._hidden\n",
        "slimkit/exporters/c.py": "from slimkit.exporters.b import g as _g\nfrom slimkit.errors import _x\n",
    })
    edges, runtime, private = collect(pkg, tmp_path)
    assert ("slimkit.passes.a", "slimkit.exporters.b") in layer_violations(edges)
    assert ["slimkit.exporters.b", "slimkit.exporters.c"] in cycles(runtime)
    assert any("imports _x from slimkit.errors" in p for p in private)
    assert any("reads c._hidden" in p for p in private)
    assert not any("_g" in p for p in private)  # a private alias of a public name is fine


def test_type_checking_imports_are_not_cycles(tmp_path: Path) -> None:
    pkg = _write(tmp_path, {
        "slimkit/__init__.py": "",
        "slimkit/graph/__init__.py": "",
        "slimkit/graph/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from slimkit.graph.b import B\n",
        "slimkit/graph/b.py": "from slimkit.graph.a import TYPE_CHECKING\n",
    })
    edges, runtime, _ = collect(pkg, tmp_path)
    assert cycles(edges) and not cycles(runtime)
