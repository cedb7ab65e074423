"""The dependency rules of ``src/cocoon``, read from the source's AST (nothing is imported).

Dependencies flow one way: ``cli → local → roles (worker, proxy, client) → shared layers (protocol, crypto,
attestation, engines, chain, telegram) → errors, config``. A role never imports another role; a shared layer never
imports a role, ``local`` or ``cli``; the client never imports an engine; inside the proxy, ``routing/`` and
``money/`` never import each other; no module reaches itself through its imports, lazy (function-level) imports
included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ROLES = ("worker", "proxy", "client")
SHARED = ("protocol", "crypto", "attestation", "engines", "chain", "telegram")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted((SRC / "cocoon").rglob("*.py"))}


def imports_of(name: str) -> Iterator[tuple[str, int]]:
    """``(imported cocoon module, line)`` for every import statement in module ``name``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import sub`` imports the submodule when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "cocoon":
                while target not in MODULES and "." in target:
                    target = target.rpartition(".")[0]
                yield target, node.lineno


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def role_of(name: str) -> str | None:
    return next((role for role in ROLES if within(name, f"cocoon.{role}")), None)


GRAPH = {name: sorted({target for target, _ in imports_of(name)} - {name}) for name in MODULES}


def violations(rule: str) -> list[str]:
    found = []
    for name in MODULES:
        for target, line in imports_of(name):
            where = f"{MODULES[name].relative_to(SRC)}:{line} imports {target}"
            mine, theirs = role_of(name), role_of(target)
            if rule == "roles" and mine and theirs and mine != theirs:
                found.append(where)
            above = theirs or within(target, "cocoon.local") or within(target, "cocoon.cli")
            if rule == "shared-layers" and any(within(name, f"cocoon.{s}") for s in SHARED) and above:
                found.append(where)
            if rule == "client-engines" and mine == "client" and within(target, "cocoon.engines"):
                found.append(where)
            if rule == "routing-money":
                for a, b in (("routing", "money"), ("money", "routing")):
                    if within(name, f"cocoon.proxy.{a}") and within(target, f"cocoon.proxy.{b}"):
                        found.append(where)
    return found


@pytest.mark.parametrize("rule", ["roles", "shared-layers", "client-engines", "routing-money"])
def test_layers_import_only_downwards(rule: str) -> None:
    assert violations(rule) == []


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), as a sorted list of names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, []):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others() -> None:
    assert cycles(GRAPH) == []


def test_the_checker_sees_a_circle_and_a_role_crossing() -> None:
    """The rules above would fail on a real violation: the checker is not blind."""
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert role_of("cocoon.proxy.routing.rank") == "proxy" and role_of("cocoon.protocol") is None
    assert any(target == "cocoon.errors" for target, _ in imports_of("cocoon.config"))
