"""Database servers (PostgreSQL, MySQL/MariaDB): what the engines share.

Owns: the ``DatabaseConfig`` record and its parsing from a URL or a mapping
(with the usual environment variables as fallbacks), running the servers' own
client tools as subprocesses (queries, a dump streamed from stdout, a restore
streamed into stdin), turning their failures into one-line ``SourceError``s,
and the engine-independent flows built on the engine modules: capture, restore
drill and comparison with a manifest. Never imports the repository: callers
hand in byte streams and take byte streams out.

Passwords never appear in a process's argument list or in a manifest: the
PostgreSQL tools get ``PGPASSWORD`` in their environment, the MySQL tools a
0600 option file (``--defaults-extra-file``) that is removed when they exit.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from ..errors import SourceError
from ..manifest import ServerInfo

ENGINES = ("postgres", "mysql")
SCHEMES = {"postgres": "postgres", "postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}
DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306}
ENTRY_KEYS = frozenset({"url", "engine", "name", "host", "port", "user", "database", "password_env", "bin_dir", "maintenance_database"})
#: Marks every database dbkeep creates for itself (drills, restores in progress).
SCRATCH_MARK = "__dbkeep_"
READ_PIECE = 256 * 1024
STDERR_KEEP = 64 * 1024

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseConfig:
    """One database on a server, as configured under ``backup.databases``.

    ``name`` is the logical path the snapshot stores it under (``postgres/app``).
    ``host``, ``port`` and ``user`` left as None are taken by the client tools
    from their usual environment variables and files. The password is never
    stored here in clear unless it was written in the URL; ``password_env``
    names the environment variable that holds it.
    """

    name: str
    engine: str
    database: str
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password_env: str | None = None
    password: str | None = field(default=None, repr=False)
    bin_dir: str | None = None
    maintenance_database: str | None = None

    def password_value(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The password to hand to the client tools, or None to let them find one."""
        if self.password is not None:
            return self.password
        if self.password_env:
            return (environ if environ is not None else os.environ).get(self.password_env)
        return None

    def location(self, database: str | None = None) -> str:
        """A URL naming the database without any password, for messages and manifests."""
        host = self.host or "(default host)"
        port = f":{self.port}" if self.port else ""
        user = f"{self.user}@" if self.user else ""
        scheme = "postgresql" if self.engine == "postgres" else "mysql"
        return f"{scheme}://{user}{host}{port}/{database or self.database}"


def parse_database_entry(value: Any, environ: Mapping[str, str] | None = None) -> DatabaseConfig:
    """A ``DatabaseConfig`` from a URL string or a mapping; raises ValueError saying what is wrong.

    A mapping may hold ``url`` plus any of ``engine``, ``name``, ``host``,
    ``port``, ``user``, ``database``, ``password_env``, ``bin_dir``,
    ``maintenance_database``; explicit keys win over the URL. Missing parts come
    from PGHOST/PGPORT/PGUSER/PGDATABASE (PostgreSQL) or MYSQL_HOST/
    MYSQL_TCP_PORT/MYSQL_USER/MYSQL_DATABASE (MySQL).
    """
    environ = os.environ if environ is None else environ
    if isinstance(value, str):
        value = {"url": value}
    if not isinstance(value, Mapping):
        raise ValueError("a URL such as postgresql://user@host:5432/db or a mapping with 'url' or 'engine'")
    unknown = sorted(set(value) - ENTRY_KEYS)
    if unknown:
        raise ValueError(f"known keys are {', '.join(sorted(ENTRY_KEYS))}, not {', '.join(map(str, unknown))}")
    parts: dict[str, Any] = {}
    if value.get("url") is not None:
        parts.update(_parse_url(str(value["url"])))
    for key in ENTRY_KEYS - {"url"}:
        if value.get(key) is not None:
            parts[key] = value[key]
    engine = SCHEMES.get(str(parts.get("engine", "")).lower())
    if engine is None:
        raise ValueError("an engine: a URL starting with postgresql:// or mysql://, or engine: postgres | mysql")
    fallback = _environment_fallbacks(engine, environ)
    for key, env_value in fallback.items():
        if parts.get(key) in (None, "") and env_value:
            parts[key] = env_value
    database = parts.get("database")
    if not isinstance(database, str) or not database:
        variable = "PGDATABASE" if engine == "postgres" else "MYSQL_DATABASE"
        raise ValueError(f"a database name (the URL's path, 'database', or {variable})")
    port = parts.get("port")
    if port is not None:
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise ValueError(f"a port number, not {port!r}") from None
        if not 0 < port < 65536 or isinstance(parts.get("port"), bool):
            raise ValueError(f"a port number from 1 to 65535, not {port}")
    name = str(parts.get("name") or f"{engine}/{database}")
    if name.startswith("/") or ".." in name.split("/") or "\\" in name or "\x00" in name or name.endswith("/"):
        raise ValueError(f"a relative logical name such as {engine}/{database}, not {name!r}")
    return DatabaseConfig(
        name=name,
        engine=engine,
        database=database,
        host=_optional_text(parts.get("host")),
        port=port,
        user=_optional_text(parts.get("user")),
        password_env=_optional_text(parts.get("password_env")),
        password=_optional_text(parts.get("password")),
        bin_dir=_optional_text(parts.get("bin_dir")),
        maintenance_database=_optional_text(parts.get("maintenance_database")),
    )


