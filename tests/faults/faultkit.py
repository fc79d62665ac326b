"""The shared harness of the fault tests: projects, real child processes, oracles.

Oracles (each fault test states which ones it uses, and has a negative control
showing they can fail):

- ``read_data_problems``: read-data verification of the repository, strictly
  read-only (no lock taken, nothing repaired).
- ``restore_problems``: restore a snapshot into a fresh directory and compare the
  logical dump of every database (and the SHA-256 of every plain file) with the
  one recorded when the backup was taken; ``PRAGMA integrity_check`` must be ok.
- ``fingerprint``: SHA-256 and mtime of a live database or any file outside the
  repository.
- ``temp_leftovers``: no ``.dbkeep-tmp-*`` file after a successful run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import secrets
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import backup
from backup import fsio
from backup.repository import Repository
from backup.sources import logical_dump_digest
from backup.storage import LocalStorage
from backup.verification import verify_repository

REPO_ROOT = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve().with_name("child.py")
FAULT_VARIABLES = ("DBKEEP_FAULT", "DBKEEP_CRASH_AT", "DBKEEP_PAUSE_AT")


def trial_count(default: int = 3) -> int:
    """Trials per randomised scenario: ``DBKEEP_FAULT_TRIALS`` or ``default``."""
    return int(os.environ.get("DBKEEP_FAULT_TRIALS", default))


def slow_trial_count() -> int:
    """Trials for the ``slow`` runs: at least 50."""
    return max(50, trial_count())


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if key not in FAULT_VARIABLES}
    environment["PYTHONPATH"] = str(REPO_ROOT)
    environment.update(extra or {})
    return environment


class RecordingPlan(fsio.FaultPlan):
    """A fault plan that also records every seam operation and its target, in order."""

    def __init__(self, base: fsio.FaultPlan | None = None) -> None:
        base = base or fsio.FaultPlan()
        super().__init__(**{name: getattr(base, name) for name in fsio.FaultPlan.__dataclass_fields__})
        self.sequence: list[tuple[str, str]] = []

    def before(self, op: str, target: str = "") -> None:
        self.sequence.append((op, target))
        super().before(op, target)


# -- children --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildResult:
    returncode: int
    output: dict | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and bool(self.output and self.output.get("ok"))

    @property
    def error(self) -> str | None:
        return None if self.output is None else self.output.get("error")

    @property
    def message(self) -> str:
        return "" if self.output is None else str(self.output.get("message", ""))

    def describe(self) -> str:
        return f"exit {self.returncode}, output {self.output}, stderr {self.stderr[-2000:]!r}"


def child_command(spec: Mapping) -> list[str]:
    return [sys.executable, str(CHILD), json.dumps(spec)]


def run_child(spec: Mapping, *, env: Mapping[str, str] | None = None, prefix: Iterable[str] = (), timeout: float = 120.0) -> ChildResult:
    """Run one operation in a fresh interpreter and wait for it."""
    completed = subprocess.run(
        [*prefix, *child_command(spec)],
        env=child_env(env),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return ChildResult(returncode=completed.returncode, output=_last_json(completed.stdout), stdout=completed.stdout, stderr=completed.stderr)


def _last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return None


class Driver:
    """One ``child.py --batch`` process that forks a fresh process per trial."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(CHILD), "--batch"],
            env=child_env(),
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, spec: Mapping, *, fault: Mapping[str, str] | None = None, kill_after: float | None = None, record: bool = False) -> dict:
        """Run ``spec`` in a forked process under ``fault`` (DBKEEP_* values); how it ended.

        With ``record`` the output holds ``sequence``: every seam operation in order.
        """
        request = {"spec": dict(spec), "env": dict(fault or {}), "kill_after": kill_after, "record": record}
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the batch driver died (exit {self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)


MUTATING_OPS = frozenset({"mkdir", "create_temp", "write", "link", "replace", "unlink"})


def all_crash_points(sequence: Iterable[tuple[str, str]]) -> list[str]:
    """``op:n`` for every seam operation of a recorded run."""
    counts: dict[str, int] = {}
    points = []
    for op, _target in sequence:
        counts[op] = counts.get(op, 0) + 1
        points.append(f"{op}:{counts[op]}")
    return points


def distinct_state_crash_points(sequence: Iterable[tuple[str, str]]) -> list[str]:
    """The crash points that leave distinct kinds of on-disk state under SIGKILL.

    A SIGKILL keeps everything already handed to the kernel, so the state a
    crash leaves changes only after an operation that changes what is on disk;
    crashing just before the operation that follows each of those reaches every
    such state (the final one is the completed run). Inside a run of writes to
    one temp file only the first and the last are kept: the ones between differ
    only in how much of the same unpublished temp file exists.
    """
    steps = [tuple(step) for step in sequence]
    points = all_crash_points(steps)
    chosen = [points[0]] if points else []
    for position, (op, _target) in enumerate(steps[:-1]):
        inside_write_run = op == "write" and steps[position - 1][0] == "write" and steps[position + 1][0] == "write"
        if op in MUTATING_OPS and not inside_write_run:
            chosen.append(points[position + 1])
    return list(dict.fromkeys(chosen))


def completed(outcome: Mapping) -> bool:
    """True if a forked trial ran to its end and succeeded."""
    output = outcome.get("output") or {}
    return outcome["status"] == "exited" and outcome["code"] == 0 and bool(output.get("ok"))


# -- projects --------------------------------------------------------------------------


@dataclass(slots=True)
class Project:
    """A project root with databases and a plain file, and its repository."""

    root: Path
    repository: Path
    databases: tuple[str, ...]
    plain_files: tuple[str, ...]
    options: dict = field(default_factory=dict)
    #: snapshot id -> {path: content digest} recorded when the backup was taken
    expected: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def settings_map(self) -> dict:
        return {"root": str(self.root), "repository": str(self.repository), "lock_wait": 0, "chunk_size": 4096, **self.options}

    @property
    def settings(self) -> backup.Settings:
        return backup.settings_from_mapping(self.settings_map)

    def spec(self, op: str, **values) -> dict:
        return {"op": op, "settings": self.settings_map, **values}

    @property
    def paths(self) -> tuple[str, ...]:
        return self.databases + self.plain_files

    def live(self, relative: str) -> Path:
        return self.root / relative

    def backup(self, **keywords) -> str:
        """Back up in this process and record what the snapshot must hold."""
        contents = source_digests(self)
        report = backup.create_backup(self.settings, **keywords)
        self.expected[report.snapshot.id] = contents
        return report.snapshot.id

    def copy_to(self, directory: Path) -> Project:
        """A copy of the project and its repository under ``directory``."""
        root = directory / "project"
        shutil.copytree(self.root, root, symlinks=True)
        repository = Path(str(self.repository).replace(str(self.root), str(root), 1))
        return Project(root=root, repository=repository, databases=self.databases, plain_files=self.plain_files, options=dict(self.options), expected=dict(self.expected))


def create_database(path: Path, *, journal_mode: str, rows: int, seed: int, page_size: int = 4096) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute(f"PRAGMA page_size={page_size}")
        connection.execute(f"PRAGMA journal_mode={journal_mode}")
        connection.execute("CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL)")
        connection.execute("CREATE TABLE ledger(id INTEGER PRIMARY KEY, payload BLOB)")
        connection.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, title TEXT, body BLOB, score REAL)")
        connection.execute("CREATE INDEX notes_title ON notes(title)")
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO accounts VALUES (?, 1000)", [(number,) for number in range(7)])
        connection.executemany(
            "INSERT INTO notes(title, body, score) VALUES (?, ?, ?)",
            [(f"note {rng.random():.12f} é", rng.randbytes(rng.randrange(0, 700)), rng.random()) for _ in range(rows)],
        )
        connection.execute("COMMIT")


