"""The one exception tree of dbkeep.

Every expected failure is a ``BackupError``; anything else is a bug and keeps its
traceback. The library never maps errors to exit codes: the task layer does, using
the class only.

    BackupError
    ├── ConfigError            a setting is unknown or has a bad value
    ├── UsageError             bad input from the caller (path outside the project, ...)
    │   ├── SnapshotNotFound   no snapshot matches what was asked for
    │   └── AmbiguousSnapshot  a prefix matches more than one snapshot
    ├── RestoreRefused         overwriting was not confirmed
    ├── RepositoryNotFound     no repository at the configured location
    ├── RepositoryLocked       another process holds the lock
    ├── LockLost               this process's lock vanished or could not be refreshed
    ├── WrongPassphrase        no key file of an encrypted repository opens with the passphrase
    ├── StorageError           reading or writing repository files failed
    │   └── NoSpace            the file system is full
    ├── SourceError            a database or file could not be read or written back
    ├── VerificationFailed     a check found problems (carries them)
    └── CorruptData            stored bytes are not what was written
        ├── CorruptChunk
        ├── CorruptPack
        ├── CorruptIndex
        ├── CorruptManifest
        ├── AuthenticationFailed   an encrypted object was changed, swapped or replayed
        └── WeakKeyDerivation      a key file asks for scrypt parameters below the minimum
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class BackupError(Exception):
    """Base of every failure dbkeep expects and explains."""


class ConfigError(BackupError):
    """A configuration key is unknown or its value is not allowed."""


class UsageError(BackupError):
    """The caller asked for something that cannot be done as asked."""


class SnapshotNotFound(UsageError):
    """No snapshot matches an id, prefix, ``latest`` or point in time."""


class AmbiguousSnapshot(UsageError):
    """A prefix matches several snapshots."""


class RestoreRefused(BackupError):
    """A restore would overwrite live data and nobody confirmed it."""


class RepositoryNotFound(BackupError):
    """There is no repository where one was expected."""


class RepositoryLocked(BackupError):
    """Another live process holds a conflicting lock."""


class LockLost(BackupError):
    """Our own lock disappeared or could not be refreshed: nothing may be published."""


class WrongPassphrase(BackupError):
    """The passphrase opens none of an encrypted repository's key files; nothing changed."""


class StorageError(BackupError):
    """A repository file could not be read, written, listed or removed."""


class NoSpace(StorageError):
    """The file system holding the repository or the target is full."""


class SourceError(BackupError):
    """A database or plain file could not be captured or written back."""


class VerificationFailed(BackupError):
    """A verification found problems; ``problems`` holds every one of them."""

    def __init__(self, message: str, problems: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class CorruptData(BackupError):
    """Stored bytes differ from what was written."""


class CorruptChunk(CorruptData):
    """A chunk does not decompress or does not hash to its id."""


class CorruptPack(CorruptData):
    """A pack is missing, truncated, or its header does not parse."""


class CorruptIndex(CorruptData):
    """An index file does not parse or does not hash to its name."""


class CorruptManifest(CorruptData):
    """A snapshot manifest does not parse, fails its checksum, or breaks the format."""


class AuthenticationFailed(CorruptData):
    """An encrypted object fails AES-GCM or keyed-id authentication: it was tampered with."""


class WeakKeyDerivation(CorruptData):
    """A key file asks for scrypt parameters below the enforced minimum; it is refused."""
