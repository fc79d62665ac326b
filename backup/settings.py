"""Settings: one validated dataclass the library takes, built at the edge.

Owns: the list of configuration keys with their defaults and allowed values, and
turning a plain mapping (from Invoke's config: ``invoke.yaml`` ``backup:``,
``INVOKE_BACKUP_*`` variables, flags) into ``Settings``. Every problem is
reported at once, each naming the key, the value and what is allowed.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError, UsageError
from .sources.selection import DEFAULT_INCLUDE
from .sources.server import DatabaseConfig, parse_database_entry

DEFAULT_REPOSITORY = ".backups"
GIB = 1024**3
DEFAULT_COMPRESSION_LEVEL = 3
DEFAULT_CHUNK_SIZE = 4 * 1024
DEFAULT_KEEP_LAST = 10
DEFAULT_LOCK_WAIT = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything an operation needs to know about where and how to back up."""

    root: Path
    #: A local directory, or an ``s3://bucket/prefix`` location (kept as text).
    repository: Path | str
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = ()
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    chunk_size: int = DEFAULT_CHUNK_SIZE
    keep_last: int = DEFAULT_KEEP_LAST
    quick_check_above: int = GIB
    lock_wait: float = DEFAULT_LOCK_WAIT
    databases: tuple[DatabaseConfig, ...] = ()
    #: "none" or "aes-256-gcm": used when the repository is created, then required.
    encryption: str = "none"
    #: Reuse the previous capture of a source whose settled file-system stamp is
    #: unchanged (sources/stamps.py); False reads every database on every backup.
    reuse_unchanged: bool = True

    @property
    def scratch_directory(self) -> Path:
        """Private space for captures: inside a local repository, else a private temp dir."""
        if isinstance(self.repository, Path):
            return self.repository / "tmp"
        return _private_scratch()


@functools.cache
def _private_scratch() -> Path:
    """A 0700 directory of this process for remote repositories, removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="dbkeep-scratch-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def _as_tuple_of_strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",")] if value.strip() else []
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError("a list of patterns (or one comma-separated string)")
    if not all(isinstance(item, str) and item for item in items):
        raise ValueError("a list of non-empty pattern strings")
    return tuple(items)


def _bounded_int(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"an integer from {low} to {high}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"an integer from {low} to {high}") from None
        if not low <= number <= high or (isinstance(value, float) and value != number):
            raise ValueError(f"an integer from {low} to {high}")
        return number

    return parse


def _chunk_size(value: Any) -> int:
    number = _bounded_int(4096, 4 * 1024 * 1024)(value)
    if number & (number - 1):
        raise ValueError("a power of two from 4096 to 4194304 (page-aligned chunks need one)")
    return number


def _non_negative_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a number of seconds, 0 or more")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("a number of seconds, 0 or more") from None
    if number < 0 or number != number:
        raise ValueError("a number of seconds, 0 or more")
    return number


def _repository(value: Any) -> Path | str:
    if isinstance(value, str) and value.startswith("s3://"):
        from .s3storage import parse_s3_location

        try:
            parse_s3_location(value)
        except ConfigError as error:
            raise ValueError(f"an s3://bucket/prefix location ({error})") from None
        return value
    return _path(value)


def _path(value: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError("a directory path")
    return Path(value)


def _databases(value: Any) -> tuple[DatabaseConfig, ...]:
    """Database-server entries: URLs or mappings (sources/server.py), names unique."""
    if value is None:
        return ()
    if isinstance(value, (str, Mapping)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError("a list of database URLs (postgresql://user@host:5432/db, mysql://user@host:3306/db) or mappings")
    parsed: list[DatabaseConfig] = []
    for position, item in enumerate(value):
        try:
            parsed.append(parse_database_entry(item))
        except ValueError as error:
            raise ValueError(f"entry {position}: {error}") from None
    names = [database.name for database in parsed]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"unique names; give each of {', '.join(duplicates)} its own 'name'")
    return tuple(parsed)


def parse_boolean(value: Any) -> bool:
    """A yes/no setting: a boolean, or true/yes/1 and false/no/0 in any case (from the environment)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "yes", "1", "false", "no", "0"}:
        return value.lower() in {"true", "yes", "1"}
    raise ValueError("true or false")


def _encryption(value: Any) -> str:
    if value in ("none", False, None):
        return "none"
    if value in ("aes-256-gcm", True):
        return "aes-256-gcm"
    raise ValueError("'none' or 'aes-256-gcm' (the passphrase comes from DBKEEP_PASSWORD, never from a setting)")


PARSERS: dict[str, Callable[[Any], Any]] = {
    "root": _path,
    "repository": _repository,
    "include": _as_tuple_of_strings,
    "exclude": _as_tuple_of_strings,
    "compression_level": _bounded_int(0, 22),
    "chunk_size": _chunk_size,
    "keep_last": _bounded_int(1, 1_000_000),
    "quick_check_above": _bounded_int(0, 2**62),
    "lock_wait": _non_negative_float,
    "databases": _databases,
    "encryption": _encryption,
    "reuse_unchanged": parse_boolean,
}


