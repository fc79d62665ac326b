"""Creating repositories and managing the passphrases of encrypted ones.

Owns: ``init_repository`` (encrypted or not, chosen once) and the key operations
``add_key``, ``list_keys``, ``remove_key`` and ``change_passphrase``. Each key
file wraps the same master secret under another passphrase, so adding or
removing a passphrase never re-encrypts data. Every change runs under the
exclusive lock and writes the new key file before removing an old one.
Knows repositories and key files, never databases.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import crypto, locking
from .errors import ConfigError, UsageError
from .operations import open_repository
from .repository import CONFIG_NAME, Repository, load_key_files
from .settings import Settings
from .storage import open_storage


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyInfo:
    id: str
    created: str
    host: str
    user: str
    current: bool  # the key that the present passphrase opened
    scrypt: str  # "N=131072 r=8 p=1"


def init_repository(settings: Settings, *, passphrase: str | None = None, kdf: crypto.KdfParams | None = None) -> Repository:
    """Create the repository at ``settings.repository``; encrypted when a passphrase is given.

    With ``settings.encryption`` set and no ``passphrase`` argument, the
    passphrase comes from the environment. Raises UsageError if a repository
    already exists there.
    """
    storage = open_storage(settings.repository)
    if storage.exists(CONFIG_NAME):
        raise UsageError(f"a repository already exists at {storage.location}; nothing was changed")
    if passphrase is None and settings.encryption != "none":
        passphrase = crypto.passphrase_from_environment()
        if passphrase is None:
            raise ConfigError("creating an encrypted repository needs a passphrase: set DBKEEP_PASSWORD, DBKEEP_PASSWORD_FILE or DBKEEP_PASSWORD_COMMAND")
    return Repository.init(storage, chunk_size=settings.chunk_size, compression_level=settings.compression_level, passphrase=passphrase, kdf=kdf)


def _encrypted(settings: Settings) -> Repository:
    repository = open_repository(settings)
    if repository.keys is None:
        raise UsageError(f"repository {repository.storage.location} is not encrypted: it has no passphrases to manage")
    return repository


def _info(key: crypto.KeyFile, current_id: str) -> KeyInfo:
    return KeyInfo(
        id=key.id,
        created=key.created,
        host=key.host,
        user=key.user,
        current=key.id == current_id,
        scrypt=f"N={key.kdf.n} r={key.kdf.r} p={key.kdf.p}",
    )


def list_keys(settings: Settings) -> list[KeyInfo]:
    """Every key file of the encrypted repository, oldest first."""
    repository = _encrypted(settings)
    assert repository.keys is not None
    keys = sorted(load_key_files(repository.storage), key=lambda key: (key.created, key.id))
    return [_info(key, repository.keys.key_id) for key in keys]


def add_key(settings: Settings, new_passphrase: str, *, kdf: crypto.KdfParams | None = None) -> KeyInfo:
    """Add a passphrase; the present one (from the environment) must open the repository."""
    if not new_passphrase:
        raise UsageError("the new passphrase is empty")
    repository = _encrypted(settings)
    assert repository.keys is not None
    with locking.acquire(repository.storage, exclusive=True, purpose="add key", wait=settings.lock_wait) as lock:
        key = crypto.KeyFile.wrap(repository.keys.secret, new_passphrase, repository_id=repository.config.id, kdf=kdf)
        lock.ensure_held()
        repository.storage.put(key.name, [key.to_json()], exclusive=True)
    return _info(key, repository.keys.key_id)


def remove_key(settings: Settings, key_id: str) -> None:
    """Remove another passphrase's key file; the current and the last key are refused."""
    repository = _encrypted(settings)
    assert repository.keys is not None
    with locking.acquire(repository.storage, exclusive=True, purpose="remove key", wait=settings.lock_wait) as lock:
        ids = {key.id for key in load_key_files(repository.storage)}
        if key_id not in ids:
            raise UsageError(f"no key {key_id!r} in {repository.storage.location}; list them with backup.key-list")
        if key_id == repository.keys.key_id:
            raise UsageError("refusing to remove the key this passphrase opened; use change_passphrase, or remove it with another passphrase")
        if len(ids) < 2:
            raise UsageError("refusing to remove the last key: the repository could never be opened again")
        lock.ensure_held()
        repository.storage.delete(f"keys/{key_id}")


def change_passphrase(settings: Settings, new_passphrase: str, *, kdf: crypto.KdfParams | None = None) -> KeyInfo:
    """Replace the current passphrase: the new key file is durable before the old one goes."""
    if not new_passphrase:
        raise UsageError("the new passphrase is empty")
    repository = _encrypted(settings)
    assert repository.keys is not None
    with locking.acquire(repository.storage, exclusive=True, purpose="change passphrase", wait=settings.lock_wait) as lock:
        key = crypto.KeyFile.wrap(repository.keys.secret, new_passphrase, repository_id=repository.config.id, kdf=kdf)
        lock.ensure_held()
        repository.storage.put(key.name, [key.to_json()], exclusive=True)
        repository.storage.delete(f"keys/{repository.keys.key_id}")
    return _info(key, key.id)
