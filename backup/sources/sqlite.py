"""SQLite databases: consistent capture and coherent write-back.

Owns: copying a live database through the online backup API (never a file copy,
never VACUUM INTO, which renumbers pages and defeats dedup), describing a copy
(page size, row counts, schema hash, integrity), and restoring a verified copy
into a live database through the same API so open connections and the WAL stay
coherent.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
import time
import urllib.parse
from pathlib import Path

from .. import fsio
from ..errors import NoSpace, SourceError
from ..manifest import SQLiteInfo

BUSY_TIMEOUT_SECONDS = 30.0
#: How long a backup step may keep finding the database locked before giving up.
LOCKED_DEADLINE_SECONDS = 300.0
_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (named in sqlite3 only from Python 3.11)


class _StillLocked(Exception):
    """Raised from the progress callback to stop Python's endless retry on SQLITE_BUSY."""


def _give_up_after(seconds: float):
    """A backup progress callback that aborts once the database stayed locked too long.

    sqlite3.Connection.backup retries SQLITE_BUSY forever; this bounds it.
    """
    deadline = time.monotonic() + seconds

    def progress(status: int, remaining: int, total: int) -> None:
        if status in _BUSY_CODES and time.monotonic() > deadline:
            raise _StillLocked(f"the database stayed locked for more than {seconds:.0f} s")

    return progress


SQLITE_FULL = 13  # "database or disk is full" (sqlite3.SQLITE_FULL from Python 3.11 on)
SQLITE_READONLY_ROLLBACK = 776  # a hot journal needs rolling back, which a read-only connection cannot do


def _read_only_uri(path: Path, *, private: bool) -> str:
    # immutable=1 skips locking and never creates -wal/-shm files. It is only
    # correct for our own private copies, which nothing else can be writing; a
    # live source is always opened with normal locking.
    return f"file:{urllib.parse.quote(str(path))}?mode=ro" + ("&immutable=1" if private else "")


def _connect_read_only(path: Path, *, private: bool = False) -> sqlite3.Connection:
    return sqlite3.connect(_read_only_uri(path, private=private), uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)


def capture_sqlite(path: Path, scratch_directory: Path, *, quick_check_above: int) -> tuple[Path, SQLiteInfo]:
    """Copy a consistent snapshot of the database at ``path`` into scratch space.

    The copy is one transaction-consistent state, even while other processes
    write, in WAL and in rollback mode. Returns the copy's path (a private temp
    file the caller removes) and what was found in it.
    Raises SourceError if the database cannot be read.
    """
    copy_path, journal_mode = copy_sqlite(path, scratch_directory)
    try:
        return copy_path, describe_copy(path, copy_path, journal_mode=journal_mode, quick_check_above=quick_check_above)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(copy_path)
        raise


def copy_sqlite(path: Path, scratch_directory: Path) -> tuple[Path, str]:
    """The consistent copy alone: (its private temp path, the source's journal mode).

    Split from the description so a caller can check the copy while it stores it.
    """
    try:
        descriptor, copy_path = fsio.create_temp(scratch_directory)
        os.close(descriptor)
    except OSError as error:
        raise _scratch_error(path, scratch_directory, error.errno, error.strerror or str(error)) from error
    try:
        with contextlib.closing(_open_source(path)) as source:
            journal_mode = str(source.execute("PRAGMA journal_mode").fetchone()[0])
            with contextlib.closing(sqlite3.connect(copy_path, isolation_level=None)) as copy:
                copy.execute("PRAGMA synchronous=OFF")
                # One step (pages=-1) holds a single read transaction for the whole
                # copy: that is what makes it a consistent snapshot.
                source.backup(copy, pages=-1, progress=_give_up_after(LOCKED_DEADLINE_SECONDS))
    except (sqlite3.Error, _StillLocked) as error:
        with contextlib.suppress(OSError):
            os.unlink(copy_path)
        _remove_sidecars(copy_path)
        if getattr(error, "sqlite_errorcode", None) == SQLITE_FULL:
            raise _scratch_error(path, scratch_directory, errno.ENOSPC, str(error)) from error
        raise SourceError(f"cannot back up SQLite database {path}: {error}") from error
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(copy_path)
        raise
    _remove_sidecars(copy_path)
    return Path(copy_path), journal_mode


