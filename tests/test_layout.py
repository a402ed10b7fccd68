"""The house rules of the design card: dependencies point one way between the packages and between the
base's sub-packages, no module imports itself through others (no circle, function-local imports
included), the tests mirror the packages, and every subcommand's entry point resolves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["distill", "teachers", "students", "eval"]  # each may import only those before it
# Inside `distill`: what each sub-package may import besides itself and the base modules (config, errors).
# The training machinery knows no model (`train` never imports `nn`); audio is the bottom.
SUBPACKAGES = {
    "audio": set(),
    "nn": {"audio"},
    "data": {"audio"},
    "train": {"audio", "data"},
    "cli": {"audio", "nn", "data", "train"},
}
BASE_MODULES = {"distill", "distill.config", "distill.errors"}


def runtime_imports(path: Path) -> set[str]:
    """Absolute module names `path` imports when it runs: module level and function-local imports, not
    those under `if TYPE_CHECKING:` (annotations only). For `from a.b import c`, both a.b and a.b.c (c
    may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test).endswith(
        "TYPE_CHECKING") for child in node.body for n in ast.walk(child)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in ORDER for p in (ROOT / package).rglob("*.py")}


@pytest.mark.parametrize("package", ORDER)
def test_dependencies_point_one_way(package):
    allowed = set(ORDER[: ORDER.index(package) + 1])
    forbidden = set(ORDER) - allowed
    for path in (ROOT / package).rglob("*.py"):
        bad = {name.split(".")[0] for name in runtime_imports(path)} & forbidden
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}; {package} may only import {sorted(allowed)}"


def test_the_base_is_sub_packages_by_role_and_they_import_one_way():
    flat = sorted(p.name for p in (ROOT / "distill").glob("*.py"))
    assert flat == ["__init__.py", "config.py", "errors.py"], f"distill/ holds modules outside its sub-packages: {flat}"
    assert {p.name for p in (ROOT / "distill").iterdir() if (p / "__init__.py").is_file()} == set(SUBPACKAGES)
    for sub, allowed in SUBPACKAGES.items():
        for path in (ROOT / "distill" / sub).rglob("*.py"):
            for name in runtime_imports(path):
                parts = name.split(".")
                if parts[0] != "distill" or name in BASE_MODULES or ".".join(parts[:2]) in BASE_MODULES:
                    continue
                assert parts[1] in allowed | {sub}, (
                    f"{path.relative_to(ROOT)} imports {name}; distill.{sub} may import only "
                    f"{sorted(allowed) or 'no other sub-package'}")
    base = {name for module in BASE_MODULES - {"distill"} for name in runtime_imports(modules()[module])}
    assert all(name.split(".")[0] != "distill" or ".".join(name.split(".")[:2]) in BASE_MODULES for name in base), \
        f"distill.config and distill.errors are the bottom: they import {sorted(base)}"


def test_no_module_imports_itself_through_others():
    own = modules()
    graph = {name: {dep for dep in runtime_imports(path) if dep in own and dep != name}
             for name, path in own.items()}
    for name in graph:  # a package imports its own modules through __init__ only when the package is imported
        graph[name] = {dep for dep in graph[name] if not name.startswith(dep + ".")}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                circle = path[path.index(dep):] + [dep] if dep in path else [name, dep]
                pytest.fail("import circle: " + " -> ".join(circle))
            if dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_tests_mirror_the_packages():
    for package in ORDER:
        assert (ROOT / "tests" / package / "__init__.py").is_file(), f"tests/{package}/ is missing"
    for sub in SUBPACKAGES:
        tests = list((ROOT / "tests" / "distill" / sub).glob("test_*.py"))
        assert tests, f"distill.{sub} has no tests/distill/{sub}/test_*.py"
    stray = sorted(p.name for p in (ROOT / "tests" / "distill").glob("test_*.py"))
    assert stray == ["test_config.py"], f"tests of distill's sub-packages belong in their folders: {stray}"


def test_every_subcommand_entry_point_resolves():
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group="wavedistill.commands")}
    assert {"env", "data", "demo", "make-demo-corpus"} <= set(found)
    for ep in found.values():
        assert callable(ep.load())
