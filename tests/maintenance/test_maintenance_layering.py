"""Imports point down only: tasks -> maintenance -> backup; backup never imports maintenance."""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_backup_never_imports_maintenance_and_maintenance_never_imports_the_root_tasks():
    offenders = []
    for path in (REPO_ROOT / "backup").rglob("*.py"):
        offenders += [f"{path.name} imports {name}" for name in imported_modules(path) if name.split(".")[0] == "maintenance"]
    for path in (REPO_ROOT / "maintenance").rglob("*.py"):
        offenders += [f"{path.name} imports {name}" for name in imported_modules(path) if name == "tasks" or name.startswith("backup.tasks")]
    assert not offenders


def test_only_the_tasks_module_of_maintenance_imports_invoke_tasks():
    users = {path.name for path in (REPO_ROOT / "maintenance").rglob("*.py") if "invoke" in imported_modules(path) and "Exit" in path.read_text()}
    assert users <= {"tasks.py"}


def test_retention_is_pure():
    assert imported_modules(REPO_ROOT / "backup" / "retention.py") <= {"__future__", "calendar", "re", "collections.abc", "dataclasses", "datetime", "typing", "zoneinfo", "errors"}