def build_project(directory: Path, *, rows: int = 300, seed: int = 0, journal_modes: tuple[str, ...] = ("wal", "delete"), plain_bytes: int = 20_000, options: dict | None = None) -> Project:
    """A project with one database per journal mode and one plain file, no repository yet."""
    root = directory / "project"
    root.mkdir(parents=True)
    databases = []
    for number, mode in enumerate(journal_modes):
        relative = "app.db" if number == 0 else f"data/store{number}.sqlite"
        create_database(root / relative, journal_mode=mode, rows=rows, seed=seed + number)
        databases.append(relative)
    plain = []
    if plain_bytes:
        (root / "files").mkdir()
        (root / "files" / "blob.db").write_bytes(random.Random(seed).randbytes(plain_bytes))
        plain.append("files/blob.db")
    return Project(root=root, repository=root / ".backups", databases=tuple(databases), plain_files=tuple(plain), options=dict(options or {}))


def change_project(project: Project, seed: int) -> None:
    """Change some rows of every database and a few bytes of every plain file."""
    rng = random.Random(seed)
    for relative in project.databases:
        with contextlib.closing(sqlite3.connect(project.live(relative), isolation_level=None)) as connection:
            connection.execute("BEGIN")
            connection.execute("UPDATE notes SET score = score + 1, title = title || '+' WHERE id % ? = 0", (rng.randrange(2, 9),))
            connection.executemany("INSERT INTO notes(title, body, score) VALUES (?, ?, ?)", [(f"new {rng.random()}", rng.randbytes(300), 0.5) for _ in range(20)])
            connection.execute("COMMIT")
    for relative in project.plain_files:
        path = project.live(relative)
        data = bytearray(path.read_bytes())
        for _ in range(10):
            data[rng.randrange(len(data))] ^= 0xFF
        path.write_bytes(bytes(data) + rng.randbytes(100))


