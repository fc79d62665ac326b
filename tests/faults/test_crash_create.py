"""T01: SIGKILL during backup, at every crash point and at seeded random moments.

A forked real process runs ``create_backup`` and is killed just before the n-th
operation of each kind on the I/O seam (every n until the run completes), at
each named point, or by the driver after a random delay within the calibrated
runtime. Afterwards: read-data verification passes, every listed snapshot
restores to the content recorded when it was taken, the live databases are
untouched (SHA-256 and mtime), and the next backup succeeds, breaks the dead
process's lock and leaves no temp file.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

import faultkit
from faultkit import Project

NAMED_POINTS = ("after_chunks", "before_manifest")


def _prepare(tmp_path: Path, *, incremental: bool) -> tuple[Project, dict[str, str]]:
    """A project whose next backup writes new data; returns it and what that backup must hold."""
    project = faultkit.build_project(tmp_path / "template", rows=80, plain_bytes=6000)
    if incremental:
        project.backup()
        faultkit.change_project(project, seed=1)
    return project, faultkit.source_digests(project)


def check_after_crash(project: Project, scratch: Path, *, pending: dict[str, str], live_before: dict) -> list[str]:
    """Every invariant that must hold after a backup was killed anywhere."""
    problems: list[str] = []
    if (project.repository / "config.json").exists():
        problems += faultkit.read_data_problems(project)
    lock_left = (project.repository / "locks" / "exclusive").exists()
    if faultkit.live_fingerprints(project) != live_before:
        problems.append("a live file changed during the backup")
    import backup

    try:
        report = backup.create_backup(project.settings)
    except backup.BackupError as error:
        return problems + [f"the next backup failed: {type(error).__name__}: {error}"]
    project.expected[report.snapshot.id] = pending
    if lock_left and not any("stale" in warning for warning in report.warnings):
        problems.append(f"the dead writer's lock was not reported as stale: {report.warnings}")
    problems += [f"temp file left after the next run: {path}" for path in faultkit.temp_leftovers(project.repository)]
    problems += faultkit.snapshots_restore_problems(project, scratch, pending=pending)
    problems += faultkit.read_data_problems(project)
    return problems


def _trial(driver, template: Project, pending: dict[str, str], directory: Path, *, fault: dict | None = None, kill_after: float | None = None) -> tuple[dict, list[str]]:
    directory.mkdir()
    project = template.copy_to(directory)
    live_before = faultkit.live_fingerprints(project)
    outcome = driver.run(project.spec("create"), fault=fault, kill_after=kill_after)
    if outcome["status"] == "exited" and outcome["code"] == 3:
        return outcome, [f"the backup hit a bug: {outcome['output']}"]
    scratch = directory / "scratch"
    scratch.mkdir()
    return outcome, check_after_crash(project, scratch, pending=pending, live_before=live_before)


def _crash_every_point(driver, tmp_path: Path, *, incremental: bool, every: bool) -> None:
    template, pending = _prepare(tmp_path, incremental=incremental)
    calibration = driver.run(template.copy_to(tmp_path / "calibrate").spec("create"), record=True)
    assert faultkit.completed(calibration), calibration
    sequence = calibration["output"]["sequence"]
    points = faultkit.all_crash_points(sequence) if every else faultkit.distinct_state_crash_points(sequence)
    points += NAMED_POINTS
    failures = []
    killed = 0
    for number, point in enumerate(points):
        outcome, problems = _trial(driver, template, pending, tmp_path / f"trial-{number}", fault={"DBKEEP_CRASH_AT": point})
        killed += outcome["status"] == "killed"
        if problems:
            failures.append(f"crash at {point}: {problems}")
    faultkit.tally(f"T01 create crash points ({'all' if every else 'distinct states'}, {'incremental' if incremental else 'first'})", trials=len(points), faults=killed, failures=len(failures))
    assert not failures, "\n".join(failures)
    assert killed == len(points), f"only {killed} of {len(points)} crash points were reached"


@pytest.mark.parametrize("incremental", [False, True], ids=["first-backup", "incremental"])
def test_sigkill_at_each_distinct_crash_state_of_create_leaves_a_restorable_repository(driver, tmp_path: Path, incremental: bool) -> None:
    _crash_every_point(driver, tmp_path, incremental=incremental, every=False)


@pytest.mark.slow
@pytest.mark.parametrize("incremental", [False, True], ids=["first-backup", "incremental"])
def test_sigkill_before_every_seam_operation_of_create_leaves_a_restorable_repository(driver, tmp_path: Path, incremental: bool) -> None:
    _crash_every_point(driver, tmp_path, incremental=incremental, every=True)


def _random_kills(driver, tmp_path: Path, trials: int, seed: int) -> None:
    template, pending = _prepare(tmp_path, incremental=True)
    calibration = driver.run(template.copy_to(tmp_path / "calibrate").spec("create"))
    assert faultkit.completed(calibration), calibration
    runtime = calibration["elapsed"]
    rng = random.Random(seed)
    failures = []
    killed = 0
    for trial in range(trials):
        delay = rng.uniform(0, runtime)
        outcome, problems = _trial(driver, template, pending, tmp_path / f"trial-{trial}", kill_after=delay)
        killed += outcome["status"] == "killed"
        if problems:
            failures.append(f"{faultkit.seed_note(seed, f'trial {trial}, kill after {delay:.4f}s')}: {problems}")
    faultkit.tally("T01 create random SIGKILL", trials=trials, faults=killed, failures=len(failures))
    assert not failures, "\n".join(failures)


def test_sigkill_at_random_moments_of_create_leaves_a_restorable_repository(driver, tmp_path: Path) -> None:
    seed = int(os.environ.get("DBKEEP_FAULT_SEED", random.randrange(1 << 30)))
    _random_kills(driver, tmp_path, faultkit.trial_count(), seed)


@pytest.mark.slow
def test_sigkill_at_many_random_moments_of_create_leaves_a_restorable_repository(driver, tmp_path: Path) -> None:
    seed = int(os.environ.get("DBKEEP_FAULT_SEED", random.randrange(1 << 30)))
    _random_kills(driver, tmp_path, faultkit.slow_trial_count(), seed)


def test_crash_oracle_fails_when_a_manifest_names_data_that_was_never_stored(driver, tmp_path: Path) -> None:
    """Negative control: a snapshot whose pack is missing is caught by the same oracle."""
    template, pending = _prepare(tmp_path, incremental=True)
    project = template.copy_to(tmp_path / "trial")
    live_before = faultkit.live_fingerprints(project)
    outcome = driver.run(project.spec("create"))
    assert faultkit.completed(outcome)
    index = faultkit.open_repository(project).index()
    newest_pack = max(index.pack_sizes, key=lambda pack_id: (project.repository / "packs" / pack_id[:2] / pack_id).stat().st_mtime_ns)
    os.unlink(project.repository / "packs" / newest_pack[:2] / newest_pack)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    problems = check_after_crash(project, scratch, pending=pending, live_before=live_before)
    assert any("is missing" in problem for problem in problems), problems


def test_crash_oracle_fails_when_a_live_file_changes_or_a_temp_file_stays(tmp_path: Path) -> None:
    """Negative control: the untouched-live-file and no-temp-file checks can fail."""
    template, pending = _prepare(tmp_path, incremental=True)
    project = template.copy_to(tmp_path / "trial")
    live_before = faultkit.live_fingerprints(project)
    faultkit.change_project(project, seed=7)
    (project.repository / "elsewhere").mkdir()
    (project.repository / "elsewhere" / ".dbkeep-tmp-negative").write_bytes(b"x")  # outside what a run cleans
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    problems = check_after_crash(project, scratch, pending=pending, live_before=live_before)
    assert "a live file changed during the backup" in problems
    assert any("differs from what was backed up" in problem for problem in problems), problems
    assert any("temp file left" in problem for problem in problems), problems
