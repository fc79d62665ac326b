"""Verification: find every way the repository differs from what was written.

Owns: the structure check (every manifest parses, every referenced chunk is
indexed and its pack is present at the indexed size) and the read-data check
(every pack re-hashed and its header compared with the index; every file's
bytes reassembled and compared with its recorded SHA-256, every frame they come
from opened once and every chunk in it hash-checked). Collects typed problems
instead of stopping at the first; strictly read-only.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

from . import pack as packformat
from . import progress
from .chunk_index import add_location_run, hex_ids, join_run, split_ids
from .errors import CorruptData, StorageError
from .inorder import InOrder
from .manifest import FileEntry, Snapshot
from .pack import PackEntry
from .repository import ChunkLocation, Repository, pack_name
from .storage import Storage


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
    given (a rotating verification re-reads a share of the packs at a time), and
    every file of every snapshot is reassembled and compared with its recorded
    SHA-256. Each frame a file needs is opened once and every chunk in it checked
    against its id, whichever snapshots share it; a damaged copy of a chunk is
    passed over for an intact one stored again elsewhere.
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
    state = _State(present=present)
    report.problems += _resized_packs(index.pack_sizes, present)
    if read_data:
        _check_packs(repository, present, report, state, pack_ids)
    state.good_packs = {pack_id for pack_id, size in index.pack_sizes.items() if present.get(pack_id) == size and pack_id not in state.bad_packs}
    state.good_raw = {bytes.fromhex(pack_id) for pack_id in state.good_packs}
    pending: list[tuple[Snapshot, FileEntry]] = []
    for snapshot in snapshots:
        report.snapshots_checked += 1
        for entry in snapshot.files:
            report.files_checked += 1
            if _check_structure(repository, snapshot, entry, state, report) and read_data:
                pending.append((snapshot, entry))
    if read_data:
        progress.begin("verify files", sum(entry.size for snapshot in snapshots for entry in snapshot.files))
        _check_contents(repository, pending, state, report)
    failed = {problem.snapshot_id for problem in report.problems}
    report.verified_snapshots.extend(snapshot.id for snapshot in snapshots if snapshot.id not in failed)
    return report


#: How many versions of one file are reassembled side by side (their frames shared).
LOCKSTEP_FILES = 4
#: Bytes of each version gathered per step of the side-by-side reading. At 4 MiB
#: (restore's batch) the versions of a 1 GiB database held 16 MiB between them
#: and verify peaked at 122 MiB; at 1 MiB it peaked 10 MiB lower, in no more time.
VERIFY_BATCH_BYTES = 1024 * 1024
#: Leaf lists whose chunks' index rows are kept: versions read side by side are
#: at most VERIFY_BATCH_BYTES apart (64 leaves of 4 KiB chunks), and the lists
#: they share are looked up once instead of once per version.
LEAF_ROWS_KEPT = 1024
#: Chunk lists kept after reading them once (about 0.7 KiB each with their ids),
#: for the snapshots after: the leaves of one version of a 1 GiB database. Lists
#: the versions after it changed are read again, a few thousand at most.
LIST_CACHE_ENTRIES = 16384

_Outcome = tuple[str, str, "str | None"]


class _Damage(Exception):
    """A file cannot be reassembled: (kind, message, chunk id) of the problem."""

    def __init__(self, kind: str, message: str, chunk_id: str | None) -> None:
        super().__init__(message)
        self.outcome: _Outcome = (kind, message, chunk_id)


@dataclass(slots=True, kw_only=True)
class _State:
    present: dict[str, int]
    #: pack id -> why none of its chunks can be read (missing, wrong size, unreadable)
    bad_packs: dict[str, str] = field(default_factory=dict)
    #: indexed packs present at their indexed size and not in bad_packs
    good_packs: set[str] = field(default_factory=set)
    #: the same, as the raw ids the index rows hold
    good_raw: set[bytes] = field(default_factory=set)
    #: chunk id -> why no copy is stored, or None (looked up when the first copy is not usable)
    chunk_status: dict[str, str | None] = field(default_factory=dict)
    #: chunk list id -> its bytes, so a list shared by snapshots is read once
    lists: dict[str, bytes] = field(default_factory=dict)
    #: leaf chunk lists whose every chunk is stored in a good pack: versions of a
    #: file share most of their lists, and each is looked at once
    sound_lists: set[str] = field(default_factory=set)
    #: (pack id, frame offset) -> the index rows of that frame (Index.row_ranges)
    frames: dict[tuple[str, int], list[range]] = field(default_factory=dict)
    #: frames whose chunks were all checked
    checked: set[tuple[str, int]] = field(default_factory=set)
    #: leaf list id -> the index rows of its chunks, for the versions read side by side
    leaf_rows: dict[str, list[int]] = field(default_factory=dict)
    #: (pack id, chunk id) -> why that copy of the chunk failed its check
    damaged: dict[tuple[str, str], CorruptData] = field(default_factory=dict)


def _check_packs(repository: Repository, present: dict[str, int], report: VerifyReport, state: _State, pack_ids: Collection[str] | None = None) -> None:
    """Re-hash every indexed pack (or those in ``pack_ids``) and compare its header with the index."""
    index = repository.index()
    bad = state.bad_packs
    # Row numbers, not an entry object per chunk: entries are made a pack (or a
    # frame) at a time, when it is checked.
    by_pack, state.frames = index.row_ranges()
    progress.begin("verify packs", sum(index.pack_sizes.values()))
    for pack_id, size in sorted(index.pack_sizes.items()):
        if pack_ids is not None and pack_id not in pack_ids:
            continue
        report.packs_checked += 1
        if pack_id not in present:
            bad[pack_id] = f"pack {pack_id} is missing"
            continue
        if present[pack_id] != size:
            continue  # reported by _resized_packs; its chunks are read one frame at a time
        try:
            digest, tail = _hash_pack(repository.storage, pack_name(pack_id), size)
        except StorageError as error:
            bad[pack_id] = f"pack {pack_id} cannot be read: {error}"
            continue
        report.bytes_read += size
        progress.advance(size)
        if digest != pack_id:
            # Not fatal for the whole pack: the file check hashes every chunk it
            # needs and names exactly the ones that were hit.
            report.problems.append(Problem(kind="pack-hash", message=f"pack {pack_id} does not hash to its name: its bytes were changed", pack_id=pack_id))
        header_problem = _header_problem(repository, index.raw_entries_in(by_pack.get(pack_id, [])), tail, size, pack_id)
        if header_problem is not None:
            # The header is the redundant copy of the index used to rebuild it; its
            # damage alone leaves every chunk readable through the index, so the
            # file check decides which snapshots (if any) lost bytes.
            report.problems.append(Problem(kind="pack-header", message=header_problem, pack_id=pack_id))
    for pack_id, message in bad.items():
        report.problems.append(Problem(kind="bad-pack", message=message, pack_id=pack_id))


#: A pack is hashed in pieces of this size, read in turn (four reads of a 16 MiB pack).
PACK_READ_PIECE = 4 << 20


def _hash_pack(storage: Storage, name: str, size: int) -> tuple[str, bytes]:
    """(SHA-256 of the pack's ``size`` bytes, its header and trailer), reading one piece at a time.

    A 16 MiB pack read whole, next to the one before it still being freed, was
    the peak of a read-data verify. The pieces are cut from the end, so the last
    one is whole and holds the header of any pack written by dbkeep; a longer
    header (or a trailer claiming one) is read again on its own.
    """
    digest = hashlib.sha256()
    last = b""
    offset, length = 0, size % PACK_READ_PIECE or min(size, PACK_READ_PIECE)
    while offset < size:
        last = storage.get_range(name, offset, length)
        digest.update(last)
        offset, length = offset + length, PACK_READ_PIECE

    def end(span: int) -> bytes:
        """The pack's last ``span`` bytes (at most all of it), from the last piece when it holds them."""
        span = min(size, span)
        return last[len(last) - span :] if span <= len(last) else storage.get_range(name, size - span, span)

    return digest.hexdigest(), end(packformat.header_span(end(packformat.TRAILER.size)))


def _header_problem(repository: Repository, indexed: list[bytes], tail: bytes, size: int, pack_id: str) -> str | None:
    """Why the pack's trailing header cannot rebuild the index entries for it, or None.

    ``tail`` is the end of the pack (``size`` bytes in all), header and trailer included.
    """
    try:
        header, frames_end = repository.split_pack(tail, pack_id)
        frames_end += size - len(tail)
        if packformat.header_covers(header, frames_end, indexed):
            return None
        entries = packformat.parse_header(header, frames_end, pack_id)
    except CorruptData as error:
        return f"{error}; the index can no longer be rebuilt from this pack"
    if not {PackEntry.from_fields(*packformat.ENTRY.unpack(raw)) for raw in indexed}.issubset(set(entries)):
        return f"pack {pack_id} header disagrees with the index; the index can no longer be rebuilt from this pack"
    return None


def _resized_packs(indexed: dict[str, int], present: dict[str, int]) -> list[Problem]:
    """A problem for each pack whose size is not the indexed one.

    Such a pack is not given up whole: a pack cut short inside its trailing
    header still holds every frame, and each frame that is still there is read
    and hash-checked like any other, so only chunks that are really gone make a
    snapshot damaged (and restore, which reads the same frames, agrees).
    """
    return [
        Problem(kind="bad-pack", message=f"pack {pack_id} is {present[pack_id]} bytes, the index says {size}: it was truncated or replaced", pack_id=pack_id)
        for pack_id, size in sorted(indexed.items())
        if pack_id in present and present[pack_id] != size
    ]


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
            if location.entry.frame_offset + location.entry.frame_length <= present[location.pack_id]:
                return None  # its frame is still there; reading it decides
            reasons.append(f"its pack {location.pack_id} was cut short before this chunk")
        elif location.pack_id in bad_packs:
            reasons.append(bad_packs[location.pack_id])
        else:
            return None
    return f"chunk {chunk_id}: " + "; ".join(reasons)


def _cached_status(repository: Repository, chunk_id: str, state: _State) -> str | None:
    """Why no copy of a chunk is stored, or None; the common answer costs one lookup."""
    location = repository.index().locations.get(chunk_id)
    if location is not None and location.pack_id in state.good_packs:
        return None
    status = state.chunk_status
    if chunk_id not in status:
        status[chunk_id] = _chunk_problem(repository, chunk_id, state.present, state.bad_packs)
    return status[chunk_id]


def _leaf_lists(repository: Repository, list_ids: Sequence[str], levels: int, state: _State) -> Iterator[tuple[str, bytes]]:
    """The data chunk ids of a chunk list tree, one leaf list at a time, in order, as (list id, its raw ids joined).

    Raises _Damage on a list that is missing or damaged.
    """
    for list_id in list_ids:
        # A cached list was stored safely and read intact when it was cached.
        data = state.lists.get(list_id)
        if data is None:
            reason = _cached_status(repository, list_id, state)
            if reason is not None:
                raise _Damage("missing-chunk", f"chunk list {reason}", list_id)
            try:
                data = repository.read_chunk(list_id)
            except CorruptData as error:
                raise _Damage("corrupt-chunk", str(error), list_id) from error
            if len(data) % 32:
                raise _Damage("corrupt-chunk", f"chunk list {list_id} has a length that is not a multiple of 32", list_id)
            if len(state.lists) < LIST_CACHE_ENTRIES:
                state.lists[list_id] = data
        if levels == 1:
            yield list_id, data
        else:
            yield from _leaf_lists(repository, hex_ids(data), levels - 1, state)


def _check_structure(repository: Repository, snapshot: Snapshot, entry: FileEntry, state: _State, report: VerifyReport) -> bool:
    """Check that every chunk of the file is indexed in a present pack; True if so."""

    def problem(kind: str, message: str, chunk_id: str | None = None) -> None:
        report.problems.append(Problem(kind=kind, message=message, snapshot_id=snapshot.id, path=entry.path, chunk_id=chunk_id))

    missing: list[tuple[str, str]] = []
    count = 0
    index = repository.index()
    sound = state.sound_lists
    try:
        for list_id, leaf in _leaf_lists(repository, entry.chunk_lists, entry.chunk_list_levels, state):
            raw_ids = split_ids(leaf)
            count += len(raw_ids)
            if list_id in sound:
                continue
            missing_before = len(missing)
            for raw, held in zip(raw_ids, index.held_flags(raw_ids, state.good_raw)):
                if not held:
                    chunk_id = raw.hex()
                    reason = _cached_status(repository, chunk_id, state)
                    if reason is not None:
                        missing.append((reason, chunk_id))
            if len(missing) == missing_before:
                sound.add(list_id)
    except _Damage as damage:
        problem(*damage.outcome)
        return False
    if count != entry.chunk_count:
        problem("chunk-count", f"file lists {count} chunks, the manifest says {entry.chunk_count}")
        return False
    report.chunks_checked += count
    for reason, chunk_id in missing:
        problem("missing-chunk", reason, chunk_id)
    return not missing


def _check_contents(repository: Repository, pending: Sequence[tuple[Snapshot, FileEntry]], state: _State, report: VerifyReport) -> None:
    """Reassemble each distinct file once and compare it with its recorded SHA-256.

    Entries equal in SHA-256, size and chunk lists name the same bytes (a
    snapshot of an unchanged database), so they share one outcome. Versions of
    one path are reassembled side by side, LOCKSTEP_FILES at a time, so the
    frames they share are opened and checked once.
    """
    outcomes: dict[tuple[object, ...], _Outcome | None] = {}
    by_path: dict[str, list[FileEntry]] = {}
    for _, entry in pending:
        key = _content_key(entry)
        if key not in outcomes:
            outcomes[key] = None
            by_path.setdefault(entry.path, []).append(entry)
    done: set[tuple[object, ...]] = set()
    for entries in by_path.values():
        for start in range(0, len(entries), LOCKSTEP_FILES):
            batch = entries[start : start + LOCKSTEP_FILES]
            for entry, outcome in zip(batch, _reassemble(repository, batch, state)):
                outcomes[_content_key(entry)] = outcome
    for snapshot, entry in pending:
        key = _content_key(entry)
        if key in done:
            progress.advance(entry.size)
        done.add(key)
        outcome = outcomes[key]
        if outcome is not None:
            kind, message, chunk_id = outcome
            report.problems.append(Problem(kind=kind, message=message, snapshot_id=snapshot.id, path=entry.path, chunk_id=chunk_id))


def _content_key(entry: FileEntry) -> tuple[object, ...]:
    return (entry.sha256, entry.size, entry.chunk_lists, entry.chunk_list_levels)


def _reassemble(repository: Repository, entries: Sequence[FileEntry], state: _State) -> list[_Outcome | None]:
    """Hash each entry's bytes in order, advancing whichever is furthest behind.

    The whole-file hashes are taken on a second thread (``_HashAside``) while
    this one reads, decompresses and checks the chunks.
    """
    streams = [_pieces(repository, entry, state) for entry in entries]
    digests = [hashlib.sha256() for _ in entries]
    sizes = [0] * len(entries)
    outcomes: list[_Outcome | None] = [None] * len(entries)
    finished: list[int] = []
    waiting = [(0, number) for number in range(len(entries))]
    with _HashAside(digests) as hashing:
        while waiting:
            _, number = heapq.heappop(waiting)
            try:
                piece = next(streams[number])
            except StopIteration:
                finished.append(number)
                continue
            except _Damage as damage:
                outcomes[number] = damage.outcome
                continue
            hashing.add(number, piece)
            sizes[number] += len(piece)
            progress.advance(len(piece))
            heapq.heappush(waiting, (sizes[number], number))
    for number in finished:
        entry = entries[number]
        if sizes[number] != entry.size or digests[number].hexdigest() != entry.sha256:
            outcomes[number] = ("file-hash", f"file bytes do not match the recorded SHA-256 {entry.sha256}", None)
    return outcomes


class _HashAside:
    """Feeds pieces to their digests on one worker thread, each digest's in the order given.

    hashlib lets go of the GIL for pieces of 2 KiB and more, so the hashing runs
    on a second core. Pieces are gathered to HASH_BATCH_BYTES per task; at most
    HASH_TASKS_AHEAD tasks wait, which bounds the pieces (views into frames) held.
    The digests are final once the ``with`` block is left.
    """

    def __init__(self, digests: Sequence[hashlib._Hash]) -> None:
        self._digests = digests
        self._batch: list[tuple[int, bytes | memoryview]] = []
        self._batch_bytes = 0
        self._hashing = InOrder("dbkeep-verify-hash", ahead=HASH_TASKS_AHEAD)

    def __enter__(self) -> _HashAside:
        return self

    def add(self, number: int, piece: bytes | memoryview) -> None:
        self._batch.append((number, piece))
        self._batch_bytes += len(piece)
        if self._batch_bytes >= HASH_BATCH_BYTES:
            self._submit()

    def _submit(self) -> None:
        self._hashing.submit(_update_digests, self._digests, self._batch)
        self._batch, self._batch_bytes = [], 0

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        with self._hashing:
            if kind is None:
                if self._batch:
                    self._submit()
                self._hashing.drain()


def _update_digests(digests: Sequence[hashlib._Hash], batch: list[tuple[int, bytes | memoryview]]) -> None:
    for number, piece in batch:
        digests[number].update(piece)


#: Bytes of pieces hashed per task of ``_HashAside``, and how many tasks may wait.
HASH_BATCH_BYTES = 1024 * 1024
HASH_TASKS_AHEAD = 4


def _pieces(repository: Repository, entry: FileEntry, state: _State) -> Iterator[bytes | memoryview]:
    """The file's bytes in order, from copies that passed their check, a batch at a time.

    The chunks of a leaf list are found by raw id and join the runs to read
    directly (Index.first_rows, Index.add_runs), as restore reads them; only a
    chunk whose first copy failed its check is looked up as a location, to read
    another copy. Raises _Damage naming the first chunk with no intact copy.
    """
    index = repository.index()
    checked = state.checked
    damaged = state.damaged
    runs: list[list] = []
    batch_bytes = 0
    recent_rows = state.leaf_rows
    for list_id, leaf in _leaf_lists(repository, entry.chunk_lists, entry.chunk_list_levels, state):
        rows = recent_rows.get(list_id)
        if rows is None:
            rows = index.first_rows(leaf)
            if len(recent_rows) >= LEAF_ROWS_KEPT:
                recent_rows.clear()
            recent_rows[list_id] = rows
        if -1 in rows:
            missing = leaf[rows.index(-1) * 32 :][:32].hex()
            raise _Damage("missing-chunk", f"chunk {missing} is not in any index", missing)
        # The leaf's runs name the frames it needs: one check per frame, not per chunk.
        leaf_runs: list[list] = []
        leaf_bytes = index.add_runs(rows, leaf_runs)
        for run in leaf_runs:
            if (run[0], run[1].frame_offset) not in checked:
                _check_frame(repository, ChunkLocation(pack_id=run[0], entry=run[1]), state)
        if not damaged:
            for run in leaf_runs:
                join_run(runs, run)
            batch_bytes += leaf_bytes
        else:
            for position, row in enumerate(rows):
                location = index.location_of(row)
                if (location.pack_id, location.entry.chunk_id) in damaged:
                    location = _intact_copy(repository, leaf[position * 32 : position * 32 + 32].hex(), state)
                    batch_bytes += add_location_run(location, runs)
                else:
                    batch_bytes += index.add_runs((row,), runs)
        if batch_bytes >= VERIFY_BATCH_BYTES:
            yield from _read_runs(repository, runs)
            runs, batch_bytes = [], 0
    yield from _read_runs(repository, runs)


def _read_runs(repository: Repository, runs: list[list]) -> Iterator[bytes | memoryview]:
    try:
        yield from repository.read_runs(runs)
    except CorruptData as error:  # changed on disk since its check
        raise _Damage("corrupt-chunk", str(error), None) from error


def _check_frame(repository: Repository, location: ChunkLocation, state: _State) -> None:
    key = (location.pack_id, location.entry.frame_offset)
    state.checked.add(key)
    runs = state.frames.get(key)
    entry = location.entry
    members = repository.index().frame_members(runs) if runs else [(bytes.fromhex(entry.chunk_id), entry.offset_in_frame, entry.length)]
    for chunk_id, error in repository.check_frame(location.pack_id, entry, members).items():
        state.damaged[(location.pack_id, chunk_id)] = error


def _intact_copy(repository: Repository, chunk_id: str, state: _State) -> ChunkLocation:
    """A copy of the chunk that passed its check; raises _Damage worded as ``read_chunk`` words it."""
    failures: list[CorruptData] = []
    for location in repository.index().all_locations(chunk_id):
        if (location.pack_id, location.entry.frame_offset) not in state.checked:
            _check_frame(repository, location, state)
        failure = state.damaged.get((location.pack_id, chunk_id))
        if failure is None:
            return location
        failures.append(failure)
    if len(failures) == 1:
        raise _Damage("corrupt-chunk", str(failures[0]), chunk_id)
    raise _Damage("corrupt-chunk", f"chunk {chunk_id}: no intact copy ({'; '.join(str(failure) for failure in failures)})", chunk_id)
