"""T14 and T15: backups of a database other processes are writing, or died writing.

A writer process moves money between seven accounts and inserts ledger rows
with increasing ids, one transaction each, printing each committed id. The
oracle opens the database restored from the snapshot: integrity_check is ok,
the ledger ids are exactly 1..k (no gap, no row of an uncommitted transaction),
k is at least the last id committed before the backup began, and every balance
is exactly what k transactions produce (so the total is unchanged too). A
plain file copy of the WAL database fails this oracle (negative control).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

import backup
import faultkit
from backup.manifest import CAPTURED_IN_PLACE
from backup.sources.sqlite import open_capture

UNCOMMITTED_ID_BASE = 1_000_000_000


def expected_balances(commits: int) -> dict[int, int]:
    balances = dict.fromkeys(range(7), 1000)
    for ledger_id in range(1, commits + 1):
        balances[ledger_id % 7] -= 5
        balances[(ledger_id * 3 + 1) % 7] += 5
    return balances


def ledger_problems(path: Path, *, at_least: int, exactly: int | None = None) -> list[str]:
    """Does the database hold exactly one committed state, no older than ``at_least``?"""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            check = [row[0] for row in connection.execute("PRAGMA integrity_check")]
            ids = [row[0] for row in connection.execute("SELECT id FROM ledger ORDER BY id")]
            balances = dict(connection.execute("SELECT id, balance FROM accounts"))
    except sqlite3.Error as error:
        return [f"the database cannot be read: {error}"]
    problems = [] if check == ["ok"] else [f"integrity_check: {check[:3]}"]
    committed = [ledger_id for ledger_id in ids if ledger_id < UNCOMMITTED_ID_BASE]
    if len(committed) != len(ids):
        problems.append("rows of an uncommitted transaction are present")
    count = len(committed)
    if committed != list(range(1, count + 1)):
        problems.append("ledger ids are not a contiguous prefix 1..k")
    if count < at_least:
        problems.append(f"only {count} transactions, but {at_least} were committed before the backup began")
    if exactly is not None and count != exactly:
        problems.append(f"{count} transactions, expected exactly {exactly}")
    if balances != expected_balances(count):
        problems.append(f"balances {balances} are not those after {count} transactions (total {sum(balances.values())})")
    return problems


class Writer:
    """A writer process; a thread drains its output so it never blocks on a full pipe."""

    def __init__(self, database: Path, **options) -> None:
        spec = {"op": "sqlite_writer", "database": str(database), **options}
        self.process = subprocess.Popen(faultkit.child_command(spec), env=faultkit.child_env(), cwd=faultkit.REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.committed = 0
        self.paused: int | None = None
        self.in_transaction: int | None = None
        self._condition = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.process.stdout
        for line in self.process.stdout:
            words = line.split()
            with self._condition:
                # A line cut short by the SIGKILL that ends the writer is ignored.
                if len(words) == 2 and words[0] == "committed" and words[1].isdigit():
                    self.committed = int(words[1])
                elif len(words) == 2 and words[0] == "paused" and words[1].isdigit():
                    self.paused = int(words[1])
                elif len(words) == 2 and words[0] == "in-transaction" and words[1].isdigit():
                    self.in_transaction = int(words[1])
                self._condition.notify_all()
        with self._condition:
            self._ended = True
            self._condition.notify_all()

    def wait_for(self, predicate, timeout: float = 120.0) -> None:
        with self._condition:
            assert self._condition.wait_for(lambda: predicate(self) or self._ended, timeout), "the writer made no progress"
            assert predicate(self), f"the writer ended early: {self.process.stderr.read() if self.process.stderr else ''}"

    def resume(self) -> None:
        """Let a writer waiting after ``paused`` go on."""
        assert self.process.stdin
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def kill(self) -> str:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self._thread.join()
        errors = self.process.stderr.read() if self.process.stderr else ""
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream:
                stream.close()
        return errors


def _project(tmp_path: Path, mode: str) -> faultkit.Project:
    return faultkit.build_project(tmp_path / "p", rows=20, journal_modes=(mode,), plain_bytes=0)


def _restored(project: faultkit.Project, snapshot_id: str, scratch: Path) -> Path:
    target = scratch / snapshot_id
    backup.restore_backup(project.settings, snapshot_id, target=target, force=True)
    return target / "app.db"


@pytest.mark.parametrize("mode", ["wal", "delete"])
def test_backups_taken_while_a_writer_commits_each_hold_exactly_one_committed_state(tmp_path: Path, scratch: Path, mode: str) -> None:
    project = _project(tmp_path, mode)
    writer = Writer(project.live("app.db"), synchronous="OFF")  # fast commits; locking is what is tested
    campaign = faultkit.Campaign()
    try:
        for trial in range(faultkit.trial_count()):
            writer.wait_for(lambda w, floor=(trial + 1) * 40: w.committed >= floor)
            logged = writer.committed
            report = backup.create_backup(project.settings)
            campaign.trials += 1
            problems = ledger_problems(_restored(project, report.snapshot.id, scratch), at_least=logged)
            if problems:
                campaign.failures.append(f"trial {trial} (logged {logged}): {problems}")
            assert report.snapshot.files[0].sqlite.journal_mode == mode
    finally:
        errors = writer.kill()
    assert "Error" not in errors, errors
    campaign.finish(f"T14 backup under a concurrent writer ({mode})")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="no /proc/self/fd: databases are always copied here")
def test_a_wal_database_read_in_place_while_a_writer_commits_and_checkpoints_holds_exactly_one_committed_state(tmp_path: Path) -> None:
    """The capture begins while the WAL is empty, so it reads the file in place; the writer then commits and checkpoints throughout the read."""
    project = _project(tmp_path, "wal")
    database = project.live("app.db")
    writer = Writer(database, synchronous="OFF", checkpoint="PASSIVE", pause_every=60)
    campaign = faultkit.Campaign()
    try:
        for trial in range(faultkit.trial_count()):
            writer.wait_for(lambda w, floor=(trial + 1) * 60: w.paused == floor)
            paused = writer.paused
            with open_capture(database, tmp_path) as capture:
                assert capture.method == CAPTURED_IN_PLACE
                writer.resume()
                writer.wait_for(lambda w, floor=paused + 40: w.committed >= floor)  # 40 commits and checkpoints land during the read
                captured = tmp_path / f"captured-{trial}.db"
                captured.write_bytes(b"".join(capture.pieces(64 * 1024)))
                info = capture.describe(quick_check_above=1 << 62)
            campaign.trials += 1
            problems = ledger_problems(captured, at_least=paused, exactly=paused)
            if info.integrity != "ok" or info.tables["ledger"] != paused:
                problems.append(f"described as {info.integrity} with {info.tables['ledger']} ledger rows")
            if problems:
                campaign.failures.append(f"trial {trial} (paused at {paused}): {problems}")
    finally:
        errors = writer.kill()
    assert "Error" not in errors, errors
    campaign.finish("T14 database read in place under a writer that commits and checkpoints (wal)")


def test_plain_copy_of_a_wal_database_fails_the_committed_state_oracle(tmp_path: Path) -> None:
    """Negative control: what a file copy catches of a live WAL database is not a committed state."""
    project = _project(tmp_path, "wal")
    writer = Writer(project.live("app.db"), autocheckpoint=0)
    try:
        writer.wait_for(lambda w: w.committed >= 50)
        logged = writer.committed
        copy = tmp_path / "copy.db"
        shutil.copyfile(project.live("app.db"), copy)
    finally:
        writer.kill()
    problems = ledger_problems(copy, at_least=logged)
    assert any("were committed before the backup began" in problem for problem in problems), problems


def _sidecar_digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


@pytest.mark.parametrize(("mode", "sidecar"), [("wal", "-wal"), ("delete", "-journal")])
def test_backup_after_a_writer_died_mid_transaction_holds_the_last_committed_state(tmp_path: Path, scratch: Path, mode: str, sidecar: str) -> None:
    project = _project(tmp_path, mode)
    database = project.live("app.db")
    writer = Writer(database, die_in_transaction=True, commits_before_death=60)
    writer.wait_for(lambda w: w.in_transaction is not None)
    dying = writer.in_transaction
    writer.kill()
    sidecar_path = Path(f"{database}{sidecar}")
    assert sidecar_path.exists() and sidecar_path.stat().st_size > 0, "the writer left no hot journal / uncommitted frames"
    wal_before = _sidecar_digest(sidecar_path) if mode == "wal" else None
    report = backup.create_backup(project.settings)
    assert ledger_problems(_restored(project, report.snapshot.id, scratch), at_least=dying - 1, exactly=dying - 1) == []
    if mode == "wal":
        assert _sidecar_digest(sidecar_path) == wal_before, "the backup changed the WAL of the live database"
    assert ledger_problems(database, at_least=dying - 1, exactly=dying - 1) == [], "the live database lost committed data"
    faultkit.tally(f"T15 writer killed mid-transaction ({mode})", trials=1, faults=1)


def test_hot_journal_in_a_read_only_folder_gives_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to make a folder read-only for root")
    project = _project(tmp_path, "delete")
    folder = tmp_path / "readonly"
    folder.mkdir()
    database = folder / "app.db"
    shutil.move(project.live("app.db"), database)
    project.databases = ()
    writer = Writer(database, die_in_transaction=True, commits_before_death=30)
    writer.wait_for(lambda w: w.in_transaction is not None)
    writer.kill()
    before = {name: faultkit.fingerprint(folder / name) for name in os.listdir(folder)}
    os.chmod(folder, 0o555)
    try:
        spec = {"op": "create", "settings": {**project.settings_map, "root": str(folder), "repository": str(tmp_path / "repository")}}
        result = faultkit.run_child(spec, prefix=["setpriv", "--bounding-set=-dac_override,-dac_read_search"])
    finally:
        os.chmod(folder, 0o755)
    assert result.returncode == 1 and result.error == "SourceError", result.describe()
    assert "Traceback" not in result.stderr
    assert {name: faultkit.fingerprint(folder / name) for name in os.listdir(folder)} == before
