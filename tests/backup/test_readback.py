"""Reading restored files back: measured, not assumed."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from backup import create_backup, load_settings, restore_backup
from backup.readback import read_back, read_state
from backup.sample import create_sample_project


@pytest.fixture
def settings(tmp_path: Path):
    create_sample_project(tmp_path / "shop", size=256 * 1024)
    return load_settings(tmp_path / "shop")


def test_restore_with_verify_reads_every_file_back(settings) -> None:
    snapshot = create_backup(settings).snapshot
    with contextlib.closing(sqlite3.connect(settings.root / "app.db")) as connection, connection:
        connection.execute("DELETE FROM orders")
    report = restore_backup(settings, snapshot.id, force=True, verify=True)
    assert [(item.path, item.read_back, item.sha256_ok, item.integrity) for item in report.files] == [
        ("app.db", True, True, "ok"),
        ("data/analytics.sqlite", True, True, "ok"),
        ("files/settings.json", True, True, "n/a"),
    ]
    assert report.safety_snapshot is not None


def test_restore_without_verify_says_it_did_not_read_back(settings) -> None:
    snapshot = create_backup(settings).snapshot
    report = restore_backup(settings, snapshot.id, force=True)
    assert not any(item.read_back for item in report.files)


def test_read_back_notices_a_database_that_differs_from_its_entry(settings) -> None:
    snapshot = create_backup(settings).snapshot
    entry = next(entry for entry in snapshot.files if entry.path == "app.db")
    assert read_back(entry, settings.root / "app.db", settings.scratch_directory, quick_check_above=1 << 40) == (True, "ok")
    with contextlib.closing(sqlite3.connect(settings.root / "app.db")) as connection, connection:
        connection.execute("UPDATE users SET name = 'changed' WHERE id = 1")
    assert read_back(entry, settings.root / "app.db", settings.scratch_directory, quick_check_above=1 << 40) == (False, "ok")


def test_read_state_of_an_unchanged_wal_database_matches_the_snapshot(settings) -> None:
    snapshot = create_backup(settings).snapshot
    entry = next(entry for entry in snapshot.files if entry.path == "app.db")
    # An application holding the database open (with its -wal and -shm files) changes nothing.
    with contextlib.closing(sqlite3.connect(settings.root / "app.db")) as connection:
        connection.execute("SELECT count(*) FROM users").fetchone()
        assert Path(f"{settings.root / 'app.db'}-wal").exists()
        state = read_state(settings.root / "app.db", settings.scratch_directory, quick_check_above=1 << 40)
    assert (state.sha256, state.size, state.kind) == (entry.sha256, entry.size, "sqlite")
    assert state.copy is None
