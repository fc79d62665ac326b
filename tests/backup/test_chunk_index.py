"""The in-memory chunk index: lookups stay exact however the rows arrive.

Ids are built by hand so that several share their first 8 bytes (the sort key),
which real SHA-256 ids almost never do; every answer must still compare whole ids.
"""

from __future__ import annotations

import hashlib

import pytest

from backup import chunk_index
from backup.chunk_index import Index, encode_rows
from backup.pack import PackEntry


def _id(number: int, prefix: bytes | None = None) -> str:
    digest = hashlib.sha256(number.to_bytes(8, "big")).digest()
    return ((prefix + digest[len(prefix) :]) if prefix else digest).hex()


def _entry(chunk_id: str, position: int) -> PackEntry:
    return PackEntry(chunk_id=chunk_id, frame_offset=(position // 4) * 1000, frame_length=900, offset_in_frame=(position % 4) * 200, length=200, compression=1)


def _pack(number: int) -> str:
    return hashlib.sha256(b"pack" + bytes([number])).hexdigest()


def test_ids_sharing_a_prefix_are_told_apart_in_both_the_sorted_and_the_recent_rows() -> None:
    shared = b"\x42" * 8
    first, second, absent = _id(1, shared), _id(2, shared), _id(3, shared)
    index = Index()
    index.add_pack(_pack(1), 5000, [_entry(first, 0)])  # few rows: they wait in the recent dict
    index.add_pack(_pack(2), 6000, [_entry(second, 1)])
    for _ in range(2):
        assert index.locations[first].pack_id == _pack(1)
        assert index.locations[second].pack_id == _pack(2)
        assert index.locations[second].entry == _entry(second, 1)
        assert absent not in index and index.locations.get(absent) is None
        assert not index.held_in(absent, {_pack(1), _pack(2)})
        assert index.held_in(second, {_pack(2)}) and not index.held_in(second, {_pack(1)})
        index._sort()  # the same answers once every row is in the sorted arrays


def test_a_chunk_in_two_packs_has_both_locations_first_stored_first() -> None:
    chunk = _id(7)
    index = Index()
    index.add_pack(_pack(1), 5000, [_entry(chunk, 0)])
    index.add_pack(_pack(2), 6000, [_entry(chunk, 3)])
    assert [location.pack_id for location in index.all_locations(chunk)] == [_pack(1), _pack(2)]
    assert index.locations[chunk].pack_id == _pack(1)
    assert index.duplicates == {chunk: [index.all_locations(chunk)[1]]}
    assert index.pack_sizes == {_pack(1): 5000, _pack(2): 6000}


def test_a_pack_listed_again_keeps_its_first_rows() -> None:
    chunks = [_id(number) for number in range(3)]
    rows = encode_rows(_pack(1), 5000, [_entry(chunk, position) for position, chunk in enumerate(chunks)])
    index = Index()
    index.add_rows(rows)
    again = index.add_rows(rows + encode_rows(_pack(2), 10, [_entry(_id(99), 0)]))
    assert len(again) == 1 and len(index) == 4
    assert all(len(index.all_locations(chunk)) == 1 for chunk in chunks)
    assert sorted(index.locations) == sorted(chunks + [_id(99)])


def test_many_rows_added_pack_by_pack_merge_into_the_sorted_arrays_without_losing_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunk_index, "_MERGE_AT_LEAST", 8)
    index = Index()
    expected: dict[str, tuple[str, PackEntry]] = {}
    for pack_number in range(40):
        entries = [_entry(_id(pack_number * 10 + position), position) for position in range(10)]
        index.add_pack(_pack(pack_number), 1000 + pack_number, entries)
        expected.update({entry.chunk_id: (_pack(pack_number), entry) for entry in entries})
    assert len(index._keys) > 0 and len(index._recent) < len(expected)  # both parts are in use
    assert len(index) == len(expected) == len(index.locations)
    for chunk_id, (pack_id, entry) in expected.items():
        location = index.locations[chunk_id]
        assert (location.pack_id, location.entry) == (pack_id, entry)
    assert sorted((location.pack_id, location.entry.chunk_id) for location in index.every_location()) == sorted((pack_id, chunk_id) for chunk_id, (pack_id, _) in expected.items())


def test_row_ranges_give_each_pack_and_frame_its_entries() -> None:
    index = Index()
    chunks = [_id(number) for number in range(8)]
    index.add_pack(_pack(1), 5000, [_entry(chunk, position) for position, chunk in enumerate(chunks)])
    by_pack, by_frame = index.row_ranges()
    assert [entry.chunk_id for entry in index.entries_in(by_pack[_pack(1)])] == chunks
    assert sorted(by_frame) == [(_pack(1), 0), (_pack(1), 1000)]
    assert [entry.chunk_id for entry in index.entries_in(by_frame[(_pack(1), 1000)])] == chunks[4:]


def test_malformed_ids_are_simply_absent() -> None:
    index = Index()
    index.add_pack(_pack(1), 5000, [_entry(_id(1), 0)])
    for bogus in ("", "zz" * 32, "ab", _id(1)[:-1] + "g"):
        assert bogus not in index
        assert index.locations.get(bogus) is None


def test_held_flags_answer_as_held_in_does_for_sorted_and_recent_rows_and_unusable_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunk_index, "_MERGE_AT_LEAST", 16)
    shared = b"\x07" * 8
    index = Index()
    stored: list[str] = []
    for pack_number in range(6):
        entries = [_entry(_id(pack_number * 10 + position, shared if position == 0 else None), position) for position in range(10)]
        index.add_pack(_pack(pack_number), 1000, entries)
        stored += [entry.chunk_id for entry in entries]
    index.add_pack(_pack(9), 1000, [_entry(stored[0], 0), _entry(_id(999), 1)])  # a second copy, and rows left recent
    assert index._recent, "some rows must still wait unsorted for this test to mean anything"
    asked = stored + [_id(999), _id(5000), _id(5001, shared)]

    def raw_flags(chunk_ids: list[str], packs: set[str]) -> list[bool]:
        return index.held_flags([bytes.fromhex(chunk_id) for chunk_id in chunk_ids], {bytes.fromhex(pack) for pack in packs})

    for usable in ({_pack(number) for number in range(7)}, {_pack(1), _pack(9)}, set()):
        assert raw_flags(asked, usable) == [index.held_in(chunk_id, usable) for chunk_id in asked]
    assert raw_flags([stored[0]], {_pack(9)}) == [True]
    assert raw_flags([_id(5001, shared)], {_pack(0)}) == [False]
    assert raw_flags([_id(999)], {_pack(9)}) == [True], "a row still waiting unsorted is found"