# -- oracles -----------------------------------------------------------------------------


def settle(path: Path) -> None:
    """Open a database read-write once, as its next user would: rolls back a hot journal."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()


def database_digest(path: Path) -> str:
    """The logical dump's SHA-256, or a text saying why the database cannot be read."""
    try:
        settle(path)
        return logical_dump_digest(path)
    except sqlite3.Error as error:
        return f"unreadable database: {error}"


def integrity(path: Path) -> str:
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            return "; ".join(str(row[0]) for row in connection.execute("PRAGMA integrity_check"))
    except sqlite3.Error as error:
        return f"cannot check: {error}"


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def content_digest(path: Path, *, database: bool) -> str:
    return database_digest(path) if database else file_digest(path)


def source_digests(project: Project) -> dict[str, str]:
    digests = {relative: database_digest(project.live(relative)) for relative in project.databases}
    digests.update({relative: file_digest(project.live(relative)) for relative in project.plain_files})
    return digests


def fingerprint(path: Path) -> tuple[str, int]:
    """SHA-256 and mtime (ns) of a file: the 'untouched' oracle."""
    return file_digest(path), path.stat().st_mtime_ns


def fingerprints(paths: Iterable[Path]) -> dict[str, tuple[str, int]]:
    return {str(path): fingerprint(path) for path in paths}


def live_fingerprints(project: Project) -> dict[str, tuple[str, int]]:
    """SHA-256 and mtime of every live file of the project, by relative path."""
    return {relative: fingerprint(project.live(relative)) for relative in project.paths}


def tree_state(directory: Path) -> dict[str, tuple[str, str]]:
    """Every entry below ``directory``: kind and content hash (files), target (links)."""
    state: dict[str, tuple[str, str]] = {}
    for current, subdirectories, files in os.walk(directory):
        for name in subdirectories + files:
            path = Path(current) / name
            relative = str(path.relative_to(directory))
            if path.is_symlink():
                state[relative] = ("link", os.readlink(path))
            elif path.is_dir():
                state[relative] = ("dir", "")
            else:
                state[relative] = ("file", file_digest(path))
    return state


def temp_leftovers(*directories: Path) -> list[str]:
    found = []
    for directory in directories:
        for current, _subdirectories, files in os.walk(directory):
            found += [str(Path(current) / name) for name in files if name.startswith(fsio.TEMP_PREFIX)]
    return sorted(found)


def sidecars(path: Path) -> list[str]:
    return [f"{path}{suffix}" for suffix in ("-wal", "-journal") if Path(f"{path}{suffix}").exists()]


def settled_sidecars(path: Path, *, cold_journal_allowed: bool = False) -> list[str]:
    """Sidecars still beside a database after its next user opened and closed it.

    A read-write close checkpoints and removes the WAL and a rolled-back journal
    is deleted, so anything left is stale. (Read-only connections leave an empty
    ``-wal``/``-shm`` behind on purpose; they are not opened here.)

    ``cold_journal_allowed``: a writer killed after creating its journal but
    before syncing it leaves a journal that is empty or whose header is still
    zero. The database file was not touched yet, so SQLite rightly treats such a
    journal as not hot and leaves it for its next write transaction to reuse;
    any SQLite application killed at that instant leaves the same file. After a
    crash it is not stale; after a completed write it would be.
    """
    try:
        settle(path)
    except sqlite3.Error as error:
        return [f"{path} cannot be opened: {error}"]
    return [sidecar for sidecar in sidecars(path) if not (cold_journal_allowed and _is_cold_journal(Path(sidecar)))]


def _is_cold_journal(path: Path) -> bool:
    """An empty ``-journal``, or one whose header magic (first 8 bytes) is still zero."""
    if not path.name.endswith("-journal"):
        return False
    with open(path, "rb") as handle:
        return not any(handle.read(8))


