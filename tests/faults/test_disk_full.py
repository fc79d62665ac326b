"""T05 and T06: the disk fills up during a backup or a restore.

Two ways: ENOSPC injected through the I/O seam at every position (n = 1, 2, ...
until the operation completes, once and persistently), and real small tmpfs
mounts inside a private mount namespace (skipped where mounting is refused).

After a failed backup: a clear NoSpace error (no traceback), no new manifest,
no temp file, the live databases untouched, read-data verification passes, and
the next run succeeds once space is back. After a failed restore: every live
file is untouched (SHA-256 and mtime) unless the failure came after the safety
snapshot, in which case each file is exactly old or new and the safety
snapshot restores the old state; a second restore completes.
"""

from __future__ import annotations

import contextlib
import json
import random
import sqlite3
import subprocess
from pathlib import Path

import pytest

import faultkit
import sweeps
from faultkit import FaultTrial, Project

SPACE_OPS = ("create_temp", "write", "fsync", "close", "link", "replace", "mkdir")
#: The default run: the operations a full disk really fails (slow runs take all).
DEFAULT_SPACE_OPS = ("create_temp", "write", "fsync", "mkdir")


def _create_sweep(driver, tmp_path: Path, *, incremental: bool, persistent: bool, every: bool) -> None:
    template, pending, live = sweeps.create_template(tmp_path, incremental=incremental)
    campaign = faultkit.fault_sweep(
        driver,
        tmp_path,
        template,
        lambda project: project.spec("create"),
        sweeps.create_checker(pending=pending, live_before=live),
        ops=SPACE_OPS if every else DEFAULT_SPACE_OPS,
        errno_name="ENOSPC",
        persistent=persistent,
        every=every,
    )
    mode = f"{'incremental' if incremental else 'first'}, {'persistent' if persistent else 'once'}, {'every position' if every else 'representative positions'}"
    campaign.finish(f"T05 ENOSPC during create ({mode})")


@pytest.mark.parametrize(("incremental", "persistent"), [(False, False), (True, True)], ids=["first-backup-once", "incremental-persistent"])
def test_no_space_at_each_position_of_create_fails_clearly_and_leaves_nothing(driver, tmp_path: Path, incremental: bool, persistent: bool) -> None:
    _create_sweep(driver, tmp_path, incremental=incremental, persistent=persistent, every=False)


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
@pytest.mark.parametrize("incremental", [False, True], ids=["first-backup", "incremental"])
def test_no_space_at_every_position_of_create_in_every_mode_fails_clearly(driver, tmp_path: Path, incremental: bool, persistent: bool) -> None:
    _create_sweep(driver, tmp_path, incremental=incremental, persistent=persistent, every=True)


def _restore_sweep(driver, tmp_path: Path, *, persistent: bool, every: bool) -> None:
    template, target_id, restored, live, live_before = sweeps.restore_template(tmp_path)
    campaign = faultkit.fault_sweep(
        driver,
        tmp_path,
        template,
        lambda project: project.spec("restore", snapshot=target_id, force=True),
        sweeps.restore_checker(target_id=target_id, restored=restored, live=live, live_before=live_before),
        ops=SPACE_OPS if every else DEFAULT_SPACE_OPS,
        errno_name="ENOSPC",
        persistent=persistent,
        every=every,
    )
    campaign.finish(f"T06 ENOSPC during restore ({'persistent' if persistent else 'once'}, {'every position' if every else 'representative positions'})")


def test_no_space_at_each_position_of_restore_keeps_the_live_files(driver, tmp_path: Path) -> None:
    _restore_sweep(driver, tmp_path, persistent=False, every=False)


@pytest.mark.slow
@pytest.mark.parametrize("persistent", [False, True], ids=["once", "persistent"])
def test_no_space_at_every_position_of_restore_keeps_the_live_files(driver, tmp_path: Path, persistent: bool) -> None:
    _restore_sweep(driver, tmp_path, persistent=persistent, every=True)


def test_disk_full_oracle_fails_on_a_backup_that_left_a_temp_file_and_a_changed_database(driver, tmp_path: Path) -> None:
    """Negative control: the same checks flag leftovers, a changed live file and a bad error."""
    template, pending, live = sweeps.create_template(tmp_path, incremental=True)
    project = template.copy_to(tmp_path / "trial")
    outcome = driver.run(project.spec("create"), fault={"DBKEEP_FAULT": "write:EIO:1"}, record=True)
    trial = FaultTrial(op="write", at=1, errno_name="ENOSPC", persistent=False, outcome=outcome)
    (project.repository / "elsewhere").mkdir()
    (project.repository / "elsewhere" / ".dbkeep-tmp-left").write_bytes(b"x")
    faultkit.change_project(project, seed=99)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    problems = sweeps.create_checker(pending=pending, live_before=live)(project, scratch, trial)
    assert any("reported as StorageError" in problem for problem in problems), problems
    assert any("temp files left" in problem for problem in problems), problems
    assert "a live file changed" in problems


# -- real full file systems --------------------------------------------------------------


def _mount_allowed(tmp_path: Path) -> str | None:
    """None if this process may mount a tmpfs in a private namespace, else why not."""
    probe = tmp_path / "probe-mount"
    probe.mkdir()
    try:
        completed = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {probe}"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        return f"unshare is not available: {error}"
    return None if completed.returncode == 0 else f"mounting a tmpfs is refused here: {completed.stderr.strip()}"


@pytest.fixture
def tmpfs_allowed(tmp_path: Path) -> None:
    reason = _mount_allowed(tmp_path)
    if reason:
        pytest.skip(reason)


