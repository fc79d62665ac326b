"""Frames: large for runs of new chunks, small for scattered ones, and read once per batch."""

from __future__ import annotations

import errno
import hashlib
import random

import pytest

from backup import create_backup, restore_backup, verification, verify_backup
from backup import pack as packformat
from backup.errors import StorageError
from backup.fsio import FaultPlan, inject
from backup.repository import (
    FRAME_TARGET_BYTES,
    READ_BATCH_BYTES,
    SCATTERED_FRAME_BYTES,
    Repository,
)
from backup.storage import LocalStorage

CHUNK = 4096


def _frames(settings, snapshot) -> dict[tuple[str, int], int]:
    """(pack id, frame offset) -> decompressed bytes the frame holds, for the snapshot's data chunks."""
    repository = Repository.open(LocalStorage(settings.repository))
    entry = snapshot.files[0]
    frames: dict[tuple[str, int], int] = {}
    for chunk_id in repository.chunk_ids_of(entry.chunk_lists, levels=entry.chunk_list_levels):
        location = repository.locate(chunk_id)[0]
        key = (location.pack_id, location.entry.frame_offset)
        frames[key] = max(frames.get(key, 0), location.entry.offset_in_frame + location.entry.length)
    return frames


def test_new_data_fills_large_frames_and_scattered_changes_get_small_ones(tmp_path, make_settings):
    root = tmp_path / "project"
    root.mkdir()
    data = bytearray(random.Random(3).randbytes(3 * FRAME_TARGET_BYTES))
    (root / "data.bin").write_bytes(data)
    settings = make_settings(root, include=["data.bin"], compression_level=0)
    first = create_backup(settings).snapshot
    first_frames = _frames(settings, first)

    for position in range(0, len(data), 64 * CHUNK):  # one chunk in 64 changes
        data[position : position + 16] = random.Random(position).randbytes(16)
    (root / "data.bin").write_bytes(data)
    second = create_backup(settings).snapshot
    new_frames = {key: size for key, size in _frames(settings, second).items() if key not in first_frames}

    assert len(first_frames) == 3 and all(size == FRAME_TARGET_BYTES for size in first_frames.values())
    assert len(new_frames) > 1
    assert all(size <= SCATTERED_FRAME_BYTES + CHUNK for size in new_frames.values()), sorted(new_frames.values())


