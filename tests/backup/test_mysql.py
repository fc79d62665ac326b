"""MySQL/MariaDB databases against the real server on 127.0.0.1:3306.

Each test creates its own databases with unique names and drops them, and every
database dbkeep creates for itself (``__dbkeep_``) must be gone afterwards.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from backup import RestoreRefused, SourceError, create_backup, drill_backup, restore_backup, settings_from_mapping
from backup.sources import mysql
from backup.sources.server import capture_database, parse_database_entry

HOST, PORT, ADMIN = "127.0.0.1", 3306, "root"
CLIENT = shutil.which("mariadb") or shutil.which("mysql")


def sql(statements: str, database: str | None = None, *, check: bool = True) -> str:
    argv = [CLIENT or "mariadb", "-h", HOST, "-P", str(PORT), "-u", ADMIN, "--batch", "--skip-column-names", "--default-character-set=utf8mb4"]
    if database:
        argv.append(database)
    result = subprocess.run(argv, input=statements, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"mariadb failed: {result.stderr}")
    return result.stdout.strip()


def _server_problem() -> str | None:
    if CLIENT is None or not (shutil.which("mariadb-dump") or shutil.which("mysqldump")):
        return "MariaDB/MySQL client tools (mariadb, mariadb-dump) are not installed"
    try:
        result = subprocess.run([CLIENT, "-h", HOST, "-P", str(PORT), "-u", ADMIN, "-e", "SELECT 1"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"MariaDB on {HOST}:{PORT} is not reachable: {error}"
    if result.returncode != 0:
        return f"MariaDB on {HOST}:{PORT} is not reachable: {result.stderr.strip()}"
    return None


pytestmark = pytest.mark.skipif(bool(_server_problem()), reason=_server_problem() or "")


def scratch_databases() -> set[str]:
    return set(sql("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE '%\\_\\_dbkeep\\_%'").split())


@pytest.fixture
def make_database():
    created: list[str] = []
    leftovers_before = scratch_databases()

    def make(statements: str = "") -> str:
        name = f"dbkeep_test_{secrets.token_hex(4)}"
        sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        created.append(name)
        if statements:
            sql(statements, name)
        return name

    yield make
    for name in created:
        sql(f"DROP DATABASE IF EXISTS `{name}`")
    # Only databases derived from this test's own names: other runs share the server.
    leftovers = {name for name in scratch_databases() - leftovers_before if name.startswith(tuple(created))}
    for name in leftovers:
        sql(f"DROP DATABASE IF EXISTS `{name}`")
    assert not leftovers, f"dbkeep left scratch databases behind: {leftovers}"


def settings_for(tmp_path: Path, database: str, user: str = ADMIN, **entry):
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    return settings_from_mapping(
        {"repository": str(tmp_path / "repo"), "databases": [{"url": f"mysql://{user}@{HOST}:{PORT}/{database}", **entry}]},
        root=project,
    )


REALISTIC_SCHEMA = r"""
CREATE TABLE customers (id int AUTO_INCREMENT PRIMARY KEY, name varchar(200) NOT NULL, email varchar(200) UNIQUE, city varchar(100)) ENGINE=InnoDB;
CREATE TABLE orders (
    id bigint AUTO_INCREMENT PRIMARY KEY,
    customer_id int NOT NULL,
    status enum('new', 'paid', 'shipped') NOT NULL DEFAULT 'new',
    total decimal(12, 2),
    note text,
    CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES customers(id) ON DELETE CASCADE,
    CONSTRAINT positive_total CHECK (total >= 0)
) ENGINE=InnoDB;
CREATE TABLE attachments (id int AUTO_INCREMENT PRIMARY KEY, order_id bigint, body longblob, FOREIGN KEY (order_id) REFERENCES orders(id)) ENGINE=InnoDB;
CREATE TABLE audit (id int AUTO_INCREMENT PRIMARY KEY, message varchar(200) NOT NULL) ENGINE=InnoDB;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW INSERT INTO audit (message) VALUES (CONCAT('order ', NEW.id));
CREATE VIEW customer_totals AS SELECT c.name, COUNT(o.id) AS orders, COALESCE(SUM(o.total), 0) AS total
    FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.name;
DELIMITER //
CREATE PROCEDURE add_order(IN customer int, IN amount decimal(12, 2)) BEGIN INSERT INTO orders (customer_id, total) VALUES (customer, amount); END //
DELIMITER ;
CREATE EVENT purge_audit ON SCHEDULE EVERY 1 DAY DO DELETE FROM audit WHERE id < 0;
INSERT INTO customers (name, email, city)
    SELECT CONCAT('Kunde ', seq), CONCAT('c', seq, '@example.org'), ELT(1 + seq % 5, 'Zürich', 'Kraków', '東京', 'São Paulo', 'Ελλάδα 🐬') FROM seq_1_to_2000;
