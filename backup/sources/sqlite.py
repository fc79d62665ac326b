"""SQLite databases: consistent capture and coherent write-back.

Owns: capturing one committed state of a live database (its file read inside a
read transaction that stops SQLite from writing it, or else a copy through the
online backup API; never a bare file copy, never VACUUM INTO, which renumbers
pages and defeats dedup), describing it (page size, row counts, schema hash,
integrity), and restoring a verified copy into a live database through the
backup API so open connections and the WAL stay coherent.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .. import fsio
from ..errors import NoSpace, SourceError
from ..manifest import CAPTURED_BY_BACKUP_API, CAPTURED_IN_PLACE, SQLiteInfo
from .plainfile import capture_file

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


def _connect_read_only(path: Path, *, private: bool = False, shared: bool = False) -> sqlite3.Connection:
    # ``shared``: the connection is described on a checking thread while its
    # transaction is held open; only one thread uses it at a time.
    return sqlite3.connect(_read_only_uri(path, private=private), uri=True, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=not shared)


class Capture:
    """One committed state of the database at ``source``: its bytes, read once, and its description.

    Made by ``open_capture``. ``method`` says how the state is held: the live file
    itself inside a read transaction (CAPTURED_IN_PLACE), or a private copy made
    through the backup API (CAPTURED_BY_BACKUP_API). ``pieces`` and ``describe``
    may run at the same time on two threads. Close it when done: that ends the
    transaction or removes the copy.
    """

    def __init__(self, source: Path, *, method: str, journal_mode: str, page_size: int, size: int | None,
                 handle: BinaryIO | None = None, connection: sqlite3.Connection | None = None, copy_path: Path | None = None) -> None:
        self.source = source
        self.method = method
        self.journal_mode = journal_mode
        self.page_size = page_size
        self._size = size
        self._handle = handle
        self._connection = connection
        self._copy_path = copy_path

    def pieces(self, piece_size: int) -> Iterator[bytes]:
        """The database's bytes in ``piece_size`` pieces; SourceError if they cannot all be read."""
        if self._copy_path is not None:
            yield from capture_file(self._copy_path, piece_size)
            return
        assert self._handle is not None and self._size is not None
        offset = 0
        try:
            while offset < self._size:
                piece = os.pread(self._handle.fileno(), min(max(piece_size, HEADER_BYTES), self._size - offset), offset)
                if not piece or (offset == 0 and len(piece) < HEADER_BYTES):
                    raise SourceError(f"cannot back up SQLite database {self.source}: the file ended at byte {offset + len(piece)} of {self._size}; run the backup again")
                yield as_backup_api_copy(piece, page_count=self._size // self.page_size) if offset == 0 else piece
                offset += len(piece)
        except OSError as error:
            raise SourceError(f"cannot read {self.source}: {error.strerror or error}") from error

    def describe(self, *, quick_check_above: int) -> SQLiteInfo:
        """Page size, row counts, schema hash and integrity of this state; SourceError names the source."""
        if self._copy_path is not None:
            return describe_copy(self.source, self._copy_path, journal_mode=self.journal_mode, quick_check_above=quick_check_above)
        assert self._connection is not None and self._size is not None
        try:
            return _describe_connection(self._connection, size=self._size, journal_mode=self.journal_mode, quick_check_above=quick_check_above, method=self.method)
        except sqlite3.Error as error:
            raise SourceError(f"cannot back up SQLite database {self.source}: {error}") from error

    def check_held(self) -> None:
        """Raise SourceError if the read transaction ended before both the read and the description did.

        SQLite rolls a whole transaction back when a statement in it fails with an
        I/O or memory error, and the file is then no longer held still.
        """
        if self._connection is not None and not self._connection.in_transaction:
            raise SourceError(f"cannot back up SQLite database {self.source}: its read transaction ended while it was read; run the backup again")

    def interrupt(self) -> None:
        """Stop a description running on another thread (the backup failed), so the transaction ends soon."""
        if self._connection is not None:
            self._connection.interrupt()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()  # ends the read transaction: SQLite may write the file again
            self._connection = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._copy_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._copy_path)
            self._copy_path = None

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


HEADER_BYTES = 100


def as_backup_api_copy(first: bytes, *, page_count: int) -> bytes:
    """The database's first bytes with the header fields a backup API copy writes itself.

    A copy through the backup API differs from the file it copies in five header
    fields only. Page 1 gets the page count (offset 28) and a schema cookie one
    above the empty copy's, 1 (offset 40); the copy's own commit sets the change
    counter and the version-valid-for number to 1 and the library version to
    this SQLite's (offsets 24, 92 and 96). Setting them here makes a capture's
    bytes the same whichever way it was taken, so captures deduplicate against
    each other and compare equal when the content is. All five are bookkeeping:
    the schema cookie is only compared with itself between statements, and with
    the change counter equal to version-valid-for SQLite trusts the page count,
    which is the length read.
    """
    one = (1).to_bytes(4, "big")
    header = bytearray(first[:HEADER_BYTES])
    header[24:32] = one + page_count.to_bytes(4, "big")
    header[40:44] = one
    header[92:100] = one + _LIBRARY_VERSION_NUMBER.to_bytes(4, "big")
    return bytes(header) + first[HEADER_BYTES:]


def _version_number(version: str) -> int:
    """SQLITE_VERSION_NUMBER for a version string: 3.40.1 -> 3040001."""
    major, minor, patch = (int(part) for part in (version.split(".") + ["0", "0"])[:3])
    return major * 1_000_000 + minor * 1_000 + patch


_LIBRARY_VERSION_NUMBER = _version_number(sqlite3.sqlite_version)


