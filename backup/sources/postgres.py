"""PostgreSQL: describe, dump, restore and drill one database with the server's own tools.

Owns: how ``psql`` and ``pg_dump`` are invoked (connection through PG*
environment variables, the password in PGPASSWORD, never on the command line),
the catalog queries behind the schema hash and row counts, counting the rows
of a plain-format dump as it streams by, and the restore strategy.

Dumps are ``pg_dump --format=plain``: uncompressed text (dbkeep compresses, and
only uncompressed dumps deduplicate across days), restorable with ``psql``
alone, one row per line. Restore never writes into the live database: the dump
goes into a fresh database in one transaction (``psql --single-transaction -v
ON_ERROR_STOP=1``), is compared with the manifest, and only then swapped in by
two renames in one transaction. Until the swap the live database is untouched;
the swap itself is atomic. docs/servers.md explains why.
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
    run_tool,
    scratch_name,
    sql_quote_literal,
    stream_tool,
)

ENGINE = "postgres"
DUMP_FORMAT = "pg_dump plain"
NAME_LIMIT = 63
PACKAGE_HINT = "the PostgreSQL client tools (Debian: apt-get install postgresql-client)"
LOCK_WAIT_MS = 30_000

SYSTEM_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'"

TABLES_SQL = f"""
SELECT json_build_array(n.nspname || '.' || c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND {SYSTEM_SCHEMAS}
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1::text
"""

#: One line per schema object, free of OIDs and of the database's name, so a
#: restored copy describes exactly like the original.
SCHEMA_SQL = f"""
WITH ns AS (SELECT n.oid, n.nspname FROM pg_namespace n WHERE {SYSTEM_SCHEMAS})
SELECT json_build_array(line) FROM (
  SELECT 'schema ' || nspname AS line FROM ns
  UNION ALL
  SELECT format('relation %s.%s %s %s', ns.nspname, c.relname, c.relkind, c.relpersistence)
  FROM pg_class c JOIN ns ON ns.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')
  UNION ALL
  SELECT format('column %s.%s %s %s %s %s %s', ns.nspname, c.relname,
                row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), a.attname,
                format_type(a.atttypid, a.atttypmod), a.attnotnull, coalesce(pg_get_expr(d.adbin, d.adrelid), ''))
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN ns ON ns.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
  UNION ALL
  SELECT format('constraint %s.%s %s %s', ns.nspname, c.relname, con.conname, pg_get_constraintdef(con.oid))
  FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN ns ON ns.oid = c.relnamespace
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN ns ON ns.oid = c.relnamespace
  UNION ALL
  SELECT format('view %s.%s %s', ns.nspname, c.relname, pg_get_viewdef(c.oid))
  FROM pg_class c JOIN ns ON ns.oid = c.relnamespace WHERE c.relkind IN ('v', 'm')
  UNION ALL
  SELECT 'trigger ' || pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN ns ON ns.oid = c.relnamespace WHERE NOT t.tgisinternal
  UNION ALL
  SELECT format('routine %s.%s(%s) %s %s %s', ns.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
                p.prokind, format_type(p.prorettype, NULL), md5(coalesce(p.prosrc, '')))
  FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
  UNION ALL
  SELECT format('sequence %s.%s %s %s %s %s %s %s', ns.nspname, c.relname, format_type(s.seqtypid, NULL),
                s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcycle)
  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN ns ON ns.oid = c.relnamespace
  UNION ALL
  SELECT format('type %s.%s %s %s', ns.nspname, t.typname, t.typtype,
                coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid), ''))
  FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
  WHERE t.typtype IN ('e', 'd', 'r', 'm') OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
  UNION ALL
  SELECT format('extension %s %s', extname, extversion) FROM pg_extension
  UNION ALL
  SELECT format('policy %s.%s %s %s %s %s', ns.nspname, c.relname, pol.polname, pol.polcmd,
                coalesce(pg_get_expr(pol.polqual, pol.polrelid), ''), coalesce(pg_get_expr(pol.polwithcheck, pol.polrelid), ''))
  FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid JOIN ns ON ns.oid = c.relnamespace
) AS lines ORDER BY line
"""

SERVER_SQL = """
SELECT json_build_array(current_setting('server_version'), current_setting('server_version_num')::int,
                        pg_database_size(d.oid), pg_encoding_to_char(d.encoding), d.datcollate)
