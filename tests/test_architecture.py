"""The import structure of vlreward.*: no cycle, and no import against the layer order that
docs/architecture.md documents (its table is read here, so the page and the check cannot drift)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    ROOT / "src" / "vlreward": "vlreward",
    ROOT / "service": "vlreward.service",
    ROOT / "training": "vlreward.training",
}


def modules() -> dict[str, Path]:
    """Every module of vlreward.* by its import name."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The vlreward modules ``name`` imports at run time (function-level too, TYPE_CHECKING blocks not)."""
    wanted: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            wanted.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            wanted.add(base)
            wanted.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    found = set()
    for module in wanted:
        while module and module not in known:
            module = module.rpartition(".")[0]
        if module and module != name:
            found.add(module)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def documented_layers() -> list[list[str]]:
    """The module patterns of each layer of docs/architecture.md's table, top to bottom."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (.+?) \| .+ \|$", text, re.M)
    assert [int(number) for number, _ in rows] == list(range(1, len(rows) + 1)), rows
    return [re.findall(r"`([\w.*]+)`", cells) for _, cells in rows]


def layer_of(module: str, layers: list[list[str]]) -> int:
    matches = [
        number
        for number, patterns in enumerate(layers)
        for pattern in patterns
        if module == pattern.rstrip("*") or (pattern.endswith("*") and fnmatchcase(module, pattern.rstrip("*") + ".*"))
    ]
    assert matches, f"{module} is in no layer of docs/architecture.md"
    return max(matches)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges[node]):
            if other not in index:
                strong(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            strong(node)
    return found


def test_no_import_cycle_in_vlreward():
    assert cycles(graph()) == []


def test_no_import_against_the_documented_layer_order():
    layers = documented_layers()
    offenders = [
        f"{module} (layer {layer_of(module, layers) + 1}) imports {imported} (layer {layer_of(imported, layers) + 1})"
        for module, imported_set in graph().items()
        for imported in sorted(imported_set)
        if layer_of(imported, layers) > layer_of(module, layers)
    ]
    assert offenders == []


def test_the_checks_do_find_a_cycle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    layers = documented_layers()
    assert layer_of("vlreward.service.model.hub", layers) < layer_of("vlreward.service.backends.transformers", layers)
    assert layer_of("vlreward.service.backends.base", layers) < layer_of("vlreward.service.batching", layers)


@pytest.mark.parametrize(
    ("modules", "absent"),
    [
        # the client and adapters install without torch (`pip install vlreward`)
        ("vlreward.service.backends.base, vlreward.client, vlreward.adapters.trl, vlreward.adapters.verl",
         {"torch", "transformers", "vllm"}),
        # Ray is the offline engine's (the ray extra): the HTTP service and its command line start without it
        ("vlreward.service.http.app, vlreward.service.lifecycle, vlreward.service.cli, vlreward.cli", {"ray"}),
    ],
)  # fmt: skip
def test_what_a_module_set_must_not_import(modules: str, absent: set[str]):
    code = f"import sys, {modules}; sys.exit(' '.join(set({sorted(absent)!r}) & set(sys.modules)) or None)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
