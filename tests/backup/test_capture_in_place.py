"""Reading a live WAL database in place, inside a read transaction, is as consistent as the backup API.

The in-place capture reads the database file itself while a read transaction
keeps SQLite from writing it. These tests try to break that: every shape of
database must give the backup API's bytes exactly, a writer that commits and
checkpoints in the middle of the read must not reach the file, and whatever
SQLite cannot promise (frames in the WAL, a mode switched under the capture, a
transaction that ended, rollback-journal writers to keep waiting) must fall
back to the copy or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backup import create_backup, list_snapshots, restore_backup
from backup.errors import SourceError
from backup.manifest import CAPTURED_BY_BACKUP_API, CAPTURED_IN_PLACE
from backup.sources import sqlite as sqlite_source
from backup.sources.sqlite import _file_may_change, copy_sqlite, open_capture
from tests.dbhelpers import make_database

PIECE = 64 * 1024

# Without /proc/self/fd dbkeep cannot tell whether its own process has the file open, and always copies.
pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="no /proc/self/fd: databases are always copied here")

#: Commits an update of every row, then tries every checkpoint mode without waiting; prints what each did.
WRITE_AND_CHECKPOINT = textwrap.dedent(
    """
    import json, sqlite3, sys
    connection = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
    connection.execute("PRAGMA wal_autocheckpoint=0")
    connection.execute("UPDATE events SET payload = randomblob(length(payload)), label = 'changed'")
    connection.execute("CREATE TABLE added(id INTEGER PRIMARY KEY)")
    outcomes = {}
    for mode in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
        try:
            outcomes[mode] = list(connection.execute(f"PRAGMA wal_checkpoint({mode})").fetchone())
        except sqlite3.OperationalError as error:
            outcomes[mode] = str(error)
    print(json.dumps(outcomes))
    """
)

#: Tries to commit one update without waiting; prints "committed" or SQLite's refusal.
COMMIT_ONCE = textwrap.dedent(
    """
    import sqlite3, sys
    connection = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
    try:
        connection.execute("UPDATE events SET label = 'changed'")
        print("committed")
    except sqlite3.OperationalError as error:
        print(error)
    """
)


def _run(script: str, database: Path) -> str:
    return subprocess.run([sys.executable, "-c", script, str(database)], capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def _captured(database: Path, scratch: Path) -> tuple[str, bytes]:
    with open_capture(database, scratch) as capture:
        return capture.method, b"".join(capture.pieces(PIECE))


def _backup_api_copy(database: Path, scratch: Path) -> bytes:
    copy_path, _ = copy_sqlite(database, scratch)
    try:
        return copy_path.read_bytes()
    finally:
        copy_path.unlink()


def _shaped(path: Path, *, journal_mode: str, page_size: int, auto_vacuum: str, schema_changes: int) -> Path:
    """A database with a freelist, several schema changes and many commits behind it."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute(f"PRAGMA page_size={page_size}")
        connection.execute(f"PRAGMA auto_vacuum={auto_vacuum}")
        connection.execute(f"PRAGMA journal_mode={journal_mode}")
        connection.execute("PRAGMA user_version=42")
        for number in range(schema_changes):
            connection.execute(f"CREATE TABLE t{number}(id INTEGER PRIMARY KEY, body BLOB)")
            for _ in range(20):
                connection.execute(f"INSERT INTO t{number}(body) VALUES (randomblob(900))")
        connection.execute("DELETE FROM t0 WHERE id % 3 = 0")  # leaves free pages (unless auto_vacuum=full)
        connection.execute("DROP TABLE t1")
    make_database(path, rows=300, journal_mode=journal_mode)
    return path


