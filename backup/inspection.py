"""Inspection: what the repository holds and how a snapshot differs from now.

Owns: listing snapshots with filters, the size report (bytes on disk, logical
bytes, dedup and compression ratios, what each snapshot alone keeps alive, the
largest databases), and comparing a snapshot with the live project or with
another snapshot (per file, per table, per schema object). Read-only: it never
changes the repository or the project; scratch copies live in the repository's
private ``tmp/`` and are removed before returning. Returns records; never prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, time, timezone
from pathlib import Path

from . import fsio, locking
from .errors import CorruptData, UsageError, VerificationFailed
from .lookup import parse_point_in_time, resolve_snapshot
from .manifest import FileEntry, Snapshot, SQLiteInfo
from .operations import SnapshotListing, list_backups, open_repository
from .readback import read_state
from .repository import Repository
from .settings import Settings
from .sources import select_files
from .sources.schema import SchemaChanges, diff_schema, read_schema
from .verification import Problem

#: Warn when a table lost more than this fraction of its rows.
DEFAULT_LOSS_THRESHOLD = 0.10
LARGEST_SHOWN = 10


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


# -- list ----------------------------------------------------------------------------


def parse_since(text: str, *, now: datetime) -> datetime:
    """The moment ``since`` names; a bare date means the start of that day (local time).

    Raises UsageError naming the value when it is no point in time.
    """
    value = text.strip()
    if len(value) == 10:
        with contextlib.suppress(ValueError):
            return datetime.combine(datetime.fromisoformat(value).date(), time()).astimezone()
    moment = parse_point_in_time(value, now=now)
    if moment is None:
        raise UsageError(f"since {text!r} is not a point in time; use e.g. 2025-01-16, 2025-01-16T10:00, yesterday, 3h or 2d")
    return moment


def list_snapshots(settings: Settings, *, tag: str | None = None, since: str | None = None, now: datetime | None = None) -> SnapshotListing:
    """Snapshots oldest first, only those with ``tag`` and taken at or after ``since``.

    Damaged manifests are always listed apart (their tag and time cannot be read).
    """
    moment = parse_since(since, now=now or _utc_now()) if since else None
    listing = list_backups(settings)
    chosen = tuple(
        snapshot for snapshot in listing.snapshots if (tag is None or snapshot.tag == tag) and (moment is None or snapshot.time >= moment)
    )
    return SnapshotListing(snapshots=chosen, damaged=listing.damaged)


# -- size ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotUsage:
    id: str
    time: datetime
    tag: str
    files: int
    logical_bytes: int
    #: Bytes of chunks no other snapshot references: roughly what removing it frees.
    unique_bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseUsage:
    path: str
    kind: str
    latest_size: int
    versions: int  # snapshots holding this path
    distinct_versions: int  # different contents among them
    stored_bytes: int  # bytes of the distinct chunks of every version


@dataclass(frozen=True, slots=True, kw_only=True)
class SizeReport:
    repository: str
    repository_bytes: int  # every file under the repository directory
    pack_bytes: int
    pack_count: int
    snapshot_count: int
    logical_bytes: int  # sum over snapshots of the bytes a restore produces
    unique_bytes: int  # distinct data chunk bytes the snapshots reference
    chunk_bytes: int  # uncompressed bytes of every chunk in the packs
    unreferenced_bytes: int  # chunk bytes no snapshot needs (clean removes them)
    snapshots: tuple[SnapshotUsage, ...] = ()
    databases: tuple[DatabaseUsage, ...] = ()
    damaged: dict[str, str] = field(default_factory=dict)

    @property
    def dedup_ratio(self) -> float | None:
        return self.logical_bytes / self.unique_bytes if self.unique_bytes else None

    @property
    def compression_ratio(self) -> float | None:
        return self.chunk_bytes / self.pack_bytes if self.pack_bytes else None

    @property
    def overall_ratio(self) -> float | None:
        return self.logical_bytes / self.repository_bytes if self.repository_bytes else None


def _stored_bytes(repository) -> int:
    """Bytes of every object the repository holds, on any storage backend."""
    total = 0
    for folder in ("snapshots", "packs", "index", "locks", "keys"):
        if repository.storage.exists(folder) or folder in ("snapshots", "packs", "index"):
            total += sum(info.size for info in repository.storage.list(folder))
    config = repository.storage.stat("config.json")
    return total + (config.size if config else 0)


def repository_size(settings: Settings) -> SizeReport:
    """How much the repository stores and for whom.

    Reads every manifest and chunk list under a shared lock (so no prune runs
    meanwhile); a damaged snapshot is named in ``damaged`` and left out of the
    sums instead of failing the report.
    """
    repository = open_repository(settings)
    with locking.acquire(repository.storage, exclusive=False, purpose="size", wait=settings.lock_wait):
        index = repository.index(reload=True)
        snapshots: list[Snapshot] = []
        damaged: dict[str, str] = {}
        references: dict[str, set[str]] = {}  # snapshot -> data chunks (chunk lists are metadata)
        chunk_lists: set[str] = set()
        per_path: dict[str, list[tuple[Snapshot, FileEntry, set[str]]]] = {}
        for snapshot_id in repository.snapshot_ids():
            try:
                snapshot = repository.load_snapshot(snapshot_id)
                snapshot_lists: set[str] = set()
                chunks_by_file = [(entry, set(repository.chunk_ids_of(entry.chunk_lists, levels=entry.chunk_list_levels, list_ids=snapshot_lists))) for entry in snapshot.files]
            except CorruptData as error:
                damaged[snapshot_id] = str(error)
                continue
            snapshots.append(snapshot)
            chunk_lists.update(snapshot_lists)
            references[snapshot.id] = set().union(*(chunks for _, chunks in chunks_by_file))
            for entry, chunks in chunks_by_file:
                per_path.setdefault(entry.path, []).append((snapshot, entry, chunks))
        pack_sizes = {info.name.rsplit("/", 1)[-1]: info.size for info in repository.storage.list("packs")}
    length = {chunk_id: location.entry.length for chunk_id, location in index.locations.items()}
    counts: Counter[str] = Counter()
    for chunks in references.values():
        counts.update(chunks)
    usages = tuple(
        SnapshotUsage(
            id=snapshot.id,
            time=snapshot.time,
            tag=snapshot.tag,
            files=len(snapshot.files),
            logical_bytes=snapshot.logical_bytes,
            unique_bytes=sum(length.get(chunk_id, 0) for chunk_id in references[snapshot.id] if counts[chunk_id] == 1),
        )
        for snapshot in snapshots
    )
    databases = sorted(
        (
            DatabaseUsage(
                path=path,
                kind=versions[-1][1].kind,
                latest_size=versions[-1][1].size,
                versions=len(versions),
                distinct_versions=len({entry.sha256 for _, entry, _ in versions}),
                stored_bytes=sum(length.get(chunk_id, 0) for chunk_id in set().union(*(chunks for _, _, chunks in versions))),
            )
            for path, versions in per_path.items()
        ),
        key=lambda usage: (-usage.latest_size, usage.path),
    )
    referenced = set(counts)
    return SizeReport(
        repository=str(settings.repository),
        repository_bytes=_stored_bytes(repository),
        pack_bytes=sum(pack_sizes.values()),
        pack_count=len(pack_sizes),
        snapshot_count=len(snapshots),
        logical_bytes=sum(snapshot.logical_bytes for snapshot in snapshots),
        unique_bytes=sum(length.get(chunk_id, 0) for chunk_id in referenced),
        chunk_bytes=sum(length.values()),
        unreferenced_bytes=sum(size for chunk_id, size in length.items() if chunk_id not in referenced and chunk_id not in chunk_lists),
        snapshots=usages,
        databases=tuple(databases[:LARGEST_SHOWN]),
        damaged=damaged,
    )


# -- compare -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TableDelta:
    name: str
    rows_before: int | None  # None: the table did not exist (or could not be counted)
    rows_after: int | None
    status: str  # "added", "removed", "changed", "same"
    delta: int | None  # rows_after - rows_before when both are known


@dataclass(frozen=True, slots=True, kw_only=True)
class FileComparison:
    path: str
    status: str  # "added", "removed", "changed", "same"
    kind_before: str | None
    kind_after: str | None
    size_before: int | None
    size_after: int | None
    size_delta: int
    tables: tuple[TableDelta, ...] = ()
    #: Filled when both sides are SQLite and their schema hashes differ.
    schema: SchemaChanges | None = None
    #: The integrity check result of the later SQLite state ("ok" or what it found).
    integrity_after: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    base: Snapshot
    other: Snapshot | None  # None: compared with the live project
    files: tuple[FileComparison, ...]
    warnings: tuple[str, ...] = ()
    loss_threshold: float = DEFAULT_LOSS_THRESHOLD

    def count(self, status: str) -> int:
        return sum(1 for item in self.files if item.status == status)


@dataclass(slots=True, kw_only=True)
class _Side:
    """One state of one path: from a manifest entry or read from the live file."""

    kind: str
    size: int
    sha256: str
    sqlite: SQLiteInfo | None
    entry: FileEntry | None = None  # set when the state comes from a snapshot
    copy: Path | None = None  # a private SQLite copy of a live file, removed after use


def verified_chunks(repository: Repository, entry: FileEntry) -> Iterator[bytes]:
    """The file's bytes, chunk by chunk, each chunk hash-checked by the repository.

    After the last chunk the whole file's size and SHA-256 are compared with the
    manifest; a mismatch raises VerificationFailed naming the file, so a caller
    writing the chunks somewhere must treat what it wrote as invalid.
    """
    digest = hashlib.sha256()
    size = 0
    for chunk in repository.read_file_chunks(entry.chunk_lists, levels=entry.chunk_list_levels):
        digest.update(chunk)
        size += len(chunk)
        yield chunk
    if size != entry.size or digest.hexdigest() != entry.sha256:
        raise VerificationFailed(
            f"{entry.path}: stored bytes do not match the recorded SHA-256; run backup.verify --read-data",
            [Problem(kind="file-hash", message="stored bytes do not match the recorded SHA-256", path=entry.path)],
        )


def _materialise(repository: Repository, entry: FileEntry, scratch: Path) -> Path:
    """A verified private copy of a snapshot's file in scratch space; the caller removes it."""
    fsio.make_private_dirs(scratch)
    descriptor, temp = fsio.create_temp(scratch)
    try:
        try:
            for chunk in verified_chunks(repository, entry):
                fsio.write(descriptor, chunk)
        finally:
            os.close(descriptor)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp


