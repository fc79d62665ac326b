"""Encryption of repository objects and the key files that guard the master key.

Owns: reading the passphrase (``DBKEEP_PASSWORD``, ``DBKEEP_PASSWORD_FILE`` or
``DBKEEP_PASSWORD_COMMAND``, never a flag), scrypt parameters and their
minimums, key files (a random master secret wrapped by a key derived from a
passphrase), the subkeys derived from the master secret, AES-256-GCM sealing of
objects bound to their kind and name, and keyed chunk ids (HMAC-SHA256). Knows
nothing of storage, packs, snapshots or databases: the repository decides what
is sealed under which name. docs/format.md ("Encrypted repositories") has every byte.

The AEAD primitive comes from ``cryptography`` (an optional extra,
``pip install dbkeep[encryption]``); this module never implements a cipher.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import shlex
import socket
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

from .errors import AuthenticationFailed, ConfigError, CorruptData, WeakKeyDerivation, WrongPassphrase

#: cryptography's primitives, once imported (see _primitives).
_PRIMITIVES: SimpleNamespace | None = None


def _primitives() -> SimpleNamespace:
    """cryptography's AEAD, HKDF and exception, imported on first use.

    An optional extra, and about a tenth of dbkeep's start-up time: commands on
    unencrypted repositories never import it.
    """
    global _PRIMITIVES
    if _PRIMITIVES is None:
        try:
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
            from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        except ImportError as error:  # pragma: no cover - exercised only without the extra
            raise ConfigError(
                "encrypted repositories need the cryptography package: install dbkeep with the encryption extra (pip install 'dbkeep[encryption]')"
            ) from error
        _PRIMITIVES = SimpleNamespace(InvalidTag=InvalidTag, hashes=hashes, AESGCM=AESGCM, HKDF=HKDF)
    return _PRIMITIVES

CIPHER = "aes-256-gcm"
KDF = "scrypt"
KEY_FORMAT = "dbkeep-key"
CONFIG_FORMAT = "dbkeep-encrypted-config"
VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
SECRET_BYTES = 32
SALT_BYTES = 16
#: Prefix of every sealed object stored as a whole file (index files, manifests).
OBJECT_MAGIC = b"DBKEOBJ1"

#: scrypt floor: N=2^15, r=8, p=1 (32 MiB of memory per guess). Below is refused.
MIN_N, MIN_R, MIN_P = 2**15, 8, 1
DEFAULT_N, DEFAULT_R, DEFAULT_P = 2**17, 8, 1
#: Ceiling, so a hostile key file cannot make us allocate without bound.
MAX_SCRYPT_MEMORY = 1024**3
MAX_KEY_FILE_BYTES = 64 * 1024

PASSWORD_VARIABLES = ("DBKEEP_PASSWORD", "DBKEEP_PASSWORD_FILE", "DBKEEP_PASSWORD_COMMAND")
_KEY_ID = re.compile(r"^[0-9a-f]{32}$")
_REPOSITORY_ID = re.compile(r"^[0-9a-f]{32}$")


def require_cryptography() -> None:
    _primitives()


# -- passphrases ------------------------------------------------------------------------


def passphrase_from_environment(environ: Mapping[str, str] | None = None, *, prefix: str = "DBKEEP_PASSWORD") -> str | None:
    """The passphrase from ``<prefix>``, ``<prefix>_FILE`` or ``<prefix>_COMMAND``, or None.

    Exactly one of them may be set. A file's or command's single trailing newline
    is dropped. Raises ConfigError when more than one is set, the file cannot be
    read, the command fails, or the passphrase is empty.
    """
    environ = os.environ if environ is None else environ
    names = [prefix, f"{prefix}_FILE", f"{prefix}_COMMAND"]
    present = [name for name in names if environ.get(name)]
    if not present:
        return None
    if len(present) > 1:
        raise ConfigError(f"set only one of {', '.join(names)} (found {', '.join(present)})")
    name = present[0]
    value = environ[name]
    if name == prefix:
        passphrase = value
    elif name.endswith("_FILE"):
        try:
            with open(value, encoding="utf-8") as handle:
                passphrase = _strip_newline(handle.read())
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"cannot read the passphrase file named by {name}: {error}") from error
    else:
        try:
            result = subprocess.run(shlex.split(value), capture_output=True, text=True, timeout=120, check=False)
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            raise ConfigError(f"cannot run the passphrase command in {name}: {error}") from error
        if result.returncode != 0:
            raise ConfigError(f"the passphrase command in {name} failed with exit code {result.returncode}")
        passphrase = _strip_newline(result.stdout)
    if not passphrase:
        raise ConfigError(f"the passphrase from {name} is empty")
    return passphrase


def _strip_newline(text: str) -> str:
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


# -- scrypt -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KdfParams:
    n: int = DEFAULT_N
    r: int = DEFAULT_R
    p: int = DEFAULT_P
    salt: bytes = b""

    @classmethod
    def fresh(cls, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> KdfParams:
        params = cls(n=n, r=r, p=p, salt=secrets.token_bytes(SALT_BYTES))
        params.check()
        return params

    def check(self) -> None:
        """Refuse parameters below the minimum (too cheap to guess) or above the memory ceiling."""
        if self.n < MIN_N or self.r < MIN_R or self.p < MIN_P:
            raise WeakKeyDerivation(
                f"scrypt parameters N={self.n} r={self.r} p={self.p} are below the minimum N={MIN_N} r={MIN_R} p={MIN_P}; "
                "such a key file is refused (it may have been planted to make the passphrase cheap to guess)"
            )
        if self.n & (self.n - 1) or 128 * self.n * self.r * self.p > MAX_SCRYPT_MEMORY or self.p > 16:
            raise WeakKeyDerivation(f"scrypt parameters N={self.n} r={self.r} p={self.p} are not allowed (N a power of two, at most 1 GiB of memory)")
        if len(self.salt) < SALT_BYTES:
            raise WeakKeyDerivation(f"scrypt salt is {len(self.salt)} bytes, fewer than {SALT_BYTES}")

    def derive(self, passphrase: str) -> bytes:
        self.check()
        return hashlib.scrypt(
            passphrase.encode("utf-8"), salt=self.salt, n=self.n, r=self.r, p=self.p, dklen=32, maxmem=128 * self.n * self.r * self.p + 2**20
        )


# -- associated data ---------------------------------------------------------------------


def associated_data(kind: str, repository_id: str, name: str = "") -> bytes:
    """What an object is bound to: ``dbkeep\\0<kind>\\0<repository id>\\0<name>``.

    A ciphertext opened as another kind, in another repository, or under another
    name fails authentication.
    """
    return b"\x00".join((b"dbkeep", kind.encode(), repository_id.encode(), name.encode()))


# -- master keys -------------------------------------------------------------------------


class MasterKeys:
    """Subkeys of one repository's master secret: sealing and keyed chunk ids."""

    def __init__(self, secret: bytes, repository_id: str, *, key_id: str = "") -> None:
        require_cryptography()
        if len(secret) != SECRET_BYTES:
            raise CorruptData("master secret has the wrong length")
        self.repository_id = repository_id
        self.key_id = key_id
        self._secret = secret
        self._aead = _primitives().AESGCM(_hkdf(secret, repository_id, b"dbkeep aes-256-gcm object key"))
        self._mac_key = _hkdf(secret, repository_id, b"dbkeep hmac-sha256 chunk id key")

    def chunk_id(self, data: bytes | memoryview) -> str:
        """HMAC-SHA256 of the plaintext: equal chunks dedupe, yet ids reveal no content hash."""
        return hmac.new(self._mac_key, data, hashlib.sha256).hexdigest()

    def chunk_digest(self, data: bytes | memoryview) -> bytes:
        """``chunk_id`` as the raw 32 bytes the index rows and chunk lists hold."""
        return hmac.new(self._mac_key, data, hashlib.sha256).digest()

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """``nonce(12) || ciphertext || tag(16)`` with a fresh random nonce."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        """The plaintext, or AuthenticationFailed naming ``what`` if anything was changed."""
        if len(sealed) < NONCE_BYTES + TAG_BYTES:
            raise AuthenticationFailed(f"{what} is too short to be a sealed object: it was truncated or replaced")
        sealed = bytes(sealed)
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
        except _primitives().InvalidTag:
            raise AuthenticationFailed(
                f"{what} failed authentication: it was changed, swapped with another object, or does not belong to this repository"
            ) from None

    def seal_object(self, plaintext: bytes, aad: bytes) -> bytes:
        return OBJECT_MAGIC + self.seal(plaintext, aad)

    def open_object(self, data: bytes, aad: bytes, what: str) -> bytes:
        if not data.startswith(OBJECT_MAGIC):
            raise AuthenticationFailed(f"{what} is not a sealed object of an encrypted repository: it was replaced")
        return self.open(memoryview(data)[len(OBJECT_MAGIC) :], aad, what)

    @property
    def secret(self) -> bytes:
        return self._secret


def _hkdf(secret: bytes, repository_id: str, info: bytes) -> bytes:
    crypto = _primitives()
    return crypto.HKDF(algorithm=crypto.hashes.SHA256(), length=32, salt=repository_id.encode(), info=info).derive(secret)


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def new_repository_id() -> str:
    return secrets.token_hex(16)


# -- key files ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyFile:
    """One passphrase's wrapping of the master secret: ``keys/<id>``."""

    id: str
    repository_id: str
    created: str
    host: str
    user: str
    kdf: KdfParams
    wrapped: bytes

    @property
    def name(self) -> str:
        return f"keys/{self.id}"

    def _aad(self) -> bytes:
        return associated_data("key", self.repository_id, "\x00".join((self.id, self.created, self.host, self.user)))

    def to_json(self) -> bytes:
        body = {
            "format": KEY_FORMAT,
            "version": VERSION,
            "id": self.id,
            "repository": self.repository_id,
            "created": self.created,
            "host": self.host,
            "user": self.user,
            "kdf": {"name": KDF, "n": self.kdf.n, "r": self.kdf.r, "p": self.kdf.p, "salt": _b64(self.kdf.salt)},
            "cipher": CIPHER,
            "wrapped": _b64(self.wrapped),
        }
        return json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, name: str) -> KeyFile:
        """Parse a key file strictly; CorruptData for anything off, WeakKeyDerivation for cheap params."""
        if len(data) > MAX_KEY_FILE_BYTES:
            raise CorruptData(f"key file {name} is larger than any valid one")
        try:
            body = json.loads(data.decode("utf-8"))
            kdf = body["kdf"]
            if body["format"] != KEY_FORMAT or body["version"] != VERSION or body["cipher"] != CIPHER or kdf["name"] != KDF:
                raise ValueError("unsupported format, version, cipher or key derivation")
            numbers = [kdf["n"], kdf["r"], kdf["p"]]
            if not all(isinstance(number, int) and not isinstance(number, bool) for number in numbers):
                raise ValueError("scrypt parameters are not integers")
            key = cls(
                id=_check(body["id"], _KEY_ID, "key id"),
                repository_id=_check(body["repository"], _REPOSITORY_ID, "repository id"),
                created=str(body["created"]),
                host=str(body["host"]),
                user=str(body["user"]),
                kdf=KdfParams(n=numbers[0], r=numbers[1], p=numbers[2], salt=_unb64(kdf["salt"])),
                wrapped=_unb64(body["wrapped"]),
            )
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise CorruptData(f"key file {name} does not match the format: {error}") from error
        if key.name != name:
            raise CorruptData(f"key file {name} says it is {key.name}")
        key.kdf.check()
        return key

    @classmethod
    def wrap(cls, secret: bytes, passphrase: str, *, repository_id: str, kdf: KdfParams | None = None) -> KeyFile:
        require_cryptography()
        params = kdf or KdfParams.fresh()
        params.check()
        unsealed = cls(
            id=secrets.token_hex(16),
            repository_id=repository_id,
            created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            host=socket.gethostname(),
            user=_user_name(),
            kdf=params,
            wrapped=b"",
        )
        nonce = secrets.token_bytes(NONCE_BYTES)
        wrapped = nonce + _primitives().AESGCM(params.derive(passphrase)).encrypt(nonce, secret, unsealed._aad())
        key = cls(**{**{field: getattr(unsealed, field) for field in cls.__dataclass_fields__}, "wrapped": wrapped})
        with _cache_lock:
            _unwrapped[key._cache_key(passphrase)] = secret
        return key

    def _cache_key(self, passphrase: str) -> bytes:
        return hashlib.sha256(self.to_json() + b"\x00" + passphrase.encode("utf-8")).digest()

    def unwrap(self, passphrase: str) -> bytes | None:
        """The master secret, or None if ``passphrase`` is not this key's (or the file was edited)."""
        require_cryptography()
        cache_key = self._cache_key(passphrase)
        with _cache_lock:
            if cache_key in _unwrapped:
                return _unwrapped[cache_key]
        if len(self.wrapped) != NONCE_BYTES + SECRET_BYTES + TAG_BYTES:
            return None
        try:
            secret = _primitives().AESGCM(self.kdf.derive(passphrase)).decrypt(self.wrapped[:NONCE_BYTES], self.wrapped[NONCE_BYTES:], self._aad())
        except _primitives().InvalidTag:
            return None
        with _cache_lock:
            _unwrapped[cache_key] = secret
        return secret


