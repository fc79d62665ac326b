"""The selftest: an end-to-end run of dbkeep on generated databases in a temporary directory.

Owns: the scenarios and their checks. Each scenario uses the library the way a
user would and checks the real outcome (row counts, integrity_check, logical
dumps, files on disk, exit signals of child processes). Runs in well under a
minute; returns a ``SelftestReport`` and never prints.

Scenarios, in order (later ones build on the repository earlier ones made):
create (WAL + rollback databases, a concurrent writer), list, verify, compare,
corrupted pack detected, restore with safety snapshot, point-in-time restore,
retention + prune, sha256sum -c of a restored snapshot, export + sha256sum -c,
migration guard rollback, locked repository, recovery after an interrupted backup.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import backup
from backup import locking
from backup.errors import RepositoryLocked, VerificationFailed
from backup.indexcache import CACHE_ENV
from backup.operations import open_repository
from backup.prune import PruneOptions
from backup.retention import RetentionPolicy
from backup.settings import Settings, settings_from_mapping
from backup.sources import logical_dump_digest

from .sampledata import change_database, create_sample_database, integrity, row_counts, total_balance

PASSED = "ok"
FAILED = "FAILED"
SKIPPED = "skipped"
CODE_ROOT = Path(backup.__file__).resolve().parents[1]


class CheckFailed(Exception):
    """A selftest expectation did not hold."""


def check(condition: object, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


class Skip(Exception):
    """The scenario cannot run in this build; the message says what is missing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioResult:
    name: str
    status: str
    seconds: float
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SelftestReport:
    results: tuple[ScenarioResult, ...]
    directory: str

    @property
    def ok(self) -> bool:
        return all(result.status != FAILED for result in self.results)

    @property
    def seconds(self) -> float:
        return round(sum(result.seconds for result in self.results), 2)

    def render(self) -> str:
        from tabulate import tabulate

        rows = [(result.name, result.status, f"{result.seconds:.2f}", result.detail) for result in self.results]
        table = tabulate(rows, headers=("scenario", "result", "seconds", "detail"), tablefmt="simple", maxcolwidths=[None, None, None, 90])
        failed = sum(result.status == FAILED for result in self.results)
        return f"{table}\nselftest: {'ok' if self.ok else f'{failed} scenario(s) FAILED'} in {self.seconds:.1f}s"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seconds": self.seconds,
            "directory": self.directory,
            "scenarios": [{"name": r.name, "result": r.status, "seconds": r.seconds, "detail": r.detail} for r in self.results],
        }

    def to_markdown(self) -> str:
        lines = [f"### dbkeep selftest: {'passed' if self.ok else 'FAILED'}", "", "| scenario | result | seconds |", "| --- | --- | ---: |"]
        lines += [f"| {r.name} | {r.status} | {r.seconds:.2f} |" for r in self.results]
        return "\n".join(lines) + "\n"


@dataclass(slots=True)
class World:
    """What the scenarios share: the project, its repository and what earlier steps made."""

    base: Path
    root: Path
    settings: Settings
    wal_database: Path
    rollback_database: Path
    snapshots: dict[str, str] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)

    def child_environment(self, **extra: str) -> dict[str, str]:
        environment = {key: value for key, value in os.environ.items() if not key.startswith("DBKEEP_") or key == CACHE_ENV}
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CODE_ROOT), os.environ.get("PYTHONPATH", "")]))
        environment.update(extra)
        return environment


START = datetime(2025, 1, 10, 2, 0, tzinfo=timezone.utc)


def _contiguous_ids(database: Path) -> tuple[bool, int]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as connection:
        count, highest = connection.execute("SELECT count(*), max(id) FROM events").fetchone()
    return count == highest, highest