def open_repository(project: Project) -> Repository:
    return Repository.open(LocalStorage(project.repository))


def snapshot_ids(project: Project) -> list[str]:
    return open_repository(project).snapshot_ids()


def read_data_problems(project: Project) -> list[str]:
    """Read-data verification without a lock: changes nothing, reports everything."""
    try:
        report = verify_repository(open_repository(project), read_data=True)
    except backup.BackupError as error:
        return [f"verification could not run: {type(error).__name__}: {error}"]
    return [f"{problem.kind}: {problem.message} (snapshot {problem.snapshot_id}, file {problem.path})" for problem in report.problems]


def restore_problems(project: Project, snapshot_id: str, expected: Mapping[str, str], scratch: Path) -> list[str]:
    """Restore into a fresh directory; compare every file with what was recorded."""
    target = scratch / f"restore-{secrets.token_hex(4)}"
    try:
        report = backup.restore_backup(project.settings, snapshot_id, target=target, force=True)
    except backup.BackupError as error:
        return [f"snapshot {snapshot_id} does not restore: {type(error).__name__}: {error}"]
    problems = []
    restored = {file.path for file in report.files}
    if restored != set(expected):
        problems.append(f"snapshot {snapshot_id} restored {sorted(restored)}, expected {sorted(expected)}")
    for relative, digest in expected.items():
        path = target / relative
        if not path.exists():
            continue
        database = relative in project.databases
        if database and integrity(path) != "ok":
            problems.append(f"snapshot {snapshot_id}: restored {relative} fails integrity_check")
        if content_digest(path, database=database) != digest:
            problems.append(f"snapshot {snapshot_id}: restored {relative} differs from what was backed up")
    shutil.rmtree(target, ignore_errors=True)
    return problems


def snapshots_restore_problems(project: Project, scratch: Path, *, pending: Mapping[str, str] | None = None) -> list[str]:
    """Every listed snapshot restores to its recorded content.

    A snapshot the test did not record (the interrupted operation may have
    published it) must hold ``pending``; without ``pending`` it is a problem.
    """
    problems = []
    for snapshot_id in snapshot_ids(project):
        expected = project.expected.get(snapshot_id)
        if expected is None:
            if pending is None:
                problems.append(f"unexpected snapshot {snapshot_id}")
                continue
            expected = pending
            with contextlib.suppress(backup.BackupError):
                paths = {entry.path for entry in open_repository(project).load_snapshot(snapshot_id).files}
                expected = {path: digest for path, digest in pending.items() if path in paths}
        problems += restore_problems(project, snapshot_id, expected, scratch)
    return problems


@contextlib.contextmanager
def driver() -> Iterator[Driver]:
    instance = Driver()
    try:
        yield instance
    finally:
        instance.close()


@dataclass(slots=True)
class Campaign:
    """The outcome of many fault trials of one scenario."""

    trials: int = 0
    faults: int = 0
    failures: list[str] = field(default_factory=list)

    def finish(self, scenario: str) -> None:
        tally(scenario, trials=self.trials, faults=self.faults, failures=len(self.failures))
        assert not self.failures, f"{len(self.failures)} of {self.trials} trials failed:\n" + "\n".join(self.failures)


def crash_campaign(driver: Driver, directory: Path, template: Project, op_spec, check, *, points=(), delays=(), label=str) -> Campaign:
    """Run ``op_spec(project)`` on a fresh copy of ``template`` once per crash point and delay.

    ``check(project, scratch, outcome)`` returns the problems found after the
    trial; a trial that hit a bug (exit 3) is a failure by itself.
    """
    campaign = Campaign()
    trials = [({"DBKEEP_CRASH_AT": point}, None, point) for point in points] + [(None, delay, f"kill after {delay:.4f}s") for delay in delays]
    for number, (fault, delay, what) in enumerate(trials):
        trial_directory = directory / f"trial-{number}"
        trial_directory.mkdir()
        project = template.copy_to(trial_directory)
        scratch = trial_directory / "scratch"
        scratch.mkdir()
        outcome = driver.run(op_spec(project), fault=fault, kill_after=delay)
        campaign.trials += 1
        campaign.faults += outcome["status"] == "killed"
        if outcome["status"] == "exited" and outcome["code"] == 3:
            problems = [f"the operation hit a bug: {outcome['output']}"]
        else:
            problems = check(project, scratch, outcome)
        if problems:
            campaign.failures.append(f"{label(what)}: {problems}")
        else:
            shutil.rmtree(trial_directory, ignore_errors=True)
    return campaign


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultTrial:
    """One run of an operation with an errno injected at the n-th ``op``."""

    op: str
    at: int
    errno_name: str
    persistent: bool
    outcome: dict

    @property
    def output(self) -> dict:
        return self.outcome.get("output") or {}

    @property
    def succeeded(self) -> bool:
        return completed(self.outcome)

    @property
    def error(self) -> str | None:
        return self.output.get("error")

    @property
    def sequence(self) -> list[tuple[str, str]]:
        return [tuple(step) for step in self.output.get("sequence", [])]

    def describe(self) -> str:
        return f"{self.errno_name} at {self.op} #{self.at}{' and after' if self.persistent else ''}"

    def after_fault(self) -> list[tuple[str, str]]:
        """The seam operations the process performed after the injected failure."""
        seen = 0
        for position, (op, _target) in enumerate(self.sequence):
            if op == self.op:
                seen += 1
                if seen == self.at:
                    return self.sequence[position + 1 :]
        return []