def test_a_pack_listed_again_with_other_rows_keeps_every_row_and_names_the_disagreement() -> None:
    first, second = _id(1), _id(2)
    index = Index()
    index.add_rows(encode_rows(_pack(1), 100, [_entry(first, 0)]))
    index.add_rows(encode_rows(_pack(1), 200, [_entry(first, 0), _entry(second, 1)]))
    assert second in index and first in index
    assert len(index.all_locations(first)) == 1
    assert any("size 200" in problem for problem in index.problems)
    assert any("other rows" in problem for problem in index.problems)


def test_a_half_read_walk_does_not_block_adding_rows() -> None:
    index = Index()
    index.add_pack(_pack(1), 100, [_entry(_id(number), number) for number in range(3)])
    walk = index.every_location()
    next(walk)
    index.add_pack(_pack(2), 100, [_entry(_id(7), 0)])
    assert _id(7) in index


def test_the_callers_rows_are_left_as_they_were() -> None:
    rows = bytearray(encode_rows(_pack(1), 100, [_entry(_id(1), 0)]))
    index = Index()
    index.add_rows(rows)
    index.add_pack(_pack(2), 100, [_entry(_id(2), 0)])
    assert rows == encode_rows(_pack(1), 100, [_entry(_id(1), 0)])


def test_one_file_given_in_pieces_holds_its_packs_once_however_the_pieces_cut_them() -> None:
    # A pack's rows may be split between two pieces of one index file: its rows
    # in the second piece are the same file's, not a second listing of the pack.
    file_rows = b"".join(encode_rows(_pack(number), 1000 + number, [_entry(_id(number * 100 + position), position) for position in range(7)]) for number in range(3))
    size = chunk_index.ROW.size
    pieces = [file_rows[start : start + 5 * size] for start in range(0, len(file_rows), 5 * size)]
    index = Index()
    added = index.add_file_rows(pieces)
    assert index.problems == []
    assert len(added) == 21
    assert all(index.first_location(_id(number * 100 + position)).pack_id == _pack(number) for number in range(3) for position in range(7))
    assert index.row_bytes(added) == file_rows
    assert index.pack_sizes == {_pack(number): 1000 + number for number in range(3)}


def test_ids_at_the_edges_of_the_prefix_buckets_are_found_and_absent_ones_are_not() -> None:
    edges = [0, 1, (1 << 63) - 1, 1 << 63, (1 << 63) + 1, (1 << 64) - 2, (1 << 64) - 1]
    stored = [_id(number, edge.to_bytes(8, "big")) for number, edge in enumerate(edges)]
    stored += [_id(100 + number) for number in range(300)]  # enough rows for many buckets
    absent = [_id(1000 + number, edge.to_bytes(8, "big")) for number, edge in enumerate(edges)] + [_id(5000 + number) for number in range(50)]
    index = Index()
    index.add_pack(_pack(1), 1000, [_entry(chunk_id, position) for position, chunk_id in enumerate(stored)])
    index._sort()
    assert len(index._starts) > 8, "the index must have several buckets for this test to mean anything"
    usable = {bytes.fromhex(_pack(1))}
    assert index.held_flags([bytes.fromhex(chunk_id) for chunk_id in stored], usable) == [True] * len(stored)
    assert index.held_flags([bytes.fromhex(chunk_id) for chunk_id in absent], usable) == [False] * len(absent)
    assert all(index.held_in(chunk_id, {_pack(1)}) for chunk_id in stored)
    assert [index.first_location(chunk_id) is not None for chunk_id in stored + absent] == [True] * len(stored) + [False] * len(absent)


def test_rows_waiting_to_be_sorted_stay_findable_when_the_sort_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunk_index, "_MERGE_AT_LEAST", 10**9)
    index = Index()
    stored = [_id(number) for number in range(40)]
    index.add_pack(_pack(1), 1000, [_entry(chunk_id, position) for position, chunk_id in enumerate(stored)])

    def no_memory(*_arguments, **_keywords):
        raise MemoryError

    monkeypatch.setattr(chunk_index, "_bucket_starts", no_memory)
    with pytest.raises(MemoryError):
        index._sort()
    assert all(chunk_id in index for chunk_id in stored)
    assert index.held_flags([bytes.fromhex(chunk_id) for chunk_id in stored], {bytes.fromhex(_pack(1))}) == [True] * len(stored)