def settings_from_mapping(values: Mapping[str, Any], *, root: Path | None = None, ignore: frozenset[str] = frozenset()) -> Settings:
    """Validate ``values`` into Settings; raises ConfigError listing every problem.

    Relative ``repository`` paths are taken from the project root. Keys in
    ``ignore`` belong to other parts of dbkeep and are passed over here.
    """
    problems: list[str] = []
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        if key in ignore:
            continue
        parser = PARSERS.get(key)
        if parser is None:
            allowed = ", ".join(sorted(PARSERS))
            problems.append(f"unknown setting backup.{key}; known settings are: {allowed}")
            continue
        try:
            parsed[key] = parser(value)
        except ValueError as error:
            if key == "databases":  # never echo a value that may hold a password
                problems.append(f"backup.databases is not allowed: expected {error}")
            else:
                problems.append(f"backup.{key} = {value!r} is not allowed: expected {error}")
    if problems:
        raise ConfigError("; ".join(problems))
    project_root = Path(parsed.pop("root", root or Path.cwd())).resolve()
    repository = parsed.pop("repository", Path(DEFAULT_REPOSITORY))
    if isinstance(repository, Path):
        repository = Path(os.path.abspath(repository if repository.is_absolute() else project_root / repository))
    known = {field.name for field in fields(Settings)}
    return Settings(root=project_root, repository=repository, **{k: v for k, v in parsed.items() if k in known})


def config_defaults() -> dict[str, Any]:
    """Defaults as Invoke config, so ``INVOKE_BACKUP_<KEY>`` can override each key.

    Every value is a string (lists comma-separated): Invoke casts an environment
    variable to the type of the value it overrides, and a typed default would make
    a bad value (``INVOKE_BACKUP_KEEP_LAST=ten``) or any list (``INVOKE_BACKUP_INCLUDE``)
    fail inside Invoke with a traceback. As strings they all reach
    ``settings_from_mapping``, which names the key, the value and what is allowed.
    """
    return {
        "repository": DEFAULT_REPOSITORY,
        "include": ",".join(DEFAULT_INCLUDE),
        "exclude": "",
        "compression_level": str(DEFAULT_COMPRESSION_LEVEL),
        "chunk_size": str(DEFAULT_CHUNK_SIZE),
        "keep_last": str(DEFAULT_KEEP_LAST),
        "quick_check_above": str(GIB),
        "lock_wait": str(DEFAULT_LOCK_WAIT),
        "encryption": "none",
        "reuse_unchanged": "true",
    }


def load_settings(root: Path | None = None, **overrides: Any) -> Settings:
    """Settings for a project the way the CLI sees them, for library callers.

    Reads the project's ``invoke.yaml`` (key ``backup``) and ``INVOKE_BACKUP_*``
    environment variables through Invoke's own config loader, then ``overrides``.
    """
    from invoke import Config

    project_root = Path(root or Path.cwd()).resolve()
    config = Config(defaults={"backup": config_defaults()}, project_location=str(project_root), lazy=True)
    # Environment first: Invoke casts each variable to the type of the value it
    # replaces, and only the string defaults make that cast unable to fail.
    # The merge order (project below environment) does not depend on load order.
    config.load_shell_env()
    config.load_project()
    section = config.get("backup", {}) or {}
    values = to_plain(section)
    values.update({key: value for key, value in overrides.items() if value is not None})
    return settings_from_mapping(values, root=project_root, ignore=frozenset(EXTERNAL_SECTIONS))


def project_section(config: Any, root: str | os.PathLike[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """The project directory and its ``backup`` section as plain data, from an Invoke ``Config``.

    The directory is ``root``, else where Invoke found tasks.py, else the current
    directory. Its invoke.yaml is loaded into ``config`` first: the ``dbkeep``
    program has no tasks.py to find, so Invoke loads no project file by itself.
    Raises UsageError when the directory does not exist, ConfigError when the
    file cannot be read or ``backup`` is not a mapping.
    """
    from invoke.config import AmbiguousMergeError
    from invoke.exceptions import UnknownFileType
    from invoke.util import yaml

    loaded = getattr(config, "_project_prefix", None)  # where Invoke found tasks.py, if it did
    if root is not None:
        directory = Path(os.path.abspath(root))
    else:
        directory = Path(os.path.abspath(loaded)) if loaded else Path.cwd()
    if not directory.is_dir():
        raise UsageError(f"project root {directory} is not a directory")
    if loaded != os.path.join(str(directory), ""):
        try:
            config.set_project_location(str(directory))
            config.load_project()
        except AmbiguousMergeError as error:
            raise ConfigError(f"invoke.yaml in {directory}: 'backup' must be a mapping of settings, and so must each of its sections") from error
        except (yaml.YAMLError, ValueError, OSError, UnknownFileType) as error:  # ValueError: bad invoke.json
            detail = " ".join(str(error).split())
            raise ConfigError(f"cannot read the project configuration (invoke.yaml) in {directory}: {detail}") from error
    section = to_plain(config.get("backup", {}))
    if not isinstance(section, dict):
        raise ConfigError(f"the 'backup' configuration must be a mapping of settings, not {section!r}")
    return directory, section


#: Sub-sections of ``backup:`` owned by other parts of dbkeep (routines, notifications).
EXTERNAL_SECTIONS = ("retention", "notify", "maintenance", "report")


def to_plain(value: Any) -> Any:
    """Invoke's DataProxy is not a Mapping: turn config sections into plain dicts."""
    if hasattr(value, "items"):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_plain(item) for item in value]
    return value
