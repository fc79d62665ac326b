"""T24: a listing error never looks like an empty repository (restic#4612).

The snapshots folder made unreadable (EACCES for a real root process whose
DAC capabilities are dropped with setpriv), EIO
from the seam at every listdir of clean, the folder replaced by a file, and by
a symlink to an empty folder: clean must abort and delete nothing, and every
snapshot must still restore afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import faultkit
from faultkit import FaultTrial, Project

#: Root without the capabilities that let it ignore file modes: a mode-000
#: folder then refuses it with EACCES, as it would any user. (Switching to an
#: unprivileged uid instead would also lock it out of the interpreter and the
#: test's own private temp folders.)
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def _template(tmp_path: Path) -> Project:
    project = faultkit.build_project(tmp_path / "template", rows=40, plain_bytes=3000)
    for seed in range(3):
        project.backup()
        faultkit.change_project(project, seed=seed + 50)
    return project


def _setpriv_works(prefix: list[str], tmp_path: Path) -> str | None:
    if shutil.which("setpriv") is None:
        return "setpriv is not installed (util-linux)"
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o000)
    completed = subprocess.run([*prefix, "ls", str(probe)], capture_output=True, text=True, check=False)
    probe.rmdir()
    if os.geteuid() != 0:
        return "these tests drop root's privileges; they need root"
    return None if completed.returncode != 0 and "denied" in completed.stderr else f"setpriv did not take DAC access away: {completed.stderr}"


def _assert_clean_refused_and_nothing_deleted(project: Project, result: faultkit.ChildResult, before: dict, scratch: Path) -> None:
    assert result.returncode == 1 and result.error in ("StorageError", "PruneRefused"), result.describe()
    assert "Traceback" not in result.stderr
    assert faultkit.tree_state(project.repository) == before, "clean deleted or changed something"
    assert faultkit.snapshots_restore_problems(project, scratch) == []


def test_unreadable_snapshots_folder_makes_clean_abort_and_delete_nothing(tmp_path: Path) -> None:
    reason = _setpriv_works(NO_DAC, tmp_path)
    if reason:
        pytest.skip(reason)
    project = _template(tmp_path)
    snapshots = project.repository / "snapshots"
    before = faultkit.tree_state(project.repository)
    os.chmod(snapshots, 0o000)
    try:
        result = faultkit.run_child(project.spec("clean", keep_last=1), prefix=NO_DAC)
    finally:
        os.chmod(snapshots, 0o700)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    _assert_clean_refused_and_nothing_deleted(project, result, before, scratch)
    assert "permission denied" in result.message


def test_snapshots_folder_replaced_by_a_file_makes_clean_abort_and_delete_nothing(tmp_path: Path) -> None:
    project = _template(tmp_path)
    snapshots = project.repository / "snapshots"
    aside = tmp_path / "snapshots-aside"
    snapshots.rename(aside)
    snapshots.write_text("not a folder")
    before = faultkit.tree_state(project.repository)
    result = faultkit.run_child(project.spec("clean", keep_last=1))
    assert result.returncode == 1 and result.error == "StorageError", result.describe()
    assert faultkit.tree_state(project.repository) == before
    snapshots.unlink()
    aside.rename(snapshots)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert faultkit.snapshots_restore_problems(project, scratch) == []


def test_snapshots_folder_swapped_for_a_link_to_an_empty_folder_does_not_wipe_the_packs(tmp_path: Path) -> None:
    project = _template(tmp_path)
    snapshots = project.repository / "snapshots"
    aside = tmp_path / "snapshots-aside"
    snapshots.rename(aside)
    empty = tmp_path / "empty"
    empty.mkdir()
    snapshots.symlink_to(empty)
    before = faultkit.tree_state(project.repository)
    result = faultkit.run_child(project.spec("clean", keep_last=1))
    assert result.returncode == 1, result.describe()
    assert faultkit.tree_state(project.repository) == before, "clean deleted data no listed snapshot needed, but the listing was wrong"
    snapshots.unlink()
    aside.rename(snapshots)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert faultkit.snapshots_restore_problems(project, scratch) == []


def _listdir_checker(project: Project, scratch: Path, trial: FaultTrial) -> list[str]:
    """After EIO from one listing: clean failed, and deleted nothing if it failed before deleting."""
    problems = []
    if trial.succeeded:
        # Only the last listing (the sweep of leftover temp files after every
        # deletion is done) may fail without failing clean, and it must say so.
        if not any("leftover temporary files could not be removed" in warning for warning in (trial.output.get("result") or {}).get("warnings", [])):
            return ["clean succeeded although a listing failed, and did not warn"]
        return faultkit.read_data_problems(project) + faultkit.snapshots_restore_problems(project, scratch)
    refused_listing = trial.error == "PruneRefused" and "cannot list" in str(trial.output.get("message"))
    if trial.error != "StorageError" and not refused_listing:
        problems.append(f"a listing failure was reported as {trial.error}: {trial.output.get('message')}")
    repository = str(project.repository) + "/"
    before_failure = trial.sequence[: len(trial.sequence) - len(trial.after_fault())]
    deleted_before = [target for op, target in before_failure if op == "unlink" and target.startswith(repository) and "/locks/" not in target and ".dbkeep-tmp-" not in target]
    remaining = faultkit.snapshot_ids(project)
    if not deleted_before and len(remaining) != 3:
        problems.append(f"a listing failed before any deletion, yet snapshots are gone: {remaining}")
    problems += faultkit.read_data_problems(project)
    problems += faultkit.snapshots_restore_problems(project, scratch)
    return problems


def test_eio_at_every_listing_of_clean_aborts_without_deleting_what_it_could_not_see(driver, tmp_path: Path) -> None:
    campaign = faultkit.fault_sweep(
        driver,
        tmp_path,
        _template(tmp_path),
        lambda project: project.spec("clean", keep_last=1),
        _listdir_checker,
        ops=("listdir",),
        errno_name="EIO",
        persistent=False,
    )
    campaign.finish("T24 EIO at every listdir of clean")


def test_listing_oracle_fails_when_clean_treats_an_unreadable_folder_as_empty(tmp_path: Path) -> None:
    """Negative control: deleting a snapshot's packs (what a wipe does) is seen by the same checks."""
    project = _template(tmp_path)
    before = faultkit.tree_state(project.repository)
    for pack in (project.repository / "packs").rglob("*"):
        if pack.is_file():
            pack.unlink()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    wiped = faultkit.ChildResult(returncode=1, output={"ok": False, "error": "StorageError"}, stdout="", stderr="")
    with pytest.raises(AssertionError):
        _assert_clean_refused_and_nothing_deleted(project, wiped, before, scratch)
