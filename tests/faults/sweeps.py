"""Oracles after an operation that failed on an injected errno (disk full, I/O error).

Shared by the disk-full and I/O-error sweeps: what must hold after a backup or
a restore was stopped by a failing system call, and how the next run must go.
"""

from __future__ import annotations

from pathlib import Path

import backup
import faultkit
from faultkit import FaultTrial, Project

#: Seam operations of restore that only happen before any live file is touched.
BEFORE_APPLY_OPS = {"create_temp", "write", "fsync", "close", "link", "mkdir"}
#: Folders whose files make up snapshots; nothing may be published there after a failure.
DATA_FOLDERS = ("snapshots", "packs", "index")


def published_after_failure(project: Project, trial: FaultTrial) -> list[str]:
    """Repository data files linked or renamed into place after the injected failure."""
    repository = str(project.repository) + "/"
    return [
        target
        for op, target in trial.after_fault()
        if op in ("link", "replace") and target.startswith(repository) and target[len(repository) :].split("/", 1)[0] in DATA_FOLDERS
    ]


def clear_error(trial: FaultTrial) -> list[str]:
    """A failure must be an expected one (the child exits 1 with an error class);
    a full disk must say so."""
    if trial.succeeded:
        return []
    if trial.error is None:
        return [f"failed without an error record: {trial.outcome}"]
    message = str(trial.output.get("message", ""))
    if trial.errno_name != "ENOSPC" or trial.error == "NoSpace":
        return []
    # Renaming a restored file into place is the one step whose ENOSPC comes back
    # as "cannot put restored file in place ...: No space left on device".
    if trial.op == "replace" and ("ENOSPC" in message or "no space left" in message.lower()):
        return []
    return [f"a full disk was reported as {trial.error}: {message}"]


def create_checker(*, pending: dict[str, str], live_before: dict):
    """The checks after a backup that hit an injected errno."""

    def check(project: Project, scratch: Path, trial: FaultTrial) -> list[str]:
        problems = clear_error(trial)
        if not trial.succeeded:
            problems += [f"{name} was published after the failure" for name in published_after_failure(project, trial)]
        new = [snapshot_id for snapshot_id in snapshot_ids_if_any(project) if snapshot_id not in project.expected]
        if new and not trial.succeeded:
            problems.append(f"a failed backup left snapshot {new}")
        leftovers = faultkit.temp_leftovers(project.root)
        if leftovers and not (trial.persistent and trial.op == "unlink"):
            problems.append(f"temp files left after the failure: {leftovers}")
        if faultkit.live_fingerprints(project) != live_before:
            problems.append("a live file changed")
        if (project.repository / "config.json").exists():
            problems += faultkit.read_data_problems(project)
        problems += next_backup_problems(project, scratch, pending)
        return problems

    return check


def snapshot_ids_if_any(project: Project) -> list[str]:
    if not (project.repository / "config.json").exists():
        return []
    return faultkit.snapshot_ids(project)


def next_backup_problems(project: Project, scratch: Path, pending: dict[str, str]) -> list[str]:
    try:
        report = backup.create_backup(project.settings)
    except backup.BackupError as error:
        return [f"the next backup failed: {type(error).__name__}: {error}"]
    project.expected[report.snapshot.id] = pending
    problems = [f"temp file left after the next run: {path}" for path in faultkit.temp_leftovers(project.repository)]
    problems += faultkit.read_data_problems(project)
    problems += faultkit.snapshots_restore_problems(project, scratch, pending=pending)
    return problems


def create_template(tmp_path: Path, *, incremental: bool) -> tuple[Project, dict[str, str], dict]:
    project = faultkit.build_project(tmp_path / "template", rows=80, plain_bytes=6000)
    if incremental:
        project.backup()
        faultkit.change_project(project, seed=21)
    live = faultkit.live_fingerprints(project)
    return project, faultkit.source_digests(project), live


def restore_checker(*, target_id: str, restored: dict[str, str], live: dict[str, str], live_before: dict):
    """The checks after a restore over the live project that hit an injected errno."""

    def check(project: Project, scratch: Path, trial: FaultTrial) -> list[str]:
        problems = clear_error(trial)
        if not trial.succeeded:
            problems += [f"{name} was published after the failure" for name in published_after_failure(project, trial)]
        now = faultkit.live_fingerprints(project)
        if not trial.succeeded and trial.op in BEFORE_APPLY_OPS and now != live_before:
            problems.append(f"the live files changed although the restore failed before writing ({trial.op})")
        changed = []
        for relative in project.paths:
            digest = faultkit.content_digest(project.live(relative), database=relative in project.databases)
            if digest not in (live[relative], restored[relative]):
                problems.append(f"live {relative} is neither old nor new")
            if digest != live[relative]:
                changed.append(relative)
        safety = [snapshot_id for snapshot_id in snapshot_ids_if_any(project) if snapshot_id not in project.expected]
        if changed and not safety:
            problems.append(f"{changed} changed without a safety snapshot")
        leftovers = faultkit.temp_leftovers(project.root)
        if leftovers and not (trial.persistent and trial.op == "unlink"):
            problems.append(f"temp files left after the failure: {leftovers}")
        problems += faultkit.read_data_problems(project)
        problems += faultkit.snapshots_restore_problems(project, scratch, pending=live)
        try:
            backup.restore_backup(project.settings, target_id, force=True)
        except backup.BackupError as error:
            return problems + [f"the restore after the fault failed: {type(error).__name__}: {error}"]
        for relative in project.paths:
            if faultkit.content_digest(project.live(relative), database=relative in project.databases) != restored[relative]:
                problems.append(f"after the second restore {relative} does not hold the snapshot")
        problems += [f"temp file left after the second restore: {path}" for path in faultkit.temp_leftovers(project.root)]
        return problems

    return check


def restore_template(tmp_path: Path) -> tuple[Project, str, dict[str, str], dict[str, str], dict]:
    project = faultkit.build_project(tmp_path / "template", rows=80, plain_bytes=6000)
    target_id = project.backup()
    faultkit.change_project(project, seed=22)
    live_before = faultkit.live_fingerprints(project)
    return project, target_id, project.expected[target_id], faultkit.source_digests(project), live_before