def describe_copy(source: Path, copy_path: Path, *, journal_mode: str, quick_check_above: int) -> SQLiteInfo:
    """describe_sqlite on a captured copy of ``source``; SourceError names the source."""
    try:
        return describe_sqlite(copy_path, journal_mode=journal_mode, quick_check_above=quick_check_above)
    except sqlite3.Error as error:
        raise SourceError(f"cannot back up SQLite database {source}: {error}") from error
    finally:
        _remove_sidecars(copy_path)


def page_size_of(path: Path) -> int:
    """The page size from a database file's header (bytes 16-17; 1 means 65536)."""
    with open(path, "rb") as handle:
        header = handle.read(100)
    if len(header) < 100:
        return 4096  # an empty database: SQLite's default
    value = int.from_bytes(header[16:18], "big")
    return 65536 if value == 1 else value or 4096


def _open_source(path: Path) -> sqlite3.Connection:
    """A connection for reading the live database: read-only whenever SQLite allows it.

    A writer that died mid-transaction in rollback-journal mode leaves a hot
    journal, and no read-only connection may read the database until it is rolled
    back. The next read-write connection rolls it back (the application's own
    next connection would do exactly that, restoring the last committed state),
    so that is what is opened then. Raises SourceError when even that fails.
    """
    connection = _connect_read_only(path)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return connection
    except sqlite3.OperationalError as error:
        connection.close()
        if getattr(error, "sqlite_errorcode", None) != SQLITE_READONLY_ROLLBACK:
            raise
    hint = (
        f"cannot back up SQLite database {path}: a writer died mid-transaction and left a hot journal that cannot be "
        "rolled back here ({}); open the database once with write access (its application or sqlite3), then back up again"
    )
    # Without write access to the file and its folder a rollback would be left
    # half done; refuse before touching anything.
    if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        raise SourceError(hint.format("no write access"))
    try:
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as error:
        raise SourceError(hint.format(error)) from error
    return connection


def _scratch_error(path: Path, scratch_directory: Path, number: int | None, reason: str) -> SourceError | NoSpace:
    """The error for a capture copy that cannot be written into the scratch space."""
    if number in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"cannot copy {path} into {scratch_directory}: no space left on device; free some space and run again")
    return SourceError(f"cannot copy {path} into {scratch_directory}: {reason}")


def _remove_sidecars(path: Path) -> None:
    for suffix in ("-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")


def describe_sqlite(path: Path, *, journal_mode: str | None = None, quick_check_above: int) -> SQLiteInfo:
    """What a private database copy holds; runs integrity_check (quick_check when large)."""
    size = path.stat().st_size
    check = "quick_check" if size > quick_check_above else "integrity_check"
    with contextlib.closing(_connect_read_only(path, private=True)) as connection:
        page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
        page_count = int(connection.execute("PRAGMA page_count").fetchone()[0])
        user_version = int(connection.execute("PRAGMA user_version").fetchone()[0])
        mode = journal_mode or str(connection.execute("PRAGMA journal_mode").fetchone()[0])
        results = [str(row[0]) for row in connection.execute(f"PRAGMA {check}")]
        return SQLiteInfo(
            page_size=page_size,
            page_count=page_count,
            journal_mode=mode,
            user_version=user_version,
            schema_hash=schema_hash(connection),
            tables=table_row_counts(connection),
            sqlite_version=sqlite3.sqlite_version,
            integrity="ok" if results == ["ok"] else "; ".join(results[:20]),
            check=check,
        )


