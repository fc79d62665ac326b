"""The pack file format: frames of compressed chunks, then a header that lists them.

Owns: encoding a pack from frames, parsing the header back from a pack's tail,
and compressing / decompressing frames with bounded memory. Knows nothing of
storage, snapshots or databases. docs/format.md specifies these bytes.

    pack    = frame* zheader trailer
    frame   = zstd frame (or raw bytes) holding one or more whole chunks
    zheader = one zstd frame (content size declared) of entry*, one per chunk, in frame order
    entry   = "<32sQIIIB": chunk id (raw SHA-256), frame offset in the pack,
              frame length, chunk offset inside the decompressed frame,
              chunk length, compression (0 none, 1 zstd)
    trailer = "<I8s": length of zheader, magic b"DBKPACK2"

Packs of version 1 (still read) end in "<I8s": number of entries, b"DBKPACK1",
after the entries stored uncompressed.

A pack is named by the SHA-256 of all of its bytes, so any damage anywhere in it
is detected by re-hashing, and its header alone is enough to rebuild the index.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import zstandard

from .errors import CorruptChunk, CorruptPack

#: Trailer magic of a version 1 pack (uncompressed header); read, no longer written.
MAGIC = b"DBKPACK1"
#: Trailer magic of a version 2 pack (zstd-compressed header); written.
MAGIC_COMPRESSED = b"DBKPACK2"
#: zstd level of pack headers (about 35 of their 53 bytes per entry are left).
HEADER_COMPRESSION_LEVEL = 3
#: A genuine header holds a random 32-byte id per 53-byte entry, so it never
#: expands more than this many times; a larger claim is a bomb or damage.
MAX_HEADER_EXPANSION = 16
#: Trailer magic of a pack in an encrypted repository (its header is sealed).
MAGIC_SEALED = b"DBKPACKE"
ENTRY = struct.Struct("<32sQIIIB")
TRAILER = struct.Struct("<I8s")
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1
#: No frame ever decompresses to more than this; a larger claim is a bomb or damage.
MAX_FRAME_BYTES = 16 * 1024 * 1024
#: No pack holds more chunks than this; a larger count in a trailer is damage.
MAX_ENTRIES = MAX_FRAME_BYTES
#: Packs are closed once they pass 16 MiB, so none is much larger than that plus
#: one frame and its header; a pack said to be larger than this is damage.
MAX_PACK_BYTES = 64 * 1024 * 1024

#: fullmatch, not ``^...$``: ``$`` also matches before a trailing newline.
_HEX_ID = re.compile(r"[0-9a-f]{64}").fullmatch


def check_id(value: object, what: str = "id") -> str:
    """Return ``value`` if it is 64 lowercase hex characters, else raise CorruptPack.

    Every id read from disk passes through here before it can become a path.
    """
    if not isinstance(value, str) or _HEX_ID(value) is None:
        raise CorruptPack(f"invalid {what} {str(value)[:80]!r}: expected 64 lowercase hex characters")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class PackEntry:
    """Where one chunk lives inside a pack."""

    chunk_id: str
    frame_offset: int
    frame_length: int
    offset_in_frame: int
    length: int
    compression: int

    def to_row(self) -> list[object]:
        return [self.chunk_id, self.frame_offset, self.frame_length, self.offset_in_frame, self.length, self.compression]

    @classmethod
    def from_row(cls, row: object) -> PackEntry:
        """Parse an index row, refusing anything that is not exactly six sane fields."""
        if type(row) is not list or len(row) != 6:
            raise CorruptPack(f"index entry {str(row)[:80]!r} is not a 6-field list")
        chunk_id, frame_offset, frame_length, offset_in_frame, length, compression = row
        # ``type(...) is int`` refuses bools (and int subclasses) in one test per field;
        # an index holds tens of thousands of rows, so this loop is on the open path.
        if not (
            type(frame_offset) is int
            and type(frame_length) is int
            and type(offset_in_frame) is int
            and type(length) is int
            and type(compression) is int
            and min(frame_offset, frame_length, offset_in_frame, length, compression) >= 0
        ):
            raise CorruptPack(f"index entry for {str(chunk_id)[:80]!r} has a field that is not a non-negative integer")
        if type(chunk_id) is not str or _HEX_ID(chunk_id) is None:
            check_id(chunk_id, "chunk id")  # raises, naming the id
        entry = cls(
            chunk_id=chunk_id,
            frame_offset=frame_offset,
            frame_length=frame_length,
            offset_in_frame=offset_in_frame,
            length=length,
            compression=compression,
        )
        if compression > COMPRESSION_ZSTD or offset_in_frame + length > MAX_FRAME_BYTES or frame_length > MAX_FRAME_BYTES:
            entry.check_bounds()  # raises, saying which bound
        return entry

    @classmethod
    def from_fields(cls, raw_id: bytes, frame_offset: int, frame_length: int, offset_in_frame: int, length: int, compression: int) -> PackEntry:
        """An entry from the binary fields of a pack header or index row, bounds-checked."""
        entry = cls(
            chunk_id=raw_id.hex(),
            frame_offset=frame_offset,
            frame_length=frame_length,
            offset_in_frame=offset_in_frame,
            length=length,
            compression=compression,
        )
        entry.check_bounds()
        return entry

    def check_bounds(self) -> None:
        if self.compression not in (COMPRESSION_NONE, COMPRESSION_ZSTD):
            raise CorruptPack(f"chunk {self.chunk_id} has unknown compression {self.compression}")
        if self.offset_in_frame + self.length > MAX_FRAME_BYTES or self.frame_length > MAX_FRAME_BYTES:
            raise CorruptPack(f"chunk {self.chunk_id} claims a frame larger than {MAX_FRAME_BYTES} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One frame ready to be placed in a pack: its bytes and the chunks inside."""

    data: bytes
    compression: int
    chunks: tuple[tuple[str, int, int], ...]  # (chunk id, offset in frame, length)


