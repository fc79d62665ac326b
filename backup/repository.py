"""The repository: config, packs of chunks, the index, and snapshot manifests.

Owns: creating and opening a repository, storing chunks once (content addressed,
compressed, grouped in packs), finding and reading them back with their hashes
checked, writing the index, and saving / loading / deleting manifests in the
order that keeps invariant 1 (data, then index, then manifest). Knows storage
formats, never databases: it does not import sqlite3.

Layout under the repository location (docs/format.md has the bytes):

    config.json             sealed JSON: version, id, chunking, compression
                            (encrypted repositories: an envelope around it, see crypto)
    keys/<key-id>           encrypted repositories: the master key wrapped per passphrase
    snapshots/<id>.json     sealed manifest; its appearance is the commit point
    packs/<xx>/<pack-id>    frames of chunks with a trailing header
    index/<index-id>        pack -> chunk locations (zstd-compressed rows); named by its SHA-256
    locks/                  lock records
    tmp/                    scratch space for captures and restores (private)
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import secrets
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from . import chunk_index, crypto, fsio, indexcache
from . import pack as packformat
from .errors import (
    AuthenticationFailed,
    ConfigError,
    CorruptChunk,
    CorruptData,
    CorruptIndex,
    CorruptManifest,
    CorruptPack,
    RepositoryNotFound,
    SnapshotNotFound,
    StorageError,
)
from .chunk_index import ChunkLocation, Index, encode_rows, hex_ids
from .inorder import InOrder
from .manifest import MAX_CHUNK_LIST_LEVELS, MAX_MANIFEST_BYTES, Snapshot, check_snapshot_id, seal, unseal
from .pack import Frame, PackEntry, check_id
from .storage import LocalStorage, Staged, Storage, describe_os_error

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
FOLDERS = ("snapshots", "packs", "index", "locks")
PACK_TARGET_BYTES = 16 * 1024 * 1024
#: A frame of consecutive new chunks closes once it holds this much (docs/format.md,
#: "Packs", says why 4 MiB): a first backup compresses in frames this large.
FRAME_TARGET_BYTES = 4 * 1024 * 1024
#: A frame closes at this size instead when the next new chunk does not directly
#: follow the last one (a chunk already stored came between): pages changed here and
#: there go in small frames, so reading one of them later decompresses little.
SCATTERED_FRAME_BYTES = 128 * 1024
#: How many data chunk ids one leaf chunk list holds; a changed chunk rewrites one
#: leaf (512 bytes) and the lists above it, so the lists a backup adds follow the change.
CHUNK_LIST_FANOUT = 16
#: A chunk id in a chunk list: the raw SHA-256 (or keyed hash).
CHUNK_ID_BYTES = 32
#: How many list ids a list above the leaves holds, and the most the manifest lists.
CHUNK_TREE_FANOUT = 64
#: Frames handed to the compressing threads and not yet placed in a pack; bounds
#: the memory a backup holds (each is at most FRAME_TARGET_BYTES plus one chunk).
FRAMES_IN_FLIGHT = 2
#: Threads compressing frames: zstd at level 3 is slower than hashing the same
#: bytes, so two keep up with one reading thread.
FRAME_WORKERS = 2
#: Decompressed frames kept for reads: a restore reads from a leaf list frame and a
#: data frame of FRAME_TARGET_BYTES at once (and after incremental backups from
#: their small frames of scattered chunks as well), and verify reads a few versions
#: of a file side by side, so their shared frames are opened once. The byte bound
#: keeps memory flat.
FRAME_CACHE_FRAMES = 16
FRAME_CACHE_BYTES = 12 * 1024 * 1024
#: Chunks read together by ``read_chunks``: each frame they need is decompressed once.
READ_BATCH_BYTES = 4 * 1024 * 1024
READ_BATCH_CHUNKS = 16384
READAHEAD_MIN = 256 * 1024
READAHEAD_MAX = 8 * 1024 * 1024
#: No config or index file dbkeep writes comes near these sizes (an index file of
#: 1 GiB lists some ten million chunks); a larger file is damage, and is refused
#: before it is read into memory.
MAX_CONFIG_BYTES = 1024 * 1024
MAX_INDEX_BYTES = 1024**3
#: zstd level of index files: they are small, and written once per backup.
INDEX_COMPRESSION_LEVEL = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class RepositoryConfig:
    version: int
    id: str
    chunk_size: int
    compression: str
    compression_level: int
    #: "none", or "aes-256-gcm" for an encrypted repository (chunk ids then HMAC-SHA256).
    encryption: str = "none"

    def to_body(self) -> dict[str, object]:
        body: dict[str, object] = {
            "version": self.version,
            "id": self.id,
            "chunk_size": self.chunk_size,
            "compression": self.compression,
            "compression_level": self.compression_level,
        }
        if self.encryption != "none":  # unencrypted configs stay byte-identical to format 1
            body["encryption"] = self.encryption
        return body

    @classmethod
    def from_body(cls, body: dict[str, object]) -> RepositoryConfig:
        try:
            config = cls(
                version=int(body["version"]),  # type: ignore[call-overload]
                id=str(body["id"]),
                chunk_size=int(body["chunk_size"]),  # type: ignore[call-overload]
                compression=str(body["compression"]),
                compression_level=int(body["compression_level"]),  # type: ignore[call-overload]
                encryption=str(body.get("encryption", "none")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptManifest(f"repository config is incomplete: {error}") from error
        if config.version != FORMAT_VERSION:
            raise CorruptManifest(f"repository format version {config.version} is not supported; upgrade dbkeep")
        if config.compression not in {"zstd", "none"} or not 512 <= config.chunk_size <= packformat.MAX_FRAME_BYTES:
            raise CorruptManifest("repository config has an unsupported compression or chunk size")
        if config.encryption not in {"none", crypto.CIPHER}:
            raise CorruptManifest(f"repository encryption {config.encryption[:40]!r} is not supported; upgrade dbkeep")
        return config


def pack_name(pack_id: str) -> str:
    return f"packs/{check_id(pack_id, 'pack id')[:2]}/{pack_id}"


def snapshot_name(snapshot_id: str) -> str:
    return f"snapshots/{check_snapshot_id(snapshot_id)}.json"


def _pack_order(entry: PackEntry) -> tuple[int, int, str]:
    """Entries in the order they sit in the pack, so equal indexes have equal bytes."""
    return (entry.frame_offset, entry.offset_in_frame, entry.chunk_id)
def _get_bounded(storage: Storage, name: str, limit: int, error: type[CorruptData]) -> bytes:
    """Read a metadata file whole, refusing (``error``) one too large to be genuine."""
    info = storage.stat(name)
    if info is not None and info.size > limit:
        raise error(f"{name} is {info.size} bytes, larger than any file dbkeep writes there: it is damaged")
    return storage.get(name)


#: Index files of version 2 start with this magic; version 1 files are JSON (start with "{").
INDEX_MAGIC = b"DBKINDX2"
#: One row of a version 2 index: pack id, pack size, then a pack header entry.
INDEX_ROW = chunk_index.ROW
#: A genuine row holds two random 32-byte ids and compresses to no less than about
#: 35 bytes; an index that claims to grow more than this many times is damage (a bomb).
MAX_INDEX_EXPANSION = 16


def encode_index(packs: dict[str, tuple[int, list[PackEntry]]]) -> bytes:
    """An index file (version 2): magic, then one zstd frame of fixed-size rows.

    Rows are sorted by pack id and, within a pack, in pack order, so the same
    packs always give the same bytes (and so the same name).
    """
    return encode_index_rows({pack_id: encode_rows(pack_id, size, sorted(entries, key=_pack_order)) for pack_id, (size, entries) in packs.items()})


def encode_index_rows(rows_by_pack: dict[str, bytes | range], *, held: Index | None = None) -> bytes:
    """``encode_index`` from each pack's rows, already in pack order.

    A pack's rows are bytes, or the range of row numbers under which ``held``
    holds them. They are compressed pack by pack into one frame (its size
    declared), so the whole index is never joined into one more copy.
    """

    def size(rows: bytes | range) -> int:
        return len(rows) * INDEX_ROW.size if isinstance(rows, range) else len(rows)

    compressor = zstandard.ZstdCompressor(level=INDEX_COMPRESSION_LEVEL, write_content_size=True)
    stream = compressor.compressobj(size=sum(size(rows) for rows in rows_by_pack.values()))
    pieces = [INDEX_MAGIC]
    for _, rows in sorted(rows_by_pack.items()):
        if isinstance(rows, range):
            assert held is not None
            rows = held.row_bytes(rows)
        pieces.append(stream.compress(rows))
    pieces.append(stream.flush())
    return b"".join(pieces)


def decode_index(data: bytes, name: str, *, verify_name: bool = True) -> dict[str, tuple[int, list[PackEntry]]]:
    """Parse one index file (version 2, or version 1 JSON); raises CorruptIndex if it is damaged in any way.

    ``verify_name=False`` when the caller already checked the stored (sealed)
    bytes against the name and passes the opened plaintext.
    """
    rows = decode_index_rows(data, name, verify_name=verify_name)
    result: dict[str, tuple[int, list[PackEntry]]] = {}
    for raw_pack_id, size, *fields in INDEX_ROW.iter_unpack(rows):
        result.setdefault(raw_pack_id.hex(), (size, []))[1].append(PackEntry.from_fields(*fields))
    return result


def decode_index_rows(data: bytes, name: str, *, verify_name: bool = True) -> bytes:
    """One index file's checked rows (INDEX_ROW records); raises CorruptIndex if it is damaged in any way."""
    return b"".join(index_row_pieces(data, name, verify_name=verify_name))


