"""Database-server entries in the configuration: URLs, mappings, environment, and bad input."""

from __future__ import annotations

import pytest

from backup import ConfigError, settings_from_mapping
from backup.manifest import FileEntry, ServerInfo, Snapshot
from backup.sources.server import parse_database_entry


def test_a_postgres_url_gives_every_part_and_a_logical_name():
    entry = parse_database_entry("postgresql://app@db.internal:5433/shop", environ={})
    assert (entry.engine, entry.name, entry.host, entry.port, entry.user, entry.database) == ("postgres", "postgres/shop", "db.internal", 5433, "app", "shop")
    assert entry.password is None


def test_a_mysql_mapping_overrides_its_url_and_names_the_password_variable():
    entry = parse_database_entry({"url": "mariadb://root@127.0.0.1/shop", "name": "mysql/main", "password_env": "SHOP_PASSWORD"}, environ={"SHOP_PASSWORD": "pw"})
    assert (entry.engine, entry.name, entry.database, entry.port) == ("mysql", "mysql/main", "shop", None)
    assert entry.password_value({"SHOP_PASSWORD": "pw"}) == "pw"


def test_missing_parts_come_from_the_usual_environment_variables():
    entry = parse_database_entry({"engine": "postgres"}, environ={"PGHOST": "h", "PGPORT": "6000", "PGUSER": "u", "PGDATABASE": "d"})
    assert (entry.host, entry.port, entry.user, entry.database) == ("h", 6000, "u", "d")
    entry = parse_database_entry("mysql://", environ={"MYSQL_HOST": "m", "MYSQL_TCP_PORT": "3307", "MYSQL_DATABASE": "x"})
    assert (entry.host, entry.port, entry.database) == ("m", 3307, "x")


def test_a_password_in_the_url_is_never_shown():
    entry = parse_database_entry("postgresql://app:hunter2@h/db", environ={})
    assert entry.password_value() == "hunter2"
    assert "hunter2" not in repr(entry) and "hunter2" not in entry.location()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("redis://h/db", "postgresql://"),
        ("postgresql://h:99999/db", "port"),
        ("postgresql://h", "database name"),
        ({"engine": "oracle", "database": "x"}, "engine"),
        ({"url": "mysql://h/db", "colour": "red"}, "known keys"),
        ({"url": "mysql://h/db", "name": "../escape"}, "relative logical name"),
        (42, "URL"),
    ],
    ids=["unknown-scheme", "bad-port", "no-database", "unknown-engine", "unknown-key", "climbing-name", "not-a-url"],
)
def test_bad_entries_are_refused_with_what_is_expected(value, expected):
    with pytest.raises(ValueError, match=expected):
        parse_database_entry(value, environ={})


def test_settings_validate_databases_and_never_echo_a_password(tmp_path):
    with pytest.raises(ConfigError) as raised:
        settings_from_mapping({"databases": ["postgresql://u:topsecret@h:notaport/db"]}, root=tmp_path)
    assert "backup.databases" in str(raised.value) and "topsecret" not in str(raised.value)
    with pytest.raises(ConfigError, match="unique names"):
        settings_from_mapping({"databases": ["postgresql://h/db", "postgresql://other/db"]}, root=tmp_path)
    settings = settings_from_mapping({"databases": ["postgresql://h/db", {"url": "postgresql://other/db", "name": "postgres/replica"}]}, root=tmp_path)
    assert [database.name for database in settings.databases] == ["postgres/db", "postgres/replica"]


def _server_info(**changes) -> ServerInfo:
    values = dict(
        engine="postgres", server_version="15.2", host="h", port=5432, user="u", database="db", database_size=1, encoding="UTF8",
        collation="C", schema_hash="ab", tables={"public.t": 3}, dump_tool="pg_dump 15", dump_format="pg_dump plain",
    )
    values.update(changes)
    return ServerInfo(**values)


def _snapshot(entry: FileEntry) -> Snapshot:
    from datetime import datetime, timezone

    from backup.manifest import GitInfo

    return Snapshot(
        id="20250116T020000Z-3f9a", time=datetime(2025, 1, 16, 2, tzinfo=timezone.utc), tag="manual", note="", root="/p", user="u",
        host="h", tool_version="0", duration=0.0, git=GitInfo(), files=(entry,),
    )


def _entry(**changes) -> FileEntry:
    values = dict(path="postgres/db", kind="postgres", size=1, mode=0o600, mtime=0.0, sha256="0" * 64, chunk_lists=("1" * 64,), chunk_count=1, server=_server_info())
    values.update(changes)
    return FileEntry(**values)


def test_server_entries_survive_the_sealed_manifest_round_trip():
    snapshot = _snapshot(_entry())
    assert Snapshot.from_json(snapshot.to_json()) == snapshot


@pytest.mark.parametrize(
    "entry",
    [_entry(server=None), _entry(kind="mysql"), _entry(server=_server_info(tables={"t": -1})), _entry(server=_server_info(port=70000))],
    ids=["no-details", "kind-differs-from-engine", "negative-count", "bad-port"],
)
def test_manifests_with_broken_server_details_are_refused(entry):
    from backup import CorruptManifest

    with pytest.raises(CorruptManifest):
        Snapshot.from_json(_snapshot(entry).to_json())


def test_probing_an_unreachable_server_reports_the_reason_instead_of_raising():
    from backup.servers import probe_databases

    (probe,) = probe_databases([parse_database_entry("postgresql://nobody@127.0.0.1:1/nothing", environ={})])
    assert not probe.reachable and probe.name == "postgres/nothing"
    assert "connection refused" in probe.detail or "not found" in probe.detail
