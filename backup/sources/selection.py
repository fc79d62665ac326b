"""Which files under a project root are backed up.

Owns: walking the root with gitignore-style include / exclude patterns
(pathspec), the always-excluded places, ``.backupignore``, and recognising SQLite
by its header. Never follows a symlink and never selects a SQLite sidecar.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pathspec

SQLITE_HEADER = b"SQLite format 3\x00"
DEFAULT_INCLUDE = ("**/*.db", "**/*.sqlite", "**/*.sqlite3", "**/*.db3")
ALWAYS_EXCLUDED_DIRS = frozenset({".git", ".hg", ".svn", "node_modules", "venv", ".venv", "__pycache__", ".tox", ".nox"})
SIDECAR_SUFFIXES = ("-wal", "-shm", "-journal")
IGNORE_FILE = ".backupignore"


@dataclass(frozen=True, slots=True, kw_only=True)
class SelectedFile:
    path: Path  # absolute
    relative: str  # POSIX path relative to the root
    kind: str  # "sqlite" or "file"


def is_sqlite_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except OSError:
        return False


def _is_virtualenv(directory: Path) -> bool:
    return (directory / "pyvenv.cfg").is_file()


def _read_ignore_file(root: Path) -> list[str]:
    path = root / IGNORE_FILE
    if not path.is_file():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip() and not line.startswith("#")]


def select_files(
    root: Path,
    *,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = (),
    skip: Sequence[Path] = (),
) -> list[SelectedFile]:
    """Files under ``root`` matching ``include`` and not ``exclude``, sorted by path.

    ``skip`` names directories never entered (the repository itself). Symlinks are
    never followed, so nothing outside the root can be selected through one.
    """
    root = root.resolve()
    include_spec = pathspec.GitIgnoreSpec.from_lines(include)
    exclude_spec = pathspec.GitIgnoreSpec.from_lines([*exclude, *_read_ignore_file(root)])
    skipped = {Path(os.path.abspath(path)) for path in skip}
    selected: list[SelectedFile] = []
    for directory, subdirectories, files in os.walk(root, followlinks=False):
        current = Path(directory)
        subdirectories[:] = sorted(
            name
            for name in subdirectories
            if name not in ALWAYS_EXCLUDED_DIRS
            and current / name not in skipped
            and not (current / name).is_symlink()
            and not _is_virtualenv(current / name)
            and not exclude_spec.match_file(_relative(root, current / name) + "/")
        )
        for name in sorted(files):
            path = current / name
            relative = _relative(root, path)
            if name.endswith(SIDECAR_SUFFIXES) or path.is_symlink() or not path.is_file():
                continue
            if include_spec.match_file(relative) and not exclude_spec.match_file(relative):
                selected.append(SelectedFile(path=path, relative=relative, kind="sqlite" if is_sqlite_file(path) else "file"))
    return selected


def _relative(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()