def open_capture(path: Path, scratch_directory: Path) -> Capture:
    """One committed state of the live database at ``path``, consistent while others write.

    Read in place when SQLite guarantees that the file does not change during a
    read transaction (see ``_open_in_place``): that saves writing and reading a
    full copy. Otherwise a copy through the backup API in ``scratch_directory``.
    Raises SourceError (or NoSpace) if the database cannot be read.
    """
    capture = _open_in_place(path)
    if capture is not None:
        return capture
    copy_path, journal_mode = copy_sqlite(path, scratch_directory)
    try:
        page_size = page_size_of(copy_path)
    except OSError as error:
        os.unlink(copy_path)
        raise SourceError(f"cannot read {copy_path}: {error.strerror or error}") from error
    return Capture(path, method=CAPTURED_BY_BACKUP_API, journal_mode=journal_mode, page_size=page_size, size=None, copy_path=copy_path)


def _open_in_place(path: Path) -> Capture | None:
    """A read transaction on a live WAL database whose file SQLite will not write while it is open; None if it cannot be had.

    Why the file holds still: in WAL mode writers only append to the -wal file;
    the database file is written only by a checkpoint, which must first take
    the exclusive WAL_READ_LOCK(0), and a reader whose snapshot needs nothing
    from the WAL holds that lock shared until its transaction ends. A snapshot
    needs nothing from the WAL when the WAL was empty as it began; a WAL that is
    empty once the snapshot is taken was empty then, because only a checkpoint
    that waits for every reader of WAL frames can truncate it, and our own open
    connection keeps it from being deleted. So the file's first page_count pages
    are exactly the snapshot, the bytes the backup API would copy.

    Only WAL mode: writers go on committing while the file is read. In a
    rollback-journal mode the read transaction's SHARED lock would hold every
    writer off for the whole backup, so those databases are copied, which
    holds it only for the copy.

    The journal mode is asked inside the transaction: the application may
    switch modes until the snapshot is taken. The file is opened before the
    connection and must still be the file at ``path`` then. And no other
    descriptor of this process may be open on it: closing ours would drop the
    POSIX locks of every SQLite connection this process has on the file
    (dbkeep runs inside applications through ``backup.guard``).
    """
    if not _only_descriptor_here(path):
        return None
    try:
        handle = open(path, "rb")
    except OSError:
        return None  # the copy reports why the file cannot be read
    connection = None
    try:
        connection = _open_source(path, shared=True)
        connection.execute("BEGIN")
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the snapshot is taken here
        journal_mode = str(connection.execute("PRAGMA journal_mode").fetchone()[0])
        page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
        page_count = int(connection.execute("PRAGMA page_count").fetchone()[0])
        # An empty file has no header to read: the backup API writes one.
        if journal_mode != "wal" or page_count < 1 or _file_may_change(path, handle, page_size * page_count):
            raise _NotInPlace
    except BaseException as error:
        if connection is not None:
            connection.close()
        handle.close()
        if isinstance(error, (sqlite3.Error, OSError, _NotInPlace)):
            return None  # copied instead; the copy reports what is really wrong
        raise
    return Capture(path, method=CAPTURED_IN_PLACE, journal_mode=journal_mode, page_size=page_size, size=page_size * page_count, handle=handle, connection=connection)


class _NotInPlace(Exception):
    """The live file could change during the read transaction: copy through the backup API."""


def _only_descriptor_here(path: Path) -> bool:
    """True if no descriptor of this process is open on the file at ``path`` (False where that cannot be told)."""
    try:
        target = os.stat(path)
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for name in descriptors:
        with contextlib.suppress(OSError):
            found = os.stat(f"/proc/self/fd/{name}")
            if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
                return False
    return True


def _file_may_change(path: Path, handle: BinaryIO, size: int) -> bool:
    """True unless the open WAL read transaction keeps every writer off the ``size`` bytes ``handle`` reads (see ``_open_in_place``)."""
    opened, now = os.fstat(handle.fileno()), os.stat(path)
    if (opened.st_dev, opened.st_ino) != (now.st_dev, now.st_ino) or opened.st_size < size:
        return True
    if os.pread(handle.fileno(), 2, 18) != b"\x02\x02":
        return True  # the file does not say WAL
    try:
        if os.stat(f"{path}-wal").st_size != 0:
            return True
    except FileNotFoundError:
        return True  # our own connection holds it open: something outside SQLite removed it
    return not os.access(f"{path}-shm", os.W_OK)


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


def _open_source(path: Path, *, shared: bool = False) -> sqlite3.Connection:
    """A connection for reading the live database: read-only whenever SQLite allows it.

    A writer that died mid-transaction in rollback-journal mode leaves a hot
    journal, and no read-only connection may read the database until it is rolled
    back. The next read-write connection rolls it back (the application's own
    next connection would do exactly that, restoring the last committed state),
    so that is what is opened then. Raises SourceError when even that fails.
    """
    connection = _connect_read_only(path, shared=shared)
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
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=not shared)
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
    with contextlib.closing(_connect_read_only(path, private=True)) as connection:
        return _describe_connection(connection, size=path.stat().st_size, journal_mode=journal_mode, quick_check_above=quick_check_above, method=CAPTURED_BY_BACKUP_API)


def _describe_connection(connection: sqlite3.Connection, *, size: int, journal_mode: str | None, quick_check_above: int, method: str) -> SQLiteInfo:
    """describe_sqlite on an open connection, in the snapshot it holds (if it holds one)."""
    check = "quick_check" if size > quick_check_above else "integrity_check"
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
        capture=method,
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