def index_row_pieces(data: bytes, name: str, *, verify_name: bool = True) -> Iterator[bytes]:
    """One index file's rows in pieces of whole rows, once all of them were checked.

    Raises CorruptIndex before returning if the file is damaged in any way. A
    version 2 file is decompressed twice, once to check every row and once as
    the caller takes the pieces, so its rows are never all in memory at once
    (a 1 GiB database's index holds 25 MB of rows).
    """
    if verify_name and hashlib.sha256(data).hexdigest() != name.rsplit("/", 1)[-1]:
        raise CorruptIndex(f"index file {name} does not hash to its name: it was damaged")
    try:
        if data.startswith(INDEX_MAGIC):
            compressed = memoryview(data)[len(INDEX_MAGIC) :]
            declared = _declared_rows_size(compressed, name)
            sizes: dict[bytes, int] = {}
            for piece in _row_pieces(compressed, declared, name):
                _check_rows(piece, name, sizes)
            return _row_pieces(compressed, declared, name)
        if data.startswith(INDEX_MAGIC[:-1]):
            raise CorruptIndex(f"index file {name} is of version {data[len(INDEX_MAGIC) - 1 : len(INDEX_MAGIC)]!r}, which this dbkeep cannot read; upgrade dbkeep")
        return iter([b"".join(encode_rows(pack_id, size, entries) for pack_id, (size, entries) in _decode_json_index(data, name).items())])
    except CorruptIndex:
        raise
    except (CorruptPack, ValueError, KeyError, TypeError, AttributeError, RecursionError, struct.error) as error:
        raise CorruptIndex(f"index file {name} does not match the format: {type(error).__name__}: {str(error)[:200]}") from error


#: Rows decompressed per piece when an index file is read (about 0.75 MB).
_PIECE_ROWS = 8192


def _declared_rows_size(compressed: memoryview, name: str) -> int:
    """The size of the rows the frame declares, refused when no genuine index could expand to it."""
    limit = min(MAX_INDEX_BYTES, MAX_INDEX_EXPANSION * len(compressed) + 4096)
    try:
        declared = zstandard.frame_content_size(compressed)
    except zstandard.ZstdError as error:
        raise CorruptIndex(f"index file {name} does not decompress: {str(error)[:200]}") from error
    if declared < 0:
        raise CorruptIndex(f"index file {name} does not declare the size of its rows: it is damaged")
    if declared > limit:
        raise CorruptIndex(f"index file {name} claims {declared} bytes of rows, more than {limit} could hold: it is damaged")
    if declared % INDEX_ROW.size:
        raise CorruptIndex(f"index file {name} is not a whole number of {INDEX_ROW.size}-byte rows: it is damaged")
    return declared


def _row_pieces(compressed: memoryview, declared: int, name: str) -> Iterator[bytes]:
    """The frame's rows in pieces of whole rows, refusing a frame that decompresses to other than ``declared`` bytes.

    The declared size is checked, not trusted: decompression stops one byte past it.
    """
    buffer = bytearray(INDEX_ROW.size * _PIECE_ROWS)
    total = 0
    try:
        with zstandard.ZstdDecompressor().stream_reader(compressed, read_across_frames=False) as reader, memoryview(buffer) as view:
            while True:
                room = min(len(buffer), declared + 1 - total)
                filled = 0
                while filled < room and (count := reader.readinto(view[filled:room])):
                    filled += count
                total += filled
                if total > declared:
                    break
                if filled % INDEX_ROW.size:
                    raise CorruptIndex(f"index file {name} is not a whole number of {INDEX_ROW.size}-byte rows: it is damaged")
                if filled:
                    yield bytes(view[:filled])
                if filled < room:
                    break
    except zstandard.ZstdError as error:
        raise CorruptIndex(f"index file {name} does not decompress: {str(error)[:200]}") from error
    if total != declared:
        raise CorruptIndex(f"index file {name} decompresses to {min(total, declared + 1)} bytes, not the {declared} its frame declares: it is damaged")


#: The fields of a row that have bounds: pack id, pack size, frame length, offset in frame, length, compression.
_ROW_BOUNDS = struct.Struct("<32sQ40xIIIB")


def _check_rows(rows: bytes, name: str, sizes: dict[bytes, int]) -> None:
    """Refuse rows out of the format's bounds, or giving a pack two sizes (``sizes``: pack -> its size so far)."""
    most = packformat.MAX_FRAME_BYTES
    for raw_pack_id, size, frame_length, offset_in_frame, length, compression in _ROW_BOUNDS.iter_unpack(rows):
        if sizes.setdefault(raw_pack_id, size) != size:
            raise CorruptIndex(f"index file {name} gives pack {raw_pack_id.hex()} two sizes: it is damaged")
        if size > packformat.MAX_PACK_BYTES or compression > packformat.COMPRESSION_ZSTD or offset_in_frame + length > most or frame_length > most:
            raise CorruptIndex(f"index file {name} has a row out of bounds (pack size {size}, frame length {frame_length}, chunk {offset_in_frame}+{length}, compression {compression}): it is damaged")


def _decode_json_index(data: bytes, name: str) -> dict[str, tuple[int, list[PackEntry]]]:
    """An index file of version 1 (JSON), as written before version 2; still read."""
    body = json.loads(data)
    if body.get("format") != "dbkeep-index" or body.get("version") != 1:
        raise CorruptIndex(f"index file {name} is not a supported dbkeep index")
    result: dict[str, tuple[int, list[PackEntry]]] = {}
    for item in body["packs"]:
        size = item["size"]
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= packformat.MAX_PACK_BYTES:
            raise CorruptIndex(f"index file {name} has a bad pack size")
        result[check_id(item["id"], "pack id")] = (size, [PackEntry.from_row(row) for row in item["chunks"]])
    return result