def compress_frame(chunks: Sequence[tuple[str, bytes]], compressor: zstandard.ZstdCompressor | None) -> Frame:
    """Build one frame from adjacent new chunks; stores raw bytes when zstd does not help."""
    raw = b"".join(data for _, data in chunks)
    placed: list[tuple[str, int, int]] = []
    offset = 0
    for chunk_id, data in chunks:
        placed.append((chunk_id, offset, len(data)))
        offset += len(data)
    if compressor is not None:
        compressed = compressor.compress(raw)
        if len(compressed) < len(raw):
            return Frame(data=compressed, compression=COMPRESSION_ZSTD, chunks=tuple(placed))
    return Frame(data=raw, compression=COMPRESSION_NONE, chunks=tuple(placed))


def decompress_frame(data: bytes | memoryview, compression: int) -> bytes:
    """Decompress a frame, never producing more than MAX_FRAME_BYTES (bomb guard).

    A frame that records its content size (every frame dbkeep writes) is
    decompressed in one call once that size is known to be within the limit;
    zstd itself refuses a frame whose output differs from the size it claims.
    A frame without a recorded size streams through a reader rather than
    trusting anything it says.
    """
    if compression == COMPRESSION_NONE:
        return bytes(data)
    try:
        claimed = zstandard.frame_content_size(data)
        if claimed > MAX_FRAME_BYTES:
            raise CorruptChunk(f"frame decompresses to more than {MAX_FRAME_BYTES} bytes (its header claims {claimed})")
        if claimed > 0:
            output = zstandard.ZstdDecompressor().decompress(data)
            if len(output) != claimed:
                raise CorruptChunk(f"frame decompresses to {len(output)} bytes, not the {claimed} it claims")
            return output
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=False) as reader:
            output = reader.read(MAX_FRAME_BYTES + 1)
    except zstandard.ZstdError as error:
        raise CorruptChunk(f"frame does not decompress: {error}") from error
    if len(output) > MAX_FRAME_BYTES:
        raise CorruptChunk(f"frame decompresses to more than {MAX_FRAME_BYTES} bytes")
    return output


