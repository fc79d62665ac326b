"""Creating repositories and managing the passphrases of encrypted ones.

Owns: ``init_repository`` (encrypted or not, chosen once) and the key operations
``add_key``, ``list_keys``, ``remove_key`` and ``change_passphrase``. Each key
file wraps the same master secret under another passphrase, so adding or
removing a passphrase never re-encrypts data. Every change runs under the
exclusive lock and writes the new key file before removing an old one.
Passphrases are never flags: the present one comes from ``DBKEEP_PASSWORD``
(``_FILE``, ``_COMMAND``), a new one from ``DBKEEP_NEW_PASSWORD`` (same forms)
or from a callable the caller passes (the command line asks on a terminal);
the callable runs only once the repository was opened (or found absent), so
nobody types a new passphrase for a command that was going to fail anyway.
Knows repositories and key files, never databases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import crypto, locking
from .errors import ConfigError, UsageError
from .operations import open_repository
from .repository import CONFIG_NAME, Repository, load_key_files
from .settings import Settings
from .storage import open_storage


NEW_PASSWORD_PREFIX = "DBKEEP_NEW_PASSWORD"
#: A passphrase, or a callable that supplies one (None: none available).
PassphraseSource = str | Callable[[], str | None]


def new_passphrase_from_environment() -> str | None:
    """``DBKEEP_NEW_PASSWORD[_FILE|_COMMAND]``, or None when none of them is set."""
    return crypto.passphrase_from_environment(prefix=NEW_PASSWORD_PREFIX)


def _resolve(source: PassphraseSource | None) -> str | None:
    return source() if callable(source) else source


def _new_passphrase(source: PassphraseSource) -> str:
    passphrase = _resolve(source)
    if passphrase is None:
        raise ConfigError(
            f"a new passphrase is needed: set {NEW_PASSWORD_PREFIX}, {NEW_PASSWORD_PREFIX}_FILE or {NEW_PASSWORD_PREFIX}_COMMAND "
            "(the command line asks for it on a terminal)"
        )
    if not passphrase:
        raise UsageError("the new passphrase is empty")
    return passphrase


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyInfo:
    id: str
    created: str
    host: str
    user: str
    current: bool  # the key that the present passphrase opened
    scrypt: str  # "N=131072 r=8 p=1"


def init_repository(settings: Settings, *, passphrase: PassphraseSource | None = None, kdf: crypto.KdfParams | None = None) -> Repository:
    """Create the repository at ``settings.repository``; encrypted when a passphrase is given.

    ``passphrase`` may be a callable, called only after no repository was found.
    With ``settings.encryption`` set and no passphrase (or a callable returning
    None), the passphrase comes from the environment. Raises UsageError if a
    repository already exists there, ConfigError if encryption was asked for
    and no passphrase is available.
    """
    storage = open_storage(settings.repository)
    if storage.exists(CONFIG_NAME):
        raise UsageError(f"a repository already exists at {storage.location}; nothing was changed")
    asked = passphrase is not None
    passphrase = _resolve(passphrase)
    if passphrase is None and (settings.encryption != "none" or asked):
        passphrase = crypto.passphrase_from_environment()
        if passphrase is None:
            raise ConfigError("creating an encrypted repository needs a passphrase: set DBKEEP_PASSWORD, DBKEEP_PASSWORD_FILE or DBKEEP_PASSWORD_COMMAND")
    if passphrase == "":
        raise UsageError("the new passphrase is empty")
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


def add_key(settings: Settings, new_passphrase: PassphraseSource = new_passphrase_from_environment, *, kdf: crypto.KdfParams | None = None) -> KeyInfo:
    """Add a passphrase; the present one (from the environment) must open the repository.

    ``new_passphrase`` may be a callable, called once the repository is open.
    Raises WrongPassphrase, ConfigError when no new passphrase is available,
    UsageError when it is empty or the repository is not encrypted.
    """
    repository = _encrypted(settings)
    assert repository.keys is not None
    new_passphrase = _new_passphrase(new_passphrase)
    with locking.acquire(repository.storage, exclusive=True, purpose="add key", wait=settings.lock_wait) as lock:
        key = crypto.KeyFile.wrap(repository.keys.secret, new_passphrase, repository_id=repository.config.id, kdf=kdf)
        lock.ensure_held()
        repository.storage.put(key.name, [key.to_json()], exclusive=True)
    return _info(key, repository.keys.key_id)


def remove_key(settings: Settings, key_id: str) -> str:
    """Remove another passphrase's key file (by id or unique prefix); returns the id removed.

    The key the present passphrase opened and the last key are refused.
    """
    repository = _encrypted(settings)
    assert repository.keys is not None
    with locking.acquire(repository.storage, exclusive=True, purpose="remove key", wait=settings.lock_wait) as lock:
        ids = {key.id for key in load_key_files(repository.storage)}
        matches = sorted(known for known in ids if key_id and known.startswith(key_id))
        if key_id not in ids and len(matches) > 1:
            raise UsageError(f"key prefix {key_id!r} matches {len(matches)} keys; type more characters")
        if key_id not in ids and not matches:
            raise UsageError(f"no key {key_id!r} in {repository.storage.location}; list them with backup.key-list")
        key_id = key_id if key_id in ids else matches[0]
        if key_id == repository.keys.key_id:
            raise UsageError("refusing to remove the key this passphrase opened; change it with backup.key-passwd, or remove it while using another passphrase")
        if len(ids) < 2:
            raise UsageError("refusing to remove the last key: the repository could never be opened again")
        lock.ensure_held()
        repository.storage.delete(f"keys/{key_id}")
    return key_id


def change_passphrase(settings: Settings, new_passphrase: PassphraseSource = new_passphrase_from_environment, *, kdf: crypto.KdfParams | None = None) -> KeyInfo:
    """Replace the current passphrase: the new key file is durable before the old one goes.

    ``new_passphrase`` may be a callable, called once the repository is open.
    """
    repository = _encrypted(settings)
    assert repository.keys is not None
    new_passphrase = _new_passphrase(new_passphrase)
    with locking.acquire(repository.storage, exclusive=True, purpose="change passphrase", wait=settings.lock_wait) as lock:
        key = crypto.KeyFile.wrap(repository.keys.secret, new_passphrase, repository_id=repository.config.id, kdf=kdf)
        lock.ensure_held()
        repository.storage.put(key.name, [key.to_json()], exclusive=True)
        repository.storage.delete(f"keys/{repository.keys.key_id}")
    return _info(key, key.id)
