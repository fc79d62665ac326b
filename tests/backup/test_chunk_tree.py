"""Chunk list trees on real SQLite databases: written, walked by every reader, kept by prune.

A file of more than CHUNK_LIST_FANOUT * CHUNK_TREE_FANOUT chunks gets a tree of
two levels; a small change adds bytes that follow the change; restore, verify,
clean and copy (into an encrypted repository too) walk every level.
"""

from __future__ import annotations

import hashlib
import random
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from backup import Settings, clean_old_backups, create_backup, restore_backup, verify_backup
from backup.errors import CorruptManifest
from backup.manifest import Snapshot, seal
from backup.repository import CHUNK_LIST_FANOUT, CHUNK_TREE_FANOUT
from backup.settings import settings_from_mapping
from backup.transfer import copy_snapshots


def _make_database(path: Path, *, rows: int, seed: int = 1) -> Path:
    generator = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, label TEXT NOT NULL, payload BLOB)")
        connection.execute("CREATE INDEX items_label ON items(label)")
        connection.executemany(
            "INSERT INTO items(label, payload) VALUES (?, ?)",
            [(f"item {i} {generator.random():.8f}", generator.randbytes(300)) for i in range(rows)],
        )
        connection.commit()
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return path


def _rows(path: Path) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute("SELECT id, label, payload FROM items ORDER BY id").fetchall()


def _update_rows(path: Path, ids: list[int]) -> None:
    with closing(sqlite3.connect(path)) as connection:
        connection.executemany("UPDATE items SET label = label || ' changed' WHERE id = ?", [(row_id,) for row_id in ids])
        connection.commit()
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _settings(root: Path) -> Settings:
    return Settings(root=root, repository=root / ".backups", lock_wait=0)


@pytest.fixture
def large_project(tmp_path: Path) -> Path:
    """About 6 MiB: more than CHUNK_LIST_FANOUT * CHUNK_TREE_FANOUT 4 KiB chunks, so two levels."""
    root = tmp_path / "project"
    _make_database(root / "app.db", rows=14000)
    return root


def test_large_database_gets_a_two_level_tree_and_restores_byte_for_byte(large_project: Path, tmp_path: Path) -> None:
    settings = _settings(large_project)
    report = create_backup(settings, paths=["app.db"])
    entry = report.snapshot.files[0]
    assert entry.chunk_count > CHUNK_LIST_FANOUT * CHUNK_TREE_FANOUT
    assert entry.chunk_list_levels == 2
    assert len(entry.chunk_lists) <= CHUNK_TREE_FANOUT

    restore_backup(settings, "latest", target=tmp_path / "restored")

    restored = tmp_path / "restored" / "app.db"
    assert hashlib.sha256(restored.read_bytes()).hexdigest() == entry.sha256
    assert _rows(restored) == _rows(large_project / "app.db")
    assert verify_backup(settings, read_data=True).ok


def test_few_changed_rows_add_bytes_that_follow_the_change_not_the_database(large_project: Path) -> None:
    settings = _settings(large_project)
    database = large_project / "app.db"
    create_backup(settings, paths=["app.db"])
    _update_rows(database, [10, 5000, 9000, 13000])

    report = create_backup(settings, paths=["app.db"])

    # Four rows touch a handful of table and index pages; each costs one 4 KiB chunk,
    # one 512-byte leaf list and a share of the upper lists, all compressed.
    assert report.stats.new_chunks < 40
    assert report.stats.stored_bytes < 64 * 1024 < database.stat().st_size // 50


def test_backup_of_an_unchanged_database_adds_no_chunks(large_project: Path) -> None:
    settings = _settings(large_project)
    create_backup(settings, paths=["app.db"])

    report = create_backup(settings, paths=["app.db"])

    assert report.stats.new_chunks == 0
    assert report.stats.stored_bytes == 0


def test_clean_keeps_every_list_of_a_kept_two_level_snapshot(large_project: Path, tmp_path: Path) -> None:
    settings = _settings(large_project)
    create_backup(settings, paths=["app.db"])
    _update_rows(large_project / "app.db", list(range(1, 14000, 97)))
    kept = create_backup(settings, paths=["app.db"]).snapshot
    assert kept.files[0].chunk_list_levels == 2

    clean_old_backups(settings, keep_last=1)

    assert verify_backup(settings, read_data=True).ok
    restore_backup(settings, kept.id, target=tmp_path / "restored")
    assert _rows(tmp_path / "restored" / "app.db") == _rows(large_project / "app.db")


def test_copy_of_a_two_level_snapshot_into_an_encrypted_repository_restores(large_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(large_project)
    snapshot = create_backup(settings, paths=["app.db"]).snapshot
    monkeypatch.setenv("DBKEEP_TARGET_PASSWORD", "tree passphrase")
    monkeypatch.setenv("DBKEEP_PASSWORD", "tree passphrase")

    copy_snapshots(settings, [snapshot.id], tmp_path / "offsite", encrypt_target=True)

    target = settings_from_mapping({"include": ["*.db"], "repository": str(tmp_path / "offsite"), "encryption": "aes-256-gcm"}, root=large_project)
    assert verify_backup(target, read_data=True).ok
    restore_backup(target, snapshot.id, target=tmp_path / "restored")
    assert _rows(tmp_path / "restored" / "app.db") == _rows(large_project / "app.db")


@pytest.mark.parametrize("levels", [0, 7, True, "2"])
def test_manifest_claiming_an_impossible_tree_depth_is_refused(tmp_path: Path, levels: object) -> None:
    root = tmp_path / "project"
    _make_database(root / "app.db", rows=50)
    snapshot = create_backup(_settings(root), paths=["app.db"]).snapshot
    body = snapshot.to_body()
    body["files"][0]["chunk_list_levels"] = levels
    forged = seal(body, kind="snapshot")  # a correct seal: only the depth is wrong

    with pytest.raises(CorruptManifest, match="chunk_list_levels"):
        Snapshot.from_json(forged, expected_id=snapshot.id)


@pytest.mark.parametrize("spool_bytes", [96, 4096], ids=["spilled-every-3-ids", "spilled-every-128-ids"])
def test_ids_spooled_to_a_temp_file_give_the_same_tree_as_ids_held_in_memory(large_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spool_bytes: int) -> None:
    # A large file's chunk ids wait in a temp file until its tree is written; read
    # back in pieces that cut leaves anywhere, they must make the very same lists.
    from backup import operations

    held = create_backup(_settings(large_project), paths=["app.db"]).snapshot.files[0]
    spool_files = []
    temporary_file = operations.tempfile.TemporaryFile
    monkeypatch.setattr(operations.tempfile, "TemporaryFile", lambda **options: spool_files.append(options) or temporary_file(**options))
    monkeypatch.setattr(operations.ChunkIdSpool, "MEMORY_BYTES", spool_bytes)
    other = Settings(root=large_project, repository=tmp_path / "spooled-repo", lock_wait=0)
    spooled = create_backup(other, paths=["app.db"]).snapshot.files[0]

    assert spool_files and all(options["dir"] == other.scratch_directory for options in spool_files)
    assert spooled.chunk_count == held.chunk_count > CHUNK_LIST_FANOUT * CHUNK_TREE_FANOUT
    assert (spooled.chunk_lists, spooled.chunk_list_levels) == (held.chunk_lists, held.chunk_list_levels)
    restore_backup(other, "latest", target=tmp_path / "restored")
    assert hashlib.sha256((tmp_path / "restored" / "app.db").read_bytes()).hexdigest() == held.sha256
