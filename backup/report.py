"""Health report: the repository's state over time, as one record and one HTML page.

Owns: ``HealthReport`` and its parts; ``build_report``, which reads every manifest
and checks every snapshot (structure, or every byte with ``read_data``) under a
shared lock, then derives storage growth, per-database sizes and row counts,
anomaly warnings (a table losing rows, a table vanishing, a schema change outside
a migration, a failed integrity check) and the newest verified restore point per
database; and ``write_report``, which publishes the page atomically.

The verification ledger and the retention plan are decided elsewhere: they come
in as plain data (or the records that hold it) and are shown as they are; without
them their sections say "not available". Read-only towards the repository; never
prints; knows nothing of Invoke.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import fsio, locking
from .errors import CorruptData, UsageError
from .manifest import Snapshot
from .operations import open_repository
from .provenance import TOOL_VERSION
from .report_html import render_html
from .settings import Settings
from .storage import describe_os_error
from .verification import Problem, verify_repository

#: Warn when a table lost more than this fraction of its rows (as ``backup.compare`` does).
DEFAULT_LOSS_THRESHOLD = 0.10
MIGRATION_TAG = "migration"

VERIFIED = "verified"  # every byte re-read and matched (by the ledger's routine or this report)
CHECKED = "checked"  # structure only: every chunk indexed and its pack present at its size
FAILED = "failed"

HEALTHY, ATTENTION, FAILING = "healthy", "attention", "failing"

__all__ = [
    "Anomaly",
    "Coverage",
    "CoverageRow",
    "DEFAULT_LOSS_THRESHOLD",
    "DatabaseHistory",
    "DatabaseVersion",
    "FailedVerification",
    "HealthReport",
    "RestorePoint",
    "RetentionRow",
    "RetentionSummary",
    "SnapshotPoint",
    "StorageSummary",
    "Verification",
    "build_report",
    "find_anomalies",
    "newest_restore_point",
    "publish_html",
    "render_html",
    "report_json",
    "write_report",
]


# -- records --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    """What is known about one snapshot's soundness, and how deep that knowledge goes.

    ``status`` is ``verified`` (bytes re-read), ``checked`` (structure only) or
    ``failed``; ``level`` is ``read-data`` or ``structure``; ``source`` says who
    found it: ``ledger`` (a routine, at ``at``) or ``report`` (while building this
    report). ``paths`` limits a failure to those files; empty means the whole snapshot.
    """

    status: str
    level: str
    at: datetime | None
    source: str
    detail: str = ""
    paths: tuple[str, ...] = ()

    def status_of(self, path: str) -> str:
        """The status as it concerns the file ``path``."""
        if self.status == FAILED and self.paths and path not in self.paths:
            return VERIFIED if self.level == "read-data" else CHECKED
        return self.status


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotPoint:
    """One snapshot on the timeline, with the repository's growth up to it."""

    id: str
    time: datetime
    tag: str
    note: str
    paths: tuple[str, ...]
    logical_bytes: int  # what restoring it produces
    new_bytes: int  # logical bytes of chunks not yet stored (after dedup)
    stored_bytes: int  # bytes it added to packs on disk (after compression)
    cumulative_logical_bytes: int  # every snapshot so far stored in full
    cumulative_new_bytes: int  # after dedup
    cumulative_stored_bytes: int  # on disk
    verification: Verification


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseVersion:
    """One database (or plain file) as one snapshot holds it."""

    path: str
    snapshot_id: str
    time: datetime
    tag: str
    kind: str
    size: int
    sha256: str
    tables: Mapping[str, int | None] = field(default_factory=dict)
    schema_hash: str | None = None
    integrity: str | None = None
    verification: Verification

    @property
    def status(self) -> str:
        """verified, checked or failed, as it concerns this file."""
        return self.verification.status_of(path=self.path)


