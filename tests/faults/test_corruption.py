"""T08, T09, T16: seeded damage to packs, index files, manifests and the config.

Each trial copies a repository of three snapshots, applies one seeded mutation
(a flipped bit, a truncation, a deletion, a swap of the file for a directory or
a symlink, or another file's content under this file's name) and then checks:

- read-data verification reports it (every mutation but a deleted manifest,
  which is indistinguishable from a removed snapshot), naming the snapshot,
  file and chunk or pack; for missing data exactly the snapshots that need it;
- a snapshot verification calls damaged is never restored: restoring it over the
  live project fails before touching it (SHA-256 and mtime unchanged, no temp
  file, no safety snapshot), and every other snapshot restores to its content;
- clean refuses and deletes nothing while a kept snapshot needs missing data;
- a new backup of the same data stores a lost chunk again.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import backup
import faultkit
from backup import pack as packformat
from backup.repository import pack_name
from faultkit import Project

TARGETS = ("pack", "index", "manifest", "config")
KINDS = ("bitflip", "truncate", "delete", "directory", "symlink", "swap")
#: Mutations after which the bytes a snapshot needs are gone, not just altered.
LOSING = {"truncate", "delete", "directory", "symlink", "swap"}


@dataclass(frozen=True, slots=True)
class Mutation:
    target: str
    kind: str
    path: str  # relative to the repository
    detail: str = ""

    def describe(self) -> str:
        return f"{self.kind} of {self.target} {self.path} {self.detail}".strip()


def _files(repository: Path, target: str) -> list[Path]:
    if target == "config":
        return [repository / "config.json"]
    folder = {"pack": "packs", "index": "index", "manifest": "snapshots"}[target]
    return sorted(path for path in (repository / folder).rglob("*") if path.is_file() and not path.name.startswith("."))


def mutate(repository: Path, rng: random.Random, target: str, kind: str, outside: Path) -> Mutation:
    """Damage one file of ``target`` kind in the way ``kind`` says."""
    candidates = _files(repository, target)
    victim = rng.choice(candidates)
    relative = str(victim.relative_to(repository))
    data = victim.read_bytes()
    others = [path for path in candidates if path != victim]
    if kind == "bitflip":
        offset, bit = rng.randrange(len(data)), rng.randrange(8)
        changed = bytearray(data)
        changed[offset] ^= 1 << bit
        victim.write_bytes(bytes(changed))
        return Mutation(target, kind, relative, f"byte {offset} bit {bit}")
    if kind == "truncate":
        size = rng.choice([0, len(data) // 2, rng.randrange(len(data))])
        os.truncate(victim, size)
        return Mutation(target, kind, relative, f"to {size} of {len(data)} bytes")
    victim.unlink()
    if kind == "delete":
        return Mutation(target, kind, relative)
    if kind == "directory":
        victim.mkdir(mode=0o700)
        (victim / "stray").write_bytes(b"x")
        return Mutation(target, kind, relative)
    if kind == "symlink":
        destination = rng.choice(others) if others else outside / "garbage"
        if not others:
            destination.write_bytes(rng.randbytes(64))
        victim.symlink_to(destination)
        return Mutation(target, kind, relative, f"-> {destination}")
    if kind == "swap":
        source = rng.choice(others) if others else None
        victim.write_bytes(source.read_bytes() if source else rng.randbytes(len(data)))
        return Mutation(target, kind, relative, f"content of {source.name if source else 'random bytes'}")
    raise AssertionError(kind)


def _needs(project: Project) -> dict[str, dict[str, int]]:
    """Snapshot id -> the packs holding the chunks it needs, each with the furthest
    byte of it those chunks' frames reach (from an intact repository)."""
    repository = faultkit.open_repository(project)
    index = repository.index()
    needs = {}
    for snapshot_id in repository.snapshot_ids():
        packs: dict[str, int] = {}
        for entry in repository.load_snapshot(snapshot_id).files:
            list_ids: set[str] = set()
            chunk_ids = list(repository.chunk_ids_of(entry.chunk_lists, levels=entry.chunk_list_levels, list_ids=list_ids))
            for chunk_id in sorted(list_ids) + chunk_ids:
                location = index.locations[chunk_id]
                end = location.entry.frame_offset + location.entry.frame_length
                packs[location.pack_id] = max(packs.get(location.pack_id, 0), end)
        needs[snapshot_id] = packs
    return needs