def encode_entries(frames: Sequence[tuple[int, Frame]]) -> bytes:
    """The 53-byte entries of every chunk of frames placed at the given pack offsets."""
    entries = bytearray()
    for frame_offset, frame in frames:
        for chunk_id, offset_in_frame, length in frame.chunks:
            entries += ENTRY.pack(bytes.fromhex(chunk_id), frame_offset, len(frame.data), offset_in_frame, length, frame.compression)
    return bytes(entries)


def encode_header(entries: bytes) -> bytes:
    """The compressed header and trailer (version 2) of a pack's ``encode_entries``."""
    compressed = zstandard.ZstdCompressor(level=HEADER_COMPRESSION_LEVEL, write_content_size=True).compress(entries)
    return compressed + TRAILER.pack(len(compressed), MAGIC_COMPRESSED)


def header_entries(frames: Sequence[tuple[int, Frame]]) -> list[PackEntry]:
    return [
        PackEntry(
            chunk_id=chunk_id,
            frame_offset=frame_offset,
            frame_length=len(frame.data),
            offset_in_frame=offset_in_frame,
            length=length,
            compression=frame.compression,
        )
        for frame_offset, frame in frames
        for chunk_id, offset_in_frame, length in frame.chunks
    ]


def header_span(trailer: bytes) -> int:
    """How many bytes at the end of a pack its header and trailer take, as the trailer claims.

    Not checked: it only says how much of the end to read, at most, for
    ``split_pack`` (or ``split_sealed_pack``), which checks the claim. Every
    trailer starts with a uint32: the header's stored length (version 2 and
    encrypted packs) or its number of entries (version 1).
    """
    if len(trailer) != TRAILER.size:
        return TRAILER.size
    (number,) = struct.unpack_from("<I", trailer)
    if trailer.endswith(MAGIC):
        return number * ENTRY.size + TRAILER.size
    return number + TRAILER.size


def header_length(trailer: bytes, pack_size: int, pack_name: str) -> int:
    """How many header bytes precede the trailer; raises CorruptPack on a bad trailer."""
    if len(trailer) != TRAILER.size:
        raise CorruptPack(f"pack {pack_name} is too short to hold a trailer")
    count, magic = TRAILER.unpack(trailer)
    if magic != MAGIC:
        raise CorruptPack(f"pack {pack_name} does not end with the pack magic; it is truncated or damaged")
    length = count * ENTRY.size
    if count > MAX_ENTRIES or length + TRAILER.size > pack_size:
        raise CorruptPack(f"pack {pack_name} claims {count} entries, more than its size allows")
    return length


def parse_header(header: bytes, frames_end: int, pack_name: str) -> list[PackEntry]:
    """Parse header bytes; every entry must point inside the frame area."""
    entries: list[PackEntry] = []
    for position in range(0, len(header), ENTRY.size):
        entry = PackEntry.from_fields(*ENTRY.unpack_from(header, position))
        if entry.frame_offset + entry.frame_length > frames_end:
            raise CorruptPack(f"pack {pack_name}: chunk {entry.chunk_id} points past the frame area")
        entries.append(entry)
    return entries


def encode_sealed_header(entries: bytes, seal: Callable[[bytes], bytes]) -> bytes:
    """Header for an encrypted repository: the entries sealed, then the sealed length and magic.

    ``sealed_header || "<I8s"(len(sealed_header), b"DBKPACKE")``; ``entries``
    (``encode_entries``) are the same 53-byte entries as in a plain pack, frame
    offsets and lengths counting the sealed frames.
    """
    sealed = seal(entries)
    return sealed + TRAILER.pack(len(sealed), MAGIC_SEALED)


def split_sealed_pack(data: bytes, pack_name: str, open_header: Callable[[bytes], bytes]) -> tuple[bytes, int]:
    """(header entries, where the frames end) of a whole pack of an encrypted repository.

    ``open_header`` authenticates the header. Raises CorruptPack on a bad trailer.
    """
    trailer = data[-TRAILER.size :]
    if len(trailer) != TRAILER.size:
        raise CorruptPack(f"pack {pack_name} is too short to hold a trailer")
    length, magic = TRAILER.unpack(trailer)
    if magic != MAGIC_SEALED:
        raise CorruptPack(f"pack {pack_name} does not end with the encrypted pack magic; it is truncated, damaged or not from this repository")
    if length + TRAILER.size > len(data):
        raise CorruptPack(f"pack {pack_name} claims a header longer than the pack")
    frames_end = len(data) - TRAILER.size - length
    header = open_header(data[frames_end : len(data) - TRAILER.size])
    if len(header) % ENTRY.size:
        raise CorruptPack(f"pack {pack_name} has a header that is not a whole number of entries")
    return header, frames_end


