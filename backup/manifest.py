"""Snapshot manifests: the records that make a snapshot exist, and their JSON form.

Owns: the ``Snapshot`` / ``FileEntry`` / ``SQLiteInfo`` / ``ServerInfo`` records, sealed JSON
(a SHA-256 over the canonical body, so a flipped bit in a manifest is detected),
and strict parsing that treats every manifest as hostile input. Knows nothing of
storage or databases.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any

from .errors import CorruptData, CorruptManifest
from .pack import check_id

MANIFEST_VERSION = 1
SNAPSHOT_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{4}$")
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
#: A file's chunk list tree is never deeper than this; a deeper claim is damage.
MAX_CHUNK_LIST_LEVELS = 6


def new_snapshot_id(now: datetime) -> str:
    """A snapshot id that sorts by time: ``20250116T020000Z-3f9a``."""
    return f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def check_snapshot_id(value: object) -> str:
    if not isinstance(value, str) or not SNAPSHOT_ID.match(value):
        raise CorruptManifest(f"invalid snapshot id {str(value)[:80]!r}")
    return value


def check_relative_path(value: object) -> str:
    """A stored path must be relative, normalised, and never climb out of the root."""
    if not isinstance(value, str) or not value or "\x00" in value or "\\" in value:
        raise CorruptManifest(f"invalid file path {str(value)[:80]!r}")
    path = PurePosixPath(value)
    if path.is_absolute() or any(part in {"..", "."} for part in path.parts) or str(path) != value:
        raise CorruptManifest(f"file path {value[:80]!r} is absolute or not normalised")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class GitInfo:
    branch: str | None = None
    commit: str | None = None
    dirty: bool | None = None


#: How a SQLite state was held while it was read (``SQLiteInfo.capture``): the live
#: file inside a read transaction that kept SQLite from writing it ...
CAPTURED_IN_PLACE = "read-transaction"
#: ... or a copy made through SQLite's online backup API (and by every version before the field).
CAPTURED_BY_BACKUP_API = "backup-api"


@dataclass(frozen=True, slots=True, kw_only=True)
class SQLiteInfo:
    """What a SQLite capture found, checked again after every restore."""

    page_size: int
    page_count: int
    journal_mode: str
    user_version: int
    schema_hash: str
    tables: dict[str, int | None]
    sqlite_version: str
    integrity: str
    check: str  # "integrity_check" or "quick_check"
    #: How the state was held while it was read: CAPTURED_IN_PLACE or CAPTURED_BY_BACKUP_API.
    capture: str = CAPTURED_BY_BACKUP_API


#: Kinds of entry whose bytes are a dump of a database server, not a file.
SERVER_KINDS = frozenset({"postgres", "mysql"})
FILE_KINDS = frozenset({"sqlite", "file"}) | SERVER_KINDS


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerInfo:
    """What a dump of a server database held, checked again by every restore and drill.

    Never holds a password: the connection is recorded as host, port, user and
    database only. ``tables`` counts the rows the dump itself holds per table
    (``schema.table`` for PostgreSQL, ``table`` for MySQL).
    """

    engine: str  # "postgres" or "mysql"
    server_version: str
    host: str
    port: int | None
    user: str
    database: str
    database_size: int
    encoding: str
    collation: str
    schema_hash: str
    tables: dict[str, int]
    dump_tool: str
    dump_format: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceStamp:
    """What the file system said about a source whose capture it fully determines.

    Recorded only when the stamp was the same before and after the capture and
    old enough that a later write must change it; a later backup that finds the
    same stamp reuses the entry instead of capturing again (sources/stamps.py).
    ``wal`` is the SHA-256 of a SQLite database's ``-wal`` file, None when there is
    none or it is empty (opening a database changes the WAL's ctime, so its
    content is what is compared).
    """

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    wal: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEntry:
    """One file of a snapshot: where it was, what it was, and its chunk lists.

    A database-server entry (kind "postgres" or "mysql") holds a dump: ``path``
    is its logical name (``postgres/<database>``), ``server`` says what it held.
    """

    path: str
    kind: str  # "sqlite", "file", "postgres" or "mysql"
    size: int
    mode: int
    mtime: float
    sha256: str
    chunk_lists: tuple[str, ...]
    chunk_count: int
    sqlite: SQLiteInfo | None = None
    server: ServerInfo | None = None
    #: Depth of the chunk list tree ``chunk_lists`` start: 1 means they hold data chunk ids.
    chunk_list_levels: int = 1
    #: The source's file-system stamp at capture, when it can vouch for the content.
    source: SourceStamp | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.kind == "sqlite"

    @property
    def is_server(self) -> bool:
        return self.kind in SERVER_KINDS


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotStats:
    logical_bytes: int = 0
    new_chunks: int = 0
    reused_chunks: int = 0
    new_bytes: int = 0  # logical bytes of chunks that were not yet in the repository
    stored_bytes: int = 0  # bytes this snapshot added to packs on disk


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    id: str
    time: datetime
    tag: str
    note: str
    root: str
    user: str
    host: str
    tool_version: str
    duration: float
    git: GitInfo
    files: tuple[FileEntry, ...]
    stats: SnapshotStats = field(default_factory=SnapshotStats)

    @property
    def logical_bytes(self) -> int:
        return sum(entry.size for entry in self.files)

    def to_body(self) -> dict[str, Any]:
        body = asdict(self)
        body["time"] = self.time.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
        body["files"] = [_file_body(entry) for entry in self.files]
        return body

    def to_json(self) -> bytes:
        return seal(self.to_body(), kind="snapshot")

    @classmethod
    def from_json(cls, data: bytes, *, expected_id: str | None = None) -> Snapshot:
        """Parse a sealed manifest; raises CorruptManifest for anything off."""
        body = unseal(data, kind="snapshot")
        try:
            snapshot = _snapshot_from_body(body)
        except CorruptManifest:
            raise
        except CorruptData as error:  # an id check of the pack format: still the manifest's fault
            raise CorruptManifest(f"manifest does not match the format: {error}") from error
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CorruptManifest(f"manifest does not match the format: {type(error).__name__}: {error}") from error
        if expected_id is not None and snapshot.id != expected_id:
            raise CorruptManifest(f"manifest {expected_id} says it is {snapshot.id}")
        return snapshot


def _file_body(entry: FileEntry) -> dict[str, Any]:
    body = asdict(entry)
    body["chunk_lists"] = list(entry.chunk_lists)
    if entry.sqlite is None:
        del body["sqlite"]
    if entry.server is None:
        del body["server"]
    if entry.chunk_list_levels == 1:
        del body["chunk_list_levels"]  # the default; older manifests never carry it
    if entry.source is None:
        del body["source"]
    elif entry.source.wal is None:
        del body["source"]["wal"]
    return body


def _require(mapping: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = mapping[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise CorruptManifest(f"field {key!r} is a boolean where a number belongs")
    if not isinstance(value, kind):
        raise CorruptManifest(f"field {key!r} has type {type(value).__name__}")
    return value


def _count(mapping: Mapping[str, Any], key: str) -> int:
    value = _require(mapping, key, int)
    if value < 0 or value > 2**62:
        raise CorruptManifest(f"field {key!r} is out of range: {value}")
    return value


def _optional_string(mapping: Mapping[str, Any], key: str) -> str | None:
    value = mapping.get(key)
    if value is not None and not isinstance(value, str):
        raise CorruptManifest(f"field {key!r} has type {type(value).__name__}")
    return value


def _snapshot_from_body(body: Mapping[str, Any]) -> Snapshot:
    git = _require(body, "git", dict)
    dirty = git.get("dirty")
    if dirty is not None and not isinstance(dirty, bool):
        raise CorruptManifest("field 'dirty' is not a boolean")
    stats = _require(body, "stats", dict)
    files = _require(body, "files", list)
    time_text = _require(body, "time", str)
    time = datetime.fromisoformat(time_text.replace("Z", "+00:00"))
    if time.tzinfo is None:
        raise CorruptManifest("snapshot time has no time zone")
    parsed_files = tuple(_file_from_body(item) for item in files)
    paths = [entry.path for entry in parsed_files]
    if len(set(paths)) != len(paths):
        raise CorruptManifest("manifest lists the same path twice")
    return Snapshot(
        id=check_snapshot_id(body["id"]),
        time=time,
        tag=_require(body, "tag", str),
        note=_require(body, "note", str),
        root=_require(body, "root", str),
        user=_require(body, "user", str),
        host=_require(body, "host", str),
        tool_version=_require(body, "tool_version", str),
        duration=float(_require(body, "duration", (int, float))),
        git=GitInfo(branch=_optional_string(git, "branch"), commit=_optional_string(git, "commit"), dirty=dirty),
        files=parsed_files,
        stats=SnapshotStats(**{name: _count(stats, name) for name in SnapshotStats.__dataclass_fields__}),
    )


def _file_from_body(item: object) -> FileEntry:
    if not isinstance(item, dict):
        raise CorruptManifest("a file entry is not an object")
    kind = _require(item, "kind", str)
    if kind not in FILE_KINDS:
        raise CorruptManifest(f"unknown file kind {kind[:40]!r}")
    chunk_lists = tuple(check_id(value, "chunk list id") for value in _require(item, "chunk_lists", list))
    sqlite_body = item.get("sqlite")
    sqlite = _sqlite_from_body(sqlite_body) if sqlite_body is not None else None
    if kind == "sqlite" and sqlite is None:
        raise CorruptManifest("a SQLite file entry has no SQLite details")
    server_body = item.get("server")
    server = _server_from_body(server_body) if server_body is not None else None
    if (kind in SERVER_KINDS) != (server is not None) or (server is not None and server.engine != kind):
        raise CorruptManifest(f"a {kind[:20]} entry has wrong or missing server details")
    levels = item.get("chunk_list_levels", 1)
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= MAX_CHUNK_LIST_LEVELS:
        raise CorruptManifest(f"chunk_list_levels {str(levels)[:20]!r} is not a level count from 1 to {MAX_CHUNK_LIST_LEVELS}")
    mode = _count(item, "mode")
    if mode > 0o7777:
        raise CorruptManifest(f"file mode {mode:o} is out of range")
    return FileEntry(
        path=check_relative_path(item["path"]),
        kind=kind,
        size=_count(item, "size"),
        mode=mode,
        mtime=float(_require(item, "mtime", (int, float))),
        sha256=check_id(item["sha256"], "file SHA-256"),
        chunk_lists=chunk_lists,
        chunk_count=_count(item, "chunk_count"),
        sqlite=sqlite,
        server=server,
        chunk_list_levels=levels,
        source=_source_from_body(item["source"]) if item.get("source") is not None else None,
    )


def _source_from_body(body: object) -> SourceStamp:
    if not isinstance(body, dict):
        raise CorruptManifest("source stamp is not an object")
    wal = body.get("wal")
    if wal is not None:
        wal = check_id(wal, "WAL SHA-256")
    return SourceStamp(
        device=_unsigned64(body, "device"),
        inode=_unsigned64(body, "inode"),
        size=_count(body, "size"),
        mtime_ns=_require(body, "mtime_ns", int),
        ctime_ns=_require(body, "ctime_ns", int),
        wal=wal,
    )


def _unsigned64(mapping: Mapping[str, Any], key: str) -> int:
    value = _require(mapping, key, int)
    if not 0 <= value < 2**64:
        raise CorruptManifest(f"field {key!r} is out of range: {value}")
    return value


def _server_from_body(body: object) -> ServerInfo:
    if not isinstance(body, dict):
        raise CorruptManifest("server details are not an object")
    tables = _require(body, "tables", dict)
    for name, rows in tables.items():
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise CorruptManifest(f"row count of table {name[:40]!r} is not a count")
    port = body.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise CorruptManifest("server port is not a port number")
    return ServerInfo(
        engine=_require(body, "engine", str),
        server_version=_require(body, "server_version", str),
        host=_require(body, "host", str),
        port=port,
        user=_require(body, "user", str),
        database=_require(body, "database", str),
        database_size=_count(body, "database_size"),
        encoding=_require(body, "encoding", str),
        collation=_require(body, "collation", str),
        schema_hash=_require(body, "schema_hash", str),
        tables=dict(tables),
        dump_tool=_require(body, "dump_tool", str),
        dump_format=_require(body, "dump_format", str),
    )


def _sqlite_from_body(body: object) -> SQLiteInfo:
    if not isinstance(body, dict):
        raise CorruptManifest("SQLite details are not an object")
    tables = _require(body, "tables", dict)
    for name, rows in tables.items():
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
            raise CorruptManifest(f"row count of table {name[:40]!r} is not a count")
    return SQLiteInfo(
        page_size=_count(body, "page_size"),
        page_count=_count(body, "page_count"),
        journal_mode=_require(body, "journal_mode", str),
        user_version=_require(body, "user_version", int),
        schema_hash=_require(body, "schema_hash", str),
        tables=dict(tables),
        sqlite_version=_require(body, "sqlite_version", str),
        integrity=_require(body, "integrity", str),
        check=_require(body, "check", str),
        capture=_optional_string(body, "capture") or CAPTURED_BY_BACKUP_API,
    )


def canonical(body: Any) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def seal(body: Mapping[str, Any], *, kind: str) -> bytes:
    """JSON with a SHA-256 of the canonical body, so any change to the body is detected."""
    digest = hashlib.sha256(canonical(body)).hexdigest()
    document = {"format": f"dbkeep-{kind}", "version": MANIFEST_VERSION, "sha256": digest, "body": body}
    return json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False).encode() + b"\n"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise CorruptManifest(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise CorruptManifest(f"non-JSON number {name}")


def unseal(data: bytes, *, kind: str) -> dict[str, Any]:
    """Parse sealed JSON of ``kind``; raises CorruptManifest if anything is off."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise CorruptManifest(f"{kind} is {len(data)} bytes, larger than any valid one")
    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant)
    except CorruptManifest:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise CorruptManifest(f"{kind} is not valid JSON: {error}") from error
    if not isinstance(document, dict) or document.get("format") != f"dbkeep-{kind}":
        raise CorruptManifest(f"not a dbkeep {kind} document")
    if document.get("version") != MANIFEST_VERSION:
        raise CorruptManifest(f"{kind} has unsupported version {str(document.get('version'))[:20]!r}; upgrade dbkeep")
    body = document.get("body")
    try:
        digest = hashlib.sha256(canonical(body)).hexdigest() if isinstance(body, dict) else None
    except UnicodeEncodeError as error:  # a lone surrogate escaped in the JSON text
        raise CorruptManifest(f"{kind} holds text that is not valid Unicode: {error.reason}") from error
    if digest is None or document.get("sha256") != digest:
        raise CorruptManifest(f"{kind} checksum does not match its content: it was damaged or edited")
    return body