def _index_packs(project: Project) -> dict[str, set[str]]:
    from backup.repository import decode_index

    return {
        f"index/{path.name}": set(decode_index(path.read_bytes(), f"index/{path.name}"))
        for path in (project.repository / "index").iterdir()
        if not path.name.startswith(".")
    }


def expected_damage(mutation: Mutation, needs: dict[str, dict[str, int]], index_packs: dict[str, set[str]]) -> tuple[set[str] | None, bool]:
    """(snapshots that must be reported exactly, or None if only a subset is known; detectable)."""
    if mutation.target == "config":
        return set(needs), True
    if mutation.target == "manifest":
        snapshot_id = Path(mutation.path).name.removesuffix(".json")
        if mutation.kind == "delete":
            return set(), False
        return {snapshot_id}, True
    if mutation.target == "pack":
        pack_id = Path(mutation.path).name
        users = {snapshot_id for snapshot_id, packs in needs.items() if pack_id in packs}
        if mutation.kind == "truncate":
            # Only frames past the cut are gone; one inside the trailing header loses no chunk.
            cut = re.match(r"to (\d+) of", mutation.detail)
            size = int(cut.group(1)) if cut else 0
            return {snapshot_id for snapshot_id in users if needs[snapshot_id][pack_id] > size}, True
        return (users if mutation.kind in LOSING else None), True
    packs = index_packs[mutation.path]
    return {snapshot_id for snapshot_id, needed in needs.items() if needed.keys() & packs}, True


def _template(directory: Path) -> Project:
    """Three snapshots; the live files still hold what the newest one holds, so a
    new backup of the same data can stand in for a lost one."""
    project = faultkit.build_project(directory / "template", rows=60, plain_bytes=5000)
    project.backup()
    for seed in (40, 41):
        faultkit.change_project(project, seed=seed)
        project.backup()
    return project


def corruption_problems(project: Project, mutation: Mutation, scratch: Path, needs, index_packs) -> list[str]:
    """Everything that must hold after ``mutation``; returns what did not."""
    problems: list[str] = []
    exact, detectable = expected_damage(mutation, needs, index_packs)
    tree_before = faultkit.tree_state(project.repository)
    live_before = faultkit.live_fingerprints(project)
    try:
        report = backup.verify_backup(project.settings, read_data=True)
    except backup.BackupError as error:
        if mutation.target != "config":
            return [f"verification stopped instead of reporting: {type(error).__name__}: {error}"]
        report = None
        reason = str(error)
        if "config" not in reason and "no dbkeep repository" not in reason:
            problems.append(f"the config damage is not named: {reason}")
    if report is not None:
        affected = set(report.affected_snapshots)
        if detectable and report.ok:
            problems.append("read-data verification found nothing")
        if exact is not None and affected != exact:
            problems.append(f"verification says {sorted(affected)} are damaged, expected exactly {sorted(exact)}")
        if exact is None and not affected <= {s for s, packs in needs.items() if Path(mutation.path).name in packs}:
            problems.append(f"verification blames snapshots that do not use the damaged pack: {sorted(affected)}")
        for problem in report.problems:
            if not (problem.pack_id or problem.chunk_id or problem.snapshot_id or "index" in problem.message):
                problems.append(f"a problem names nothing precise: {problem}")
        if mutation.target == "pack" and not any(Path(mutation.path).name in (problem.pack_id or "") + problem.message for problem in report.problems):
            problems.append("no problem names the damaged pack")
        for problem in report.problems:
            if problem.snapshot_id and problem.kind != "corrupt-manifest" and not (problem.path and (problem.chunk_id or "chunk" in problem.message or "SHA-256" in problem.message)):
                problems.append(f"a snapshot problem does not name file and chunk: {problem}")
    damaged = set(needs) if report is None else set(report.affected_snapshots)
    if report is not None and mutation.target == "manifest" and mutation.kind == "delete":
        damaged = set()
    if faultkit.tree_state(project.repository) != tree_before:
        problems.append("verification changed the repository")
    listed = _listed(project)
    for snapshot_id in sorted(set(needs)):
        if snapshot_id in damaged:
            problems += _refusal_problems(project, snapshot_id, live_before)
        elif snapshot_id in listed:
            problems += faultkit.restore_problems(project, snapshot_id, project.expected[snapshot_id], scratch)
    problems += _prune_problems(project, mutation, damaged, listed)
    problems += _rebackup_problems(project, mutation, scratch)
    return problems


def _listed(project: Project) -> set[str]:
    try:
        return set(faultkit.snapshot_ids(project))
    except backup.BackupError:
        return set()


