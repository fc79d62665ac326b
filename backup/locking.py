"""Repository locks: one exclusive writer, or any number of shared readers.

Owns: lock records (who, pid, host, since, heartbeat), detecting and breaking
locks whose owner is provably dead, refreshing our own record, and noticing when
it was taken from us so that nothing is published after that. Knows nothing of
snapshots or databases; uses only the storage contract.

A lock is provably stale only when it was taken on this host and its process is
gone (or the pid now belongs to a process that started later). A lock from
another host is never broken automatically: we cannot see its process.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from .errors import LockLost, RepositoryLocked, StorageError
from .storage import Storage

EXCLUSIVE_NAME = "locks/exclusive"
SHARED_PREFIX = "shared-"
HEARTBEAT_SECONDS = 60.0


def _process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), to tell pid reuse apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True, slots=True, kw_only=True)
class LockRecord:
    exclusive: bool
    host: str
    pid: int
    process_start: int | None
    user: str
    since: str
    heartbeat: str
    purpose: str
    token: str

    @classmethod
    def for_this_process(cls, *, exclusive: bool, purpose: str) -> LockRecord:
        now = _utc_text()
        return cls(
            exclusive=exclusive,
            host=socket.gethostname(),
            pid=os.getpid(),
            process_start=_process_start_ticks(os.getpid()),
            user=_user_name(),
            since=now,
            heartbeat=now,
            purpose=purpose,
            token=secrets.token_hex(8),
        )

    @classmethod
    def from_json(cls, data: bytes) -> LockRecord | None:
        """Parse a lock record; None for an empty or garbled one (a crash mid-write, damage).

        A pid outside what any system hands out (1 .. 2**31-1) makes the record
        garbled too: it could never be checked, and os.kill would overflow on it.
        """
        try:
            body = json.loads(data.decode("utf-8"))
            record = cls(
                exclusive=bool(body["exclusive"]),
                host=str(body["host"]),
                pid=int(body["pid"]),
                process_start=None if body.get("process_start") is None else int(body["process_start"]),
                user=str(body["user"]),
                since=str(body["since"]),
                heartbeat=str(body["heartbeat"]),
                purpose=str(body["purpose"]),
                token=str(body["token"]),
            )
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError, OverflowError):
            return None
        return record if 0 < record.pid < 2**31 else None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode() + b"\n"

    def owner_is_dead(self) -> bool:
        """True only when this host can prove the owning process is gone."""
        if self.host != socket.gethostname():
            return False
        if not _process_alive(self.pid):
            return True
        start = _process_start_ticks(self.pid)
        return self.process_start is not None and start is not None and start != self.process_start

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return f"{kind} lock held by {self.user}@{self.host} pid {self.pid} for {self.purpose} since {self.since} (last heartbeat {self.heartbeat})"


def _utc_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@dataclass(slots=True)
class Lock:
    """A lock we hold; ``ensure_held`` before publishing anything."""

    storage: Storage
    name: str
    record: LockRecord
    broken: list[str] = field(default_factory=list)
    lost: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def refresh(self) -> None:
        """Rewrite our heartbeat; marks the lock lost if our record is gone or replaced."""
        try:
            with self.storage.critical_section():
                if not self._still_ours():
                    self.lost = f"lock {self.name} was removed or taken over by another process"
                    return
                self.record = LockRecord(**{**asdict(self.record), "heartbeat": _utc_text()})
                self.storage.put(self.name, [self.record.to_json()])
        except StorageError as error:
            self.lost = f"cannot refresh lock {self.name}: {error}"

    def _still_ours(self) -> bool:
        try:
            current = LockRecord.from_json(self.storage.get(self.name))
        except StorageError:
            return False
        return current is not None and current.token == self.record.token

    def ensure_held(self) -> None:
        """Raise LockLost unless our record is still in place (checked, not assumed)."""
        if self.lost is None and not self._still_ours():
            self.lost = f"lock {self.name} was removed or taken over by another process"
        if self.lost is not None:
            raise LockLost(f"{self.lost}; nothing was published, run the command again")

    def start_heartbeat(self, interval: float = HEARTBEAT_SECONDS) -> None:
        def beat() -> None:
            while not self._stop.wait(interval):
                self.refresh()
                if self.lost is not None:
                    return

        self._thread = threading.Thread(target=beat, name="dbkeep-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(StorageError), self.storage.critical_section():
            if self._still_ours():
                self.storage.delete(self.name)


def list_locks(storage: Storage) -> list[tuple[str, LockRecord | None]]:
    """Every lock record in the repository; a garbled record is listed as None."""
    found: list[tuple[str, LockRecord | None]] = []
    for info in storage.list("locks"):
        base = info.name.rsplit("/", 1)[-1]
        if base == "exclusive" or base.startswith(SHARED_PREFIX):
            try:
                found.append((info.name, LockRecord.from_json(storage.get(info.name))))
            except StorageError:
                continue  # removed between listing and reading: released meanwhile
    return found


def _try_acquire(storage: Storage, *, exclusive: bool, purpose: str) -> tuple[Lock | None, str, list[str]]:
    """One attempt under the critical section: (lock or None, why not, broken locks)."""
    broken: list[str] = []
    with storage.critical_section():
        blocking: list[str] = []
        for name, record in list_locks(storage):
            if record is None:
                # A record that never got its content: its writer died before the
                # atomic publish could complete, or the file was damaged.
                storage.delete(name)
                broken.append(f"removed unreadable lock record {name}")
            elif record.owner_is_dead():
                storage.delete(name)
                broken.append(f"removed stale {record.describe()}: that process no longer exists")
            elif exclusive or record.exclusive:
                blocking.append(record.describe())
        if blocking:
            return None, "; ".join(blocking), broken
        record = LockRecord.for_this_process(exclusive=exclusive, purpose=purpose)
        name = EXCLUSIVE_NAME if exclusive else f"locks/{SHARED_PREFIX}{record.token}"
        try:
            storage.put(name, [record.to_json()], exclusive=True)
        except FileExistsError:
            # Under the critical section only something that is not a lock record
            # (a folder, say) can hold the name: damage to remove by hand.
            raise StorageError(f"cannot take lock {name} in {storage.location}: that name is taken by something that is not a lock record; remove it by hand") from None
        return Lock(storage=storage, name=name, record=record, broken=broken), "", broken


@contextlib.contextmanager
def acquire(storage: Storage, *, exclusive: bool, purpose: str, wait: float = 0.0) -> Iterator[Lock]:
    """Hold a lock for the block; waits up to ``wait`` seconds for a conflicting one.

    Raises RepositoryLocked naming the holder when it cannot be had in time.
    """
    deadline = time.monotonic() + max(wait, 0.0)
    delay = 0.05
    broken_so_far: list[str] = []
    while True:
        lock, holder, broken = _try_acquire(storage, exclusive=exclusive, purpose=purpose)
        broken_so_far += broken
        if lock is not None:
            lock.broken = broken_so_far
            break
        if time.monotonic() >= deadline:
            raise RepositoryLocked(
                f"repository {storage.location} is locked: {holder}; wait for it to finish "
                "(or, if that process is gone on another machine, run backup.unlock)"
            )
        time.sleep(min(delay, max(deadline - time.monotonic(), 0.0)))
        delay = min(delay * 2, 1.0)
    lock.start_heartbeat()
    try:
        yield lock
    finally:
        lock.release()


def remove_locks(storage: Storage, *, include_live: bool = False) -> list[str]:
    """Remove stale (or, with ``include_live``, all) lock records; returns what was removed."""
    removed: list[str] = []
    with storage.critical_section():
        for name, record in list_locks(storage):
            if record is None or record.owner_is_dead() or include_live:
                storage.delete(name)
                removed.append(record.describe() if record else f"unreadable lock record {name}")
    return removed
