"""MySQL and MariaDB: describe, dump, restore and drill one database with the server's own tools.

Owns: how ``mariadb``/``mysql`` and ``mariadb-dump``/``mysqldump`` are invoked
(connection and password in a 0600 ``--defaults-extra-file``, never on the
command line), the information_schema queries behind the schema hash and row
counts, counting the rows of a dump's INSERT statements as it streams by, and
the restore strategy.

Dumps use ``--single-transaction --routines --triggers --events --hex-blob``:
one consistent InnoDB snapshot without locking writers, and binary values as
hex so no character-set conversion can touch them. MySQL cannot roll back DDL
and cannot rename a database, so restore cannot be one transaction. Instead
the dump is first restored into a scratch database and checked there (a bad
dump never reaches the live database), a safety dump of the live database is
taken by the caller, and only then is the live database rebuilt; if that
fails, the safety dump is put back. docs/servers.md explains the window this
leaves and why it is the best the server allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import SourceError
from ..manifest import ServerInfo
from .server import (
    DatabaseConfig,
    Description,
    check_restored,
    explainer,
    feed_tool,
    find_tool,
    first_error_line,
    private_file,
    run_tool,
    stream_tool,
)

ENGINE = "mysql"
DUMP_FORMAT = "mysqldump sql"
NAME_LIMIT = 64
PACKAGE_HINT = "the MariaDB or MySQL client tools (Debian: apt-get install mariadb-client)"
CLIENTS = ("mariadb", "mysql")
DUMPERS = ("mariadb-dump", "mysqldump")
LOCK_WAIT_SECONDS = 60


def quote_identifier(name: str) -> str:
    if "\x00" in name:
        raise SourceError("a name contains a NUL character")
    return "`" + name.replace("`", "``") + "`"


def quote_literal(value: str) -> str:
    if "\x00" in value:
        raise SourceError("a name contains a NUL character")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# -- running the tools ---------------------------------------------------------------


def _option_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@contextlib.contextmanager
def _options(config: DatabaseConfig) -> Iterator[str]:
    """The connection as a private option file: the password never reaches argv."""
    lines = ["[client]"]
    if config.host:
        lines.append(f"host={_option_value(config.host)}")
    if config.port:
        lines.append(f"port={int(config.port)}")
    if config.user:
        lines.append(f"user={_option_value(config.user)}")
    password = config.password_value()
    if password is not None:
        lines.append(f"password={_option_value(password)}")
    with private_file("\n".join(lines) + "\n") as path:
        yield path


def _explainer(config: DatabaseConfig, database: str | None) -> Callable[[str], str]:
    return explainer(config, database, explain_failure)


def explain_failure(stderr: str, location: str) -> str:
    """One line saying what went wrong in a MySQL tool's stderr and what to do."""
    text = stderr.lower()
    if "column_statistics" in text or "unknown system variable" in text:
        return f"the dump tool does not match the server at {location}; use mariadb-dump for MariaDB servers and mysqldump of the same major version for MySQL (set bin_dir)"
    if re.search(r"error 200[23]|can't connect|connection refused|lost connection to (mysql )?server at 'handshake", text):
        return f"cannot connect to MySQL at {location} (connection refused); start the server or check host and port"
    if re.search(r"error (1045|1698)|access denied for user", text) and "to database" not in text:
        return f"MySQL at {location} refused the credentials; check the user and the password (password_env or ~/.my.cnf)"
    if re.search(r"error 1049|unknown database", text):
        return f"database does not exist at {location}; check the database name"
    if re.search(r"error (1044|1142|1227)|access denied", text):
        return f"MySQL at {location} refused: {first_error_line(stderr)}; the user needs more privileges"
    return f"MySQL at {location}: {first_error_line(stderr)}"


def _client(config: DatabaseConfig) -> str:
    return find_tool(config, CLIENTS, PACKAGE_HINT)


