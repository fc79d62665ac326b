"""Prune: remove snapshots and the data no remaining snapshot needs.

Owns: the order that keeps a crash harmless and the refusals that keep prune from
making damage worse. Runs under the exclusive lock. Order:

1. plan, reading only: load every kept snapshot and expand its chunk lists, list
   packs and index; any listing or read failure, or a kept snapshot that needs
   data already missing, aborts here with nothing deleted;
2. repack: copy the live chunks of packs whose live fraction is below the
   threshold into new packs, and make those packs and their index durable first;
3. delete the removed manifests;
4. write one fresh index of the surviving packs, then delete the old index files;
5. delete packs no kept snapshot needs (and the repacked ones).

A crash anywhere leaves at worst unreferenced or duplicated data that the next
prune removes. Packs that no index mentions and that are younger than the grace
period are left alone: a writer that lost its lock may still be about to index them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from . import fsio, locking
from .errors import BackupError, ConfigError, CorruptData, StorageError
from .pack import PackEntry, check_id
from .repository import Repository, pack_name
from .storage import ObjectInfo

DEFAULT_REPACK_BELOW = 0.5
DEFAULT_GRACE = timedelta(minutes=60)


class PruneRefused(BackupError):
    """Prune found the repository damaged and deleted nothing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneOptions:
    """How aggressively prune reclaims space.

    ``repack_below``: a pack whose live fraction (live chunk bytes / all chunk
    bytes) is below this is rewritten; 0 switches repacking off.
    ``grace``: unindexed packs younger than this are never deleted.
    """

    repack_below: float = DEFAULT_REPACK_BELOW
    grace: timedelta = DEFAULT_GRACE

    @classmethod
    def from_maintenance_section(cls, section: Mapping[str, Any]) -> PruneOptions:
        """Read ``repack_below`` and ``grace_minutes`` from the ``backup.maintenance`` section.

        Other keys of that section belong to the routines and are passed over.
        Raises ConfigError naming each bad value.
        """
        values: dict[str, Any] = {}
        problems: list[str] = []
        for key, name, low, high in (("repack_below", "repack_below", 0.0, 1.0), ("grace_minutes", "grace", 0.0, 1e9)):
            if key not in section:
                continue
            raw = section[key]
            try:
                number = float(raw) if not isinstance(raw, bool) else float("nan")
            except (TypeError, ValueError):
                number = float("nan")
            if not low <= number <= high:
                problems.append(f"backup.maintenance.{key} = {raw!r} is not allowed: expected a number from {low:g} to {high:g}")
                continue
            values[name] = timedelta(minutes=number) if name == "grace" else number
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(**values)

    def __post_init__(self) -> None:
        if not 0.0 <= self.repack_below <= 1.0:
            raise ValueError("repack_below must be a fraction from 0 to 1")
        if self.grace < timedelta(0):
            raise ValueError("grace must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneResult:
    packs_removed: int = 0  # packs deleted because no kept snapshot needs them
    packs_repacked: int = 0  # packs whose live chunks were copied, then deleted
    packs_written: int = 0  # new packs the repack wrote
    bytes_freed: int = 0  # bytes deleted minus bytes the repack wrote
    bytes_written: int = 0
    packs_in_grace: int = 0  # unindexed packs left alone because they are young
    warnings: tuple[str, ...] = field(default_factory=tuple)


@dataclass(slots=True, kw_only=True)
class _Plan:
    keep: dict[str, tuple[int, list[PackEntry]]] = field(default_factory=dict)
    repack: dict[str, tuple[int, list[PackEntry]]] = field(default_factory=dict)
    dead: dict[str, int] = field(default_factory=dict)
    young: dict[str, int] = field(default_factory=dict)
    live_bytes: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _refused(message: str) -> PruneRefused:
    return PruneRefused(f"prune refused, nothing was deleted: {message}")


def _list_packs(repository: Repository) -> dict[str, ObjectInfo]:
    try:
        return {info.name.rsplit("/", 1)[-1]: info for info in repository.storage.list("packs")}
    except StorageError as error:
        raise _refused(f"{error}; fix the repository location and run again") from error


def referenced_chunks(repository: Repository, snapshot_ids: Sequence[str]) -> set[str]:
    """Every chunk the snapshots need; raises PruneRefused if any is unreadable or missing."""
    try:
        index = repository.index(reload=True)
    except StorageError as error:
        raise _refused(f"{error}") from error
    if index.problems:
        raise _refused(f"{index.problems[0]}; run backup.verify")
    present = {pack_id: info.size for pack_id, info in _list_packs(repository).items()}
    needed: set[str] = set()
    for snapshot_id in snapshot_ids:
        try:
            snapshot = repository.load_snapshot(snapshot_id)
            for entry in snapshot.files:
                # Every list of the chunk list tree is needed, not only those the manifest names.
                needed.update(repository.chunk_ids_of(entry.chunk_lists, levels=entry.chunk_list_levels, list_ids=needed))
        except (CorruptData, StorageError) as error:
            raise _refused(f"kept snapshot {snapshot_id} cannot be read ({error}); run backup.verify") from error
    for chunk_id in needed:
        if not any(present.get(location.pack_id) == index.pack_sizes.get(location.pack_id) for location in index.all_locations(chunk_id)):
            raise _refused(f"chunk {chunk_id} needed by a kept snapshot is missing; run backup.verify to see what is affected")
    return needed


def _plan(repository: Repository, needed: set[str], options: PruneOptions, now: datetime) -> _Plan:
    index = repository.index()
    listed = _list_packs(repository)
    pack_entries: dict[str, list[PackEntry]] = {}
    for location in index.every_location():
        pack_entries.setdefault(location.pack_id, []).append(location.entry)
    plan = _Plan()
    for pack_id, info in sorted(listed.items()):
        try:
            check_id(pack_id, "pack id")
        except CorruptData:
            plan.warnings.append(f"left alone {info.name}: not a pack name")
            continue
        entries = pack_entries.get(pack_id)
        if entries is None:
            age = now - datetime.fromtimestamp(info.modified, timezone.utc)
            if age < options.grace:
                plan.young[pack_id] = info.size
            else:
                plan.dead[pack_id] = info.size
            continue
        live = [entry for entry in entries if entry.chunk_id in needed]
        indexed_size = index.pack_sizes[pack_id]
        if not live:
            plan.dead[pack_id] = info.size
            continue
        total = sum(entry.length for entry in entries) or 1
        live_bytes = sum(entry.length for entry in live)
        intact = info.size == indexed_size
        if intact and live_bytes / total < options.repack_below:
            plan.repack[pack_id] = (indexed_size, live)
            plan.live_bytes[pack_id] = live_bytes
        else:
            plan.keep[pack_id] = (indexed_size, entries)
            if not intact:
                plan.warnings.append(f"pack {pack_id} is {info.size} bytes, the index says {indexed_size}; kept, run backup.verify")
    if plan.young:
        plan.warnings.append(
            f"kept {len(plan.young)} unindexed pack(s), {sum(plan.young.values())} bytes, younger than the "
            f"{int(options.grace.total_seconds() // 60)}-minute grace period; the next prune removes them if nothing claims them"
        )
    return plan


def _repack(repository: Repository, plan: _Plan) -> dict[str, tuple[int, list[PackEntry]]]:
    """Copy the live chunks of ``plan.repack`` into new durable, indexed packs."""
    with repository.writer(ignore_packs=plan.repack, keep_entries=True) as writer:
        for pack_id, (_size, live) in sorted(plan.repack.items()):
            for entry in sorted(live, key=lambda item: (item.frame_offset, item.offset_in_frame)):
                if writer.reuse(entry.chunk_id):
                    continue
                try:
                    data = repository.read_chunk(entry.chunk_id)
                except (CorruptData, StorageError) as error:
                    raise _refused(f"cannot read chunk {entry.chunk_id} from pack {pack_id} to repack it ({error}); run backup.verify") from error
                writer.add(entry.chunk_id, data)
        writer.finish()
    return writer.packs_written


def prune_repository(
    repository: Repository,
    lock: locking.Lock,
    *,
    keep_ids: Sequence[str],
    remove_ids: Sequence[str],
    dry_run: bool = False,
    options: PruneOptions | None = None,
    now: datetime | None = None,
) -> PruneResult:
    """Delete ``remove_ids``, repack sparse packs, and delete packs nothing needs.

    Returns what was (or, with ``dry_run``, would be) freed. Raises PruneRefused,
    having deleted nothing, if any listing or read fails or a kept snapshot needs
    missing data, or if no snapshot is kept while packs exist; raises LockLost if
    our lock was taken before anything is deleted.
    """
    options = options or PruneOptions()
    moment = now or datetime.now(timezone.utc)
    needed = referenced_chunks(repository, keep_ids)
    packs_present = _list_packs(repository)
    if not keep_ids and packs_present:
        # A snapshot listing that comes back empty over a repository full of data is
        # far likelier a wrong or damaged listing than a wish to delete it all.
        raise _refused(
            f"no snapshot was found, yet the repository holds {len(packs_present)} packs; an empty snapshot listing "
            "is not trusted to delete everything (check the snapshots folder, run backup.verify)"
        )
    plan = _plan(repository, needed, options, moment)
    deleted_bytes = sum(plan.dead.values()) + sum(size for size, _ in plan.repack.values())
    if dry_run:
        estimate = sum(plan.live_bytes.values())
        return PruneResult(
            packs_removed=len(plan.dead),
            packs_repacked=len(plan.repack),
            bytes_freed=max(deleted_bytes - estimate, 0),
            bytes_written=estimate,
            packs_in_grace=len(plan.young),
            warnings=tuple(plan.warnings),
        )
    lock.ensure_held()
    written = _repack(repository, plan) if plan.repack else {}
    fsio.reached("after_repack")
    # Listed after the repack (which only adds) and before anything is deleted: a
    # listing failure aborts with nothing deleted, and the repack's own index file
    # is replaced by the fresh index like every other.
    old_index_files = [info.name for info in repository.storage.list("index")]
    lock.ensure_held()
    for snapshot_id in remove_ids:
        repository.delete_snapshot(snapshot_id)
    fsio.reached("after_manifests_deleted")
    new_index = repository._write_index({**plan.keep, **written})
    fsio.reached("after_new_index")
    for name in old_index_files:
        if name != new_index:
            repository.storage.delete(name)
    # A repack can write a pack whose bytes, and so whose name, equal a leftover of an
    # interrupted earlier prune that was planned as dead: never delete what the new
    # index references.
    indexed_now = set(plan.keep) | set(written)
    for pack_id in [*plan.dead, *plan.repack]:
        if pack_id not in indexed_now:
            repository.storage.delete(pack_name(pack_id))
    warnings = list(plan.warnings)
    try:
        repository.remove_stale_temps()
    except (StorageError, OSError) as error:
        warnings.append(f"prune finished, but leftover temporary files could not be removed: {error}")
    repository._index = None
    bytes_written = sum(size for size, _ in written.values())
    return PruneResult(
        packs_removed=len(plan.dead),
        packs_repacked=len(plan.repack),
        packs_written=len(written),
        bytes_freed=deleted_bytes - bytes_written,
        bytes_written=bytes_written,
        packs_in_grace=len(plan.young),
        warnings=tuple(warnings),
    )
