"""The test suite's own shape: modules share code through conftest.py and helpers.py only."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def imported_modules(path: Path) -> set[str]:
    """The names a module imports from the tests package (`from .x import` / `tests.x`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names |= {node.module} if node.module else {a.name for a in node.names}
            elif node.module and node.module.startswith("tests."):
                names.add(node.module.removeprefix("tests."))
        elif isinstance(node, ast.Import):
            names |= {a.name.removeprefix("tests.") for a in node.names if a.name[:6] == "tests."}
    return names


def test_no_test_module_imports_another() -> None:
    offenders = {
        path.name: sorted(n for n in imported_modules(path) if n.startswith("test_"))
        for path in sorted(TESTS.glob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}
    assert imported_modules(TESTS / "test_cli.py") == {"helpers"}  # the check sees imports
