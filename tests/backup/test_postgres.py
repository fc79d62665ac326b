"""PostgreSQL databases against the real server on 127.0.0.1:5432.

Each test creates its own databases with unique names and drops them, and every
database dbkeep creates for itself (``__dbkeep_``) must be gone afterwards.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from backup import RestoreRefused, SourceError, create_backup, drill_backup, restore_backup, settings_from_mapping, verify_backup
from backup.manifest import Snapshot
from backup.operations import open_repository
from backup.sources import postgres
from backup.sources.server import parse_database_entry

HOST, PORT, ADMIN = "127.0.0.1", 5432, "postgres"


def psql(sql: str, database: str = "postgres", *, check: bool = True) -> str:
    result = subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", str(PORT), "-U", ADMIN, "-d", database],
        input=sql,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"psql failed: {result.stderr}")
    return result.stdout.strip()


def _server_problem() -> str | None:
    if shutil.which("psql") is None or shutil.which("pg_dump") is None:
        return "PostgreSQL client tools (psql, pg_dump) are not installed"
    try:
        result = subprocess.run(["psql", "-X", "-h", HOST, "-U", ADMIN, "-d", "postgres", "-c", "select 1"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"PostgreSQL on {HOST}:{PORT} is not reachable: {error}"
    if result.returncode != 0:
        return f"PostgreSQL on {HOST}:{PORT} is not reachable: {result.stderr.strip()}"
    return None


pytestmark = pytest.mark.skipif(bool(_server_problem()), reason=_server_problem() or "")


def scratch_databases() -> set[str]:
    return set(psql("SELECT datname FROM pg_database WHERE datname LIKE '%\\_\\_dbkeep\\_%'").split())


@pytest.fixture
def make_database():
    created: list[str] = []
    leftovers_before = scratch_databases()

    def make(sql: str = "") -> str:
        name = f"dbkeep_test_{secrets.token_hex(4)}"
        psql(f'CREATE DATABASE "{name}"')
        created.append(name)
        if sql:
            psql(sql, name)
        return name

    yield make
    for name in created:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    # Only databases derived from this test's own names: other runs share the server.
    leftovers = {name for name in scratch_databases() - leftovers_before if name.startswith(tuple(created))}
    for name in leftovers:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert not leftovers, f"dbkeep left scratch databases behind: {leftovers}"


def settings_for(tmp_path: Path, database: str, **entry):
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    return settings_from_mapping(
        {"repository": str(tmp_path / "repo"), "databases": [{"url": f"postgresql://{ADMIN}@{HOST}:{PORT}/{database}", **entry}]},
        root=project,
    )


REALISTIC_SCHEMA = r"""
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped');
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE,
    city text
);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    status order_status NOT NULL DEFAULT 'new',
    total numeric(12, 2) CHECK (total >= 0),
    note text
);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE TABLE attachments (id serial PRIMARY KEY, order_id bigint REFERENCES orders(id), body bytea);
CREATE TABLE audit (id serial PRIMARY KEY, message text NOT NULL);
CREATE FUNCTION log_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit(message) VALUES ('order ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION log_order();
CREATE VIEW customer_totals AS SELECT c.name, count(o.id) AS orders, coalesce(sum(o.total), 0) AS total
    FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.name;
CREATE TABLE events (id int, happened date NOT NULL) PARTITION BY RANGE (happened);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO customers (name, email, city)
    SELECT 'Kunde ' || i, 'c' || i || '@example.org', (ARRAY['Zürich', 'Kraków', '東京', 'São Paulo', 'Ελλάδα 🐘'])[1 + i % 5]
    FROM generate_series(1, 2000) i;
INSERT INTO orders (customer_id, status, total, note)
    SELECT 1 + i % 2000, (ARRAY['new', 'paid', 'shipped'])[1 + i % 3]::order_status, i * 0.5, E'line one\nline two\ttab \\ backslash'
    FROM generate_series(1, 5000) i;
INSERT INTO attachments (order_id, body) SELECT i, decode(repeat(md5(i::text), 8), 'hex') FROM generate_series(1, 200) i;
INSERT INTO attachments (order_id, body) VALUES (1, (SELECT string_agg(set_byte('\x00'::bytea, 0, b), '') FROM generate_series(0, 255) b));
INSERT INTO attachments (order_id, body) VALUES (2, (SELECT string_agg(decode(md5(i::text), 'hex'), '') FROM generate_series(1, 200000) i));
INSERT INTO events SELECT i, date '2024-06-01' + i FROM generate_series(1, 400) i;
SELECT setval('customers_id_seq', 5000);
"""


def content_digest(database: str) -> dict[str, str]:
    """md5 of every table's rows in a stable order, plus the sequences' values."""
    tables = psql(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND n.nspname = 'public' ORDER BY 1",
        database,
    ).split()
    digest = {}
    for table in tables:
        digest[table] = psql(f"SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM ONLY {table} t", database)
    digest["sequences"] = psql("SELECT string_agg(sequencename || '=' || coalesce(last_value, 0), ',' ORDER BY sequencename) FROM pg_sequences", database)
    return digest


def test_round_trip_into_a_new_database_restores_schema_data_and_behaviour(tmp_path, make_database):
    source = make_database(REALISTIC_SCHEMA)
    settings = settings_for(tmp_path, source)
    report = create_backup(settings)
    (entry,) = report.snapshot.files
    assert (entry.path, entry.kind) == (f"postgres/{source}", "postgres")
    assert entry.server.tables["public.orders"] == 5000
    assert entry.server.tables["public.events_2024"] == 213 and entry.server.tables["public.events"] == 0
    assert entry.server.server_version.startswith(psql("SHOW server_version").split()[0])
    assert verify_backup(settings, read_data=True).ok

    copy = f"{source}_copy"
    try:
        result = restore_backup(settings, "latest", target_database=copy)
        assert result.files[0].destination.endswith(f"/{copy}")
        assert content_digest(copy) == content_digest(source)
        assert postgres.describe(parse_database_entry(f"postgresql://{ADMIN}@{HOST}/{copy}")).schema_hash == entry.server.schema_hash
        psql("INSERT INTO orders (customer_id, total) VALUES (1, 1)", copy)
        assert psql("SELECT message FROM audit ORDER BY id DESC LIMIT 1", copy).startswith("order ")
        assert psql("SELECT count(*) FROM customer_totals", copy) == "2000"
    finally:
        psql(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')


def test_unchanged_database_backs_up_again_storing_almost_nothing(tmp_path, make_database):
    source = make_database(REALISTIC_SCHEMA)
    settings = settings_for(tmp_path, source)
    first = create_backup(settings)
    second = create_backup(settings)
    assert second.stats.new_bytes < 0.01 * first.stats.logical_bytes
    assert second.stats.reused_chunks > 0.9 * (second.stats.reused_chunks + second.stats.new_chunks)


def test_restore_over_the_live_database_replaces_it_exactly_and_keeps_a_safety_snapshot(tmp_path, make_database):
    source = make_database(REALISTIC_SCHEMA)
    settings = settings_for(tmp_path, source)
    original = content_digest(source)
    backup_id = create_backup(settings).snapshot.id
    psql("DELETE FROM orders WHERE id BETWEEN 1000 AND 1100; CREATE TABLE added_later (x int); INSERT INTO added_later VALUES (1);", source)
    changed = content_digest(source)

    result = restore_backup(settings, backup_id, force=True)

    assert content_digest(source) == original
    assert psql("SELECT count(*) FROM pg_class WHERE relname = 'added_later'", source) == "0"
    safety = result.safety_snapshot
    assert safety is not None and safety.tag == "safety"
    assert safety.files[0].server.tables["public.added_later"] == 1
    check = f"{source}_safety"
    try:
        restore_backup(settings, safety.id, target_database=check)
        assert content_digest(check) == changed
    finally:
        psql(f'DROP DATABASE IF EXISTS "{check}" WITH (FORCE)')


def test_restore_over_a_live_database_without_force_is_refused_and_changes_nothing(tmp_path, make_database):
    source = make_database(REALISTIC_SCHEMA)
    settings = settings_for(tmp_path, source)
    create_backup(settings)
    psql("DELETE FROM orders WHERE id BETWEEN 1000 AND 1010", source)
    before = content_digest(source)
    with pytest.raises(RestoreRefused):
        restore_backup(settings, "latest", confirm=lambda plan: False)
    assert content_digest(source) == before


FAILS_HALFWAY = """
CREATE TABLE limits (max_amount int);
INSERT INTO limits VALUES (100);
CREATE TABLE customers (id serial PRIMARY KEY, name text);
INSERT INTO customers (name) SELECT 'c' || i FROM generate_series(1, 500) i;
-- The function is not schema-qualified: it works live, but a dump runs with an
-- empty search_path, so loading payments fails after other tables were loaded.
CREATE FUNCTION under_limit(amount int) RETURNS boolean LANGUAGE sql AS 'SELECT amount <= (SELECT max_amount FROM limits)';
CREATE TABLE payments (id serial PRIMARY KEY, amount int CHECK (under_limit(amount)));
INSERT INTO payments (amount) SELECT i % 100 FROM generate_series(1, 500) i;
"""


def test_a_dump_that_fails_halfway_through_the_restore_leaves_the_live_database_intact(tmp_path, make_database):
    source = make_database(FAILS_HALFWAY)
    settings = settings_for(tmp_path, source)
    create_backup(settings)
    psql("INSERT INTO customers (name) VALUES ('after the backup')", source)
    before = content_digest(source)

    with pytest.raises(SourceError) as raised:
        restore_backup(settings, "latest", force=True)

    message = str(raised.value)
    assert "\n" not in message and "limits" in message and "not changed" in message
    assert content_digest(source) == before
    drill = drill_backup(settings)
    assert not drill.ok and "does not restore" in drill.results[0].problems[0]


def test_backup_under_concurrent_transfers_holds_one_consistent_state(tmp_path, make_database):
    source = make_database(
        """
        CREATE TABLE checking (id int PRIMARY KEY, balance bigint NOT NULL);
        CREATE TABLE savings (id int PRIMARY KEY, balance bigint NOT NULL);
        CREATE TABLE transfers (id bigserial PRIMARY KEY);
        INSERT INTO checking SELECT i, 1000000 FROM generate_series(1, 100) i;
        INSERT INTO savings SELECT i, 0 FROM generate_series(1, 100) i;
        INSERT INTO checking SELECT i, 0 FROM generate_series(101, 20000) i;
        """
    )
    settings = settings_for(tmp_path, source)
    writer = subprocess.Popen(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-U", ADMIN, "-d", source],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stop = threading.Event()

    def transfer_forever() -> None:
        number = 0
        while not stop.is_set():
            number += 1
            account = 1 + number % 100
            writer.stdin.write(
                f"BEGIN; UPDATE checking SET balance = balance - 7 WHERE id = {account}; "
                f"UPDATE savings SET balance = balance + 7 WHERE id = {account}; INSERT INTO transfers DEFAULT VALUES; COMMIT;\n".encode()
            )
        writer.stdin.close()

    thread = threading.Thread(target=transfer_forever)
    thread.start()
    try:
        before = int(psql("SELECT count(*) FROM transfers", source))
        report = create_backup(settings)
        during = int(psql("SELECT count(*) FROM transfers", source))
    finally:
        stop.set()
        thread.join()
        writer.wait()
    assert writer.returncode == 0, writer.stderr.read()
    assert during > before, "the writer made no transfer while the backup ran"

    copy = f"{source}_copy"
    try:
        restore_backup(settings, report.snapshot.id, target_database=copy)
        total = int(psql("SELECT (SELECT sum(balance) FROM checking) + (SELECT sum(balance) FROM savings)", copy))
        moved = int(psql("SELECT sum(balance) FROM savings", copy))
        transfers = int(psql("SELECT count(*) FROM transfers", copy))
        assert total == 100 * 1_000_000
        assert moved == 7 * transfers
        assert report.snapshot.files[0].server.tables["public.transfers"] == transfers
    finally:
        psql(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')


def test_drill_restores_into_a_scratch_database_and_reports_a_manifest_that_lies(tmp_path, make_database):
    source = make_database(REALISTIC_SCHEMA)
    settings = settings_for(tmp_path, source)
    snapshot = create_backup(settings).snapshot
    good = drill_backup(settings)
    assert good.ok and good.results[0].scratch_database.startswith(source)

    # Negative control: the same dump under a manifest claiming another row count.
    entry = snapshot.files[0]
    tables = dict(entry.server.tables, **{"public.orders": 4999})
    lying = dataclasses.replace(snapshot, id=snapshot.id[:-4] + "ffff", files=(dataclasses.replace(entry, server=dataclasses.replace(entry.server, tables=tables)),))
    open_repository(settings).save_snapshot(Snapshot.from_json(lying.to_json()))
    bad = drill_backup(settings, lying.id)
    assert bad.results[0].problems == ("table public.orders has 5000 rows, the manifest says 4999",)


def test_manifest_and_process_arguments_never_hold_the_password(tmp_path, make_database, monkeypatch):
    source = make_database("CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    secret = "s3cret-" + secrets.token_hex(6)
    monkeypatch.setenv("DBKEEP_TEST_PGPASSWORD", secret)
    settings = settings_for(tmp_path, source, password_env="DBKEEP_TEST_PGPASSWORD")
    seen: list[list[str]] = []
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):  # records argv, then runs the real process
        def __init__(self, args, *rest, **options):
            seen.append([str(arg) for arg in args])
            assert options.get("env", {}).get("PGPASSWORD") in (None, secret)
            super().__init__(args, *rest, **options)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    snapshot = create_backup(settings).snapshot
    assert seen and not any(secret in arg for argv in seen for arg in argv)
    manifests = list((tmp_path / "repo" / "snapshots").iterdir())
    assert manifests and all(secret.encode() not in path.read_bytes() for path in manifests)
    assert snapshot.files[0].server.user == ADMIN


def test_a_refused_connection_is_one_clear_line(tmp_path):
    settings = settings_from_mapping({"repository": str(tmp_path / "repo"), "databases": [f"postgresql://{ADMIN}@{HOST}:1/nothing"]}, root=tmp_path)
    with pytest.raises(SourceError) as raised:
        create_backup(settings)
    message = str(raised.value)
    assert "\n" not in message and "connection refused" in message and "start the server" in message


def test_an_unknown_user_is_one_clear_line(tmp_path, make_database):
    source = make_database()
    settings = settings_from_mapping({"repository": str(tmp_path / "repo"), "databases": [f"postgresql://no_such_role_{secrets.token_hex(3)}@{HOST}/{source}"]}, root=tmp_path)
    with pytest.raises(SourceError) as raised:
        create_backup(settings)
    assert "\n" not in str(raised.value) and "check the user" in str(raised.value)


def test_missing_client_tools_are_one_clear_line(tmp_path, make_database):
    source = make_database()
    empty = tmp_path / "bin"
    empty.mkdir()
    settings = settings_for(tmp_path, source, bin_dir=str(empty))
    with pytest.raises(SourceError) as raised:
        create_backup(settings)
    assert "psql not found" in str(raised.value) and "postgresql-client" in str(raised.value)


def test_a_pg_dump_older_than_the_server_is_refused_before_dumping(tmp_path, make_database):
    source = make_database("CREATE TABLE t (x int);")
    tools = tmp_path / "bin"
    tools.mkdir()
    os.symlink(shutil.which("psql"), tools / "psql")
    old = tools / "pg_dump"
    old.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 9.6.24'\n")
    old.chmod(0o755)
    settings = settings_for(tmp_path, source, bin_dir=str(tools))
    with pytest.raises(SourceError) as raised:
        create_backup(settings)
    message = str(raised.value)
    assert "pg_dump 9 cannot dump PostgreSQL 15" in message or "cannot dump PostgreSQL" in message
    assert "postgresql-client-" in message and "\n" not in message


def test_pg_dump_version_mismatch_message_is_explained():
    stderr = "pg_dump: error: aborting because of server version mismatch\npg_dump: detail: server version: 17.2; pg_dump version: 15.20\n"
    line = postgres.explain_failure(stderr, "postgresql://u@h/db")
    assert "older than the server" in line and "17.2" in line and "postgresql-client-N" in line


def test_a_day_of_appended_and_updated_rows_stores_only_what_changed(tmp_path, make_database):
    source = make_database(
        """
        CREATE TABLE orders (id bigserial PRIMARY KEY, customer int, status text, total numeric(12, 2), placed timestamptz);
        INSERT INTO orders (customer, status, total, placed)
            SELECT i % 5000, 'new', i * 0.25, timestamptz '2024-01-01' + i * interval '1 minute' FROM generate_series(1, 100000) i;
        """
    )
    settings = settings_for(tmp_path, source)
    first = create_backup(settings)
    psql(
        "INSERT INTO orders (customer, status, total, placed) SELECT i, 'new', 1, now() FROM generate_series(1, 1000) i;"
        "UPDATE orders SET status = 'shipped' WHERE id BETWEEN 50000 AND 50999;",
        source,
    )
    second = create_backup(settings)
    # Fixed-size chunks would store everything after the first changed row: about half the dump.
    assert second.stats.new_bytes < 0.04 * first.stats.logical_bytes, second.stats


def test_a_target_directory_never_lets_a_dump_overwrite_the_live_database(tmp_path, make_database):
    from backup import UsageError

    source = make_database("CREATE TABLE t (x int); INSERT INTO t VALUES (1);")
    settings = settings_for(tmp_path, source)
    create_backup(settings)
    psql("INSERT INTO t VALUES (2)", source)
    with pytest.raises(UsageError, match="target database name"):
        restore_backup(settings, "latest", target=tmp_path / "elsewhere", force=True)
    assert psql("SELECT count(*) FROM t", source) == "2"