class Repository:
    """A repository on some storage. Open with ``Repository.open`` or ``init``."""

    def __init__(self, storage: Storage, config: RepositoryConfig, keys: crypto.MasterKeys | None = None) -> None:
        self.storage = storage
        self.config = config
        #: The master keys of an encrypted repository; None when it is not encrypted.
        self.keys = keys
        #: A chunk's id as the raw 32 bytes index rows and chunk lists hold (``chunk_id``
        #: in hex): chosen once, as it runs for every chunk a backup or verify sees.
        self.chunk_digest: Callable[[bytes | memoryview], bytes] = keys.chunk_digest if keys is not None else packformat.chunk_digest_of
        self._index: Index | None = None
        #: Where the local copy of the merged index lives (indexcache.py); None: read the index files every time.
        self.index_cache: Path | None = None
        self._frame_cache: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()
        self._frame_cache_bytes = 0
        #: Read-ahead window (pack id, offset, bytes): sequential frame reads become
        #: one large ranged read instead of one request per frame (S3 latency).
        #: Two windows, so reading a chunk list between data frames keeps the data window.
        self._windows: list[tuple[str, int, bytes]] = []
        self._readahead = 0

    @property
    def encrypted(self) -> bool:
        return self.keys is not None

    # -- creation -------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        storage: Storage,
        *,
        chunk_size: int,
        compression_level: int,
        passphrase: str | None = None,
        kdf: crypto.KdfParams | None = None,
    ) -> Repository:
        """Create a new, empty repository, encrypted when a passphrase is given.

        Refuses to replace an existing one (opens it instead). An encrypted
        repository's first key file is written before its config, so a config
        never exists without a key that opens it.
        """
        config = RepositoryConfig(
            version=FORMAT_VERSION,
            id=secrets.token_hex(16),
            chunk_size=chunk_size,
            compression="zstd" if compression_level > 0 else "none",
            compression_level=compression_level,
            encryption=crypto.CIPHER if passphrase is not None else "none",
        )
        for folder in (*FOLDERS, "keys") if passphrase is not None else FOLDERS:
            if isinstance(storage, LocalStorage):
                try:
                    fsio.make_private_dirs(storage.root / folder)
                except OSError as error:
                    raise describe_os_error("create", storage.root / folder, error) from error
        if passphrase is None:
            try:
                storage.put(CONFIG_NAME, [seal(config.to_body(), kind="config")], exclusive=True)
            except FileExistsError:
                return cls.open(storage)
            return cls(storage, config)
        crypto.require_cryptography()
        secret = crypto.new_secret()
        key_file = crypto.KeyFile.wrap(secret, passphrase, repository_id=config.id, kdf=kdf)
        keys = crypto.MasterKeys(secret, config.id, key_id=key_file.id)
        storage.put(key_file.name, [key_file.to_json()], exclusive=True)
        envelope = crypto.encode_config_envelope(keys, seal(config.to_body(), kind="config"))
        try:
            storage.put(CONFIG_NAME, [envelope], exclusive=True)
        except FileExistsError:
            storage.delete(key_file.name)  # another process created the repository first
            return cls.open(storage, passphrase=lambda: passphrase)
        return cls(storage, config, keys)

    @classmethod
    def open(
        cls,
        storage: Storage,
        *,
        passphrase: Callable[[], str | None] | None = None,
        require_encryption: bool = False,
    ) -> Repository:
        """Open an existing repository; RepositoryNotFound if there is none.

        ``passphrase`` is called only for an encrypted repository. Raises
        WrongPassphrase when it opens no key file, ConfigError when none is
        available, and AuthenticationFailed when the config was tampered with,
        including an unencrypted config where encryption is required or key
        files exist (a downgrade).
        """
        if not storage.exists(CONFIG_NAME):
            raise RepositoryNotFound(
                f"no dbkeep repository at {storage.location}; create a backup first (backup.create) "
                "or point the 'repository' setting at an existing one"
            )
        data = _get_bounded(storage, CONFIG_NAME, MAX_CONFIG_BYTES, CorruptManifest)
        if not crypto.is_config_envelope(data):
            if require_encryption:
                raise ConfigError(
                    f"repository {storage.location} is not encrypted but the encryption setting asks for it; "
                    "encryption is chosen when a repository is created: copy the snapshots into a new encrypted repository (backup.copy)"
                )
            config = RepositoryConfig.from_body(unseal(data, kind="config"))
            if config.encryption != "none" or _has_key_files(storage):
                raise AuthenticationFailed(
                    f"repository {storage.location} has key files or claims encryption but its config is not sealed: "
                    "it was tampered with (a downgrade to an unencrypted repository); nothing was read"
                )
            return cls(storage, config)
        repository_id, sealed = crypto.parse_config_envelope(data)
        text = passphrase() if passphrase is not None else None
        if text is None:
            raise ConfigError(
                f"repository {storage.location} is encrypted: set DBKEEP_PASSWORD, DBKEEP_PASSWORD_FILE or DBKEEP_PASSWORD_COMMAND"
            )
        keys = crypto.unlock(load_key_files(storage), text, repository_id=repository_id)
        body = keys.open(sealed, crypto.associated_data("config", repository_id), "repository config")
        config = RepositoryConfig.from_body(unseal(body, kind="config"))
        if config.id != repository_id or config.encryption != crypto.CIPHER:
            raise AuthenticationFailed(f"repository config of {storage.location} does not match its envelope: it was tampered with")
        return cls(storage, config, keys)

    @classmethod
    def open_or_init(
        cls,
        storage: Storage,
        *,
        chunk_size: int,
        compression_level: int,
        passphrase: Callable[[], str | None] | None = None,
        encrypt: bool = False,
    ) -> Repository:
        """Open the repository, creating it (encrypted when ``encrypt``) if there is none."""
        if storage.exists(CONFIG_NAME):
            return cls.open(storage, passphrase=passphrase, require_encryption=encrypt)
        # A location that already holds snapshots, packs or index files but no
        # config is a damaged repository, not an empty one: refuse rather than
        # write a fresh config that would hide the damage.
        for folder in ("snapshots", "packs", "index"):
            if storage.exists(folder) and storage.list(folder):
                raise CorruptManifest(
                    f"the repository at {storage.location} holds {folder} but its {CONFIG_NAME} is missing: it is damaged; "
                    f"restore {CONFIG_NAME} from a copy of the repository, or point the 'repository' setting at a new location"
                )
        if not encrypt:
            return cls.init(storage, chunk_size=chunk_size, compression_level=compression_level)
        text = passphrase() if passphrase is not None else None
        if text is None:
            raise ConfigError("creating an encrypted repository needs a passphrase: set DBKEEP_PASSWORD, DBKEEP_PASSWORD_FILE or DBKEEP_PASSWORD_COMMAND")
        return cls.init(storage, chunk_size=chunk_size, compression_level=compression_level, passphrase=text)

    # -- encryption hooks -----------------------------------------------------------

    def chunk_id(self, data: bytes | memoryview) -> str:
        """A chunk's id: SHA-256 of its bytes, or HMAC-SHA256 under the repository key."""
        return self.keys.chunk_id(data) if self.keys is not None else packformat.chunk_id_of(data)

    def _aad(self, kind: str, name: str = "") -> bytes:
        return crypto.associated_data(kind, self.config.id, name)

    def seal_frame(self, data: bytes) -> bytes:
        assert self.keys is not None
        return self.keys.seal(data, self._aad("frame"))

    def pack_header(self, entries: bytes) -> bytes:
        """The header and trailer of a pack whose frames ``packformat.encode_entries`` described."""
        if self.keys is None:
            return packformat.encode_header(entries)
        keys = self.keys
        return packformat.encode_sealed_header(entries, lambda plain: keys.seal(plain, self._aad("pack-header")))

    def parse_pack(self, data: bytes, pack_id: str) -> list[PackEntry]:
        """The entries of a whole pack held in memory (verify, index rebuild)."""
        return packformat.parse_header(*self.split_pack(data, pack_id), pack_id)

    def split_pack(self, data: bytes, pack_id: str) -> tuple[bytes, int]:
        """(header entries, where the frames end) of a whole pack; the header authenticated when encrypted."""
        if self.keys is None:
            return packformat.split_pack(data, pack_id)
        keys = self.keys
        return packformat.split_sealed_pack(data, pack_id, lambda sealed: keys.open(sealed, self._aad("pack-header"), f"header of pack {pack_id}"))

    def _decode_index(self, data: bytes, name: str) -> dict[str, tuple[int, list[PackEntry]]]:
        """An index file's packs and their entries, opened first in an encrypted repository."""
        return decode_index(self._index_plaintext(data, name), name, verify_name=False)

    def _index_row_pieces(self, data: bytes, name: str) -> Iterator[bytes]:
        """An index file's checked rows in pieces (``index_row_pieces``), opened first in an encrypted repository."""
        return index_row_pieces(self._index_plaintext(data, name), name, verify_name=False)

    def _index_plaintext(self, data: bytes, name: str) -> bytes:
        """The index file's bytes, checked against its name (and opened, if sealed)."""
        if hashlib.sha256(data).hexdigest() != name.rsplit("/", 1)[-1]:
            raise CorruptIndex(f"index file {name} does not hash to its name: it was damaged")
        if self.keys is None:
            return data
        return self.keys.open_object(data, self._aad("index"), f"index file {name}")

    # -- index ----------------------------------------------------------------------

    def index(self, *, reload: bool = False) -> Index:
        """The merged index; damaged index files are recorded in ``problems``, not fatal.

        With ``index_cache`` set, the local copy is used when it was made from
        exactly the index files there are (indexcache.py), and refreshed after the
        files are read. ``reload`` reads the files again and never the copy:
        verify and clean must see a damaged file.
        """
        if self._index is None or reload:
            infos = list(self.storage.list("index"))
            names = [info.name for info in infos]
            cached = indexcache.load(self.index_cache, names) if self.index_cache is not None and not reload else None
            if cached is not None and self._index_files_intact(names):
                self._index = cached
                return cached
            index = Index()
            for info in infos:
                index.files.append(info.name)
                try:
                    pieces = self._index_row_pieces(_get_bounded(self.storage, info.name, MAX_INDEX_BYTES, CorruptIndex), info.name)
                except (CorruptIndex, AuthenticationFailed, StorageError) as error:
                    index.problems.append(str(error))
                    continue
                index.add_file_rows(pieces)
            self._index = index
            if self.index_cache is not None:
                indexcache.save(index, self.index_cache)
        return self._index

    def _index_files_intact(self, names: list[str]) -> bool:
        """True if every index file still hashes to its name, so the local copy made from them still holds."""
        for name in names:
            try:
                self._index_plaintext(_get_bounded(self.storage, name, MAX_INDEX_BYTES, CorruptIndex), name)
            except (CorruptIndex, AuthenticationFailed, StorageError):
                return False
        return True

    def _index_file_written(self, index: Index, name: str) -> None:
        """The index file ``name`` holds rows ``index`` (a writer's) already has: record it, and refresh the local copy.

        Only while ``index`` is still the loaded one: a copy must hold exactly what its files do.
        """
        if index is self._index:
            index.files.append(name)
            if self.index_cache is not None:
                indexcache.save(index, self.index_cache)

    def _drop_loaded_index(self, index: Index) -> None:
        """Forget ``index`` if it is the loaded one: it holds rows that no index file lists."""
        if index is self._index:
            self._index = None

    def rebuild_index(self) -> tuple[int, list[str]]:
        """Write one fresh index from every pack's own header, then drop the old files.

        Returns (packs indexed, problems). Damaged packs are skipped and named; the
        old index files are removed only after the new one is durable.
        """
        packs: dict[str, tuple[int, list[PackEntry]]] = {}
        problems: list[str] = []
        for info in self.storage.list("packs"):
            pack_id = info.name.rsplit("/", 1)[-1]
            try:
                check_id(pack_id, "pack id")
                data = self.storage.get(info.name)
                if hashlib.sha256(data).hexdigest() != pack_id:
                    raise CorruptPack(f"pack {pack_id} does not hash to its name")
                packs[pack_id] = (len(data), self.parse_pack(data, pack_id))
            except (CorruptData, StorageError) as error:
                problems.append(str(error))
        old_files = [info.name for info in self.storage.list("index")]
        new_name = self._write_index(packs)
        for name in old_files:
            if name != new_name:
                self.storage.delete(name)
        self._index = None
        return len(packs), problems

    def _write_index(self, packs: dict[str, tuple[int, list[PackEntry]]]) -> str:
        return self._write_index_file(encode_index(packs))

    def _write_index_file(self, data: bytes) -> str:
        if self.keys is not None:
            data = self.keys.seal_object(data, self._aad("index"))
        digest = hashlib.sha256(data).hexdigest()
        name = f"index/{digest}"
        self.put_content_addressed(name, [data], digest)
        return name

    def put_content_addressed(self, name: str, pieces: list[bytes], digest: str) -> int:
        """Store bytes named by their SHA-256 ``digest``; returns their size.

        A file already under that name is kept only if it holds exactly these
        bytes. One that was truncated, altered or swapped is replaced, so a new
        backup of the same data repairs it instead of trusting it.
        """
        size = sum(len(piece) for piece in pieces)
        try:
            return self.storage.put(name, pieces, exclusive=True)
        except FileExistsError:
            pass
        if self._holds(name, size, digest):
            self._make_name_durable(name)
            return size
        return self.storage.put(name, pieces)

    def publish_content_addressed(self, name: str, staged: Staged, digest: str) -> int:
        """``put_content_addressed`` for bytes already written to ``staged`` (from ``stage``)."""
        try:
            try:
                return staged.publish(name, exclusive=True)
            except FileExistsError:
                pass
            if self._holds(name, staged.size, digest):
                self._make_name_durable(name)
                return staged.size
            return staged.publish(name)
        finally:
            staged.discard()

    def _make_name_durable(self, name: str) -> None:
        """fsync the folder of a name found already present: a writer killed between
        linking it and syncing its folder leaves a name a power loss could still take."""
        sync = getattr(self.storage, "sync_folder_of", None)
        if sync is not None:
            sync(name)

    def _holds(self, name: str, size: int, digest: str) -> bool:
        """True if the object ``name`` holds ``size`` bytes hashing to ``digest``."""
        info = self.storage.stat(name)
        if info is None or info.size != size:
            return False
        with contextlib.suppress(StorageError):
            return hashlib.sha256(self.storage.get(name)).hexdigest() == digest
        return False

    def stage(self, folder: str) -> Staged | None:
        """A staged object to write piece by piece (see LocalStorage.stage), or None if the storage cannot stage."""
        stage = getattr(self.storage, "stage", None)
        return stage(folder) if stage is not None else None

    def remove_stale_temps(self) -> int:
        """Remove temp files killed writers left behind; call only under the exclusive lock."""
        if not isinstance(self.storage, LocalStorage):
            # Remote stores keep no temp files; a killed upload leaves billed parts instead.
            abort_stale_uploads = getattr(self.storage, "abort_stale_uploads", None)
            return abort_stale_uploads() if abort_stale_uploads is not None else 0
        removed = sum(self.storage.remove_stale_temps(folder) for folder in (*FOLDERS, "tmp") if self.storage.exists(folder))
        try:
            return removed + fsio.remove_stale_temps(self.storage.root)
        except OSError as error:
            raise describe_os_error("clean temporary files in", self.storage.root, error) from error

    # -- writing chunks -------------------------------------------------------------

    def writer(self, *, ignore_packs: Iterable[str] = (), keep_entries: bool = False) -> ChunkWriter:
        """A chunk writer; chunks only found in ``ignore_packs`` count as absent (repack).

        ``keep_entries`` keeps every written pack's entries in ``packs_written``.
        """
        return ChunkWriter(self, ignore_packs=ignore_packs, keep_entries=keep_entries)

    # -- reading chunks -------------------------------------------------------------

    def locate(self, chunk_id: str) -> list[ChunkLocation]:
        locations = self.index().all_locations(chunk_id)
        if not locations:
            raise CorruptChunk(f"chunk {chunk_id} is not in the index: its data is missing from the repository")
        return locations

    def read_frame(self, pack_id: str, entry: PackEntry) -> bytes:
        key = (pack_id, entry.frame_offset)
        cached = self._frame_cache.get(key)
        if cached is not None:
            self._frame_cache.move_to_end(key)
            return cached
        try:
            data = self._read_pack_range(pack_id, entry.frame_offset, entry.frame_length)
        except StorageError as error:
            raise CorruptPack(f"pack {pack_id} cannot be read for chunk {entry.chunk_id}: {error}") from error
        frame = self.open_frame(pack_id, entry, data)
        self._frame_cache[key] = frame
        self._frame_cache_bytes += len(frame)
        while len(self._frame_cache) > 1 and (len(self._frame_cache) > FRAME_CACHE_FRAMES or self._frame_cache_bytes > FRAME_CACHE_BYTES):
            self._frame_cache_bytes -= len(self._frame_cache.popitem(last=False)[1])
        return frame

    def _forget_frame(self, key: tuple[str, int]) -> None:
        frame = self._frame_cache.pop(key, None)
        if frame is not None:
            self._frame_cache_bytes -= len(frame)

    def open_frame(self, pack_id: str, entry: PackEntry, data: bytes | memoryview) -> bytes:
        """The decompressed frame holding ``entry`` from its stored bytes; raises CorruptData.

        In an encrypted repository the frame is authenticated before the
        decompressor sees a byte: tampering is never garbage.
        """
        if self.keys is not None:
            data = self.keys.open(data, self._aad("frame"), f"frame at offset {entry.frame_offset} of pack {pack_id}")
        return packformat.decompress_frame(data, entry.compression)

    def check_frame(self, pack_id: str, first: PackEntry, members: Sequence[tuple[bytes, int, int]]) -> dict[str, CorruptData]:
        """Open one frame and check every listed chunk in it; returns chunk id -> why that copy is bad.

        ``first`` is the entry of any chunk of the frame (it says where the frame
        is); ``members`` are the chunks to check in it, as (raw id, offset in the
        frame, length) (Index.frame_members). The frame is read and opened once
        (authenticated when encrypted) and each chunk hashed against its id
        exactly as ``read_chunk`` would, so problems read the same as a failed
        read names them. An intact frame stays cached for the reads after.
        """
        try:
            frame = self.read_frame(pack_id, first)
        except CorruptData as error:
            return {raw_id.hex(): error for raw_id, _, _ in members}
        view = memoryview(frame)
        digest_of = self.chunk_digest
        damaged: dict[str, CorruptData] = {}
        for raw_id, offset, length in members:
            piece = view[offset : offset + length]
            if len(piece) != length or digest_of(piece) != raw_id:
                damaged[raw_id.hex()] = self._mismatch(raw_id.hex(), pack_id)
        if damaged:
            self._forget_frame((pack_id, first.frame_offset))
        return damaged

    def _mismatch(self, chunk_id: str, pack_id: str) -> CorruptData:
        if self.keys is not None:
            return AuthenticationFailed(f"chunk {chunk_id} in pack {pack_id} does not match its keyed id: the frame was swapped or moved")
        return CorruptChunk(f"chunk {chunk_id} in pack {pack_id} does not match its hash")

    def _read_pack_range(self, pack_id: str, offset: int, length: int) -> bytes:
        """Bytes of a pack, reading ahead (doubling up to READAHEAD_MAX) while access is sequential.

        Memory stays bounded by one window; a random access pattern reads exactly
        what is asked. If the read-ahead fails (a truncated pack), the exact range
        is read again so an intact frame is never blamed for damage past it.
        """
        for window in self._windows:
            if window[0] == pack_id and window[1] <= offset and offset + length <= window[1] + len(window[2]):
                start = offset - window[1]
                return window[2][start : start + length]
        sequential = any(window[0] == pack_id and offset == window[1] + len(window[2]) for window in self._windows)
        self._readahead = min(max(self._readahead * 2, READAHEAD_MIN), READAHEAD_MAX) if sequential else 0
        pack_size = self.index().pack_sizes.get(pack_id, 0)
        want = max(length, min(length + self._readahead, pack_size - offset))
        name = pack_name(pack_id)
        try:
            data = self.storage.get_range(name, offset, want)
        except StorageError:
            if want == length:
                raise
            self._readahead = 0
            want = length
            data = self.storage.get_range(name, offset, length)
        self._windows = [window for window in self._windows if not (window[0] == pack_id and offset == window[1] + len(window[2]))]
        self._windows = [(pack_id, offset, data), *self._windows][:2]
        return data[:length] if want > length else data

    def read_chunk(self, chunk_id: str) -> bytes:
        """The chunk's bytes, hash-checked; raises CorruptData if no copy is right.

        A chunk stored again after its first pack was damaged has several
        locations; each is tried in turn and the first intact one wins.
        """
        failures: list[CorruptData] = []
        for location in self.locate(chunk_id):
            entry = location.entry
            try:
                frame = self.read_frame(location.pack_id, entry)
            except CorruptData as error:
                failures.append(error)
                continue
            data = frame[entry.offset_in_frame : entry.offset_in_frame + entry.length]
            if len(data) == entry.length and self.chunk_id(data) == chunk_id:
                return data
            self._forget_frame((location.pack_id, entry.frame_offset))
            failures.append(self._mismatch(chunk_id, location.pack_id))
        if len(failures) == 1:
            raise failures[0]
        raise CorruptChunk(f"chunk {chunk_id}: no intact copy ({'; '.join(str(failure) for failure in failures)})")

    def read_chunks(self, chunk_ids: Iterable[str]) -> Iterator[bytes]:
        """The chunks' bytes in order, each hash-checked; raises as ``read_chunk`` does at the first bad one.

        Reads a batch of up to READ_BATCH_BYTES of chunks at a time: every frame the
        batch needs is read and decompressed once, in pack order, so chunks stored
        out of file order (blocks moved inside a file) cost one decompression per
        frame and batch instead of one per chunk. A chunk the batch could not read
        intact is read again on its own, which tries every copy and names the damage.
        """
        batch: dict[str, ChunkLocation | None] = {}  # in order; a repeated chunk is looked up once
        order: list[str] = []
        batch_bytes = 0
        for chunk_id in chunk_ids:
            order.append(chunk_id)
            if chunk_id not in batch:
                location = batch[chunk_id] = self.index().locations.get(chunk_id)
                batch_bytes += location.entry.length if location is not None else 0
            if batch_bytes >= READ_BATCH_BYTES or len(order) >= READ_BATCH_CHUNKS:
                yield from self._read_batch(order, batch)
                batch, order, batch_bytes = {}, [], 0
        yield from self._read_batch(order, batch)

    def _read_batch(self, chunk_ids: list[str], located: dict[str, ChunkLocation | None]) -> Iterator[bytes]:
        frames: dict[tuple[str, int], list[ChunkLocation]] = {}
        for location in located.values():
            if location is not None:
                frames.setdefault((location.pack_id, location.entry.frame_offset), []).append(location)
        found: dict[str, bytes] = {}
        for key in sorted(frames):
            locations = frames[key]
            try:
                frame = self.read_frame(locations[0].pack_id, locations[0].entry)
            except CorruptData:
                continue  # read_chunk below tries the other copies and reports the damage
            for location in locations:
                entry = location.entry
                data = frame[entry.offset_in_frame : entry.offset_in_frame + entry.length]
                if len(data) == entry.length and self.chunk_id(data) == entry.chunk_id:
                    found[entry.chunk_id] = data
        for chunk_id in chunk_ids:
            data = found.get(chunk_id)
            yield data if data is not None else self.read_chunk(chunk_id)

    def read_chunk_list(self, list_id: str) -> list[str]:
        """The ids one chunk list holds, in order (data chunk ids or, above the leaves, list ids)."""
        return hex_ids(self._read_raw_list(list_id))

    def _read_raw_list(self, list_id: str) -> bytes:
        data = self.read_chunk(list_id)
        if len(data) % 32:
            raise CorruptChunk(f"chunk list {list_id} has a length that is not a multiple of 32")
        return data

    def chunk_ids_of(self, chunk_lists: Iterable[str], *, levels: int, list_ids: set[str] | None = None) -> Iterator[str]:
        """Expand a file's chunk list tree into its data chunk ids, in order.

        ``levels`` is the file entry's ``chunk_list_levels`` (1: the lists hold
        data chunk ids). When ``list_ids`` is given, every list id of the tree
        that is read is added to it (prune and copy must keep the inner lists).
        """
        for leaf in self.leaf_lists_of(chunk_lists, levels=levels, list_ids=list_ids):
            yield from hex_ids(leaf)

    def leaf_lists_of(self, chunk_lists: Iterable[str], *, levels: int, list_ids: set[str] | None = None) -> Iterator[bytes]:
        """``chunk_ids_of`` a leaf list at a time, as its raw 32-byte ids joined.

        A 1 GiB database has 262,144 chunks: as hex strings its ids take 30 MB,
        raw and a list at a time they take 512 bytes.
        """
        if not 1 <= levels <= MAX_CHUNK_LIST_LEVELS:
            raise CorruptChunk(f"a chunk list tree of {levels} levels is not supported")
        for list_id in chunk_lists:
            if list_ids is not None:
                list_ids.add(list_id)
            data = self._read_raw_list(list_id)
            if levels == 1:
                yield data
            else:
                yield from self.leaf_lists_of(hex_ids(data), levels=levels - 1, list_ids=list_ids)

    def read_file_chunks(self, chunk_lists: Iterable[str], *, levels: int) -> Iterator[bytes]:
        yield from self.read_chunks(self.chunk_ids_of(chunk_lists, levels=levels))

    def read_file_unchecked(self, chunk_lists: Iterable[str], *, levels: int) -> Iterator[bytes | memoryview]:
        """A file's bytes in order, as runs of adjacent chunks, WITHOUT checking data chunk hashes.

        Only for a caller that compares everything it reads with the whole-file
        SHA-256 of a sealed manifest (the same chain of trust: the manifest fixes
        the chunk ids and the file's hash) and, when that fails, reads again
        through ``read_chunk``, which names the damaged chunk and tries its other
        copies. Each chunk is read from its first location; frames are still
        authenticated in an encrypted repository, and chunk lists are read checked.
        Raises CorruptData when a chunk is not indexed or its frame cannot be
        read, opened, or is too short.

        The ids stay raw, a leaf list at a time, and the index answers with row
        numbers that become runs directly: no text or location object is made per
        chunk (262,144 of them for a 1 GiB database).
        """
        index = self.index()
        runs: list[list] = []
        batch_bytes = 0
        for leaf in self.leaf_lists_of(chunk_lists, levels=levels):
            rows = index.first_rows(leaf)
            if -1 in rows:
                missing = rows.index(-1) * 32
                raise CorruptChunk(f"chunk {leaf[missing : missing + 32].hex()} is not in the index: its data is missing from the repository")
            batch_bytes += index.add_runs(rows, runs)
            if batch_bytes >= READ_BATCH_BYTES:
                yield from self.read_runs(runs)
                runs, batch_bytes = [], 0
        yield from self.read_runs(runs)

    def read_runs(self, runs: list[list]) -> Iterator[bytes | memoryview]:
        """The bytes of ``runs`` (chunks adjacent in one frame, as Index.add_runs builds them) in order, unchecked.

        Frames are read in pack order, each once per call, so chunks stored out of
        file order (pages a VACUUM moved) cost one decompression per frame, not one
        per chunk; those runs are copied out and held until the call's batch is
        complete. Callers keep a call to about READ_BATCH_BYTES of chunks. When the
        runs already come frame by frame in order (the usual case), each is a view
        into its frame, yielded as soon as the frame is read.
        """
        if _frames_fit_cache(runs):
            yield from self._stream_runs(runs)
            return
        pieces: list[bytes] = [b""] * len(runs)
        current: tuple[str, int] | None = None
        frame = b""
        for number in sorted(range(len(runs)), key=lambda position: (runs[position][0], runs[position][1].frame_offset)):
            pack_id, entry, start, end = runs[number]
            if current != (pack_id, entry.frame_offset):
                frame = self.read_frame(pack_id, entry)
                current = (pack_id, entry.frame_offset)
            if end > len(frame):
                raise CorruptChunk(f"chunk {entry.chunk_id} in pack {pack_id} lies past the end of its frame")
            pieces[number] = frame[start:end]
        yield from pieces

    def _stream_runs(self, runs: list[list]) -> Iterator[memoryview]:
        """Runs whose frames each form one contiguous stretch: read a frame, yield its runs as views."""
        current: tuple[str, int] | None = None
        frame = b""
        for pack_id, entry, start, end in runs:
            if current != (pack_id, entry.frame_offset):
                frame = self.read_frame(pack_id, entry)
                current = (pack_id, entry.frame_offset)
            if end > len(frame):
                raise CorruptChunk(f"chunk {entry.chunk_id} in pack {pack_id} lies past the end of its frame")
            yield memoryview(frame)[start:end]

    # -- snapshots ------------------------------------------------------------------

    def snapshot_ids(self) -> list[str]:
        """Every snapshot id, oldest first. A listing failure raises, never returns []."""
        ids: set[str] = set()
        for info in self.storage.list("snapshots"):
            # Manifests lie directly in snapshots/; an object below "<id>.json/"
            # means something replaced that manifest with a folder: list the id,
            # so that loading it reports the damage instead of hiding a snapshot.
            base = info.name.split("/")[1]
            if base.endswith(".json"):
                ids.add(base[: -len(".json")])
        return sorted(ids)

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        """The snapshot's manifest; CorruptManifest if it exists but cannot be read or parsed."""
        try:
            data = _get_bounded(self.storage, snapshot_name(snapshot_id), MAX_MANIFEST_BYTES, CorruptManifest)
        except StorageError as error:
            if not self.storage.exists(snapshot_name(snapshot_id)):
                raise SnapshotNotFound(f"no snapshot {snapshot_id} in {self.storage.location}") from error
            raise CorruptManifest(f"manifest of snapshot {snapshot_id} cannot be read: {error}") from error
        if self.keys is not None:
            data = self.keys.open_object(data, self._aad("snapshot", snapshot_id), f"manifest of snapshot {snapshot_id}")
        return Snapshot.from_json(data, expected_id=snapshot_id)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Publish a manifest: the commit point. Its chunks must already be durable."""
        data = snapshot.to_json()
        if self.keys is not None:
            data = self.keys.seal_object(data, self._aad("snapshot", snapshot.id))
        self.storage.put(snapshot_name(snapshot.id), [data], exclusive=True)

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.storage.delete(snapshot_name(snapshot_id))


class ChunkWriter:
    """Stores new chunks: groups them into frames, frames into packs, then indexes.

    Nothing written here is referenced until ``finish`` has made every pack and
    the index durable; only then may a manifest name these chunks.
    """

    def __init__(self, repository: Repository, *, ignore_packs: Iterable[str] = (), keep_entries: bool = False) -> None:
        self.repository = repository
        self.index = repository.index()
        # A chunk counts as stored only if its pack is present at the indexed size,
        # so a lost or truncated pack is written again rather than referenced.
        present = {info.name.rsplit("/", 1)[-1]: info.size for info in repository.storage.list("packs")}
        ignored = set(ignore_packs)
        #: Raw ids of the packs whose chunks count as stored (as the index rows hold them).
        self._usable_packs = {bytes.fromhex(pack_id) for pack_id, size in self.index.pack_sizes.items() if present.get(pack_id) == size and pack_id not in ignored}
        #: Every pack this writer published, with its entries, when ``keep_entries``
        #: (prune's repack needs them; a backup does not keep an object per chunk).
        self.packs_written: dict[str, tuple[int, list[PackEntry]]] = {}
        self._keep_entries = keep_entries
        config = repository.config
        #: zstd level for frames closed from now on; 0 stores them raw.
        self._level = config.compression_level if config.compression == "zstd" else 0
        self._pending: list[tuple[str, bytes]] = []
        self._pending_bytes = 0
        self._pending_ids: set[str] = set()
        self._run_broken = False
        self._failed = False
        # Compression (and sealing) runs on worker threads: zstd and AES-GCM
        # release the GIL, so it overlaps reading and hashing on the other cores.
        # Frames are placed in the order they were closed, whichever worker built them.
        self._executor: ThreadPoolExecutor | None = None
        #: Hashes and writes placed frames into the staged pack, in order, off the main thread.
        self._pack_io = InOrder("dbkeep-pack-io", ahead=FRAMES_IN_FLIGHT)
        self._in_flight: collections.deque[Future[Frame]] = collections.deque()
        self._pack: _PackBeingBuilt | None = None
        #: Pack id -> its index rows, or the numbers of those rows in the index.
        self._written: dict[str, bytes | range] = {}
        self.stored_bytes = 0

    def chunk_id(self, data: bytes | memoryview) -> str:
        return self.repository.chunk_id(data)

    def has(self, chunk_id: str) -> bool:
        if chunk_id in self._pending_ids:
            return True
        return self.index.held_flags((bytes.fromhex(chunk_id),), self._usable_packs)[0]

    def reuse(self, chunk_id: str) -> bool:
        """True if the repository has the chunk, which then counts as reused in the stream.

        Callers pass chunks in file order; a reused chunk breaks the run of new
        ones, and a frame whose run broke closes early (SCATTERED_FRAME_BYTES).
        """
        if self.has(chunk_id):
            self._run_broken = True
            return True
        return False

    def set_compression_level(self, level: int) -> None:
        """Compress frames closed from now on at ``level``; 0 stores them raw.

        Each frame records its own compression, so one repository holds both.
        """
        self._level = max(0, level)

    def add(self, chunk_id: str, data: bytes) -> bool:
        """Queue a chunk unless the repository has it; True if it was new.

        Chunks are expected in file order (see ``reuse``).
        """
        if self.reuse(chunk_id):
            return False
        self._queue(chunk_id, data)
        return True

    def _queue(self, chunk_id: str, data: bytes | memoryview) -> None:
        """Queue a chunk known to be new for the frame being gathered."""
        if self._run_broken and self._pending_bytes >= SCATTERED_FRAME_BYTES:
            self.close_frame()
        self._run_broken = False
        self._pending.append((chunk_id, data))
        self._pending_ids.add(chunk_id)
        self._pending_bytes += len(data)
        if self._pending_bytes >= FRAME_TARGET_BYTES:
            self.close_frame()

    def add_chunks(self, chunks: list[bytes] | list[memoryview]) -> tuple[bytes, int, int]:
        """Store a batch of chunks in order; returns (their raw 32-byte ids joined, how many were new, their bytes).

        The batch form keeps the per-chunk work to a hash and a lookup, which is
        what a 4 KiB chunk size can afford: ids stay raw digests, and only a new
        chunk's id is spelled in hex.
        """
        digest_of = self.repository.chunk_digest
        digests = [digest_of(chunk) for chunk in chunks]
        new_chunks = new_bytes = 0
        usable_before = len(self._usable_packs)
        pending = self._pending_ids
        for digest, chunk, known in zip(digests, chunks, self.stored_flags(digests)):
            if known:
                self._run_broken = True
                continue
            # An earlier chunk of the batch may be this one: queued (pending), or
            # already in a pack written since the lookup, which made one more pack
            # usable (only then can the index answer otherwise: ask it again).
            chunk_id = digest.hex()
            if chunk_id in pending or (len(self._usable_packs) != usable_before and self.has(chunk_id)):
                self._run_broken = True
                continue
            self._queue(chunk_id, chunk)
            new_chunks += 1
            new_bytes += len(chunk)
        return b"".join(digests), new_chunks, new_bytes

    def stored_flags(self, raw_ids: Iterable[bytes]) -> list[bool]:
        """For each raw chunk id: is it stored in a usable pack already? (``has`` for many, without the pending ones.)

        False can be out of date by the time a chunk is added (an earlier chunk of
        the same batch may be it), so ``add_chunks`` checks False again;
        True stays true (packs are not removed while a writer runs).
        """
        return self.index.held_flags(raw_ids, self._usable_packs)

    def add_chunk_tree(self, chunk_ids: Sequence[str] | bytes | bytearray) -> tuple[list[str], int]:
        """Store a file's chunk ids as a chunk list tree; returns (the manifest's list ids, levels).

        ``chunk_ids`` are hex strings, or the raw 32-byte ids one after another.
        Leaves hold CHUNK_LIST_FANOUT data chunk ids; each level above holds
        CHUNK_TREE_FANOUT list ids, until at most CHUNK_TREE_FANOUT ids are left.
        """
        raw = chunk_ids if isinstance(chunk_ids, (bytes, bytearray)) else bytes.fromhex("".join(chunk_ids))
        return self.add_chunk_tree_from([raw])

    def add_chunk_tree_from(self, pieces: Iterable[bytes | bytearray]) -> tuple[list[str], int]:
        """``add_chunk_tree`` for raw ids given in pieces (each a whole number of ids), so they need not be held at once."""
        step = CHUNK_LIST_FANOUT * CHUNK_ID_BYTES
        list_ids: list[str] = []
        carry = b""
        for piece in pieces:
            data = carry + piece if carry else piece
            whole = len(data) - len(data) % step
            if whole:
                list_ids += self.add_chunk_list(data[:whole], fanout=CHUNK_LIST_FANOUT)
            carry = bytes(data[whole:])
        if carry or not list_ids:
            list_ids += self.add_chunk_list(carry, fanout=CHUNK_LIST_FANOUT)
        levels = 1
        while len(list_ids) > CHUNK_TREE_FANOUT:
            list_ids = self.add_chunk_list(bytes.fromhex("".join(list_ids)), fanout=CHUNK_TREE_FANOUT)
            levels += 1
        return list_ids, levels

    def add_chunk_list(self, raw_ids: bytes | bytearray, *, fanout: int) -> list[str]:
        """Store raw 32-byte ids as one level of chunk lists of ``fanout`` ids; returns the list ids in order."""
        list_ids: list[str] = []
        step = fanout * CHUNK_ID_BYTES
        for start in range(0, len(raw_ids), step):
            data = bytes(raw_ids[start : start + step])
            list_id = self.repository.chunk_id(data)
            self.add(list_id, data)
            list_ids.append(list_id)
        if not list_ids:
            list_id = self.repository.chunk_id(b"")
            self.add(list_id, b"")
            list_ids.append(list_id)
        return list_ids

    def close_frame(self) -> None:
        """Compress the queued chunks as one frame; adjacent pages compress better together.

        The frame is built on the worker thread; frames are placed into packs in
        the order they were closed, as soon as they are ready.
        """
        if not self._pending:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=FRAME_WORKERS, thread_name_prefix="dbkeep-frames")
        self._in_flight.append(self._executor.submit(self._build_frame, self._pending, self._level))
        self._pending = []
        self._pending_bytes = 0
        self._place_ready_frames(wait_for_all=False)

    def _build_frame(self, chunks: list[tuple[str, bytes]], level: int) -> Frame:
        frame = packformat.compress_frame(chunks, _thread_compressor(level))
        if self.repository.keys is not None:
            frame = dataclasses.replace(frame, data=self.repository.seal_frame(frame.data))
        return frame

    def _place_ready_frames(self, *, wait_for_all: bool) -> None:
        """Move finished frames, oldest first, into the pack being assembled.

        Waits for the oldest frame while more than FRAMES_IN_FLIGHT are queued
        (or for every frame when ``wait_for_all``); a worker's exception is raised here.
        """
        with self._failing_for_good():
            while self._in_flight and (wait_for_all or self._in_flight[0].done() or len(self._in_flight) > FRAMES_IN_FLIGHT):
                self._place(self._in_flight.popleft().result())
                if self._pack is not None and self._pack.size >= PACK_TARGET_BYTES:
                    self._write_pack()

    @contextlib.contextmanager
    def _failing_for_good(self) -> Iterator[None]:
        """Refuse all further work once a frame or pack failed.

        After a failure the pack being assembled no longer matches its entries and
        digest; carrying on could publish and index a pack without the frames it
        lists. Every caller aborts on the error anyway; this makes it a rule.
        """
        if self._failed:
            raise StorageError("this chunk writer failed earlier and can store nothing more; run the operation again")
        try:
            yield
        except BaseException:
            self._failed = True
            raise

    def _place(self, frame: Frame) -> None:
        """Append a frame to the pack being assembled; only its entries stay in memory.

        Holding a pack's frames until it is written cost up to PACK_TARGET_BYTES at
        the peak of every backup.
        """
        if self._pack is None:
            self._pack = _PackBeingBuilt(staged=self.repository.stage("packs"))
        pack = self._pack
        placed = [(pack.size, frame)]
        pack.entries += packformat.encode_entries(placed)
        if self._keep_entries:
            pack.kept += packformat.header_entries(placed)
        pack.chunk_ids += [chunk_id for chunk_id, _, _ in frame.chunks]
        if pack.staged is not None:
            self._pack_io.submit(_hash_and_stage, pack.digest, pack.staged, frame.data)
        else:
            pack.digest.update(frame.data)
            # zstandard hands the frame back in a buffer sized for the worst case
            # and never shrinks it; held with 15 more until the pack is written, a
            # copy of the exact size lets that address space go.
            pack.pieces.append(memoryview(frame.data).tobytes())
        pack.size += len(frame.data)

    def _write_pack(self) -> None:
        pack = self._pack
        if pack is None:
            return
        self._pack_io.drain()
        entries = bytes(pack.entries)  # for the header and the index rows
        header = self.repository.pack_header(entries)
        digest = pack.digest.copy()
        digest.update(header)
        pack_id = digest.hexdigest()
        name = pack_name(pack_id)
        if pack.staged is not None:
            pack.staged.write(header)
            size = self.repository.publish_content_addressed(name, pack.staged, pack_id)  # published or discarded
        else:
            size = self.repository.put_content_addressed(name, [*pack.pieces, header], pack_id)
        self._pack = None
        rows = _index_rows(pack_id, size, entries)
        if self._keep_entries:
            self.packs_written[pack_id] = (size, pack.kept)
        # The index holds the rows now; refer to them there rather than keep a copy,
        # unless the pack was listed already: held rows give a pack the size it was
        # first listed with, and a damaged index file may have listed it with another.
        fresh = pack_id not in self.index.pack_sizes
        added = self.index.add_rows(rows)
        self._written[pack_id] = added if fresh and len(added) * INDEX_ROW.size == len(rows) else rows
        self._usable_packs.add(bytes.fromhex(pack_id))
        # Indexed now: the pending set only needs the chunks not yet in a pack.
        self._pending_ids.difference_update(pack.chunk_ids)
        self.stored_bytes += size

    def finish(self) -> None:
        """Make every queued chunk durable and indexed (data first, then the index)."""
        self.close_frame()
        try:
            self._place_ready_frames(wait_for_all=True)
        finally:
            self._stop_worker()
        try:
            with self._failing_for_good():
                self._write_pack()
                if self._written:
                    name = self.repository._write_index_file(encode_index_rows(self._written, held=self.index))
                    self.repository._index_file_written(self.index, name)
                    self._written = {}
        finally:
            self._pack_io.close()
        self._pending_ids.clear()

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()

    def discard(self) -> None:
        """Drop what ``finish`` did not make durable: the workers and a half-written pack (nothing was referenced)."""
        self._stop_worker()
        self._pack_io.close()  # nothing writes into the staged pack after this
        if self._pack is not None and self._pack.staged is not None:
            self._pack.staged.discard()
        self._pack = None
        if self._written:
            # Published packs whose index file was never written: their rows are
            # in the loaded index but in no index file. Drop the loaded index, so
            # neither a later writer nor the local copy (indexcache) counts them.
            self._written = {}
            self.repository._drop_loaded_index(self.index)

    def _stop_worker(self) -> None:
        if self._executor is not None:
            for future in self._in_flight:
                future.cancel()
            self._in_flight.clear()
            self._executor.shutdown(wait=True)
            self._executor = None


@dataclass(slots=True)
class _PackBeingBuilt:
    """The pack a writer is assembling: its frames in a staged file (or in memory
    when the storage cannot stage), their header entries and running hash here."""

    staged: Staged | None
    pieces: list[bytes] = field(default_factory=list)
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)
    entries: bytearray = field(default_factory=bytearray)
    chunk_ids: list[str] = field(default_factory=list)
    kept: list[PackEntry] = field(default_factory=list)
    size: int = 0  # bytes of frames placed so far: the next frame's offset


def _hash_and_stage(digest: hashlib._Hash, staged: Staged, data: bytes) -> None:
    """Add a frame to a staged pack and its running hash (both let go of the GIL)."""
    digest.update(data)
    staged.write(data)


def _index_rows(pack_id: str, size: int, entries: bytes) -> bytes:
    """The index rows of a pack: each of its header entries behind the pack's id and size."""
    prefix = bytes.fromhex(pack_id) + size.to_bytes(8, "little")
    step = packformat.ENTRY.size
    return b"".join(prefix + entries[start : start + step] for start in range(0, len(entries), step))


