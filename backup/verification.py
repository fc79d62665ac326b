"""Verification: find every way the repository differs from what was written.

Owns: the structure check (every manifest parses, every referenced chunk is
indexed and its pack is present at the indexed size) and the read-data check
(every pack re-hashed, every file's bytes re-read, chunk-hashed and compared with
its recorded SHA-256). Collects typed problems instead of stopping at the first;
strictly read-only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from . import progress
from .errors import CorruptData, StorageError
from .manifest import Snapshot
from .repository import Repository, pack_name


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong, with everything needed to know what it affects."""

    kind: str
    message: str
    snapshot_id: str | None = None
    path: str | None = None
    chunk_id: str | None = None
    pack_id: str | None = None


@dataclass(slots=True, kw_only=True)
class VerifyReport:
    read_data: bool
    snapshots_checked: int = 0
    files_checked: int = 0
    chunks_checked: int = 0
    packs_checked: int = 0
    bytes_read: int = 0
    problems: list[Problem] = field(default_factory=list)
    verified_snapshots: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def affected_snapshots(self) -> list[str]:
        return sorted({problem.snapshot_id for problem in self.problems if problem.snapshot_id})


def verify_repository(
    repository: Repository,
    *,
    snapshot_ids: Sequence[str] | None = None,
    read_data: bool = False,
    pack_ids: Collection[str] | None = None,
) -> VerifyReport:
    """Check the named snapshots (all when None); returns every problem found.

    With ``read_data`` every indexed pack is re-hashed, or only ``pack_ids`` when
    given (a rotating verification re-reads a share of the packs at a time).
    """
    report = VerifyReport(read_data=read_data)
    index = repository.index(reload=True)
    for message in index.problems:
        report.problems.append(Problem(kind="corrupt-index", message=message))
    present = {info.name.rsplit("/", 1)[-1]: info.size for info in repository.storage.list("packs")}
    ids = list(snapshot_ids) if snapshot_ids is not None else repository.snapshot_ids()
    snapshots: list[Snapshot] = []
    for snapshot_id in ids:
        try:
            snapshots.append(repository.load_snapshot(snapshot_id))
        except CorruptData as error:
            report.problems.append(Problem(kind="corrupt-manifest", message=str(error), snapshot_id=snapshot_id))
    bad_packs = _check_packs(repository, present, report, pack_ids) if read_data else {}
    chunk_status: dict[str, str | None] = {}
    if read_data:
        progress.begin("verify files", sum(entry.size for snapshot in snapshots for entry in snapshot.files))
    for snapshot in snapshots:
        report.snapshots_checked += 1
        before = len(report.problems)
        for entry in snapshot.files:
            report.files_checked += 1
            _check_file(repository, snapshot, entry, present, bad_packs, chunk_status, report)
        if len(report.problems) == before:
            report.verified_snapshots.append(snapshot.id)
    return report


def _check_packs(repository: Repository, present: dict[str, int], report: VerifyReport, pack_ids: Collection[str] | None = None) -> dict[str, str]:
    """Re-hash every indexed pack (or those in ``pack_ids``) and compare its header with the index."""
    index = repository.index()
    bad: dict[str, str] = {}
    progress.begin("verify packs", sum(index.pack_sizes.values()))
    for pack_id, size in sorted(index.pack_sizes.items()):
        if pack_ids is not None and pack_id not in pack_ids:
            continue
        report.packs_checked += 1
        if pack_id not in present:
            bad[pack_id] = f"pack {pack_id} is missing"
            continue
        if present[pack_id] != size:
            bad[pack_id] = f"pack {pack_id} is {present[pack_id]} bytes, the index says {size}: it was truncated or replaced"
            continue
        try:
            data = repository.storage.get(pack_name(pack_id))
        except StorageError as error:
            bad[pack_id] = f"pack {pack_id} cannot be read: {error}"
            continue
        report.bytes_read += len(data)
        progress.advance(len(data))
        if hashlib.sha256(data).hexdigest() != pack_id:
            # Not fatal for the whole pack: the file check below re-hashes every chunk
            # and names exactly the ones that were hit.
            report.problems.append(Problem(kind="pack-hash", message=f"pack {pack_id} does not hash to its name: its bytes were changed", pack_id=pack_id))
        header_problem = _header_problem(repository, index, data, pack_id)
        if header_problem is not None:
            # The header is the redundant copy of the index used to rebuild it; its
            # damage alone leaves every chunk readable through the index, so the
            # file check decides which snapshots (if any) lost bytes.
            report.problems.append(Problem(kind="pack-header", message=header_problem, pack_id=pack_id))
    for pack_id, message in bad.items():
        report.problems.append(Problem(kind="bad-pack", message=message, pack_id=pack_id))
    return bad


