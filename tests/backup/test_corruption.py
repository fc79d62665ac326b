"""Damage is detected, named, and never restored."""

from __future__ import annotations

import hashlib
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from backup import VerificationFailed, create_backup, restore_backup, verification, verify_backup
from backup.errors import BackupError
from backup.repository import open_local
from tests.dbhelpers import file_state, make_database


def _packs(settings) -> list[Path]:
    return sorted(path for path in (settings.repository / "packs").rglob("*") if path.is_file())


@pytest.fixture
def two_snapshots(tmp_path, make_settings):
    """Snapshot 1 of app.db alone (its own pack), snapshot 2 adds other.db (a second pack)."""
    root = tmp_path / "project"
    make_database(root / "app.db", rows=3000)
    settings = make_settings(root)
    first = create_backup(settings)
    first_packs = set(_packs(settings))
    make_database(root / "other.db", rows=3000, seed=9)
    second = create_backup(settings)
    second_only = [path for path in _packs(settings) if path not in first_packs]
    assert len(second_only) == 1
    return settings, first.snapshot, second.snapshot, second_only[0]


def _flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_flipped_bit_in_pack_is_named_by_read_data_verify(two_snapshots):
    settings, first, second, pack = two_snapshots
    _flip_bit(pack, 100)

    report = verify_backup(settings, read_data=True)

    assert not report.ok
    assert report.affected_snapshots == [second.id]
    kinds = {problem.kind for problem in report.problems}
    assert "pack-hash" in kinds
    hit = [problem for problem in report.problems if problem.snapshot_id == second.id]
    assert hit and all(problem.path == "other.db" for problem in hit)
    assert any(problem.chunk_id for problem in hit)


def test_damage_to_a_pack_header_alone_is_named_but_blames_no_snapshot(two_snapshots, tmp_path):
    """The header only duplicates the index: every chunk still reads and checks, so
    verification reports the pack while both snapshots stay restorable."""
    settings, first, second, pack = two_snapshots
    _flip_bit(pack, pack.stat().st_size - 12 - 20)  # inside the last header entry

    report = verify_backup(settings, read_data=True)

    assert not report.ok
    assert report.affected_snapshots == []
    assert {problem.kind for problem in report.problems} == {"pack-hash", "pack-header"}
    assert all(problem.pack_id == pack.name for problem in report.problems)
    restore_backup(settings, second.id, target=tmp_path / "restored")
    for entry in second.files:
        assert hashlib.sha256((tmp_path / "restored" / entry.path).read_bytes()).hexdigest() == entry.sha256


@pytest.mark.parametrize("piece", [7, 1000, 1 << 22], ids=["7-bytes", "1000-bytes", "4-MiB"])
@pytest.mark.parametrize("damage", ["none", "first byte", "last frame byte", "header"])
def test_packs_hashed_piece_by_piece_find_the_same_damage_whatever_the_piece_size(two_snapshots, monkeypatch, piece, damage):
    """Read-data verify hashes a pack one piece at a time and keeps only its end for
    the header: a header longer than a piece, or damage on either side of a piece
    boundary, must be found exactly as if the pack were read whole."""
    monkeypatch.setattr(verification, "PACK_READ_PIECE", piece)
    settings, first, second, pack = two_snapshots
    header_length = int.from_bytes(pack.read_bytes()[-12:-8], "little")
    assert header_length > 1000, "the header must span several small pieces for this test to mean anything"
    frames_end = pack.stat().st_size - 12 - header_length
    offsets = {"first byte": 0, "last frame byte": frames_end - 1, "header": frames_end + header_length // 2}
    if damage != "none":
        _flip_bit(pack, offsets[damage])

    report = verify_backup(settings, read_data=True)

    kinds = {problem.kind for problem in report.problems}
    if damage == "none":
        assert report.ok, report.problems
    elif damage == "header":
        assert kinds == {"pack-hash", "pack-header"} and report.affected_snapshots == []
    else:
        assert "pack-hash" in kinds and report.affected_snapshots == [second.id]


def test_truncated_pack_is_found_by_structure_check_alone(two_snapshots):
    settings, first, second, pack = two_snapshots
    pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])

    report = verify_backup(settings)

    assert report.affected_snapshots == [second.id]
    assert any(problem.kind == "bad-pack" and problem.pack_id == pack.name and "truncated" in problem.message for problem in report.problems)
    assert any("cut short before this chunk" in problem.message for problem in report.problems if problem.snapshot_id == second.id)


