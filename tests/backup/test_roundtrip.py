"""Round trips: what is backed up comes back identical, for SQLite and plain files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from backup import create_backup, restore_backup, verify_backup
from backup.sources import logical_dump_digest
from tests.dbhelpers import integrity, make_database


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_roundtrip_of_50_megabyte_database_restores_identical_content(tmp_path, make_settings, journal_mode):
    root = tmp_path / "project"
    database = make_database(root / "big.db", rows=50_000, journal_mode=journal_mode, blob_size=1000)
    assert database.stat().st_size > 50 * 1024 * 1024
    before = logical_dump_digest(database)
    settings = make_settings(root)

    report = create_backup(settings)
    restore_target = tmp_path / "restored"
    restore_backup(settings, report.snapshot.id, target=restore_target)

    restored = restore_target / "big.db"
    assert integrity(restored) == "ok"
    assert logical_dump_digest(restored) == before
    assert report.snapshot.files[0].sqlite.integrity == "ok"
    assert report.snapshot.files[0].sqlite.tables == {"accounts": 50, "events": 50_000}


@pytest.mark.parametrize("size", [0, 1, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 3 * 1024 * 1024 + 7])
def test_roundtrip_of_plain_file_keeps_sha256_and_mode(tmp_path, make_settings, size):
    root = tmp_path / "project"
    root.mkdir()
    path = root / "blob.db"
    path.write_bytes(os.urandom(size))
    os.chmod(path, 0o640)
    settings = make_settings(root)

    report = create_backup(settings)
    restore_backup(settings, report.snapshot.id, target=tmp_path / "out")

    restored = tmp_path / "out" / "blob.db"
    assert _sha256(restored) == _sha256(path)
    assert restored.stat().st_mode & 0o777 == 0o640
    assert report.snapshot.files[0].kind == "file"


def test_restore_in_place_brings_back_deleted_rows_and_keeps_wal_mode(settings, project):
    database = project / "app.db"
    before = logical_dump_digest(database)
    report = create_backup(settings)
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(database)) as connection:
        connection.execute("DELETE FROM events WHERE id > 10")
        connection.commit()

    result = restore_backup(settings, report.snapshot.id, force=True)

    assert logical_dump_digest(database) == before
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert result.safety_snapshot is not None
    assert {item.path for item in result.files} == {"app.db", "data/analytics.sqlite", "data/notes.db"}


def test_restore_writes_through_open_connection_so_it_sees_new_content(settings, project):
    import sqlite3
    from contextlib import closing

    database = project / "app.db"
    report = create_backup(settings)
    with closing(sqlite3.connect(database)) as application:
        application.execute("DELETE FROM events")
        application.commit()
        restore_backup(settings, report.snapshot.id, force=True, only=["app.db"])
        # The application's own connection, open across the restore, sees the restored rows.
        assert application.execute("SELECT count(*) FROM events").fetchone()[0] == 2000
        assert application.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_every_snapshot_verifies_with_read_data_after_several_backups(settings, project):
    import sqlite3
    from contextlib import closing

    for round_number in range(3):
        create_backup(settings)
        with closing(sqlite3.connect(project / "app.db")) as connection:
            connection.execute("UPDATE events SET label = ? WHERE id % 50 = ?", (f"round {round_number}", round_number))
            connection.commit()

    report = verify_backup(settings, read_data=True)

    assert report.ok, report.problems
    assert report.snapshots_checked == 3
    assert report.files_checked == 9


def test_restore_into_wal_database_with_other_page_size_refuses_clearly_and_changes_nothing(tmp_path, make_settings):
    import sqlite3
    from contextlib import closing

    from backup.errors import SourceError
    from tests.dbhelpers import file_state

    root = tmp_path / "project"
    database = make_database(root / "app.db", rows=100)
    settings = make_settings(root)
    report = create_backup(settings)
    database.unlink()
    with closing(sqlite3.connect(database)) as connection:
        connection.execute("PRAGMA page_size=8192")
        connection.execute("PRAGMA journal_mode=wal")
        connection.execute("CREATE TABLE other(x)")
        connection.commit()
    before = file_state(database)

    with pytest.raises(SourceError, match="page size"):
        restore_backup(settings, report.snapshot.id, force=True)

    assert file_state(database) == before


def test_a_relative_project_root_backs_up_named_paths(tmp_path, monkeypatch):
    """The library API takes the root as given; a relative one must work like the CLI's."""
    from backup import Settings

    make_database(tmp_path / "project" / "app.db", rows=50)
    monkeypatch.chdir(tmp_path)

    report = create_backup(Settings(root=Path("project"), repository=Path("repo")), paths=["app.db"])

    assert [entry.path for entry in report.snapshot.files] == ["app.db"]