def _live_paths(settings: Settings, base: Snapshot) -> dict[str, Path]:
    """Live files to compare: the current selection plus every path the snapshot holds."""
    paths = {
        item.relative: item.path for item in select_files(settings.root, include=settings.include, exclude=settings.exclude, skip=[settings.repository])
    }
    real_root = os.path.realpath(settings.root)
    for entry in base.files:
        path = settings.root / entry.path
        inside = os.path.realpath(path.parent) == real_root or os.path.realpath(path.parent).startswith(real_root + os.sep)
        if entry.path not in paths and inside and path.is_file() and not path.is_symlink():
            paths[entry.path] = path
    return paths


def compare_snapshot(
    settings: Settings,
    snapshot: str,
    other: str | None = None,
    *,
    loss_threshold: float = DEFAULT_LOSS_THRESHOLD,
    now: datetime | None = None,
) -> Comparison:
    """Compare ``snapshot`` with the live project, or with the snapshot ``other``.

    Per file: added / removed / changed / same with the size delta. For SQLite:
    per-table row-count deltas (live databases are read through a consistent
    private copy) and, when the schema hash differs, which tables, columns and
    indexes were added or removed. Warns when a table lost more than
    ``loss_threshold`` (a fraction) of its rows, or a database disappeared.
    """
    if not 0 <= loss_threshold <= 1:
        raise UsageError(f"loss threshold {loss_threshold!r} is not allowed: expected a fraction from 0 to 1")
    repository = open_repository(settings)
    moment = now or _utc_now()
    with locking.acquire(repository.storage, exclusive=False, purpose="compare", wait=settings.lock_wait):
        ids = repository.snapshot_ids()
        base = repository.load_snapshot(resolve_snapshot(snapshot, ids, now=moment))
        target = repository.load_snapshot(resolve_snapshot(other, ids, now=moment)) if other is not None else None
        before = {entry.path: _entry_side(entry) for entry in base.files}
        if target is not None:
            after_sides = {entry.path: _entry_side(entry) for entry in target.files}
            files = [_compare_path(repository, settings, path, before.get(path), after_sides.get(path)) for path in sorted(set(before) | set(after_sides))]
        else:
            live = _live_paths(settings, base)
            files = [_compare_live(repository, settings, path, before.get(path), live.get(path)) for path in sorted(set(before) | set(live))]
    return Comparison(base=base, other=target, files=tuple(files), warnings=tuple(_warnings(files, loss_threshold)), loss_threshold=loss_threshold)