@pytest.mark.parametrize(
    ("journal_mode", "page_size", "auto_vacuum", "schema_changes"),
    [
        ("wal", 4096, "none", 3),
        ("wal", 4096, "none", 9),
        ("wal", 512, "full", 4),
        ("wal", 65536, "incremental", 2),
        ("wal", 1024, "none", 12),
    ],
)
def test_in_place_capture_is_byte_for_byte_the_backup_api_copy(tmp_path: Path, journal_mode: str, page_size: int, auto_vacuum: str, schema_changes: int) -> None:
    database = _shaped(tmp_path / "live.db", journal_mode=journal_mode, page_size=page_size, auto_vacuum=auto_vacuum, schema_changes=schema_changes)
    method, captured = _captured(database, tmp_path)
    assert method == CAPTURED_IN_PLACE
    assert captured == _backup_api_copy(database, tmp_path)
    assert captured[:100] != database.read_bytes()[:100], "the header fields were already equal: the check above proves nothing about them"


def test_an_empty_database_file_is_captured_through_the_backup_api(tmp_path: Path) -> None:
    database = tmp_path / "empty.db"
    database.touch()
    method, captured = _captured(database, tmp_path)
    assert method == CAPTURED_BY_BACKUP_API
    assert captured == _backup_api_copy(database, tmp_path) and len(captured) > 0


def test_a_wal_writer_can_neither_checkpoint_nor_truncate_into_a_file_being_read_in_place(tmp_path: Path) -> None:
    database = make_database(tmp_path / "live.db", rows=3000, journal_mode="wal")
    snapshot = _backup_api_copy(database, tmp_path)
    with open_capture(database, tmp_path) as capture:
        assert capture.method == CAPTURED_IN_PLACE
        pieces = capture.pieces(PIECE)
        first = next(pieces)
        outcomes = json.loads(_run(WRITE_AND_CHECKPOINT, database))
        captured = first + b"".join(pieces)
        described = capture.describe(quick_check_above=1 << 62)
    assert captured == snapshot
    assert described.integrity == "ok" and described.tables["events"] == 3000 and "added" not in described.tables
    # PASSIVE backfills nothing; the waiting modes report that they could not finish.
    assert outcomes["PASSIVE"][2] == 0, outcomes
    assert all(outcomes[mode][0] == 1 for mode in ("FULL", "RESTART", "TRUNCATE")), outcomes
    # Negative control: with the transaction ended the same checkpoint does reach the file.
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as connection:
        assert connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
    assert _captured(database, tmp_path)[1] != snapshot


def test_a_rollback_journal_database_is_copied_so_its_writers_are_not_held_off(tmp_path: Path) -> None:
    database = make_database(tmp_path / "live.db", rows=3000, journal_mode="delete")
    snapshot = _backup_api_copy(database, tmp_path)
    with open_capture(database, tmp_path) as capture:
        assert capture.method == CAPTURED_BY_BACKUP_API
        assert _run(COMMIT_ONCE, database) == "committed"
        captured = b"".join(capture.pieces(PIECE))
    assert captured == snapshot


def test_a_switch_to_wal_before_the_snapshot_is_taken_is_seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The application turns a rollback-journal database to WAL and commits just after dbkeep connects."""
    database = make_database(tmp_path / "live.db", rows=100, journal_mode="delete")
    application = sqlite3.connect(database, isolation_level=None)
    connect = sqlite_source._open_source

    def connect_then_switch(path: Path, **options):
        connection = connect(path, **options)
        monkeypatch.setattr(sqlite_source, "_open_source", connect)  # once
        application.execute("PRAGMA journal_mode=WAL")
        application.execute("PRAGMA wal_autocheckpoint=0")
        application.execute("INSERT INTO events(label) VALUES ('after the switch')")
        return connection

    monkeypatch.setattr(sqlite_source, "_open_source", connect_then_switch)
    monkeypatch.setattr(sqlite_source, "_only_descriptor_here", lambda path: True)  # the application is in this process
    try:
        with open_capture(database, tmp_path) as capture:
            assert capture.method == CAPTURED_BY_BACKUP_API
            assert capture.describe(quick_check_above=1 << 62).tables["events"] == 101
            captured = b"".join(capture.pieces(PIECE))
    finally:
        application.close()
    restored = tmp_path / "restored.db"
    restored.write_bytes(captured)
    with contextlib.closing(sqlite3.connect(restored)) as connection:
        assert connection.execute("SELECT count(*) FROM events").fetchone()[0] == 101


def test_a_backup_whose_read_transaction_ended_early_fails_and_publishes_nothing(tmp_path: Path, make_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A statement failing with an I/O error rolls the transaction back; here the row count ends it."""
    root = tmp_path / "project"
    make_database(root / "app.db", rows=500, journal_mode="wal")
    count_rows = sqlite_source.table_row_counts

    def end_transaction_then_count(connection: sqlite3.Connection):
        if connection.in_transaction:
            connection.execute("COMMIT")
        return count_rows(connection)

    monkeypatch.setattr(sqlite_source, "table_row_counts", end_transaction_then_count)
    settings = make_settings(root)
    with pytest.raises(SourceError, match="read transaction ended"):
        create_backup(settings)
    assert list_snapshots(settings).snapshots == ()