def _refusal_problems(project: Project, snapshot_id: str, live_before: dict) -> list[str]:
    """Restoring a damaged snapshot over the live files must change nothing."""
    try:
        ids_before = faultkit.snapshot_ids(project)
    except backup.BackupError:
        ids_before = None
    try:
        backup.restore_backup(project.settings, snapshot_id, force=True)
    except backup.BackupError:
        pass
    except Exception as error:  # a bug: report it with its type
        return [f"restoring damaged {snapshot_id} raised {type(error).__name__}: {error}"]
    else:
        return [f"damaged snapshot {snapshot_id} was restored"]
    problems = []
    if faultkit.live_fingerprints(project) != live_before:
        problems.append(f"refusing to restore {snapshot_id} still changed a live file")
    if faultkit.temp_leftovers(project.root):
        problems.append(f"refusing to restore {snapshot_id} left temp files {faultkit.temp_leftovers(project.root)}")
    try:
        ids_after = faultkit.snapshot_ids(project)
    except backup.BackupError:
        ids_after = None
    if ids_after != ids_before:
        problems.append(f"refusing to restore {snapshot_id} still published a safety snapshot")
    return problems


def _prune_problems(project: Project, mutation: Mutation, damaged: set[str], listed: set[str]) -> list[str]:
    """Clean keeping the two newest: refuses (deleting nothing) if they need lost data."""
    before = faultkit.tree_state(project.repository)
    kept = sorted(listed)[-2:]
    try:
        backup.clean_old_backups(project.settings, keep_last=2)
    except backup.BackupError as error:
        if faultkit.tree_state(project.repository) != before:
            return [f"clean refused ({error}) but changed the repository"]
        return []
    except Exception as error:
        return [f"clean raised {type(error).__name__}: {error}"]
    if mutation.kind in LOSING and mutation.target in ("pack", "index") and damaged & set(kept):
        return [f"clean ran although kept snapshots {sorted(damaged & set(kept))} need lost data"]
    return []


def _rebackup_problems(project: Project, mutation: Mutation, scratch: Path) -> list[str]:
    """A new backup of the same data must stand on its own (stores lost chunks again).

    Only for lost data: a chunk whose bytes were altered in place (same size)
    still looks stored to a backup, which does not re-read what it reuses; read-data
    verification is what finds it.
    """
    if mutation.target == "config":
        return _config_rebackup_problems(project, mutation)
    if mutation.kind not in LOSING:
        return []
    try:
        snapshot_id = project.backup()
    except backup.BackupError as error:
        if mutation.kind == "directory" and "Is a directory" in str(error):
            return []  # a folder where a repository file belongs is refused, not removed
        return [f"a new backup failed: {type(error).__name__}: {error}"]
    report = backup.verify_backup(project.settings, snapshot_id, read_data=True)
    problems = [f"the new backup is damaged too: {problem.message}" for problem in report.problems if problem.snapshot_id == snapshot_id]
    return problems + faultkit.restore_problems(project, snapshot_id, project.expected[snapshot_id], scratch)


def _config_rebackup_problems(project: Project, mutation: Mutation) -> list[str]:
    """A backup into a repository whose config is damaged or gone must refuse, not start afresh."""
    before = faultkit.tree_state(project.repository)
    try:
        backup.create_backup(project.settings)
    except backup.BackupError:
        return [] if faultkit.tree_state(project.repository) == before else ["a refused backup changed the repository"]
    return [f"a backup ran over a repository whose config suffered {mutation.kind}"]


