"""Benchmark dbkeep against restic, borg and the old shell-script baselines.

Usage:
    python bench/run.py [--size 100M|1G] [--quick] [--runs 3] [--out bench/results.md]
                        [--tools dbkeep,restic,...] [--work DIR] [--no-install]

What it does, in one process tree on one machine:

1. Generates (once, cached under the work directory) a deterministic SQLite
   database in WAL mode: integer keys, text, BLOBs (a few large enough to
   overflow), an index on (kind, created).
2. For each run: copies it to a fresh project directory, gives every tool a
   fresh repository, and takes a first backup, then a backup after each change:
   (a) 1% of rows updated at random, (b) 1% rows appended plus recent rows
   updated, (c) no change. Then a read-data verify of the whole repository and
   a restore of the latest backup into an empty directory (checked against the
   database). Tools alternate: the order rotates with the run and the step.
3. Every measured operation runs in its own child process; its wall time and
   peak RSS (``os.wait4``, which covers the child and its descendants) are
   recorded, and the repository's apparent size (sum of file sizes, so index and
   manifest overhead count) before and after gives the bytes it added.
4. Prints one table of medians and writes it to ``--out`` with the machine
   description and the issue's targets, each marked met or missed.

Tools: ``sqlite3`` (``.backup`` to a copy + ``sha256sum``), ``tar`` (``tar czf``),
``restic`` (default settings), ``borg`` (``--encryption none``, default lz4),
``dbkeep`` (the library API via bench/dbkeep_op.py). A tool that is missing and
cannot be installed from the OS packages is skipped with the reason printed.

Caches are warm (the page cache is not dropped): the numbers compare CPU and
format cost, not disk speed. MB means 10^6 bytes, MiB 2^20.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import hashlib
import json
import os
import platform
import random
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tabulate import tabulate

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
MIB = 1024 * 1024
SIZES = {"20M": 20 * MIB, "100M": 100 * MIB, "1G": 1024 * MIB}
DATABASE_NAME = "app.db"
GENERATOR_VERSION = 2
TOOL_ORDER = ("sqlite3", "tar", "restic", "borg", "dbkeep")
FIRST = "first backup"
AFTER_A = "backup after (a) 1% updates"
AFTER_B = "backup after (b) appends"
AFTER_C = "backup after (c) no change"
VERIFY = "verify (read data)"
RESTORE = "restore"
STEPS = (FIRST, AFTER_A, AFTER_B, AFTER_C, VERIFY, RESTORE)
BACKUP_STEPS = (FIRST, AFTER_A, AFTER_B, AFTER_C)
CHANGE_BEFORE = {AFTER_A: "a", AFTER_B: "b", AFTER_C: "c"}


# -- the database -----------------------------------------------------------------

SCHEMA = """
CREATE TABLE events(
    id INTEGER PRIMARY KEY,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    kind TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    payload BLOB
);
CREATE INDEX events_kind_created ON events(kind, created);
"""
KINDS = ("order", "invoice", "message", "login", "audit", "upload", "comment", "payment")
BASE_TIME = 1_700_000_000
INSERT = "INSERT INTO events(id, created, updated, kind, title, body, payload) VALUES (?, ?, ?, ?, ?, ?, ?)"


class RowMaker:
    """Deterministic rows: words from a fixed vocabulary, BLOBs three quarters random."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        letters = "abcdefghijklmnopqrstuvwxyz"
        self.words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(4096)]

    def text(self, low: int, high: int) -> str:
        return " ".join(self.rng.choices(self.words, k=self.rng.randint(low, high)))

    def payload(self) -> bytes | None:
        roll = self.rng.random()
        if roll < 0.3:
            return None
        size = self.rng.randint(64, 1024) if roll < 0.98 else self.rng.randint(4096, 16384)
        noise = size * 3 // 4
        pattern = self.rng.randbytes(8) * (size // 32 + 1)
        return self.rng.randbytes(noise) + pattern[: size - noise]

    def row(self, row_id: int) -> tuple[object, ...]:
        created = BASE_TIME + row_id * 7 + self.rng.randint(0, 6)
        return (row_id, created, created, self.rng.choice(KINDS), self.text(3, 8), self.text(40, 200), self.payload())


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _checkpoint(connection: sqlite3.Connection) -> None:
    # File-level tools back up app.db alone: fold the WAL in so the file is whole.
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def generate_database(path: Path, size: int, seed: int) -> None:
    """Write a WAL-mode database of at least ``size`` bytes; same seed, same bytes."""
    rng = random.Random(f"dbkeep-bench-{seed}")
    maker = RowMaker(rng)
    temp = path.with_suffix(".partial")
    for leftover in (temp, Path(f"{temp}-wal"), Path(f"{temp}-shm")):
        leftover.unlink(missing_ok=True)
    with closing(_connect(temp)) as connection:
        connection.executescript(SCHEMA)
        next_id = 1
        while True:
            connection.execute("BEGIN")
            connection.executemany(INSERT, [maker.row(row_id) for row_id in range(next_id, next_id + 2000)])
            connection.execute("COMMIT")
            next_id += 2000
            page_size = connection.execute("PRAGMA page_size").fetchone()[0]
            if connection.execute("PRAGMA page_count").fetchone()[0] * page_size >= size:
                break
        _checkpoint(connection)
    os.replace(temp, path)


def _row_bytes(values: Sequence[object]) -> bytes:
    return b"\x1f".join(value if isinstance(value, bytes) else str(value).encode() for value in values if value is not None) + b"\x1e"


def apply_change(path: Path, change: str, seed: int) -> bytes:
    """(a) 1% of rows updated at random; (b) 1% appended + recent rows updated; (c) nothing.

    Returns the values written (each row's new fields, joined): compressed, they
    are a floor under what any backup of the change must add.
    """
    written = bytearray()
    if change == "c":
        return bytes(written)
    rng = random.Random(f"dbkeep-bench-{seed}-change-{change}")
    maker = RowMaker(rng)
    with closing(_connect(path)) as connection:
        last_id = connection.execute("SELECT max(id) FROM events").fetchone()[0]
        stamp = BASE_TIME + last_id * 7 + 1000
        connection.execute("BEGIN")
        if change == "a":
            for row_id in sorted(rng.sample(range(1, last_id + 1), max(1, last_id // 100))):
                values = (stamp, maker.text(40, 200), row_id)
                connection.execute("UPDATE events SET updated = ?, body = ? WHERE id = ?", values)
                written += _row_bytes(values)
        elif change == "b":
            rows = [maker.row(row_id) for row_id in range(last_id + 1, last_id + 1 + max(1, last_id // 100))]
            connection.executemany(INSERT, rows)
            for row in rows:
                written += _row_bytes(row)
            recent = range(max(1, last_id - last_id // 50), last_id + 1)
            for row_id in sorted(rng.sample(recent, min(len(recent), max(1, last_id // 200)))):
                values = (stamp, maker.text(3, 8), row_id)
                connection.execute("UPDATE events SET updated = ?, title = ? WHERE id = ?", values)
                written += _row_bytes(values)
        else:
            raise ValueError(f"unknown change {change!r}")
        connection.execute("COMMIT")
        _checkpoint(connection)
    return bytes(written)


def content_floor(written: bytes) -> int:
    """The changed values compressed alone at zstd's level 19: less than any backup can add for them.

    Computed in a child process: level 19 needs about 100 MiB, and a child's
    peak RSS on Linux starts from its parent's at fork, so growing this process
    would inflate every later measurement.
    """
    if not written:
        return 0
    script = "import sys, zstandard; print(len(zstandard.ZstdCompressor(level=19).compress(sys.stdin.buffer.read())))"
    return int(subprocess.run([sys.executable, "-c", script], input=written, capture_output=True, check=True).stdout)


def content_digest(path: Path) -> str:
    """SHA-256 of the file past its 100-byte header.

    The header holds counters (change counter, schema cookie) that SQLite's
    backup API rewrites in a copy; every page's content after it must be equal.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(100)
        while piece := handle.read(MIB):
            digest.update(piece)
    return digest.hexdigest()


def cached_database(work: Path, size_name: str, seed: int) -> Path:
    cache = work / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"base-{size_name}-seed{seed}-v{GENERATOR_VERSION}.db"
    if not path.exists():
        started = time.perf_counter()
        print(f"generating {size_name} database {path} ...", flush=True)
        generate_database(path, SIZES[size_name], seed)
        print(f"  generated {path.stat().st_size / MIB:.1f} MiB in {time.perf_counter() - started:.1f} s", flush=True)
    return path


# -- measuring one operation --------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    seconds: float
    cpu_seconds: float  # user + system time of the process tree
    peak_rss: int  # bytes
    bytes_added: int | None
    repository_bytes: int | None


class OperationFailed(RuntimeError):
    pass


def run_measured(command: Command, log: Path) -> tuple[float, float, int]:
    """Run ``command`` in a child process; return (wall seconds, CPU seconds, peak RSS bytes of its tree)."""
    environment = {**os.environ, **command.env}
    with open(log, "ab") as output:
        output.write(f"\n$ {shlex.join(command.argv)}  (in {command.cwd})\n".encode())
        output.flush()
        started = time.perf_counter()
        process = subprocess.Popen(command.argv, cwd=command.cwd, env=environment, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise OperationFailed(f"{shlex.join(command.argv)} exited with {process.returncode}; see {log}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024  # Linux reports KiB


def tree_bytes(path: Path) -> int:
    """Apparent size of every file under ``path``."""
    total = 0
    for directory, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                pass
    return total


# -- the tools ----------------------------------------------------------------------


class Tool:
    """One contender: a repository under ``home``, commands for each step."""

    name = ""
    packages: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()

    def __init__(self, home: Path, data: Path, caches: Path) -> None:
        self.home = home
        self.data = data
        self.caches = caches
        self.repository = home / "repository"
        self.backups = 0

    def missing(self) -> list[str]:
        return [command for command in self.commands if shutil.which(command) is None]

    def version(self) -> str:
        return ""

    def init(self) -> None:
        self.repository.mkdir(parents=True)

    def backup(self) -> Command:
        raise NotImplementedError

    def verify(self) -> Command:
        raise NotImplementedError

    def restore(self, target: Path) -> Command:
        raise NotImplementedError


def _first_line(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError:
        return "?"
    return (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr).strip() else "?"


def _sh(script: str, cwd: Path) -> Command:
    return Command(argv=["sh", "-c", script], cwd=cwd)


class SqliteBackupTool(Tool):
    name = "sqlite3"
    packages = ("sqlite3",)
    commands = ("sqlite3", "sha256sum")

    def version(self) -> str:
        return "sqlite3 " + _first_line(["sqlite3", "--version"]).split()[0]

    def _copy(self, number: int) -> Path:
        return self.repository / f"copy-{number}.db"

    def backup(self) -> Command:
        self.backups += 1
        copy = shlex.quote(str(self._copy(self.backups)))
        return _sh(f"sqlite3 {DATABASE_NAME} \".backup {copy}\" && sha256sum {copy} > {copy}.sha256", self.data)

    def verify(self) -> Command:
        return _sh("cat copy-*.db.sha256 | sha256sum --quiet -c -", self.repository)

    def restore(self, target: Path) -> Command:
        return _sh(f"cp {shlex.quote(str(self._copy(self.backups)))} {shlex.quote(str(target / DATABASE_NAME))} && sync -f {shlex.quote(str(target / DATABASE_NAME))}", target)


class TarTool(Tool):
    name = "tar"
    packages = ("tar", "gzip")
    commands = ("tar", "gzip")

    def version(self) -> str:
        return _first_line(["tar", "--version"])

    def _archive(self, number: int) -> Path:
        return self.repository / f"backup-{number}.tar.gz"

    def backup(self) -> Command:
        self.backups += 1
        return Command(argv=["tar", "czf", str(self._archive(self.backups)), DATABASE_NAME], cwd=self.data)

    def verify(self) -> Command:
        return _sh("gzip -t backup-*.tar.gz", self.repository)

    def restore(self, target: Path) -> Command:
        return Command(argv=["tar", "xzf", str(self._archive(self.backups))], cwd=target)


class ResticTool(Tool):
    name = "restic"
    packages = ("restic",)
    commands = ("restic",)

    def version(self) -> str:
        return _first_line(["restic", "version"])

    def _env(self) -> dict[str, str]:
        return {"RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(self.repository), "RESTIC_CACHE_DIR": str(self.caches / "restic")}

    def init(self) -> None:
        subprocess.run(["restic", "init"], env={**os.environ, **self._env()}, check=True, capture_output=True)

    def backup(self) -> Command:
        self.backups += 1
        return Command(argv=["restic", "backup", DATABASE_NAME], cwd=self.data, env=self._env())

    def verify(self) -> Command:
        return Command(argv=["restic", "check", "--read-data"], cwd=self.home, env=self._env())

    def restore(self, target: Path) -> Command:
        return Command(argv=["restic", "restore", "latest", "--target", str(target)], cwd=self.home, env=self._env())


class BorgTool(Tool):
    name = "borg"
    packages = ("borgbackup",)
    commands = ("borg",)

    def version(self) -> str:
        return _first_line(["borg", "--version"])

    def _env(self) -> dict[str, str]:
        return {
            "BORG_BASE_DIR": str(self.caches / "borg"),
            "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
            "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
        }

    def init(self) -> None:
        subprocess.run(["borg", "init", "--encryption", "none", str(self.repository)], env={**os.environ, **self._env()}, check=True, capture_output=True)

    def backup(self) -> Command:
        self.backups += 1
        return Command(argv=["borg", "create", f"{self.repository}::backup-{self.backups}", DATABASE_NAME], cwd=self.data, env=self._env())

    def verify(self) -> Command:
        return Command(argv=["borg", "check", "--verify-data", str(self.repository)], cwd=self.home, env=self._env())

    def restore(self, target: Path) -> Command:
        return Command(argv=["borg", "extract", f"{self.repository}::backup-{self.backups}"], cwd=target, env=self._env())


def compile_package() -> None:
    """Write the package's bytecode, as installing it from a wheel does.

    An editable install compiles nothing, and with PYTHONDONTWRITEBYTECODE set every
    child would compile dbkeep from source again (about 80 ms each) while borg, from
    the OS packages, and the installed dependencies load compiled bytecode.
    """
    compileall.compile_dir(PROJECT_ROOT / "backup", quiet=1)


class DbkeepTool(Tool):
    name = "dbkeep"

    def version(self) -> str:
        sys.path.insert(0, str(PROJECT_ROOT))
        try:
            from backup import __version__
            from backup.settings import DEFAULT_CHUNK_SIZE, DEFAULT_COMPRESSION_LEVEL
        finally:
            sys.path.pop(0)
        return f"dbkeep {__version__} (chunk size {DEFAULT_CHUNK_SIZE}, zstd level {DEFAULT_COMPRESSION_LEVEL})"

    def init(self) -> None:
        compile_package()
        # the first backup creates the repository, and that is part of its cost

    def _op(self, *arguments: str) -> Command:
        return Command(argv=[sys.executable, str(BENCH_DIR / "dbkeep_op.py"), *arguments], cwd=self.home)

    def backup(self) -> Command:
        self.backups += 1
        return self._op("backup", str(self.data), str(self.repository))

    def verify(self) -> Command:
        return self._op("verify", str(self.data), str(self.repository))

    def restore(self, target: Path) -> Command:
        return self._op("restore", str(self.data), str(self.repository), str(target))


TOOLS: dict[str, type[Tool]] = {tool.name: tool for tool in (SqliteBackupTool, TarTool, ResticTool, BorgTool, DbkeepTool)}


def ensure_installed(names: Sequence[str], *, install: bool) -> dict[str, str]:
    """Install missing tools from the OS packages when allowed; returns name -> skip reason."""
    probe = Path("/nonexistent")
    missing = {name: TOOLS[name](probe, probe, probe).missing() for name in names}
    packages = sorted({package for name, commands in missing.items() if commands for package in TOOLS[name].packages})
    if packages and install and shutil.which("apt-get") and os.geteuid() == 0:
        print(f"installing {' '.join(packages)} from the OS packages ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=False, capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    reasons: dict[str, str] = {}
    for name in names:
        still = TOOLS[name](probe, probe, probe).missing()
        if still:
            how = "installing is disabled (--no-install)" if not install else "it could not be installed (needs root and apt-get)"
            reasons[name] = f"{', '.join(still)} not found and {how}"
    return reasons


# -- the run ------------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    size_name: str
    database_bytes: int
    runs: int
    tools: list[str]
    skipped: dict[str, str]
    samples: dict[tuple[str, str], list[Measurement]] = field(default_factory=dict)
    #: Per change: the changed values compressed alone (content_floor), one per run.
    floors: dict[str, list[int]] = field(default_factory=dict)

    def add(self, step: str, tool: str, measurement: Measurement) -> None:
        self.samples.setdefault((step, tool), []).append(measurement)

    def median(self, step: str, tool: str, attribute: str) -> float | None:
        values = [getattr(sample, attribute) for sample in self.samples.get((step, tool), [])]
        values = [value for value in values if value is not None]
        return statistics.median(values) if values else None


def _rotated(items: Sequence[str], by: int) -> list[str]:
    shift = by % len(items) if items else 0
    return list(items[shift:]) + list(items[:shift])


def run_once(results: Results, base: Path, work: Path, run_number: int, seed: int, say: Callable[[str], None]) -> None:
    run_dir = work / f"run-{run_number}"
    shutil.rmtree(run_dir, ignore_errors=True)
    data = run_dir / "data"
    data.mkdir(parents=True)
    shutil.copyfile(base, data / DATABASE_NAME)
    caches = run_dir / "caches"
    log = run_dir / "commands.log"
    tools = {name: TOOLS[name](run_dir / name, data, caches) for name in results.tools}
    for tool in tools.values():
        tool.home.mkdir(parents=True)
        tool.init()
    for step_number, step in enumerate(STEPS):
        if step in CHANGE_BEFORE:
            results.floors.setdefault(step, []).append(content_floor(apply_change(data / DATABASE_NAME, CHANGE_BEFORE[step], seed)))
        expected = content_digest(data / DATABASE_NAME) if step == RESTORE else None
        for name in _rotated(results.tools, run_number + step_number):
            tool = tools[name]
            if step == RESTORE:
                target = run_dir / f"restore-{name}"
                target.mkdir()
                command = tool.restore(target)
            else:
                target = None
                command = tool.backup() if step in BACKUP_STEPS else tool.verify()
            before = tree_bytes(tool.repository) if tool.repository.exists() else 0
            seconds, cpu, peak = run_measured(command, log)
            after = tree_bytes(tool.repository)
            if target is not None:
                _check_restored(target, expected, name)
                shutil.rmtree(target)
            added = after - before if step in BACKUP_STEPS else None
            results.add(step, name, Measurement(seconds=seconds, cpu_seconds=cpu, peak_rss=peak, bytes_added=added, repository_bytes=after))
            say(f"  run {run_number + 1} {step:<30} {name:<8} {seconds:7.3f} s  cpu {cpu:7.3f} s  {peak / MIB:7.1f} MiB" + (f"  +{added / 1e6:.3f} MB" if added is not None else ""))
    shutil.rmtree(run_dir, ignore_errors=True)


def _check_restored(target: Path, expected: str | None, tool: str) -> None:
    found = [Path(directory) / DATABASE_NAME for directory, _, files in os.walk(target) if DATABASE_NAME in files]
    if len(found) != 1:
        raise OperationFailed(f"{tool} restore produced {len(found)} copies of {DATABASE_NAME} under {target}")
    if content_digest(found[0]) != expected:
        raise OperationFailed(f"{tool} restored {found[0]} with content that differs from the database")


# -- reporting ----------------------------------------------------------------------


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}"


def result_rows(results: Results) -> list[list[object]]:
    rows: list[list[object]] = []
    for step in STEPS:
        restic = results.median(step, "restic", "seconds")
        borg = results.median(step, "borg", "seconds")
        for tool in results.tools:
            seconds = results.median(step, tool, "seconds")
            if seconds is None:
                continue
            added = results.median(step, tool, "bytes_added")
            peak = results.median(step, tool, "peak_rss")
            cpu = results.median(step, tool, "cpu_seconds")
            rows.append(
                [
                    step,
                    tool,
                    f"{seconds:.3f}",
                    f"{results.database_bytes / 1e6 / seconds:.0f}",
                    _ratio(seconds, restic),
                    _ratio(seconds, borg),
                    "-" if added is None else f"{added / 1e6:.3f} MB",
                    f"{peak / MIB:.0f} MiB",
                    f"{cpu:.2f}",
                ]
            )
    return rows


HEADERS = ["operation", "tool", "median s", "MB/s", "x restic", "x borg", "bytes added", "peak RSS", "CPU s"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    measure: str
    target: str
    measured: str
    met: bool | None  # None: could not be judged (a tool was skipped)


def evaluate_targets(results: Results) -> list[Target]:
    """The issue's targets, each judged from this run's medians."""

    def median(step: str, tool: str, attribute: str) -> float | None:
        return results.median(step, tool, attribute)

    def ratio_target(measure: str, step: str, attribute: str, reference_tool: str, limit: float) -> Target:
        mine, theirs = median(step, "dbkeep", attribute), median(step, reference_tool, attribute)
        if mine is None or not theirs:
            return Target(measure=measure, target=f"<= {limit} x {reference_tool}", measured="n/a", met=None)
        ratio = mine / theirs
        shown = f"{ratio:.3f} x ({_amount(mine, attribute)} vs {_amount(theirs, attribute)})"
        return Target(measure=measure, target=f"<= {limit} x {reference_tool}", measured=shown, met=ratio <= limit)

    def with_floor(target: Target, step: str) -> Target:
        floor = statistics.median(results.floors[step]) if results.floors.get(step) else None
        theirs = median(step, "restic", "bytes_added")
        if floor is None or not theirs:
            return target
        note = f"; floor: the changed values alone compress to {floor / 1e6:.3f} MB = {floor / theirs:.3f} x restic"
        return dataclasses.replace(target, measured=target.measured + note)

    targets = [
        with_floor(ratio_target("bytes added after (a) 1% random updates", AFTER_A, "bytes_added", "restic", 0.05), AFTER_A),
        with_floor(ratio_target("bytes added after (b) appends + recent updates", AFTER_B, "bytes_added", "restic", 0.12), AFTER_B),
    ]
    added_c = median(AFTER_C, "dbkeep", "bytes_added")
    limit_c = results.database_bytes * 0.001
    targets.append(
        Target(
            measure="bytes added after (c) no change",
            target=f"< 0.1% of the database ({limit_c / 1e6:.3f} MB)",
            measured="n/a" if added_c is None else f"{added_c / 1e6:.4f} MB ({added_c / results.database_bytes * 100:.4f}%)",
            met=None if added_c is None else added_c < limit_c,
        )
    )
    targets.append(ratio_target("repository size after the first backup", FIRST, "repository_bytes", "restic", 1.0))
    targets.append(ratio_target("first backup wall time", FIRST, "seconds", "restic", 0.6))
    targets.append(ratio_target("first backup wall time", FIRST, "seconds", "borg", 1.0))
    for step, label in ((AFTER_A, "(a)"), (AFTER_B, "(b)"), (AFTER_C, "(c)")):
        targets.append(ratio_target(f"backup after {label} wall time", step, "seconds", "restic", 0.4))
    targets.append(ratio_target("read-data verify (borg check --verify-data)", VERIFY, "seconds", "borg", 1.0))
    targets.append(ratio_target("restore (borg extract)", RESTORE, "seconds", "borg", 1.0))
    peaks = [median(step, "dbkeep", "peak_rss") for step in STEPS]
    peaks = [peak for peak in peaks if peak is not None]
    worst = max(peaks) if peaks else None
    targets.append(
        Target(
            measure="peak RSS, any dbkeep operation",
            target="<= 100 MiB (at 1 GiB), flat with size",
            measured="n/a" if worst is None else f"{worst / MIB:.0f} MiB",
            met=None if worst is None else worst <= 100 * MIB,
        )
    )
    return targets


def _amount(value: float, attribute: str) -> str:
    if attribute == "seconds":
        return f"{value:.3f} s"
    return f"{value / 1e6:.3f} MB"


def machine_info(tools: Sequence[str], work: Path) -> list[tuple[str, str]]:
    cpu = "?"
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            memory = f"{int(handle.readline().split()[1]) / MIB:.1f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "?"
    import zstandard

    info = [
        ("CPU", cpu),
        ("cores", str(os.cpu_count())),
        ("memory", memory),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("filesystem of the work directory", _first_line(["stat", "-f", "-c", "%T", str(work)])),
        ("Python", platform.python_version()),
        ("SQLite (library)", sqlite3.sqlite_version),
        ("zstandard", f"{zstandard.__version__} (libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))})"),
    ]
    probe = Path("/nonexistent")
    for name in tools:
        info.append((name, TOOLS[name](probe, probe, probe).version()))
    return info


VERDICT = {True: "met", False: "MISSED", None: "n/a"}


def render_markdown(results: Results, targets: Sequence[Target], info: Sequence[tuple[str, str]], seed: int, elapsed: float) -> str:
    lines = [
        "# dbkeep benchmark",
        "",
        f"Generated by `python bench/run.py --size {results.size_name} --runs {results.runs}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC (seed {seed}, {elapsed:.0f} s in total).",
        "",
        f"Database: {results.database_bytes / MIB:.1f} MiB SQLite in WAL mode (integer keys, text, BLOBs, an index). "
        f"Medians of {results.runs} run(s); tools alternate. MB = 10^6 bytes; MB/s is database bytes / seconds for "
        "every operation. `x restic` / `x borg` divide the wall time by theirs for the same operation. Bytes added "
        "is the growth of the repository's apparent size (index and manifest overhead included). Peak RSS and CPU s "
        "(user + system) cover the measured process and its children. Page cache warm. The machine is shared: "
        "CPU s is less sensitive to other load than wall time.",
        "",
        tabulate(result_rows(results), headers=HEADERS, tablefmt="github"),
        "",
        "## Targets (issue 8)",
        "",
        tabulate([[target.measure, target.target, target.measured, VERDICT[target.met]] for target in targets], headers=["measure", "target", "measured", "verdict"], tablefmt="github"),
        "",
        "## Machine",
        "",
        tabulate(list(info), headers=["", ""], tablefmt="github"),
        "",
    ]
    if results.skipped:
        lines += ["## Skipped", ""] + [f"- {name}: {reason}" for name, reason in results.skipped.items()] + [""]
    lines += [
        "## Method",
        "",
        "- sqlite3: `sqlite3 app.db \".backup copy-N.db\" && sha256sum copy-N.db`; verify `sha256sum -c` over every copy; restore `cp`.",
        "- tar: `tar czf backup-N.tar.gz app.db`; verify `gzip -t` over every archive; restore `tar xzf`.",
        "- restic: `restic backup app.db` (default settings); `restic check --read-data`; `restic restore latest`.",
        "- borg: `borg init --encryption none`; `borg create` (default lz4); `borg check --verify-data`; `borg extract`.",
        "- dbkeep: library API in a child process (bench/dbkeep_op.py): `create_backup`, "
        "`verify_backup(read_data=True)` over every snapshot, `restore_backup(target=...)`; "
        "the package's bytecode is compiled first, as a wheel install does (borg and the dependencies load theirs too).",
        "- Each restore is checked: the restored database must equal the live one past its 100-byte header.",
        "",
    ]
    return "\n".join(lines)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="100M")
    parser.add_argument("--quick", action="store_true", help="20 MiB, one run (the test's smoke run)")
    parser.add_argument("--runs", type=int, default=None, help="runs per measurement (default 3; 1 with --quick)")
    parser.add_argument("--out", type=Path, default=None, help="markdown results (default bench/results.md)")
    parser.add_argument("--work", type=Path, default=BENCH_DIR / "work", help="scratch directory (default bench/work)")
    parser.add_argument("--tools", default=",".join(TOOL_ORDER), help="comma-separated subset of " + ",".join(TOOL_ORDER))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-install", action="store_true", help="skip missing tools instead of installing them")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.size = "20M"
        arguments.runs = arguments.runs or 1
        arguments.out = arguments.out or arguments.work / "results-quick.md"
    arguments.runs = arguments.runs or 3
    arguments.out = arguments.out or BENCH_DIR / "results.md"
    if arguments.runs < 1:
        parser.error("--runs must be at least 1")
    unknown = [name for name in arguments.tools.split(",") if name not in TOOLS]
    if unknown:
        parser.error(f"unknown tool(s) {', '.join(unknown)}; choose from {', '.join(TOOL_ORDER)}")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns 0, or 1 when an operation failed or a restore was wrong."""
    arguments = parse_arguments(argv)
    started = time.perf_counter()
    work = arguments.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    wanted = [name for name in TOOL_ORDER if name in arguments.tools.split(",")]
    skipped = ensure_installed(wanted, install=not arguments.no_install)
    for name, reason in skipped.items():
        print(f"skipping {name}: {reason}", flush=True)
    tools = [name for name in wanted if name not in skipped]
    base = cached_database(work, arguments.size, arguments.seed)
    results = Results(size_name=arguments.size, database_bytes=base.stat().st_size, runs=arguments.runs, tools=tools, skipped=skipped)
    try:
        for run_number in range(arguments.runs):
            run_once(results, base, work, run_number, arguments.seed, lambda line: print(line, flush=True))
    except OperationFailed as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        return 1
    targets = evaluate_targets(results)
    info = machine_info(tools, work)
    markdown = render_markdown(results, targets, info, arguments.seed, time.perf_counter() - started)
    print()
    print(tabulate(result_rows(results), headers=HEADERS))
    print()
    print(tabulate([[target.measure, target.target, target.measured, VERDICT[target.met]] for target in targets], headers=["target", "limit", "measured", "verdict"]))
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(markdown, encoding="utf-8")
    samples = {
        f"{step} | {tool}": [[sample.seconds, sample.cpu_seconds, sample.peak_rss, sample.bytes_added, sample.repository_bytes] for sample in measured]
        for (step, tool), measured in results.samples.items()
    }
    (work / f"samples-{arguments.size}.json").write_text(json.dumps(samples, indent=1), encoding="utf-8")
    print(f"\nwrote {arguments.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
