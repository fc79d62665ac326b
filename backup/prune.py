"""Prune: remove snapshots and the data no remaining snapshot needs.

Owns: the order that keeps a crash harmless (manifests first, then a fresh index,
then old index files, then packs) and the refusals that keep prune from making
damage worse: any listing or read failure, or a kept snapshot that needs data
already missing, aborts before anything is deleted. Runs under the exclusive lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from . import fsio, locking
from .errors import BackupError, CorruptData
from .repository import Repository, pack_name


class PruneRefused(BackupError):
    """Prune found the repository damaged and deleted nothing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PruneResult:
    packs_removed: int = 0
    bytes_freed: int = 0
    warnings: tuple[str, ...] = field(default_factory=tuple)


def referenced_chunks(repository: Repository, snapshot_ids: Sequence[str]) -> set[str]:
    """Every chunk the snapshots need; raises PruneRefused if any is unreadable or missing."""
    index = repository.index(reload=True)
    if index.problems:
        raise PruneRefused(f"prune refused, nothing was deleted: {index.problems[0]}; run backup.verify")
    present = {info.name.rsplit("/", 1)[-1]: info.size for info in repository.storage.list("packs")}
    needed: set[str] = set()
    for snapshot_id in snapshot_ids:
        try:
            snapshot = repository.load_snapshot(snapshot_id)
            for entry in snapshot.files:
                needed.update(entry.chunk_lists)
                for chunk_id in repository.chunk_ids_of(entry.chunk_lists):
                    needed.add(chunk_id)
        except CorruptData as error:
            raise PruneRefused(f"prune refused, nothing was deleted: kept snapshot {snapshot_id} is damaged ({error}); run backup.verify") from error
    for chunk_id in needed:
        if not any(present.get(location.pack_id) == index.pack_sizes.get(location.pack_id) for location in index.all_locations(chunk_id)):
            raise PruneRefused(
                f"prune refused, nothing was deleted: chunk {chunk_id} needed by a kept snapshot is missing; "
                "run backup.verify to see what is affected"
            )
    return needed


def prune_repository(
    repository: Repository,
    lock: locking.Lock,
    *,
    keep_ids: Sequence[str],
    remove_ids: Sequence[str],
    dry_run: bool = False,
) -> PruneResult:
    """Delete ``remove_ids`` and every pack no kept snapshot references.

    Refuses (PruneRefused, nothing deleted) when no snapshot is kept while packs
    exist: a snapshot listing that comes back empty over a repository full of
    data is far likelier a wrong or damaged listing than a wish to delete it all.
    """
    needed = referenced_chunks(repository, keep_ids)
    index = repository.index()
    listed = {info.name.rsplit("/", 1)[-1]: info.size for info in repository.storage.list("packs")}
    if not keep_ids and listed:
        raise PruneRefused(
            f"prune refused, nothing was deleted: no snapshot was found, yet the repository holds {len(listed)} packs; "
            "an empty snapshot listing is not trusted to delete everything (check the snapshots folder, run backup.verify)"
        )
    live_packs: dict[str, tuple[int, list]] = {}
    pack_entries: dict[str, list] = {}
    for location_list in (index.locations.values(), *index.duplicates.values()):
        for location in location_list:
            pack_entries.setdefault(location.pack_id, []).append(location.entry)
    for pack_id, entries in pack_entries.items():
        if any(entry.chunk_id in needed for entry in entries) and pack_id in listed:
            live_packs[pack_id] = (index.pack_sizes[pack_id], entries)
    dead = {pack_id: size for pack_id, size in listed.items() if pack_id not in live_packs}
    result = PruneResult(packs_removed=len(dead), bytes_freed=sum(dead.values()))
    if dry_run:
        return result
    lock.ensure_held()
    for snapshot_id in remove_ids:
        repository.delete_snapshot(snapshot_id)
    fsio.reached("after_manifests_deleted")
    old_index_files = [info.name for info in repository.storage.list("index")]
    new_index = repository._write_index(live_packs)
    fsio.reached("after_new_index")
    for name in old_index_files:
        if name != new_index:
            repository.storage.delete(name)
    for pack_id in dead:
        repository.storage.delete(pack_name(pack_id))
    repository.remove_stale_temps()
    repository.index(reload=True)
    return result