def _entry_side(entry: FileEntry) -> _Side:
    return _Side(kind=entry.kind, size=entry.size, sha256=entry.sha256, sqlite=entry.sqlite, entry=entry)


def _compare_live(repository: Repository, settings: Settings, path: str, before: _Side | None, live_path: Path | None) -> FileComparison:
    after = None
    if live_path is not None:
        state = read_state(live_path, settings.scratch_directory, quick_check_above=settings.quick_check_above, keep_copy=True)
        after = _Side(kind=state.kind, size=state.size, sha256=state.sha256, sqlite=state.sqlite, copy=state.copy)
    try:
        return _compare_path(repository, settings, path, before, after)
    finally:
        if after is not None and after.copy is not None:
            with contextlib.suppress(OSError):
                os.unlink(after.copy)


def _compare_path(repository: Repository, settings: Settings, path: str, before: _Side | None, after: _Side | None) -> FileComparison:
    if before is None and after is None:  # pragma: no cover - callers pass the union of paths
        raise ValueError(path)
    if before is None:
        status = "added"
    elif after is None:
        status = "removed"
    else:
        status = "same" if (before.sha256, before.size) == (after.sha256, after.size) else "changed"
    tables = _table_deltas(before.sqlite if before else None, after.sqlite if after else None)
    schema = None
    if (
        status == "changed"
        and before is not None
        and after is not None
        and before.sqlite is not None
        and after.sqlite is not None
        and before.sqlite.schema_hash != after.sqlite.schema_hash
    ):
        schema = _schema_changes(repository, settings, before, after)
    return FileComparison(
        path=path,
        status=status,
        kind_before=before.kind if before else None,
        kind_after=after.kind if after else None,
        size_before=before.size if before else None,
        size_after=after.size if after else None,
        size_delta=(after.size if after else 0) - (before.size if before else 0),
        tables=tables,
        schema=schema,
        integrity_after=after.sqlite.integrity if after is not None and after.sqlite is not None else None,
    )


