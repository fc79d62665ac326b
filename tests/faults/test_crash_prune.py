"""T02: SIGKILL during clean/prune, at every crash state and at seeded random moments.

A forked real process runs ``clean_old_backups(keep_last=1)`` on a repository of
three snapshots and is killed before a seam operation, at a named point, or
after a random delay. Afterwards: read-data verification passes, every listed
snapshot (kept, or not yet removed) restores to its recorded content, no chunk
of a surviving manifest was deleted, and running clean again converges to
exactly the state an uninterrupted clean leaves (same manifests, packs, index).
"""

from __future__ import annotations

import os
from datetime import timedelta
import random
from pathlib import Path

import pytest

import backup
from backup.prune import PruneOptions
import faultkit
from faultkit import Project

NAMED_POINTS = ("after_manifests_deleted", "after_new_index")


def _template(tmp_path: Path) -> Project:
    project = faultkit.build_project(tmp_path / "template", rows=80, plain_bytes=6000)
    for seed in range(3):
        project.backup()
        faultkit.change_project(project, seed=seed + 10)
    return project


def _durable_state(project: Project) -> dict:
    """What a finished clean is judged by: manifests, packs and index, by content."""
    return {folder: faultkit.tree_state(project.repository / folder) for folder in ("snapshots", "packs", "index")}


# Once the grace period has passed, a clean that was killed and run again must end in
# the same state as one that was never interrupted; grace=0 stands for "later".
AFTER_GRACE = PruneOptions(grace=timedelta(0))


def _reference(template: Project, directory: Path) -> dict:
    project = template.copy_to(directory)
    backup.clean_old_backups(project.settings, keep_last=1, prune=AFTER_GRACE)
    return _durable_state(project)


def _checker(reference: dict):
    def check(project: Project, scratch: Path, outcome: dict) -> list[str]:
        problems = faultkit.read_data_problems(project)
        problems += faultkit.snapshots_restore_problems(project, scratch)
        try:
            backup.clean_old_backups(project.settings, keep_last=1, prune=AFTER_GRACE)
        except backup.BackupError as error:
            return problems + [f"clean after the crash failed: {type(error).__name__}: {error}"]
        if _durable_state(project) != reference:
            problems.append("clean after the crash did not converge to the state of an uninterrupted clean")
        problems += [f"temp file left: {path}" for path in faultkit.temp_leftovers(project.repository)]
        problems += faultkit.read_data_problems(project)
        problems += faultkit.snapshots_restore_problems(project, scratch)
        return problems

    return check


def _campaign(driver, tmp_path: Path, *, every: bool, delays: int, seed: int) -> None:
    template = _template(tmp_path)
    reference = _reference(template, tmp_path / "reference")
    calibration = driver.run(template.copy_to(tmp_path / "calibrate").spec("clean", keep_last=1), record=True)
    assert faultkit.completed(calibration), calibration
    sequence = calibration["output"]["sequence"]
    points = faultkit.all_crash_points(sequence) if every else faultkit.distinct_state_crash_points(sequence)
    rng = random.Random(seed)
    campaign = faultkit.crash_campaign(
        driver,
        tmp_path,
        template,
        lambda project: project.spec("clean", keep_last=1),
        _checker(reference),
        points=[*points, *NAMED_POINTS],
        delays=[rng.uniform(0, calibration["elapsed"]) for _ in range(delays)],
        label=lambda what: f"{faultkit.seed_note(seed)} {what}",
    )
    assert campaign.faults >= len(points) + len(NAMED_POINTS), "some crash points were never reached"
    campaign.finish(f"T02 prune crash ({'all points' if every else 'distinct states'} + {delays} random kills)")


def _seed() -> int:
    return int(os.environ.get("DBKEEP_FAULT_SEED", random.randrange(1 << 30)))


def test_sigkill_at_each_crash_state_of_clean_keeps_every_kept_snapshot_and_converges(driver, tmp_path: Path) -> None:
    _campaign(driver, tmp_path, every=False, delays=faultkit.trial_count(), seed=_seed())


@pytest.mark.slow
def test_sigkill_before_every_seam_operation_and_at_random_moments_of_clean_converges(driver, tmp_path: Path) -> None:
    _campaign(driver, tmp_path, every=True, delays=max(30, faultkit.slow_trial_count()), seed=_seed())


def test_prune_oracle_fails_when_a_kept_snapshot_lost_a_pack(tmp_path: Path) -> None:
    """Negative control: deleting a pack a kept snapshot needs is caught by the checks."""
    template = _template(tmp_path)
    reference = _reference(template, tmp_path / "reference")
    project = template.copy_to(tmp_path / "trial")
    backup.clean_old_backups(project.settings, keep_last=1)
    pack = next(path for path in (project.repository / "packs").rglob("*") if path.is_file())
    os.unlink(pack)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    problems = _checker(reference)(project, scratch, {})
    assert any("is missing" in problem for problem in problems), problems
    assert any("clean after the crash failed" in problem for problem in problems), problems
