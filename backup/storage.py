"""Byte-level storage backends: opaque named files, written once, atomically.

Owns: putting, getting (whole or a byte range), listing, stat and deleting files by
name inside one repository location. Knows nothing of snapshots, chunks or
databases. Names are relative POSIX paths made of ``[A-Za-z0-9._-]`` segments; any
other name is refused before it can become a path.

Every backend honours the same contract (one test suite runs against each):

- ``put`` is atomic: a reader sees the whole object or none of it.
- ``put(..., exclusive=True)`` never replaces an existing object.
- ``list`` raises ``StorageError`` on any failure: an error never looks like "empty".
- ``get_range`` returns exactly the bytes asked for or raises ``CorruptPack``-free
  ``StorageError`` naming the object (the repository decides what that means).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import fsio
from .errors import NoSpace, StorageError

_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectInfo:
    name: str
    size: int
    modified: float


class Storage(Protocol):
    """What the repository needs from a place that keeps bytes."""

    location: str

    def put(self, name: str, pieces: Iterable[bytes], *, exclusive: bool = False) -> int: ...

    def get(self, name: str) -> bytes: ...

    def get_range(self, name: str, offset: int, length: int) -> bytes: ...

    def list(self, prefix: str) -> list[ObjectInfo]: ...

    def stat(self, name: str) -> ObjectInfo | None: ...

    def delete(self, name: str) -> None: ...

    def exists(self, name: str) -> bool: ...

    def critical_section(self) -> contextlib.AbstractContextManager[None]: ...


class Staged(Protocol):
    """An object written piece by piece and published under its name once whole (a storage's optional ``stage``)."""

    @property
    def size(self) -> int: ...

    def write(self, data: bytes | memoryview) -> None: ...

    def publish(self, name: str, *, exclusive: bool = False) -> int: ...

    def discard(self) -> None: ...


def check_name(name: str) -> str:
    """Return ``name`` if it is a safe relative object name, else raise StorageError."""
    segments = name.split("/")
    if not name or any(not _SEGMENT.match(segment) or segment in {".", ".."} for segment in segments):
        raise StorageError(f"refusing unsafe object name {name!r}")
    return name


def describe_os_error(action: str, target: object, error: OSError) -> StorageError:
    """Turn an OSError into the StorageError a user can act on."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpace(f"cannot {action} {target}: no space left on device; free some space and run again")
    if error.errno == errno.ELOOP:
        return StorageError(f"cannot {action} {target}: it is a symbolic link, which no repository file is; it was replaced (run backup.verify)")
    if error.errno in (errno.EACCES, errno.EPERM):
        return StorageError(f"cannot {action} {target}: permission denied; check the owner and mode of the repository")
    return StorageError(f"cannot {action} {target}: {error.strerror or error}")


def open_storage(location: Path | str) -> Storage:
    """The backend for a repository location: ``s3://bucket/prefix`` or a local path.

    The one place that chooses a backend; the S3 one (boto3) is imported only
    when an S3 location is used.
    """
    if isinstance(location, str) and location.startswith("s3://"):
        from .s3storage import S3Storage

        return S3Storage.from_url(location)
    return LocalStorage(Path(location))


def _open_for_reading(path: Path):
    """Open a repository file without following a symlink in its place.

    dbkeep never writes links, so a link there was planted or left by damage;
    following it would read (and trust) a file outside the repository.
    """
    return open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)), "rb")


class LocalStaged:
    """An object being written into a LocalStorage: ``put`` in pieces, for data not all in memory at once."""

    def __init__(self, storage: LocalStorage, staged: fsio.StagedFile) -> None:
        self._storage = storage
        self._staged = staged

    @property
    def size(self) -> int:
        return self._staged.size

    def write(self, data: bytes | memoryview) -> None:
        try:
            self._staged.write(data)
        except OSError as error:
            raise describe_os_error("write", self._staged.path or self._storage.location, error) from error

    def publish(self, name: str, *, exclusive: bool = False) -> int:
        """As ``put`` would store the bytes written; FileExistsError keeps them staged (see fsio.StagedFile)."""
        path = self._storage._path(name)
        try:
            fsio.make_private_dirs(path.parent)
            return self._staged.publish(path, exclusive=exclusive)
        except FileExistsError:
            raise
        except OSError as error:
            self._staged.discard()
            raise describe_os_error("write", path, error) from error

    def discard(self) -> None:
        self._staged.discard()


class LocalStorage:
    """A directory on a local file system; directories 0700, files 0600."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.location = str(self.root)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def put(self, name: str, pieces: Iterable[bytes], *, exclusive: bool = False) -> int:
        path = self._path(name)
        try:
            fsio.make_private_dirs(path.parent)
            return fsio.write_file_atomically(path, pieces, exclusive=exclusive)
        except FileExistsError:
            raise
        except OSError as error:
            raise describe_os_error("write", path, error) from error

    def sync_folder_of(self, name: str) -> None:
        """fsync the directory holding ``name``, so that its entry survives a power loss."""
        path = self._path(name)
        try:
            fsio.fsync_dir(path.parent)
        except OSError as error:
            raise describe_os_error("sync", path.parent, error) from error

    def stage(self, folder: str) -> LocalStaged:
        """An object to write piece by piece, then publish under its name (``LocalStaged``).

        Its temp file sits in ``folder``, which must be on this storage's file
        system; killed writers' temp files there are removed by remove_stale_temps.
        """
        directory = self._path(folder)
        try:
            fsio.make_private_dirs(directory)
            return LocalStaged(self, fsio.StagedFile(directory))
        except OSError as error:
            raise describe_os_error("write", directory, error) from error

    def get(self, name: str) -> bytes:
        path = self._path(name)
        try:
            with _open_for_reading(path) as handle:
                return handle.read()
        except OSError as error:
            raise describe_os_error("read", path, error) from error

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        path = self._path(name)
        try:
            with _open_for_reading(path) as handle:
                handle.seek(offset)
                data = handle.read(length)
        except OSError as error:
            raise describe_os_error("read", path, error) from error
        if len(data) != length:
            raise StorageError(f"cannot read {path}: {length} bytes wanted at offset {offset}, file ends early")
        return data

    def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object below the folder ``prefix``, recursively.

        A missing folder is an error, not an empty listing: the repository creates
        every folder it lists, so a missing one means damage or a wrong path.
        """
        base = self._path(prefix)
        found: list[ObjectInfo] = []
        try:
            if not base.is_dir():
                raise StorageError(f"cannot list {base}: it is not a directory")
            self._walk(base, prefix, found)
        except OSError as error:
            raise describe_os_error("list", base, error) from error
        return found

    def _walk(self, directory: Path, prefix: str, found: list[ObjectInfo]) -> None:
        for entry in sorted(fsio.listdir(directory)):
            if entry.startswith(fsio.TEMP_PREFIX):
                continue
            path = directory / entry
            status = path.lstat()
            name = f"{prefix}/{entry}"
            if path.is_dir() and not path.is_symlink():
                self._walk(path, name, found)
            else:
                found.append(ObjectInfo(name=name, size=status.st_size, modified=status.st_mtime))

    def stat(self, name: str) -> ObjectInfo | None:
        path = self._path(name)
        try:
            status = path.lstat()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise describe_os_error("stat", path, error) from error
        return ObjectInfo(name=name, size=status.st_size, modified=status.st_mtime)

    def exists(self, name: str) -> bool:
        return self.stat(name) is not None

    def delete(self, name: str) -> None:
        path = self._path(name)
        try:
            fsio.unlink(path)
            fsio.fsync_dir(path.parent)
        except FileNotFoundError:
            return
        except OSError as error:
            raise describe_os_error("delete", path, error) from error

    def remove_stale_temps(self, prefix: str) -> int:
        """Remove temp files left by killed writers below ``prefix`` (hold the lock)."""
        base = self._path(prefix)
        removed = 0
        try:
            for directory, _subdirs, _files in os.walk(base):
                removed += fsio.remove_stale_temps(Path(directory))
        except OSError as error:
            raise describe_os_error("clean temporary files in", base, error) from error
        return removed

    @contextlib.contextmanager
    def critical_section(self) -> Iterator[None]:
        """Serialise lock bookkeeping between processes of this machine.

        An flock is released by the kernel when its holder dies, so a killed
        process can never leave this guard held; the lock records themselves
        carry who holds the repository and since when.
        """
        guard = self.root / "locks" / "guard"
        try:
            fsio.make_private_dirs(guard.parent)
            descriptor = os.open(guard, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), fsio.FILE_MODE)
        except OSError as error:
            raise describe_os_error("open the lock guard", guard, error) from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)
