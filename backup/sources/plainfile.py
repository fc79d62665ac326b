"""Plain files: reading them with a change check, and installing a verified copy.

Owns: streaming a file in fixed-size pieces while making sure it did not change
underneath, and putting a fully written, fsynced temp file in place with an
atomic rename (plus moving aside stale SQLite sidecars that would otherwise be
replayed into the new file).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from .. import fsio
from ..errors import SourceError

SIDECARS = ("-wal", "-shm", "-journal")


def capture_file(path: Path, piece_size: int) -> Iterator[bytes]:
    """Yield the file's bytes in ``piece_size`` pieces; raise SourceError if it changed.

    The check compares size, mtime and inode before and after: a file being
    written while we read it is reported, not silently stored torn.
    """
    try:
        before = os.stat(path)
        with open(path, "rb") as handle:
            while piece := handle.read(piece_size):
                yield piece
        after = os.stat(path)
    except OSError as error:
        raise SourceError(f"cannot read {path}: {error.strerror or error}") from error
    if (before.st_size, before.st_mtime_ns, before.st_ino) != (after.st_size, after.st_mtime_ns, after.st_ino):
        raise SourceError(f"{path} changed while it was being backed up; run the backup again when it is quiet")


def move_aside_sidecars(path: Path) -> list[Path]:
    """Rename leftover ``-wal``/``-shm``/``-journal`` files of ``path`` out of the way.

    A stale WAL beside a freshly installed database would be replayed into it and
    corrupt it; renaming (not deleting) keeps whatever they held.
    """
    moved: list[Path] = []
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for suffix in SIDECARS:
        sidecar = Path(f"{path}{suffix}")
        if sidecar.exists():
            target = Path(f"{sidecar}.orphaned-{stamp}")
            fsio.replace(sidecar, target)
            moved.append(target)
    if moved:
        fsio.fsync_dir(path.parent)
    return moved


def install_file(temp_path: Path, destination: Path, *, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Rename a fully written, fsynced temp file over ``destination`` (same directory).

    The new file gets ``mode`` and, where the restoring user may set it, the
    ``owner`` (uid, gid) of the file it replaces, so the application that owns
    the file can still write it.
    """
    try:
        if owner is not None and owner != (os.geteuid(), os.getegid()):
            with contextlib.suppress(PermissionError):
                os.chown(temp_path, *owner)
        os.chmod(temp_path, mode & 0o7777)
        fsio.replace(temp_path, destination)
        fsio.fsync_dir(destination.parent)
    except OSError as error:
        raise SourceError(f"cannot put restored file in place at {destination}: {error.strerror or error}") from error