def _frames_fit_cache(runs: list[list]) -> bool:
    """True if every frame the runs need fits the frame cache at once (by the bytes they reach).

    Then reading the runs in order decompresses each frame once even when it is
    revisited (changed pages from small frames between runs of a large one);
    pages shuffled across many large frames (after a VACUUM) are read frame by
    frame instead.
    """
    reach: dict[tuple[str, int], int] = {}
    for pack_id, entry, _, end in runs:
        key = (pack_id, entry.frame_offset)
        reach[key] = max(reach.get(key, 0), end)
    return len(reach) <= FRAME_CACHE_FRAMES and sum(reach.values()) <= FRAME_CACHE_BYTES


_compressors = threading.local()


def _thread_compressor(level: int) -> zstandard.ZstdCompressor | None:
    """This thread's compressor for ``level`` (a zstd compressor must not be shared by threads)."""
    if level <= 0:
        return None
    cache = getattr(_compressors, "by_level", None)
    if cache is None:
        cache = _compressors.by_level = {}
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return cache[level]


def open_local(path: Path) -> Repository:
    return Repository.open(LocalStorage(path))


def load_key_files(storage: Storage) -> list[crypto.KeyFile]:
    """Every readable key file; raises the first problem only if none is readable.

    A damaged key file, or one with scrypt parameters below the minimum, is
    never used: another key may still open the repository.
    """
    keys: list[crypto.KeyFile] = []
    problems: list[CorruptData] = []
    for info in storage.list("keys"):
        try:
            keys.append(crypto.KeyFile.from_json(storage.get(info.name), name=info.name))
        except CorruptData as error:
            problems.append(error)
    if not keys and problems:
        raise problems[0]
    return keys


def _has_key_files(storage: Storage) -> bool:
    if isinstance(storage, LocalStorage) and not storage.exists("keys"):
        return False
    return bool(storage.list("keys"))