def _table_deltas(before: SQLiteInfo | None, after: SQLiteInfo | None) -> tuple[TableDelta, ...]:
    if before is None and after is None:
        return ()
    old = before.tables if before else {}
    new = after.tables if after else {}
    deltas = []
    for name in sorted(set(old) | set(new)):
        rows_before, rows_after = old.get(name), new.get(name)
        if name not in old:
            status = "added"
        elif name not in new:
            status = "removed"
        else:
            status = "same" if rows_before == rows_after else "changed"
        delta = rows_after - rows_before if rows_before is not None and rows_after is not None else None
        deltas.append(TableDelta(name=name, rows_before=rows_before, rows_after=rows_after, status=status, delta=delta))
    return tuple(deltas)


def _schema_changes(repository: Repository, settings: Settings, before: _Side, after: _Side) -> SchemaChanges:
    copies: list[Path] = []
    try:
        shapes = []
        for side in (before, after):
            if side.copy is not None:
                shapes.append(read_schema(side.copy))
                continue
            assert side.entry is not None
            copy = _materialise(repository, side.entry, settings.scratch_directory)
            copies.append(copy)
            shapes.append(read_schema(copy))
        return diff_schema(shapes[0], shapes[1])
    finally:
        for copy in copies:
            with contextlib.suppress(OSError):
                os.unlink(copy)


def _warnings(files: list[FileComparison], threshold: float) -> Iterator[str]:
    for item in files:
        if item.status == "removed" and item.kind_before == "sqlite":
            yield f"{item.path}: the database no longer exists"
        if item.integrity_after not in (None, "ok"):
            yield f"{item.path}: fails its integrity check: {item.integrity_after}"
        for table in item.tables:
            if not table.rows_before:
                continue
            if table.status == "removed" and item.status != "removed":
                yield f"{item.path}: table {table.name} ({table.rows_before} rows) no longer exists"
            elif table.rows_after is not None and (table.rows_before - table.rows_after) / table.rows_before > threshold:
                lost = table.rows_before - table.rows_after
                yield (
                    f"{item.path}: table {table.name} lost {lost} of {table.rows_before} rows "
                    f"({lost / table.rows_before:.0%}, more than {threshold:.0%})"
                )
