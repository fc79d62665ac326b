"""Operations: create, restore, verify, list, clean, and the migration guard.

Owns: composing sources (what to read and write back) with the repository (where
bytes live) under the right lock, in the order that keeps every invariant of
docs/format.md. Returns report records; never prints, never maps exit codes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pathspec

from . import fsio, locking
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
from .lookup import resolve_snapshot
from .manifest import FileEntry, Snapshot, SnapshotStats
from .pack import chunk_id_of
from .provenance import TOOL_VERSION, git_info, host_name, user_name
from .repository import Repository
from .settings import Settings
from .sources import (
    SelectedFile,
    capture_file,
    capture_sqlite,
    check_sqlite_copy,
    install_file,
    is_sqlite_file,
    restore_sqlite_into,
    select_files,
)
from .sources.plainfile import move_aside_sidecars
from .storage import LocalStorage, describe_os_error
from .verification import Problem, VerifyReport, verify_repository

READ_PIECE = 1024 * 1024


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def open_repository(settings: Settings, *, create: bool = False) -> Repository:
    storage = LocalStorage(settings.repository)
    if create:
        return Repository.open_or_init(storage, chunk_size=settings.chunk_size, compression_level=settings.compression_level)
    return Repository.open(storage)


# -- create --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupReport:
    snapshot: Snapshot
    warnings: tuple[str, ...] = ()
    verification: VerifyReport | None = None

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
        selected = _select(settings, paths)
        snapshot = _create_locked(repository, lock, settings, selected, root=settings.root, tag=tag, note=note, now=now)
        warnings = tuple(lock.broken)
        verification = verify_repository(repository, snapshot_ids=[snapshot.id], read_data=True) if verify else None
    return BackupReport(snapshot=snapshot, warnings=warnings, verification=verification)


def create_safety_backup(settings: Settings, *, reason: str = "safety", paths: Sequence[str] | None = None) -> BackupReport:
    """A snapshot taken before something risky, tagged so retention treats it apart."""
    return create_backup(settings, tag="safety", note=reason, paths=paths)


def _select(settings: Settings, paths: Sequence[str] | None) -> list[SelectedFile]:
    if paths is None:
        selected = select_files(settings.root, include=settings.include, exclude=settings.exclude, skip=[settings.repository])
        if not selected:
            raise UsageError(
                f"no databases found under {settings.root} (include: {', '.join(settings.include)}); "
                "check the project root and the include/exclude patterns"
            )
        return selected
    chosen: list[SelectedFile] = []
    for relative in paths:
        path = _inside(settings.root, relative)
        if not path.is_file():
            raise UsageError(f"{relative} is not a file under {settings.root}")
        chosen.append(SelectedFile(path=path, relative=path.relative_to(settings.root).as_posix(), kind="sqlite" if is_sqlite_file(path) else "file"))
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
) -> Snapshot:
    started = time.monotonic()
    moment = now or _utc_now()
    scratch = settings.scratch_directory
    try:
        fsio.make_private_dirs(scratch)
    except OSError as error:
        raise describe_os_error("create", scratch, error) from error
    repository.remove_stale_temps()
    writer = repository.writer()
    entries: list[FileEntry] = []
    stats = _Counter()
    for item in selected:
        entries.append(_store_one(repository, writer, item, settings, scratch, stats))
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


@dataclass(slots=True)
class _Counter:
    logical_bytes: int = 0
    new_chunks: int = 0
    reused_chunks: int = 0
    new_bytes: int = 0


def _store_one(repository: Repository, writer, item: SelectedFile, settings: Settings, scratch: Path, stats: _Counter) -> FileEntry:
    try:
        status = item.path.stat()
    except OSError as error:
        raise SourceError(f"cannot read {item.path}: {error.strerror or error}") from error
    if item.kind == "sqlite":
        copy_path, info = capture_sqlite(item.path, scratch, quick_check_above=settings.quick_check_above)
        try:
            chunk_size = max(info.page_size, settings.chunk_size // info.page_size * info.page_size)
            size, digest, chunk_ids = _store_stream(writer, capture_file(copy_path, READ_PIECE), chunk_size, stats)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(copy_path)
        if info.integrity != "ok":
            raise SourceError(f"{item.relative} fails {info.check} ({info.integrity}); refusing to store a damaged database as a good backup")
    else:
        info = None
        size, digest, chunk_ids = _store_stream(writer, capture_file(item.path, READ_PIECE), settings.chunk_size, stats)
    chunk_lists = writer.add_chunk_list(chunk_ids)
    return FileEntry(
        path=item.relative,
        kind=item.kind,
        size=size,
        mode=stat.S_IMODE(status.st_mode),
        mtime=status.st_mtime,
        sha256=digest,
        chunk_lists=tuple(chunk_lists),
        chunk_count=len(chunk_ids),
        sqlite=info,
    )


def _fixed_chunks(pieces: Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    buffer = bytearray()
    for piece in pieces:
        buffer += piece
        while len(buffer) >= chunk_size:
            yield bytes(buffer[:chunk_size])
            del buffer[:chunk_size]
    if buffer:
        yield bytes(buffer)


def _store_stream(writer, pieces: Iterable[bytes], chunk_size: int, stats: _Counter) -> tuple[int, str, list[str]]:
    whole = hashlib.sha256()
    size = 0
    chunk_ids: list[str] = []
    for chunk in _fixed_chunks(pieces, chunk_size):
        whole.update(chunk)
        size += len(chunk)
        chunk_id = chunk_id_of(chunk)
        chunk_ids.append(chunk_id)
        if writer.add(chunk_id, chunk):
            stats.new_chunks += 1
            stats.new_bytes += len(chunk)
        else:
            stats.reused_chunks += 1
    stats.logical_bytes += size
    return size, whole.hexdigest(), chunk_ids


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

    @property
    def overwrites(self) -> bool:
        return any(item.overwrites for item in self.items)


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoredFile:
    path: str
    destination: str
    size: int
    sha256_ok: bool
    integrity: str  # "ok", "n/a" for plain files, or what the check said


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreReport:
    plan: RestorePlan
    files: tuple[RestoredFile, ...] = ()
    safety_snapshot: Snapshot | None = None
    dry_run: bool = False
    warnings: tuple[str, ...] = ()


def plan_restore(settings: Settings, snapshot: str, *, target: Path | None = None, only: Sequence[str] = (), now: datetime | None = None) -> RestorePlan:
    repository = open_repository(settings)
    return _plan(repository, settings, snapshot, target=target, only=only, now=now)


def _plan(repository: Repository, settings: Settings, spec: str, *, target: Path | None, only: Sequence[str], now: datetime | None) -> RestorePlan:
    chosen = repository.load_snapshot(resolve_snapshot(spec, repository.snapshot_ids(), now=now or _utc_now()))
    base = Path(os.path.abspath(target)) if target is not None else settings.root
    matcher = pathspec.GitIgnoreSpec.from_lines(only) if only else None
    items: list[RestoreItem] = []
    for entry in chosen.files:
        if matcher is not None and not matcher.match_file(entry.path):
            continue
        destination = _inside(base, entry.path) if base.exists() else base / entry.path
        items.append(RestoreItem(entry=entry, destination=destination, overwrites=destination.exists()))
    if not items:
        raise UsageError(f"snapshot {chosen.id} has no file matching {', '.join(only)}" if only else f"snapshot {chosen.id} holds no files")
    return RestorePlan(snapshot=chosen, items=tuple(items), destination_root=base)


def restore_backup(
    settings: Settings,
    snapshot: str,
    *,
    target: Path | None = None,
    only: Sequence[str] = (),
    force: bool = False,
    confirm: Callable[[RestorePlan], bool] | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
) -> RestoreReport:
    """Restore a snapshot's files into the project (or ``target``), safely.

    Order: verify every byte into temp files beside the destinations (chunk
    hashes, whole-file SHA-256, integrity_check) -> take a safety snapshot of
    the live files about to be overwritten -> write (SQLite through the online
    backup API, plain files by rename). Anything failing before the write leaves
    the live files untouched. Raises RestoreRefused when files would be
    overwritten without ``force`` and ``confirm`` did not say yes.
    """
    repository = open_repository(settings)
    with locking.acquire(repository.storage, exclusive=True, purpose="restore", wait=settings.lock_wait) as lock:
        plan = _plan(repository, settings, snapshot, target=target, only=only, now=now)
        if dry_run:
            return RestoreReport(plan=plan, dry_run=True)
        if plan.overwrites and not force and (confirm is None or not confirm(plan)):
            raise RestoreRefused("restore would overwrite live files and was not confirmed; nothing was changed (use --force to skip the question)")
        materialised: dict[Path, Path] = {}
        try:
            _prepare_directories(plan)
            for item in plan.items:
                materialised[item.destination] = _materialise(repository, item)
            safety = _safety_snapshot(repository, lock, settings, plan)
            fsio.reached("after_safety_snapshot")
            results = []
            for item in plan.items:
                results.append(_apply(item, materialised[item.destination]))
                del materialised[item.destination]
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
    try:
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in repository.read_file_chunks(item.entry.chunk_lists):
                fsio.write(descriptor, chunk)
                digest.update(chunk)
                size += len(chunk)
            fsio.fsync(descriptor)
        finally:
            os.close(descriptor)
        if digest.hexdigest() != item.entry.sha256 or size != item.entry.size:
            problems.append(Problem(kind="file-hash", message="restored bytes do not match the recorded SHA-256", snapshot_id=None, path=item.entry.path))
        elif item.entry.sqlite is not None:
            for message in check_sqlite_copy(temp, item.entry.sqlite):
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


def _safety_snapshot(repository: Repository, lock: locking.Lock, settings: Settings, plan: RestorePlan) -> Snapshot | None:
    """Snapshot the live files about to be replaced; the restore's way back."""
    live = [
        SelectedFile(path=item.destination, relative=item.entry.path, kind="sqlite" if is_sqlite_file(item.destination) else "file")
        for item in plan.items
        if item.overwrites and item.destination.is_file()
    ]
    if not live:
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


