"""T21: file modes under umask 0 and 022.

Repository folders are 0700 and repository files 0600 whatever the umask, and
no file in the repository is ever created readable by others, not even for a
moment (checked on the openat/mkdir system calls of a real run under strace).
A restore keeps the live files' mode and owner; a file restored where none
existed gets the mode it was backed up with.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest

import backup
import faultkit
from faultkit import Project


def _modes(repository: Path) -> list[str]:
    """Every folder that is not 0700 and every file that is not 0600 in the repository."""
    wrong = []
    for current, folders, files in os.walk(repository):
        for name in folders + files:
            path = Path(current) / name
            mode = stat.S_IMODE(path.lstat().st_mode)
            expected = 0o700 if path.is_dir() else 0o600
            if mode != expected:
                wrong.append(f"{path.relative_to(repository)} is {mode:o}")
    mode = stat.S_IMODE(repository.stat().st_mode)
    return wrong + ([f". is {mode:o}"] if mode != 0o700 else [])


def _run_everything(driver, project: Project, umask: int) -> None:
    """Backup, incremental backup, restore over the live files (safety snapshot), clean."""
    for step in ("create", "change", "create", "restore", "clean"):
        if step == "change":
            faultkit.change_project(project, seed=80)
            continue
        values = {"snapshot": "latest", "force": True} if step == "restore" else {"keep_last": 2} if step == "clean" else {}
        outcome = driver.run({**project.spec(step, **values), "umask": umask})
        assert faultkit.completed(outcome), outcome


@pytest.mark.parametrize("umask", [0o000, 0o022], ids=["umask-000", "umask-022"])
def test_repository_folders_are_0700_and_files_0600_whatever_the_umask(driver, project: Project, umask: int) -> None:
    _run_everything(driver, project, umask)
    # keep_last=2 keeps both regular snapshots; the restore's safety snapshot is kept by its own rule.
    assert len(faultkit.snapshot_ids(project)) == 3
    assert _modes(project.repository) == []


def test_mode_check_fails_on_a_group_readable_file(project: Project) -> None:
    """Negative control."""
    project.backup()
    pack = next(path for path in (project.repository / "packs").rglob("*") if path.is_file())
    os.chmod(pack, 0o640)
    assert _modes(project.repository) == [f"{pack.relative_to(project.repository)} is 640"]


OPENAT = re.compile(r'^\d+\s+openat\([^,]+, "([^"]+)", ([A-Z_|]+)(?:, (0\d+))?\) = (-?\d+)')
MKDIR = re.compile(r'^\d+\s+mkdir(?:at)?\((?:[^,]+, )?"([^"]+)", (0\d+)\) = (-?\d+)')


def creations_open_to_others(log: str, inside: Path) -> list[str]:
    """Files or folders under ``inside`` a system call created with group/other bits."""
    created: set[str] = set()
    found = []
    for line in log.splitlines():
        match = OPENAT.match(line)
        if match and "O_CREAT" in match.group(2) and int(match.group(4)) >= 0:
            path, mode = match.group(1), int(match.group(3) or "0", 8)
            if path.startswith(str(inside)) and mode & 0o077 and path not in created:
                found.append(f"openat {path} mode {mode:o}")
            created.add(path)
            continue
        match = MKDIR.match(line)
        if match and int(match.group(3)) >= 0 and match.group(1).startswith(str(inside)) and int(match.group(2), 8) & 0o077:
            found.append(f"mkdir {match.group(1)} mode {match.group(2)}")
    return found


needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (Debian package strace)")


@needs_strace
@pytest.mark.parametrize("umask", [0o000, 0o022], ids=["umask-000", "umask-022"])
def test_no_repository_file_is_ever_created_readable_by_others(project: Project, tmp_path: Path, umask: int) -> None:
    project.backup()
    faultkit.change_project(project, seed=81)
    found = []
    for number, spec in enumerate([project.spec("create"), project.spec("restore", snapshot="latest", force=True)]):
        log = tmp_path / f"strace-{number}.log"
        result = faultkit.run_child({**spec, "umask": umask}, prefix=["strace", "-f", "-qq", "-o", str(log), "-e", "trace=openat,mkdir,mkdirat"])
        assert result.ok, result.describe()
        found += creations_open_to_others(log.read_text(), project.repository)
    assert found == []


def test_creation_check_fails_on_a_world_readable_create() -> None:
    """Negative control: a create with 0644 of a new repository file is reported."""
    log = '12 openat(AT_FDCWD, "/r/packs/ab/x", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0644) = 3\n12 mkdir("/r/index", 0755) = 0\n'
    assert creations_open_to_others(log, Path("/r")) == ["openat /r/packs/ab/x mode 644", "mkdir /r/index mode 0755"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to other owners needs root")
def test_restore_keeps_the_mode_and_owner_of_each_live_file(project: Project) -> None:
    snapshot_id = project.backup()
    faultkit.change_project(project, seed=82)
    owners = {}
    for number, relative in enumerate(project.paths):
        path = project.live(relative)
        os.chmod(path, [0o640, 0o604, 0o660][number % 3])
        os.chown(path, 1000 + number, 2000 + number)
        owners[relative] = (stat.S_IMODE(path.stat().st_mode), path.stat().st_uid, path.stat().st_gid)
    backup.restore_backup(project.settings, snapshot_id, force=True)
    for relative, owner in owners.items():
        status = project.live(relative).stat()
        assert (stat.S_IMODE(status.st_mode), status.st_uid, status.st_gid) == owner, relative
    for relative, digest in project.expected[snapshot_id].items():
        assert faultkit.content_digest(project.live(relative), database=relative in project.databases) == digest


def test_restore_into_an_empty_target_uses_the_recorded_modes(project: Project, tmp_path: Path) -> None:
    os.chmod(project.live(project.plain_files[0]), 0o640)
    snapshot_id = project.backup()
    target = tmp_path / "target"
    backup.restore_backup(project.settings, snapshot_id, target=target)
    assert stat.S_IMODE((target / project.plain_files[0]).stat().st_mode) == 0o640
