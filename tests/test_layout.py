"""The layout's promises, checked on the source itself: which package may import which."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "approvals", "workflows", "activities", "workers", "starters", "devstack")


def imports(package: str) -> Iterator[tuple[Path, str]]:
    """(file, imported module) for every import in the package's files."""
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield path, node.module
            elif isinstance(node, ast.Import):
                yield from ((path, alias.name) for alias in node.names)


def offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {module}"
        for path, module in imports(package)
        if module.split(".")[0] in forbidden
    ]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        # Plans and messages are plain models: the CLI, workflows and activities share them.
        ("schemas", ("temporalio", "workflows", "activities", "workers", "starters", "devstack")),
        # The approval service signs proofs; workflows check them with its `proofs` module.
        ("approvals", ("temporalio", "workflows", "activities", "workers", "starters", "devstack")),
        ("activities", ("workflows", "workers", "starters", "devstack")),
        ("workflows", ("workers", "starters", "devstack")),
        ("workers", ("starters", "devstack")),
    ],
)
def test_packages_import_only_what_they_build_on(package: str, forbidden: tuple[str, ...]) -> None:
    assert offending(package, forbidden) == []


def test_no_test_module_imports_another() -> None:
    tests = ROOT / "tests"
    found = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in sorted(tests.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.ImportFrom) and node.module
        for module in [node.module]
        if module.startswith("tests.") and not module.startswith("tests.support")
    ]
    assert found == []


def test_test_file_names_are_unique() -> None:
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []
