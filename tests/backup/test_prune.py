"""Clean and prune on real repositories: policies, repack, grace, and refusals."""

from __future__ import annotations

import errno
import hashlib
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backup import clean_old_backups, create_backup, restore_backup, settings_from_mapping, verify_backup
from backup.fsio import FaultPlan, inject
from backup.ledger import load_ledger, update_ledger
from backup.operations import open_repository
from backup.prune import PruneOptions, PruneRefused
from backup.retention import PolicyRefused, RetentionPolicy
from backup.sources import logical_dump_digest
from maintenance.sampledata import change_database, create_sample_database

START = datetime(2025, 1, 10, 2, 0, tzinfo=timezone.utc)
NO_GRACE = PruneOptions(grace=timedelta(0))


@pytest.fixture
def project(tmp_path: Path):
    root = tmp_path / "project"
    database = create_sample_database(root / "data" / "app.db", rows=3000)
    settings = settings_from_mapping({"root": str(root), "repository": str(tmp_path / "repo"), "lock_wait": 0})
    return settings, database


def take_snapshots(settings, database, count: int) -> list[str]:
    ids = []
    for day in range(count):
        if day:
            change_database(database, seed=day, inserts=300, updates=40)
        ids.append(create_backup(settings, tag="daily", now=START + timedelta(days=day)).snapshot.id)
    return ids


