"""The merged chunk index in memory: chunk id -> the packs that hold the chunk.

Owns: holding every index row compactly and answering lookups. Knows nothing of
storage or of the index file format beyond its fixed rows (repository.py reads
and checks the files; docs/format.md specifies them).

A repository of a 1 GiB database holds about 262,000 chunks of 4 KiB, and every
backup, verify and restore loads the whole index. A dict of per-chunk objects cost
about 380 bytes a chunk (100 MiB at that size, and a second of building); here each
index file row sits in one bytearray as a 57-byte held row (the pack's number among
the packs held instead of its 32-byte id and 8-byte size, which every row of a pack
repeats), ordered by an array of 8-byte id prefixes: about 69 bytes a chunk, built
without an object per row. Lookups bisect the prefix array, then compare the whole
id, so two ids sharing a prefix are told apart. ``ChunkLocation`` objects are made
only for the chunks a caller asks about.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from .pack import ENTRY, PackEntry

#: One row of an index file: pack id, pack size, then a pack header entry (chunk id first).
ROW = struct.Struct("<32sQ" + ENTRY.format[1:])
_PACK_AND_SIZE = struct.Struct("<32sQ53x")
#: One row as held: the pack's number (``Index._packs``), then the pack header entry.
HELD = struct.Struct("<I" + ENTRY.format[1:])
#: A held pack as ``Index.held_state`` gives it: raw pack id and size.
HELD_PACK = struct.Struct("<32sQ")
_PACK_NUMBER = struct.Struct("<I53x")
#: Where the pack header entry starts in an index file row.
_ENTRY_IN_ROW = 40
#: The chunk id's first 8 bytes, big-endian: the same number as ``int(chunk_id[:16], 16)``.
_PREFIX = struct.Struct(">4xQ45x")
_PACK_AND_FRAME = struct.Struct("<I32xQ13x")
_CHUNK_ID_AT = 4
#: What a reader needs of a row: pack number, frame offset, offset in the frame, length.
_RUN_PLACE = struct.Struct("<I32xQ4xII1x")
#: Where the pack header entry starts in a held row, and a chunk's place in its frame.
_ENTRY_AT = 4
_MEMBER = struct.Struct("<4x32s12xII1x")
#: Index file rows converted to held rows per step, so no list spans a whole file.
_CONVERT_ROWS = 8192
_SPLIT_ROW = struct.Struct("<32s8x53s")
_SPLIT_HELD = struct.Struct("<I53s")
#: Rows added one pack at a time (by a writer) wait in a small dict until there are
#: this many, or half as many as are sorted already; then all are sorted together.
_MERGE_AT_LEAST = 32768
_ROW_BITS = 32
#: Sorted rows merged with the new ones per step (see ``Index._sort``).
_MERGE_SEGMENT = 16384
#: At most 2**_BUCKET_BITS buckets of id prefixes (see _bucket_starts).
_BUCKET_BITS = 16
#: How many answers of ``first_location`` are kept (about 250 bytes each).
_KEPT_ANSWERS = 16384


def _bucket_starts(keys: array) -> tuple[int, array]:
    """(shift, starts): the sorted ``keys`` whose top bits ``key >> shift`` equal b lie in [starts[b], starts[b + 1]).

    Bisecting an array boxes every element it compares: about 1 us for 18 steps in
    262,144 keys. With 8 to 16 keys a bucket 3 or 4 steps are left; the starts cost
    4 bytes a bucket and one bisection each to build (32,768 buckets at that size).
    """
    bits = max(1, min(_BUCKET_BITS, len(keys).bit_length() - 4))
    shift = 64 - bits
    starts = array("I", (bisect.bisect_left(keys, bucket << shift) for bucket in range(1 << bits)))
    starts.append(len(keys))
    return shift, starts


def split_ids(data: bytes) -> list[bytes]:
    """A chunk list's bytes as its raw 32-byte ids (the caller checked the length)."""
    return [data[position : position + 32] for position in range(0, len(data), 32)]


def hex_ids(data: bytes) -> list[str]:
    """A chunk list's bytes as its ids in hex."""
    return [raw.hex() for raw in split_ids(data)]


