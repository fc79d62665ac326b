"""A backup of a database that is being written is one committed state."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path

import pytest

from backup import create_backup, restore_backup

WRITER = textwrap.dedent(
    """
    import sqlite3, sys
    path, mode = sys.argv[1], sys.argv[2]
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    connection.execute(f"PRAGMA journal_mode={mode}")
    connection.execute("CREATE TABLE IF NOT EXISTS ticks(id INTEGER PRIMARY KEY, payload BLOB)")
    next_id = 1
    announced = False
    while True:
        connection.execute("BEGIN IMMEDIATE")
        for _ in range(20):
            connection.execute("INSERT INTO ticks(id, payload) VALUES (?, randomblob(2000))", (next_id,))
            next_id += 1
        connection.execute("COMMIT")
        # Tell the test the last committed id once enough data exists; keep writing.
        if next_id > 4000 and not announced:
            print(next_id - 1, flush=True)
            announced = True
        if sys.stdin.closed:
            break
    """
)


def _ids(path: Path) -> list[int]:
    with closing(sqlite3.connect(path)) as connection:
        return [row[0] for row in connection.execute("SELECT id FROM ticks ORDER BY id")]


def _start_writer(database: Path, mode: str) -> tuple[subprocess.Popen[str], int]:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(database), mode], stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    committed_before_backup = int(writer.stdout.readline())
    return writer, committed_before_backup


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_backup_during_writes_restores_contiguous_prefix_of_committed_ids(tmp_path, make_settings, mode):
    root = tmp_path / "project"
    root.mkdir()
    database = root / "live.db"
    writer, committed_before_backup = _start_writer(database, mode)
    try:
        report = create_backup(make_settings(root))
    finally:
        writer.kill()
        writer.wait()

    restore_backup(make_settings(root), report.snapshot.id, target=tmp_path / "restored")
    ids = _ids(tmp_path / "restored" / "live.db")

    assert ids == list(range(1, len(ids) + 1))
    assert len(ids) >= committed_before_backup
    assert len(ids) % 20 == 0  # whole transactions only


def test_plain_copy_of_wal_database_under_writes_fails_the_same_oracle(tmp_path):
    """Negative control: the oracle above catches a torn copy."""
    database = tmp_path / "live.db"
    writer, _ = _start_writer(database, "wal")
    try:
        # What a naive tool does: copy the main file and ignore the WAL.
        shutil.copyfile(database, tmp_path / "copy.db")
    finally:
        writer.kill()
        writer.wait()
    with closing(sqlite3.connect(database)) as connection:
        committed = connection.execute("SELECT max(id) FROM ticks").fetchone()[0]

    try:
        ids = _ids(tmp_path / "copy.db")
    except sqlite3.DatabaseError:
        ids = []
    assert len(ids) < committed  # committed rows still in the WAL are missing from the copy