def scenario_create(world: World) -> str:
    """Back up a WAL and a rollback database while another process keeps writing to the WAL one."""
    writer = subprocess.Popen(
        [sys.executable, "-m", "maintenance.sampledata", "writer", str(world.wal_database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=CODE_ROOT,
        env=world.child_environment(),
    )
    try:
        assert writer.stdout is not None and writer.stdin is not None
        ready = writer.stdout.readline().decode().split()
        check(ready[:1] == ["ready"], f"the writer did not start: {ready}")
        committed_before = int(ready[1])
        report = backup.create_backup(world.settings, tag="daily", now=START)
    finally:
        if writer.stdin:
            writer.stdin.close()
        writer.wait(timeout=30)
    check(writer.returncode == 0, f"the concurrent writer failed with exit {writer.returncode}")
    snapshot = report.snapshot
    world.snapshots["first"] = snapshot.id
    restored = world.base / "check-create"
    backup.restore_backup(world.settings, snapshot.id, target=restored)
    copy = restored / "data" / "app.db"
    check(integrity(copy) == "ok", "the backed-up WAL database fails integrity_check")
    contiguous, highest = _contiguous_ids(copy)
    check(contiguous and highest >= committed_before, f"the snapshot is not one committed state (max id {highest}, writer had committed {committed_before})")
    check(total_balance(copy) == 1_000_000, "money was created or lost: the snapshot is torn")
    kinds = {entry.path: entry.sqlite.journal_mode for entry in snapshot.files if entry.sqlite}
    check(kinds == {"data/app.db": "wal", "data/rollback.db": "delete"}, f"unexpected files or journal modes {kinds}")
    world.digests["first"] = logical_dump_digest(copy)
    _contiguous, live_highest = _contiguous_ids(world.wal_database)
    return (
        f"snapshot {snapshot.id}: 2 databases; holds ids 1..{highest} (writer had committed {committed_before} before, "
        f"{live_highest} by the end), balance kept"
    )


def scenario_list(world: World) -> str:
    change_database(world.wal_database, seed=3)
    second = backup.create_backup(world.settings, tag="manual", now=START + timedelta(days=1)).snapshot
    world.snapshots["second"] = second.id
    world.digests["second"] = logical_dump_digest(world.wal_database)
    listing = backup.list_backups(world.settings)
    check([snapshot.id for snapshot in listing.snapshots] == [world.snapshots["first"], second.id], "list does not show both snapshots oldest first")
    check([snapshot.tag for snapshot in listing.snapshots] == ["daily", "manual"], "tags are not recorded")
    check(second.stats.reused_chunks > 0, "the second backup reused no chunk: deduplication is broken")
    return f"2 snapshots listed; the second reused {second.stats.reused_chunks} chunk(s), stored {second.stats.new_chunks} new"


def scenario_verify(world: World) -> str:
    report = backup.verify_backup(world.settings, read_data=True)
    check(report.ok, f"verify found problems: {[problem.message for problem in report.problems[:3]]}")
    check(report.snapshots_checked == 2 and report.bytes_read > 0, "verify read nothing")
    return f"{report.snapshots_checked} snapshots, {report.chunks_checked} chunks, {report.packs_checked} packs re-read"


def scenario_compare(world: World) -> str:
    """Compare the live databases with the latest snapshot: 25 new rows, one database untouched."""
    change_database(world.wal_database, seed=4, inserts=25, updates=0)
    comparison = backup.compare_snapshot(world.settings, "latest")
    by_path = {item.path: item for item in comparison.files}
    events = {table.name: table for table in by_path["data/app.db"].tables}["events"]
    check(by_path["data/app.db"].status == "changed" and events.delta == 25, f"compare missed the 25 new rows: {by_path['data/app.db']}")
    check(by_path["data/rollback.db"].status == "same", f"compare reports changes in an untouched database: {by_path['data/rollback.db']}")
    return f"data/app.db changed (events +{events.delta} rows), data/rollback.db same"


def _flip_first_chunk(settings: Settings, snapshot_id: str) -> str:
    repository = open_repository(settings)
    snapshot = repository.load_snapshot(snapshot_id)
    chunk_id = next(repository.chunk_ids_of(snapshot.files[0].chunk_lists, levels=snapshot.files[0].chunk_list_levels))
    location = repository.index().locations[chunk_id]
    pack = settings.repository / "packs" / location.pack_id[:2] / location.pack_id
    with open(pack, "r+b") as handle:
        handle.seek(location.entry.frame_offset + 5)
        byte = handle.read(1)
        handle.seek(location.entry.frame_offset + 5)
        handle.write(bytes([byte[0] ^ 0x04]))
    return snapshot.files[0].path


def scenario_corruption(world: World) -> str:
    """In a separate repository: flip one bit, verify must name it and restore must refuse."""
    settings = settings_from_mapping({"root": str(world.root), "repository": str(world.base / "repo-damaged"), "lock_wait": 0})
    snapshot = backup.create_backup(settings, paths=["data/rollback.db"]).snapshot
    path = _flip_first_chunk(settings, snapshot.id)
    report = backup.verify_backup(settings, read_data=True)
    check(not report.ok and snapshot.id in report.affected_snapshots, "verify --read-data did not notice a flipped bit")
    check(any(problem.path == path for problem in report.problems), "verify did not name the damaged file")
    before = (world.rollback_database.read_bytes(), world.rollback_database.stat().st_mtime_ns)
    try:
        backup.restore_backup(settings, snapshot.id, force=True)
    except VerificationFailed:
        pass
    else:
        raise CheckFailed("a damaged snapshot was restored")
    check((world.rollback_database.read_bytes(), world.rollback_database.stat().st_mtime_ns) == before, "the live database was touched by a refused restore")
    return f"flipped bit found ({report.problems[0].kind}, file {path}); restore refused, live database untouched"


def scenario_restore(world: World) -> str:
    """Restore the first snapshot over the live databases; a safety snapshot comes first."""
    live_digest = logical_dump_digest(world.wal_database)
    report = backup.restore_backup(world.settings, world.snapshots["first"], force=True)
    check(report.safety_snapshot is not None and report.safety_snapshot.tag == "safety", "no safety snapshot was taken")
    check(logical_dump_digest(world.wal_database) == world.digests["first"], "the restored database differs from the snapshot")
    check(integrity(world.wal_database) == "ok", "the restored database fails integrity_check")
    back = world.base / "check-safety"
    backup.restore_backup(world.settings, report.safety_snapshot.id, target=back)
    check(logical_dump_digest(back / "data" / "app.db") == live_digest, "the safety snapshot does not hold the pre-restore state")
    world.snapshots["safety"] = report.safety_snapshot.id
    return f"restored {world.snapshots['first']}; safety snapshot {report.safety_snapshot.id} holds the replaced state"


def scenario_point_in_time(world: World) -> str:
    moment = (START + timedelta(days=1, hours=3)).isoformat()
    target = world.base / "check-pit"
    report = backup.restore_backup(world.settings, moment, target=target)
    check(report.plan.snapshot.id == world.snapshots["second"], f"{moment} resolved to {report.plan.snapshot.id}, not the snapshot taken before it")
    check(logical_dump_digest(target / "data" / "app.db") == world.digests["second"], "point-in-time restore gave the wrong content")
    return f"'{moment}' restored {world.snapshots['second']}, the latest snapshot at or before it"


def scenario_retention(world: World) -> str:
    for day in range(2, 5):
        change_database(world.wal_database, seed=10 + day)
        backup.create_backup(world.settings, tag="daily", now=START + timedelta(days=day))
    policy = RetentionPolicy(keep_last=2, timezone="UTC")
    # Page-sized chunks leave the removed snapshots' packs mostly live: repack every pack
    # with any dead bytes, so the prune must free space and the repack path is exercised.
    prune = PruneOptions(grace=timedelta(0), repack_below=1.0)
    dry = backup.clean_old_backups(world.settings, policy=policy, dry_run=True, prune=prune)
    check(dry.removed and len(backup.list_backups(world.settings).snapshots) == 6, "dry run removed something or planned nothing")
    report = backup.clean_old_backups(world.settings, policy=policy, prune=prune)
    remaining = backup.list_backups(world.settings).snapshots
    check(report.removed == dry.removed and report.bytes_freed > 0, "clean did not do what its dry run said, or freed nothing")
    check(world.snapshots["safety"] in {snapshot.id for snapshot in remaining}, "the safety snapshot was removed by keep-last")
    check(backup.verify_backup(world.settings, read_data=True).ok, "the repository does not verify after prune")
    return f"removed {len(report.removed)} snapshot(s), kept {len(remaining)} (safety snapshot by its own rule), freed {report.bytes_freed} bytes"


def _sha256sum_check(directory: Path, snapshot) -> str:
    sums = directory / "SHA256SUMS"
    sums.write_text("".join(f"{entry.sha256}  {entry.path}\n" for entry in snapshot.files))
    completed = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=directory, capture_output=True, text=True, check=False)
    check(completed.returncode == 0, f"sha256sum -c failed: {completed.stdout.strip()} {completed.stderr.strip()}")
    return completed.stdout.strip().replace("\n", "; ")


def scenario_sha256sum(world: World) -> str:
    """A restored snapshot checks out with the standard tool against the manifest's SHA-256."""
    if shutil.which("sha256sum") is None:
        raise Skip("sha256sum is not installed")
    latest = backup.find_snapshot(world.settings, "latest")
    target = world.base / "check-sums"
    backup.restore_backup(world.settings, latest.id, target=target)
    return _sha256sum_check(target, latest)


def scenario_export(world: World) -> str:
    """Export the latest snapshot as a folder and check it with ``sha256sum -c``."""
    if shutil.which("sha256sum") is None:
        raise Skip("sha256sum is not installed")
    from backup.export import export_snapshot

    report = export_snapshot(world.settings, "latest", world.base / "export", format="dir")
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=report.output, capture_output=True, text=True)
    if check.returncode != 0:
        raise AssertionError(f"sha256sum -c failed on the export: {check.stdout.strip()} {check.stderr.strip()}")
    return f"{len(report.files)} files exported, sha256sum -c: {check.stdout.count(': OK')} OK"


