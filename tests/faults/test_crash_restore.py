"""T03 and T18: SIGKILL during restore into the live project.

The project holds a WAL database, a rollback-journal database and a plain file;
a forked real process restores an older snapshot over them (force) and is
killed at each crash state, at the named point after the safety snapshot, or
after a random delay. Afterwards each live file, once opened the way its next
user would (which rolls back a hot journal), is exactly the old or exactly the
new content, passes integrity_check and has no stale ``-journal``/``-wal`` (a
journal SQLite never made hot may remain until the next write reuses it); if
any file already changed, a safety snapshot exists that restores the pre-restore
state; every snapshot verifies; and running the restore again completes.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

import backup
import faultkit
from faultkit import Project

NAMED_POINTS = ("after_safety_snapshot",)


def _template(tmp_path: Path) -> tuple[Project, str, dict[str, str], dict[str, str]]:
    """A project whose live content (new) differs from snapshot ``target_id`` (old)."""
    project = faultkit.build_project(tmp_path / "template", rows=80, plain_bytes=6000)
    target_id = project.backup()
    faultkit.change_project(project, seed=3)
    project.backup()
    faultkit.change_project(project, seed=4)
    return project, target_id, project.expected[target_id], faultkit.source_digests(project)


def _checker(restored: dict[str, str], live: dict[str, str], target_id: str):
    def check(project: Project, scratch: Path, outcome: dict) -> list[str]:
        problems = []
        changed = []
        for relative in project.paths:
            path = project.live(relative)
            if not path.exists():
                problems.append(f"live {relative} is missing")
                continue
            database = relative in project.databases
            if database:
                problems += [f"stale sidecar {sidecar}" for sidecar in faultkit.settled_sidecars(path, cold_journal_allowed=True)]
            digest = faultkit.content_digest(path, database=database)
            if digest not in (live[relative], restored[relative]):
                problems.append(f"live {relative} is neither the old nor the new content")
            if digest != live[relative]:
                changed.append(relative)
            if database and faultkit.integrity(path) != "ok":
                problems.append(f"live {relative} fails integrity_check")
        safety = [snapshot_id for snapshot_id in faultkit.snapshot_ids(project) if snapshot_id not in project.expected]
        if changed and not safety:
            problems.append(f"{changed} changed but no safety snapshot exists")
        problems += faultkit.read_data_problems(project)
        problems += faultkit.snapshots_restore_problems(project, scratch, pending=live)
        try:
            backup.restore_backup(project.settings, target_id, force=True)
        except backup.BackupError as error:
            return problems + [f"restore after the crash failed: {type(error).__name__}: {error}"]
        for relative in project.paths:
            path = project.live(relative)
            database = relative in project.databases
            if database:
                problems += [f"stale sidecar after the second restore: {sidecar}" for sidecar in faultkit.settled_sidecars(path)]
            if faultkit.content_digest(path, database=database) != restored[relative]:
                problems.append(f"after the second restore {relative} does not hold the snapshot")
        problems += [f"temp file left: {path}" for path in faultkit.temp_leftovers(project.root)]
        return problems

    return check


def _campaign(driver, tmp_path: Path, *, every: bool, delays: int, seed: int) -> None:
    template, target_id, restored, live = _template(tmp_path)
    spec = lambda project: project.spec("restore", snapshot=target_id, force=True)  # noqa: E731
    calibration = driver.run(spec(template.copy_to(tmp_path / "calibrate")), record=True)
    assert faultkit.completed(calibration), calibration
    sequence = calibration["output"]["sequence"]
    points = faultkit.all_crash_points(sequence) if every else faultkit.distinct_state_crash_points(sequence)
    rng = random.Random(seed)
    campaign = faultkit.crash_campaign(
        driver,
        tmp_path,
        template,
        spec,
        _checker(restored, live, target_id),
        points=[*points, *NAMED_POINTS],
        delays=[rng.uniform(0, calibration["elapsed"]) for _ in range(delays)],
        label=lambda what: f"{faultkit.seed_note(seed)} {what}",
    )
    assert campaign.faults >= len(points) + len(NAMED_POINTS), "some crash points were never reached"
    campaign.finish(f"T03 restore crash ({'all points' if every else 'distinct states'} + {delays} random kills)")


def _seed() -> int:
    return int(os.environ.get("DBKEEP_FAULT_SEED", random.randrange(1 << 30)))


def test_sigkill_at_each_crash_state_of_restore_leaves_each_live_file_old_or_new(driver, tmp_path: Path) -> None:
    _campaign(driver, tmp_path, every=False, delays=faultkit.trial_count(), seed=_seed())


@pytest.mark.slow
def test_sigkill_before_every_seam_operation_and_at_random_moments_of_restore(driver, tmp_path: Path) -> None:
    _campaign(driver, tmp_path, every=True, delays=max(30, faultkit.slow_trial_count()), seed=_seed())


def test_restore_oracle_fails_on_a_half_written_live_database(tmp_path: Path) -> None:
    """Negative control: a torn live database (first half new, rest old) is caught."""
    template, target_id, restored, live = _template(tmp_path)
    project = template.copy_to(tmp_path / "trial")
    other = template.copy_to(tmp_path / "other")
    backup.restore_backup(other.settings, target_id, force=True)
    victim = project.live(project.databases[1])  # rollback journal: no WAL to hide the tear
    new_bytes = other.live(project.databases[1]).read_bytes()
    old_bytes = victim.read_bytes()
    torn = new_bytes[: len(new_bytes) // 2] + old_bytes[len(new_bytes) // 2 :]
    victim.write_bytes(torn)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    problems = _checker(restored, live, target_id)(project, scratch, {})
    assert any("neither the old nor the new" in problem or "integrity_check" in problem for problem in problems), problems
    assert any("no safety snapshot" in problem for problem in problems), problems
