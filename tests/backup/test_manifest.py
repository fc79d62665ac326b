"""Manifests are hostile input until parsed: paths, ids and types are all checked."""

from __future__ import annotations

import json

import pytest

from backup import create_backup, restore_backup
from backup.errors import CorruptManifest, CorruptPack
from backup.manifest import Snapshot, seal, unseal
from backup.pack import check_id
from backup.repository import pack_name


def _rewrite(settings, snapshot_id, change) -> None:
    path = settings.repository / "snapshots" / f"{snapshot_id}.json"
    body = unseal(path.read_bytes(), kind="snapshot")
    change(body)
    path.write_bytes(seal(body, kind="snapshot"))


@pytest.mark.parametrize("hostile", ["../escape.db", "/etc/passwd", "a/../../x.db", "./app.db", "a//b.db", "nul\x00.db", ""])
def test_manifest_with_traversal_or_absolute_path_is_refused_before_any_write(settings, tmp_path, hostile):
    report = create_backup(settings)

    def point_outside(body):
        body["files"][0]["path"] = hostile

    _rewrite(settings, report.snapshot.id, point_outside)
    target = tmp_path / "target"

    with pytest.raises(CorruptManifest):
        restore_backup(settings, report.snapshot.id, target=target, force=True)

    assert not (tmp_path / "escape.db").exists()
    assert not target.exists() or not any(target.rglob("*"))


@pytest.mark.parametrize("bad_id", ["../../etc/passwd", "/abs", "ABCDEF" + "0" * 58, "0" * 63, "0" * 65, "g" * 64, 7, None])
def test_chunk_id_that_is_not_64_lowercase_hex_never_becomes_a_path(bad_id):
    with pytest.raises(CorruptPack):
        check_id(bad_id)
    with pytest.raises(CorruptPack):
        pack_name(bad_id)


def test_manifest_with_bad_chunk_list_id_is_refused(settings):
    report = create_backup(settings)

    def poison(body):
        body["files"][0]["chunk_lists"] = ["../../../../etc/passwd"]

    _rewrite(settings, report.snapshot.id, poison)
    data = (settings.repository / "snapshots" / f"{report.snapshot.id}.json").read_bytes()

    with pytest.raises(CorruptManifest, match="chunk list id"):
        Snapshot.from_json(data)


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"format": "dbkeep-snapshot", "version": 99, "sha256": "", "body": {}}',
        b'{"format": "dbkeep-snapshot", "version": 1, "sha256": "x", "body": {}}',
        b'{"format": "dbkeep-snapshot", "format": "x"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a": NaN}',
    ],
    ids=["empty", "not-utf8", "array", "future-version", "bad-checksum", "duplicate-key", "deep-nesting", "nan"],
)
def test_malformed_manifest_documents_raise_corrupt_manifest(document):
    with pytest.raises(CorruptManifest):
        Snapshot.from_json(document)


def test_sealed_body_with_wrong_types_is_refused_even_with_valid_checksum(settings):
    report = create_backup(settings)
    path = settings.repository / "snapshots" / f"{report.snapshot.id}.json"
    body = unseal(path.read_bytes(), kind="snapshot")
    for field, value in [("size", -1), ("size", "12"), ("mode", 0o177777), ("size", True), ("chunk_count", 2**70)]:
        broken = json.loads(json.dumps(body))
        broken["files"][0][field] = value
        with pytest.raises(CorruptManifest):
            Snapshot.from_json(seal(broken, kind="snapshot"))


def test_manifest_round_trips_through_json(settings):
    snapshot = create_backup(settings, tag="daily", note="ünïcødé").snapshot

    assert Snapshot.from_json(snapshot.to_json()) == snapshot


def test_source_stamps_round_trip_and_hostile_ones_are_refused(settings):
    from dataclasses import replace

    from backup.manifest import SourceStamp

    snapshot = create_backup(settings).snapshot
    stamped = replace(snapshot, files=tuple(replace(entry, source=SourceStamp(device=2**63, inode=7, size=entry.size, mtime_ns=-5, ctime_ns=9, wal="ab" * 32)) for entry in snapshot.files))
    assert Snapshot.from_json(stamped.to_json()) == stamped
    body = unseal(stamped.to_json(), kind="snapshot")
    for field, value in [("device", -1), ("inode", 2**64), ("size", "1"), ("mtime_ns", 1.5), ("wal", "../x"), ("wal", 12)]:
        broken = json.loads(json.dumps(body))
        broken["files"][0]["source"][field] = value
        with pytest.raises(CorruptManifest):
            Snapshot.from_json(seal(broken, kind="snapshot"))
    broken = json.loads(json.dumps(body))
    broken["files"][0]["source"] = [1, 2]
    with pytest.raises(CorruptManifest, match="source stamp is not an object"):
        Snapshot.from_json(seal(broken, kind="snapshot"))
