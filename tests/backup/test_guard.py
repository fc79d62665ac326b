"""The migration guard: snapshot first, restore automatically if the block raises."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

import backup
from backup.sources import logical_dump_digest


class MigrationFailed(RuntimeError):
    pass


def test_migration_that_raises_halfway_is_rolled_back_and_error_propagates(settings, project):
    database = project / "app.db"
    before = logical_dump_digest(database)

    with pytest.raises(MigrationFailed, match="column clash"):
        with backup.guard("add status column", settings=settings) as report:
            with closing(sqlite3.connect(database)) as connection:
                connection.execute("ALTER TABLE events ADD COLUMN status TEXT")
                connection.execute("UPDATE events SET status = 'migrated'")
                connection.commit()
            raise MigrationFailed("column clash in step 2")

    assert logical_dump_digest(database) == before
    assert report.snapshot.tag == "migration"
    tags = [snapshot.tag for snapshot in backup.list_backups(settings).snapshots]
    assert tags == ["migration", "safety"]


def test_successful_migration_keeps_its_changes(settings, project):
    database = project / "app.db"

    with backup.guard("add index", settings=settings):
        with closing(sqlite3.connect(database)) as connection:
            connection.execute("CREATE INDEX events_label ON events(label)")
            connection.commit()

    with closing(sqlite3.connect(database)) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")]
    assert "events_label" in names