def _header_problem(repository: Repository, index, data: bytes, pack_id: str) -> str | None:
    """Why the pack's trailing header cannot rebuild the index entries for it, or None."""
    try:
        entries = repository.parse_pack(data, pack_id)
    except CorruptData as error:
        return f"{error}; the index can no longer be rebuilt from this pack"
    indexed = {location.entry for location in index.locations.values() if location.pack_id == pack_id}
    if not indexed.issubset(set(entries)):
        return f"pack {pack_id} header disagrees with the index; the index can no longer be rebuilt from this pack"
    return None


def _chunk_problem(repository: Repository, chunk_id: str, present: dict[str, int], bad_packs: dict[str, str]) -> str | None:
    """Why a chunk is not safely stored, or None if some copy of it is."""
    locations = repository.index().all_locations(chunk_id)
    if not locations:
        return f"chunk {chunk_id} is not in any index"
    reasons = []
    for location in locations:
        size = repository.index().pack_sizes.get(location.pack_id)
        if location.pack_id not in present:
            reasons.append(f"its pack {location.pack_id} is missing")
        elif present[location.pack_id] != size:
            reasons.append(f"its pack {location.pack_id} has the wrong size")
        elif location.pack_id in bad_packs:
            reasons.append(bad_packs[location.pack_id])
        else:
            return None
    return f"chunk {chunk_id}: " + "; ".join(reasons)


def _check_file(repository, snapshot, entry, present, bad_packs, chunk_status, report) -> None:
    def problem(kind: str, message: str, chunk_id: str | None = None) -> None:
        report.problems.append(Problem(kind=kind, message=message, snapshot_id=snapshot.id, path=entry.path, chunk_id=chunk_id))

    chunk_ids: list[str] = []

    def expand(list_ids: Sequence[str], levels: int) -> bool:
        """Append the data chunk ids of a chunk list tree, level by level; False on damage."""
        for list_id in list_ids:
            reason = _cached_status(repository, list_id, present, bad_packs, chunk_status)
            if reason is not None:
                problem("missing-chunk", f"chunk list {reason}", list_id)
                return False
            try:
                ids = repository.read_chunk_list(list_id)
            except CorruptData as error:
                problem("corrupt-chunk", str(error), list_id)
                return False
            if levels == 1:
                chunk_ids.extend(ids)
            elif not expand(ids, levels - 1):
                return False
        return True

    if not expand(entry.chunk_lists, entry.chunk_list_levels):
        return
    if len(chunk_ids) != entry.chunk_count:
        problem("chunk-count", f"file lists {len(chunk_ids)} chunks, the manifest says {entry.chunk_count}")
        return
    damaged = False
    for chunk_id in chunk_ids:
        report.chunks_checked += 1
        reason = _cached_status(repository, chunk_id, present, bad_packs, chunk_status)
        if reason is not None:
            problem("missing-chunk", reason, chunk_id)
            damaged = True
    if damaged or not report.read_data:
        return
    digest = hashlib.sha256()
    size = 0
    chunks = repository.read_chunks(chunk_ids)
    for chunk_id in chunk_ids:
        try:
            data = next(chunks)
        except CorruptData as error:
            problem("corrupt-chunk", str(error), chunk_id)
            return
        digest.update(data)
        size += len(data)
        progress.advance(len(data))
    if size != entry.size or digest.hexdigest() != entry.sha256:
        problem("file-hash", f"file bytes do not match the recorded SHA-256 {entry.sha256}")


def _cached_status(repository, chunk_id, present, bad_packs, chunk_status) -> str | None:
    if chunk_id not in chunk_status:
        chunk_status[chunk_id] = _chunk_problem(repository, chunk_id, present, bad_packs)
    return chunk_status[chunk_id]
