"""The sample project: deterministic, realistic, complete or absent."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from backup import UsageError, create_sample_project
from backup.sources import logical_dump_digest


def test_sample_has_a_wal_database_a_rollback_database_a_file_and_settings(tmp_path: Path) -> None:
    report = create_sample_project(tmp_path / "s", size=1024 * 1024)
    assert report.created
    assert {path for path, _ in report.files} == {"app.db", "data/analytics.sqlite", "files/settings.json", "invoke.yaml"}
    with contextlib.closing(sqlite3.connect(tmp_path / "s" / "app.db")) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("SELECT count(*) FROM attachments WHERE length(content) > 0").fetchone()[0] > 0
        assert connection.execute("SELECT count(*) FROM users WHERE name GLOB '*[^ -~]*'").fetchone()[0] > 0  # non-ASCII names
        indexes = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'")}
        assert {"orders_by_user", "orders_by_product", "attachments_by_order"} <= indexes
    with contextlib.closing(sqlite3.connect(tmp_path / "s" / "data" / "analytics.sqlite")) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert 0.7 < (tmp_path / "s" / "app.db").stat().st_size / (1024 * 1024) < 1.5


def test_same_seed_gives_the_same_content(tmp_path: Path) -> None:
    create_sample_project(tmp_path / "a", size=256 * 1024)
    create_sample_project(tmp_path / "b", size=256 * 1024)
    assert logical_dump_digest(tmp_path / "a" / "app.db") == logical_dump_digest(tmp_path / "b" / "app.db")


def test_existing_sample_is_left_as_is(tmp_path: Path) -> None:
    create_sample_project(tmp_path / "s", size=256 * 1024)
    marker = tmp_path / "s" / "files" / "mine.txt"
    marker.write_text("keep me")
    report = create_sample_project(tmp_path / "s")
    assert not report.created and marker.read_text() == "keep me"


def test_a_folder_that_is_not_a_sample_is_refused_untouched(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a sample project"):
        create_sample_project(folder)
    assert [path.name for path in folder.iterdir()] == ["notes.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["s"]
