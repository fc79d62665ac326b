"""Operations: create, restore, verify, list, clean, and the migration guard.

Owns: composing sources (what to read and write back) with the repository (where
bytes live) under the right lock, in the order that keeps every invariant of
docs/format.md. Returns report records; never prints, never maps exit codes.
"""

from __future__ import annotations

import contextlib
import errno
import dataclasses
import hashlib
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import pathspec

from . import fsio, indexcache, locking, progress, servers
from .chunk_index import split_ids
from .chunking import content_defined_chunks
from .crypto import passphrase_from_environment
from .errors import (
    BackupError,
    CorruptData,
    NoSpace,
    RestoreRefused,
    SourceError,
    StorageError,
    UsageError,
    VerificationFailed,
)
from .inorder import InOrder
from .ledger import load_ledger
from .lookup import resolve_snapshot
from .manifest import FileEntry, Snapshot, SnapshotStats, SourceStamp, SQLiteInfo
from .readback import read_back
from .provenance import TOOL_VERSION, git_info, host_name, user_name
from .prune import PruneOptions
from .repository import CHUNK_ID_BYTES, Repository
from .retention import Decision, RetentionPolicy, apply_policy
from .settings import Settings
from .sources import (
    SelectedFile,
    capture_file,
    check_sqlite_copy,
    install_file,
    is_sqlite_file,
    open_capture,
    restore_sqlite_into,
    select_files,
)
from .sources.plainfile import move_aside_sidecars
from .sources.sqlite import Capture
from .sources.stamps import clock_ns, is_settled, stamp_of
from .sources.server import DatabaseConfig, DrillResult, capture_database
from .storage import describe_os_error, open_storage
from .verification import Problem, VerifyReport, verify_repository

READ_PIECE = 1024 * 1024
#: Restored bytes are gathered into writes of about this size.
WRITE_PIECE = 1024 * 1024


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def open_repository(settings: Settings, *, create: bool = False) -> Repository:
    storage = open_storage(settings.repository)
    encrypt = settings.encryption != "none"
    if create:
        return _with_index_cache(
            Repository.open_or_init(
                storage,
                chunk_size=settings.chunk_size,
                compression_level=settings.compression_level,
                passphrase=passphrase_from_environment,
                encrypt=encrypt,
            )
        )
    return _with_index_cache(Repository.open(storage, passphrase=passphrase_from_environment, require_encryption=encrypt))


def _with_index_cache(repository: Repository) -> Repository:
    """Let ``repository`` keep its merged index in the local cache, unless it is encrypted (indexcache.py)."""
    if repository.keys is None:
        repository.index_cache = indexcache.cache_path(repository.config.id)
    return repository


# -- create --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupReport:
    snapshot: Snapshot
    warnings: tuple[str, ...] = ()
    verification: VerifyReport | None = None
    #: Paths whose previous capture was reused because their settled stamp was unchanged.
    unchanged: tuple[str, ...] = ()

    @property
    def stats(self) -> SnapshotStats:
        return self.snapshot.stats


def create_backup(
    settings: Settings,
    *,
    tag: str = "manual",
    note: str = "",
    paths: Sequence[str] | None = None,
    verify: bool = False,
    now: datetime | None = None,
) -> BackupReport:
    """Back up the selected databases and files as one new snapshot.

    ``paths`` limits the snapshot to those project-relative paths. Returns the
    report with new versus reused bytes. Raises UsageError when nothing is
    selected, SourceError when a database cannot be read, RepositoryLocked when
    another writer holds the lock; a failure publishes no snapshot.
    """
    repository = open_repository(settings, create=True)
    with locking.acquire(repository.storage, exclusive=True, purpose=f"backup ({tag})", wait=settings.lock_wait) as lock:
        databases = _select_databases(settings, paths)
        selected = _select(settings, paths, databases)
        unchanged: list[str] = []
        snapshot = _create_locked(repository, lock, settings, selected, root=settings.root, tag=tag, note=note, now=now, databases=databases, unchanged=unchanged)
        warnings = tuple(lock.broken)
        verification = verify_repository(repository, snapshot_ids=[snapshot.id], read_data=True) if verify else None
    return BackupReport(snapshot=snapshot, warnings=warnings, verification=verification, unchanged=tuple(unchanged))


def create_safety_backup(settings: Settings, *, reason: str = "safety", paths: Sequence[str] | None = None) -> BackupReport:
    """A snapshot taken before something risky, tagged so retention treats it apart."""
    return create_backup(settings, tag="safety", note=reason, paths=paths)


def _select_databases(settings: Settings, paths: Sequence[str] | None) -> list[DatabaseConfig]:
    """Configured database servers to capture: all of them, or those ``paths`` names."""
    if paths is None:
        return list(settings.databases)
    return [database for database in settings.databases if database.name in paths]


