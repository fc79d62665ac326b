"""Read-back: what a file on disk holds now, compared with the manifest entry it came from.

Owns: re-reading a file that was just restored (or any live file) and telling
whether its content is exactly the recorded one. A SQLite database is read
through the online backup API into a private copy, because its bytes on disk
alone say nothing while a WAL holds part of it; a copy of an unchanged database
is byte-identical to the copy taken at backup time, so the SHA-256 recorded in
the manifest is the oracle for both kinds. Knows sources and manifests, never
the repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from . import fsio
from .errors import SourceError
from .manifest import FileEntry, SQLiteInfo
from .sources import capture_sqlite, is_sqlite_file

READ_PIECE = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class FileState:
    """A file as it is on disk now: size and SHA-256 of its (consistent) content."""

    size: int
    sha256: str
    kind: str  # "sqlite" or "file"
    sqlite: SQLiteInfo | None = None
    #: A private consistent copy of a SQLite database, kept only when asked for.
    copy: Path | None = None


def sha256_of(path: Path) -> tuple[int, str]:
    """(size, SHA-256) of a file, streamed; raises SourceError if it cannot be read."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as handle:
            while piece := handle.read(READ_PIECE):
                digest.update(piece)
                size += len(piece)
    except OSError as error:
        raise SourceError(f"cannot read {path}: {error.strerror or error}") from error
    return size, digest.hexdigest()


def read_state(path: Path, scratch: Path, *, quick_check_above: int, keep_copy: bool = False) -> FileState:
    """The current content of ``path``; SQLite through a consistent private copy.

    With ``keep_copy`` the caller owns (and must remove) ``FileState.copy``.
    Raises SourceError when the file cannot be read.
    """
    if not is_sqlite_file(path):
        size, digest = sha256_of(path)
        return FileState(size=size, sha256=digest, kind="file")
    fsio.make_private_dirs(scratch)
    copy, info = capture_sqlite(path, scratch, quick_check_above=quick_check_above)
    try:
        size, digest = sha256_of(copy)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(copy)
        raise
    if not keep_copy:
        with contextlib.suppress(OSError):
            os.unlink(copy)
        return FileState(size=size, sha256=digest, kind="sqlite", sqlite=info)
    return FileState(size=size, sha256=digest, kind="sqlite", sqlite=info, copy=copy)


def read_back(entry: FileEntry, destination: Path, scratch: Path, *, quick_check_above: int) -> tuple[bool, str]:
    """Check a restored file against its entry: (content matches the SHA-256, integrity).

    Integrity is the SQLite check's result (``ok`` or what it found), ``n/a`` for
    plain files.
    """
    state = read_state(destination, scratch, quick_check_above=quick_check_above)
    matches = state.size == entry.size and state.sha256 == entry.sha256
    if state.sqlite is None:
        return matches, "n/a" if not entry.is_sqlite else "not a SQLite database"
    return matches, state.sqlite.integrity