FROM pg_database d WHERE d.datname = current_database()
"""


def quote_identifier(name: str) -> str:
    if "\x00" in name:
        raise SourceError("a name contains a NUL character")
    return '"' + name.replace('"', '""') + '"'


# -- running the tools ---------------------------------------------------------------


def _environment(config: DatabaseConfig, database: str) -> dict[str, str]:
    env = dict(os.environ)
    for variable, value in (("PGHOST", config.host), ("PGPORT", config.port), ("PGUSER", config.user)):
        if value is not None:
            env[variable] = str(value)
    env["PGDATABASE"] = database
    password = config.password_value()
    if password is not None:
        env["PGPASSWORD"] = password
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    env["PGAPPNAME"] = "dbkeep"
    env["PGCLIENTENCODING"] = "UTF8"
    env.pop("PGOPTIONS", None)
    return env


def _explainer(config: DatabaseConfig, database: str) -> Callable[[str], str]:
    return explainer(config, database, explain_failure)


def explain_failure(stderr: str, location: str) -> str:
    """One line saying what went wrong in a PostgreSQL tool's stderr and what to do."""
    text = stderr.lower()
    if "server version mismatch" in text:
        versions = re.findall(r"version:?\s*([0-9][0-9.]*)", stderr)
        detail = f" (server {versions[0]}, pg_dump {versions[1]})" if len(versions) >= 2 else ""
        return f"pg_dump is older than the server at {location}{detail}; install the client tools of the server's major version (postgresql-client-N) or set bin_dir"
    if "connection refused" in text or "could not connect" in text or "no such file or directory" in text or "timeout expired" in text:
        return f"cannot connect to PostgreSQL at {location} (connection refused); start the server or check host and port"
    if "password authentication failed" in text or "no password supplied" in text or "authentication failed" in text:
        return f"PostgreSQL at {location} refused the credentials; check the user and the password (password_env, PGPASSWORD or ~/.pgpass)"
    if re.search(r'role "[^"]*" does not exist', text):
        return f"PostgreSQL at {location} has no such user ({first_error_line(stderr)}); check the user"
    if re.search(r'database "[^"]*" does not exist', text):
        return f"database does not exist at {location}; check the database name"
    if "permission denied" in text or "must be owner" in text or "must be superuser" in text:
        return f"PostgreSQL at {location} refused: {first_error_line(stderr)}; the user needs more privileges (owner of the database, CREATEDB)"
    return f"PostgreSQL at {location}: {first_error_line(stderr)}"


def _psql(config: DatabaseConfig) -> str:
    return find_tool(config, ["psql"], PACKAGE_HINT)