@dataclass(frozen=True, slots=True, kw_only=True)
class RestorePoint:
    """The newest snapshot a database can be restored from with confidence."""

    path: str
    snapshot_id: str
    time: datetime
    tag: str
    size: int
    level: str  # read-data or structure
    verified_at: datetime | None
    source: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseHistory:
    path: str
    kind: str
    versions: tuple[DatabaseVersion, ...]  # oldest first
    restore_point: RestorePoint | None

    @property
    def latest(self) -> DatabaseVersion:
        return self.versions[-1]

    @property
    def table_names(self) -> tuple[str, ...]:
        return tuple(sorted({name for version in self.versions for name in version.tables}))

    @property
    def distinct_contents(self) -> int:
        return len({version.sha256 for version in self.versions})


@dataclass(frozen=True, slots=True, kw_only=True)
class Anomaly:
    """Something that changed between two versions of a database and deserves a look."""

    path: str
    kind: str  # rows-lost, table-removed, schema-change, integrity
    snapshot_id: str
    time: datetime
    previous_snapshot_id: str | None
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FailedVerification:
    snapshot_id: str
    time: datetime | None  # None: the manifest itself cannot be read
    tag: str | None
    at: datetime | None
    source: str
    detail: str
    paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageSummary:
    pack_bytes: int  # measured now
    pack_count: int
    repository_bytes: int  # packs, index, manifests and config, measured now
    logical_bytes: int  # every snapshot stored in full
    new_bytes: int  # after dedup
    stored_bytes: int  # what the snapshots added to packs, summed

    @property
    def dedup_ratio(self) -> float | None:
        return self.logical_bytes / self.new_bytes if self.new_bytes else None

    @property
    def compression_ratio(self) -> float | None:
        return self.new_bytes / self.stored_bytes if self.stored_bytes else None

    @property
    def overall_ratio(self) -> float | None:
        return self.logical_bytes / self.pack_bytes if self.pack_bytes else None


