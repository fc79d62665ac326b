"""The narrow I/O seam every durable write in dbkeep goes through.

Owns: creating private temporary files, writing, fsync, atomic replace/link,
directory fsync, unlink and listing, plus the fault hooks the reliability tests use.
Knows nothing of repositories, snapshots or databases.

Fault hooks (read from the environment once, or set in-process with ``inject``):

- ``DBKEEP_FAULT=op:ERRNO:n[:persistent]``: the n-th call of ``op`` (and, if
  persistent, every later one) raises ``OSError(ERRNO)`` instead of acting.
- ``DBKEEP_CRASH_AT=op:n`` or ``DBKEEP_CRASH_AT=point-name``: the process kills
  itself with SIGKILL just before the n-th ``op``, or on reaching a named point.
- ``DBKEEP_PAUSE_AT=point-name:FIFO``: on reaching the point, the process opens
  FIFO for writing (which blocks until a test opens it to read, so the test knows
  the point was reached), writes a line, then waits until ``FIFO.resume`` is
  written to. No polling and no sleeps on either side.

Operation names: create_temp, write, fsync, close, replace, link, fsync_dir,
unlink, listdir, mkdir.
"""

from __future__ import annotations

import contextlib
import errno as errno_module
import os
import secrets
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700
TEMP_PREFIX = ".dbkeep-tmp-"


@dataclass(slots=True)
class FaultPlan:
    """Which operation fails or crashes, counted from when the plan was installed."""

    fail_op: str | None = None
    fail_errno: int = errno_module.EIO
    fail_at: int = 0
    persistent: bool = False
    crash_op: str | None = None
    crash_at: int = 0
    crash_point: str | None = None
    pause_point: str | None = None
    pause_fifo: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_environment(cls, environ: dict[str, str] | os._Environ[str]) -> FaultPlan:
        plan = cls()
        fault = environ.get("DBKEEP_FAULT", "")
        if fault:
            parts = fault.split(":")
            plan.fail_op = parts[0]
            plan.fail_errno = getattr(errno_module, parts[1]) if len(parts) > 1 else errno_module.EIO
            plan.fail_at = int(parts[2]) if len(parts) > 2 else 1
            plan.persistent = len(parts) > 3 and parts[3] == "persistent"
        crash = environ.get("DBKEEP_CRASH_AT", "")
        if crash:
            op, _, count = crash.partition(":")
            if count:
                plan.crash_op, plan.crash_at = op, int(count)
            else:
                plan.crash_point = op
        pause = environ.get("DBKEEP_PAUSE_AT", "")
        if pause:
            plan.pause_point, _, plan.pause_fifo = pause.partition(":")
        return plan

    def before(self, op: str, target: str = "") -> None:
        count = self.counts.get(op, 0) + 1
        self.counts[op] = count
        if op == self.crash_op and count == self.crash_at:
            _kill_self()
        if op == self.fail_op and (count == self.fail_at or (self.persistent and count > self.fail_at)):
            raise OSError(self.fail_errno, f"injected {errno_module.errorcode[self.fail_errno]} at {op} #{count}", target)


_plan = FaultPlan.from_environment(os.environ)


@contextlib.contextmanager
def inject(plan: FaultPlan) -> Iterator[FaultPlan]:
    """Run the block under ``plan`` (for in-process tests); restores the previous plan."""
    global _plan
    previous, _plan = _plan, plan
    try:
        yield plan
    finally:
        _plan = previous


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def reached(point: str) -> None:
    """Mark a named step: a crash or pause point when a test asked for one here."""
    if _plan.crash_point == point:
        _kill_self()
    if _plan.pause_point == point and _plan.pause_fifo:
        with open(_plan.pause_fifo, "w") as announce:
            announce.write(point + "\n")
        with open(_plan.pause_fifo + ".resume") as resume:
            resume.read()


def create_temp(directory: Path) -> tuple[int, Path]:
    """Create an empty, private (0600) file with a unique name in ``directory``."""
    while True:
        path = directory / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        _plan.before("create_temp", str(path))
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
        except FileExistsError:
            continue
        # The umask may have stripped bits we do not need, never added any: still
        # force the exact mode so a later chmod by someone else is not inherited.
        os.fchmod(descriptor, FILE_MODE)
        return descriptor, path


def write(descriptor: int, data: bytes | memoryview) -> None:
    _plan.before("write")
    # Released on return even if something still holds this frame (a profiler, a
    # traceback): callers reuse and resize their buffers right after.
    with memoryview(data) as whole:
        view = whole
        try:
            while view:
                written = os.write(descriptor, view)
                view = view[written:]
        finally:
            view.release()


def fsync(descriptor: int, target: str = "") -> None:
    """``target`` names the file for the seam recording, when the caller knows it."""
    _plan.before("fsync", target)
    os.fsync(descriptor)