def _select(settings: Settings, paths: Sequence[str] | None, databases: Sequence[DatabaseConfig] = ()) -> list[SelectedFile]:
    if paths is None:
        selected = select_files(settings.root, include=settings.include, exclude=settings.exclude, skip=[settings.repository])
        if not selected and not databases:
            raise UsageError(
                f"no databases found under {settings.root} (include: {', '.join(settings.include)}); "
                "check the project root and the include/exclude patterns"
            )
        return selected
    chosen: list[SelectedFile] = []
    for relative in paths:
        if any(database.name == relative for database in databases):
            continue
        path = _inside(settings.root, relative)
        if not path.is_file():
            raise UsageError(f"{relative} is not a file under {settings.root}")
        chosen.append(SelectedFile(path=path, relative=path.relative_to(os.path.abspath(settings.root)).as_posix(), kind="sqlite" if is_sqlite_file(path) else "file"))
    return chosen


def _inside(base: Path, relative: str) -> Path:
    """``base / relative``, refusing anything that resolves outside ``base``."""
    candidate = Path(os.path.abspath(base / relative))
    real_base = Path(os.path.realpath(base))
    real_parent = Path(os.path.realpath(candidate.parent))
    if not (real_parent == real_base or real_base in real_parent.parents):
        raise UsageError(f"path {relative!r} is outside {base}; only files inside the project can be used")
    return candidate


def _allocate_snapshot_id(now: datetime, existing: Sequence[str]) -> str:
    """A new id later than every id taken in the same second, so ids sort by time."""
    second = f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"
    same_second = [int(snapshot_id[-4:], 16) for snapshot_id in existing if snapshot_id.startswith(second)]
    floor = max(same_second) + 1 if same_second else 0
    if floor > 0xFFFF:
        raise StorageError(f"too many snapshots within {second}; wait a second and retry")
    suffix = min(0xFFFF, floor + secrets.randbelow(256))
    return f"{second}-{suffix:04x}"


def _create_locked(
    repository: Repository,
    lock: locking.Lock,
    settings: Settings,
    selected: Sequence[SelectedFile],
    *,
    root: Path,
    tag: str,
    note: str,
    now: datetime | None,
    databases: Sequence[DatabaseConfig] = (),
    unchanged: list[str] | None = None,
) -> Snapshot:
    """Store ``selected`` and ``databases`` and publish their snapshot; appends reused paths to ``unchanged``."""
    started = time.monotonic()
    moment = now or _utc_now()
    scratch = settings.scratch_directory
    try:
        fsio.make_private_dirs(scratch)
    except OSError as error:
        raise describe_os_error("create", scratch, error) from error
    repository.remove_stale_temps()
    with repository.writer() as writer:
        writer.set_compression_level(settings.compression_level)
        entries: list[FileEntry] = []
        stats = _Counter()
        previous = _previous_entries(repository, root) if settings.reuse_unchanged else {}
        progress.begin("safety snapshot" if tag == "safety" else "backup", sum(_size_or_zero(item.path) for item in selected))
        for item in selected:
            stamp = stamp_of(item.path, sqlite=item.kind == "sqlite")
            entry = _reuse_unchanged(repository, writer, item, stamp, previous.get(item.relative), stats)
            if entry is not None and unchanged is not None:
                unchanged.append(item.relative)
            entries.append(entry or _store_one(repository, writer, item, stamp, settings, scratch, stats))
        for database in databases:
            entries.append(_store_server(writer, database, stats))
        writer.finish()
    fsio.reached("after_chunks")
    lock.ensure_held()
    snapshot = Snapshot(
        id=_allocate_snapshot_id(moment, repository.snapshot_ids()),
        time=moment,
        tag=tag,
        note=note,
        root=str(root),
        user=user_name(),
        host=host_name(),
        tool_version=TOOL_VERSION,
        duration=round(time.monotonic() - started, 3),
        git=git_info(root),
        files=tuple(entries),
        stats=SnapshotStats(
            logical_bytes=stats.logical_bytes,
            new_chunks=stats.new_chunks,
            reused_chunks=stats.reused_chunks,
            new_bytes=stats.new_bytes,
            stored_bytes=writer.stored_bytes,
        ),
    )
    fsio.reached("before_manifest")
    repository.save_snapshot(snapshot)
    return snapshot


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # reported properly when the file itself is read


@dataclass(slots=True)
class _Counter:
    logical_bytes: int = 0
    new_chunks: int = 0
    reused_chunks: int = 0
    new_bytes: int = 0


#: How many of the newest snapshots are searched for a path's previous capture.
PREVIOUS_SNAPSHOTS_SEARCHED = 3


def _previous_entries(repository: Repository, root: Path) -> dict[str, FileEntry]:
    """Path -> the newest stamped entry this host recorded for this root, from the newest snapshots.

    A manifest that cannot be read is passed over: reuse is an optimisation,
    and without it the source is simply captured again.
    """
    found: dict[str, FileEntry] = {}
    host = host_name()
    for snapshot_id in reversed(repository.snapshot_ids()[-PREVIOUS_SNAPSHOTS_SEARCHED:]):
        try:
            snapshot = repository.load_snapshot(snapshot_id)
        except CorruptData:
            continue
        if snapshot.host != host or snapshot.root != str(root):
            continue
        for entry in snapshot.files:
            if entry.source is not None:
                found.setdefault(entry.path, entry)
    return found


