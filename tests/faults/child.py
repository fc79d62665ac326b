"""A real process that runs one dbkeep library operation, for the fault tests.

Run as ``[sys.executable, child.py, SPEC_JSON]`` with PYTHONPATH at the repository
root. The fault hooks of backup/fsio.py (DBKEEP_FAULT, DBKEEP_CRASH_AT,
DBKEEP_PAUSE_AT) come from the environment, so SIGKILL, crash points and pauses
act on this process, not on the test.

SPEC is a JSON object: ``{"op": ..., "settings": {...}, ...}``. The result is one
JSON line on stdout: ``{"ok": true, "result": ...}`` or ``{"ok": false, "error":
class name, "message": ...}``. Exit code 0 on success, 1 on a BackupError (an
expected failure), 3 on anything else (a bug: the traceback goes to stderr).

``child.py --batch`` imports dbkeep once and then, for each spec line read from
stdin, forks a fresh process that installs the spec's fault plan and runs the
operation. The forked process is killed by its own crash point or, with
``kill_after``, by this driver after that many seconds; one JSON line per spec
reports how it ended. Forking keeps hundreds of crash trials fast.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import sys
import time
import traceback
from pathlib import Path

import backup
from backup import fsio, locking
from backup.storage import LocalStorage
from faultkit import RecordingPlan  # this file's folder is sys.path[0]


def _settings(spec: dict) -> backup.Settings:
    return backup.settings_from_mapping(spec["settings"])


def op_create(spec: dict) -> dict:
    report = backup.create_backup(_settings(spec), tag=spec.get("tag", "manual"), paths=spec.get("paths"), verify=spec.get("verify", False))
    return {"snapshot": report.snapshot.id, "warnings": list(report.warnings), "new_chunks": report.stats.new_chunks, "reused_chunks": report.stats.reused_chunks}


def op_restore(spec: dict) -> dict:
    target = Path(spec["target"]) if spec.get("target") else None
    report = backup.restore_backup(_settings(spec), spec.get("snapshot", "latest"), target=target, force=spec.get("force", True), only=spec.get("only", ()))
    return {
        "safety": report.safety_snapshot.id if report.safety_snapshot else None,
        "files": [file.destination for file in report.files],
        "warnings": list(report.warnings),
    }


def op_clean(spec: dict) -> dict:
    report = backup.clean_old_backups(_settings(spec), keep_last=spec.get("keep_last"))
    return {"kept": list(report.kept), "removed": list(report.removed), "packs_removed": report.packs_removed, "warnings": list(report.warnings)}


def op_verify(spec: dict) -> dict:
    report = backup.verify_backup(_settings(spec), spec.get("snapshot"), read_data=spec.get("read_data", True))
    return {"ok": report.ok, "problems": [problem.message for problem in report.problems]}


def op_list(spec: dict) -> dict:
    listing = backup.list_backups(_settings(spec))
    return {"snapshots": [snapshot.id for snapshot in listing.snapshots], "damaged": listing.damaged}


def op_lock_cycle(spec: dict) -> dict:
    """Take the repository lock ``rounds`` times; inside, prove nobody else is inside.

    The proof is an O_EXCL marker file: creating it fails if another holder of a
    conflicting lock is inside at the same time. Shared holders use their own
    marker and check that no exclusive marker exists.
    """
    storage = LocalStorage(Path(spec["repository"]))
    marker_dir = Path(spec["markers"])
    exclusive = spec.get("exclusive", True)
    if spec.get("shared_every"):
        exclusive = spec.get("number", 0) % spec["shared_every"] != spec["shared_every"] - 1
    overlaps: list[str] = []
    entered = 0
    for _ in range(spec.get("rounds", 1)):
        with locking.acquire(storage, exclusive=exclusive, purpose="lock race", wait=spec.get("wait", 120.0)):
            entered += 1
            if exclusive:
                try:
                    descriptor = os.open(marker_dir / "writer", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                except FileExistsError:
                    overlaps.append("two exclusive holders at once")
                    continue
                others = [name for name in os.listdir(marker_dir) if name.startswith("reader-")]
                if others:
                    overlaps.append(f"exclusive holder while readers inside: {others}")
                os.write(descriptor, str(os.getpid()).encode())
                # A few real file-system round trips widen the window a racing
                # second holder would have to hit.
                for _ in range(5):
                    os.fsync(descriptor)
                    os.listdir(marker_dir)
                os.close(descriptor)
                os.unlink(marker_dir / "writer")
            else:
                mine = marker_dir / f"reader-{os.getpid()}"
                mine.write_text("x")
                if (marker_dir / "writer").exists():
                    overlaps.append("reader inside while an exclusive holder is inside")
                mine.unlink()
    return {"entered": entered, "overlaps": overlaps}


def op_hold_lock(spec: dict) -> dict:
    """Hold a lock until stdin closes; prints a line once it is held."""
    storage = LocalStorage(Path(spec["repository"]))
    with locking.acquire(storage, exclusive=spec.get("exclusive", True), purpose="held by a test", wait=spec.get("wait", 0.0)) as lock:
        print(json.dumps({"held": lock.name}), flush=True)
        sys.stdin.read()
        lock.ensure_held()
    return {"released": True}


def op_sqlite_writer(spec: dict) -> dict:
    """Insert increasing ids and move money between accounts, one transaction each.

    Prints ``committed <id>`` after each commit (the test reads these to know what
    was committed before a backup began). With ``checkpoint`` it runs that
    checkpoint after each commit. With ``pause_every`` N it truncates the WAL
    after every Nth commit, prints ``paused <id>`` and waits for a line on stdin.
    With ``die_in_transaction`` it prints
    ``in-transaction`` after writing but before committing and waits to be killed.
    """
    path = spec["database"]
    connection = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    connection.execute("PRAGMA busy_timeout=30000")
    connection.execute("PRAGMA cache_size=-64")  # spill pages to disk mid-transaction
    if "synchronous" in spec:
        connection.execute(f"PRAGMA synchronous={spec['synchronous']}")
    if "autocheckpoint" in spec:
        connection.execute(f"PRAGMA wal_autocheckpoint={int(spec['autocheckpoint'])}")
    rows = spec.get("rows", 1_000_000)
    start = int(connection.execute("SELECT coalesce(max(id), 0) FROM ledger").fetchone()[0]) + 1
    for ledger_id in range(start, start + rows):
        connection.execute("BEGIN IMMEDIATE")
        source, target = ledger_id % 7, (ledger_id * 3 + 1) % 7
        connection.execute("UPDATE accounts SET balance = balance - 5 WHERE id = ?", (source,))
        connection.execute("UPDATE accounts SET balance = balance + 5 WHERE id = ?", (target,))
        connection.execute("INSERT INTO ledger(id, payload) VALUES (?, randomblob(?))", (ledger_id, spec.get("payload", 300)))
        if spec.get("die_in_transaction") and ledger_id == start + spec.get("commits_before_death", 0):
            connection.execute("INSERT INTO ledger(id, payload) SELECT id + 1000000000, randomblob(3000) FROM ledger WHERE id < ?", (ledger_id,))
            print("in-transaction", ledger_id, flush=True)
            sys.stdin.read()
            os.kill(os.getpid(), signal.SIGKILL)
        connection.execute("COMMIT")
        print("committed", ledger_id, flush=True)
        if spec.get("pause_every") and ledger_id % spec["pause_every"] == 0:
            # Empty the WAL, say so, and wait for the test to say go on.
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            print("paused", ledger_id, flush=True)
            sys.stdin.readline()
        elif "checkpoint" in spec:
            connection.execute(f"PRAGMA wal_checkpoint({spec['checkpoint']})").fetchone()
    connection.close()
    return {"rows": rows}


def op_inspect(spec: dict) -> dict:
    """What a test must know about a repository it cannot see (inside another mount namespace)."""
    import faultkit
    from backup.repository import Repository
    from backup.verification import verify_repository

    repository_path = Path(spec["settings"]["repository"])
    state: dict = {"snapshots": [], "problems": []}
    if (repository_path / "config.json").exists():
        repository = Repository.open(LocalStorage(repository_path))
        state["snapshots"] = repository.snapshot_ids()
        report = verify_repository(repository, read_data=True)
        state["problems"] = [problem.message for problem in report.problems]
    state["temps"] = faultkit.temp_leftovers(*[Path(path) for path in spec.get("temp_dirs", [])])
    state["fingerprints"] = {path: list(faultkit.fingerprint(Path(path))) for path in spec.get("files", []) if Path(path).exists()}
    state["missing"] = [path for path in spec.get("files", []) if not Path(path).exists()]
    return state


def op_parallel(spec: dict) -> dict:
    """Fork ``count`` processes that run ``spec["each"]`` at the same moment.

    They all block on one pipe until every one of them exists, then the pipe is
    closed and they start together (a barrier, no sleeping). Returns each
    process's output and exit code.
    """
    count = spec["count"]
    release_read, release_write = os.pipe()
    children = []
    for number in range(count):
        result_read, result_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(release_write)
            os.close(result_read)
            os.read(release_read, 1)  # returns when the parent closes the pipe
            code, output = run({**spec["each"], "number": number})
            os.write(result_write, json.dumps({"code": code, **output}).encode())
            os._exit(code)
        os.close(result_write)
        children.append((pid, result_read))
    os.close(release_read)
    os.close(release_write)  # everyone starts
    outputs = []
    for pid, result_read in children:
        chunks = []
        while data := os.read(result_read, 1 << 16):
            chunks.append(data)
        os.close(result_read)
        os.waitpid(pid, 0)
        outputs.append(json.loads(b"".join(chunks)) if chunks else {"code": None, "ok": False, "error": "died"})
    return {"outputs": outputs}


OPERATIONS = {
    "parallel": op_parallel,
    "inspect": op_inspect,
    "create": op_create,
    "restore": op_restore,
    "clean": op_clean,
    "verify": op_verify,
    "list": op_list,
    "lock_cycle": op_lock_cycle,
    "hold_lock": op_hold_lock,
    "sqlite_writer": op_sqlite_writer,
}


def run(spec: dict) -> tuple[int, dict]:
    if "umask" in spec:
        os.umask(spec["umask"])
    try:
        result = OPERATIONS[spec["op"]](spec)
    except backup.BackupError as error:
        return 1, {"ok": False, "error": type(error).__name__, "message": str(error)}
    except Exception as error:  # a bug: keep the traceback for the test log
        traceback.print_exc()
        return 3, {"ok": False, "error": type(error).__name__, "message": str(error), "bug": True}
    return 0, {"ok": True, "result": result}


def _fork_one(request: dict) -> dict:
    """Run one spec in a forked process under its fault plan; report how it ended."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the faulted process
        os.close(read_end)
        code = 3
        try:
            plan = fsio.FaultPlan.from_environment(request.get("env", {}))
            if request.get("record"):
                plan = RecordingPlan(plan)
            with fsio.inject(plan):
                code, output = run_confined(request["spec"])
            output["counts"] = plan.counts
            if isinstance(plan, RecordingPlan):
                output["sequence"] = plan.sequence
            os.write(write_end, json.dumps(output).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    started = time.monotonic()
    kill_after = request.get("kill_after")
    deadline = started + (kill_after if kill_after is not None else request.get("timeout", 120.0))
    pidfd = os.pidfd_open(pid)
    watched = [pidfd, read_end]
    killed_by_driver = False
    chunks: list[bytes] = []
    while pidfd in watched:
        timeout = None if killed_by_driver else max(deadline - time.monotonic(), 0.0)
        ready, _, _ = select.select(watched, [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            killed_by_driver = True
        if read_end in ready:
            data = os.read(read_end, 1 << 16)
            if data:
                chunks.append(data)
            else:
                watched.remove(read_end)
        if pidfd in ready:
            watched.remove(pidfd)
    _, status = os.waitpid(pid, 0)
    os.close(pidfd)
    while data := os.read(read_end, 1 << 16):
        chunks.append(data)
    os.close(read_end)
    elapsed = time.monotonic() - started
    output = json.loads(b"".join(chunks)) if chunks else None
    if os.WIFSIGNALED(status):
        return {"status": "killed", "signal": os.WTERMSIG(status), "by_driver": killed_by_driver, "elapsed": elapsed, "output": output}
    return {"status": "exited", "code": os.WEXITSTATUS(status), "elapsed": elapsed, "output": output}


def batch() -> None:
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_fork_one(json.loads(line))), flush=True)


AUDITED = ("open", "os.listdir", "os.scandir", "os.rename", "os.remove", "os.link", "os.symlink", "os.mkdir", "os.rmdir", "os.chmod", "os.truncate", "sqlite3.connect")


def _audit_into(events: list[tuple[str, str]]) -> None:
    """Record every file the process opens, lists, renames or removes (sys.addaudithook)."""

    def hook(event: str, arguments: tuple) -> None:
        if event in AUDITED and arguments:
            target = arguments[0]
            if isinstance(target, (str, bytes, os.PathLike)):
                flags = arguments[2] if event == "open" and len(arguments) > 2 and isinstance(arguments[2], int) else 0
                events.append((event, os.fsdecode(target), flags))

    sys.addaudithook(hook)


def run_confined(spec: dict) -> tuple[int, dict]:
    """``run`` under the spec's memory limit (RLIMIT_AS) and audit hook, if it asks for them.

    Call only in a process that runs nothing else afterwards: neither can be undone.
    """
    if spec.get("memory_limit"):
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (spec["memory_limit"], spec["memory_limit"]))
    events: list[tuple[str, str, int]] = []
    if spec.get("audit"):
        _audit_into(events)
    code, output = run(spec)
    if spec.get("audit"):
        output["audit"] = list(events)  # handed back with the output: no file is opened for it
    return code, output


def main() -> None:
    if sys.argv[1:] == ["--batch"]:
        batch()
        return
    code, output = run_confined(json.loads(sys.argv[1]))
    print(json.dumps(output), flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
