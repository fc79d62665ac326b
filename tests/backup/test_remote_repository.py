"""Backups, restores, verification and pruning with the repository in S3.

The same operations as on a local repository, with ``repository: s3://bucket/prefix``
and the AWS environment pointing at the loopback S3 server.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from backup import clean_old_backups, create_backup, list_backups, restore_backup, settings_from_mapping, verify_backup
from backup.errors import ConfigError, RepositoryNotFound
from backup.sources import logical_dump_digest
from tests.s3_support import admin_client, aws_environment, fault_proxy, new_bucket, s3_server  # noqa: F401


def make_database(path: Path, rows: int, *, start: int = 0) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, body TEXT)")
        connection.executemany("INSERT INTO items VALUES (?, ?)", ((start + index, f"row {start + index} " * 20) for index in range(rows)))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    make_database(root / "app.db", 2000)
    (root / "notes.sqlite").write_bytes(b"")  # empty files are backed up too
    return root


@pytest.fixture
def remote_settings(aws_environment: str, project: Path):
    bucket = new_bucket(aws_environment)
    return settings_from_mapping({"repository": f"s3://{bucket}/backups/app", "include": ["*.db"]}, root=project)


def test_settings_keep_an_s3_location_as_text_and_scratch_outside_the_project(remote_settings) -> None:
    assert isinstance(remote_settings.repository, str) and remote_settings.repository.endswith("/backups/app")
    scratch = remote_settings.scratch_directory
    assert scratch.is_dir() and (scratch.stat().st_mode & 0o777) == 0o700
    assert remote_settings.root not in scratch.parents


def test_settings_refuse_a_malformed_s3_location(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="backup.repository"):
        settings_from_mapping({"repository": "s3://UPPER/x"}, root=tmp_path)


def test_backup_to_s3_restores_the_same_database(remote_settings, project: Path) -> None:
    database = project / "app.db"
    before = logical_dump_digest(database)
    report = create_backup(remote_settings, tag="manual")
    assert report.stats.new_chunks > 0
    make_database(database, 10, start=10_000)
    assert logical_dump_digest(database) != before
    restored = restore_backup(remote_settings, report.snapshot.id, force=True)
    assert logical_dump_digest(database) == before
    assert restored.safety_snapshot is not None
    assert verify_backup(remote_settings, read_data=True).ok


def test_second_backup_to_s3_reuses_unchanged_chunks(remote_settings, project: Path) -> None:
    first = create_backup(remote_settings)
    make_database(project / "app.db", 1, start=50_000)
    second = create_backup(remote_settings)
    assert second.stats.reused_chunks > 0
    assert second.stats.new_chunks < first.stats.new_chunks
    assert [snapshot.id for snapshot in list_backups(remote_settings).snapshots] == [first.snapshot.id, second.snapshot.id]


def test_clean_on_s3_removes_old_snapshots_and_their_packs(remote_settings, project: Path, aws_environment: str) -> None:
    for round_number in range(3):
        (project / "app.db").unlink()
        make_database(project / "app.db", 500, start=100_000 * (round_number + 1))
        create_backup(remote_settings)
    report = clean_old_backups(remote_settings, keep_last=1)
    assert len(report.removed) == 2 and report.packs_removed >= 1
    assert verify_backup(remote_settings, read_data=True).ok
    assert len(list_backups(remote_settings).snapshots) == 1


def test_restore_from_an_empty_s3_prefix_says_there_is_no_repository(remote_settings) -> None:
    with pytest.raises(RepositoryNotFound, match="s3://"):
        list_backups(remote_settings)


def test_s3_repository_leaves_no_lock_or_lease_behind(remote_settings, aws_environment: str) -> None:
    create_backup(remote_settings)
    bucket = remote_settings.repository.split("/")[2]
    keys = [item["Key"] for item in admin_client(aws_environment).list_objects_v2(Bucket=bucket)["Contents"]]
    assert not [key for key in keys if "/locks/" in key]
    assert "backups/app/config.json" in keys


def test_read_ahead_never_blames_an_intact_frame_for_damage_past_it(project: Path, tmp_path: Path) -> None:
    """Sequential reads fetch ahead; a pack cut short after frame k still yields frames 0..k."""
    import random

    from backup.errors import CorruptData
    from backup.repository import FRAME_TARGET_BYTES, Repository
    from backup.storage import LocalStorage

    # Raw frames close at FRAME_TARGET_BYTES: a file of four of them spans more than three frames.
    (project / "app.db").unlink()
    (project / "app.db").write_bytes(random.Random(11).randbytes(4 * FRAME_TARGET_BYTES))
    settings = settings_from_mapping({"repository": str(tmp_path / "repo"), "include": ["*.db"], "compression_level": 0}, root=project)
    snapshot = create_backup(settings).snapshot
    assert snapshot.files[0].path == "app.db"
    repository = Repository.open(LocalStorage(tmp_path / "repo"))
    chunk_ids = list(repository.chunk_ids_of(snapshot.files[0].chunk_lists, levels=snapshot.files[0].chunk_list_levels))
    locations = [repository.locate(chunk_id)[0] for chunk_id in chunk_ids]
    pack_id = locations[0].pack_id
    frame_offsets = sorted({location.entry.frame_offset for location in locations if location.pack_id == pack_id})
    assert len(frame_offsets) >= 3
    cut = frame_offsets[2]
    pack = next((tmp_path / "repo" / "packs").rglob(pack_id))
    pack.write_bytes(pack.read_bytes()[:cut])
    fresh = Repository.open(LocalStorage(tmp_path / "repo"))
    intact = [chunk_id for chunk_id, location in zip(chunk_ids, locations) if location.pack_id == pack_id and location.entry.frame_offset < cut]
    damaged = [chunk_id for chunk_id, location in zip(chunk_ids, locations) if location.pack_id == pack_id and location.entry.frame_offset >= cut]
    assert [len(fresh.read_chunk(chunk_id)) for chunk_id in intact] == [location.entry.length for location in locations[: len(intact)]]
    with pytest.raises(CorruptData):
        fresh.read_chunk(damaged[0])


def test_clean_on_s3_with_a_failing_listing_deletes_nothing(project: Path, aws_environment: str, fault_proxy) -> None:
    from backup.prune import PruneRefused
    from tests.s3_support import Rule

    proxy, endpoint = fault_proxy
    bucket = new_bucket(aws_environment)
    settings = settings_from_mapping({"repository": f"s3://{bucket}/repo?endpoint_url={endpoint}&max_attempts=2", "include": ["*.db"]}, root=project)
    for round_number in range(3):
        make_database(project / "app.db", 50, start=200_000 * (round_number + 1))
        create_backup(settings)
    keys_before = sorted(item["Key"] for item in admin_client(aws_environment).list_objects_v2(Bucket=bucket)["Contents"])
    proxy.add(Rule(method="GET", contains="prefix=repo%2Fpacks", status=503, code="SlowDown", times=-1))
    proxy.add(Rule(method="GET", contains="prefix=repo/packs", status=503, code="SlowDown", times=-1))
    with pytest.raises(PruneRefused, match="nothing was deleted.*SlowDown"):
        clean_old_backups(settings, keep_last=1)
    keys_after = sorted(item["Key"] for item in admin_client(aws_environment).list_objects_v2(Bucket=bucket)["Contents"])
    assert [key for key in keys_after if "/locks/" not in key] == [key for key in keys_before if "/locks/" not in key]