def test_a_database_shorter_than_its_page_count_is_copied(tmp_path: Path) -> None:
    database = make_database(tmp_path / "live.db", rows=50, journal_mode="wal")
    damaged = bytearray(database.read_bytes())
    damaged[92:96] = (12345).to_bytes(4, "big")  # a header SQLite does not trust: the length counts, rounded up
    database.write_bytes(bytes(damaged) + bytes(10))
    method, captured = _captured(database, tmp_path)
    assert method == CAPTURED_BY_BACKUP_API
    assert captured == _backup_api_copy(database, tmp_path)


def test_a_database_this_process_has_open_is_copied(tmp_path: Path) -> None:
    """Closing dbkeep's own descriptor would drop the POSIX locks of the process's other connections."""
    database = make_database(tmp_path / "live.db", rows=50, journal_mode="wal")
    with contextlib.closing(sqlite3.connect(database)) as application:
        application.execute("SELECT count(*) FROM events").fetchone()
        assert _captured(database, tmp_path)[0] == CAPTURED_BY_BACKUP_API
    assert _captured(database, tmp_path)[0] == CAPTURED_IN_PLACE


def test_a_wal_holding_committed_frames_is_captured_through_the_backup_api_with_those_commits(tmp_path: Path) -> None:
    database = make_database(tmp_path / "live.db", rows=500, journal_mode="wal")
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as writer:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.execute("INSERT INTO events(label) VALUES ('only in the WAL')")
        assert Path(f"{database}-wal").stat().st_size > 0
        with open_capture(database, tmp_path) as capture:
            assert capture.method == CAPTURED_BY_BACKUP_API
            assert capture.describe(quick_check_above=1 << 62).tables["events"] == 501
            captured = b"".join(capture.pieces(PIECE))
    restored = tmp_path / "restored.db"
    restored.write_bytes(captured)
    with contextlib.closing(sqlite3.connect(restored)) as connection:
        assert connection.execute("SELECT count(*) FROM events WHERE label = 'only in the WAL'").fetchone()[0] == 1


def test_a_file_replaced_under_its_path_is_not_read_in_place(tmp_path: Path) -> None:
    database = make_database(tmp_path / "live.db", rows=10, journal_mode="wal")
    other = make_database(tmp_path / "other.db", rows=20, journal_mode="wal")
    with contextlib.closing(sqlite3.connect(database)) as connection:  # keeps an empty -wal and a -shm
        connection.execute("SELECT count(*) FROM events").fetchone()
        with open(database, "rb") as handle:
            assert not _file_may_change(database, handle, 4096)
            os.replace(other, database)
            assert _file_may_change(database, handle, 4096)


@pytest.mark.parametrize(("journal_mode", "method"), [("wal", CAPTURED_IN_PLACE), ("delete", CAPTURED_BY_BACKUP_API)])
def test_a_backup_restores_the_database_and_says_how_it_was_taken(tmp_path: Path, make_settings, journal_mode: str, method: str) -> None:
    root = tmp_path / "project"
    database = make_database(root / "app.db", rows=2000, journal_mode=journal_mode)
    settings = make_settings(root)
    entry = create_backup(settings).snapshot.files[0]
    assert entry.sqlite is not None and entry.sqlite.capture == method
    assert entry.size == database.stat().st_size
    target = tmp_path / "restored"
    restore_backup(settings, "latest", target=target)
    assert (target / "app.db").read_bytes() == _backup_api_copy(database, tmp_path)
