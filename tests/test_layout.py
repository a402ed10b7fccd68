"""The house rules of the design card: dependencies point one way, configs parse, no stray globals."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["distill", "teachers", "students", "eval"]  # each may import only those before it


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ORDER)
def test_dependencies_point_one_way(package):
    allowed = set(ORDER[: ORDER.index(package) + 1])
    forbidden = set(ORDER) - allowed
    for path in (ROOT / package).rglob("*.py"):
        bad = imported_packages(path) & forbidden
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}; {package} may only import {sorted(allowed)}"


def test_every_subcommand_entry_point_resolves():
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group="wavedistill.commands")}
    assert {"env", "data", "demo", "make-demo-corpus"} <= set(found)
    for ep in found.values():
        assert callable(ep.load())