def scenario_guard(world: World) -> str:
    """A migration that fails halfway is rolled back by backup.guard."""
    before = (logical_dump_digest(world.rollback_database), row_counts(world.rollback_database))
    try:
        with backup.guard("add a column and backfill it", world.settings):
            with contextlib.closing(sqlite3.connect(world.rollback_database, isolation_level=None)) as connection:
                connection.execute("ALTER TABLE accounts ADD COLUMN currency TEXT")
                connection.execute("UPDATE accounts SET currency = 'EUR'")
                connection.execute("DELETE FROM events WHERE id % 2 = 0")
            raise RuntimeError("backfill failed halfway")
    except RuntimeError:
        pass
    else:
        raise CheckFailed("the guard swallowed the migration's error")
    check((logical_dump_digest(world.rollback_database), row_counts(world.rollback_database)) == before, "the database was not rolled back")
    tags = [snapshot.tag for snapshot in backup.list_backups(world.settings).snapshots]
    check("migration" in tags, "no migration snapshot was recorded")
    return "schema change and deletes rolled back to the pre-migration snapshot"


def scenario_locked(world: World) -> str:
    repository = open_repository(world.settings)
    with locking.acquire(repository.storage, exclusive=True, purpose="selftest holds the lock"):
        started = time.monotonic()
        try:
            backup.create_backup(world.settings)
        except RepositoryLocked as error:
            message = str(error)
        else:
            raise CheckFailed("a backup ran while another process held the exclusive lock")
    check("selftest holds the lock" in message and "pid" in message, f"the lock error does not name the holder: {message}")
    check(time.monotonic() - started < 5, "waiting for the lock took longer than lock_wait")
    return "second writer refused at once, naming the holder"