def query(config: DatabaseConfig, sql: str, *, database: str | None = None) -> list[Any]:
    """Run ``sql`` (rows of one JSON value each) and return the decoded values."""
    client = _client(config)
    with _options(config) as options:
        argv = [client, f"--defaults-extra-file={options}", "--batch", "--raw", "--skip-column-names", "--default-character-set=utf8mb4"]
        if database is not None:
            argv.append(f"--database={database}")
        output = run_tool(argv, _environment(), _explainer(config, database), stdin_data=sql.encode())
    return [json.loads(line) for line in output.decode("utf-8").splitlines() if line.strip()]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MYSQL_PWD", None)  # the option file holds the password, if there is one
    return env


# -- describe ------------------------------------------------------------------------


def _schema_queries(database: str) -> list[str]:
    schema = quote_literal(database)
    return [
        f"SELECT JSON_ARRAY('table', TABLE_NAME, TABLE_TYPE, COALESCE(ENGINE, ''), COALESCE(TABLE_COLLATION, '')) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {schema}",
        f"SELECT JSON_ARRAY('column', TABLE_NAME, ORDINAL_POSITION, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COALESCE(COLUMN_DEFAULT, '<none>'), EXTRA, COALESCE(COLLATION_NAME, '')) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {schema}",
        f"SELECT JSON_ARRAY('index', TABLE_NAME, INDEX_NAME, NON_UNIQUE, SEQ_IN_INDEX, COALESCE(COLUMN_NAME, ''), COALESCE(SUB_PART, ''), INDEX_TYPE) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = {schema}",
        f"SELECT JSON_ARRAY('key', k.TABLE_NAME, k.CONSTRAINT_NAME, k.COLUMN_NAME, k.ORDINAL_POSITION, COALESCE(k.REFERENCED_TABLE_NAME, ''), COALESCE(k.REFERENCED_COLUMN_NAME, ''), COALESCE(r.UPDATE_RULE, ''), COALESCE(r.DELETE_RULE, '')) FROM information_schema.KEY_COLUMN_USAGE k LEFT JOIN information_schema.REFERENTIAL_CONSTRAINTS r ON r.CONSTRAINT_SCHEMA = k.CONSTRAINT_SCHEMA AND r.CONSTRAINT_NAME = k.CONSTRAINT_NAME AND r.TABLE_NAME = k.TABLE_NAME WHERE k.TABLE_SCHEMA = {schema}",
        f"SELECT JSON_ARRAY('view', TABLE_NAME, REPLACE(VIEW_DEFINITION, CONCAT('`', {schema}, '`.'), ''), CHECK_OPTION, SECURITY_TYPE) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = {schema}",
        f"SELECT JSON_ARRAY('trigger', TRIGGER_NAME, EVENT_MANIPULATION, EVENT_OBJECT_TABLE, ACTION_ORDER, ACTION_TIMING, ACTION_STATEMENT) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = {schema}",
        f"SELECT JSON_ARRAY('routine', ROUTINE_NAME, ROUTINE_TYPE, COALESCE(DTD_IDENTIFIER, ''), SHA2(COALESCE(ROUTINE_DEFINITION, ''), 256), IS_DETERMINISTIC, SQL_DATA_ACCESS, SECURITY_TYPE) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {schema}",
        f"SELECT JSON_ARRAY('event', EVENT_NAME, SHA2(COALESCE(EVENT_DEFINITION, ''), 256), EVENT_TYPE, COALESCE(INTERVAL_VALUE, ''), COALESCE(INTERVAL_FIELD, ''), STATUS) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {schema}",
    ]


def describe(config: DatabaseConfig, *, database: str | None = None) -> Description:
    """Server version, size, character set, collation, schema hash and tables of the database.

    Raises SourceError if the server cannot be reached or refuses the query.
    """
    target = database or config.database
    schema = quote_literal(target)
    rows = query(
        config,
        f"""
        SELECT JSON_ARRAY(VERSION(),
          (SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {schema}),
          DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME)
        FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {schema};
        """,
    )
    if not rows:
        raise SourceError(f"{config.name}: database does not exist at {config.location(target)}; check the database name")
    ((version, size, charset, collation),) = rows
    lines = sorted(json.dumps(row, ensure_ascii=False) for row in query(config, ";\n".join(_schema_queries(target)) + ";"))
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode() + b"\n")
    tables = query(config, f"SELECT JSON_ARRAY(TABLE_NAME) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {schema} AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME;")
    return Description(
        server_version=str(version),
        database_size=int(size),
        encoding=str(charset),
        collation=str(collation),
        schema_hash=digest.hexdigest(),
        tables=tuple(row[0] for row in tables),
    )