def _campaign(tmp_path: Path, cases: list[tuple[str, str]], seed: int) -> None:
    template = _template(tmp_path)
    needs = _needs(template)
    index_packs = _index_packs(template)
    rng = random.Random(seed)
    campaign = faultkit.Campaign()
    for number, (target, kind) in enumerate(cases):
        directory = tmp_path / f"trial-{number}"
        directory.mkdir()
        project = template.copy_to(directory)
        outside = directory / "outside"
        outside.mkdir()
        scratch = directory / "scratch"
        scratch.mkdir()
        mutation = mutate(project.repository, rng, target, kind, outside)
        campaign.trials += 1
        campaign.faults += 1
        problems = corruption_problems(project, mutation, scratch, needs, index_packs)
        if problems:
            campaign.failures.append(f"{faultkit.seed_note(seed, f'trial {number}')} {mutation.describe()}: {problems}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    campaign.finish(f"T08/T09 corruption ({len(cases)} seeded mutations)")


def _seed() -> int:
    return int(os.environ.get("DBKEEP_FAULT_SEED", random.randrange(1 << 30)))


def test_every_kind_of_damage_to_every_kind_of_file_is_detected_and_never_restored(tmp_path: Path) -> None:
    seed = _seed()
    rng = random.Random(seed)
    cases = [(target, kind) for target in TARGETS for kind in KINDS]
    cases += [(rng.choice(TARGETS), rng.choice(KINDS)) for _ in range(faultkit.trial_count())]
    _campaign(tmp_path, cases, seed)


@pytest.mark.slow
def test_two_hundred_seeded_mutations_are_all_detected_and_never_restored(tmp_path: Path) -> None:
    seed = _seed()
    rng = random.Random(seed)
    count = max(200, faultkit.slow_trial_count())
    cases = [(rng.choice(TARGETS), rng.choice(("bitflip", "bitflip", "truncate", *KINDS))) for _ in range(count)]
    _campaign(tmp_path, cases, seed)


def test_detection_oracle_fails_for_a_mutation_that_changes_nothing(tmp_path: Path) -> None:
    """Negative control: flipping the same bit twice leaves nothing to find, and the oracle says so."""
    template = _template(tmp_path)
    needs, index_packs = _needs(template), _index_packs(template)
    project = template.copy_to(tmp_path / "trial")
    pack = _files(project.repository, "pack")[0]
    data = bytearray(pack.read_bytes())
    for _ in range(2):
        data[10] ^= 0x04
    pack.write_bytes(bytes(data))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    mutation = Mutation("pack", "truncate", str(pack.relative_to(project.repository)), "(not really)")
    problems = corruption_problems(project, mutation, scratch, needs, index_packs)
    assert "read-data verification found nothing" in problems
    assert any("expected exactly" in problem for problem in problems)


def test_restore_of_a_snapshot_whose_database_fails_integrity_check_refuses_before_touching_the_live_file(project, tmp_path: Path) -> None:
    """T16: bytes that hash right but hold a damaged b-tree are still refused."""
    good_id = project.backup()
    repository = faultkit.open_repository(project)
    good = repository.load_snapshot(good_id)
    entry = next(item for item in good.files if item.path == project.databases[1])
    data = bytearray(project.live(entry.path).read_bytes())
    page_size = entry.sqlite.page_size
    for offset in range(page_size, page_size + 200):  # garbage over the header of the first table's b-tree page
        data[offset] = 0x5A
    forged = _store_file(repository, bytes(data), page_size)
    damaged_entry = backup.FileEntry(**{**{name: getattr(entry, name) for name in backup.FileEntry.__dataclass_fields__}, **forged})
    snapshot = backup.Snapshot(**{**{name: getattr(good, name) for name in backup.Snapshot.__dataclass_fields__}, "id": "20200101T000000Z-0001", "files": (damaged_entry,)})
    repository.save_snapshot(snapshot)
    assert backup.verify_backup(project.settings, snapshot.id, read_data=True).ok, "the bytes themselves are intact"
    live_before = faultkit.live_fingerprints(project)
    with pytest.raises(backup.VerificationFailed, match="integrity_check|malformed"):
        backup.restore_backup(project.settings, snapshot.id, force=True)
    assert faultkit.live_fingerprints(project) == live_before
    assert faultkit.temp_leftovers(project.root) == []
    assert faultkit.snapshot_ids(project) == sorted([good_id, snapshot.id]), "no safety snapshot was taken"


def _store_file(repository, data: bytes, chunk_size: int) -> dict:
    import hashlib

    writer = repository.writer()
    chunk_ids = []
    for start in range(0, len(data), chunk_size):
        chunk = data[start : start + chunk_size]
        chunk_id = packformat.chunk_id_of(chunk)
        writer.add(chunk_id, chunk)
        chunk_ids.append(chunk_id)
    lists, levels = writer.add_chunk_tree(chunk_ids)
    writer.finish()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "chunk_lists": tuple(lists), "chunk_count": len(chunk_ids), "chunk_list_levels": levels}


def test_clean_refuses_and_deletes_nothing_while_a_kept_snapshot_needs_a_missing_pack(tmp_path: Path) -> None:
    template = _template(tmp_path)
    needs = _needs(template)
    project = template.copy_to(tmp_path / "trial")
    newest = sorted(needs)[-1]
    pack_id = sorted(needs[newest])[0]
    (project.repository / pack_name(pack_id)).unlink()
    before = faultkit.tree_state(project.repository)
    with pytest.raises(backup.BackupError, match="refused"):
        backup.clean_old_backups(project.settings, keep_last=1)
    assert faultkit.tree_state(project.repository) == before
