"""The rooms import one way only (docs/design.md §2): read from the code's own imports.

A module may import from its own room and from rooms below it, never from a
room above or beside it. The agent never imports the broker; ``protocol``
and ``certs`` import neither.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "allowhelp"

# The broker's rooms, bottom first; rooms of one floor may not import each other.
BROKER_FLOORS: list[set[str]] = [
    {"errors"},
    {"model"},
    {"pglink"},
    {"audit", "store"},
    {"settings"},
    {"listen"},
    {"relay", "tunnel"},
    {"sessions", "auth", "jobs"},
    {"console"},
    {"node"},
    {"cli"},
]
FLOOR = {room: n for n, rooms in enumerate(BROKER_FLOORS) for room in rooms}
# What each top-level package may take from the rest of allowhelp.
ALLOWED = {
    "protocol": {"protocol"},
    "certs": {"certs"},
    "agent": {"agent", "certs", "protocol", "runtime", "wsbridge", ""},
    "runtime": set(),
    "wsbridge": set(),
    "broker": {"broker", "certs", "protocol", "runtime", "wsbridge", ""},
}


def imported_modules(path: Path) -> list[str]:
    """Every allowhelp module ``path`` imports, as dotted names (relative ones resolved)."""
    tree = ast.parse(path.read_text())
    here = path.relative_to(PACKAGE.parent).with_suffix("").parts
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*here[: len(here) - node.level], base]).strip(".")
            found += [base] + [
                f"{base}.{a.name}" for a in node.names if is_module(f"{base}.{a.name}")
            ]
    return [name for name in found if name == "allowhelp" or name.startswith("allowhelp.")]


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def room_of(parts: tuple[str, ...]) -> str:
    """The broker room of ``allowhelp.broker.X...`` (a module file's stem for leaves)."""
    return parts[2] if len(parts) > 2 else ""


def test_the_scan_finds_every_broker_room() -> None:
    broker = [p.relative_to(PACKAGE.parent).with_suffix("").parts for p in modules()]
    broker_rooms = {room_of(parts) for parts in broker if parts[1] == "broker"} - {"", "__init__"}
    assert set(FLOOR) <= broker_rooms | {"errors", "settings", "listen", "pglink"}
    assert broker_rooms <= set(FLOOR), "a new room: give it a floor above"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_run_downward(path: Path) -> None:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    top = parts[1] if len(parts) > 1 else ""
    for name in imported_modules(path):
        target = name.split(".")
        target_top = target[1] if len(target) > 1 else ""
        assert target_top in ALLOWED.get(top.removesuffix("__init__"), {target_top}), (
            f"{path.name}: {top} may not import {name}"
        )
        if top != "broker" or target_top != "broker" or len(target) < 3:
            continue
        mine, theirs = room_of(parts), target[2]
        if mine == theirs or mine == "__init__":
            continue
        assert FLOOR[theirs] < FLOOR[mine], f"{'.'.join(parts)} imports {name}: upward or beside"


def module_file(name: str) -> Path | None:
    path = PACKAGE.parent.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return path / "__init__.py" if (path / "__init__.py").is_file() else None


def import_circles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """The strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    circles: list[list[Path]] = []
    for root, first in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(first)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = stack[stack.index(node) :]
                del stack[stack.index(node) :]
                if len(group) > 1:
                    circles.append(group)
    return circles


def test_no_modules_import_each_other_round_a_circle() -> None:
    """Inside a room too, imports run one way (lazy ones included): a circle is two
    modules that cannot be understood, tested or moved apart."""
    graph = {
        path: {f for n in imported_modules(path) if (f := module_file(n)) and f != path}
        for path in modules()
    }
    circles = [sorted(str(p.relative_to(PACKAGE.parent)) for p in c) for c in import_circles(graph)]
    assert circles == []
    a, b, c = (PACKAGE / name for name in ("a.py", "b.py", "c.py"))
    assert [sorted(g) for g in import_circles({a: {b}, b: {c}, c: {a}})] == [sorted([a, b, c])]