def query(config: DatabaseConfig, sql: str, *, database: str | None = None) -> list[Any]:
    """Run ``sql`` (rows of one JSON value each) and return the decoded values."""
    target = database or config.database
    argv = [_psql(config), "-X", "-w", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"]
    output = run_tool(argv, _environment(config, target), _explainer(config, target), stdin_data=sql.encode())
    return [json.loads(line) for line in output.decode("utf-8").splitlines() if line.strip()]


def execute(config: DatabaseConfig, sql: str, *, database: str | None = None) -> None:
    """Run statements (each in its own transaction unless the SQL says otherwise)."""
    query(config, sql, database=database)


def _maintenance(config: DatabaseConfig) -> str:
    return config.maintenance_database or "postgres"


# -- describe ------------------------------------------------------------------------


def describe(config: DatabaseConfig, *, database: str | None = None) -> Description:
    """Server version, size, encoding, collation, schema hash and tables of the database.

    Raises SourceError if the server cannot be reached or refuses the query.
    """
    target = database or config.database
    ((version, _number, size, encoding, collation),) = query(config, SERVER_SQL, database=target)
    digest = hashlib.sha256()
    for (line,) in query(config, SCHEMA_SQL, database=target):
        digest.update(line.encode() + b"\n")
    tables = tuple(row[0] for row in query(config, TABLES_SQL, database=target))
    return Description(
        server_version=str(version),
        database_size=int(size),
        encoding=str(encoding),
        collation=str(collation),
        schema_hash=digest.hexdigest(),
        tables=tables,
    )


def count_rows(config: DatabaseConfig, database: str, tables: Iterable[str]) -> dict[str, int]:
    """Exact row counts (``count(*) FROM ONLY``) of ``tables`` (``schema.table``) in ``database``."""
    tables = list(tables)
    if not tables:
        return {}
    existing = {row[0] for row in query(config, TABLES_SQL, database=database)}
    selects = []
    for table in tables:
        if table not in existing:
            continue
        schema, _, name = table.partition(".")
        selects.append(f"SELECT json_build_array({sql_quote_literal(table)}, (SELECT count(*) FROM ONLY {quote_identifier(schema)}.{quote_identifier(name)}))")
    if not selects:
        return {}
    return {name: int(rows) for name, rows in query(config, "\nUNION ALL\n".join(selects), database=database)}


# -- dump ----------------------------------------------------------------------------


def _tool_major(path: str) -> int | None:
    try:
        output = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    match = re.search(r"(\d+)(?:\.(\d+))?", output)
    return int(match.group(1)) if match else None


def dump_tool_version(config: DatabaseConfig) -> str:
    path = find_tool(config, ["pg_dump"], PACKAGE_HINT)
    return subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout.strip()


@contextlib.contextmanager
def dump(config: DatabaseConfig, description: Description) -> Iterator[Iterator[bytes]]:
    """Stream a plain-format, uncompressed dump of the database (one snapshot).

    Raises SourceError before starting when pg_dump is older than the server
    (it cannot read a newer server's catalog), or when the dump fails.
    """
    path = find_tool(config, ["pg_dump"], PACKAGE_HINT)
    tool_major = _tool_major(path)
    server_major = _major(description.server_version)
    if tool_major is not None and server_major is not None and server_major > tool_major:
        raise SourceError(
            f"{config.name}: pg_dump {tool_major} cannot dump PostgreSQL {description.server_version} at {config.location()}; "
            f"install postgresql-client-{server_major} (or newer) and set bin_dir if it is not first on PATH"
        )
    argv = [path, "--format=plain", "--no-password", "--encoding=UTF8", f"--lock-wait-timeout={LOCK_WAIT_MS}"]
    with stream_tool(argv, _environment(config, config.database), _explainer(config, config.database)) as pieces:
        yield pieces


def _major(version: str) -> int | None:
    match = re.match(r"(\d+)", version)
    return int(match.group(1)) if match else None


_IDENTIFIER = rb'(?:"(?:[^"]|"")*"|[^\s."(]+)'
COPY_LINE = re.compile(rb"COPY (" + _IDENTIFIER + rb")\.(" + _IDENTIFIER + rb") ")


def _unquote(identifier: bytes) -> str:
    text = identifier.decode("utf-8", "surrogateescape")
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text


class RowCounter:
    """Counts the rows of each table in a plain-format dump as it streams by.

    COPY blocks hold one row per line (newlines inside values are escaped) and
    end with a line holding ``\\.``; everything else is passed over.
    """

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self._table: str | None = None
        self._carry = b""
        self._mid_line = False  # the carry was dropped in the middle of a long row

    def feed(self, piece: bytes) -> None:
        data = (b"x" if self._mid_line else b"") + self._carry + piece
        end = data.rfind(b"\n") + 1
        position = 1 if self._mid_line and end else 0
        if self._mid_line and end:
            # The long row ends at the first newline: count it, go on from there.
            first = data.find(b"\n")
            self.rows[self._table] += 1  # type: ignore[index]
            position = first + 1
        if end:
            self._mid_line = False
            self._lines(data, position, end)
            self._carry = data[end:]
        else:
            self._carry = data[1:] if self._mid_line else data
        if self._table is not None and len(self._carry) > 64:
            self._carry = b""
            self._mid_line = True

    def _lines(self, data: bytes, position: int, end: int) -> None:
        while position < end:
            if self._table is not None:
                stop = _line_starting(data, b"\\.\n", position, end)
                if stop < 0:
                    self.rows[self._table] += data.count(b"\n", position, end)
                    return
                self.rows[self._table] += data.count(b"\n", position, stop)
                self._table = None
                position = stop + 3
                continue
            start = _line_starting(data, b"COPY ", position, end)
            if start < 0:
                return
            line_end = data.find(b"\n", start, end)
            match = COPY_LINE.match(data, start, line_end)
            if match and data.endswith(b" FROM stdin;", start, line_end):
                self._table = f"{_unquote(match.group(1))}.{_unquote(match.group(2))}"
                self.rows.setdefault(self._table, 0)
            position = line_end + 1

    def finish(self) -> dict[str, int]:
        return dict(self.rows)


def _line_starting(data: bytes, prefix: bytes, position: int, end: int) -> int:
    """Offset of the first line in ``data[position:end]`` that starts with ``prefix``, or -1."""
    found = data.find(prefix, position, end)
    while found > position and data[found - 1] != 0x0A:
        found = data.find(prefix, found + 1, end)
    return found


# -- databases -----------------------------------------------------------------------


def database_exists(config: DatabaseConfig, database: str) -> bool:
    rows = query(config, f"SELECT json_build_array(1) FROM pg_database WHERE datname = {sql_quote_literal(database)}", database=_maintenance(config))
    return bool(rows)


PROPERTIES_SQL = """
SELECT json_build_array(pg_encoding_to_char(d.encoding), d.datcollate, d.datctype, pg_get_userbyid(d.datdba), d.datconnlimit,
  to_jsonb(d)->>'datlocprovider', coalesce(to_jsonb(d)->>'daticulocale', to_jsonb(d)->>'datlocale'),
  d.datacl IS NULL,
  (SELECT json_agg(json_build_array(CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable))
     FROM aclexplode(d.datacl) a),
  (SELECT json_agg(json_build_array(CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, s.setconfig))
     FROM pg_db_role_setting s WHERE s.setdatabase = d.oid),
  shobj_description(d.oid, 'pg_database'))
FROM pg_database d WHERE d.datname = {name}
"""

#: Settings whose stored value is already a list of SQL identifiers.
LIST_SETTINGS = frozenset({"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries"})


def create_database(config: DatabaseConfig, name: str, *, expected: ServerInfo | None = None, like: str | None = None) -> None:
    """Create the empty database ``name``, dressed like ``like`` (or the configured one) when it exists.

    Owner, encoding, locale, connection limit, database privileges, settings
    and comment are copied, so the copy can take the original's place.
    Otherwise encoding and collation come from ``expected``.
    """
    source = like or config.database
    rows = query(config, PROPERTIES_SQL.format(name=sql_quote_literal(source)), database=_maintenance(config))
    statements = [_create_statement(name, rows[0] if rows else None, expected)]
    if rows:
        statements.extend(_dress_statements(name, rows[0]))
    execute(config, statements[0], database=_maintenance(config))
    try:
        if len(statements) > 1:
            execute(config, "BEGIN;\n" + "\n".join(statements[1:]) + "\nCOMMIT;", database=_maintenance(config))
    except SourceError:
        drop_database(config, name)
        raise


def _create_statement(name: str, properties: list[Any] | None, expected: ServerInfo | None) -> str:
    parts = [f"CREATE DATABASE {quote_identifier(name)} WITH TEMPLATE template0"]
    if properties:
        encoding, collate, ctype, owner, connection_limit, provider, icu_locale = properties[:7]
        parts.append(f"ENCODING {sql_quote_literal(encoding)} LC_COLLATE {sql_quote_literal(collate)} LC_CTYPE {sql_quote_literal(ctype)}")
        if provider == "i" and icu_locale:
            parts.append(f"LOCALE_PROVIDER icu ICU_LOCALE {sql_quote_literal(icu_locale)}")
        parts.append(f"OWNER {quote_identifier(owner)} CONNECTION LIMIT {int(connection_limit)}")
    elif expected is not None:
        parts.append(f"ENCODING {sql_quote_literal(expected.encoding)} LC_COLLATE {sql_quote_literal(expected.collation)} LC_CTYPE {sql_quote_literal(expected.collation)}")
    return " ".join(parts)


def _dress_statements(name: str, properties: list[Any]) -> list[str]:
    acl_is_default, grants, settings, comment = properties[7:11]
    target = quote_identifier(name)
    statements: list[str] = []
    if not acl_is_default:
        statements.append(f"REVOKE ALL ON DATABASE {target} FROM PUBLIC;")
        for grantee, privilege, grantable in grants or []:
            who = "PUBLIC" if grantee is None else quote_identifier(grantee)
            statements.append(f"GRANT {privilege} ON DATABASE {target} TO {who}{' WITH GRANT OPTION' if grantable else ''};")
    for role, config_items in settings or []:
        prefix = f"ALTER DATABASE {target}" if role is None else f"ALTER ROLE {quote_identifier(role)} IN DATABASE {target}"
        for item in config_items or []:
            setting, _, value = item.partition("=")
            rendered = value if setting in LIST_SETTINGS else sql_quote_literal(value)
            statements.append(f"{prefix} SET {quote_identifier(setting)} = {rendered};")
    if comment:
        statements.append(f"COMMENT ON DATABASE {target} IS {sql_quote_literal(comment)};")
    return statements


def drop_database(config: DatabaseConfig, name: str) -> None:
    """Drop ``name`` if it exists, ending sessions still connected to it."""
    execute(config, f"DROP DATABASE IF EXISTS {quote_identifier(name)} WITH (FORCE)", database=_maintenance(config))


def restore_into(config: DatabaseConfig, database: str, pieces: Iterable[bytes]) -> None:
    """Run a plain dump into ``database`` in one transaction; all or nothing.

    Raises SourceError with psql's first error if any statement fails, and
    then nothing of the dump is left in ``database``.
    """
    argv = [_psql(config), "-X", "-w", "-q", "--single-transaction", "-v", "ON_ERROR_STOP=1", "-f", "-"]
    feed_tool(argv, _environment(config, database), pieces, _explainer(config, database))


# -- restore -------------------------------------------------------------------------


def replace_database(
    config: DatabaseConfig,
    expected: ServerInfo,
    open_dump: Callable[[], Iterable[bytes]],
    *,
    target: str,
    open_rollback: Callable[[], Iterable[bytes]] | None = None,
) -> str:
    """Restore into a fresh database, check it, then swap it in for ``target`` by rename.

    Until the swap, ``target`` is not touched; the two renames happen in one
    transaction after the other sessions on ``target`` were ended. The previous
    ``target`` is dropped afterwards (the caller holds a safety dump of it).
    ``open_rollback`` is not needed: nothing is half-done on failure.
    """
    exists = database_exists(config, target)
    fresh = scratch_name(target, purpose="restore", limit=NAME_LIMIT)
    create_database(config, fresh, expected=expected, like=target if exists else None)
    try:
        try:
            restore_into(config, fresh, open_dump())
        except SourceError as error:
            detail = str(error).split(": ", 2)[-1]
            raise SourceError(f"{config.name}: the snapshot's dump does not restore ({detail}); {target} was not changed") from error
        problems = check_restored(config, fresh, expected)
        if problems:
            raise SourceError(f"{config.name}: the restored copy does not match the snapshot ({problems[0]}); {target} was not changed")
        if not exists:
            execute(config, f"ALTER DATABASE {quote_identifier(fresh)} RENAME TO {quote_identifier(target)}", database=_maintenance(config))
            return f"restored into new database {target}"
        _swap(config, target, fresh)
    except BaseException:
        with contextlib.suppress(SourceError):
            drop_database(config, fresh)
        raise
    return f"restored into {target} (swapped in by rename; sessions on it were ended)"


def _swap(config: DatabaseConfig, target: str, fresh: str) -> None:
    old = scratch_name(target, purpose="old", limit=NAME_LIMIT)
    live = quote_identifier(target)
    maintenance = _maintenance(config)
    execute(config, f"ALTER DATABASE {live} WITH ALLOW_CONNECTIONS false", database=maintenance)
    try:
        execute(
            config,
            f"""
            SELECT json_build_array(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity
             WHERE datname = {sql_quote_literal(target)} AND pid <> pg_backend_pid();
            BEGIN;
            ALTER DATABASE {live} RENAME TO {quote_identifier(old)};
            ALTER DATABASE {quote_identifier(fresh)} RENAME TO {live};
            COMMIT;
            """,
            database=maintenance,
        )
    except BaseException:
        with contextlib.suppress(SourceError):
            execute(config, f"ALTER DATABASE {live} WITH ALLOW_CONNECTIONS true", database=maintenance)
        raise
    drop_database(config, old)