@pytest.mark.parametrize("read_data", [False, True])
def test_a_pack_cut_inside_its_trailing_header_loses_no_chunk(two_snapshots, tmp_path, read_data):
    """Every frame lies before the header, so cutting the header off is damage to the
    pack (named) but not to any snapshot: verify and restore agree that it is whole."""
    settings, first, second, pack = two_snapshots
    pack.write_bytes(pack.read_bytes()[:-20])  # the trailer and the end of the header

    report = verify_backup(settings, read_data=read_data)

    assert not report.ok
    assert report.affected_snapshots == []
    assert any(problem.kind == "bad-pack" and problem.pack_id == pack.name for problem in report.problems)
    restore_backup(settings, second.id, target=tmp_path / "restored")
    for entry in second.files:
        assert hashlib.sha256((tmp_path / "restored" / entry.path).read_bytes()).hexdigest() == entry.sha256


def test_deleted_pack_is_named_with_affected_snapshot_and_file(two_snapshots):
    settings, first, second, pack = two_snapshots
    pack.unlink()

    report = verify_backup(settings)

    assert report.affected_snapshots == [second.id]
    assert any(problem.path == "other.db" and "missing" in problem.message for problem in report.problems)


def test_damaged_manifest_is_reported_as_corrupt(two_snapshots):
    settings, first, second, pack = two_snapshots
    manifest = settings.repository / "snapshots" / f"{first.id}.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"size": ', b'"size": 1', 1))

    report = verify_backup(settings)

    assert [problem.kind for problem in report.problems] == ["corrupt-manifest"]
    assert report.problems[0].snapshot_id == first.id


def test_damaged_index_is_reported_and_rebuild_from_packs_recovers(two_snapshots):
    settings, first, second, pack = two_snapshots
    for index_file in (settings.repository / "index").iterdir():
        _flip_bit(index_file, 20)

    damaged = verify_backup(settings)
    assert any(problem.kind == "corrupt-index" for problem in damaged.problems)

    packs, problems = open_local(settings.repository).rebuild_index()

    assert (packs, problems) == (2, [])
    assert verify_backup(settings, read_data=True).ok


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_restore_of_damaged_snapshot_refuses_and_leaves_live_database_untouched(two_snapshots, damage):
    settings, first, second, pack = two_snapshots
    live = settings.root / "other.db"
    with closing(sqlite3.connect(live)) as connection:
        connection.execute("DELETE FROM events WHERE id > 5")
        connection.commit()
    before = file_state(live)
    if damage == "flip":
        _flip_bit(pack, 100)
    elif damage == "truncate":
        pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])
    else:
        pack.unlink()

    with pytest.raises(BackupError):
        restore_backup(settings, second.id, force=True)

    assert file_state(live) == before
    assert not list(settings.root.glob(".dbkeep-tmp-*"))


def test_unaffected_snapshot_still_restores_after_damage_elsewhere(two_snapshots, tmp_path):
    settings, first, second, pack = two_snapshots
    pack.unlink()

    restore_backup(settings, first.id, target=tmp_path / "out")

    assert (tmp_path / "out" / "app.db").exists()


def test_verification_failure_carries_every_problem(two_snapshots):
    settings, first, second, pack = two_snapshots
    _flip_bit(pack, 100)

    with pytest.raises(VerificationFailed) as raised:
        restore_backup(settings, second.id, only=["other.db"], force=True)

    assert raised.value.problems
    assert "nothing was changed" in str(raised.value)


