"""A local copy of the merged chunk index, so a backup or restore need not read and sort every index file.

Owns: where the copy lives, writing an ``Index``'s held state to it, and
reading it back only when the repository's index files are exactly the ones it
was made from. Knows the held state's parts (chunk_index.py), not the index
file format.

Why it can be trusted: index files are named by the SHA-256 of their bytes, so
the sorted list of their names fixes what they hold, and that list's SHA-256 is
the copy's key. The repository uses the copy only after checking that every
index file still hashes to its name (reading and hashing them is cheap; parsing
and sorting their rows is what the copy saves): a damaged index file is then
read as before, its rows are missing, and the next backup stores those chunks
again instead of trusting rows no reader can find. The copy ends with a
SHA-256 of everything before it, so a copy damaged on disk, cut short or
written by another version is not used either. Packs are still listed on every
backup, so a lost pack is stored again whatever the copy says.

Not used by verify and clean, which read the index files themselves (verify
must find a damaged one), nor for encrypted repositories, whose index is
never written to disk in the clear. A 1 GiB database's index (about 280,000
rows) is 20 MB here and loads in about 0.05 s instead of 0.45 s.

Layout: MAGIC, key (32), then as "<Q" each: rows, packs, sorted rows, bucket
shift, bucket starts; then the packs (32-byte id, "<Q" size each), the held
rows, the sorted prefixes ("<Q" each), their row numbers and the bucket starts
("<I" each), and the SHA-256 of all of it. Rows past the sorted ones wait
unsorted, as they do in memory (chunk_index.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import struct
import sys
import tempfile
from array import array
from pathlib import Path

from .chunk_index import HELD, HELD_PACK, Index

#: Names the layout and the held row size: a copy from a version that holds rows differently is not read.
MAGIC = b"DBKIXC" + bytes([1, HELD.size])
_COUNTS = struct.Struct("<32sQQQQQ")
_PIECE = 4 << 20
#: Environment variable naming the cache directory; empty turns the cache off.
CACHE_ENV = "DBKEEP_CACHE_DIR"


def cache_directory() -> Path | None:
    """``$DBKEEP_CACHE_DIR``, else ``$XDG_CACHE_HOME/dbkeep``, else ``~/.cache/dbkeep``; None when turned off."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return Path(configured) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dbkeep"


def cache_path(repository_id: str) -> Path | None:
    """Where the index copy of the repository with this id lives, or None when the cache is off.

    Off on big-endian machines (the arrays are written as this machine holds
    them) and where the cache folder exists but is not this user's alone (see
    ``_in_private_folder``). Nothing is created here: ``save`` makes the folder.
    """
    directory = cache_directory()
    if directory is None or sys.byteorder != "little" or (os.path.lexists(directory) and not _private(directory)):
        return None
    return directory / repository_id / "index"


def _in_private_folder(path: Path) -> bool:
    """True if the copy's folder and the cache folder above it are this user's alone: rows planted there would be believed."""
    return _private(path.parent) and _private(path.parent.parent)


def _private(directory: Path) -> bool:
    """A real folder (not a link) owned by this user that nobody else may write into."""
    try:
        status = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(status.st_mode) and status.st_uid == os.getuid() and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def key_of(files: list[str]) -> bytes:
    """The key of a set of index file names: their sorted list's SHA-256."""
    return hashlib.sha256("\n".join(sorted(files)).encode()).digest()


def save(index: Index, path: Path) -> None:
    """Write ``index`` to ``path`` (atomically: a temp file renamed); a failure leaves the cache as it was.

    A cache that cannot be written is not an error: the next run reads the index files.
    """
    if index.problems:
        return  # only an index read whole from its files is worth keeping
    packs, rows, keys, order, shift, starts = index.held_state()
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not _in_private_folder(path):
            return
        descriptor, temp = tempfile.mkstemp(prefix=".index-", dir=path.parent)
    except OSError:
        return
    try:
        with os.fdopen(descriptor, "wb") as handle:
            digest = hashlib.sha256()
            counts = _COUNTS.pack(key_of(index.files), len(rows) // HELD.size, len(packs) // HELD_PACK.size, len(keys), shift, len(starts))
            for part in (MAGIC, counts, packs, rows, keys, order, starts):
                with memoryview(part).cast("B") as view:
                    for start in range(0, len(view), _PIECE):
                        digest.update(view[start : start + _PIECE])
                        handle.write(view[start : start + _PIECE])
            handle.write(digest.digest())
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp)


def load(path: Path, files: list[str]) -> Index | None:
    """The index saved at ``path`` if it was made from exactly these index ``files`` and is whole; else None."""
    if not _in_private_folder(path):
        return None
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(len(MAGIC) + _COUNTS.size)
            if len(head) != len(MAGIC) + _COUNTS.size or head[: len(MAGIC)] != MAGIC:
                return None
            key, row_count, pack_count, key_count, shift, start_count = _COUNTS.unpack_from(head, len(MAGIC))
            if key != key_of(files) or size != len(head) + pack_count * HELD_PACK.size + row_count * HELD.size + key_count * 12 + start_count * 4 + 32:
                return None
            digest = hashlib.sha256(head)
            packs = _read_into(handle, bytearray(pack_count * HELD_PACK.size), digest)
            rows = _read_into(handle, bytearray(row_count * HELD.size), digest)
            keys = _read_array(handle, "Q", key_count, digest)
            order = _read_array(handle, "I", key_count, digest)
            starts = _read_array(handle, "I", start_count, digest)
            if handle.read(32) != digest.digest():
                return None
    except (OSError, _Unusable):
        return None
    try:
        return Index.from_held_state(bytes(packs), rows, keys, order, shift, starts, files)
    except ValueError:
        return None


class _Unusable(Exception):
    """The copy ends early or does not fit this platform: read the index files instead."""


def _read_into(handle, buffer: bytearray, digest) -> bytearray:
    """Fill ``buffer`` from ``handle`` piece by piece, hashing as it goes; OSError if the file ends first."""
    with memoryview(buffer) as view:
        for start in range(0, len(view), _PIECE):
            piece = view[start : start + _PIECE]
            if handle.readinto(piece) != len(piece):
                raise _Unusable
            digest.update(piece)
    return buffer


def _read_array(handle, code: str, count: int, digest) -> array:
    values = array(code)
    if values.itemsize != {"Q": 8, "I": 4}[code]:
        raise _Unusable  # this platform's arrays differ from the ones saved
    values.frombytes(_read_into(handle, bytearray(count * values.itemsize), digest))
    return values