def join_run(runs: list[list], run: list) -> None:
    """Append a run (as ``Index.add_runs`` makes them) to ``runs``, or extend the last one when adjacent in one frame.

    ``Index.add_runs`` does the same inline, one row at a time, on its hot path.
    """
    last = runs[-1] if runs else None
    if last is not None and last[0] == run[0] and last[1].frame_offset == run[1].frame_offset and last[3] == run[2]:
        last[3] = run[3]
    else:
        runs.append(run)


def add_location_run(location: ChunkLocation, runs: list[list]) -> int:
    """``Index.add_runs`` for one chunk given by its location (a copy other than its first)."""
    entry = location.entry
    join_run(runs, [location.pack_id, entry, entry.offset_in_frame, entry.offset_in_frame + entry.length])
    return entry.length


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkLocation:
    pack_id: str
    entry: PackEntry


def encode_rows(pack_id: str, size: int, entries: Iterable[PackEntry]) -> bytes:
    """The index rows of one pack's entries."""
    raw_pack_id = bytes.fromhex(pack_id)
    return b"".join(
        ROW.pack(
            raw_pack_id,
            size,
            bytes.fromhex(entry.chunk_id),
            entry.frame_offset,
            entry.frame_length,
            entry.offset_in_frame,
            entry.length,
            entry.compression,
        )
        for entry in entries
    )