def test_blocks_moved_inside_a_file_restore_with_each_frame_decompressed_once_per_batch(tmp_path, make_settings, monkeypatch):
    root = tmp_path / "project"
    root.mkdir()
    frames = 6
    data = random.Random(4).randbytes(frames * FRAME_TARGET_BYTES)
    (root / "data.bin").write_bytes(data)
    settings = make_settings(root, include=["data.bin"], compression_level=0)
    create_backup(settings)
    blocks = [data[position : position + CHUNK] for position in range(0, len(data), CHUNK)]
    random.Random(5).shuffle(blocks)
    shuffled = b"".join(blocks)
    (root / "data.bin").write_bytes(shuffled)
    second = create_backup(settings)
    assert second.stats.new_chunks < 200, "only the chunk lists are new: every block was stored before"

    decompressed: list[int] = []
    original = packformat.decompress_frame
    monkeypatch.setattr(packformat, "decompress_frame", lambda frame, compression: decompressed.append(len(frame)) or original(frame, compression))
    restore_backup(settings, second.snapshot.id, target=tmp_path / "restored", force=True)
    restored_reads = len(decompressed)
    decompressed.clear()
    report = verify_backup(settings, second.snapshot.id, read_data=True)

    assert hashlib.sha256((tmp_path / "restored" / "data.bin").read_bytes()).hexdigest() == hashlib.sha256(shuffled).hexdigest()
    assert report.ok
    # One read per chunk (as a frame cache smaller than the file gives) would be
    # thousands; a batch needs each of its frames decompressed once.
    for reads, batch_bytes in ((restored_reads, READ_BATCH_BYTES), (len(decompressed), verification.VERIFY_BATCH_BYTES)):
        batches = -(-len(data) // batch_bytes)
        assert reads <= (frames + 2) * batches + 16, reads


def _pack_files(settings) -> list:
    return sorted(path for path in (settings.repository / "packs").rglob("*") if path.is_file())


def test_a_damaged_pack_under_the_name_of_a_new_one_is_replaced_by_the_intact_bytes(tmp_path, make_settings):
    root = tmp_path / "project"
    root.mkdir()
    (root / "data.bin").write_bytes(random.Random(5).randbytes(40 * CHUNK))
    settings = make_settings(root, include=["data.bin"])
    create_backup(settings)
    [pack] = _pack_files(settings)
    intact = pack.read_bytes()
    pack.write_bytes(intact[: len(intact) // 2])  # truncated: its chunks count as not stored

    create_backup(settings)  # stores the same frames again: the same pack, by name

    assert _pack_files(settings) == [pack]
    assert pack.read_bytes() == intact
    assert not list(settings.repository.rglob(".dbkeep-tmp-*"))
    assert verify_backup(settings, read_data=True).ok


@pytest.mark.parametrize("failing_write", [3, 4], ids=["first-frame", "second-frame"])
def test_a_backup_that_fails_midway_leaves_no_half_written_pack(tmp_path, make_settings, failing_write: int):
    """Writes 1-2 are the lock records; from 3 on, the frames go to the pack's staged file."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "data.bin").write_bytes(random.Random(6).randbytes(3 * FRAME_TARGET_BYTES))
    settings = make_settings(root, include=["data.bin"], compression_level=0)
    with inject(FaultPlan(fail_op="write", fail_errno=errno.EIO, fail_at=failing_write)), pytest.raises(StorageError):
        create_backup(settings)
    assert not list(settings.repository.rglob(".dbkeep-tmp-*"))
    assert _pack_files(settings) == []
    assert create_backup(settings).snapshot is not None


def test_unchecked_file_reads_give_the_same_bytes_as_checked_chunk_reads(tmp_path, make_settings):
    root = tmp_path / "project"
    root.mkdir()
    data = bytearray(random.Random(8).randbytes(2 * FRAME_TARGET_BYTES + 3 * CHUNK + 17))
    (root / "data.bin").write_bytes(data)
    settings = make_settings(root, include=["data.bin"])
    create_backup(settings)
    for position in range(0, len(data), 37 * CHUNK):  # scattered changes: runs across packs and frames
        data[position : position + 8] = random.Random(position).randbytes(8)
    data[CHUNK : 2 * CHUNK] = data[5 * CHUNK : 6 * CHUNK]  # a chunk repeated within the file
    (root / "data.bin").write_bytes(data)
    snapshot = create_backup(settings).snapshot
    repository = Repository.open(LocalStorage(settings.repository))
    entry = snapshot.files[0]
    unchecked = b"".join(bytes(piece) for piece in repository.read_file_unchecked(entry.chunk_lists, levels=entry.chunk_list_levels))
    checked = b"".join(repository.read_file_chunks(entry.chunk_lists, levels=entry.chunk_list_levels))
    assert unchecked == checked == bytes(data)


def test_unchecked_file_read_of_a_chunk_missing_from_the_index_names_it(tmp_path, make_settings, monkeypatch):
    from backup.errors import CorruptData

    root = tmp_path / "project"
    root.mkdir()
    (root / "data.bin").write_bytes(random.Random(9).randbytes(40 * CHUNK))
    settings = make_settings(root, include=["data.bin"])
    snapshot = create_backup(settings).snapshot
    repository = Repository.open(LocalStorage(settings.repository))
    entry = snapshot.files[0]
    lists = list(repository.leaf_lists_of(entry.chunk_lists, levels=entry.chunk_list_levels))
    foreign = hashlib.sha256(b"never stored").digest()
    forged = lists[0][:32] + foreign + lists[0][64:]
    monkeypatch.setattr(repository, "leaf_lists_of", lambda *_, **__: iter([forged, *lists[1:]]))
    with pytest.raises(CorruptData, match=foreign.hex()):
        b"".join(bytes(piece) for piece in repository.read_file_unchecked(entry.chunk_lists, levels=entry.chunk_list_levels))


def test_a_writer_whose_pack_failed_refuses_to_finish_and_publishes_nothing(tmp_path, make_settings):
    root = tmp_path / "project"
    root.mkdir()
    (root / "small.bin").write_bytes(b"first")
    settings = make_settings(root, include=["small.bin"])
    create_backup(settings)
    packs_before = _pack_files(settings)
    repository = Repository.open(LocalStorage(settings.repository))
    chunks = [random.Random(number).randbytes(CHUNK) for number in range(2 * FRAME_TARGET_BYTES // CHUNK)]
    with repository.writer() as writer:
        writer.set_compression_level(0)
        with inject(FaultPlan(fail_op="write", fail_errno=errno.EIO, fail_at=1)), pytest.raises(StorageError):
            for chunk in chunks:
                writer.add(hashlib.sha256(chunk).hexdigest(), chunk)
            writer.finish()
        with pytest.raises(StorageError, match="failed earlier"):
            writer.finish()  # once more, with the disk healthy: the half-built pack must not be published
    assert _pack_files(settings) == packs_before
    assert not list(settings.repository.rglob(".dbkeep-tmp-*"))
    assert verify_backup(settings, read_data=True).ok
