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
from .errors import CorruptChunk, CorruptData, StorageError
from .manifest import Snapshot
from .pack import PackEntry
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
    Each pack is read once: while it is hashed, its frames are opened and every
    chunk in it is checked against its id. Then every file of every snapshot is
    reassembled and compared with its recorded SHA-256, reading each chunk from
    a copy that passed that check (a chunk whose packs were not re-read here is
    read and hash-checked on the way).
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
    data = _PackChecks()
    if read_data:
        _check_packs(repository, present, report, data, pack_ids)
    state = _FileChecks(present=present, packs=data)
    if read_data:
        progress.begin("verify files", sum(entry.size for snapshot in snapshots for entry in snapshot.files))
    for snapshot in snapshots:
        report.snapshots_checked += 1
        before = len(report.problems)
        for entry in snapshot.files:
            report.files_checked += 1
            _check_file(repository, snapshot, entry, state, report)
        if len(report.problems) == before:
            report.verified_snapshots.append(snapshot.id)
    return report


@dataclass(slots=True)
class _PackChecks:
    """What re-reading the packs found, for the file check to use."""

    #: pack id -> why none of its chunks can be read (missing, wrong size, unreadable)
    bad: dict[str, str] = field(default_factory=dict)
    #: packs whose every indexed chunk was opened and hash-checked
    checked: set[str] = field(default_factory=set)
    #: (pack id, chunk id) -> why that copy of the chunk failed its check
    damaged: dict[tuple[str, str], CorruptData] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class _FileChecks:
    present: dict[str, int]
    packs: _PackChecks
    #: chunk id -> None when some copy is stored, else why not (structure only)
    chunk_status: dict[str, str | None] = field(default_factory=dict)
    #: chunk list id -> its bytes, so a list shared by snapshots is read once
    lists: dict[str, bytes] = field(default_factory=dict)
    #: whole-file results by (sha256, size, chunk lists, levels): an entry equal to one
    #: already reassembled names the same bytes, so it has the same outcome
    files: dict[tuple[object, ...], tuple[str, str, str | None] | None] = field(default_factory=dict)


def _entries_by_pack(index) -> dict[str, list[PackEntry]]:
    by_pack: dict[str, list[PackEntry]] = {}
    for location in index.locations.values():
        by_pack.setdefault(location.pack_id, []).append(location.entry)
    for duplicates in index.duplicates.values():
        for location in duplicates:
            by_pack.setdefault(location.pack_id, []).append(location.entry)
    return by_pack


def _check_packs(repository: Repository, present: dict[str, int], report: VerifyReport, data: _PackChecks, pack_ids: Collection[str] | None = None) -> None:
    """Re-hash every indexed pack (or those in ``pack_ids``), compare its header with the
    index, and check every chunk the index places in it."""
    index = repository.index()
    bad = data.bad
    by_pack = _entries_by_pack(index)
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
            content = repository.storage.get(pack_name(pack_id))
        except StorageError as error:
            bad[pack_id] = f"pack {pack_id} cannot be read: {error}"
            continue
        report.bytes_read += len(content)
        progress.advance(len(content))
        if hashlib.sha256(content).hexdigest() != pack_id:
            # Not fatal for the whole pack: the chunk check below names exactly the
            # chunks that were hit, and the file check the snapshots they affect.
            report.problems.append(Problem(kind="pack-hash", message=f"pack {pack_id} does not hash to its name: its bytes were changed", pack_id=pack_id))
        entries = by_pack.get(pack_id, [])
        header_problem = _header_problem(repository, entries, content, pack_id)
        if header_problem is not None:
            # The header is the redundant copy of the index used to rebuild it; its
            # damage alone leaves every chunk readable through the index, so the
            # file check decides which snapshots (if any) lost bytes.
            report.problems.append(Problem(kind="pack-header", message=header_problem, pack_id=pack_id))
        for chunk_id, error in repository.check_pack_chunks(pack_id, content, entries).items():
            data.damaged[(pack_id, chunk_id)] = error
        data.checked.add(pack_id)
        del content
    for pack_id, message in bad.items():
        report.problems.append(Problem(kind="bad-pack", message=message, pack_id=pack_id))


def _header_problem(repository: Repository, indexed: list[PackEntry], data: bytes, pack_id: str) -> str | None:
    """Why the pack's trailing header cannot rebuild the index entries for it, or None."""
    try:
        entries = repository.parse_pack(data, pack_id)
    except CorruptData as error:
        return f"{error}; the index can no longer be rebuilt from this pack"
    if not set(indexed).issubset(set(entries)):
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


