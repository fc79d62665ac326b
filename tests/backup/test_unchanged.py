"""Unchanged sources: a settled, equal stamp reuses the last capture; any write is still seen.

Most tests here make every stamp count as settled at once (the rule exists for
writes in the same clock tick, which these tests do not race against); the rule
itself is tested on real stamps with explicit clock readings.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from backup import create_backup, restore_backup, verify_backup
from backup.sources import logical_dump_digest
from backup.sources import stamps
from backup.sources.stamps import clock_ns, is_settled, stamp_of
from tests.dbhelpers import make_database, row_count


@pytest.fixture
def settled_at_once(monkeypatch):
    monkeypatch.setattr(stamps, "SETTLE_NS", -(10**12))
    monkeypatch.setattr(stamps, "COARSE_SETTLE_NS", -(10**12))


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    make_database(root / "app.db", rows=500)
    make_database(root / "old.db", rows=300, journal_mode="delete", seed=2)
    (root / "notes.db").write_bytes(b"plain bytes, not a database " * 100)
    return root


def _entry(report, path):
    return next(entry for entry in report.snapshot.files if entry.path == path)


def test_an_unchanged_database_is_not_read_again_and_still_restores(settled_at_once, project, make_settings, tmp_path):
    settings = make_settings(project, include=["*.db"])
    first = create_backup(settings)

    second = create_backup(settings)

    assert sorted(second.unchanged) == ["app.db", "notes.db", "old.db"]
    assert second.stats.new_chunks == 0 and second.stats.logical_bytes == first.stats.logical_bytes
    for path in second.unchanged:
        assert _entry(second, path) == _entry(first, path)
    restore_backup(settings, second.snapshot.id, target=tmp_path / "restored")
    assert logical_dump_digest(tmp_path / "restored" / "app.db") == logical_dump_digest(project / "app.db")
    assert verify_backup(settings, second.snapshot.id, read_data=True).ok


def _write_to_the_wal_only(project: Path) -> object:
    """Commit a row while another connection stays open, so it stays in the WAL."""
    holder = sqlite3.connect(project / "app.db")
    holder.execute("SELECT count(*) FROM events").fetchone()
    with closing(sqlite3.connect(project / "app.db")) as writer:
        writer.execute("INSERT INTO events(account, label) VALUES (1, 'in the wal')")
        writer.commit()
    return holder


def _rewrite_in_place_keeping_mtime(project: Path) -> None:
    path = project / "old.db"
    before = path.stat()
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("INSERT INTO events(account, label) VALUES (1, 'same mtime')")
        connection.commit()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_commit_that_stays_in_the_wal_is_captured(settled_at_once, project, make_settings):
    settings = make_settings(project)
    create_backup(settings)
    database_stamp = (project / "app.db").stat().st_mtime_ns
    holder = _write_to_the_wal_only(project)
    try:
        assert (project / "app.db").stat().st_mtime_ns == database_stamp  # only the WAL moved
        second = create_backup(settings)
    finally:
        holder.close()

    assert "app.db" not in second.unchanged
    assert second.stats.new_chunks > 0


def test_a_write_whose_mtime_was_set_back_is_captured(settled_at_once, project, make_settings, tmp_path):
    settings = make_settings(project)
    create_backup(settings)
    _rewrite_in_place_keeping_mtime(project)

    second = create_backup(settings)

    assert "old.db" not in second.unchanged
    restore_backup(settings, second.snapshot.id, target=tmp_path / "restored", only=["old.db"])
    assert row_count(tmp_path / "restored" / "old.db") == 301


def test_a_plain_file_rewritten_with_the_same_size_and_mtime_is_captured(settled_at_once, project, make_settings):
    settings = make_settings(project, include=["*.db"])
    create_backup(settings)
    path = project / "notes.db"
    before = path.stat()
    path.write_bytes(b"PLAIN BYTES, NOT A DATABASE " * 100)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))

    second = create_backup(settings)

    assert "notes.db" not in second.unchanged
    assert _entry(second, "notes.db").sha256 != ""
    assert second.stats.new_chunks > 0


def test_a_capture_whose_pack_was_lost_is_stored_again(settled_at_once, project, make_settings):
    settings = make_settings(project)
    create_backup(settings)
    for pack in (settings.repository / "packs").rglob("*"):
        if pack.is_file():
            pack.unlink()

    second = create_backup(settings)

    assert second.unchanged == ()
    assert verify_backup(settings, second.snapshot.id, read_data=True).ok


def test_reuse_can_be_turned_off(settled_at_once, project, make_settings):
    settings = make_settings(project, reuse_unchanged=False)
    create_backup(settings)

    assert create_backup(settings).unchanged == ()


def test_a_snapshot_of_another_root_is_never_reused(settled_at_once, project, make_settings, tmp_path):
    create_backup(make_settings(project))
    other = tmp_path / "other"
    other.mkdir()
    os.link(project / "app.db", other / "app.db")  # the very same inode and stamp

    report = create_backup(make_settings(other, repository=str(project / ".backups")))

    assert report.unchanged == ()


def test_a_journal_with_content_means_no_stamp(project):
    (project / "old.db-journal").write_bytes(b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7" + bytes(504))

    assert stamp_of(project / "old.db", sqlite=True) is None
    (project / "old.db-journal").write_bytes(b"")
    assert stamp_of(project / "old.db", sqlite=True) is not None


def test_a_stamp_counts_only_when_older_than_the_file_system_clock_before_the_capture(project):
    stamp = stamp_of(project / "app.db", sqlite=True)
    newest = max(stamp.mtime_ns, stamp.ctime_ns)
    clock = clock_ns(project)

    assert clock is not None and clock >= newest  # the same clock, read later
    assert not is_settled(stamp, newest)  # a write in the same tick could hide
    assert is_settled(stamp, newest + 1)
    assert not is_settled(stamp, None)


def test_whole_millisecond_timestamps_need_the_coarse_margin(project):
    path = project / "old.db"
    os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    stamp = stamp_of(path, sqlite=True)
    coarse = type(stamp)(**{**{name: getattr(stamp, name) for name in type(stamp).__dataclass_fields__}, "ctime_ns": 1_700_000_000_000_000_000})

    assert not is_settled(coarse, 1_700_000_000_000_000_000 + stamps.SETTLE_NS + 1)
    assert is_settled(coarse, 1_700_000_000_000_000_000 + stamps.COARSE_SETTLE_NS + 1)


def test_a_stamp_from_the_future_is_never_recorded(project, make_settings):
    """A file whose clock runs ahead (a network server, a restored archive) cannot vouch for itself."""
    hour_ahead = time.time_ns() + 3600 * 10**9
    os.utime(project / "app.db", ns=(hour_ahead, hour_ahead))
    settings = make_settings(project)

    first = create_backup(settings, paths=["app.db"])
    second = create_backup(settings, paths=["app.db"])

    assert _entry(first, "app.db").source is None
    assert second.unchanged == ()