def schema_hash(connection: sqlite3.Connection) -> str:
    """SHA-256 over every schema object's type, name, table and SQL, in name order."""
    digest = hashlib.sha256()
    for row in connection.execute("SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_master ORDER BY type, name"):
        digest.update("\x1f".join(str(value) for value in row).encode() + b"\x1e")
    return digest.hexdigest()


def table_row_counts(connection: sqlite3.Connection) -> dict[str, int | None]:
    """Rows per table; None where a table cannot be counted (a missing virtual-table module)."""
    counts: dict[str, int | None] = {}
    names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    for name in names:
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            counts[name] = int(connection.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0])
        except sqlite3.Error:
            counts[name] = None
    return counts


def check_sqlite_copy(path: Path, expected: SQLiteInfo) -> list[str]:
    """Problems found when a materialised copy is compared with its manifest; [] if none."""
    try:
        found = describe_sqlite(path, journal_mode=expected.journal_mode, quick_check_above=1 << 62 if expected.check == "integrity_check" else 0)
    except sqlite3.Error as error:
        return [f"the restored copy does not open as SQLite: {error}"]
    problems: list[str] = []
    if found.integrity != "ok":
        problems.append(f"{found.check} failed: {found.integrity}")
    if found.schema_hash != expected.schema_hash:
        problems.append("schema differs from the one recorded at backup time")
    if found.tables != expected.tables:
        problems.append("row counts differ from the ones recorded at backup time")
    if found.user_version != expected.user_version:
        problems.append(f"user_version is {found.user_version}, recorded {expected.user_version}")
    return problems


def restore_sqlite_into(live_path: Path, verified_copy: Path) -> None:
    """Write ``verified_copy`` into the live database at ``live_path``.

    Goes through the online backup API inside one write transaction of the live
    database: connections other processes hold stay coherent, and a crash midway
    leaves a hot journal that SQLite rolls back, so the live database is either
    entirely old or entirely new. Raises SourceError if it cannot be done.
    """
    try:
        with contextlib.closing(_connect_read_only(verified_copy, private=True)) as source, contextlib.closing(
            sqlite3.connect(live_path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        ) as live:
            _refuse_wal_page_size_change(live, source, live_path)
            source.backup(live, pages=-1, progress=_give_up_after(LOCKED_DEADLINE_SECONDS))
            results = [str(row[0]) for row in live.execute("PRAGMA quick_check")]
    except (sqlite3.Error, _StillLocked) as error:
        raise SourceError(
            f"cannot write into live database {live_path}: {error}; the live database is unchanged "
            "(if it is busy, stop the application and retry)"
        ) from error
    if results != ["ok"]:
        raise SourceError(f"live database {live_path} fails quick_check after restore: {'; '.join(results[:5])}")


def _refuse_wal_page_size_change(live: sqlite3.Connection, source: sqlite3.Connection, live_path: Path) -> None:
    """SQLite cannot change the page size of a database in WAL mode in place: say so clearly."""
    live_mode = str(live.execute("PRAGMA journal_mode").fetchone()[0])
    live_page = int(live.execute("PRAGMA page_size").fetchone()[0])
    source_page = int(source.execute("PRAGMA page_size").fetchone()[0])
    if live_mode == "wal" and live_page != source_page:
        raise SourceError(
            f"cannot restore into {live_path}: it is in WAL mode with page size {live_page} and the snapshot has "
            f"page size {source_page}, which SQLite cannot change in place; the live database is unchanged. "
            "Stop the application and run PRAGMA journal_mode=DELETE on it, or restore with --target and move the file into place"
        )


def logical_dump_digest(path: Path) -> str:
    """SHA-256 of the SQL dump of the database: equal digests mean equal content."""
    digest = hashlib.sha256()
    with contextlib.closing(_connect_read_only(path)) as connection:
        for line in connection.iterdump():
            digest.update(line.encode() + b"\n")
    return digest.hexdigest()
