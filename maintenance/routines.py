"""The daily, weekly and monthly routines.

Owns: what each routine does and in which order, which share of the repository
the weekly verification re-reads (the rotation), the restore drill, and when an
alert is raised. Composes ``backup``'s operations; never prints, never touches
repository files except through them and the ledger.

- daily:   create (tag ``daily``) -> read-data verify of the new snapshot ->
           off-site copy (when ``offsite`` is set) -> retention + prune ->
           report (freshness alert)
- weekly:  rotating read-data verification (every retained snapshot and pack
           re-read at least once every ``verify_weeks`` weeks) -> storage report
           -> lock report -> freshness
- monthly: restore drill (latest and oldest kept snapshot into a temporary
           directory, integrity_check, row counts and schema hash against the
           manifest) -> retention review -> old exports removed -> freshness
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from backup import locking
from backup.errors import BackupError, StorageError
from backup.ledger import Ledger, Verification, load_ledger, update_ledger
from backup.lookup import snapshot_time
from backup.manifest import Snapshot
from backup.report import write_report
from backup.operations import clean_old_backups, create_backup, list_backups, open_repository, restore_backup, verify_selected
from backup.retention import PolicyRefused, apply_policy, oldest_restorable
from backup.sources import check_sqlite_copy
from backup.transfer import copy_snapshots
from backup.verification import VerifyReport

from .config import RoutineConfig
from .report import RoutineReport, StepRunner

MIN_TIME = datetime.min.replace(tzinfo=timezone.utc)


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


# -- rotation and coverage (pure) -------------------------------------------------------


def last_passed(entry: Verification | None) -> datetime | None:
    return entry.at if entry is not None and entry.ok else None


def choose_rotation(items: Sequence[str], ledger_entries: Mapping[str, Verification], *, now: datetime, weeks: int) -> list[str]:
    """Which items this week's verification re-reads.

    Everything never verified (or whose last verification failed), everything
    that would be overdue by next week, and at least a ``1/weeks`` share, least
    recently verified first. Run weekly, every item is re-read at least once in
    every window of ``weeks`` weeks.
    """
    ordered = sorted(items, key=lambda item: (last_passed(ledger_entries.get(item)) or MIN_TIME, item))
    horizon = now - timedelta(weeks=weeks - 1)
    due = [item for item in ordered if (last_passed(ledger_entries.get(item)) or MIN_TIME) <= horizon]
    share = math.ceil(len(ordered) / weeks) if ordered else 0
    return due if len(due) >= share else ordered[:share]


def coverage(snapshot_ids: Sequence[str], ledger: Ledger, *, now: datetime, weeks: int) -> tuple[float, str | None, datetime | None]:
    """(percent of snapshots verified within ``weeks``, least recently verified id, when)."""
    if not snapshot_ids:
        return 100.0, None, None
    window = now - timedelta(weeks=weeks)
    fresh = [snapshot_id for snapshot_id in snapshot_ids if (last_passed(ledger.snapshots.get(snapshot_id)) or MIN_TIME) > window]
    oldest = min(snapshot_ids, key=lambda snapshot_id: (last_passed(ledger.snapshots.get(snapshot_id)) or MIN_TIME, snapshot_id))
    return round(100.0 * len(fresh) / len(snapshot_ids), 1), oldest, last_passed(ledger.snapshots.get(oldest))


def _failures(report: VerifyReport, snapshot_ids: Sequence[str], pack_ids: Sequence[str]) -> tuple[dict[str, str | None], dict[str, str | None]]:
    snapshots: dict[str, str | None] = {snapshot_id: None for snapshot_id in snapshot_ids}
    packs: dict[str, str | None] = {pack_id: None for pack_id in pack_ids}
    for problem in report.problems:
        if problem.snapshot_id in snapshots and snapshots[problem.snapshot_id] is None:
            snapshots[problem.snapshot_id] = f"{problem.kind}: {problem.message}"
        if problem.pack_id in packs and packs[problem.pack_id] is None:
            packs[problem.pack_id] = f"{problem.kind}: {problem.message}"
    if report.problems and not any(snapshots.values()):
        # A problem not tied to one snapshot (a damaged index) fails them all.
        first = report.problems[0]
        snapshots = {snapshot_id: f"{first.kind}: {first.message}" for snapshot_id in snapshot_ids}
    return snapshots, packs


def _verify_and_record(config: RoutineConfig, snapshot_ids: Sequence[str], pack_ids: Sequence[str] | None, *, now: datetime) -> tuple[VerifyReport, tuple[str, ...], Ledger]:
    selected = verify_selected(config.settings, snapshot_ids=snapshot_ids, pack_ids=pack_ids, read_data=True)
    snapshots, packs = _failures(selected.report, snapshot_ids, selected.pack_ids)
    ledger = record(config, lambda ledger: ledger.recording(at=now, snapshots=snapshots, packs=packs))
    return selected.report, selected.pack_ids, ledger


def record(config: RoutineConfig, change: Callable[[Ledger], Ledger]) -> Ledger:
    """Update the ledger under a shared lock, so no writer sweeps its temp file meanwhile."""
    storage = open_repository(config.settings).storage
    with locking.acquire(storage, exclusive=False, purpose="record verification", wait=config.settings.lock_wait):
        return update_ledger(storage, change)


def _problem_summary(report: VerifyReport) -> str:
    first = report.problems[0]
    where = " ".join(part for part in (first.snapshot_id and f"snapshot {first.snapshot_id}", first.path and f"file {first.path}") if part)
    more = f" (+{len(report.problems) - 1} more)" if len(report.problems) > 1 else ""
    return f"{len(report.problems)} problem(s): {where + ': ' if where else ''}{first.message}{more}"


# -- freshness ---------------------------------------------------------------------------


def freshness(config: RoutineConfig, *, now: datetime) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    """The newest verified snapshot and its age; an alert when it is older than allowed."""
    repository = open_repository(config.settings)
    ids = repository.snapshot_ids()
    ledger = load_ledger(repository.storage)
    verified = [snapshot_id for snapshot_id in ids if last_passed(ledger.snapshots.get(snapshot_id))]
    limit = config.maintenance.alert_after
    if not verified:
        alert = "no snapshot in the repository has passed a read-data verification; run maintenance.daily or maintenance.weekly"
        return "no verified snapshot", {"snapshots": len(ids), "newest_verified": None}, (alert,)
    newest = verified[-1]
    age = now - snapshot_time(newest)
    hours = round(age.total_seconds() / 3600, 1)
    details = {"snapshots": len(ids), "newest_verified": newest, "age_hours": hours, "limit_hours": limit.total_seconds() / 3600}
    summary = f"newest verified snapshot {newest} is {hours} h old"
    if age > limit:
        alert = f"the newest verified snapshot {newest} is {hours} hours old, more than the {limit.total_seconds() / 3600:g} allowed; check that backups run and verify"
        return summary, details, (alert,)
    return summary, details, ()


# -- daily -------------------------------------------------------------------------------


def run_daily(config: RoutineConfig, *, now: datetime | None = None) -> RoutineReport:
    """Create a tagged snapshot, verify every byte of it, apply retention and prune."""
    moment = now or _utc_now()
    runner = StepRunner()
    state: dict[str, Any] = {}

    def create() -> tuple[str, dict[str, Any]]:
        report = create_backup(config.settings, tag=config.maintenance.daily_tag, now=now)
        state["snapshot"] = report.snapshot
        stats = report.stats
        summary = (
            f"snapshot {report.snapshot.id}: {len(report.snapshot.files)} file(s), {human_bytes(stats.logical_bytes)} read, "
            f"{human_bytes(stats.new_bytes)} new, {stats.reused_chunks} chunk(s) reused"
        )
        details = {
            "snapshot": report.snapshot.id,
            "files": [entry.path for entry in report.snapshot.files],
            "logical_bytes": stats.logical_bytes,
            "new_bytes": stats.new_bytes,
            "stored_bytes": stats.stored_bytes,
            "reused_chunks": stats.reused_chunks,
            "warnings": list(report.warnings),
        }
        return summary, details

    def verify() -> tuple[str, dict[str, Any], bool]:
        snapshot: Snapshot = state["snapshot"]
        report, packs, _ledger = _verify_and_record(config, [snapshot.id], None, now=moment)
        details = {"snapshot": snapshot.id, "packs": len(packs), "bytes_read": report.bytes_read, "problems": [problem.message for problem in report.problems]}
        if not report.ok:
            return f"snapshot {snapshot.id} FAILED: {_problem_summary(report)}", details, False
        return f"snapshot {snapshot.id}: {report.files_checked} file(s), {report.chunks_checked} chunk(s), {len(packs)} pack(s) re-read", details, True

    def retention() -> tuple[str, dict[str, Any]]:
        report = clean_old_backups(config.settings, policy=config.retention, prune=config.maintenance.prune_options, now=moment)
        details = {
            "policy": config.retention.describe(),
            "kept": list(report.kept),
            "removed": list(report.removed),
            "reasons": {decision.snapshot_id: list(decision.reasons) for decision in report.decisions},
            "packs_removed": report.packs_removed,
            "packs_repacked": report.packs_repacked,
            "bytes_freed": report.bytes_freed,
            "warnings": list(report.warnings),
        }
        summary = (
            f"kept {len(report.kept)}, removed {len(report.removed)} snapshot(s); {report.packs_removed} pack(s) deleted, "
            f"{report.packs_repacked} repacked, {human_bytes(report.bytes_freed)} freed"
        )
        return (f"{summary}; {report.held}" if report.held else summary), details

    def offsite() -> tuple[str, dict[str, Any]]:
        snapshot: Snapshot = state["snapshot"]
        target = config.offsite_location
        assert target is not None
        report = copy_snapshots(config.settings, [snapshot.id], target, encrypt_target=config.maintenance.offsite_encrypt, catch_up=True, now=moment)
        copied = [item for item in report.snapshots if not item.already_present]
        details = {
            "target": report.target,
            "copied": [item.snapshot_id for item in copied],
            "chunks_sent": sum(item.chunks_sent for item in copied),
            "bytes_sent": sum(item.bytes_sent for item in copied),
            "warnings": list(report.warnings),
        }
        summary = (
            f"copied {len(copied)} snapshot(s) to {report.target}, verified there: "
            f"{details['chunks_sent']} chunk(s), {human_bytes(details['bytes_sent'])} sent"
        )
        return (f"{summary}; {'; '.join(report.warnings)}" if report.warnings else summary), details

    created = runner.run("create", create)
    verified = False
    if created:
        verified = runner.run("verify", verify)
    else:
        runner.skip("verify", "no new snapshot to verify")
    if config.offsite_location is not None:
        if created and verified:
            runner.run("off-site copy", offsite)
        else:
            runner.skip("off-site copy", "skipped: only a new snapshot that passed verification is copied off-site")
    if created and verified:
        runner.run("retention + prune", retention)
    else:
        runner.skip("retention + prune", "skipped: nothing is removed while the newest backup is missing or failed verification")
    alerts = _report_step(runner, config, moment)
    return RoutineReport(routine="daily", started=moment, steps=tuple(runner.steps), alerts=alerts)


def _report_step(runner: StepRunner, config: RoutineConfig, moment: datetime) -> tuple[str, ...]:
    found: list[tuple[str, ...]] = [()]

    def report() -> tuple[str, dict[str, Any]]:
        summary, details, alerts = freshness(config, now=moment)
        found[0] = alerts
        return summary, details

    runner.run("freshness", report)
    return found[0]


# -- weekly ------------------------------------------------------------------------------


def health_report_step(config: RoutineConfig, routine: str, moment: datetime) -> Callable[[], tuple[str, dict[str, Any], bool]]:
    """A step writing the HTML health page (ledger and retention plan included) beside the JSON report."""

    def write() -> tuple[str, dict[str, Any], bool]:
        ledger = load_ledger(open_repository(config.settings).storage)
        try:
            plan = apply_policy(list_backups(config.settings).snapshots, config.retention, now=moment, verification=ledger.outcomes())
        except PolicyRefused:
            plan = None
        path = write_report(
            config.settings,
            config.reports_directory / f"{routine}-report.html",
            now=moment,
            ledger=ledger,
            retention_plan=plan,
            retention_policy=config.retention.describe(),
        )
        return f"wrote {path}", {"path": str(path)}, True

    return write


def run_weekly(config: RoutineConfig, *, now: datetime | None = None) -> RoutineReport:
    """Re-verify a rotating share with read-data, then report storage and locks."""
    moment = now or _utc_now()
    weeks = config.maintenance.verify_weeks
    runner = StepRunner()

    def verify() -> tuple[str, dict[str, Any], bool]:
        repository = open_repository(config.settings)
        snapshot_ids = repository.snapshot_ids()
        pack_ids = sorted(repository.index(reload=True).pack_sizes)
        ledger = load_ledger(repository.storage)
        due_snapshots = choose_rotation(snapshot_ids, ledger.snapshots, now=moment, weeks=weeks)
        due_packs = choose_rotation(pack_ids, ledger.packs, now=moment, weeks=weeks)
        report, checked_packs, ledger = _verify_and_record(config, due_snapshots, due_packs, now=moment)
        ledger = record(config, lambda current: current.keeping_only(snapshot_ids=snapshot_ids, pack_ids=pack_ids))
        percent, oldest, oldest_when = coverage(snapshot_ids, ledger, now=moment, weeks=weeks)
        details = {
            "verified_snapshots": due_snapshots,
            "verified_packs": len(checked_packs),
            "bytes_read": report.bytes_read,
            "coverage_percent": percent,
            "oldest_unverified": oldest,
            "oldest_verified_at": oldest_when,
            "problems": [problem.message for problem in report.problems],
        }
        when = oldest_when.strftime("%Y-%m-%d %H:%M UTC") if oldest_when else "never"
        summary = (
            f"re-read {len(due_snapshots)} of {len(snapshot_ids)} snapshot(s) and {len(checked_packs)} of {len(pack_ids)} pack(s); "
            f"coverage {percent}% within {weeks} week(s); least recently verified {oldest or '-'} ({when})"
        )
        if not report.ok:
            return f"FAILED: {_problem_summary(report)}; {summary}", details, False
        return summary, details, True

    def storage() -> tuple[str, dict[str, Any]]:
        repository = open_repository(config.settings)
        packs = repository.storage.list("packs")
        index_files = repository.storage.list("index")
        listing = list_backups(config.settings)
        pack_bytes = sum(info.size for info in packs)
        logical = sum(snapshot.logical_bytes for snapshot in listing.snapshots)
        disk = shutil.disk_usage(config.settings.repository) if isinstance(config.settings.repository, Path) else None
        details = {
            "snapshots": len(listing.snapshots),
            "damaged_manifests": dict(listing.damaged),
            "packs": len(packs),
            "pack_bytes": pack_bytes,
            "index_files": len(index_files),
            "logical_bytes": logical,
            "dedup_ratio": round(logical / pack_bytes, 2) if pack_bytes else None,
            "disk_free_bytes": disk.free if disk else None,
        }
        ratio = f"{logical / pack_bytes:.1f}x" if pack_bytes else "-"
        summary = (
            f"{len(listing.snapshots)} snapshot(s) of {human_bytes(logical)} in {len(packs)} pack(s) of {human_bytes(pack_bytes)} "
            f"(dedup {ratio}); {len(index_files)} index file(s); {human_bytes(disk.free)} free"
        )
        if listing.damaged:
            return f"{len(listing.damaged)} damaged manifest(s): {', '.join(listing.damaged)}; {summary}", details, False  # type: ignore[return-value]
        return summary, details

    def locks() -> tuple[str, dict[str, Any], bool]:
        repository = open_repository(config.settings)
        found = []
        stuck = []
        for name, record in locking.list_locks(repository.storage):
            if record is None:
                found.append({"name": name, "state": "unreadable (removed by the next writer)"})
                continue
            heartbeat = datetime.strptime(record.heartbeat, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            if record.owner_is_dead():
                state = "stale: its process is gone (removed by the next writer)"
            elif moment - heartbeat > config.maintenance.stale_lock_after:
                state = f"suspect: no heartbeat since {record.heartbeat}"
                stuck.append(record.describe())
            else:
                state = "held"
            found.append({"name": name, "state": state, "holder": record.describe()})
        if stuck:
            return f"{len(stuck)} lock(s) without a recent heartbeat: {'; '.join(stuck)}; if that process is gone, run backup.unlock", {"locks": found}, False
        return (f"{len(found)} lock record(s): " + "; ".join(item["state"] for item in found)) if found else "no locks", {"locks": found}, True

    runner.run("verify (rotation)", verify)
    runner.run("storage", storage)
    runner.run("locks", locks)
    runner.run("health report", health_report_step(config, "weekly", moment))
    alerts = _report_step(runner, config, moment)
    return RoutineReport(routine="weekly", started=moment, steps=tuple(runner.steps), alerts=alerts)


# -- monthly -----------------------------------------------------------------------------


def _drill_one(config: RoutineConfig, snapshot: Snapshot, target: Path) -> list[dict[str, Any]]:
    restore_backup(config.settings, snapshot.id, target=target, force=True)
    rows = []
    for entry in snapshot.files:
        path = target / entry.path
        if entry.sqlite is not None:
            problems = check_sqlite_copy(path, entry.sqlite)
            rows.append({
                "snapshot": snapshot.id,
                "path": entry.path,
                "integrity": "ok" if not any("check failed" in problem or "does not open" in problem for problem in problems) else "FAILED",
                "row_counts": "differ" if any("row counts" in problem for problem in problems) else "match",
                "schema_hash": "differs" if any("schema" in problem for problem in problems) else "match",
                "problems": problems,
            })
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            problems = [] if digest == entry.sha256 else ["SHA-256 differs from the manifest"]
            rows.append({"snapshot": snapshot.id, "path": entry.path, "integrity": "ok" if not problems else "FAILED", "row_counts": "n/a", "schema_hash": "n/a", "problems": problems})
    return rows


def drill_targets(snapshots: Sequence[Snapshot], protected_tags: Sequence[str]) -> list[Snapshot]:
    """The latest and the oldest kept snapshot (regular ones when there are any)."""
    regular = [snapshot for snapshot in snapshots if snapshot.tag not in protected_tags] or list(snapshots)
    if not regular:
        return []
    return [regular[-1]] if len(regular) == 1 else [regular[-1], regular[0]]


def run_monthly(config: RoutineConfig, *, now: datetime | None = None, scratch: Path | None = None) -> RoutineReport:
    """Restore drill, retention review, and removal of old exports."""
    moment = now or _utc_now()
    runner = StepRunner()

    def drill() -> tuple[str, dict[str, Any], bool]:
        listing = list_backups(config.settings)
        targets = drill_targets(listing.snapshots, config.retention.protected_tags)
        if not targets:
            return "no snapshot to restore", {"files": []}, False
        rows: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="dbkeep-drill-", dir=scratch) as directory:
            for snapshot in targets:
                try:
                    rows += _drill_one(config, snapshot, Path(directory) / snapshot.id)
                except BackupError as error:
                    rows.append({"snapshot": snapshot.id, "path": "*", "integrity": "FAILED", "row_counts": "-", "schema_hash": "-", "problems": [str(error)]})
        failed = [row for row in rows if row["problems"]]
        summary = f"restored {', '.join(snapshot.id for snapshot in targets)}: {len(rows)} file(s), integrity, row counts and schema hash " + (
            "match the manifests" if not failed else f"FAILED for {', '.join(row['snapshot'] + ':' + row['path'] for row in failed)}: {failed[0]['problems'][0]}"
        )
        return summary, {"files": rows}, not failed

    def review() -> tuple[str, dict[str, Any], bool]:
        listing = list_backups(config.settings)
        ledger = load_ledger(open_repository(config.settings).storage)
        try:
            plan = apply_policy(listing.snapshots, config.retention, now=moment, verification=ledger.outcomes())
        except PolicyRefused as error:
            return str(error), {}, False
        oldest = oldest_restorable(plan)
        by_rule = plan.count_by_rule()
        details = {
            "policy": config.retention.describe(),
            "snapshots": len(plan.decisions),
            "per_rule": by_rule,
            "oldest_restorable": oldest,
            "next_clean_removes": list(plan.remove),
            "held": plan.held,
        }
        rules = ", ".join(f"{rule}: {count}" for rule, count in sorted(by_rule.items())) or "-"
        when = oldest.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if oldest else "-"
        return f"{len(plan.decisions)} snapshot(s) ({rules}); oldest restorable point {when}; next clean removes {len(plan.remove)}", details, True

    def exports() -> tuple[str, dict[str, Any]]:
        removed, freed = remove_old_exports(config.exports_directory, max_age=config.maintenance.export_max_age, now=moment)
        summary = f"removed {len(removed)} export(s) older than {config.maintenance.export_max_age.days} day(s), {human_bytes(freed)} freed"
        return summary, {"directory": str(config.exports_directory), "removed": removed, "bytes_freed": freed}

    runner.run("restore drill", drill)
    runner.run("retention review", review)
    runner.run("exports", exports)
    runner.run("health report", health_report_step(config, "monthly", moment))
    alerts = _report_step(runner, config, moment)
    return RoutineReport(routine="monthly", started=moment, steps=tuple(runner.steps), alerts=alerts)


def remove_old_exports(directory: Path, *, max_age: timedelta, now: datetime) -> tuple[list[str], int]:
    """Remove files and folders directly in ``directory`` older than ``max_age``; never follows symlinks."""
    if not directory.is_dir():
        return [], 0
    removed: list[str] = []
    freed = 0
    for path in sorted(directory.iterdir()):
        status = path.lstat()
        if path.is_symlink() or now - datetime.fromtimestamp(status.st_mtime, timezone.utc) <= max_age:
            continue
        try:
            if path.is_dir():
                size = sum(item.stat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink())
                shutil.rmtree(path)
            else:
                size = status.st_size
                path.unlink()
        except OSError as error:
            raise StorageError(f"cannot remove old export {path}: {error.strerror or error}; check its permissions") from error
        removed.append(path.name)
        freed += size
    return removed, freed

