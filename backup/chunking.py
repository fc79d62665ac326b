"""Content-defined chunking for database dumps.

Owns: cutting a stream of dump bytes into chunks whose boundaries depend only on
the bytes near them, so a row inserted, deleted or changed in a dump moves no
boundary except the one or two around it, and the next day's dump shares every
other chunk with today's. Knows nothing of repositories or databases.

The dumps dbkeep makes (``pg_dump`` plain format, ``mariadb-dump``/``mysqldump``)
are text with one row per line (COPY rows; MariaDB's extended INSERTs), or
extended INSERTs on one long line with tuples separated by ``),(`` (MySQL's
mysqldump). The stream is split into records: a line is a record, and a line
longer than ``maximum`` is split into records after each ``),(``. A boundary
may fall only after a record:

- a record of ``n`` bytes (separator included) is a candidate when the CRC-32
  of its bytes is below ``n * 2**32 / average``, so the expected chunk size is
  ``average`` bytes whether rows are 40 or 4000 bytes long;
- a candidate becomes a boundary when the chunk would be at least ``minimum``
  bytes; a chunk never exceeds ``maximum`` bytes: a stretch without a boundary
  (a large bytea or BLOB value) is cut at fixed offsets from the previous
  boundary, and the next candidate re-synchronises;
- a record longer than ``maximum`` is never a candidate, so a huge value can be
  passed on before its end is seen (memory stays flat).

Splitting, CRC-32 and the candidate test run in C (``bytes.split``, ``map``
over ``zlib.crc32``), so Python only looks at candidates: well over 100 MB/s in pure
Python, faster than the dump tools produce bytes (docs/servers.md has the
measurements). Boundaries are not part of the repository format: chunk lists
name every chunk, so changing this algorithm costs one backup's deduplication
and nothing else.
"""

from __future__ import annotations

import operator
import zlib
from collections.abc import Iterable, Iterator
from itertools import accumulate, compress, repeat

AVERAGE_CHUNK = 8 * 1024
MINIMUM_CHUNK = 2 * 1024
MAXIMUM_CHUNK = 64 * 1024
TUPLE_SEPARATOR = b"),("
#: Input gathered before a scan: big enough to amortise it, small enough to keep memory flat.
SCAN_BYTES = 1024 * 1024


def content_defined_chunks(
    pieces: Iterable[bytes],
    *,
    average: int = AVERAGE_CHUNK,
    minimum: int = MINIMUM_CHUNK,
    maximum: int = MAXIMUM_CHUNK,
) -> Iterator[bytes]:
    """Yield the bytes of ``pieces`` as content-defined chunks, in order.

    The chunks concatenate to exactly the input, and the boundaries depend only
    on the content, never on how the input was split into pieces. Every chunk
    but the last is at least ``minimum`` and at most ``maximum`` bytes long.
    Raises ValueError unless ``1 <= minimum <= average <= maximum``.
    """
    if not 1 <= minimum <= average <= maximum:
        raise ValueError("chunk sizes must satisfy 1 <= minimum <= average <= maximum")
    chunker = _Chunker(average=average, minimum=minimum, maximum=maximum)
    for piece in pieces:
        chunker.buffer += piece
        if len(chunker.buffer) >= SCAN_BYTES:
            yield from chunker.scan(final=False)
    yield from chunker.scan(final=True)


