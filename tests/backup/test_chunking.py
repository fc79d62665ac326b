"""Content-defined chunking: exact reassembly, bounds, and boundaries that survive edits."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup.chunking import content_defined_chunks

SMALL = {"average": 512, "minimum": 128, "maximum": 4096}


def dump_like(rows: int, seed: int = 1) -> bytes:
    """Text shaped like a pg_dump COPY block: one row per line, varied lengths."""
    rng = random.Random(seed)
    lines = [f"{i}\tcustomer {i} {rng.getrandbits(64):x}\t{'x' * rng.randint(0, 120)}\t2024-01-{1 + i % 28:02d}\n" for i in range(rows)]
    return "".join(lines).encode()


def split_randomly(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    pieces, position = [], 0
    while position < len(data):
        size = rng.choice([1, 2, 3, 7, 100, 4096, 70_000, 1_100_000])
        pieces.append(data[position : position + size])
        position += size
    return pieces


def chunk_ids(chunks: list[bytes]) -> set[str]:
    return {hashlib.sha256(chunk).hexdigest() for chunk in chunks}


def test_chunks_concatenate_to_the_input_and_respect_the_bounds():
    data = dump_like(20_000)
    chunks = list(content_defined_chunks([data], **SMALL))
    assert b"".join(chunks) == data
    assert all(128 <= len(chunk) <= 4096 for chunk in chunks[:-1])
    assert 300 < len(data) / len(chunks) < 1500


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_boundaries_do_not_depend_on_how_the_input_was_split(seed):
    data = dump_like(30_000) + b"INSERT INTO `t` VALUES " + b"),(".join(b"(%d,'v%d')" % (i, i) for i in range(40_000)) + b";\n"
    whole = list(content_defined_chunks([data], **SMALL))
    assert list(content_defined_chunks(split_randomly(data, seed), **SMALL)) == whole


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=20_000), cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=8))
def test_any_bytes_round_trip_whatever_the_split(data, cuts):
    positions = sorted({0, len(data), *[cut for cut in cuts if cut <= len(data)]})
    pieces = [data[start:end] for start, end in zip(positions, positions[1:])]
    chunks = list(content_defined_chunks(pieces, average=256, minimum=64, maximum=1024))
    assert b"".join(chunks) == data
    assert chunks == list(content_defined_chunks([data], average=256, minimum=64, maximum=1024))


def test_a_row_inserted_in_the_middle_changes_only_nearby_chunks():
    before = dump_like(20_000)
    lines = before.splitlines(keepends=True)
    after = b"".join(lines[:10_000] + [b"10000.5\ta new row\t\t2024-02-01\n"] + lines[10_000:])
    old = chunk_ids(list(content_defined_chunks([before], **SMALL)))
    new_chunks = list(content_defined_chunks([after], **SMALL))
    changed = [chunk for chunk in new_chunks if hashlib.sha256(chunk).hexdigest() not in old]
    assert 1 <= len(changed) <= 3
    assert sum(map(len, changed)) < 3 * 4096


def test_mysql_single_line_inserts_are_cut_between_tuples():
    """mysqldump writes a whole extended INSERT on one line: the tuples still anchor boundaries."""
    tuples = [b"(%d,'name %d','%s')" % (i, i, b"y" * (i % 50)) for i in range(30_000)]
    before = b"INSERT INTO `t` VALUES " + b",".join(tuples) + b";\n"
    changed_tuples = list(tuples)
    changed_tuples[15_000] = b"(15000,'changed','')"
    after = b"INSERT INTO `t` VALUES " + b",".join(changed_tuples) + b";\n"
    old = chunk_ids(list(content_defined_chunks([before], **SMALL)))
    new = [chunk for chunk in content_defined_chunks([after], **SMALL) if hashlib.sha256(chunk).hexdigest() not in old]
    assert sum(map(len, new)) < 3 * 4096


def test_a_huge_value_without_separators_streams_in_maximum_sized_chunks():
    """A 20 MB bytea line is passed on in bounded chunks before its end is seen."""
    pieces = (b"\\\\x" + b"ab" * 500_000 if index == 0 else b"cd" * 500_000 for index in range(20))
    produced = 0
    for chunk in content_defined_chunks(pieces, average=8192, minimum=2048, maximum=65536):
        assert len(chunk) <= 65536
        produced += len(chunk)
    assert produced == 3 + 20 * 1_000_000


def test_unchanged_prefix_and_suffix_around_an_edit_keep_their_chunks():
    before = dump_like(20_000, seed=7)
    after = before.replace(b"customer 12345 ", b"customer 12345 renamed ", 1)
    old_chunks = list(content_defined_chunks([before], **SMALL))
    new_chunks = list(content_defined_chunks([after], **SMALL))
    shared = chunk_ids(old_chunks) & chunk_ids(new_chunks)
    assert len(shared) >= len(old_chunks) - 3


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError):
        list(content_defined_chunks([b"x"], average=100, minimum=200, maximum=300))
