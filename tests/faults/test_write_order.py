"""T04: write order, from the I/O seam and from the system calls of one real run.

Invariant 1 needs, for every file the repository publishes: its bytes fsynced
before the name appears (link/rename), the directory fsynced after; and every
pack and index file durable (published and its directory fsynced) before the
manifest that references them is linked. The seam recording checks this for
create, incremental create, restore and clean; ``strace -f`` checks it on the
real system calls of a child process running a backup, so a write that bypassed
the seam would be caught too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

import backup
import faultkit
from backup import fsio

DURABLE_FOLDERS = ("packs", "index")


def _kind(path: str, repository: str) -> str:
    if not path.startswith(repository + "/"):
        return "outside"
    relative = path[len(repository) + 1 :]
    if relative.startswith("snapshots/") and relative.endswith(".json"):
        return "manifest"
    return relative.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "fsync", "publish", "create"
    path: str
    source: str = ""


def order_problems(events: list[Event], repository: str) -> list[str]:
    """Every violation of the publish protocol in a sequence of events."""
    problems = []
    fsynced: set[str] = set()
    unsynced_names: dict[str, str] = {}  # published name -> directory still to fsync
    for event in events:
        if event.kind == "fsync":
            fsynced.add(event.path)
            for name, directory in list(unsynced_names.items()):
                if directory == event.path:
                    del unsynced_names[name]
        elif event.kind == "publish":
            kind = _kind(event.path, repository)
            if event.source not in fsynced:
                problems.append(f"{event.path} published from {event.source}, which was never fsynced")
            if kind == "manifest":
                pending = [name for name in unsynced_names if _kind(name, repository) in DURABLE_FOLDERS]
                if pending:
                    problems.append(f"manifest {event.path} linked before the directory of {pending} was fsynced")
            unsynced_names[event.path] = os.path.dirname(event.path)
    problems += [f"{name} published but its directory was never fsynced" for name in unsynced_names]
    return problems


def manifest_after_data_problems(events: list[Event], repository: str) -> list[str]:
    """Every pack/index publish must come before the first manifest publish."""
    kinds = [(_kind(event.path, repository), index) for index, event in enumerate(events) if event.kind == "publish"]
    manifests = [index for kind, index in kinds if kind == "manifest"]
    if not manifests:
        return ["no manifest was published"]
    late = [events[index].path for kind, index in kinds if kind in DURABLE_FOLDERS and index > manifests[0]]
    return [f"{path} published after the manifest" for path in late]


# -- the seam ------------------------------------------------------------------------


def seam_events(sequence: list[tuple[str, str]]) -> list[Event]:
    """Turn a seam recording into events.

    The seam names the temp file when it is created and the destination when
    it is published; an fsync names its file, or else belongs to the temp
    created last (writes to one temp run in sequence), and a publish takes the newest unpublished
    temp of the destination's directory (temps are created beside their
    destination), or else of its parent (a pack is staged in packs/ while its
    frames are written, then published into its packs/xx/ folder).
    """
    events = []
    current_temp = ""
    temps: dict[str, list[str]] = {}
    for op, target in sequence:
        if op == "create_temp":
            current_temp = target
            temps.setdefault(os.path.dirname(target), []).append(target)
        elif op == "fsync":
            events.append(Event("fsync", target or current_temp))
        elif op == "fsync_dir":
            events.append(Event("fsync", target))
        elif op in ("link", "replace"):
            directory = os.path.dirname(target)
            candidates = temps.get(directory) or temps.get(os.path.dirname(directory), [])
            events.append(Event("publish", target, candidates.pop() if candidates else "(no temp)"))
    return events


def _recorded(action) -> list[tuple[str, str]]:
    plan = faultkit.RecordingPlan()
    with fsio.inject(plan):
        action()
    return plan.sequence


def test_seam_shows_create_publishes_data_then_index_then_manifest(project) -> None:
    repository = str(project.repository)
    first = seam_events(_recorded(lambda: backup.create_backup(project.settings)))
    faultkit.change_project(project, seed=1)
    second = seam_events(_recorded(lambda: backup.create_backup(project.settings)))
    for events in (first, second):
        assert order_problems(events, repository) == []
        assert manifest_after_data_problems(events, repository) == []
    assert sum(_kind(event.path, repository) == "packs" for event in second if event.kind == "publish") >= 1


def test_a_pack_found_already_published_has_its_folder_synced_before_it_is_indexed(project) -> None:
    """A writer killed after linking a pack but before syncing its folder leaves a
    name a power loss may still take; the next backup that finds it must sync it."""
    project.backup()
    for index_file in (project.repository / "index").iterdir():
        index_file.unlink()  # the next backup writes the same packs again, by name
    packs_before = sorted(path.relative_to(project.repository) for path in (project.repository / "packs").rglob("*") if path.is_file())
    sequence = _recorded(lambda: backup.create_backup(project.settings))
    repository = str(project.repository)
    pack_folders = {str(project.repository / folder.parent) for folder in packs_before}
    synced = [position for position, (op, target) in enumerate(sequence) if op == "fsync_dir" and target in pack_folders]
    refused = [position for position, (op, target) in enumerate(sequence) if op == "link" and "/packs/" in target]
    index_written = min(position for position, (op, target) in enumerate(sequence) if op in ("link", "replace") and _kind(target, repository) == "index")
    assert refused, "the backup must have met its packs already published for this test to mean anything"
    assert pack_folders <= {sequence[position][1] for position in synced if position < index_written}
    assert backup.verify_backup(project.settings, read_data=True).ok


def test_seam_shows_restore_and_clean_publish_only_fsynced_files(project) -> None:
    first = project.backup()
    faultkit.change_project(project, seed=2)
    project.backup()
    repository = str(project.repository)
    restore = seam_events(_recorded(lambda: backup.restore_backup(project.settings, first, force=True)))
    assert order_problems(restore, repository) == []
    assert any(_kind(event.path, repository) == "outside" for event in restore if event.kind == "publish"), "the plain file is installed by rename"
    clean = seam_events(_recorded(lambda: backup.clean_old_backups(project.settings, keep_last=1)))
    assert order_problems(clean, repository) == []


def test_order_check_fails_on_a_manifest_linked_before_its_pack_directory_was_fsynced() -> None:
    """Negative control: the checks reject the orders a careless writer would use."""
    repository = "/r"
    careless = [
        Event("fsync", "/r/packs/ab/.dbkeep-tmp-1"),
        Event("publish", "/r/packs/ab/abcd", "/r/packs/ab/.dbkeep-tmp-1"),
        Event("fsync", "/r/snapshots/.dbkeep-tmp-2"),
        Event("publish", "/r/snapshots/20250101T000000Z-0000.json", "/r/snapshots/.dbkeep-tmp-2"),
        Event("fsync", "/r/snapshots"),
        Event("publish", "/r/index/ef01", "/r/index/.dbkeep-tmp-3"),
    ]
    problems = order_problems(careless, repository)
    assert any("linked before the directory" in problem for problem in problems)
    assert any("never fsynced" in problem for problem in problems)
    assert manifest_after_data_problems(careless, repository) == ["/r/index/ef01 published after the manifest"]


# -- strace ----------------------------------------------------------------------------

SYSCALL = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
FD_PATH = re.compile(r"^\d+<(.*)>$")


def strace_lines(log: str) -> list[tuple[str, str, str, int]]:
    """(pid, syscall, arguments, result) with interrupted calls stitched back together."""
    unfinished: dict[str, str] = {}
    calls = []
    for line in log.splitlines():
        pid, _, rest = line.partition(" ")
        rest = rest.lstrip()
        if rest.endswith("<unfinished ...>"):
            unfinished[pid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        if rest.startswith("<..."):
            rest = unfinished.pop(pid, "") + rest.split("resumed>", 1)[1]
        match = SYSCALL.match(f"{pid} {rest}")
        if match:
            calls.append((match.group(1), match.group(2), match.group(3), int(match.group(4))))
    return calls


def strace_events(log: str) -> tuple[list[Event], list[tuple[str, str]]]:
    """Events (fsync/publish) and every file created with O_CREAT: (path, mode)."""
    events = []
    created = []
    for _pid, name, arguments, result in strace_lines(log):
        if result < 0:
            continue
        if name in ("fsync", "fdatasync"):
            match = FD_PATH.match(arguments.split(",")[0].strip())
            if match:
                events.append(Event("fsync", match.group(1)))
        elif name in ("link", "linkat", "rename", "renameat", "renameat2"):
            paths = QUOTED.findall(arguments)
            if len(paths) >= 2:
                events.append(Event("publish", paths[1], paths[0]))
        elif name == "openat" and "O_CREAT" in arguments:
            paths = QUOTED.findall(arguments)
            mode = arguments.rsplit(",", 1)[-1].strip()
            created.append((paths[0] if paths else "?", mode))
    return events, created


def run_under_strace(project: faultkit.Project, spec: dict, log: Path) -> faultkit.ChildResult:
    syscalls = "openat,write,fsync,fdatasync,rename,renameat,renameat2,link,linkat"
    return faultkit.run_child(spec, prefix=["strace", "-f", "-y", "-qq", "-o", str(log), "-e", f"trace={syscalls}"])


needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed (Debian package strace)")


@needs_strace
def test_strace_of_a_real_backup_shows_every_pack_and_index_durable_before_the_manifest(project, tmp_path: Path) -> None:
    project.backup()
    faultkit.change_project(project, seed=5)
    log = tmp_path / "strace.log"
    result = run_under_strace(project, project.spec("create"), log)
    assert result.ok, result.describe()
    events, _created = strace_events(log.read_text())
    repository = str(project.repository)
    published = [event for event in events if event.kind == "publish" and _kind(event.path, repository) != "outside"]
    assert any(_kind(event.path, repository) == "packs" for event in published), "the run stored no pack"
    assert order_problems([event for event in events if event.path.startswith(repository)], repository) == []
    assert manifest_after_data_problems(events, repository) == []


@needs_strace
def test_strace_check_fails_on_a_run_whose_manifest_skipped_the_protocol(project, tmp_path: Path) -> None:
    """Negative control: a manifest written in place (no temp, no fsync) by a real process."""
    log = tmp_path / "strace.log"
    snapshots = project.repository / "snapshots"
    script = (
        f"import os; os.makedirs({str(snapshots)!r}); "
        f"open({str(snapshots / 'x.tmp')!r}, 'w').write('{{}}'); "
        f"os.rename({str(snapshots / 'x.tmp')!r}, {str(snapshots / '20250101T000000Z-0000.json')!r})"
    )
    completed = subprocess.run(["strace", "-f", "-y", "-qq", "-o", str(log), "-e", "trace=openat,fsync,rename,link,linkat", "python3", "-c", script], check=False)
    assert completed.returncode == 0
    events, _created = strace_events(log.read_text())
    problems = order_problems(events, str(project.repository))
    assert any("never fsynced" in problem for problem in problems), problems


# -- simulated power loss --------------------------------------------------------------


def power_loss_images(sequence: list[tuple[str, str]], *, rng) -> list[tuple[int, set[str]]]:
    """For a crash before each operation: the names a power loss may leave behind.

    A published name survives a power loss for certain once its directory was
    fsynced afterwards, and may survive before that; its bytes survive only if
    they were fsynced before it was published (which order_problems checks). So
    at each point the image holds every certainly durable name plus a random
    subset of the merely visible ones (the approach of SQLite's test6.c).
    """
    events = seam_events(sequence)
    images = []
    visible: list[str] = []
    durable: set[str] = set()
    for position, event in enumerate(events):
        maybe = [name for name in visible if name not in durable]
        images.append((position, durable | {name for name in maybe if rng.random() < 0.5}))
        if event.kind == "publish":
            visible.append(event.path)
        else:
            durable |= {name for name in visible if os.path.dirname(name) == event.path}
    images.append((len(events), set(visible)))
    return images


def _image(final: Path, template: Path, names: set[str], directory: Path) -> Path:
    """The repository as the power loss left it: the template plus the surviving new files."""
    image = directory / "repository"
    shutil.copytree(template, image)
    for name in names:
        relative = Path(name).relative_to(final)
        if not (final / relative).exists():
            continue  # removed again by the run itself (its lock record)
        (image / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(final / relative, image / relative)
    return image


@pytest.mark.parametrize("incremental", [False, True], ids=["first-backup", "incremental"])
def test_power_loss_at_any_point_of_a_backup_leaves_every_visible_snapshot_restorable(tmp_path: Path, incremental: bool) -> None:
    import random

    seed = int(os.environ.get("DBKEEP_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    project = faultkit.build_project(tmp_path / "p", rows=60, plain_bytes=4000)
    if incremental:
        project.backup()
        faultkit.change_project(project, seed=83)
    template = tmp_path / "template-repository"
    if project.repository.exists():
        shutil.copytree(project.repository, template)
    else:
        template.mkdir()
    contents = faultkit.source_digests(project)
    plan = faultkit.RecordingPlan()
    with fsio.inject(plan):
        snapshot_id = backup.create_backup(project.settings).snapshot.id
    project.expected[snapshot_id] = contents
    campaign = faultkit.Campaign()
    for position, names in power_loss_images(plan.sequence, rng=rng):
        directory = tmp_path / f"crash-{position}"
        directory.mkdir()
        image = _image(project.repository, template, {name for name in names if name.startswith(str(project.repository) + "/")}, directory)
        copy = faultkit.Project(root=project.root, repository=image, databases=project.databases, plain_files=project.plain_files, expected=project.expected)
        campaign.trials += 1
        campaign.faults += 1
        if not (image / "config.json").exists() or not (image / "snapshots").exists():
            continue  # nothing of the repository survived: nothing to check
        problems = faultkit.read_data_problems(copy) + faultkit.snapshots_restore_problems(copy, directory)
        if problems:
            campaign.failures.append(f"{faultkit.seed_note(seed)} power loss before event {position}: {problems}")
    campaign.finish(f"T04 simulated power loss ({'incremental' if incremental else 'first backup'})")


def test_power_loss_oracle_fails_when_a_manifest_survives_without_its_pack(tmp_path: Path) -> None:
    """Negative control: an image holding the manifest but not the new pack is caught."""
    project = faultkit.build_project(tmp_path / "p", rows=60, plain_bytes=4000)
    project.backup()
    faultkit.change_project(project, seed=84)
    template = tmp_path / "template-repository"
    shutil.copytree(project.repository, template)
    contents = faultkit.source_digests(project)
    plan = faultkit.RecordingPlan()
    with fsio.inject(plan):
        snapshot_id = backup.create_backup(project.settings).snapshot.id
    project.expected[snapshot_id] = contents
    published = [event.path for event in seam_events(plan.sequence) if event.kind == "publish"]
    careless = {name for name in published if "/packs/" not in name}
    (tmp_path / "image").mkdir()
    image = _image(project.repository, template, careless, tmp_path / "image")
    copy = faultkit.Project(root=project.root, repository=image, databases=project.databases, plain_files=project.plain_files, expected=project.expected)
    assert faultkit.read_data_problems(copy) != []