def test_pack_missing_only_its_header_still_restores_hash_checked_data_but_fails_verify(two_snapshots, tmp_path):
    """Chunk bytes are checked against their SHA-256 on every read, so intact frames are
    safe to restore even when the pack's tail is gone; verify still reports the pack."""
    settings, first, second, pack = two_snapshots
    pack.write_bytes(pack.read_bytes()[:-200])

    assert not verify_backup(settings).ok
    restore_backup(settings, second.id, target=tmp_path / "out")

    assert (tmp_path / "out" / "other.db").exists()


def test_restore_with_a_flipped_bit_names_the_damaged_chunk_and_writes_nothing(two_snapshots, tmp_path):
    """The fast read trusts the whole-file SHA-256; when that fails the checked read
    must still say which chunk was hit."""
    settings, first, second, pack = two_snapshots
    _flip_bit(pack, 100)
    target = tmp_path / "out"

    with pytest.raises(VerificationFailed) as raised:
        restore_backup(settings, second.id, only=["other.db"], target=target)

    assert "chunk " in str(raised.value) and "does not match its hash" in str(raised.value)
    assert not (target / "other.db").exists()
    assert not list(target.glob(".dbkeep-tmp-*"))


def test_restore_and_verify_use_the_copy_a_later_backup_stored_again(two_snapshots, tmp_path):
    """A truncated pack's chunks are stored again by the next backup; whichever copy the
    index lists first, restore finds the intact one and verify blames no snapshot."""
    settings, first, second, pack = two_snapshots
    pack.write_bytes(pack.read_bytes()[: pack.stat().st_size // 2])
    make_database(settings.root / "third.db", rows=500, seed=11)  # so the new pack gets another name
    third = create_backup(settings).snapshot
    index = open_local(settings.repository).index()
    assert index.duplicates, "the next backup should have stored the lost chunks again"

    restore_backup(settings, second.id, target=tmp_path / "out")
    report = verify_backup(settings, read_data=True)

    for entry in second.files:
        assert hashlib.sha256((tmp_path / "out" / entry.path).read_bytes()).hexdigest() == entry.sha256
    assert report.affected_snapshots == []
    assert {problem.kind for problem in report.problems} == {"bad-pack"}
    assert third.id in report.verified_snapshots and second.id in report.verified_snapshots


def test_damaged_chunk_shared_by_every_snapshot_is_named_in_each(two_snapshots):
    """Verify checks a frame once for all snapshots that share it, and an unchanged
    file once for all snapshots that hold it: the damage must still reach each one."""
    settings, first, second, pack = two_snapshots
    shared = next(path for path in _packs(settings) if path != pack)
    _flip_bit(shared, 100)

    report = verify_backup(settings, read_data=True)

    assert report.affected_snapshots == sorted([first.id, second.id])
    named = []
    for snapshot in (first, second):
        hit = [problem for problem in report.problems if problem.snapshot_id == snapshot.id and problem.path == "app.db"]
        assert len(hit) == 1 and hit[0].kind == "corrupt-chunk"
        assert hit[0].chunk_id and hit[0].chunk_id in hit[0].message
        named.append(hit[0].chunk_id)
    assert named[0] == named[1]


def test_restore_over_live_files_refuses_when_their_safety_snapshot_reuses_damaged_chunks(tmp_path, make_settings):
    """The safety snapshot reuses stored chunks without re-reading them; if one was damaged
    in place, overwriting the live file would destroy the only good copy of it."""
    root = tmp_path / "project"
    make_database(root / "app.db", rows=3000)
    settings = make_settings(root)
    first = create_backup(settings)
    before_packs = set(_packs(settings))
    with closing(sqlite3.connect(root / "app.db")) as connection:
        connection.execute("UPDATE events SET label = 'changed after the first backup' WHERE id % 5 = 0")
        connection.commit()
    create_backup(settings)
    (second_pack,) = [path for path in _packs(settings) if path not in before_packs]
    _flip_bit(second_pack, 100)  # inside the first frame: only the live state's new pages
    live_before = file_state(root / "app.db")

    with pytest.raises(VerificationFailed, match="safety snapshot .* failed verification"):
        restore_backup(settings, first.snapshot.id, force=True)

    assert file_state(root / "app.db") == live_before