CRASHING_BACKUP = """
import sys
from backup import create_backup, settings_from_mapping
create_backup(settings_from_mapping({"root": sys.argv[1], "repository": sys.argv[2], "lock_wait": 0}), tag="crash")
"""


def scenario_interrupted(world: World) -> str:
    """SIGKILL a backup after its data is written but before its manifest; then recover."""
    change_database(world.wal_database, seed=99, inserts=400)
    before = open_repository(world.settings).snapshot_ids()
    child = subprocess.run(
        [sys.executable, "-c", CRASHING_BACKUP, str(world.root), str(world.settings.repository)],
        cwd=CODE_ROOT,
        env=world.child_environment(DBKEEP_CRASH_AT="before_manifest"),
        capture_output=True,
        timeout=60,
    )
    check(child.returncode == -signal.SIGKILL, f"the backup was not killed (exit {child.returncode}): {child.stderr.decode()[-300:]}")
    check(open_repository(world.settings).snapshot_ids() == before, "a killed backup published a snapshot")
    report = backup.create_backup(world.settings, tag="daily")
    check(any("stale" in warning for warning in report.warnings), "the dead backup's lock was not reported as stale")
    check(report.stats.reused_chunks > 0, "the next backup reused nothing")
    check(backup.verify_backup(world.settings, read_data=True).ok, "the repository does not verify after recovery")
    leftovers = [path for path in world.settings.repository.rglob(".dbkeep-tmp-*")]
    check(not leftovers, f"temporary files were left behind: {leftovers[:3]}")
    return f"killed mid-backup, nothing published; next backup broke the stale lock and completed ({report.snapshot.id})"


#: Servers the self test tries; override with DBKEEP_SELFTEST_SERVERS (space-separated URLs, or "none").
DEFAULT_SELFTEST_SERVERS = "postgresql://postgres@127.0.0.1:5432/postgres mysql://root@127.0.0.1:3306/mysql"