# -- clean ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CleanReport:
    kept: tuple[str, ...]
    removed: tuple[str, ...]
    packs_removed: int = 0
    bytes_freed: int = 0
    dry_run: bool = False
    warnings: tuple[str, ...] = ()


def clean_old_backups(settings: Settings, *, keep_last: int | None = None, dry_run: bool = False) -> CleanReport:
    """Keep the newest ``keep_last`` snapshots, remove the rest, prune unreferenced data.

    Aborts and deletes nothing if any listing or read fails, or if a kept
    snapshot needs data that is already missing.
    """
    keep = settings.keep_last if keep_last is None else keep_last
    if keep < 1:
        raise UsageError("keep must be at least 1: removing every snapshot is refused")
    repository = open_repository(settings)
    with locking.acquire(repository.storage, exclusive=True, purpose="clean", wait=settings.lock_wait) as lock:
        ids = repository.snapshot_ids()
        kept, removed = ids[-keep:], ids[:-keep]
        from .prune import prune_repository

        result = prune_repository(repository, lock, keep_ids=kept, remove_ids=removed, dry_run=dry_run)
    return CleanReport(
        kept=tuple(kept),
        removed=tuple(removed),
        packs_removed=result.packs_removed,
        bytes_freed=result.bytes_freed,
        dry_run=dry_run,
        warnings=tuple(lock.broken) + tuple(result.warnings),
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
