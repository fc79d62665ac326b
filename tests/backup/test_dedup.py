"""Deduplication: every backup after the first stores little more than what changed."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing

from backup import create_backup
from backup.settings import DEFAULT_CHUNK_SIZE
from tests.dbhelpers import make_database


def test_backup_after_appending_one_percent_rows_stores_under_five_percent(tmp_path, make_settings):
    root = tmp_path / "project"
    database = make_database(root / "app.db", rows=20_000, blob_size=500)
    settings = make_settings(root)
    first = create_backup(settings)

    with closing(sqlite3.connect(database)) as connection:
        connection.executemany(
            "INSERT INTO events(account, label, payload) VALUES (1, ?, randomblob(500))", [(f"new {i}",) for i in range(200)]
        )
        connection.commit()
    second = create_backup(settings)

    assert first.stats.stored_bytes > 0
    assert second.stats.stored_bytes < 0.05 * first.stats.stored_bytes


def test_backup_without_changes_stores_no_new_chunks(settings):
    create_backup(settings)
    again = create_backup(settings)

    assert again.stats.new_chunks == 0
    assert again.stats.stored_bytes == 0
    assert again.stats.reused_chunks > 0


def test_identical_files_in_one_snapshot_are_stored_once(tmp_path, make_settings):
    root = tmp_path / "project"
    root.mkdir()
    payload = os.urandom(1024 * 1024)
    (root / "a.db").write_bytes(payload)
    (root / "b.db").write_bytes(payload)

    report = create_backup(make_settings(root))

    assert report.stats.reused_chunks == report.stats.new_chunks == len(payload) // DEFAULT_CHUNK_SIZE
    assert report.stats.new_bytes == len(payload)