def _reuse_unchanged(repository: Repository, writer, item: SelectedFile, stamp: SourceStamp | None, previous: FileEntry | None, stats: _Counter) -> FileEntry | None:
    """The previous capture of ``item`` if its settled stamp still matches and its chunks are all stored.

    Checking the chunks keeps the rule that a new backup stands on its own: a
    capture whose pack was lost is not reused but stored again.
    """
    if previous is None or previous.kind != item.kind or stamp is None or stamp != previous.source:
        return None
    list_ids: set[str] = set()
    count = 0
    try:
        for leaf in repository.leaf_lists_of(previous.chunk_lists, levels=previous.chunk_list_levels, list_ids=list_ids):
            count += len(leaf) // 32
            if not all(writer.stored_flags(split_ids(leaf))):
                return None
    except CorruptData:
        return None
    if count != previous.chunk_count or not all(writer.stored_flags([bytes.fromhex(list_id) for list_id in list_ids])):
        return None
    stats.reused_chunks += count
    stats.logical_bytes += previous.size
    progress.advance(previous.size)
    return previous


def _store_one(repository: Repository, writer, item: SelectedFile, stamp: SourceStamp | None, settings: Settings, scratch: Path, stats: _Counter) -> FileEntry:
    """Capture and store ``item``; ``stamp`` is its stamp taken before, recorded if it still holds after."""
    clock = clock_ns(scratch) if stamp is not None else None
    try:
        status = item.path.stat()
    except OSError as error:
        raise SourceError(f"cannot read {item.path}: {error.strerror or error}") from error
    with contextlib.ExitStack() as spooled:  # a file's spooled chunk ids are dropped however this ends
        if item.kind == "sqlite":
            with open_capture(item.path, scratch) as capture:
                # The stamp vouches for this capture only if nothing moved while it was taken.
                if stamp != stamp_of(item.path, sqlite=True):
                    stamp = None
                size, digest, chunk_ids, info = _store_capture(writer, capture, settings, stats, spooled, scratch)
            if info.integrity != "ok":
                raise SourceError(f"{item.relative} fails {info.check} ({info.integrity}); refusing to store a damaged database as a good backup")
        else:
            info = None
            size, digest, chunk_ids = _store_stream(writer, capture_file(item.path, READ_PIECE), settings.chunk_size, stats, spool=scratch)
            spooled.enter_context(chunk_ids)
            if stamp != stamp_of(item.path, sqlite=False):
                stamp = None
        chunk_lists, levels = writer.add_chunk_tree_from(chunk_ids.pieces())
    return FileEntry(
        path=item.relative,
        kind=item.kind,
        size=size,
        mode=stat.S_IMODE(status.st_mode),
        mtime=status.st_mtime,
        sha256=digest,
        chunk_lists=tuple(chunk_lists),
        chunk_count=chunk_ids.count,
        chunk_list_levels=levels,
        sqlite=info,
        source=stamp if stamp is not None and is_settled(stamp, clock) else None,
    )


