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
land, is compared by content. A write in the same clock tick as the recorded stamp
could leave it unchanged, so a stamp only counts once it is older than the capture
by SETTLE_NS (COARSE_SETTLE_NS on file systems whose timestamps are whole
milliseconds or coarser). A ``-journal`` file with content beside a database
means a transaction may be open or was interrupted: no stamp then. What it cannot see: a
writer that changes the file through a shared memory map after the page was
already dirty, or a network file system whose server clock lags by more than the
margin; set ``reuse_unchanged: false`` for those.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..manifest import SourceStamp

#: Margin for nanosecond timestamps: far above one kernel clock tick (<= 10 ms).
SETTLE_NS = 1_000_000_000
#: Margin where timestamps are whole milliseconds or coarser (FAT keeps 2 s).
COARSE_SETTLE_NS = 3_000_000_000


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


def is_settled(stamp: SourceStamp, captured_at_ns: int) -> bool:
    """True when every time in ``stamp`` lies safely before ``captured_at_ns`` (time.time_ns())."""
    times = [stamp.mtime_ns, stamp.ctime_ns]
    coarse = all(value % 1_000_000 == 0 for value in times)
    margin = COARSE_SETTLE_NS if coarse else SETTLE_NS
    return max(times) < captured_at_ns - margin