def representative_positions(sequence: Iterable[tuple[str, str]], op: str) -> list[int]:
    """Positions (1-based counts) of ``op`` worth a fault each in the default run.

    Every position, except inside a run of writes to one temp file, where only
    the first and the last are kept: the ones between fail the same file the
    same way.
    """
    steps = [tuple(step) for step in sequence]
    positions = []
    count = 0
    for index, (name, _target) in enumerate(steps):
        if name != op:
            continue
        count += 1
        inside_run = op == "write" and 0 < index < len(steps) - 1 and steps[index - 1][0] == "write" and steps[index + 1][0] == "write"
        if not inside_run:
            positions.append(count)
    return positions


def fault_sweep(driver: Driver, directory: Path, template: Project, op_spec, check, *, ops, errno_name: str, persistent: bool, every: bool = True) -> Campaign:
    """Fail the n-th ``op`` for every position n the operation reaches, for each op.

    SQLite's own method (test/ioerr): every position gets its fault. A recorded
    run without faults tells which positions exist; with ``every=False`` runs of
    writes to one file are represented by their first and last write. Each trial
    runs on a fresh copy of ``template`` in a forked process, so a lock it could
    not release belongs to a dead process, as in real life.
    ``check(project, scratch, trial)`` returns the problems found.
    """
    calibration_directory = directory / "calibration"
    calibration_directory.mkdir()
    calibration = driver.run(op_spec(template.copy_to(calibration_directory)), record=True)
    assert completed(calibration), calibration
    sequence = [tuple(step) for step in calibration["output"]["sequence"]]
    campaign = Campaign()
    for op in ops:
        total = sum(name == op for name, _target in sequence)
        positions = list(range(1, total + 1)) if every else representative_positions(sequence, op)
        for at in positions:
            trial_directory = directory / f"{op}-{at}-{'persistent' if persistent else 'once'}"
            trial_directory.mkdir()
            project = template.copy_to(trial_directory)
            scratch = trial_directory / "scratch"
            scratch.mkdir()
            fault = f"{op}:{errno_name}:{at}" + (":persistent" if persistent else "")
            outcome = driver.run(op_spec(project), fault={"DBKEEP_FAULT": fault}, record=True)
            trial = FaultTrial(op=op, at=at, errno_name=errno_name, persistent=persistent, outcome=outcome)
            campaign.trials += 1
            campaign.faults += trial.output.get("counts", {}).get(op, 0) >= at
            if outcome["status"] != "exited" or outcome["code"] == 3:
                problems = [f"the operation hit a bug or died: {outcome}"]
            else:
                problems = check(project, scratch, trial)
            if problems:
                campaign.failures.append(f"{trial.describe()}: {problems}")
            else:
                shutil.rmtree(trial_directory, ignore_errors=True)
    return campaign


def tally(scenario: str, *, trials: int, faults: int, failures: int = 0) -> None:
    """Append a scenario's counts to ``$DBKEEP_FAULT_STATS`` (JSON lines) when it is set.

    docs/reliability.md reports the sums of one full run.
    """
    path = os.environ.get("DBKEEP_FAULT_STATS")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"scenario": scenario, "trials": trials, "faults": faults, "failures": failures}) + "\n")


def seed_note(seed: int, what: str = "") -> str:
    """A line that lets a failure be replayed."""
    return f"[seed {seed}{': ' + what if what else ''}] replay with DBKEEP_FAULT_SEED={seed}"
