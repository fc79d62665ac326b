"""T07: EIO from fsync (and its neighbours) at every position, once and persistently.

PostgreSQL's fsyncgate: after a failed fsync the kernel may have dropped the
dirty pages, and a retried fsync can report success. So a failed fsync must
stop the publish: the seam recording of the faulted process must show no pack,
index or manifest linked or renamed into place after the failure. Besides:
the operation fails with a StorageError (no traceback), read-data verification
passes, live files are untouched (before the apply step of a restore), and the
next run succeeds and leaves no temp file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import backup
import faultkit
import sweeps
from faultkit import FaultTrial, Project

DEFAULT_OPS = ("fsync", "fsync_dir")
SLOW_OPS = ("fsync", "fsync_dir", "close", "write", "link", "replace", "unlink", "listdir", "create_temp", "mkdir")


def _create(driver, tmp_path: Path, *, ops, persistent: bool, every: bool) -> None:
    template, pending, live = sweeps.create_template(tmp_path, incremental=True)
    campaign = faultkit.fault_sweep(
        driver,
        tmp_path,
        template,
        lambda project: project.spec("create"),
        sweeps.create_checker(pending=pending, live_before=live),
        ops=ops,
        errno_name="EIO",
        persistent=persistent,
        every=every,
    )
    campaign.finish(f"T07 EIO during create ({'/'.join(ops)}, {'persistent' if persistent else 'once'})")


@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
def test_eio_from_fsync_at_every_position_of_create_publishes_nothing_after_it(driver, tmp_path: Path, persistent: bool) -> None:
    _create(driver, tmp_path, ops=DEFAULT_OPS, persistent=persistent, every=True)


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
def test_eio_from_every_seam_operation_at_every_position_of_create(driver, tmp_path: Path, persistent: bool) -> None:
    _create(driver, tmp_path, ops=SLOW_OPS, persistent=persistent, every=True)


def _restore(driver, tmp_path: Path, *, ops, persistent: bool) -> None:
    template, target_id, restored, live, live_before = sweeps.restore_template(tmp_path)
    campaign = faultkit.fault_sweep(
        driver,
        tmp_path,
        template,
        lambda project: project.spec("restore", snapshot=target_id, force=True),
        sweeps.restore_checker(target_id=target_id, restored=restored, live=live, live_before=live_before),
        ops=ops,
        errno_name="EIO",
        persistent=persistent,
    )
    campaign.finish(f"T07 EIO during restore ({'/'.join(ops)}, {'persistent' if persistent else 'once'})")


def test_eio_from_fsync_at_every_position_of_restore_keeps_the_live_files(driver, tmp_path: Path) -> None:
    _restore(driver, tmp_path, ops=DEFAULT_OPS, persistent=False)


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
def test_eio_from_every_seam_operation_of_restore_keeps_the_live_files(driver, tmp_path: Path, persistent: bool) -> None:
    _restore(driver, tmp_path, ops=SLOW_OPS, persistent=persistent)


def _clean_template(tmp_path: Path) -> Project:
    project = faultkit.build_project(tmp_path / "template", rows=80, plain_bytes=6000)
    for seed in range(3):
        project.backup()
        faultkit.change_project(project, seed=seed + 30)
    return project


def _clean_checker(project: Project, scratch: Path, trial: FaultTrial) -> list[str]:
    problems = []
    if not trial.succeeded:
        if trial.error is None:
            problems.append(f"failed without an error record: {trial.outcome}")
        problems += [f"{name} was published after the failure" for name in sweeps.published_after_failure(project, trial)]
    problems += faultkit.read_data_problems(project)
    problems += faultkit.snapshots_restore_problems(project, scratch)
    try:
        backup.clean_old_backups(project.settings, keep_last=1)
    except backup.BackupError as error:
        return problems + [f"clean after the fault failed: {type(error).__name__}: {error}"]
    if len(faultkit.snapshot_ids(project)) != 1:
        problems.append("clean after the fault did not converge to one snapshot")
    problems += [f"temp file left: {path}" for path in faultkit.temp_leftovers(project.repository)]
    problems += faultkit.read_data_problems(project)
    return problems


def _clean(driver, tmp_path: Path, *, ops, persistent: bool) -> None:
    campaign = faultkit.fault_sweep(
        driver,
        tmp_path,
        _clean_template(tmp_path),
        lambda project: project.spec("clean", keep_last=1),
        _clean_checker,
        ops=ops,
        errno_name="EIO",
        persistent=persistent,
    )
    campaign.finish(f"T07 EIO during clean ({'/'.join(ops)}, {'persistent' if persistent else 'once'})")


def test_eio_from_fsync_at_every_position_of_clean_keeps_every_kept_snapshot(driver, tmp_path: Path) -> None:
    _clean(driver, tmp_path, ops=DEFAULT_OPS, persistent=False)


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
def test_eio_from_every_seam_operation_of_clean_keeps_every_kept_snapshot(driver, tmp_path: Path, persistent: bool) -> None:
    _clean(driver, tmp_path, ops=SLOW_OPS, persistent=persistent)


def test_publish_check_fails_when_a_manifest_is_linked_after_a_failed_fsync(tmp_path: Path) -> None:
    """Negative control: a recording in which a manifest follows the failed fsync is flagged."""
    project = faultkit.build_project(tmp_path / "p", rows=5)
    repository = str(project.repository)
    sequence = [
        ["create_temp", f"{repository}/snapshots/.dbkeep-tmp-1"],
        ["write", ""],
        ["fsync", ""],
        ["close", ""],
        ["link", f"{repository}/snapshots/20250101T000000Z-0000.json"],
    ]
    trial = FaultTrial(op="fsync", at=1, errno_name="EIO", persistent=False, outcome={"status": "exited", "code": 1, "output": {"ok": False, "error": "StorageError", "sequence": sequence}})
    assert sweeps.published_after_failure(project, trial) == [f"{repository}/snapshots/20250101T000000Z-0000.json"]