class Index:
    """Chunk id -> location, merged from every index file.

    ``locations`` maps each chunk id to its first location (the copy read first);
    ``all_locations`` also gives the further copies of a chunk stored again after
    its first pack was lost, tried in turn. Rows must be checked before they are
    added (repository.index_row_pieces does).
    """

    __slots__ = ("pack_sizes", "files", "problems", "locations", "_rows", "_count", "_keys", "_order", "_shift", "_starts", "_recent", "_packs", "_pack_ids", "_numbers", "_lookups")

    def __init__(self) -> None:
        self.pack_sizes: dict[str, int] = {}
        self.files: list[str] = []
        self.problems: list[str] = []
        self.locations = Locations(self)
        self._rows = bytearray()
        self._count = 0
        # Rows [0, len(_keys)) in id-prefix order: prefix in _keys, row number in _order.
        self._keys = array("Q")
        self._order = array("I")
        # Where each bucket of prefixes starts in _keys, so a lookup bisects a few
        # rows instead of all of them (see _bucket_starts).
        self._shift, self._starts = _bucket_starts(self._keys)
        # Rows added since the last sort (the rows from len(_keys) on): prefix -> row
        # number, or a list of them when several share the prefix, oldest first.
        self._recent: dict[int, int | list[int]] = {}
        # Pack number (as held rows give it) -> raw pack id and hex pack id, and raw
        # pack id -> its number as the 4 bytes a held row starts with.
        self._packs: list[bytes] = []
        self._pack_ids: list[str] = []
        self._numbers: dict[bytes, bytes] = {}
        self._lookups: dict[str, ChunkLocation] = {}

    def __len__(self) -> int:
        """How many rows are held (a chunk stored in two packs counts twice)."""
        return self._count

    # -- adding ---------------------------------------------------------------------

    def add_rows(self, rows: bytes | bytearray | memoryview) -> range:
        """Add checked index file rows (whole ROW.size records); returns the row numbers they got.

        A row already held (a pack listed again by a second index file, or
        written again with the same bytes) is not added twice. A pack listed again
        with other rows or another size is damage or forgery: the new rows are
        added (every listed copy stays findable, as when the index files are
        merged) and the disagreement is recorded in ``problems``.
        """
        first = self._count
        self._append(rows, set())
        return self._settle(first)

    def add_file_rows(self, pieces: Iterable[bytes | bytearray | memoryview]) -> range:
        """``add_rows`` for one index file's rows given in pieces of whole rows.

        The rows are sorted (or made findable) once, after the last piece, so a
        whole file is never held twice, as index file rows and as held rows.
        """
        first = self._count
        fresh: set[bytes] = set()
        for piece in pieces:
            self._append(piece, fresh)
        return self._settle(first)

    def _append(self, rows: bytes | bytearray | memoryview, fresh: set[bytes]) -> None:
        """Hold ``rows`` after the others; ``fresh`` collects the packs first met in the same call."""
        if not rows:
            return
        known = self._numbers
        seen_before = False
        for raw_pack_id, size in _PACK_AND_SIZE.iter_unpack(rows):
            if raw_pack_id in fresh:
                continue
            if raw_pack_id in known:
                seen_before = True
                continue
            fresh.add(raw_pack_id)
            self._number_pack(raw_pack_id, size)
        if seen_before:
            rows = self._rows_not_held(rows, fresh)
        self._hold(rows)
        self._count += len(rows) // ROW.size

    def _number_pack(self, raw_pack_id: bytes, size: int) -> None:
        """Give a pack not held yet the next pack number."""
        pack_id = raw_pack_id.hex()
        self.pack_sizes[pack_id] = size
        self._numbers[raw_pack_id] = len(self._packs).to_bytes(4, "little")
        self._packs.append(raw_pack_id)
        self._pack_ids.append(pack_id)

    def _hold(self, rows: bytes | bytearray | memoryview) -> None:
        """Append index file rows to the held rows: the pack's number instead of its id and size."""
        numbers, split, held = self._numbers, _SPLIT_ROW.iter_unpack, self._rows
        step = ROW.size * _CONVERT_ROWS
        with memoryview(rows) as view:
            for start in range(0, len(view), step):
                held += b"".join([numbers[raw_pack_id] + entry for raw_pack_id, entry in split(view[start : start + step])])

    def _settle(self, first: int) -> range:
        """Make the rows from ``first`` on findable: sorted in, or waiting in ``_recent``."""
        added = range(first, self._count)
        if self._count - len(self._keys) >= max(_MERGE_AT_LEAST, len(self._keys) // 2):
            self._sort()
        elif added:
            with memoryview(self._rows) as rows:
                self._wait_unsorted(rows[first * HELD.size :], first)
        return added

    def _wait_unsorted(self, rows: bytes | bytearray | memoryview, first: int) -> None:
        """Make held rows numbered from ``first`` findable before they are sorted (``_recent``)."""
        recent = self._recent
        for row, (prefix,) in enumerate(_PREFIX.iter_unpack(rows), first):
            held = recent.get(prefix)
            if held is None:
                recent[prefix] = row
            elif isinstance(held, int):
                recent[prefix] = [held, row]
            else:
                held.append(row)

    def _rows_not_held(self, rows: bytes | bytearray | memoryview, fresh: set[bytes]) -> bytes:
        """The rows of ``rows`` that are not held yet; records a pack listed with other rows or size.

        Rows of the packs in ``fresh`` (first met by this same call) are kept as they are.
        """
        kept = bytearray()
        for start in range(0, len(rows), ROW.size):
            row = bytes(rows[start : start + ROW.size])
            raw_pack_id = row[:32]
            if raw_pack_id in fresh:
                kept += row
                continue
            pack_id = raw_pack_id.hex()
            size = int.from_bytes(row[32:40], "little")
            if size != self.pack_sizes[pack_id]:
                self.problems.append(f"pack {pack_id} is listed with size {size} and with size {self.pack_sizes[pack_id]} by two index files: one of them is damaged")
            as_held = self._numbers[raw_pack_id] + row[_ENTRY_IN_ROW:]
            held_rows = (self._rows[held * HELD.size : (held + 1) * HELD.size] for held in self._rows_of(row[_ENTRY_IN_ROW : _ENTRY_IN_ROW + 32].hex()))
            if any(held == as_held for held in held_rows):
                continue  # the same entry (a size disagreement is reported above)
            self.problems.append(f"pack {pack_id} is listed with other rows by two index files: one of them is damaged")
            kept += row
        return bytes(kept)

    def row_bytes(self, rows: range) -> bytearray:
        """Consecutive rows, as ``add_rows`` numbered them, as index file rows."""
        packs, pack_ids, sizes = self._packs, self._pack_ids, self.pack_sizes
        prefixes: dict[int, bytes] = {}
        out = bytearray()
        with memoryview(self._rows) as view:
            for number, entry in _SPLIT_HELD.iter_unpack(view[rows.start * HELD.size : rows.stop * HELD.size]):
                prefix = prefixes.get(number)
                if prefix is None:
                    prefix = prefixes[number] = packs[number] + sizes[pack_ids[number]].to_bytes(8, "little")
                out += prefix
                out += entry
        return out

    # -- whole state (indexcache) ----------------------------------------------------

    def held_state(self) -> tuple[bytes, bytearray, array, array, int, array]:
        """(packs, held rows, sorted prefixes, their row numbers, shift, bucket starts): all ``from_held_state`` needs.

        ``packs`` is each held pack's raw id and 8-byte size, in pack-number order.
        The rows after the sorted ones are still waiting (``_recent``); they are
        made findable again when loaded, and sorted in once enough have come.
        """
        packs = b"".join(HELD_PACK.pack(raw, self.pack_sizes[pack_id]) for raw, pack_id in zip(self._packs, self._pack_ids))
        return packs, self._rows, self._keys, self._order, self._shift, self._starts

    @classmethod
    def from_held_state(cls, packs: bytes, rows: bytearray, keys: array, order: array, shift: int, starts: array, files: list[str]) -> Index:
        """An index holding what ``held_state`` gave; ValueError if the parts do not fit together."""
        count, extra = divmod(len(rows), HELD.size)
        pack_count, pack_extra = divmod(len(packs), HELD_PACK.size)
        sorted_count = len(keys)
        if extra or pack_extra or len(order) != sorted_count or sorted_count > count or (sorted_count and max(order) >= count):
            raise ValueError("the parts of the index do not fit together")
        if not 0 < shift < 64 or len(starts) != (1 << (64 - shift)) + 1 or starts[-1] != sorted_count or (sorted_count and max(starts) > sorted_count):
            raise ValueError("the buckets do not fit the sorted rows")
        index = cls()
        for raw, size in HELD_PACK.iter_unpack(packs):
            if raw in index._numbers:
                raise ValueError("a pack is held twice")
            index._number_pack(raw, size)
        if count and max(number for (number,) in _PACK_NUMBER.iter_unpack(rows)) >= pack_count:
            raise ValueError("a row names a pack that is not held")
        index._rows, index._count, index._keys, index._order = rows, count, keys, order
        index._shift, index._starts = shift, starts
        with memoryview(rows) as view:
            index._wait_unsorted(view[sorted_count * HELD.size :], sorted_count)
        index.files = list(files)
        return index

    def add_pack(self, pack_id: str, size: int, entries: Iterable[PackEntry]) -> range:
        return self.add_rows(encode_rows(pack_id, size, entries))

    def _sort(self) -> None:
        """Sort every row added since the last sort into the arrays.

        The new rows are sorted alone, then merged into the sorted arrays one
        segment of _MERGE_SEGMENT rows at a time: each segment and the new rows
        that fall inside it are sorted together (timsort merges the two runs).
        One list of every row instead cost 44 bytes a row at the peak: 11 MiB at
        the last merge of a 1 GiB database's first backup, its highest point.
        Equal prefixes stay in row order, as the rows sorted before are older.
        """
        done = len(self._keys)
        if done == self._count:
            return
        self._recent = {}  # rebuilt from the rows below; free it before the peak
        try:
            self._merge_unsorted(done)
        except BaseException:  # (MemoryError) the unsorted rows must stay findable
            self._recent = {}
            with memoryview(self._rows) as rows:
                self._wait_unsorted(rows[done * HELD.size :], done)
            raise

    def _merge_unsorted(self, done: int) -> None:
        """The body of ``_sort``: merge rows ``done`` and after into the sorted arrays."""
        with memoryview(self._rows) as rows:
            new = sorted((prefix << _ROW_BITS) | row for row, (prefix,) in enumerate(_PREFIX.iter_unpack(rows[done * HELD.size :]), done))
        mask = (1 << _ROW_BITS) - 1
        keys, order = self._keys, self._order
        merged_keys, merged_order = array("Q"), array("I")
        taken = 0
        for start in range(0, done, _MERGE_SEGMENT):
            stop = min(start + _MERGE_SEGMENT, done)
            until = bisect.bisect_left(new, (keys[stop] << _ROW_BITS) | order[stop], taken) if stop < done else len(new)
            part = [(key << _ROW_BITS) | row for key, row in zip(keys[start:stop], order[start:stop])]
            part += new[taken:until]
            part.sort()
            merged_keys.extend(value >> _ROW_BITS for value in part)
            merged_order.extend(value & mask for value in part)
            taken = until
        if not done:  # the first sort: no segments, and generators rather than lists (44 bytes a row)
            merged_keys = array("Q", (value >> _ROW_BITS for value in new))
            merged_order = array("I", (value & mask for value in new))
        shift, starts = _bucket_starts(merged_keys)
        self._keys, self._order, self._shift, self._starts = merged_keys, merged_order, shift, starts

    # -- looking up -----------------------------------------------------------------

    def _rows_of(self, chunk_id: str) -> list[int]:
        """Row numbers holding ``chunk_id``, in the order they were added."""
        try:
            prefix = int(chunk_id[:16], 16)
            raw = bytes.fromhex(chunk_id)
        except ValueError:
            return []
        found: list[int] = []
        keys, order, rows, starts = self._keys, self._order, self._rows, self._starts
        bucket = prefix >> self._shift
        end = starts[bucket + 1]
        position = bisect.bisect_left(keys, prefix, starts[bucket], end)
        while position < end and keys[position] == prefix:
            row = order[position]
            start = row * HELD.size + _CHUNK_ID_AT
            if rows[start : start + 32] == raw:
                found.append(row)
            position += 1
        held = self._recent.get(prefix)
        for row in (held,) if isinstance(held, int) else held or ():
            start = row * HELD.size + _CHUNK_ID_AT
            if rows[start : start + 32] == raw:
                found.append(row)
        if len(found) > 1:
            found.sort()
        return found

    def _entry(self, row: int, chunk_id: str | None = None) -> tuple[str, PackEntry]:
        """(pack id, entry) of a row; ``chunk_id`` saves decoding the id when the caller has it."""
        number, raw_id, frame_offset, frame_length, offset_in_frame, length, compression = HELD.unpack_from(self._rows, row * HELD.size)
        entry = PackEntry(
            chunk_id=chunk_id or raw_id.hex(),
            frame_offset=frame_offset,
            frame_length=frame_length,
            offset_in_frame=offset_in_frame,
            length=length,
            compression=compression,
        )
        return self._pack_ids[number], entry

    def location_of(self, row: int, chunk_id: str | None = None) -> ChunkLocation:
        pack_id, entry = self._entry(row, chunk_id)
        return ChunkLocation(pack_id=pack_id, entry=entry)

    def first_location(self, chunk_id: str) -> ChunkLocation | None:
        """The chunk's first location; the last _KEPT_ANSWERS answers are kept.

        Verify and restore read the versions of a file side by side, so one chunk
        is usually asked for again a few thousand lookups later.
        """
        cache = self._lookups
        location = cache.get(chunk_id)
        if location is None:
            rows = self._rows_of(chunk_id)
            if not rows:
                return None
            location = self.location_of(rows[0], chunk_id)
            if len(cache) >= _KEPT_ANSWERS:
                cache.clear()
            cache[chunk_id] = location
        return location

    def held_in(self, chunk_id: str, packs: set[str]) -> bool:
        """True if a pack in ``packs`` holds the chunk (``held_flags`` for one hex id and hex pack ids)."""
        return self._first_rows((bytes.fromhex(chunk_id),), {bytes.fromhex(pack_id) for pack_id in packs})[0] >= 0

    def held_flags(self, raw_ids: Iterable[bytes], raw_packs: set[bytes]) -> list[bool]:
        """For each raw 32-byte chunk id: does a pack in ``raw_packs`` (raw pack ids) hold it?

        The writer asks this once per batch for every chunk of a file (262,144 of them
        for a 1 GiB database), so it takes the digests as hashed and the packs as
        stored in the rows: no hex text is made or parsed.
        """
        return [row >= 0 for row in self._first_rows(raw_ids, raw_packs)]

    def first_rows(self, raw_ids: bytes) -> list[int]:
        """For each 32-byte id of ``raw_ids`` (a chunk list's bytes), the row of its first copy, or -1.

        The row ``first_location`` would answer from, for readers that only need
        where the bytes are (``add_runs``): no text and no objects per chunk.
        """
        return self._first_rows(split_ids(raw_ids), None)

    def _first_rows(self, raw_ids: Iterable[bytes], raw_packs: set[bytes] | None) -> list[int]:
        """For each raw id, its oldest row (in one of ``raw_packs``, when given), or -1.

        Equal prefixes are sorted in row order and rows waiting in ``_recent`` are
        newer than every sorted one, so the first match found is the oldest.
        """
        keys, order, rows, recent, starts, shift = self._keys, self._order, self._rows, self._recent, self._starts, self._shift
        size, id_at, id_end, packs = HELD.size, _CHUNK_ID_AT, _CHUNK_ID_AT + 32, self._packs
        first_of = bisect.bisect_left
        number = int.from_bytes
        found: list[int] = []
        for raw in raw_ids:
            prefix = number(raw[:8], "big")
            row = -1
            bucket = prefix >> shift
            end = starts[bucket + 1]
            position = first_of(keys, prefix, starts[bucket], end)
            while position < end and keys[position] == prefix:
                start = order[position] * size
                if rows[start + id_at : start + id_end] == raw and (raw_packs is None or packs[int.from_bytes(rows[start : start + 4], "little")] in raw_packs):
                    row = order[position]
                    break
                position += 1
            if row < 0 and prefix in recent:
                waiting = recent[prefix]
                for candidate in (waiting,) if isinstance(waiting, int) else waiting:
                    start = candidate * size
                    if rows[start + id_at : start + id_end] == raw and (raw_packs is None or packs[int.from_bytes(rows[start : start + 4], "little")] in raw_packs):
                        row = candidate
                        break
            found.append(row)
        return found

    def add_runs(self, rows: Iterable[int], runs: list[list]) -> int:
        """Append the chunks of ``rows`` to ``runs``, joining each to the run before when adjacent in one frame.

        A run is [pack id, entry of its first chunk, start, end] within the
        frame's decompressed bytes (what Repository.read_runs reads); an entry is
        made only for the first chunk of a run. Returns the bytes added.
        """
        data, pack_ids, place = self._rows, self._pack_ids, _RUN_PLACE.unpack_from
        last = runs[-1] if runs else None
        added = 0
        for row in rows:
            number, frame_offset, offset_in_frame, length = place(data, row * HELD.size)
            added += length
            if last is not None and last[3] == offset_in_frame and last[1].frame_offset == frame_offset and last[0] == pack_ids[number]:
                last[3] = offset_in_frame + length
                continue
            pack_id, entry = self._entry(row)
            last = [pack_id, entry, offset_in_frame, offset_in_frame + length]
            runs.append(last)
        return added

    def packs_holding(self, chunk_id: str) -> list[str]:
        """The ids of the packs holding the chunk, without building its locations."""
        return [self._pack_ids[int.from_bytes(self._rows[row * HELD.size : row * HELD.size + 4], "little")] for row in self._rows_of(chunk_id)]

    def all_locations(self, chunk_id: str) -> list[ChunkLocation]:
        """Every copy of the chunk (one per pack), the first stored first."""
        return [self.location_of(row, chunk_id) for row in self._rows_of(chunk_id)]

    def __contains__(self, chunk_id: object) -> bool:
        return isinstance(chunk_id, str) and bool(self._rows_of(chunk_id))

    # -- walking --------------------------------------------------------------------

    def _groups(self) -> Iterator[tuple[str, list[ChunkLocation]]]:
        """(chunk id, its locations, first stored first) for every chunk, in id order."""
        self._sort()
        keys, order, rows = self._keys, self._order, self._rows
        position, end = 0, len(keys)
        while position < end:
            stop = position + 1
            while stop < end and keys[stop] == keys[position]:
                stop += 1
            by_id: dict[bytes, list[int]] = {}
            for row in sorted(order[position:stop]):
                start = row * HELD.size + _CHUNK_ID_AT
                by_id.setdefault(bytes(rows[start : start + 32]), []).append(row)
            for raw, chunk_rows in sorted(by_id.items()):
                chunk_id = raw.hex()
                yield chunk_id, [self.location_of(row, chunk_id) for row in chunk_rows]
            position = stop

    def every_location(self) -> Iterator[ChunkLocation]:
        """Every stored copy of every chunk, in the order the rows were added."""
        for row in range(self._count):
            yield self.location_of(row)

    def row_ranges(self) -> tuple[dict[str, list[range]], dict[tuple[str, int], list[range]]]:
        """The rows of each pack and of each (pack, frame offset), as runs of row numbers.

        A pack's rows come from one index file in pack order, so each pack and
        each frame is usually one run; ``raw_entries_in`` and ``frame_members``
        read the rows of runs only for the pack or frame being checked.
        """
        starts: list[tuple[int, tuple[int, int]]] = []
        previous = None
        for row, key in enumerate(_PACK_AND_FRAME.iter_unpack(self._rows)):
            if key != previous:
                starts.append((row, key))
                previous = key
        by_pack: dict[str, list[range]] = {}
        by_frame: dict[tuple[str, int], list[range]] = {}
        stops = [start for start, _ in starts[1:]] + [self._count]
        for (start, (number, frame_offset)), stop in zip(starts, stops):
            pack_id = self._pack_ids[number]
            by_frame.setdefault((pack_id, frame_offset), []).append(range(start, stop))
            runs = by_pack.setdefault(pack_id, [])
            if runs and runs[-1].stop == start:
                runs[-1] = range(runs[-1].start, stop)
            else:
                runs.append(range(start, stop))
        return by_pack, by_frame

    def raw_entries_in(self, runs: Iterable[range]) -> list[bytes]:
        """The pack header entries (ENTRY records, as packs store them) of the rows in ``runs``, in row order."""
        rows, size = self._rows, HELD.size
        return [bytes(rows[row * size + _ENTRY_AT : (row + 1) * size]) for run in runs for row in run]

    def frame_members(self, runs: Iterable[range]) -> list[tuple[bytes, int, int]]:
        """(raw chunk id, offset in the frame, length) of the rows in ``runs``: what checking a frame needs."""
        member = _MEMBER.unpack_from
        rows, size = self._rows, HELD.size
        return [member(rows, row * size) for run in runs for row in run]

    def entries_in(self, runs: Iterable[range]) -> list[PackEntry]:
        """The entries of the rows in ``runs`` (from ``row_ranges``), in row order."""
        return [self._entry(row)[1] for run in runs for row in run]

    @property
    def duplicates(self) -> dict[str, list[ChunkLocation]]:
        """Chunk id -> its further copies, for chunks stored in more than one pack."""
        return {chunk_id: locations[1:] for chunk_id, locations in self._groups() if len(locations) > 1}


class Locations(Mapping[str, ChunkLocation]):
    """A read-only mapping view: chunk id -> its first location."""

    __slots__ = ("_index",)

    def __init__(self, index: Index) -> None:
        self._index = index

    def __getitem__(self, chunk_id: str) -> ChunkLocation:
        location = self._index.first_location(chunk_id)
        if location is None:
            raise KeyError(chunk_id)
        return location

    def get(self, chunk_id: str, default: ChunkLocation | None = None) -> ChunkLocation | None:  # type: ignore[override]
        location = self._index.first_location(chunk_id)
        return default if location is None else location

    def __contains__(self, chunk_id: object) -> bool:
        return chunk_id in self._index

    def __iter__(self) -> Iterator[str]:
        for chunk_id, _ in self._index._groups():
            yield chunk_id

    def __len__(self) -> int:
        return sum(1 for _ in self._index._groups())

    def items(self) -> Iterator[tuple[str, ChunkLocation]]:  # type: ignore[override]
        for chunk_id, locations in self._index._groups():
            yield chunk_id, locations[0]

    def values(self) -> Iterator[ChunkLocation]:  # type: ignore[override]
        for _, locations in self._index._groups():
            yield locations[0]
