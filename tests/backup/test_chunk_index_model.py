"""A randomized model test of the compact chunk index against a plain-dict reference.

The reference is a dict of locations: a chunk's first location
is the first pack (in adding order) that stored it; ``all_locations`` gives one
location per pack, in storing order; a pack listed again (a second index file, or
the same pack bytes written again) adds nothing. Pack contents are fixed per pack
id (packs are content addressed), and chunk ids are drawn from a small pool where
many share their first 8 bytes, so the prefix array's ties are exercised.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup import chunk_index
from backup.chunk_index import ChunkLocation, Index, encode_rows
from backup.pack import PackEntry

PREFIXES = [b"\x00" * 8, b"\x42" * 8, b"\xff" * 8, None]  # None: the id's own digest


def _chunk(number: int) -> str:
    digest = hashlib.sha256(b"chunk" + number.to_bytes(4, "big")).digest()
    prefix = PREFIXES[number % len(PREFIXES)]
    # Also ids differing only in their last byte.
    raw = (prefix + digest[8:]) if prefix is not None else digest
    if number % 5 == 0:
        raw = raw[:31] + bytes([number & 0xFF])
    return raw.hex()


def _pack(number: int) -> str:
    return hashlib.sha256(b"pack" + number.to_bytes(4, "big")).hexdigest()


CHUNKS = [_chunk(number) for number in range(24)]
PACKS = [_pack(number) for number in range(8)]


def _entries(pack_number: int, chunk_numbers: list[int]) -> list[PackEntry]:
    entries = []
    for position, number in enumerate(chunk_numbers):
        entries.append(
            PackEntry(
                chunk_id=CHUNKS[number],
                frame_offset=(position // 3) * 7000 + pack_number,
                frame_length=6000 + pack_number,
                offset_in_frame=(position % 3) * 100,
                length=100 + number,
                compression=position % 2,
            )
        )
    return entries


class Model:
    def __init__(self) -> None:
        self.order: list[tuple[str, PackEntry]] = []
        self.sizes: dict[str, int] = {}

    def add(self, pack_id: str, size: int, entries: list[PackEntry]) -> int:
        if pack_id in self.sizes:
            return 0
        self.sizes[pack_id] = size
        self.order += [(pack_id, entry) for entry in entries]
        return len(entries)

    def locations(self, chunk_id: str) -> list[ChunkLocation]:
        return [ChunkLocation(pack_id=pack_id, entry=entry) for pack_id, entry in self.order if entry.chunk_id == chunk_id]


def _check(index: Index, model: Model, probe_packs: list[set[str]]) -> None:
    assert len(index) == len(model.order)
    assert index.pack_sizes == model.sizes
    for chunk_id in CHUNKS:
        expected = model.locations(chunk_id)
        assert index.all_locations(chunk_id) == expected
        assert index.packs_holding(chunk_id) == [location.pack_id for location in expected]
        assert (chunk_id in index) == bool(expected)
        assert (chunk_id in index.locations) == bool(expected)
        assert index.first_location(chunk_id) == (expected[0] if expected else None)
        assert index.locations.get(chunk_id) == (expected[0] if expected else None)
        for packs in probe_packs:
            assert index.held_in(chunk_id, packs) == any(location.pack_id in packs for location in expected), (chunk_id, packs)
    raw_ids = [bytes.fromhex(chunk_id) for chunk_id in CHUNKS]
    for packs in probe_packs:
        expected_flags = [any(location.pack_id in packs for location in model.locations(chunk_id)) for chunk_id in CHUNKS]
        assert index.held_flags(raw_ids, {bytes.fromhex(pack_id) for pack_id in packs}) == expected_flags, packs


def _check_walks(index: Index, model: Model) -> None:
    assert list(index.every_location()) == [ChunkLocation(pack_id=pack_id, entry=entry) for pack_id, entry in model.order]
    present = sorted({entry.chunk_id for _, entry in model.order})
    assert list(index.locations) == present
    assert len(index.locations) == len(present)
    assert dict(index.locations.items()) == {chunk_id: model.locations(chunk_id)[0] for chunk_id in present}
    assert index.duplicates == {chunk_id: model.locations(chunk_id)[1:] for chunk_id in present if len(model.locations(chunk_id)) > 1}
    by_pack, by_frame = index.row_ranges()
    assert set(by_pack) == {pack_id for pack_id, _ in model.order}
    for pack_id, runs in by_pack.items():
        assert index.entries_in(runs) == [entry for pack, entry in model.order if pack == pack_id]
    frames: dict[tuple[str, int], list[PackEntry]] = {}
    for pack_id, entry in model.order:
        frames.setdefault((pack_id, entry.frame_offset), []).append(entry)
    assert {key: index.entries_in(runs) for key, runs in by_frame.items()} == frames


pack_contents = st.lists(st.lists(st.integers(0, len(CHUNKS) - 1), min_size=1, max_size=10, unique=True), min_size=len(PACKS), max_size=len(PACKS))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("pack"), st.integers(0, len(PACKS) - 1)),
        st.tuples(st.just("file"), st.lists(st.integers(0, len(PACKS) - 1), min_size=1, max_size=4, unique=True), st.booleans()),
        st.tuples(st.just("sort"), st.just(0)),
        st.tuples(st.just("walk"), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=int(os.environ.get("DBKEEP_MODEL_EXAMPLES", "1500")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    contents=pack_contents,
    steps=operations,
    merge_at=st.sampled_from([1, 2, 3, 5, 8, 32768]),
    cache=st.sampled_from([1, 2, 16384]),
    segment=st.sampled_from([1, 2, 3, 16384]),
)
def test_the_index_matches_a_plain_dict_model(contents: list[list[int]], steps: list[tuple], merge_at: int, cache: int, segment: int) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(chunk_index, "_MERGE_AT_LEAST", merge_at)
        patch.setattr(chunk_index, "_MERGE_SEGMENT", segment)
        patch.setattr(chunk_index, "_KEPT_ANSWERS", cache)
        index, model = Index(), Model()
        probe_packs = [set(PACKS[:3]), set(PACKS[3:]), {PACKS[0]}, set()]
        for step in steps:
            if step[0] == "pack":
                number = step[1]
                before = len(index)
                added = index.add_pack(PACKS[number], 1000 + number, _entries(number, contents[number]))
                count = model.add(PACKS[number], 1000 + number, _entries(number, contents[number]))
                assert added == range(before, before + count)
            elif step[0] == "file":
                numbers, as_bytearray = step[1], step[2]
                rows = b"".join(encode_rows(PACKS[number], 1000 + number, _entries(number, contents[number])) for number in numbers)
                before = len(index)
                added = index.add_rows(bytearray(rows) if as_bytearray else rows)
                count = sum(model.add(PACKS[number], 1000 + number, _entries(number, contents[number])) for number in numbers)
                assert added == range(before, before + count)
            elif step[0] == "sort":
                index._sort()
            else:
                _check_walks(index, model)
            _check(index, model, probe_packs)
        _check_walks(index, model)
        _check(index, model, probe_packs)


# -- the writer on a real repository ------------------------------------------------


def _writer_rounds(tmp_path, seed: int, passphrase: str | None = None) -> None:
    import random

    from backup.repository import Repository
    from backup.storage import LocalStorage

    rng = random.Random(seed)
    storage = LocalStorage(tmp_path / f"repo-{seed}")
    repository = Repository.init(storage, chunk_size=4096, compression_level=rng.choice([0, 3]), passphrase=passphrase)
    assert (repository.keys is not None) == (passphrase is not None)
    pool = [rng.randbytes(rng.randint(1, 600)) for _ in range(rng.randint(5, 60))]
    stored: dict[str, bytes] = {}
    sequences: list[list[int]] = []
    for _ in range(rng.randint(2, 7)):
        action = rng.random()
        if action < 0.2 and sequences:
            # Lose a pack, then store an earlier sequence again (same bytes, same pack id).
            packs = sorted((tmp_path / f"repo-{seed}" / "packs").rglob("*"))
            packs = [path for path in packs if path.is_file()]
            if packs:
                rng.choice(packs).unlink()
            picked = rng.choice(sequences)
        else:
            picked = [rng.randrange(len(pool)) for _ in range(rng.randint(0, 40))]
        sequences.append(picked)
        writer = repository.writer()
        ids = []
        for number in picked:
            chunk_id = repository.chunk_id(pool[number])
            writer.add(chunk_id, pool[number])
            ids.append(chunk_id)
            stored[chunk_id] = pool[number]
            assert writer.has(chunk_id)
            if rng.random() < 0.1:
                writer.close_frame()
        if rng.random() < 0.5:
            lists, _levels = writer.add_chunk_tree(bytes.fromhex("".join(ids)) if rng.random() < 0.5 else ids)
            for list_id in lists:
                assert writer.has(list_id)
        writer.finish()
        for chunk_id in ids:
            assert writer.has(chunk_id), "a chunk just stored must count as stored"
        # In memory and as read from disk, the index places every stored chunk where its bytes are.
        fresh = Repository.open(LocalStorage(tmp_path / f"repo-{seed}"), passphrase=lambda: passphrase)
        present = {path.name for path in (tmp_path / f"repo-{seed}" / "packs").rglob("*") if path.is_file()}
        for chunk_id in ids:
            for which in (repository, fresh):
                locations = which.index().all_locations(chunk_id)
                assert locations
                assert any(location.pack_id in present for location in locations), "a chunk reported stored is in no present pack"
                assert which.read_chunk(chunk_id) == stored[chunk_id]
        in_memory = sorted((location.pack_id, *location.entry.to_row()) for location in repository.index().every_location())
        on_disk = sorted((location.pack_id, *location.entry.to_row()) for location in fresh.index().every_location())
        assert in_memory == on_disk, "the index files hold exactly the rows the in-memory index was given"
        assert repository.index().pack_sizes == fresh.index().pack_sizes


@pytest.mark.parametrize("seed", range(40))
def test_writers_sharing_one_index_match_the_index_files(tmp_path, monkeypatch, seed: int) -> None:
    from backup import repository as repo_module

    monkeypatch.setattr(chunk_index, "_MERGE_AT_LEAST", [1, 3, 7, 32768][seed % 4])
    monkeypatch.setattr(chunk_index, "_MERGE_SEGMENT", [1, 5, 16384][seed % 3])
    monkeypatch.setattr(repo_module, "FRAME_TARGET_BYTES", 700 + 97 * (seed % 5))
    monkeypatch.setattr(repo_module, "PACK_TARGET_BYTES", 1500 + 311 * (seed % 7))
    _writer_rounds(tmp_path, seed)


@pytest.mark.parametrize("seed", range(6))
def test_writers_in_an_encrypted_repository_match_the_index_files(tmp_path, monkeypatch, seed: int) -> None:
    pytest.importorskip("cryptography")
    from backup import repository as repo_module

    monkeypatch.setattr(chunk_index, "_MERGE_AT_LEAST", [1, 3, 32768][seed % 3])
    monkeypatch.setattr(repo_module, "FRAME_TARGET_BYTES", 700 + 97 * (seed % 5))
    monkeypatch.setattr(repo_module, "PACK_TARGET_BYTES", 1500 + 311 * (seed % 7))
    _writer_rounds(tmp_path, seed, passphrase="model test passphrase")


@pytest.mark.parametrize("seed", range(8))
def test_a_batch_stores_each_chunk_once_while_packs_are_written_under_it(tmp_path, monkeypatch, seed: int) -> None:
    # add_chunks looks every chunk up once, before the batch; a chunk met again
    # later in the batch is then queued, or already in a pack written since.
    import random

    from backup import repository as repo_module
    from backup.repository import Repository
    from backup.storage import LocalStorage

    monkeypatch.setattr(repo_module, "FRAME_TARGET_BYTES", 700 + 97 * (seed % 5))
    monkeypatch.setattr(repo_module, "PACK_TARGET_BYTES", 1500 + 311 * (seed % 7))
    rng = random.Random(seed)
    repository = Repository.init(LocalStorage(tmp_path / "repo"), chunk_size=4096, compression_level=rng.choice([0, 3]))
    pool = [rng.randbytes(rng.randint(300, 600)) for _ in range(40)]
    batch = [rng.choice(pool) for _ in range(200)]
    with repository.writer() as writer:
        ids, new_chunks, new_bytes = writer.add_chunks(batch)
        written = [path for path in (tmp_path / "repo" / "packs").glob("*/*") if path.is_file()]  # published, not staged
        assert len(written) > 1, "packs must be written during the batch for this test to mean anything"
        writer.finish()
    distinct = {bytes(chunk) for chunk in batch}
    assert new_chunks == len(distinct)
    assert new_bytes == sum(len(chunk) for chunk in distinct)
    assert ids == b"".join(hashlib.sha256(chunk).digest() for chunk in batch)
    fresh = Repository.open(LocalStorage(tmp_path / "repo"))
    for chunk in distinct:
        chunk_id = hashlib.sha256(chunk).hexdigest()
        assert len(fresh.index().all_locations(chunk_id)) == 1
        assert fresh.read_chunk(chunk_id) == chunk