#: Unwrapped secrets of this process, so one command opening a repository twice
#: runs scrypt once. Keyed by a hash of key file and passphrase; memory only.
_unwrapped: dict[bytes, bytes] = {}
_cache_lock = threading.Lock()


def unlock(key_files: list[KeyFile], passphrase: str, *, repository_id: str) -> MasterKeys:
    """Master keys from the first key file the passphrase opens; WrongPassphrase if none does."""
    if not key_files:
        raise CorruptData("the repository is encrypted but has no key files: its keys were deleted")
    for key in key_files:
        if key.repository_id != repository_id:
            continue
        secret = key.unwrap(passphrase)
        if secret is not None:
            return MasterKeys(secret, repository_id, key_id=key.id)
    raise WrongPassphrase(
        f"the passphrase opens none of the {len(key_files)} key(s) of this repository; "
        "check DBKEEP_PASSWORD / DBKEEP_PASSWORD_FILE / DBKEEP_PASSWORD_COMMAND (nothing was changed)"
    )


# -- the encrypted config envelope -----------------------------------------------------------


def encode_config_envelope(keys: MasterKeys, sealed_config: bytes) -> bytes:
    body = {
        "format": CONFIG_FORMAT,
        "version": VERSION,
        "id": keys.repository_id,
        "cipher": CIPHER,
        "kdf": KDF,
        "data": _b64(keys.seal(sealed_config, associated_data("config", keys.repository_id))),
    }
    return json.dumps(body, indent=1, sort_keys=True).encode() + b"\n"


def is_config_envelope(data: bytes) -> bool:
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(body, dict) and body.get("format") == CONFIG_FORMAT


def parse_config_envelope(data: bytes) -> tuple[str, bytes]:
    """(repository id, sealed config) from ``config.json`` of an encrypted repository."""
    try:
        body = json.loads(data.decode("utf-8"))
        if body["format"] != CONFIG_FORMAT or body["version"] != VERSION or body["cipher"] != CIPHER:
            raise ValueError("unsupported encrypted config")
        return _check(body["id"], _REPOSITORY_ID, "repository id"), _unb64(body["data"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise CorruptData(f"encrypted repository config does not match the format: {error}") from error


# -- helpers -----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected base64 text")
    return base64.b64decode(text.encode("ascii"), validate=True)


def _check(value: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise ValueError(f"invalid {what} {str(value)[:40]!r}")
    return value


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