def close(descriptor: int) -> None:
    _plan.before("close")
    os.close(descriptor)


def replace(source: Path, destination: Path) -> None:
    _plan.before("replace", str(destination))
    os.replace(source, destination)


def link(source: Path, destination: Path) -> None:
    """Publish ``source`` under ``destination`` only if that name is free (atomic)."""
    _plan.before("link", str(destination))
    os.link(source, destination)


def fsync_dir(directory: Path) -> None:
    _plan.before("fsync_dir", str(directory))
    descriptor = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def unlink(path: Path) -> None:
    _plan.before("unlink", str(path))
    os.unlink(path)


def listdir(directory: Path) -> list[str]:
    _plan.before("listdir", str(directory))
    return os.listdir(directory)


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents as 0700, whatever the umask."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        _plan.before("mkdir", str(path))
        try:
            os.mkdir(path, DIRECTORY_MODE)
        except FileExistsError:
            continue
        os.chmod(path, DIRECTORY_MODE)
        fsync_dir(path.parent)


def write_file_atomically(path: Path, pieces: Iterable[bytes], *, exclusive: bool = False) -> int:
    """Write ``pieces`` to ``path`` so that readers see either nothing or all of it.

    Temp file in the same directory (0600), write, fsync, close, then rename (or
    link, when ``exclusive`` and the name must not already exist), then fsync the
    directory (StagedFile). On any error the temp file is removed and nothing is
    published. Returns the bytes written. Raises FileExistsError when
    ``exclusive`` and ``path`` exists.
    """
    staged = StagedFile(path.parent)
    try:
        for piece in pieces:
            staged.write(piece)
        return staged.publish(path, exclusive=exclusive)
    finally:
        staged.discard()


class StagedFile:
    """A file written piece by piece under a private temp name, then published whole.

    A pack is written frame by frame as its frames are compressed, so its bytes
    need not be held in memory until its name (their hash) is known. The temp
    file may sit in another directory of the same file system than the name it
    is published under.
    """

    def __init__(self, directory: Path) -> None:
        self._descriptor: int | None
        self._temp: Path | None
        self._descriptor, self._temp = create_temp(directory)
        self.size = 0

    @property
    def path(self) -> Path | None:
        """The temp file, until it is published or discarded."""
        return self._temp

    def __del__(self) -> None:
        # A writer dropped without being finished or discarded (library use
        # outside a with block) must not keep a descriptor and a temp file.
        with contextlib.suppress(AttributeError):  # __init__ failed
            self.discard()

    def write(self, data: bytes | memoryview) -> None:
        if self._descriptor is None:
            raise ValueError("the staged file is closed")
        write(self._descriptor, data)
        self.size += len(data)

    def publish(self, path: Path, *, exclusive: bool = False) -> int:
        """fsync and close the file, then link (``exclusive``) or rename it to ``path``, then fsync that directory.

        After a failed fsync the data is never published (a retried fsync can
        report success for pages the kernel already dropped), and an
        ``exclusive`` name that was linked but whose directory fsync (or temp
        removal) failed is taken back, so a caller that sees the error never
        leaves a published file behind. (A rename cannot be taken back: the old
        content is gone.) On any error but one the staged file is removed; on
        FileExistsError (``exclusive`` and ``path`` exists) it is kept, synced,
        for the caller to publish without ``exclusive`` or to discard.
        Returns the bytes written.
        """
        if self._temp is None:
            raise ValueError("the staged file was published or discarded already")
        linked = False
        try:
            if self._descriptor is not None:
                descriptor, self._descriptor = self._descriptor, None
                try:
                    fsync(descriptor, str(self._temp))
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.close(descriptor)
                    raise
                close(descriptor)
            if exclusive:
                link(self._temp, path)
                linked = True
                unlink(self._temp)
            else:
                replace(self._temp, path)
            self._temp = None
            fsync_dir(path.parent)
        except FileExistsError:
            if linked:  # not from the link: take it back like any other failure
                self._take_back(path)
            raise
        except BaseException:
            self._take_back(path if linked else None)
            raise
        return self.size

    def _take_back(self, published: Path | None) -> None:
        self.discard()
        if published is not None:
            with contextlib.suppress(OSError):
                os.unlink(published)

    def discard(self) -> None:
        """Close and remove the file unless it was published; safe to call again."""
        if self._descriptor is not None:
            with contextlib.suppress(OSError):
                os.close(self._descriptor)
            self._descriptor = None
        if self._temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._temp)
            self._temp = None


def remove_stale_temps(directory: Path) -> int:
    """Remove temp files a killed process left in ``directory``; returns how many."""
    removed = 0
    for name in listdir(directory):
        if name.startswith(TEMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                unlink(directory / name)
                removed += 1
    return removed
