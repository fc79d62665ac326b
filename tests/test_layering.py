"""Imports point down only: tasks -> maintenance -> backup; sources never touch storage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# module (relative to backup/) -> modules it must never import
FORBIDDEN = {
    "sources": {"repository", "storage", "pack", "operations", "locking", "verification", "prune"},
    "storage": {"repository", "manifest", "operations", "sources", "pack"},
    "pack": {"repository", "storage", "operations", "sources"},
    "repository": {"operations", "sources"},
    "manifest": {"repository", "storage", "operations", "sources"},
}


def _backup_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level >= 1:
                base = module.split(".")[0] if module else ""
                if node.level == 2 or (node.level == 1 and path.parent.name == "backup"):
                    found.add(base or "")
                found.update(alias.name for alias in node.names if not module)
            elif module.startswith("backup."):
                found.add(module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("backup."))
    return found


def _files(owner: str) -> list[Path]:
    package = ROOT / "backup" / owner
    return sorted(package.rglob("*.py")) if package.is_dir() else [ROOT / "backup" / f"{owner}.py"]


@pytest.mark.parametrize("owner", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_ones(owner):
    for path in _files(owner):
        assert not (_backup_imports(path) & FORBIDDEN[owner]), f"{path.relative_to(ROOT)} imports {_backup_imports(path) & FORBIDDEN[owner]}"


@pytest.mark.parametrize("path", sorted((ROOT / "backup").rglob("*.py")), ids=lambda path: str(path.relative_to(ROOT)))
def test_library_never_imports_maintenance_or_tasks(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            assert not node.module.startswith(("maintenance", "tasks")), path


def test_sqlite3_is_never_imported_by_the_repository_or_storage():
    for name in ["repository.py", "storage.py", "pack.py", "prune.py", "verification.py", "locking.py"]:
        tree = ast.parse((ROOT / "backup" / name).read_text())
        modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert "sqlite3" not in modules, name