def count_rows(config: DatabaseConfig, database: str, tables: Iterable[str]) -> dict[str, int]:
    """Exact row counts (``COUNT(*)``) of ``tables`` that exist in ``database``."""
    existing = {row[0] for row in query(config, f"SELECT JSON_ARRAY(TABLE_NAME) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {quote_literal(database)} AND TABLE_TYPE = 'BASE TABLE';")}
    selects = [
        f"SELECT JSON_ARRAY({quote_literal(table)}, (SELECT COUNT(*) FROM {quote_identifier(database)}.{quote_identifier(table)}))"
        for table in tables
        if table in existing
    ]
    if not selects:
        return {}
    return {name: int(rows) for name, rows in query(config, ";\n".join(selects) + ";")}


# -- dump ----------------------------------------------------------------------------


def dump_tool_version(config: DatabaseConfig) -> str:
    path = find_tool(config, DUMPERS, PACKAGE_HINT)
    return subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout.strip()


@contextlib.contextmanager
def dump(config: DatabaseConfig, description: Description) -> Iterator[Iterator[bytes]]:
    """Stream a dump of the database taken in one consistent transaction."""
    path = find_tool(config, DUMPERS, PACKAGE_HINT)
    with _options(config) as options:
        argv = [
            path,
            f"--defaults-extra-file={options}",
            "--single-transaction",
            "--routines",
            "--triggers",
            "--events",
            "--hex-blob",
            "--default-character-set=utf8mb4",
            "--skip-dump-date",
            "--no-tablespaces",
            config.database,
        ]
        with stream_tool(argv, _environment(), _explainer(config, config.database)) as pieces:
            yield pieces


INSERT_LINE = re.compile(rb"INSERT INTO `((?:[^`]|``)+)` VALUES ?")
STRING = re.compile(rb"'(?:[^'\\]|\\.|'')*'", re.DOTALL)


class RowCounter:
    """Counts the rows of each table in a mysqldump stream as it goes by.

    Rows are the tuples of ``INSERT INTO `t` VALUES (...),(...);`` statements,
    whether on one line (MySQL) or one tuple per line (MariaDB); routine and
    trigger bodies (written under ``DELIMITER ;;``) are passed over. String values
    are removed first (mysqldump escapes newlines in them, so none spans a
    line); what remains of a tuple holds no parenthesis but its own.
    """

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self._table: str | None = None
        self._carry = b""
        self._in_routine = False  # between DELIMITER ;; and DELIMITER ;: bodies, not data

    def feed(self, piece: bytes) -> None:
        data = self._carry + piece
        end = data.rfind(b"\n") + 1
        self._carry = data[end:]
        for line in data[:end].split(b"\n")[:-1]:
            self._line(line)

    def _line(self, line: bytes) -> None:
        if self._table is None:
            if line.startswith(b"DELIMITER "):
                self._in_routine = line.strip() != b"DELIMITER ;"
                return
            if self._in_routine or not line.startswith(b"INSERT INTO `"):
                return
            match = INSERT_LINE.match(line)
            if not match:
                return
            self._table = match.group(1).replace(b"``", b"`").decode("utf-8", "surrogateescape")
            self.rows.setdefault(self._table, 0)
            line = line[match.end() :]
        stripped = STRING.sub(b"", line)
        self.rows[self._table] += stripped.count(b"(")
        if stripped.rstrip().endswith(b";"):
            self._table = None

    def finish(self) -> dict[str, int]:
        if self._carry:
            self._line(self._carry)
            self._carry = b""
        return dict(self.rows)