def _store_capture(writer, capture: Capture, settings: Settings, stats: _Counter, spooled: contextlib.ExitStack, scratch: Path) -> tuple[int, str, ChunkIdSpool, SQLiteInfo]:
    """Store a captured SQLite state while SQLite checks it; (size, SHA-256, chunk ids, what the check found).

    The integrity check runs inside SQLite without the GIL: it checks the
    captured state on one core while its bytes are chunked and stored on the
    other. Nothing stored is referenced unless the check passes. The chunk ids
    go into ``spooled`` as soon as they exist, so they are dropped however this ends.
    """
    page_size = capture.page_size
    chunk_size = max(page_size, settings.chunk_size // page_size * page_size)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbkeep-check") as checker:
        described = checker.submit(capture.describe, quick_check_above=settings.quick_check_above)
        try:
            size, digest, chunk_ids = _store_stream(writer, capture.pieces(READ_PIECE), chunk_size, stats, spool=scratch)
        except BaseException:
            capture.interrupt()  # the check's result is not needed: end the transaction soon
            raise
        spooled.enter_context(chunk_ids)
        info = described.result()
    capture.check_held()
    return size, digest, chunk_ids, info


def _store_server(writer, database: DatabaseConfig, stats: _Counter) -> FileEntry:
    """Stream a server's dump into the repository, cut by content so days deduplicate."""
    captured = time.time()
    (size, digest, chunk_ids), info = capture_database(
        database, lambda pieces: _store_stream(writer, pieces, 0, stats, chunker=content_defined_chunks)
    )
    with chunk_ids:
        chunk_lists, levels = writer.add_chunk_tree_from(chunk_ids.pieces())
    return FileEntry(
        path=database.name,
        kind=database.engine,
        size=size,
        mode=0o600,
        mtime=captured,
        sha256=digest,
        chunk_lists=tuple(chunk_lists),
        chunk_count=chunk_ids.count,
        chunk_list_levels=levels,
        server=info,
    )


def _fixed_chunks(pieces: Iterable[bytes], chunk_size: int) -> Iterator[list[memoryview]]:
    """Cut the stream into ``chunk_size`` chunks, a batch per piece, without copying them.

    Views into the (immutable) pieces are enough: a new chunk's bytes are joined
    into its frame, a known chunk's bytes are dropped.
    """
    carry = b""
    for piece in pieces:
        if carry:
            piece = carry + piece
        usable = len(piece) - len(piece) % chunk_size
        view = memoryview(piece)
        yield [view[start : start + chunk_size] for start in range(0, usable, chunk_size)]
        carry = bytes(view[usable:])
    if carry:
        yield [memoryview(carry)]


def _batched(chunks: Iterable[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    batch_bytes = 0
    for chunk in chunks:
        batch.append(chunk)
        batch_bytes += len(chunk)
        if batch_bytes >= READ_PIECE:
            yield batch
            batch, batch_bytes = [], 0
    if batch:
        yield batch


def _store_stream(
    writer,
    pieces: Iterable[bytes],
    chunk_size: int,
    stats: _Counter,
    *,
    chunker: Callable[[Iterable[bytes]], Iterable[bytes]] | None = None,
    spool: Path | None = None,
) -> tuple[int, str, ChunkIdSpool]:
    """Store a stream as chunks; returns (size, whole-stream SHA-256, the raw chunk ids in order).

    The SHA-256 is taken over the stream exactly as read, before any chunking,
    so it is independent of how chunks are cut and stored. The ids are kept as
    32 bytes each, not as a string object each (a 1 GiB database has 262,144),
    and past ChunkIdSpool.MEMORY_BYTES in a temp file in ``spool`` when given.
    """
    whole = hashlib.sha256()
    counted = _Counter()
    chunk_ids = ChunkIdSpool(spool)
    try:
        with InOrder("dbkeep-file-hash", ahead=HASH_PIECES_AHEAD) as hashing:
            hashed = _hashed_aside(pieces, whole, hashing, counted)
            batches = _batched(chunker(hashed)) if chunker else _fixed_chunks(hashed, chunk_size)
            for batch in batches:
                ids, new_chunks, new_bytes = writer.add_chunks(batch)
                chunk_ids.extend(ids)
                stats.new_chunks += new_chunks
                stats.new_bytes += new_bytes
                stats.reused_chunks += len(batch) - new_chunks
                progress.advance(sum(len(chunk) for chunk in batch))
    except BaseException:
        chunk_ids.close()  # the caller gets it only when storing succeeded
        raise
    stats.logical_bytes += counted.logical_bytes
    return counted.logical_bytes, whole.hexdigest(), chunk_ids


class ChunkIdSpool:
    """A file's raw chunk ids in order: in memory up to MEMORY_BYTES, then in an unnamed temp file.

    A 1 GiB database has 262,144 ids (8 MiB), held until its chunk list tree is
    written at the end of the file, when the backup's memory is at its highest;
    the temp file goes in the scratch directory beside the database's copy.
    Use as a context manager: leaving it closes (and so removes) the file.
    """

    MEMORY_BYTES = 1024 * 1024

    def __init__(self, directory: Path | None) -> None:
        self._directory = directory
        self._memory = bytearray()
        self._file: BinaryIO | None = None
        self.count = 0

    def extend(self, ids: bytes) -> None:
        self._memory += ids
        self.count += len(ids) // CHUNK_ID_BYTES
        if self._directory is not None and len(self._memory) >= self.MEMORY_BYTES:
            if self._file is None:
                try:
                    self._file = tempfile.TemporaryFile(dir=self._directory)
                except OSError as error:
                    raise describe_os_error("create a temp file in", self._directory, error) from error
            try:
                self._file.write(self._memory)
            except OSError as error:
                raise describe_os_error("write a temp file in", self._directory, error) from error
            self._memory = bytearray()

    def pieces(self) -> Iterator[bytes]:
        """The ids in order, in pieces of whole ids."""
        if self._file is not None:
            try:
                self._file.seek(0)
                while piece := self._file.read(self.MEMORY_BYTES):
                    yield piece
            except OSError as error:
                raise describe_os_error("read a temp file in", self._directory, error) from error
        yield bytes(self._memory)

    def close(self) -> None:
        """Close (and so remove) the temp file, if there is one."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ChunkIdSpool:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


#: Pieces handed to the whole-file hashing thread and not yet hashed.
HASH_PIECES_AHEAD = 4


def _hashed_aside(pieces: Iterable[bytes], whole: hashlib._Hash, hashing: InOrder, counted: _Counter) -> Iterator[bytes]:
    """The pieces as they come, each also fed to ``whole`` on the ``hashing`` thread, in order.

    hashlib lets go of the GIL while it hashes a piece, so the file's SHA-256 is
    taken on a second core while this thread hashes and looks up the chunks: a
    1 GiB database took 0.55 s of hashing off the backup's path. Returns only
    once every piece is hashed (the caller reads ``whole`` after the last one).
    A piece is hashed after it was yielded, so pieces must not change once
    yielded: every source gives immutable ``bytes``.
    """
    for piece in pieces:
        hashing.submit(whole.update, piece)
        counted.logical_bytes += len(piece)
        yield piece
    hashing.drain()


# -- list / find ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotListing:
    snapshots: tuple[Snapshot, ...]
    damaged: dict[str, str] = field(default_factory=dict)  # id -> why it cannot be read


def list_backups(settings: Settings) -> SnapshotListing:
    """Every snapshot, oldest first; damaged manifests are listed apart, not hidden."""
    repository = open_repository(settings)
    snapshots: list[Snapshot] = []
    damaged: dict[str, str] = {}
    for snapshot_id in repository.snapshot_ids():
        try:
            snapshots.append(repository.load_snapshot(snapshot_id))
        except CorruptData as error:
            damaged[snapshot_id] = str(error)
    return SnapshotListing(snapshots=tuple(snapshots), damaged=damaged)


def find_snapshot(settings: Settings, spec: str, *, now: datetime | None = None) -> Snapshot:
    """The snapshot named by an id, unique prefix, ``latest`` or a point in time."""
    repository = open_repository(settings)
    return repository.load_snapshot(resolve_snapshot(spec, repository.snapshot_ids(), now=now or _utc_now()))


# -- verify --------------------------------------------------------------------------


def verify_backup(settings: Settings, snapshot: str | None = None, *, read_data: bool = False, now: datetime | None = None) -> VerifyReport:
    """Check one snapshot (or all): structure always, every byte with ``read_data``.

    Returns every problem found, each naming snapshot, file and chunk; never stops
    at the first. Takes a shared lock so a concurrent prune cannot pull data away.
    """
    repository = open_repository(settings)
    with locking.acquire(repository.storage, exclusive=False, purpose="verify", wait=settings.lock_wait):
        ids = None
        if snapshot is not None:
            ids = [resolve_snapshot(snapshot, repository.snapshot_ids(), now=now or _utc_now())]
        return verify_repository(repository, snapshot_ids=ids, read_data=read_data)


def verify_selected(
    settings: Settings,
    *,
    snapshot_ids: Sequence[str],
    pack_ids: Collection[str] | None = None,
    read_data: bool = True,
) -> SelectedVerification:
    """Verify exactly these snapshots and re-hash exactly these packs.

    ``pack_ids`` None means the packs holding the snapshots' chunks. Returns the
    report and the packs that were checked (for the verification ledger). Takes a
    shared lock; strictly read-only.
    """
    repository = open_repository(settings)
    with locking.acquire(repository.storage, exclusive=False, purpose="verify", wait=settings.lock_wait):
        packs = set(pack_ids) if pack_ids is not None else packs_of(repository, snapshot_ids)
        packs &= set(repository.index(reload=True).pack_sizes)
        report = verify_repository(repository, snapshot_ids=list(snapshot_ids), read_data=read_data, pack_ids=packs)
    return SelectedVerification(report=report, pack_ids=tuple(sorted(packs)))


@dataclass(frozen=True, slots=True, kw_only=True)
class SelectedVerification:
    report: VerifyReport
    pack_ids: tuple[str, ...]


def packs_of(repository: Repository, snapshot_ids: Sequence[str]) -> set[str]:
    """Packs holding any chunk of the snapshots; unreadable parts are skipped (verify reports them)."""
    index = repository.index()
    packs: set[str] = set()
    for snapshot_id in snapshot_ids:
        try:
            snapshot = repository.load_snapshot(snapshot_id)
            for entry in snapshot.files:
                list_ids: set[str] = set()
                chunk_ids = set(repository.chunk_ids_of(entry.chunk_lists, levels=entry.chunk_list_levels, list_ids=list_ids))
                for chunk_id in list_ids | chunk_ids:
                    packs.update(location.pack_id for location in index.all_locations(chunk_id))
        except (CorruptData, StorageError):
            continue
    return packs


# -- restore -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreItem:
    entry: FileEntry
    destination: Path
    overwrites: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RestorePlan:
    snapshot: Snapshot
    items: tuple[RestoreItem, ...]
    destination_root: Path
    databases: tuple[servers.DatabaseRestoreItem, ...] = ()

    @property
    def overwrites(self) -> bool:
        return any(item.overwrites for item in self.items) or any(item.overwrites for item in self.databases)


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoredFile:
    path: str
    destination: str
    size: int
    sha256_ok: bool
    integrity: str  # "ok", "n/a" for plain files, or what the check said
    read_back: bool = False  # True when both were measured on the written file


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreReport:
    plan: RestorePlan
    files: tuple[RestoredFile, ...] = ()
    safety_snapshot: Snapshot | None = None
    dry_run: bool = False
    warnings: tuple[str, ...] = ()


def plan_restore(
    settings: Settings,
    snapshot: str,
    *,
    target: Path | None = None,
    only: Sequence[str] = (),
    now: datetime | None = None,
    target_database: str | None = None,
) -> RestorePlan:
    repository = open_repository(settings)
    return _plan(repository, settings, snapshot, target=target, only=only, now=now, target_database=target_database)


def _plan(
    repository: Repository,
    settings: Settings,
    spec: str,
    *,
    target: Path | None,
    only: Sequence[str],
    now: datetime | None,
    target_database: str | None = None,
) -> RestorePlan:
    chosen = repository.load_snapshot(resolve_snapshot(spec, repository.snapshot_ids(), now=now or _utc_now()))
    base = Path(os.path.abspath(target)) if target is not None else settings.root
    matcher = pathspec.GitIgnoreSpec.from_lines(only) if only else None
    items: list[RestoreItem] = []
    databases: list[servers.DatabaseRestoreItem] = []
    for entry in chosen.files:
        if matcher is not None and not matcher.match_file(entry.path):
            continue
        if entry.is_server:
            databases.append(servers.plan_item(settings.databases, entry, target_database))
            continue
        destination = _inside(base, entry.path) if base.exists() else base / entry.path
        items.append(RestoreItem(entry=entry, destination=destination, overwrites=destination.exists()))
    if not items and not databases:
        raise UsageError(f"snapshot {chosen.id} has no file matching {', '.join(only)}" if only else f"snapshot {chosen.id} holds no files")
    if target is not None and target_database is None and databases:
        names = ", ".join(item.entry.path for item in databases)
        raise UsageError(
            f"snapshot {chosen.id} holds database dumps ({names}); a target directory does not apply to them and "
            "they would overwrite the live databases: give a target database name, or leave them out with --only"
        )
    if target_database is not None and len(databases) != 1:
        raise UsageError(f"a target database names one database, and {len(databases)} are selected; choose one with --only")
    return RestorePlan(snapshot=chosen, items=tuple(items), destination_root=base, databases=tuple(databases))


def restore_backup(
    settings: Settings,
    snapshot: str,
    *,
    target: Path | None = None,
    only: Sequence[str] = (),
    force: bool = False,
    confirm: Callable[[RestorePlan], bool] | None = None,
    dry_run: bool = False,
    verify: bool = False,
    now: datetime | None = None,
    target_database: str | None = None,
) -> RestoreReport:
    """Restore a snapshot's files into the project (or ``target``), safely.

    Order: verify every byte into temp files beside the destinations (whole-file
    SHA-256, integrity_check; when the SHA-256 fails the file is read again with
    every chunk hash checked, which names the damaged chunk or finds an intact
    copy stored again) -> take a safety snapshot of
    the live files about to be overwritten -> write (SQLite through the online
    backup API, plain files by rename). Anything failing before the write leaves
    the live files untouched. Raises RestoreRefused when files would be
    overwritten without ``force`` and ``confirm`` did not say yes. With ``verify``
    every written file is read back afterwards and its result measured, not
    assumed (a mismatch is reported in the result, with the safety snapshot).

    Database-server dumps follow the same order: their SHA-256 is checked
    before anything is written, the live database goes into the safety
    snapshot, then the dump is restored into it (or into ``target_database``)
    as servers.apply_restore and docs/servers.md describe.
    """
    repository = open_repository(settings)
    with locking.acquire(repository.storage, exclusive=True, purpose="restore", wait=settings.lock_wait) as lock:
        plan = _plan(repository, settings, snapshot, target=target, only=only, now=now, target_database=target_database)
        if dry_run:
            return RestoreReport(plan=plan, dry_run=True)
        if plan.overwrites and not force and (confirm is None or not confirm(plan)):
            raise RestoreRefused("restore would overwrite live files and was not confirmed; nothing was changed (use --force to skip the question)")
        materialised: dict[Path, Path] = {}
        progress.begin("restore", sum(item.entry.size for item in plan.items))
        try:
            _prepare_directories(plan)
            for item in plan.items:
                materialised[item.destination] = _materialise(repository, item)
            for database in plan.databases:
                servers.verify_dump(repository, database.entry)
            safety = _safety_snapshot(repository, lock, settings, plan)
            if safety is not None:
                _check_safety_snapshot(repository, safety)
            fsio.reached("after_safety_snapshot")
            results = []
            for item in plan.items:
                written = _apply(item, materialised[item.destination])
                del materialised[item.destination]
                if verify:
                    sha256_ok, integrity = read_back(item.entry, item.destination, settings.scratch_directory, quick_check_above=settings.quick_check_above)
                    written = dataclasses.replace(written, sha256_ok=sha256_ok, integrity=integrity, read_back=True)
                results.append(written)
            for database in plan.databases:
                outcome = servers.apply_restore(repository, database, safety)
                results.append(RestoredFile(path=database.entry.path, destination=database.destination, size=database.entry.size, sha256_ok=True, integrity=outcome))
        finally:
            for temp in materialised.values():
                with contextlib.suppress(OSError):
                    os.unlink(temp)
    return RestoreReport(plan=plan, files=tuple(results), safety_snapshot=safety, warnings=tuple(lock.broken))


def _prepare_directories(plan: RestorePlan) -> None:
    """Create destination folders and clear temp files an interrupted restore left there."""
    for directory in sorted({item.destination.parent for item in plan.items}):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fsio.remove_stale_temps(directory)
        except OSError as error:
            raise _target_error(directory, error) from error


def _target_error(directory: Path, error: OSError) -> BackupError:
    """Why a restore cannot write into ``directory`` (before any live file is touched)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"cannot write into {directory}: no space left on device; free some space and run again (nothing was changed)")
    return SourceError(f"cannot write into {directory}: {error.strerror or error}; check that the directory is writable")


def _materialise(repository: Repository, item: RestoreItem) -> Path:
    """Write the snapshot's bytes to a temp file beside the destination and verify them."""
    directory = item.destination.parent
    try:
        descriptor, temp = fsio.create_temp(directory)
    except OSError as error:
        raise _target_error(directory, error) from error
    problems: list[Problem] = []
    entry = item.entry
    try:
        try:
            try:
                digest, size = _write_pieces(descriptor, repository.read_file_unchecked(entry.chunk_lists, levels=entry.chunk_list_levels))
            except CorruptData:
                digest, size = None, -1
            if size != entry.size or digest is None or digest.hexdigest() != entry.sha256:
                # The fast read trusts the whole-file SHA-256; when it fails, read again
                # chunk by chunk with every hash checked: that names the damaged chunk,
                # or finds an intact copy of it stored again elsewhere.
                os.ftruncate(descriptor, 0)
                os.lseek(descriptor, 0, os.SEEK_SET)
                digest, size = _write_pieces(descriptor, repository.read_file_chunks(entry.chunk_lists, levels=entry.chunk_list_levels))
            intact = digest.hexdigest() == entry.sha256 and size == entry.size
            # SQLite checks the copy (from the page cache) while it is made durable;
            # the descriptor is closed only after the check is done with the file.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dbkeep-restore-check") as checker:
                checking = checker.submit(check_sqlite_copy, temp, entry.sqlite) if intact and entry.sqlite is not None else None
                fsio.fsync(descriptor)
                messages = checking.result() if checking is not None else []
        finally:
            os.close(descriptor)
        if not intact:
            problems.append(Problem(kind="file-hash", message="restored bytes do not match the recorded SHA-256", snapshot_id=None, path=item.entry.path))
        for message in messages:
            problems.append(Problem(kind="sqlite-check", message=message, snapshot_id=None, path=item.entry.path))
    except CorruptData as error:
        problems.append(Problem(kind="corrupt-data", message=str(error), snapshot_id=None, path=item.entry.path))
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise _target_error(directory, error) from error
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    if problems:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise VerificationFailed(
            f"snapshot cannot be restored: {item.entry.path}: {problems[0].message}; nothing was changed "
            "(run backup.verify --read-data for the full list, then restore an older snapshot)",
            problems,
        )
    return temp


#: Batches handed to the writing thread and not yet written (WRITE_PIECE each).
WRITES_AHEAD = 3


def _write_pieces(descriptor: int, pieces: Iterable[bytes | memoryview]) -> tuple[hashlib._Hash, int]:
    """Write pieces to ``descriptor`` in WRITE_PIECE batches; returns (their SHA-256, size).

    Hashing a batch and writing it both let go of the GIL, so they run in order on
    a second thread while this one reads and decompresses the next batch: a
    1 GiB restore spent 2.4 s hashing and writing and 2.4 s reading on one core.
    Returns or raises only once the thread is done with the file.
    """
    digest = hashlib.sha256()
    size = 0

    def hash_and_write(batch: bytearray) -> None:
        digest.update(batch)
        fsio.write(descriptor, batch)

    with InOrder("dbkeep-restore-write", ahead=WRITES_AHEAD) as writing:
        buffer = bytearray()
        for piece in pieces:
            buffer += piece
            if len(buffer) >= WRITE_PIECE:
                writing.submit(hash_and_write, buffer)
                size += len(buffer)
                progress.advance(len(buffer))
                buffer = bytearray()
        if buffer:
            writing.submit(hash_and_write, buffer)
            size += len(buffer)
            progress.advance(len(buffer))
        writing.drain()
    return digest, size


def _check_safety_snapshot(repository: Repository, safety: Snapshot) -> None:
    """Re-read every byte of the safety snapshot before the live files it holds are overwritten.

    A backup reuses chunks it finds stored without re-reading them, so a chunk
    damaged in place since it was written would make the way back unusable at
    exactly the moment the live copy is replaced. Raises VerificationFailed then;
    nothing live has been touched.
    """
    report = verify_repository(repository, snapshot_ids=[safety.id], read_data=True, pack_ids=())
    problems = [problem for problem in report.problems if problem.snapshot_id == safety.id]
    if problems:
        raise VerificationFailed(
            f"the safety snapshot {safety.id} of the live files failed verification ({problems[0].message}); "
            "nothing was changed: the repository holds a damaged copy of data the live files still have; "
            "run backup.verify --read-data, or restore into a directory with --target",
            problems,
        )


def _safety_snapshot(repository: Repository, lock: locking.Lock, settings: Settings, plan: RestorePlan) -> Snapshot | None:
    """Snapshot the live files about to be replaced; the restore's way back."""
    live = [
        SelectedFile(path=item.destination, relative=item.entry.path, kind="sqlite" if is_sqlite_file(item.destination) else "file")
        for item in plan.items
        if item.overwrites and item.destination.is_file()
    ]
    live_databases = [servers.live_connection(item) for item in plan.databases if item.overwrites]
    if not live and not live_databases:
        return None
    return _create_locked(
        repository,
        lock,
        settings,
        live,
        root=plan.destination_root,
        tag="safety",
        note=f"before restoring {plan.snapshot.id}",
        now=None,
        databases=live_databases,
    )


def _apply(item: RestoreItem, temp: Path) -> RestoredFile:
    destination = item.destination
    entry = item.entry
    if entry.is_sqlite and destination.exists() and is_sqlite_file(destination):
        restore_sqlite_into(destination, temp)
        os.unlink(temp)
    else:
        if entry.is_sqlite:
            move_aside_sidecars(destination)
        live = destination.stat() if destination.exists() else None
        mode = stat.S_IMODE(live.st_mode) if live else entry.mode
        install_file(temp, destination, mode=mode, owner=(live.st_uid, live.st_gid) if live else None)
    return RestoredFile(
        path=entry.path,
        destination=str(destination),
        size=entry.size,
        sha256_ok=True,
        integrity=entry.sqlite.integrity if entry.sqlite else "n/a",
    )


# -- drill ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DrillReport:
    """Restore drills of a snapshot's database-server dumps, one result per dump."""

    snapshot_id: str
    results: tuple[DrillResult, ...]

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)


def drill_backup(settings: Settings, snapshot: str = "latest", *, only: Sequence[str] = (), now: datetime | None = None) -> DrillReport:
    """Verify a snapshot's server dumps by restoring each into a scratch database.

    Each dump is streamed (chunk hashes and SHA-256 checked) into a database
    dbkeep creates on the same server, its row counts and schema hash are
    compared with the manifest, and the scratch database is dropped. Returns
    every problem; raises UsageError if the snapshot holds no server dump and
    SourceError if a server cannot be reached.
    """
    repository = open_repository(settings)
    with locking.acquire(repository.storage, exclusive=False, purpose="drill", wait=settings.lock_wait):
        chosen = repository.load_snapshot(resolve_snapshot(snapshot, repository.snapshot_ids(), now=now or _utc_now()))
        results = [
            servers.drill_entry(repository, servers.connection_for(settings.databases, entry), entry)
            for entry in servers.server_entries(chosen, only)
        ]
    return DrillReport(snapshot_id=chosen.id, results=tuple(results))


# -- clean ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CleanReport:
    kept: tuple[str, ...]
    removed: tuple[str, ...]
    packs_removed: int = 0
    bytes_freed: int = 0
    dry_run: bool = False
    warnings: tuple[str, ...] = ()
    #: Every snapshot with the rules that keep it (empty reasons: removed).
    decisions: tuple[Decision, ...] = ()
    policy: RetentionPolicy | None = None
    held: str | None = None
    packs_repacked: int = 0
    bytes_written: int = 0


def clean_old_backups(
    settings: Settings,
    *,
    keep_last: int | None = None,
    policy: RetentionPolicy | None = None,
    dry_run: bool = False,
    prune: PruneOptions | None = None,
    now: datetime | None = None,
) -> CleanReport:
    """Apply a retention policy, remove the snapshots it drops, prune unreferenced data.

    ``policy`` defaults to keeping the newest ``keep_last`` (or settings.keep_last)
    snapshots; ``keep_last`` given with a policy overrides that rule. The
    verification ledger feeds the guards (newest verified kept; nothing removed
    while the newest failed verification). Aborts and deletes nothing if any
    listing or read fails, or if a kept snapshot needs data already missing.
    Raises PolicyRefused if the policy would remove every snapshot.
    """
    if policy is None:
        keep = settings.keep_last if keep_last is None else keep_last
        if keep < 1:
            raise UsageError("keep must be at least 1: removing every snapshot is refused")
        policy = RetentionPolicy(keep_last=keep)
    elif keep_last is not None:
        policy = policy.with_overrides(keep_last=keep_last)
    moment = now or _utc_now()
    repository = open_repository(settings)
    with locking.acquire(repository.storage, exclusive=True, purpose="clean", wait=settings.lock_wait) as lock:
        from .prune import PruneRefused, prune_repository

        snapshots = []
        for snapshot_id in repository.snapshot_ids():
            try:
                snapshots.append(repository.load_snapshot(snapshot_id))
            except CorruptData as error:
                raise PruneRefused(f"prune refused, nothing was deleted: snapshot {snapshot_id} cannot be read ({error}); run backup.verify") from error
        try:
            ledger = load_ledger(repository.storage)
        except CorruptData as error:
            raise PruneRefused(f"prune refused, nothing was deleted: {error}") from error
        plan = apply_policy(snapshots, policy, now=moment, verification=ledger.outcomes())
        result = prune_repository(repository, lock, keep_ids=plan.keep, remove_ids=plan.remove, dry_run=dry_run, options=prune, now=moment)
    return CleanReport(
        kept=plan.keep,
        removed=plan.remove,
        packs_removed=result.packs_removed,
        bytes_freed=result.bytes_freed,
        dry_run=dry_run,
        warnings=tuple(lock.broken) + ((plan.held,) if plan.held else ()) + tuple(result.warnings),
        decisions=plan.decisions,
        policy=policy,
        held=plan.held,
        packs_repacked=result.packs_repacked,
        bytes_written=result.bytes_written,
    )


# -- guard ---------------------------------------------------------------------------


@contextlib.contextmanager
def guard(reason: str, settings: Settings | None = None) -> Iterator[BackupReport]:
    """Snapshot before a migration; if the block raises, restore it and re-raise.

    The snapshot is tagged ``migration``. If the automatic restore itself fails,
    the original error still propagates, with the restore failure attached as
    its ``__context__`` and the snapshot id in the message of a BackupError.
    """
    from .settings import load_settings

    active = settings or load_settings()
    report = create_backup(active, tag="migration", note=reason)
    try:
        yield report
    except BaseException as error:
        try:
            restore_backup(active, report.snapshot.id, force=True, only=())
        except BackupError as restore_error:
            raise BackupError(
                f"migration '{reason}' failed ({error}) and the automatic restore of snapshot "
                f"{report.snapshot.id} failed too: {restore_error}; restore it by hand with backup.restore"
            ) from error
        raise
