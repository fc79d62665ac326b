"""Source stamps: when a file-system stat can vouch that a source did not change.

Owns: taking a source's stamp (the file's stat, and for SQLite the content of
its ``-wal`` file, whose ctime every connection changes) and
deciding whether a stamp is settled, that is old enough that any later write must
change it. A backup that finds a settled stamp equal to the one recorded with the
previous capture of the same path reuses that capture instead of reading the
database again, as restic and borg do with their files cache.

Why it is safe: every write through ``write(2)``, truncation or rename changes a
file's mtime or ctime (ctime cannot be set back from user space), SQLite
writes through ``write(2)``, and the WAL, where a WAL-mode database's commits
land, is compared by content. A write in the same clock tick as the recorded
stamp could leave it unchanged, so a stamp only counts when it is older than a
timestamp the file-system clock gave just before the capture began (``clock_ns``,
the mtime of a new scratch file): any later write gets at least that timestamp.
Both come from the kernel's file-system clock, so no margin is needed, and a
lagging clock cannot fool the comparison. Where timestamps are whole
milliseconds or coarser (FAT keeps 2 s) the stamp must be COARSE_SETTLE_NS
older. A ``-journal`` file with content beside a database
means a transaction may be open or was interrupted: no stamp then. What it
cannot see: a writer that changes the file through a shared memory map after the
page was already dirty, or a network file system whose server clock lags the
local one; set ``reuse_unchanged: false`` for those.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from ..manifest import SourceStamp

#: Margin for nanosecond timestamps, compared with ``clock_ns``: none is needed.
SETTLE_NS = 0
#: Margin where timestamps are whole milliseconds or coarser (FAT keeps 2 s).
COARSE_SETTLE_NS = 3_000_000_000


def clock_ns(directory: Path) -> int | None:
    """The file-system clock now: the mtime of a file created (and removed) in ``directory``.

    None when no file can be created there; then no stamp is recorded.
    """
    try:
        descriptor, name = tempfile.mkstemp(prefix=".dbkeep-clock-", dir=directory)
    except OSError:
        return None
    try:
        return os.fstat(descriptor).st_mtime_ns
    finally:
        os.close(descriptor)
        with contextlib.suppress(OSError):
            os.unlink(name)


def stamp_of(path: Path, *, sqlite: bool) -> SourceStamp | None:
    """The source's stamp now, or None if it cannot vouch for the content."""
    try:
        status = os.stat(path)
        wal = _wal_stamp(path) if sqlite else None
        if sqlite and _journal_in_use(path):
            return None
    except OSError:
        return None
    return SourceStamp(
        device=status.st_dev,
        inode=status.st_ino,
        size=status.st_size,
        mtime_ns=status.st_mtime_ns,
        ctime_ns=status.st_ctime_ns,
        wal=wal,
    )


def _journal_in_use(path: Path) -> bool:
    """A rollback journal with content: a transaction is open or was interrupted."""
    try:
        return os.stat(f"{path}-journal").st_size > 0
    except FileNotFoundError:
        return False


def _wal_stamp(path: Path) -> str | None:
    """SHA-256 of the ``-wal`` file's content; None when it is missing or empty."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(f"{path}-wal", "rb") as handle:
            while piece := handle.read(1024 * 1024):
                digest.update(piece)
                size += len(piece)
    except FileNotFoundError:
        return None
    return digest.hexdigest() if size else None


def is_settled(stamp: SourceStamp, clock: int | None) -> bool:
    """True when every time in ``stamp`` lies before ``clock`` (``clock_ns`` taken before the capture)."""
    if clock is None:
        return False
    times = [stamp.mtime_ns, stamp.ctime_ns]
    coarse = all(value % 1_000_000 == 0 for value in times)
    margin = COARSE_SETTLE_NS if coarse else SETTLE_NS
    return max(times) < clock - margin