def parse_sealed_pack(data: bytes, pack_name: str, open_header: Callable[[bytes], bytes]) -> list[PackEntry]:
    """Parse a whole pack of an encrypted repository; ``open_header`` authenticates the header."""
    return parse_header(*split_sealed_pack(data, pack_name, open_header), pack_name)


def split_pack(data: bytes, pack_name: str) -> tuple[bytes, int]:
    """(header entries, where the frames end) of a whole pack of either version.

    A version 2 header is decompressed (bounded, see ``decompress_header``);
    raises CorruptPack on a bad trailer or header.
    """
    trailer = data[-TRAILER.size :]
    if len(trailer) == TRAILER.size and trailer.endswith(MAGIC_COMPRESSED):
        (stored,) = struct.unpack_from("<I", trailer)
        if stored + TRAILER.size > len(data):
            raise CorruptPack(f"pack {pack_name} claims a header longer than the pack")
        frames_end = len(data) - TRAILER.size - stored
        return decompress_header(data[frames_end : len(data) - TRAILER.size], pack_name), frames_end
    length = header_length(trailer, len(data), pack_name)
    frames_end = len(data) - TRAILER.size - length
    return data[frames_end : len(data) - TRAILER.size], frames_end


def parse_pack(data: bytes, pack_name: str) -> list[PackEntry]:
    """Parse a whole pack held in memory (verify and index rebuild)."""
    return parse_header(*split_pack(data, pack_name), pack_name)


def header_covers(header: bytes, frames_end: int, entries: Iterable[bytes]) -> bool:
    """True if the header's entries are all in bounds and include every one of ``entries`` (raw ENTRY records).

    The answer ``parse_header`` and a set comparison would give for a sound
    header, without building an object per entry; False sends the caller to
    ``parse_header`` for the precise complaint.
    """
    for _, frame_offset, frame_length, offset_in_frame, length, compression in ENTRY.iter_unpack(header):
        if compression > COMPRESSION_ZSTD or offset_in_frame + length > MAX_FRAME_BYTES or frame_length > MAX_FRAME_BYTES or frame_offset + frame_length > frames_end:
            return False
    size = ENTRY.size
    rows = {header[start : start + size] for start in range(0, len(header), size)}
    return all(entry in rows for entry in entries)


def decompress_header(compressed: bytes, pack_name: str) -> bytes:
    """The entries of a version 2 header; CorruptPack unless they are whole, bounded and as declared.

    The size the zstd frame declares is checked against the stored length before
    anything is decompressed, and decompression never goes past it.
    """
    limit = min(MAX_ENTRIES * ENTRY.size, MAX_HEADER_EXPANSION * len(compressed) + 4096)
    try:
        declared = zstandard.frame_content_size(compressed)
        if not 0 <= declared <= limit or declared % ENTRY.size:
            raise CorruptPack(f"pack {pack_name} has a header that declares {declared} bytes, not whole entries within {limit}: it is damaged")
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(compressed), read_across_frames=False) as reader:
            header = reader.read(declared + 1)
    except zstandard.ZstdError as error:
        raise CorruptPack(f"pack {pack_name} has a header that does not decompress: {str(error)[:200]}") from error
    if len(header) != declared:
        raise CorruptPack(f"pack {pack_name} has a header of {len(header)} bytes, not the {declared} it declares: it is damaged")
    return header


def chunk_id_of(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_digest_of(data: bytes | memoryview) -> bytes:
    """``chunk_id_of`` as the raw 32 bytes the index rows and chunk lists hold."""
    return hashlib.sha256(data).digest()