def _in_namespace(script: list[tuple[str, object]], *, timeout: float = 300.0) -> list[dict]:
    """Run shell steps and child specs inside one private mount namespace; their outputs.

    A step is ("sh", command) or ("child", spec). Each child prints one JSON line.
    """
    lines = []
    for kind, value in script:
        if kind == "sh":
            lines.append(f"{value} || exit 97")
        else:
            command = " ".join(_quote(part) for part in faultkit.child_command(value))  # type: ignore[arg-type]
            lines.append(f"{command}; echo")
    completed = subprocess.run(["unshare", "-m", "sh", "-c", "\n".join(lines)], env=faultkit.child_env(), cwd=faultkit.REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    assert completed.returncode != 97, completed.stderr
    outputs = []
    for line in completed.stdout.splitlines():
        with contextlib.suppress(ValueError):
            outputs.append(json.loads(line))
    assert len(outputs) == sum(kind == "child" for kind, _ in script), completed.stdout + completed.stderr
    return outputs


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _fill_database(path: Path, megabytes: int, seed: int) -> None:
    """Add incompressible rows so the database needs ``megabytes`` of real space."""
    rng = random.Random(seed)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO ledger(payload) VALUES (?)", [(rng.randbytes(8000),) for _ in range(megabytes * 128)])
        connection.execute("COMMIT")


def _big_project(tmp_path: Path, *, repository: Path | None = None) -> Project:
    project = faultkit.build_project(tmp_path / "big", rows=50, journal_modes=("wal",), plain_bytes=0)
    if repository is not None:
        project.repository = repository
    _fill_database(project.live("app.db"), 8, seed=1)
    return project


def test_backup_into_a_full_tmpfs_fails_clearly_and_the_next_run_succeeds_once_space_is_back(tmpfs_allowed, tmp_path: Path) -> None:
    project = _big_project(tmp_path)
    project.repository.mkdir(mode=0o700)
    live = project.live("app.db")
    before = faultkit.fingerprint(live)
    inspect = project.spec("inspect", temp_dirs=[str(project.root)], files=[str(live)])
    full, state, again, state_after = _in_namespace(
        [
            ("sh", f"mount -t tmpfs -o size=2m,mode=0700 tmpfs {_quote(str(project.repository))}"),
            ("child", project.spec("create")),
            ("child", inspect),
            ("sh", f"mount -o remount,size=64m {_quote(str(project.repository))}"),
            ("child", project.spec("create")),
            ("child", inspect),
        ]
    )
    assert full["ok"] is False and full["error"] == "NoSpace", full
    assert "no space left" in full["message"]
    state = state["result"]
    assert state["snapshots"] == [] and state["problems"] == [] and state["temps"] == [], state
    assert tuple(state["fingerprints"][str(live)]) == before
    assert again["ok"], again
    assert state_after["result"]["snapshots"] == [again["result"]["snapshot"]]
    assert state_after["result"]["problems"] == [] and state_after["result"]["temps"] == []
    assert faultkit.fingerprint(live) == before


def test_restore_whose_safety_snapshot_does_not_fit_leaves_the_live_database_untouched(tmpfs_allowed, tmp_path: Path) -> None:
    project = _big_project(tmp_path)
    project.repository.mkdir(mode=0o700)
    live = project.live("app.db")
    with contextlib.closing(sqlite3.connect(live, isolation_level=None)) as connection:
        connection.execute("UPDATE ledger SET payload = randomblob(8000)")  # every page changes
    inspect = project.spec("inspect", temp_dirs=[str(project.root)], files=[str(live)])
    first, before, restore, state, retry = _in_namespace(
        [
            ("sh", f"mount -t tmpfs -o size=14m,mode=0700 tmpfs {_quote(str(project.repository))}"),
            ("child", project.spec("create")),
            # Every page changes again after the backup: the safety snapshot of the
            # live state must store as much again, which the repository has no room for.
            ("sh", f"sqlite3 {_quote(str(live))} 'UPDATE ledger SET payload = randomblob(8000)'"),
            ("child", inspect),
            ("child", project.spec("restore", snapshot="latest", force=True)),
            ("child", inspect),
            ("sh", f"mount -o remount,size=64m {_quote(str(project.repository))}"),
            ("child", project.spec("restore", snapshot="latest", force=True)),
        ]
    )
    assert first["ok"], first
    assert restore["ok"] is False and restore["error"] == "NoSpace", restore
    state = state["result"]
    assert state["fingerprints"][str(live)] == before["result"]["fingerprints"][str(live)], "the live database changed although the restore failed"
    assert state["temps"] == [] and state["problems"] == [], state
    assert state["snapshots"] == [first["result"]["snapshot"]], "a partial safety snapshot was published"
    assert retry["ok"], retry
    assert retry["result"]["safety"] is not None


def test_restore_into_a_full_target_fails_clearly_and_leaves_no_partial_file(tmpfs_allowed, tmp_path: Path) -> None:
    project = _big_project(tmp_path)
    snapshot_id = project.backup()
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("unrelated")
    restore, state = _in_namespace(
        [
            ("sh", f"mount -t tmpfs -o size=2m tmpfs {_quote(str(target))} && echo keep > {_quote(str(target / 'keep.txt'))}"),
            ("child", project.spec("restore", snapshot=snapshot_id, target=str(target), force=True)),
            ("child", project.spec("inspect", temp_dirs=[str(target), str(project.root)], files=[str(target / "app.db"), str(target / "keep.txt")])),
        ]
    )
    assert restore["ok"] is False and restore["error"] == "NoSpace", restore
    state = state["result"]
    assert state["temps"] == [] and state["missing"] == [str(target / "app.db")], state
    assert state["problems"] == []