@dataclass(frozen=True, slots=True, kw_only=True)
class CoverageRow:
    snapshot_id: str
    time: datetime
    tag: str
    at: datetime | None  # None: never verified
    ok: bool | None
    level: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Coverage:
    """Verification coverage from the ledger: when each snapshot was last verified."""

    rows: tuple[CoverageRow, ...]  # oldest snapshot first

    @property
    def passed(self) -> int:
        return sum(1 for row in self.rows if row.ok is True)

    @property
    def failed(self) -> int:
        return sum(1 for row in self.rows if row.ok is False)

    @property
    def never(self) -> int:
        return sum(1 for row in self.rows if row.at is None)

    @property
    def least_recently_verified(self) -> CoverageRow | None:
        verified = [(row.at, row) for row in self.rows if row.at is not None]
        return min(verified, key=lambda pair: pair[0])[1] if verified else None

    @property
    def oldest_unverified(self) -> CoverageRow | None:
        return next((row for row in self.rows if row.at is None), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionRow:
    snapshot_id: str
    time: datetime | None
    tag: str
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionSummary:
    rows: tuple[RetentionRow, ...]  # oldest first
    policy: str | None = None
    held: str | None = None

    @property
    def kept(self) -> tuple[str, ...]:
        return tuple(row.snapshot_id for row in self.rows if row.keep)

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(row.snapshot_id for row in self.rows if not row.keep)


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReport:
    generated: datetime
    root: str
    repository: str
    tool_version: str
    check_level: str  # what this report itself checked: structure or read-data
    loss_threshold: float
    snapshots: tuple[SnapshotPoint, ...]  # oldest first
    damaged: Mapping[str, str]  # snapshot id -> why its manifest cannot be read
    databases: tuple[DatabaseHistory, ...]
    anomalies: tuple[Anomaly, ...]
    failures: tuple[FailedVerification, ...]
    repository_problems: tuple[str, ...]  # found by the check, not tied to a snapshot
    storage: StorageSummary
    coverage: Coverage | None = None  # None: no verification ledger was given
    retention: RetentionSummary | None = None  # None: no retention plan was given

    @property
    def restore_points(self) -> dict[str, RestorePoint | None]:
        return {database.path: database.restore_point for database in self.databases}

    @property
    def status(self) -> str:
        """``failing`` when a check failed or a database has no restore point; ``attention``
        for anomalies or an empty repository; ``healthy`` otherwise."""
        if self.failures or self.repository_problems or any(point is None for point in self.restore_points.values()):
            return FAILING
        if self.anomalies or not self.snapshots:
            return ATTENTION
        return HEALTHY


# -- building -------------------------------------------------------------------------


def build_report(
    settings: Settings,
    *,
    now: datetime,
    ledger: Any = None,
    retention_plan: Any = None,
    retention_policy: str | None = None,
    read_data: bool = False,
    loss_threshold: float = DEFAULT_LOSS_THRESHOLD,
) -> HealthReport:
    """The repository's health at ``now``.

    Reads every manifest and checks every readable snapshot under a shared lock
    (so no prune runs meanwhile): structure always, every byte with ``read_data``.
    A damaged manifest is listed as a failed verification, never hidden.

    ``ledger``: the verification ledger, either a record with a ``snapshots``
    mapping or that mapping itself: snapshot id -> entry with ``at`` (datetime or
    ISO text), ``ok`` (bool), ``level`` and ``detail`` (attributes or keys).
    ``retention_plan``: a record with ``decisions`` (and optionally ``held``), or
    the decisions themselves: each with ``snapshot_id`` and ``reasons`` (kept
    when it has reasons, or per an explicit ``keep``). ``retention_policy``: the
    policy in one line. Raises RepositoryNotFound, RepositoryLocked, StorageError;
    ValueError (a caller's bug) for a naive ``now``, a threshold outside 0..1, or
    a malformed ledger or plan.
    """
    if now.tzinfo is None:
        raise ValueError("the report needs a time-zone-aware 'now'")
    if not 0 <= loss_threshold <= 1:
        raise ValueError(f"loss threshold {loss_threshold!r} is not allowed: expected a fraction from 0 to 1")
    ledger_entries = _ledger_entries(ledger)
    repository = open_repository(settings)
    with locking.acquire(repository.storage, exclusive=False, purpose="report", wait=settings.lock_wait):
        snapshots: list[Snapshot] = []
        damaged: dict[str, str] = {}
        for snapshot_id in repository.snapshot_ids():
            try:
                snapshots.append(repository.load_snapshot(snapshot_id))
            except CorruptData as error:
                damaged[snapshot_id] = str(error)
        check = verify_repository(repository, snapshot_ids=[snapshot.id for snapshot in snapshots], read_data=read_data)
        storage_sizes = _measure(repository.storage)
    snapshots.sort(key=lambda snapshot: (snapshot.time, snapshot.id))
    level = "read-data" if read_data else "structure"
    problems = _problems_by_snapshot(check.problems)
    verifications = {
        snapshot.id: _verification(problems.get(snapshot.id, []), ledger_entries.get(snapshot.id) if ledger_entries else None, level=level, now=now)
        for snapshot in snapshots
    }
    points = _points(snapshots, verifications)
    databases = tuple(_history(path, versions) for path, versions in sorted(_versions(snapshots, verifications).items()))
    return HealthReport(
        generated=now,
        root=str(settings.root),
        repository=str(settings.repository),
        tool_version=TOOL_VERSION,
        check_level=level,
        loss_threshold=loss_threshold,
        snapshots=points,
        damaged=damaged,
        databases=databases,
        anomalies=tuple(anomaly for database in databases for anomaly in find_anomalies(database, loss_threshold=loss_threshold)),
        failures=_failures(points, damaged, now=now),
        repository_problems=tuple(problem.message for problem in check.problems if problem.snapshot_id is None),
        storage=StorageSummary(
            pack_bytes=storage_sizes[0],
            pack_count=storage_sizes[1],
            repository_bytes=storage_sizes[2],
            logical_bytes=sum(point.logical_bytes for point in points),
            new_bytes=sum(point.new_bytes for point in points),
            stored_bytes=sum(point.stored_bytes for point in points),
        ),
        coverage=_coverage(snapshots, ledger_entries) if ledger_entries is not None else None,
        retention=_retention(retention_plan, snapshots, retention_policy) if retention_plan is not None else None,
    )


def _measure(storage) -> tuple[int, int, int]:
    """(pack bytes, pack count, bytes of every repository file) as stored right now."""
    packs = storage.list("packs")
    total = sum(info.size for info in packs)
    for folder in ("index", "snapshots"):
        total += sum(info.size for info in storage.list(folder))
    config = storage.stat("config.json")
    return sum(info.size for info in packs), len(packs), total + (config.size if config else 0)


def _problems_by_snapshot(problems: Iterable[Problem]) -> dict[str, list[Problem]]:
    grouped: dict[str, list[Problem]] = {}
    for problem in problems:
        if problem.snapshot_id is not None:
            grouped.setdefault(problem.snapshot_id, []).append(problem)
    return grouped


@dataclass(frozen=True, slots=True, kw_only=True)
class _LedgerEntry:
    at: datetime
    ok: bool
    level: str
    detail: str


def _get(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def _moment(value: Any, what: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{what} has time {value[:40]!r}, which is no ISO 8601 time") from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{what} has no time-zone-aware time")
    return value


def _ledger_entries(ledger: Any) -> dict[str, _LedgerEntry] | None:
    """The ledger's snapshot entries as records; None when no ledger was given."""
    if ledger is None:
        return None
    entries = ledger if isinstance(ledger, Mapping) and "snapshots" not in ledger else _get(ledger, "snapshots")
    if not isinstance(entries, Mapping):
        raise ValueError("the verification ledger must map snapshot ids to entries (or hold such a mapping as 'snapshots')")
    parsed: dict[str, _LedgerEntry] = {}
    for snapshot_id, entry in entries.items():
        ok = _get(entry, "ok")
        if not isinstance(ok, bool):
            raise ValueError(f"verification ledger entry for {str(snapshot_id)[:40]} has no boolean 'ok'")
        parsed[str(snapshot_id)] = _LedgerEntry(
            at=_moment(_get(entry, "at"), f"verification ledger entry for {str(snapshot_id)[:40]}"),
            ok=ok,
            level=str(_get(entry, "level", "read-data")),
            detail=str(_get(entry, "detail", "") or ""),
        )
    return parsed


def _verification(problems: Sequence[Problem], entry: _LedgerEntry | None, *, level: str, now: datetime) -> Verification:
    """Combine this report's own check with the ledger: a failure anywhere wins, then depth."""
    if problems:
        paths = () if any(problem.path is None for problem in problems) else tuple(sorted({problem.path for problem in problems if problem.path}))
        detail = problems[0].message + (f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else "")
        return Verification(status=FAILED, level=level, at=now, source="report", detail=detail, paths=paths)
    if level == "read-data":
        return Verification(status=VERIFIED, level=level, at=now, source="report")
    if entry is not None:
        if not entry.ok:
            return Verification(status=FAILED, level=entry.level, at=entry.at, source="ledger", detail=entry.detail or "verification failed")
        return Verification(status=VERIFIED if entry.level == "read-data" else CHECKED, level=entry.level, at=entry.at, source="ledger")
    return Verification(status=CHECKED, level=level, at=now, source="report")


def _points(snapshots: Sequence[Snapshot], verifications: Mapping[str, Verification]) -> tuple[SnapshotPoint, ...]:
    points: list[SnapshotPoint] = []
    logical = new = stored = 0
    for snapshot in snapshots:
        stats = snapshot.stats
        logical += stats.logical_bytes
        new += stats.new_bytes
        stored += stats.stored_bytes
        points.append(
            SnapshotPoint(
                id=snapshot.id,
                time=snapshot.time,
                tag=snapshot.tag,
                note=snapshot.note,
                paths=tuple(entry.path for entry in snapshot.files),
                logical_bytes=stats.logical_bytes,
                new_bytes=stats.new_bytes,
                stored_bytes=stats.stored_bytes,
                cumulative_logical_bytes=logical,
                cumulative_new_bytes=new,
                cumulative_stored_bytes=stored,
                verification=verifications[snapshot.id],
            )
        )
    return tuple(points)


def _versions(snapshots: Sequence[Snapshot], verifications: Mapping[str, Verification]) -> dict[str, list[DatabaseVersion]]:
    versions: dict[str, list[DatabaseVersion]] = {}
    for snapshot in snapshots:
        for entry in snapshot.files:
            info = entry.sqlite
            versions.setdefault(entry.path, []).append(
                DatabaseVersion(
                    path=entry.path,
                    snapshot_id=snapshot.id,
                    time=snapshot.time,
                    tag=snapshot.tag,
                    kind=entry.kind,
                    size=entry.size,
                    sha256=entry.sha256,
                    tables=dict(info.tables) if info else {},
                    schema_hash=info.schema_hash if info else None,
                    integrity=info.integrity if info else None,
                    verification=verifications[snapshot.id],
                )
            )
    return versions


def _history(path: str, versions: Sequence[DatabaseVersion]) -> DatabaseHistory:
    return DatabaseHistory(path=path, kind=versions[-1].kind, versions=tuple(versions), restore_point=newest_restore_point(path, versions))


def newest_restore_point(path: str, versions: Sequence[DatabaseVersion]) -> RestorePoint | None:
    """The newest version whose bytes were re-read and matched; failing that, the newest
    whose structure checked out. A version whose recorded integrity check failed never counts."""
    usable = [version for version in versions if version.integrity in (None, "ok")]
    for wanted in (VERIFIED, CHECKED):
        for version in reversed(usable):
            if version.status == wanted:
                return RestorePoint(
                    path=path,
                    snapshot_id=version.snapshot_id,
                    time=version.time,
                    tag=version.tag,
                    size=version.size,
                    level="read-data" if wanted == VERIFIED else "structure",
                    verified_at=version.verification.at,
                    source=version.verification.source,
                )
    return None


def find_anomalies(database: DatabaseHistory, *, loss_threshold: float = DEFAULT_LOSS_THRESHOLD) -> list[Anomaly]:
    """Warnings between consecutive versions of one database, oldest first.

    A table that lost more than ``loss_threshold`` of its rows or vanished; a
    schema change where neither side is a migration snapshot (``backup.guard``
    snapshots just before a migration, so the change shows in the next one); a
    failed integrity check.
    """
    found: list[Anomaly] = []
    previous: DatabaseVersion | None = None
    for version in database.versions:

        def warn(kind: str, message: str, version: DatabaseVersion = version, previous: DatabaseVersion | None = previous) -> None:
            found.append(
                Anomaly(
                    path=database.path,
                    kind=kind,
                    snapshot_id=version.snapshot_id,
                    time=version.time,
                    previous_snapshot_id=previous.snapshot_id if previous else None,
                    message=f"{database.path}: {message}",
                )
            )

        if version.integrity not in (None, "ok"):
            warn("integrity", f"fails its integrity check in snapshot {version.snapshot_id}: {version.integrity}")
        if previous is not None and previous.kind == "sqlite" and version.kind == "sqlite":
            for name in sorted(previous.tables):
                before, after = previous.tables[name], version.tables.get(name)
                if not before:
                    continue
                if name not in version.tables:
                    warn("table-removed", f"table {name} ({before:,} rows) no longer exists in snapshot {version.snapshot_id}")
                elif after is not None and (before - after) / before > loss_threshold:
                    lost = before - after
                    warn(
                        "rows-lost",
                        f"table {name} lost {lost:,} of {before:,} rows ({lost / before:.0%}, more than {loss_threshold:.0%}) "
                        f"between snapshots {previous.snapshot_id} and {version.snapshot_id}",
                    )
            if previous.schema_hash != version.schema_hash and MIGRATION_TAG not in (previous.tag, version.tag):
                warn(
                    "schema-change",
                    f"schema changed between snapshots {previous.snapshot_id} ({previous.tag}) and {version.snapshot_id} "
                    f"({version.tag}) with no snapshot tagged {MIGRATION_TAG} before it",
                )
        previous = version
    return found


def _failures(points: Sequence[SnapshotPoint], damaged: Mapping[str, str], *, now: datetime) -> tuple[FailedVerification, ...]:
    failures = [
        FailedVerification(
            snapshot_id=point.id,
            time=point.time,
            tag=point.tag,
            at=point.verification.at,
            source=point.verification.source,
            detail=point.verification.detail,
            paths=point.verification.paths,
        )
        for point in points
        if point.verification.status == FAILED
    ]
    failures += [
        FailedVerification(snapshot_id=snapshot_id, time=None, tag=None, at=now, source="report", detail=reason) for snapshot_id, reason in sorted(damaged.items())
    ]
    return tuple(failures)


def _coverage(snapshots: Sequence[Snapshot], entries: Mapping[str, _LedgerEntry]) -> Coverage:
    rows = []
    for snapshot in snapshots:
        entry = entries.get(snapshot.id)
        rows.append(
            CoverageRow(
                snapshot_id=snapshot.id,
                time=snapshot.time,
                tag=snapshot.tag,
                at=entry.at if entry else None,
                ok=entry.ok if entry else None,
                level=entry.level if entry else "",
                detail=entry.detail if entry else "",
            )
        )
    return Coverage(rows=tuple(rows))


def _retention(plan: Any, snapshots: Sequence[Snapshot], policy: str | None) -> RetentionSummary:
    decisions = _get(plan, "decisions", plan) if not isinstance(plan, (list, tuple)) else plan
    if isinstance(decisions, (str, bytes)) or not isinstance(decisions, Iterable):
        raise ValueError("the retention plan must be a sequence of decisions (or hold one as 'decisions')")
    known = {snapshot.id: snapshot for snapshot in snapshots}
    rows = []
    for decision in decisions:
        snapshot_id = _get(decision, "snapshot_id")
        reasons = _get(decision, "reasons", ())
        if not isinstance(snapshot_id, str) or isinstance(reasons, str) or not isinstance(reasons, Iterable):
            raise ValueError("each retention decision needs a 'snapshot_id' and a list of 'reasons'")
        reasons = tuple(str(reason) for reason in reasons)
        keep = _get(decision, "keep", bool(reasons))
        snapshot = known.get(snapshot_id)
        time = _get(decision, "time") or (snapshot.time if snapshot else None)
        rows.append(
            RetentionRow(
                snapshot_id=snapshot_id,
                time=_moment(time, f"retention decision for {snapshot_id[:40]}") if time is not None else None,
                tag=str(_get(decision, "tag") or (snapshot.tag if snapshot else "")),
                keep=bool(keep),
                reasons=reasons,
            )
        )
    rows.sort(key=lambda row: (row.time or datetime.min.replace(tzinfo=timezone.utc), row.snapshot_id))
    held = _get(plan, "held") if not isinstance(plan, (list, tuple)) else None
    return RetentionSummary(rows=tuple(rows), policy=policy, held=str(held) if held else None)


# -- plain data and writing -----------------------------------------------------------


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__") and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def report_json(report: HealthReport) -> dict[str, Any]:
    """The report as plain JSON-ready data, with its overall ``status`` and restore points."""
    body = _plain(report)
    body["status"] = report.status
    body["restore_points"] = {path: _plain(point) for path, point in report.restore_points.items()}
    return body


def write_report(
    settings: Settings,
    out: Path,
    *,
    now: datetime,
    ledger: Any = None,
    retention_plan: Any = None,
    retention_policy: str | None = None,
    read_data: bool = False,
    loss_threshold: float = DEFAULT_LOSS_THRESHOLD,
) -> Path:
    """Build the report and write it to ``out`` as one HTML file; returns the absolute path.

    Atomic: a temp file beside ``out``, fsync, rename; on any failure the previous
    file (if any) is untouched and no temp file stays behind. Missing parent
    folders are created. Raises what ``build_report`` raises, StorageError (or
    NoSpace) naming ``out`` when it cannot be written.
    """
    report = build_report(
        settings,
        now=now,
        ledger=ledger,
        retention_plan=retention_plan,
        retention_policy=retention_policy,
        read_data=read_data,
        loss_threshold=loss_threshold,
    )
    return publish_html(render_html(report), out)


def publish_html(page: str, out: Path) -> Path:
    """Write ``page`` to ``out`` atomically (temp file, fsync, rename); returns the path."""
    target = Path(out).absolute()
    if target.is_dir():
        raise UsageError(f"report destination {target} is a directory; name a file such as {target / 'report.html'}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fsio.write_file_atomically(target, [page.encode("utf-8")])
    except OSError as error:
        raise describe_os_error("write the report", target, error) from error
    return target