class _Chunker:
    """The state between two scans; offsets are absolute positions in the stream."""

    def __init__(self, *, average: int, minimum: int, maximum: int) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.scale = (1 << 32) // average
        self.buffer = bytearray()
        self.base = 0  # stream offset of buffer[0]
        self.start = 0  # where the current chunk begins
        self.record_start = 0  # where the first record not yet scanned begins
        self.long_line = False  # that record continues a line longer than ``maximum``
        self.oversized = False  # that record is already longer than ``maximum``

    def scan(self, *, final: bool) -> Iterator[bytes]:
        """Cut every chunk whose end is known; keep the rest for the next scan."""
        buffer = self.buffer
        first = self.record_start - self.base
        line_end = buffer.rfind(b"\n", first) + 1
        if final and len(buffer) > first:
            line_end = len(buffer)
        if line_end > first:
            yield from self._cut(self._line_records(bytes(buffer[first:line_end]), ends_line=buffer[line_end - 1 : line_end] == b"\n"))
        tail = len(buffer) - (self.record_start - self.base)
        if not final and (self.long_line or tail > self.maximum):
            self.long_line = True
            first = self.record_start - self.base
            tuple_end = buffer.rfind(TUPLE_SEPARATOR, first) + len(TUPLE_SEPARATOR)
            if tuple_end > first:
                records = bytes(buffer[first:tuple_end]).split(TUPLE_SEPARATOR)
                records.pop()
                yield from self._cut(self._flags(records, [len(record) + len(TUPLE_SEPARATOR) for record in records]))
            if self.base + len(buffer) - self.record_start > self.maximum:
                self.oversized = True  # never a candidate: its bytes may go before its end is seen
        known = self.base + len(buffer) if (final or self.oversized) else self.record_start
        while known - self.start > self.maximum:
            yield self._emit(self.start + self.maximum)
        if final and known > self.start:
            yield self._emit(known)
        del buffer[: self.start - self.base]
        self.base = self.start

    def _line_records(self, region: bytes, *, ends_line: bool) -> Iterator[int]:
        """Candidate ends among the whole lines of ``region`` (one partial line at the stream's end)."""
        lines = region.split(b"\n")
        if ends_line:
            lines.pop()
        sizes = list(map(operator.add, map(len, lines), repeat(1)))
        if not ends_line:
            sizes[-1] -= 1
        long_lines = list(compress(range(len(lines)), map(operator.gt, sizes, repeat(self.maximum))))
        if self.long_line and long_lines[:1] != [0]:
            long_lines.insert(0, 0)
        if long_lines:
            lines, sizes = _split_long_lines(lines, sizes, long_lines)
        self.long_line = False
        return self._flags(lines, sizes)

    def _flags(self, records: list[bytes], sizes: list[int]) -> Iterator[int]:
        """Stream offsets just after each candidate record; advances ``record_start``."""
        eligible = map(operator.lt, map(zlib.crc32, records), map(operator.mul, sizes, repeat(self.scale)))
        flags = list(map(operator.and_, eligible, map(operator.le, sizes, repeat(self.maximum))))
        if self.oversized and flags:
            flags[0] = False
        self.oversized = False
        ends = list(accumulate(sizes, initial=self.record_start))
        self.record_start = ends[-1]
        return compress(ends[1:], flags)

    def _cut(self, candidates: Iterable[int]) -> Iterator[bytes]:
        for position in candidates:
            while position - self.start > self.maximum:
                yield self._emit(self.start + self.maximum)
            if position - self.start >= self.minimum:
                yield self._emit(position)

    def _emit(self, position: int) -> bytes:
        chunk = bytes(self.buffer[self.start - self.base : position - self.base])
        self.start = position
        return chunk


def _split_long_lines(lines: list[bytes], sizes: list[int], long_lines: list[int]) -> tuple[list[bytes], list[int]]:
    """Replace each long line by its ``),(``-separated records (the last keeps the newline)."""
    records: list[bytes] = []
    record_sizes: list[int] = []
    previous = 0
    for index in long_lines:
        records.extend(lines[previous:index])
        record_sizes.extend(sizes[previous:index])
        parts = lines[index].split(TUPLE_SEPARATOR)
        part_sizes = [len(part) + len(TUPLE_SEPARATOR) for part in parts]
        part_sizes[-1] = sizes[index] - sum(part_sizes[:-1])
        records.extend(parts)
        record_sizes.extend(part_sizes)
        previous = index + 1
    records.extend(lines[previous:])
    record_sizes.extend(sizes[previous:])
    return records, record_sizes
