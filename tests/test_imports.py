"""Every module imports, and zorun's modules import each other without cycles.

The graph counts every ``import`` statement in a module, also those inside
functions: a cycle hidden in a function still ties the modules together (and
breaks as soon as someone moves the import to the top).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Dict, FrozenSet, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "zorun"

def module_names() -> Dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its __init__)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The zorun modules `name` imports anywhere in its file (`from pkg import mod` counts as mod)."""

    def known(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(known(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in modules else known(base))
    return {m for m in found if m and m.startswith("zorun") and m != name}


def cycles(graph: Dict[str, Set[str]]) -> List[FrozenSet[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def import_graph() -> Dict[str, Set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


@pytest.mark.parametrize("name", [n for n in module_names() if not n.endswith("__main__")])
def test_every_module_imports(name):
    importlib.import_module(name)


def test_no_import_cycle():
    found = [sorted(c) for c in cycles(import_graph())]
    assert not found, f"modules that import each other (directly or through others): {found}"


def test_the_cycle_finder_finds_cycles_through_function_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [frozenset({"a", "b", "c"})]
    modules = module_names()
    # config.validate imports the registry inside the function: that edge counts
    assert "zorun.registry" in imports_of("zorun.config", modules["zorun.config"], modules)


def test_the_readme_reading_order_names_files_that_exist():
    """README's "How a step works" lists the files a reader opens; each one must exist."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## How a step works", 1)[1].split("\n## ", 1)[0]
    named = re.findall(r"`(zorun/[\w/]+\.py)`", section)
    assert len(named) >= 10, named
    missing = [p for p in named if not (PACKAGE.parent / p).is_file()]
    assert not missing, f"README names files that do not exist: {missing}"