def _optional_text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _parse_url(url: str) -> dict[str, Any]:
    split = urllib.parse.urlsplit(url)
    if split.scheme.lower() not in SCHEMES:
        raise ValueError(f"a URL starting with postgresql:// or mysql://, not {split.scheme or 'one without a scheme'}://")
    try:
        port = split.port
    except ValueError:
        raise ValueError("a URL with a numeric port") from None
    query = urllib.parse.parse_qs(split.query)
    parts: dict[str, Any] = {
        "engine": split.scheme.lower(),
        "host": urllib.parse.unquote(split.hostname) if split.hostname else None,
        "port": port,
        "user": urllib.parse.unquote(split.username) if split.username else None,
        "password": urllib.parse.unquote(split.password) if split.password is not None else None,
        "database": urllib.parse.unquote(split.path.lstrip("/")) or None,
    }
    if "password_env" in query:
        parts["password_env"] = query["password_env"][-1]
    return parts


def _environment_fallbacks(engine: str, environ: Mapping[str, str]) -> dict[str, str | None]:
    if engine == "postgres":
        return {"host": environ.get("PGHOST"), "port": environ.get("PGPORT"), "user": environ.get("PGUSER"), "database": environ.get("PGDATABASE")}
    return {
        "host": environ.get("MYSQL_HOST"),
        "port": environ.get("MYSQL_TCP_PORT"),
        "user": environ.get("MYSQL_USER"),
        "database": environ.get("MYSQL_DATABASE"),
    }


# -- engines -------------------------------------------------------------------------


def engine_module(engine: str) -> ModuleType:
    """The module that implements ``engine`` (borgmatic style: one module per engine)."""
    if engine == "postgres":
        from . import postgres

        return postgres
    if engine == "mysql":
        from . import mysql

        return mysql
    raise SourceError(f"unknown database engine {engine!r}; use postgres or mysql")


@dataclass(frozen=True, slots=True, kw_only=True)
class Description:
    """What an engine's ``describe`` finds in a live database."""

    server_version: str
    database_size: int
    encoding: str
    collation: str
    schema_hash: str
    tables: tuple[str, ...]


def scratch_name(database: str, *, purpose: str = "drill", limit: int = 63) -> str:
    """A fresh database name that says who made it and why: ``app__dbkeep_drill_3f9a1c``."""
    suffix = f"{SCRATCH_MARK}{purpose}_{secrets.token_hex(3)}"
    return database[: max(1, limit - len(suffix))] + suffix


# -- running the client tools --------------------------------------------------------


def explainer(config: DatabaseConfig, database: str | None, explain_failure: Callable[[str, str], str]) -> Explain:
    """Turn a client tool's stderr into one line naming the database, using the engine's own reading."""
    location = config.location(database)

    def explain(stderr: str) -> str:
        return f"{config.name}: {explain_failure(stderr, location)}"

    return explain


def find_tool(config: DatabaseConfig, names: Iterable[str], package_hint: str) -> str:
    """The path of the first of ``names`` found in ``bin_dir`` or on PATH; SourceError if none."""
    names = tuple(names)
    for name in names:
        if config.bin_dir:
            candidate = Path(config.bin_dir) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        elif found := shutil.which(name):
            return found
    where = f"in {config.bin_dir}" if config.bin_dir else "on PATH"
    raise SourceError(f"{config.name}: {' / '.join(names)} not found {where}; install {package_hint} or set bin_dir for this database")