def scenario_servers(world: World) -> str:
    """Back up and drill a scratch database on each reachable server; name the ones that are not."""
    from backup.servers import probe_databases
    from backup.settings import settings_from_mapping
    from backup.sources.server import engine_module, parse_database_entry

    urls = os.environ.get("DBKEEP_SELFTEST_SERVERS", DEFAULT_SELFTEST_SERVERS).split()
    if urls == ["none"]:
        raise Skip("database servers switched off (DBKEEP_SELFTEST_SERVERS=none)")
    results = []
    for url in urls:
        admin = parse_database_entry(url)
        probe = probe_databases([admin])[0]
        if not probe.reachable:
            results.append(f"{admin.engine} not reachable at {probe.location} ({probe.detail[:80]})")
            continue
        engine = engine_module(admin.engine)
        scratch = f"dbkeep_selftest_{os.getpid()}_{admin.engine}"
        engine.create_database(admin, scratch)
        try:
            engine.query(admin, "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)", database=scratch)
            engine.query(admin, "INSERT INTO accounts VALUES " + ", ".join(f"({i}, 100)" for i in range(1, 201)), database=scratch)
            target = url.rsplit("/", 1)[0] + "/" + scratch
            project = world.base / f"servers-{admin.engine}"
            project.mkdir(exist_ok=True)
            settings = settings_from_mapping({"databases": [target], "lock_wait": 0}, root=project)
            report = backup.create_backup(settings, tag="selftest")
            drill = backup.drill_backup(settings, report.snapshot.id)
            check(drill.ok, f"{admin.engine} drill failed: {drill.results}")
            entry = report.snapshot.files[0]
            counts = {name.rsplit(".", 1)[-1]: rows for name, rows in (entry.server.tables if entry.server else {}).items()}
            check(counts.get("accounts") == 200, f"{admin.engine} manifest row count is wrong: {entry.server}")
            results.append(f"{admin.engine} {probe.detail}: backed up and drilled 200 rows")
        finally:
            engine.drop_database(admin, scratch)
    return "; ".join(results)


SCENARIOS: tuple[tuple[str, Callable[[World], str]], ...] = (
    ("create (WAL + rollback, concurrent writer)", scenario_create),
    ("list", scenario_list),
    ("verify --read-data", scenario_verify),
    ("compare with live databases", scenario_compare),
    ("corrupted pack detected", scenario_corruption),
    ("restore with safety snapshot", scenario_restore),
    ("point-in-time restore", scenario_point_in_time),
    ("retention + prune", scenario_retention),
    ("sha256sum -c of a restored snapshot", scenario_sha256sum),
    ("export + sha256sum -c", scenario_export),
    ("migration guard rollback", scenario_guard),
    ("locked repository", scenario_locked),
    ("recovery after interrupted backup", scenario_interrupted),
    ("database servers (when reachable)", scenario_servers),
)


def make_world(base: Path) -> World:
    root = base / "project"
    wal = create_sample_database(root / "data" / "app.db", rows=4000, journal_mode="wal", seed=1)
    rollback = create_sample_database(root / "data" / "rollback.db", rows=1500, journal_mode="delete", seed=2)
    settings = settings_from_mapping({"root": str(root), "repository": str(base / "repo"), "lock_wait": 0})
    return World(base=base, root=root, settings=settings, wal_database=wal, rollback_database=rollback)


def run_selftest(*, keep: bool = False, directory: Path | None = None) -> SelftestReport:
    """Run every scenario in a fresh temporary directory (removed afterwards unless ``keep``)."""
    base = Path(tempfile.mkdtemp(prefix="dbkeep-selftest-", dir=directory))
    results: list[ScenarioResult] = []
    # The throwaway repositories keep their local index copies in the throwaway
    # directory, not in the user's cache (the children inherit it too).
    cache_before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(base / "cache")
    try:
        world = make_world(base)
        for name, scenario in SCENARIOS:
            started = time.monotonic()
            try:
                detail, status = scenario(world), PASSED
            except Skip as skipped:
                detail, status = str(skipped), SKIPPED
            except Exception as error:  # noqa: BLE001 - a selftest reports every failure, bugs included
                detail, status = f"{type(error).__name__}: {error}", FAILED
            results.append(ScenarioResult(name=name, status=status, seconds=round(time.monotonic() - started, 2), detail=detail))
    finally:
        if cache_before is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = cache_before
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    return SelftestReport(results=tuple(results), directory=str(base))