def _read_list(repository: Repository, list_id: str, state: _FileChecks) -> list[str]:
    """The ids a chunk list holds, read (and hash-checked) once per verification."""
    data = state.lists.get(list_id)
    if data is None:
        data = repository.read_chunk(list_id)
        if len(data) % 32:
            raise CorruptChunk(f"chunk list {list_id} has a length that is not a multiple of 32")
        state.lists[list_id] = data
    return [data[position : position + 32].hex() for position in range(0, len(data), 32)]


def _read_copy_problem(repository: Repository, chunk_id: str, packs: _PackChecks) -> str | None | bool:
    """Whether the pack check already settled a chunk: None (a copy is intact), a
    message (no copy is, worded as a failed read would be), or False (some copy
    lies in a pack not re-read here)."""
    failures: list[CorruptData] = []
    for location in repository.index().all_locations(chunk_id):
        if location.pack_id not in packs.checked:
            return False
        failure = packs.damaged.get((location.pack_id, chunk_id))
        if failure is None:
            return None
        failures.append(failure)
    if len(failures) == 1:
        return str(failures[0])
    return f"chunk {chunk_id}: no intact copy ({'; '.join(str(failure) for failure in failures)})"


def _check_file(repository: Repository, snapshot: Snapshot, entry, state: _FileChecks, report: VerifyReport) -> None:
    def problem(kind: str, message: str, chunk_id: str | None = None) -> None:
        report.problems.append(Problem(kind=kind, message=message, snapshot_id=snapshot.id, path=entry.path, chunk_id=chunk_id))

    chunk_ids: list[str] = []

    def expand(list_ids: Sequence[str], levels: int) -> bool:
        """Append the data chunk ids of a chunk list tree, level by level; False on damage."""
        for list_id in list_ids:
            reason = _cached_status(repository, list_id, state)
            if reason is not None:
                problem("missing-chunk", f"chunk list {reason}", list_id)
                return False
            try:
                ids = _read_list(repository, list_id, state)
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
    status = state.chunk_status
    for chunk_id in chunk_ids:
        reason = status[chunk_id] if chunk_id in status else _cached_status(repository, chunk_id, state)
        if reason is not None:
            problem("missing-chunk", reason, chunk_id)
            damaged = True
    report.chunks_checked += len(chunk_ids)
    if damaged or not report.read_data:
        return
    key = (entry.sha256, entry.size, entry.chunk_lists, entry.chunk_list_levels)
    if key in state.files:
        outcome = state.files[key]
        if outcome is not None:
            problem(*outcome)
        progress.advance(entry.size)
        return
    outcome = _reassemble(repository, entry, chunk_ids, state.packs)
    state.files[key] = outcome
    if outcome is not None:
        problem(*outcome)


def _reassemble(repository: Repository, entry, chunk_ids: list[str], packs: _PackChecks) -> tuple[str, str, str | None] | None:
    """Hash the file's bytes in order; returns (kind, message, chunk id) of its problem, or None.

    Chunks the pack check settled are read without hashing them again, from a
    copy that passed; any other chunk is read through ``read_chunk``. Either
    way the whole file must match its recorded SHA-256.
    """
    settled = True
    if packs.damaged or not packs.checked.issuperset(repository.index().pack_sizes):
        for chunk_id in chunk_ids:
            found = _read_copy_problem(repository, chunk_id, packs)
            if found is False:
                settled = False
            elif found is not None:
                return ("corrupt-chunk", found, chunk_id)
    # else: every indexed copy of every chunk passed the pack check (the structure
    # check already found each of this file's chunks in the index)
    digest = hashlib.sha256()
    size = 0
    if settled:
        try:
            for piece in repository.read_unchecked(chunk_ids, avoid=packs.damaged):
                digest.update(piece)
                size += len(piece)
                progress.advance(len(piece))
        except CorruptData as error:
            # The packs changed since they were checked: say what the read found.
            return ("corrupt-chunk", str(error), None)
    else:
        for chunk_id in chunk_ids:
            try:
                data = repository.read_chunk(chunk_id)
            except CorruptData as error:
                return ("corrupt-chunk", str(error), chunk_id)
            digest.update(data)
            size += len(data)
            progress.advance(len(data))
    if size != entry.size or digest.hexdigest() != entry.sha256:
        return ("file-hash", f"file bytes do not match the recorded SHA-256 {entry.sha256}", None)
    return None


def _cached_status(repository: Repository, chunk_id: str, state: _FileChecks) -> str | None:
    status = state.chunk_status
    if chunk_id not in status:
        status[chunk_id] = _chunk_problem(repository, chunk_id, state.present, state.packs.bad)
    return status[chunk_id]