def tree_digest(root: Path) -> dict[str, str]:
    """Every repository file except lock records, with its SHA-256."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "locks" not in path.relative_to(root).parts:
            found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_keep_last_argument_still_keeps_the_newest_and_frees_space(project, tmp_path):
    settings, database = project
    ids = take_snapshots(settings, database, 3)
    expected = logical_dump_digest(database)
    report = clean_old_backups(settings, keep_last=1, prune=NO_GRACE, now=START + timedelta(days=3))
    assert report.kept == (ids[-1],)
    assert report.removed == tuple(ids[:2])
    assert report.bytes_freed > 0
    assert verify_backup(settings, read_data=True).ok
    restore_backup(settings, "latest", target=tmp_path / "out")
    assert logical_dump_digest(tmp_path / "out" / "data" / "app.db") == expected


def test_dry_run_names_the_rule_for_each_snapshot_and_changes_nothing(project):
    settings, database = project
    ids = take_snapshots(settings, database, 4)
    before = tree_digest(settings.repository)
    report = clean_old_backups(settings, policy=RetentionPolicy(keep_last=1, keep_daily=2, timezone="UTC"), dry_run=True, prune=NO_GRACE, now=START + timedelta(days=4))
    assert tree_digest(settings.repository) == before
    reasons = {decision.snapshot_id: decision.reasons for decision in report.decisions}
    assert reasons[ids[0]] == () and reasons[ids[1]] == ()
    assert reasons[ids[2]] == ("daily 2025-01-12",)
    assert reasons[ids[3]] == ("last", "daily 2025-01-13", "newest")
    assert report.removed == tuple(ids[:2]) and report.bytes_freed > 0


def test_repack_rewrites_sparse_packs_and_every_kept_snapshot_still_restores(project, tmp_path):
    settings, database = project
    ids = take_snapshots(settings, database, 3)
    expected = logical_dump_digest(database)
    repository = open_repository(settings)
    packs_before = {info.name for info in repository.storage.list("packs")}
    report = clean_old_backups(settings, keep_last=1, prune=PruneOptions(repack_below=1.0, grace=timedelta(0)), now=START + timedelta(days=3))
    assert report.packs_repacked >= 1
    repository = open_repository(settings)
    index = repository.index(reload=True)
    packs_after = {info.name for info in repository.storage.list("packs")}
    assert packs_after - packs_before, "the repack wrote at least one new pack"
    needed = set()
    snapshot = repository.load_snapshot(ids[-1])
    for entry in snapshot.files:
        needed.update(entry.chunk_lists)
        needed.update(repository.chunk_ids_of(entry.chunk_lists, levels=entry.chunk_list_levels, list_ids=needed))
    # After a full repack every stored chunk is one a kept snapshot needs.
    assert set(index.locations) == needed
    assert report.bytes_freed > 0
    assert verify_backup(settings, read_data=True).ok
    restore_backup(settings, "latest", target=tmp_path / "out")
    assert logical_dump_digest(tmp_path / "out" / "data" / "app.db") == expected


def test_without_repack_a_partly_live_pack_is_kept_whole(project):
    settings, database = project
    take_snapshots(settings, database, 2)
    repository = open_repository(settings)
    first_pack = sorted(info.name for info in repository.storage.list("packs"))
    report = clean_old_backups(settings, keep_last=1, prune=PruneOptions(repack_below=0.0, grace=timedelta(0)), now=START + timedelta(days=3))
    assert report.packs_repacked == 0
    remaining = {info.name for info in repository.storage.list("packs")}
    assert set(first_pack) & remaining
    assert verify_backup(settings, read_data=True).ok


def test_unindexed_pack_younger_than_grace_is_kept_and_removed_once_old(project):
    settings, database = project
    take_snapshots(settings, database, 1)
    orphan_bytes = os.urandom(5000)
    orphan_id = hashlib.sha256(orphan_bytes).hexdigest()
    orphan = settings.repository / "packs" / orphan_id[:2] / orphan_id
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(orphan_bytes)
    grace = PruneOptions(grace=timedelta(minutes=30))
    now = datetime.fromtimestamp(orphan.stat().st_mtime, timezone.utc)
    young = clean_old_backups(settings, keep_last=1, prune=grace, now=now + timedelta(minutes=5))
    assert orphan.exists()
    assert any("grace period" in warning for warning in young.warnings)
    old = clean_old_backups(settings, keep_last=1, prune=grace, now=now + timedelta(minutes=31))
    assert not orphan.exists()
    assert old.bytes_freed >= 5000


@pytest.mark.parametrize("failing_listing", range(1, 32))
def test_a_failed_listing_at_any_point_deletes_nothing(project, failing_listing):
    settings, database = project
    take_snapshots(settings, database, 3)
    before = tree_digest(settings.repository)
    plan = FaultPlan(fail_op="listdir", fail_errno=errno.EIO, fail_at=failing_listing)
    try:
        with inject(plan):
            report = clean_old_backups(settings, keep_last=1, prune=NO_GRACE, now=START + timedelta(days=3))
    except Exception as error:  # noqa: BLE001 - the assertion is about what is left on disk
        assert "EIO" in str(error) or "nothing was deleted" in str(error), error
        after = tree_digest(settings.repository)
        # A repack may already have added its new pack and index; nothing was removed or changed.
        assert {name: digest for name, digest in after.items() if name in before} == before
        assert verify_backup(settings, read_data=True).ok
    else:
        # The fault hit after the last listing of the run (or not at all): it completed.
        assert len(report.removed) == 2
        assert verify_backup(settings, read_data=True).ok


def test_missing_pack_of_a_kept_snapshot_refuses_and_deletes_nothing(project):
    settings, database = project
    take_snapshots(settings, database, 2)
    repository = open_repository(settings)
    newest = repository.load_snapshot(repository.snapshot_ids()[-1])
    location = repository.index().locations[newest.files[0].chunk_lists[0]]
    pack = settings.repository / "packs" / location.pack_id[:2] / location.pack_id
    pack.write_bytes(pack.read_bytes()[:-10])
    before = tree_digest(settings.repository)
    with pytest.raises(PruneRefused, match="nothing was deleted"):
        clean_old_backups(settings, keep_last=1, prune=NO_GRACE)
    assert tree_digest(settings.repository) == before


def test_nothing_is_removed_while_the_newest_snapshot_failed_verification(project):
    settings, database = project
    ids = take_snapshots(settings, database, 3)
    storage = open_repository(settings).storage
    update_ledger(storage, lambda ledger: ledger.recording(at=START, snapshots={ids[-1]: "file-hash mismatch"}))
    report = clean_old_backups(settings, keep_last=1, prune=NO_GRACE)
    assert report.removed == ()
    assert report.held and ids[-1] in report.held
    assert len(open_repository(settings).snapshot_ids()) == 3
    assert not load_ledger(storage).snapshots[ids[-1]].ok


def test_newest_verified_snapshot_survives_a_keep_last_1_policy(project):
    settings, database = project
    ids = take_snapshots(settings, database, 3)
    storage = open_repository(settings).storage
    update_ledger(storage, lambda ledger: ledger.recording(at=START, snapshots={ids[0]: None}))
    report = clean_old_backups(settings, policy=RetentionPolicy(keep_last=1, keep_verified=1), prune=NO_GRACE)
    assert report.kept == (ids[0], ids[2])
    assert verify_backup(settings, ids[0], read_data=True).ok


def test_damaged_ledger_refuses_and_deletes_nothing(project):
    settings, database = project
    take_snapshots(settings, database, 2)
    (settings.repository / "ledger.json").write_bytes(b'{"format": "dbkeep-ledger", "garbage": 1}')
    before = tree_digest(settings.repository)
    with pytest.raises(PruneRefused, match="ledger.json is damaged"):
        clean_old_backups(settings, keep_last=1, prune=NO_GRACE)
    assert tree_digest(settings.repository) == before


def test_policy_removing_everything_is_refused(project):
    settings, database = project
    take_snapshots(settings, database, 2)
    before = tree_digest(settings.repository)
    with pytest.raises(PolicyRefused):
        clean_old_backups(settings, policy=RetentionPolicy(keep_tags=("release",)), prune=NO_GRACE)
    assert tree_digest(settings.repository) == before


REPO_ROOT = Path(__file__).resolve().parents[2]
CLEAN_IN_CHILD = """
import sys
from datetime import timedelta
from backup import clean_old_backups, settings_from_mapping
from backup.prune import PruneOptions
settings = settings_from_mapping({"root": sys.argv[1], "repository": sys.argv[2], "lock_wait": 0})
clean_old_backups(settings, keep_last=1, prune=PruneOptions(repack_below=1.0, grace=timedelta(0)))
"""


@pytest.mark.parametrize("point", ["after_repack", "after_manifests_deleted", "after_new_index"])
def test_prune_killed_at_each_step_leaves_a_verifiable_repository_and_a_rerun_converges(project, tmp_path, point):
    import signal
    import subprocess
    import sys

    settings, database = project
    take_snapshots(settings, database, 3)
    expected = logical_dump_digest(database)
    child = subprocess.run(
        [sys.executable, "-c", CLEAN_IN_CHILD, str(settings.root), str(settings.repository)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "DBKEEP_CRASH_AT": point},
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert verify_backup(settings, "latest", read_data=True).ok
    report = clean_old_backups(settings, keep_last=1, prune=PruneOptions(repack_below=1.0, grace=timedelta(0)))
    assert len(open_repository(settings).snapshot_ids()) == 1
    assert verify_backup(settings, read_data=True).ok
    again = clean_old_backups(settings, keep_last=1, prune=PruneOptions(repack_below=1.0, grace=timedelta(0)))
    assert (again.removed, again.packs_removed, again.packs_repacked) == ((), 0, 0), report
    restore_backup(settings, "latest", target=tmp_path / "out")
    assert logical_dump_digest(tmp_path / "out" / "data" / "app.db") == expected


def test_prune_options_come_from_the_maintenance_section_and_bad_values_are_named():
    from backup.errors import ConfigError

    options = PruneOptions.from_maintenance_section({"repack_below": 0.25, "grace_minutes": 5, "verify_weeks": 4})
    assert options == PruneOptions(repack_below=0.25, grace=timedelta(minutes=5))
    assert PruneOptions.from_maintenance_section({}) == PruneOptions()
    with pytest.raises(ConfigError) as raised:
        PruneOptions.from_maintenance_section({"repack_below": 2, "grace_minutes": "soon"})
    assert "backup.maintenance.repack_below = 2" in str(raised.value) and "grace_minutes = 'soon'" in str(raised.value)
