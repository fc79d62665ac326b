"""T11, T12, T13: lock races, stale and foreign locks, lost locks, concurrent backups.

Real processes throughout: 24 forked processes released together by a pipe
barrier race for the repository lock (a quarter of them as shared readers),
each proving inside its lock that no conflicting holder is inside too (an
O_EXCL marker file); four backups of one project start together; a backup
paused at ``after_chunks`` (FIFO handshake, no sleeping) holds its lock while
clean and stale-lock breaking run, and loses it to a forced unlock.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import backup
import faultkit
from backup import fsio, locking
from backup.storage import LocalStorage
from faultkit import Project


def _storage(project: Project) -> LocalStorage:
    return LocalStorage(project.repository)


def _lock_files(project: Project) -> list[str]:
    return sorted(name for name in os.listdir(project.repository / "locks") if name != "guard")


# -- races -----------------------------------------------------------------------------


def _race(driver, project: Project, tmp_path: Path, *, count: int, rounds: int) -> None:
    project.backup()
    markers = tmp_path / "markers"
    markers.mkdir()
    each = {"op": "lock_cycle", "repository": str(project.repository), "markers": str(markers), "rounds": rounds, "shared_every": 4, "wait": 600.0}
    outcome = driver.run({"op": "parallel", "count": count, "each": each}, kill_after=900)
    assert faultkit.completed(outcome), outcome
    outputs = outcome["output"]["result"]["outputs"]
    assert all(output["code"] == 0 for output in outputs), outputs
    overlaps = [overlap for output in outputs for overlap in output["result"]["overlaps"]]
    assert overlaps == []
    assert sum(output["result"]["entered"] for output in outputs) == count * rounds
    assert _lock_files(project) == [] and os.listdir(markers) == []
    assert faultkit.temp_leftovers(project.repository) == []
    faultkit.tally(f"T13 lock race ({count} processes x {rounds} rounds)", trials=count * rounds, faults=0)


def test_twenty_four_processes_racing_for_the_lock_never_overlap(driver, project: Project, tmp_path: Path) -> None:
    _race(driver, project, tmp_path, count=24, rounds=1)


@pytest.mark.slow
def test_forty_processes_racing_for_the_lock_three_times_never_overlap(driver, project: Project, tmp_path: Path) -> None:
    _race(driver, project, tmp_path, count=40, rounds=3)


def test_overlap_check_fails_when_two_holders_are_inside_at_once(tmp_path: Path) -> None:
    """Negative control: the marker file catches a second holder (simulated without the lock)."""
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "writer").write_text("another holder is inside")
    project = faultkit.build_project(tmp_path / "p", rows=5)
    project.backup()
    result = faultkit.run_child({"op": "lock_cycle", "repository": str(project.repository), "markers": str(markers), "rounds": 1})
    assert result.ok
    assert result.output["result"]["overlaps"] == ["two exclusive holders at once"]


def test_four_concurrent_backups_all_succeed_and_every_snapshot_restores(driver, project: Project, scratch: Path) -> None:
    project.backup()
    faultkit.change_project(project, seed=60)
    contents = faultkit.source_digests(project)
    settings = {**project.settings_map, "lock_wait": 300}
    outcome = driver.run({"op": "parallel", "count": 4, "each": {"op": "create", "settings": settings}})
    outputs = outcome["output"]["result"]["outputs"]
    assert all(output["code"] == 0 for output in outputs), outputs
    for output in outputs:
        project.expected[output["result"]["snapshot"]] = contents
    assert len(faultkit.snapshot_ids(project)) == 5
    assert faultkit.read_data_problems(project) == []
    assert faultkit.snapshots_restore_problems(project, scratch) == []
    assert faultkit.temp_leftovers(project.root) == []
    faultkit.tally("T11 concurrent backups (4 processes)", trials=4, faults=0)


# -- stale, live, foreign and garbage locks -----------------------------------------------


def _record(**changes) -> bytes:
    record = locking.LockRecord.for_this_process(exclusive=True, purpose="planted by a test")
    body = {**json.loads(record.to_json()), **changes}
    return json.dumps(body).encode()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _plant(project: Project, data: bytes, name: str = "exclusive") -> Path:
    path = project.repository / "locks" / name
    path.write_bytes(data)
    return path


def test_lock_of_a_dead_process_on_this_host_is_broken_and_explained(project: Project) -> None:
    project.backup()
    _plant(project, _record(pid=_dead_pid()))
    report = backup.create_backup(project.settings)
    assert any("stale" in warning and "no longer exists" in warning for warning in report.warnings), report.warnings
    assert _lock_files(project) == []


def test_lock_whose_pid_now_belongs_to_a_younger_process_is_broken(project: Project) -> None:
    project.backup()
    with subprocess.Popen(["cat"], stdin=subprocess.PIPE) as live:
        start = locking._process_start_ticks(live.pid)
        _plant(project, _record(pid=live.pid, process_start=(start or 0) - 1000))
        report = backup.create_backup(project.settings)
        live.stdin.close()
    assert any("stale" in warning for warning in report.warnings)


def test_lock_of_a_live_process_is_respected(project: Project) -> None:
    project.backup()
    with subprocess.Popen(["cat"], stdin=subprocess.PIPE) as live:
        planted = _plant(project, _record(pid=live.pid, process_start=locking._process_start_ticks(live.pid)))
        before = planted.read_bytes()
        with pytest.raises(backup.RepositoryLocked, match=f"pid {live.pid}"):
            backup.create_backup(project.settings)
        assert locking.remove_locks(_storage(project)) == []
        live.stdin.close()
    assert planted.read_bytes() == before


def test_lock_from_another_host_is_never_broken_automatically(project: Project) -> None:
    project.backup()
    planted = _plant(project, _record(host="another-host.example", pid=_dead_pid()))
    before = planted.read_bytes()
    with pytest.raises(backup.RepositoryLocked, match="another-host.example"):
        backup.create_backup(project.settings)
    with pytest.raises(backup.RepositoryLocked):
        backup.clean_old_backups(project.settings, keep_last=1)
    assert locking.remove_locks(_storage(project)) == []
    assert planted.read_bytes() == before
    assert len(faultkit.snapshot_ids(project)) == 1


GARBAGE = {
    "empty": b"",
    "binary": bytes(range(256)),
    "json-list": b"[1, 2, 3]",
    "wrong-types": json.dumps({"exclusive": "yes", "host": 3, "pid": "x", "user": None, "since": 1, "heartbeat": 2, "purpose": 3, "token": 4}).encode(),
    "huge-pid": None,  # filled in below: a pid no process can have
    "negative-pid": None,
    "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_lock_file_is_handled_without_a_traceback(driver, project: Project, kind: str) -> None:
    project.backup()
    data = GARBAGE[kind]
    if kind == "huge-pid":
        data = _record(pid=10**30, host=socket.gethostname())
    if kind == "negative-pid":
        data = _record(pid=-1, host=socket.gethostname())
    _plant(project, data)
    outcome = driver.run(project.spec("create"))
    assert outcome["status"] == "exited" and outcome["code"] == 0, outcome
    assert any("unreadable lock record" in warning for warning in outcome["output"]["result"]["warnings"])
    assert _lock_files(project) == []


def test_lock_name_taken_by_a_folder_gives_a_clear_error(project: Project) -> None:
    project.backup()
    (project.repository / "locks" / "exclusive").mkdir()
    result = faultkit.run_child(project.spec("create"))
    assert result.returncode == 1 and result.error in ("StorageError", "RepositoryLocked"), result.describe()


def test_failed_lock_refresh_marks_the_lock_lost_and_blocks_publishing(project: Project) -> None:
    project.backup()
    with locking.acquire(_storage(project), exclusive=True, purpose="refresh test") as lock:
        with fsio.inject(fsio.FaultPlan(fail_op="create_temp", fail_errno=5, fail_at=1, persistent=True)):
            lock.refresh()
        with pytest.raises(backup.LockLost, match="cannot refresh"):
            lock.ensure_held()


# -- a paused backup ---------------------------------------------------------------------


@contextlib.contextmanager
def paused_backup(project: Project, tmp_path: Path, point: str = "after_chunks"):
    """Start a backup in a child that stops at ``point``; yields (process, resume)."""
    fifo = tmp_path / f"pause-{point}"
    os.mkfifo(fifo)
    os.mkfifo(f"{fifo}.resume")
    process = subprocess.Popen(
        faultkit.child_command(project.spec("create")),
        env=faultkit.child_env({"DBKEEP_PAUSE_AT": f"{point}:{fifo}"}),
        cwd=faultkit.REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    announce = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    pidfd = os.pidfd_open(process.pid)
    try:
        ready, _, _ = select.select([announce, pidfd], [], [], 120)
        assert announce in ready, f"the backup never reached {point}: {process.communicate()}"
        assert os.read(announce, 100) == f"{point}\n".encode()
        resumed = False

        def resume() -> faultkit.ChildResult:
            nonlocal resumed
            with open(f"{fifo}.resume", "w") as handle:
                handle.write("go\n")
            resumed = True
            stdout, stderr = process.communicate(timeout=120)
            return faultkit.ChildResult(returncode=process.returncode, output=faultkit._last_json(stdout), stdout=stdout, stderr=stderr)

        yield process, resume
    finally:
        os.close(announce)
        os.close(pidfd)
        if process.poll() is None:
            process.kill()
            process.wait()


def test_clean_and_stale_lock_breaking_leave_a_paused_backup_alone(project: Project, tmp_path: Path, scratch: Path) -> None:
    project.backup()
    faultkit.change_project(project, seed=61)
    contents = faultkit.source_digests(project)
    with paused_backup(project, tmp_path) as (process, resume):
        before = faultkit.tree_state(project.repository)
        clean = faultkit.run_child(project.spec("clean", keep_last=1))
        assert clean.error == "RepositoryLocked", clean.describe()
        assert locking.remove_locks(_storage(project)) == []
        assert faultkit.tree_state(project.repository) == before
        result = resume()
    assert result.ok, result.describe()
    project.expected[result.output["result"]["snapshot"]] = contents
    assert faultkit.read_data_problems(project) == []
    assert faultkit.snapshots_restore_problems(project, scratch) == []


def test_backup_whose_lock_was_removed_while_paused_aborts_before_publishing(project: Project, tmp_path: Path, scratch: Path) -> None:
    project.backup()
    faultkit.change_project(project, seed=62)
    with paused_backup(project, tmp_path) as (process, resume):
        removed = locking.remove_locks(_storage(project), include_live=True)
        assert len(removed) == 1
        result = resume()
    assert result.returncode == 1 and result.error == "LockLost", result.describe()
    assert "nothing was published" in result.message
    assert len(faultkit.snapshot_ids(project)) == 1
    assert faultkit.read_data_problems(project) == []
    assert faultkit.snapshots_restore_problems(project, scratch) == []
    assert faultkit.temp_leftovers(project.repository) == []
    faultkit.tally("T12 lock removed while paused", trials=1, faults=1)


def test_lost_lock_oracle_fails_when_the_paused_backup_keeps_its_lock(project: Project, tmp_path: Path) -> None:
    """Negative control: without the forced unlock the same backup publishes its snapshot."""
    project.backup()
    faultkit.change_project(project, seed=63)
    with paused_backup(project, tmp_path) as (process, resume):
        result = resume()
    assert result.ok and len(faultkit.snapshot_ids(project)) == 2