INSERT INTO orders (customer_id, status, total, note)
    SELECT 1 + seq % 2000, ELT(1 + seq % 3, 'new', 'paid', 'shipped'), seq * 0.5, 'line one\nline two\ttab \\ backslash \'quoted\' ),( not a tuple' FROM seq_1_to_5000;
INSERT INTO attachments (order_id, body) SELECT seq, UNHEX(REPEAT(MD5(seq), 8)) FROM seq_1_to_200;
INSERT INTO attachments (order_id, body) SELECT 1, (SELECT GROUP_CONCAT(CHAR(seq) SEPARATOR '') FROM seq_0_to_255);
INSERT INTO attachments (order_id, body) SELECT 2, REPEAT(UNHEX(MD5('big')), 150000);
"""


def content_digest(database: str) -> dict[str, str]:
    """CHECKSUM TABLE of every base table, plus the names of views, triggers, routines and events."""
    tables = sql(f"SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{database}' AND TABLE_TYPE = 'BASE TABLE' ORDER BY 1").split()
    digest = {table: sql(f"CHECKSUM TABLE `{database}`.`{table}`").split("\t")[-1] for table in tables}
    digest["objects"] = sql(
        f"SELECT GROUP_CONCAT(n ORDER BY n) FROM (SELECT TABLE_NAME n FROM information_schema.VIEWS WHERE TABLE_SCHEMA = '{database}' "
        f"UNION ALL SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{database}' "
        f"UNION ALL SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = '{database}' "
        f"UNION ALL SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = '{database}') o"
    )
    return digest


def test_round_trip_into_a_new_database_restores_schema_data_and_behaviour(tmp_path, make_database):
    source = make_database(REALISTIC_SCHEMA)
    settings = settings_for(tmp_path, source)
    (entry,) = create_backup(settings).snapshot.files
    assert (entry.path, entry.kind) == (f"mysql/{source}", "mysql")
    assert entry.server.tables == {"attachments": 202, "audit": 5000, "customers": 2000, "orders": 5000}
    assert entry.server.encoding == "utf8mb4"

    copy = f"{source}_copy"
    try:
        restore_backup(settings, "latest", target_database=copy)
        assert content_digest(copy) == content_digest(source)
        assert mysql.describe(parse_database_entry(f"mysql://{ADMIN}@{HOST}/{copy}")).schema_hash == entry.server.schema_hash
        sql("CALL add_order(1, 9.50)", copy)
        assert sql("SELECT message FROM audit ORDER BY id DESC LIMIT 1", copy).startswith("order ")
        assert sql("SELECT name FROM customers WHERE id = 5", copy) == "Kunde 5"
        assert sql("SELECT city FROM customers WHERE id = 4", copy) == "Ελλάδα 🐬"
        assert sql("SELECT MD5(body) FROM attachments WHERE id = 201", copy) == sql("SELECT MD5(body) FROM attachments WHERE id = 201", source)
    finally:
        sql(f"DROP DATABASE IF EXISTS `{copy}`")


def test_unchanged_database_backs_up_again_storing_nothing(tmp_path, make_database):
    source = make_database(REALISTIC_SCHEMA)
    settings = settings_for(tmp_path, source)
    create_backup(settings)
    second = create_backup(settings)
    assert second.stats.new_bytes == 0


def test_restore_over_the_live_database_replaces_it_exactly_and_keeps_a_safety_snapshot(tmp_path, make_database):
    source = make_database(REALISTIC_SCHEMA)
    settings = settings_for(tmp_path, source)
    original = content_digest(source)
    backup_id = create_backup(settings).snapshot.id
    sql("DELETE FROM orders WHERE id BETWEEN 1000 AND 1100; CREATE TABLE added_later (x int); INSERT INTO added_later VALUES (1);", source)

    result = restore_backup(settings, backup_id, force=True)

    assert content_digest(source) == original
    assert sql(f"SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{source}' AND TABLE_NAME = 'added_later'") == "0"
    assert result.safety_snapshot is not None
    assert result.safety_snapshot.files[0].server.tables["added_later"] == 1


def test_restore_over_a_live_database_without_force_is_refused_and_changes_nothing(tmp_path, make_database):
    source = make_database(REALISTIC_SCHEMA)
    settings = settings_for(tmp_path, source)
    create_backup(settings)
    sql("DELETE FROM orders WHERE id BETWEEN 1000 AND 1010", source)
    before = content_digest(source)
    with pytest.raises(RestoreRefused):
        restore_backup(settings, "latest")
    assert content_digest(source) == before


def test_a_dump_that_fails_halfway_through_the_restore_leaves_the_live_database_intact(tmp_path, make_database):
    other = make_database("CREATE TABLE rates (x int); INSERT INTO rates VALUES (1);")
    source = make_database(f"CREATE TABLE customers (id int PRIMARY KEY); INSERT INTO customers SELECT seq FROM seq_1_to_500; CREATE VIEW priced AS SELECT x FROM `{other}`.rates;")
    settings = settings_for(tmp_path, source)
    create_backup(settings)
    # The view's dependency disappears: the snapshot's dump now fails at its view,
    # after the tables were loaded (the live database no longer has the view).
    sql(f"DROP VIEW `{source}`.priced; DROP DATABASE `{other}`; INSERT INTO `{source}`.customers VALUES (501);")
    before = content_digest(source)

    with pytest.raises(SourceError) as raised:
        restore_backup(settings, "latest", force=True)

    message = str(raised.value)
    assert "\n" not in message and "failed its drill" in message and "not changed" in message
    assert content_digest(source) == before


def test_a_rebuild_that_fails_midway_puts_the_previous_state_back(make_database):
    """The live rebuild can fail after the drill passed (connection lost): the safety dump goes back."""
    source = make_database(REALISTIC_SCHEMA)
    config = parse_database_entry(f"mysql://{ADMIN}@{HOST}:{PORT}/{source}")
    good, info = capture_database(config, lambda pieces: b"".join(pieces))
    sql("DELETE FROM orders WHERE id BETWEEN 1000 AND 1100; CREATE TABLE added_later (x int);", source)
    changed = content_digest(source)
    safety, _ = capture_database(config, lambda pieces: b"".join(pieces))
    dumps = iter([good, good[: len(good) // 2]])  # the drill sees the whole dump, the rebuild half of it

    with pytest.raises(SourceError) as raised:
        mysql.replace_database(config, info, lambda: [next(dumps)], target=source, open_rollback=lambda: [safety])

    assert "previous state was put back" in str(raised.value)
    assert content_digest(source) == changed


def test_backup_under_concurrent_transfers_holds_one_consistent_state(tmp_path, make_database):
    source = make_database(
        """
        CREATE TABLE checking (id int PRIMARY KEY, balance bigint NOT NULL) ENGINE=InnoDB;
        CREATE TABLE savings (id int PRIMARY KEY, balance bigint NOT NULL) ENGINE=InnoDB;
        CREATE TABLE transfers (id bigint AUTO_INCREMENT PRIMARY KEY) ENGINE=InnoDB;
        INSERT INTO checking SELECT seq, 1000000 FROM seq_1_to_100;
        INSERT INTO savings SELECT seq, 0 FROM seq_1_to_100;
        INSERT INTO checking SELECT seq, 0 FROM seq_101_to_20000;
        """
    )
    settings = settings_for(tmp_path, source)
    writer = subprocess.Popen([CLIENT, "-h", HOST, "-P", str(PORT), "-u", ADMIN, source], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stop = threading.Event()

    def transfer_forever() -> None:
        number = 0
        while not stop.is_set():
            number += 1
            account = 1 + number % 100
            writer.stdin.write(
                f"START TRANSACTION; UPDATE checking SET balance = balance - 7 WHERE id = {account}; "
                f"UPDATE savings SET balance = balance + 7 WHERE id = {account}; INSERT INTO transfers VALUES (); COMMIT;\n".encode()
            )
        writer.stdin.close()

    thread = threading.Thread(target=transfer_forever)
    thread.start()
    try:
        before = int(sql("SELECT COUNT(*) FROM transfers", source))
        report = create_backup(settings)
        during = int(sql("SELECT COUNT(*) FROM transfers", source))
    finally:
        stop.set()
        thread.join()
        writer.wait()
    assert writer.returncode == 0, writer.stderr.read()
    assert during > before, "the writer made no transfer while the backup ran"

    copy = f"{source}_copy"
    try:
        restore_backup(settings, report.snapshot.id, target_database=copy)
        total = int(sql("SELECT (SELECT SUM(balance) FROM checking) + (SELECT SUM(balance) FROM savings)", copy))
        moved = int(sql("SELECT SUM(balance) FROM savings", copy))
        transfers = int(sql("SELECT COUNT(*) FROM transfers", copy))
        assert total == 100 * 1_000_000
        assert moved == 7 * transfers
        assert report.snapshot.files[0].server.tables["transfers"] == transfers
    finally:
        sql(f"DROP DATABASE IF EXISTS `{copy}`")


def test_drill_restores_into_a_scratch_database_and_drops_it(tmp_path, make_database):
    source = make_database(REALISTIC_SCHEMA)
    settings = settings_for(tmp_path, source)
    create_backup(settings)
    report = drill_backup(settings)
    assert report.ok and report.results[0].scratch_database.startswith(source)


@pytest.fixture
def user_with_password(make_database):
    database = make_database("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);")
    user, password = f"dbkeep_u_{secrets.token_hex(3)}", "pw'\"\\ " + secrets.token_hex(6)
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    sql(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{quoted}'; GRANT ALL ON `{database}`.* TO '{user}'@'%'; GRANT PROCESS ON *.* TO '{user}'@'%';")
    yield database, user, password
    sql(f"DROP USER IF EXISTS '{user}'@'%'")


def test_password_reaches_the_tools_only_through_a_private_option_file(tmp_path, user_with_password, monkeypatch):
    database, user, password = user_with_password
    monkeypatch.setenv("DBKEEP_TEST_MYSQL_PASSWORD", password)
    settings = settings_for(tmp_path, database, user=user, password_env="DBKEEP_TEST_MYSQL_PASSWORD")
    option_files: list[str] = []
    real_popen = subprocess.Popen

    class RecordingPopen(real_popen):  # checks argv and the option file, then runs the real process
        def __init__(self, args, *rest, **options):
            assert not any(password in str(arg) for arg in args)
            for arg in args:
                if str(arg).startswith("--defaults-extra-file="):
                    path = str(arg).split("=", 1)[1]
                    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
                    option_files.append(path)
            super().__init__(args, *rest, **options)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    snapshot = create_backup(settings).snapshot
    assert snapshot.files[0].server.tables == {"t": 2}
    assert option_files and not any(os.path.exists(path) for path in option_files)
    manifests = list((tmp_path / "repo" / "snapshots").iterdir())
    assert all(password.encode() not in path.read_bytes() for path in manifests)


def test_wrong_credentials_are_one_clear_line(tmp_path, user_with_password, monkeypatch):
    database, user, _ = user_with_password
    monkeypatch.setenv("DBKEEP_TEST_MYSQL_PASSWORD", "not-the-password")
    settings = settings_for(tmp_path, database, user=user, password_env="DBKEEP_TEST_MYSQL_PASSWORD")
    with pytest.raises(SourceError) as raised:
        create_backup(settings)
    message = str(raised.value)
    assert "\n" not in message and "refused the credentials" in message and "not-the-password" not in message


def test_a_refused_connection_is_one_clear_line(tmp_path):
    settings = settings_from_mapping({"repository": str(tmp_path / "repo"), "databases": [f"mysql://{ADMIN}@{HOST}:1/nothing"]}, root=tmp_path)
    with pytest.raises(SourceError) as raised:
        create_backup(settings)
    assert "\n" not in str(raised.value) and "connection refused" in str(raised.value)


def test_an_unknown_database_is_one_clear_line(tmp_path):
    settings = settings_from_mapping({"repository": str(tmp_path / "repo"), "databases": [f"mysql://{ADMIN}@{HOST}/no_such_db_{secrets.token_hex(3)}"]}, root=tmp_path)
    with pytest.raises(SourceError) as raised:
        create_backup(settings)
    assert "does not exist" in str(raised.value) and "check the database name" in str(raised.value)


def test_missing_client_tools_are_one_clear_line(tmp_path, make_database):
    source = make_database()
    empty = tmp_path / "bin"
    empty.mkdir()
    with pytest.raises(SourceError) as raised:
        create_backup(settings_for(tmp_path, source, bin_dir=str(empty)))
    assert "mariadb / mysql not found" in str(raised.value) and "mariadb-client" in str(raised.value)


def test_a_dump_tool_that_does_not_match_the_server_is_explained():
    stderr = "mysqldump: Couldn't execute 'SELECT COLUMN_NAME, JSON_EXTRACT(HISTOGRAM, '$.\"number-of-buckets-specified\"') FROM information_schema.COLUMN_STATISTICS': Unknown table 'COLUMN_STATISTICS' in information_schema (1109)"
    line = mysql.explain_failure(stderr, "mysql://root@h/db")
    assert "does not match the server" in line and "mariadb-dump" in line


def test_a_day_of_appended_and_updated_rows_stores_only_what_changed(tmp_path, make_database):
    source = make_database(
        """
        CREATE TABLE orders (id bigint AUTO_INCREMENT PRIMARY KEY, customer int, status varchar(20), total decimal(12, 2), placed datetime);
        INSERT INTO orders (customer, status, total, placed) SELECT seq % 5000, 'new', seq * 0.25, '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_100000;
        """
    )
    settings = settings_for(tmp_path, source)
    first = create_backup(settings)
    sql("INSERT INTO orders (customer, status, total, placed) SELECT seq, 'new', 1, NOW() FROM seq_1_to_1000; UPDATE orders SET status = 'shipped' WHERE id BETWEEN 50000 AND 50999;", source)
    second = create_backup(settings)
    # Fixed-size chunks would store everything after the first changed row: about half the dump.
    assert second.stats.new_bytes < 0.04 * first.stats.logical_bytes, second.stats