# -- databases -----------------------------------------------------------------------


def database_exists(config: DatabaseConfig, database: str) -> bool:
    return bool(query(config, f"SELECT JSON_ARRAY(1) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {quote_literal(database)};"))


def _character_set(config: DatabaseConfig, like: str | None, expected: ServerInfo | None) -> tuple[str, str] | None:
    if like is not None:
        rows = query(config, f"SELECT JSON_ARRAY(DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {quote_literal(like)};")
        if rows:
            return rows[0][0], rows[0][1]
    if expected is not None and expected.encoding:
        return expected.encoding, expected.collation
    return None


def create_database(config: DatabaseConfig, name: str, *, expected: ServerInfo | None = None, like: str | None = None) -> None:
    """Create the empty database ``name`` with the character set of ``like`` (else of ``expected``)."""
    character_set = _character_set(config, like or config.database, expected)
    clause = f" CHARACTER SET {quote_literal(character_set[0])} COLLATE {quote_literal(character_set[1])}" if character_set else ""
    query(config, f"CREATE DATABASE {quote_identifier(name)}{clause};")


def drop_database(config: DatabaseConfig, name: str) -> None:
    query(config, f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}; DROP DATABASE IF EXISTS {quote_identifier(name)};")


def restore_into(config: DatabaseConfig, database: str, pieces: Iterable[bytes]) -> None:
    """Run a dump into ``database``; stops at the first error (raised as SourceError)."""
    client = _client(config)
    with _options(config) as options:
        argv = [client, f"--defaults-extra-file={options}", "--batch", "--binary-mode", "--default-character-set=utf8mb4", f"--database={database}"]
        feed_tool(argv, _environment(), pieces, _explainer(config, database))


# -- restore -------------------------------------------------------------------------


def _rebuild(config: DatabaseConfig, target: str, pieces: Iterable[bytes], character_set: tuple[str, str] | None) -> None:
    clause = f" CHARACTER SET {quote_literal(character_set[0])} COLLATE {quote_literal(character_set[1])}" if character_set else ""
    name = quote_identifier(target)
    query(config, f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}; DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name}{clause};")
    restore_into(config, target, pieces)


def replace_database(
    config: DatabaseConfig,
    expected: ServerInfo,
    open_dump: Callable[[], Iterable[bytes]],
    *,
    target: str,
    open_rollback: Callable[[], Iterable[bytes]] | None = None,
) -> str:
    """Drill the dump into a scratch database, then rebuild ``target`` from it.

    A dump that does not restore cleanly, or whose row counts or schema differ
    from ``expected``, fails in the scratch database and ``target`` is never
    touched. If rebuilding ``target`` fails, ``open_rollback()`` (the safety
    dump of ``target``) is restored into it and SourceError says so.
    """
    from .server import drill_database

    drill = drill_database(config, open_dump(), expected)
    if not drill.ok:
        raise SourceError(f"{config.name}: the snapshot's dump failed its drill ({drill.problems[0]}); {target} was not changed")
    existed = database_exists(config, target)
    character_set = _character_set(config, target if existed else None, expected)
    try:
        _rebuild(config, target, open_dump(), character_set)
        problems = check_restored(config, target, expected)
        if problems:
            raise SourceError(f"{config.name}: {target} does not match the snapshot after the restore ({problems[0]})")
    except BaseException as error:
        if not existed:
            with contextlib.suppress(SourceError):
                drop_database(config, target)
            raise
        if open_rollback is None:
            raise
        try:
            _rebuild(config, target, open_rollback(), character_set)
        except Exception as rollback_error:
            raise SourceError(
                f"{config.name}: restoring {target} failed ({error}) and putting back its previous state failed too ({rollback_error}); "
                "restore the safety snapshot by hand"
            ) from error
        raise SourceError(f"{config.name}: restoring {target} failed ({error}); its previous state was put back from the safety dump") from error
    if not existed:
        return f"restored into new database {target} (drilled first)"
    return f"restored into {target} (drilled in a scratch database first)"
