"""The package's import structure: no import cycle among audioml's modules (imports inside
functions count), and no module below the command line imports a console-script module."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers.runners import REPO

PACKAGE = REPO / "audioml"
#: The modules behind console scripts and ``python -m``: they may import anything, nothing imports them.
ENTRY_POINTS = {"audioml.train", "audioml.evaluate", "audioml.predict", "audioml.export", "audioml.compare",
                "audioml.commands", "audioml.probe", "audioml.entry", "audioml.classical.cli", "audioml.data.cli",
                "audioml.reproduce.cli"}


def _name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each audioml module -> the audioml modules it imports anywhere in its file."""
    modules = {_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                # ``from a.b import c``: the module a.b.c when there is one, else a.b
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith("audioml") and target != name and not name.startswith(f"{target}."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_no_import_cycles_among_audiomls_modules():
    assert cycles(import_graph()) == []


def test_no_module_below_the_command_line_imports_an_entry_point():
    upward = sorted(f"{module} -> {target}" for module, targets in import_graph().items()
                    for target in targets & ENTRY_POINTS
                    if module not in ENTRY_POINTS and not module.endswith("__main__") and module != "audioml.api")
    assert upward == []


def test_the_checks_see_a_cycle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "audioml.run.rundir" in import_graph()["audioml.run.record.status"]