class _StderrTail:
    """Drains a child's stderr on a thread (so it never blocks) and keeps its tail."""

    def __init__(self, stream) -> None:
        self._pieces: deque[bytes] = deque()
        self._size = 0
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream) -> None:
        with contextlib.suppress(OSError, ValueError):
            while piece := stream.read(8192):
                self._pieces.append(piece)
                self._size += len(piece)
                while self._size > STDERR_KEEP and len(self._pieces) > 1:
                    self._size -= len(self._pieces.popleft())

    def text(self) -> str:
        self._thread.join(timeout=30)
        return b"".join(self._pieces).decode("utf-8", "replace")


Explain = Callable[[str], str]


def _start(argv: list[str], env: Mapping[str, str], *, stdin: int | None, stdout: int | None) -> subprocess.Popen:
    try:
        return subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=dict(env), start_new_session=True)
    except OSError as error:
        raise SourceError(f"cannot run {argv[0]}: {error.strerror or error}") from error


def _finish(process: subprocess.Popen, stderr: _StderrTail, explain: Explain) -> None:
    code = process.wait()
    text = stderr.text()
    if code != 0:
        raise SourceError(explain(text) if text.strip() else f"{os.path.basename(process.args[0])} exited with status {code}")


def run_tool(argv: list[str], env: Mapping[str, str], explain: Explain, *, stdin_data: bytes | None = None) -> bytes:
    """Run a client tool to completion; its stdout, or SourceError with ``explain(stderr)``."""
    try:
        result = subprocess.run(argv, input=stdin_data, capture_output=True, env=dict(env), timeout=None, check=False)
    except OSError as error:
        raise SourceError(f"cannot run {argv[0]}: {error.strerror or error}") from error
    if result.returncode != 0:
        text = result.stderr.decode("utf-8", "replace")
        raise SourceError(explain(text) if text.strip() else f"{os.path.basename(argv[0])} exited with status {result.returncode}")
    return result.stdout


@contextlib.contextmanager
def stream_tool(argv: list[str], env: Mapping[str, str], explain: Explain) -> Iterator[Iterator[bytes]]:
    """Run a dump tool; yields an iterator over its stdout, piece by piece.

    When the block ends the tool must have exited 0, or SourceError says why. If
    the block raises, the tool is killed so it never keeps a snapshot open.
    """
    process = _start(argv, env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    stderr = _StderrTail(process.stderr)

    def pieces() -> Iterator[bytes]:
        while piece := process.stdout.read(READ_PIECE):
            yield piece

    try:
        yield pieces()
        # A consumer that stopped early must not be told the dump succeeded.
        if process.stdout.read(1):
            raise SourceError(f"{os.path.basename(argv[0])} produced more output than was read")
    except BaseException:
        _kill(process)
        raise
    finally:
        process.stdout.close()
    _finish(process, stderr, explain)


def feed_tool(argv: list[str], env: Mapping[str, str], pieces: Iterable[bytes], explain: Explain) -> None:
    """Run a restore tool with ``pieces`` on its stdin; SourceError if it fails.

    If reading ``pieces`` raises (a damaged chunk), the tool is killed before
    its stdin is closed: it never sees a clean end of input, so a transaction it
    holds is rolled back, not committed with half the dump.
    """
    process = _start(argv, env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    stderr = _StderrTail(process.stderr)
    try:
        for piece in pieces:
            process.stdin.write(piece)
    except BrokenPipeError:
        pass  # the tool stopped reading: it failed, and _finish says why
    except BaseException:
        _kill(process)
        raise
    with contextlib.suppress(BrokenPipeError, OSError):
        process.stdin.close()
    _finish(process, stderr, explain)


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(OSError):
        process.kill()
    with contextlib.suppress(OSError, ValueError):
        process.stdin and process.stdin.close()
    process.wait()


@contextlib.contextmanager
def private_file(contents: str) -> Iterator[str]:
    """A 0600 file in a fresh 0700 directory holding ``contents``; removed afterwards."""
    directory = tempfile.mkdtemp(prefix="dbkeep-")
    path = os.path.join(directory, "client.cnf")
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(contents)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)


def first_error_line(text: str) -> str:
    """The most telling line of a tool's stderr: the first ERROR/FATAL line, else the first line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if re.search(r"\b(ERROR|FATAL|error)\b", line):
            return line[:400]
    return (lines[0] if lines else "no error message")[:400]


# -- engine-independent flows --------------------------------------------------------


def capture_database(config: DatabaseConfig, consume: Callable[[Iterator[bytes]], T]) -> tuple[T, ServerInfo]:
    """Dump ``config``'s database and hand the bytes to ``consume`` as they arrive.

    The dump is one consistent state (pg_dump's snapshot, or mysqldump's
    ``--single-transaction``). The returned ServerInfo counts the rows the dump
    itself holds, so a restore is checked against exactly what was stored.
    Raises SourceError if the tool fails or the schema changed while dumping.
    """
    engine = engine_module(config.engine)
    before = engine.describe(config)
    counter = engine.RowCounter()

    def counted(pieces: Iterator[bytes]) -> Iterator[bytes]:
        for piece in pieces:
            counter.feed(piece)
            yield piece

    with engine.dump(config, before) as pieces:
        result = consume(counted(pieces))
    after = engine.describe(config)
    if after.schema_hash != before.schema_hash:
        raise SourceError(f"{config.name}: the schema changed while it was being dumped; run the backup again")
    counts = counter.finish()
    extra = sorted(set(counts) - set(before.tables))
    if extra:
        raise SourceError(f"{config.name}: the dump holds rows of tables the server did not list ({', '.join(extra[:5])}); run the backup again")
    tables = {table: counts.get(table, 0) for table in before.tables}
    info = ServerInfo(
        engine=config.engine,
        server_version=before.server_version,
        host=config.host or "",
        port=config.port,
        user=config.user or "",
        database=config.database,
        database_size=before.database_size,
        encoding=before.encoding,
        collation=before.collation,
        schema_hash=before.schema_hash,
        tables=tables,
        dump_tool=engine.dump_tool_version(config),
        dump_format=engine.DUMP_FORMAT,
    )
    return result, info


def compare_with_manifest(expected: ServerInfo, schema_hash: str, tables: Mapping[str, int]) -> list[str]:
    """Differences between a restored database and its manifest record; [] if none."""
    problems: list[str] = []
    if schema_hash != expected.schema_hash:
        problems.append("schema differs from the one recorded at backup time")
    for table, rows in sorted(expected.tables.items()):
        found = tables.get(table)
        if found is None:
            problems.append(f"table {table} is missing")
        elif found != rows:
            problems.append(f"table {table} has {found} rows, the manifest says {rows}")
    return problems


def check_restored(config: DatabaseConfig, database: str, expected: ServerInfo) -> list[str]:
    """Compare a restored ``database`` on ``config``'s server with ``expected``."""
    engine = engine_module(config.engine)
    found = engine.describe(config, database=database)
    return compare_with_manifest(expected, found.schema_hash, engine.count_rows(config, database, tuple(expected.tables)))


@dataclass(frozen=True, slots=True, kw_only=True)
class DrillResult:
    """What a restore drill found: the scratch database it used and every problem."""

    name: str
    scratch_database: str
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def drill_database(config: DatabaseConfig, pieces: Iterable[bytes], expected: ServerInfo) -> DrillResult:
    """Restore ``pieces`` into a scratch database on the same server, compare, drop it.

    The scratch database is created and dropped by dbkeep, whatever happens in
    between. A dump the server refuses is a problem in the result, not an
    exception; failing to reach the server raises SourceError.
    """
    engine = engine_module(config.engine)
    scratch = scratch_name(config.database, limit=engine.NAME_LIMIT)
    engine.create_database(config, scratch, expected=expected)
    try:
        try:
            engine.restore_into(config, scratch, pieces)
        except SourceError as error:
            return DrillResult(name=config.name, scratch_database=scratch, problems=(f"the dump does not restore: {error}",))
        problems = check_restored(config, scratch, expected)
    finally:
        engine.drop_database(config, scratch)
    return DrillResult(name=config.name, scratch_database=scratch, problems=tuple(problems))


def restore_database(
    config: DatabaseConfig,
    expected: ServerInfo,
    open_dump: Callable[[], Iterable[bytes]],
    *,
    target: str,
    open_rollback: Callable[[], Iterable[bytes]] | None = None,
) -> str:
    """Replace database ``target`` on ``config``'s server with the dump ``open_dump()`` yields.

    The engine decides how (docs/servers.md): PostgreSQL restores into a fresh
    database and swaps it in by rename only after it matched ``expected``;
    MySQL drills the dump first, then rebuilds ``target`` and, if that fails,
    puts ``open_rollback()`` (the safety dump) back. Returns a one-line account
    of what was done; raises SourceError if the restore did not happen.
    """
    return engine_module(config.engine).replace_database(config, expected, open_dump, target=target, open_rollback=open_rollback)


def database_exists(config: DatabaseConfig, database: str) -> bool:
    return engine_module(config.engine).database_exists(config, database)


def sql_quote_literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings); NUL cannot occur in names."""
    if "\x00" in value:
        raise SourceError("a name contains a NUL character")
    return "'" + value.replace("'", "''") + "'"
