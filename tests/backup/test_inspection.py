"""Inspection on real SQLite databases: compare, size report, list filters."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from backup import (
    UsageError,
    compare_snapshot,
    create_backup,
    list_snapshots,
    load_settings,
    repository_size,
)
from backup.inspection import parse_since
from backup.sample import create_sample_project

SIZE = 512 * 1024


def _execute(database: Path, *statements: str) -> None:
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        for statement in statements:
            connection.execute(statement)


def _tree_digest(repository: Path) -> str:
    """Every repository file but the lock bookkeeping, hashed: equal means untouched."""
    digest = hashlib.sha256()
    for path in sorted(repository.rglob("*")):
        if path.is_file() and "locks" not in path.relative_to(repository).parts:
            digest.update(str(path.relative_to(repository)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    create_sample_project(root, size=SIZE)
    return root


@pytest.fixture
def settings(project: Path):
    return load_settings(project)


def test_compare_with_unchanged_live_project_is_all_same_and_changes_nothing(settings, project: Path) -> None:
    snapshot = create_backup(settings).snapshot
    before = _tree_digest(settings.repository)
    comparison = compare_snapshot(settings, "latest")
    assert comparison.other is None and comparison.base.id == snapshot.id
    assert {item.path: item.status for item in comparison.files} == {
        "app.db": "same",
        "data/analytics.sqlite": "same",
        "files/settings.json": "same",
    }
    assert comparison.warnings == ()
    assert _tree_digest(settings.repository) == before
    assert not list((settings.repository / "tmp").iterdir())  # scratch copies were removed


def test_compare_with_live_reports_rows_schema_and_loss_warning(settings, project: Path) -> None:
    create_backup(settings)
    _execute(
        project / "app.db",
        "DELETE FROM orders WHERE id % 2 = 0",
        "ALTER TABLE users ADD COLUMN phone TEXT",
        "CREATE INDEX users_by_name ON users(name)",
        "DROP INDEX orders_by_product",
        "DROP TABLE attachments",
        "CREATE TABLE coupons (code TEXT)",
    )
    (project / "files" / "settings.json").write_text("{}\n")
    comparison = compare_snapshot(settings, "latest")
    app = next(item for item in comparison.files if item.path == "app.db")
    assert app.status == "changed" and app.integrity_after == "ok"
    tables = {table.name: table for table in app.tables}
    assert tables["orders"].status == "changed" and tables["orders"].delta == -(tables["orders"].rows_before // 2)
    assert tables["coupons"].status == "added" and tables["coupons"].rows_before is None
    assert tables["attachments"].status == "removed"
    assert tables["users"].status == "same"
    assert app.schema is not None
    assert app.schema.tables_added == ("coupons",) and app.schema.tables_removed == ("attachments",)
    assert app.schema.columns_added == {"users": ("phone",)}
    assert app.schema.indexes_added == ("users_by_name",)
    assert set(app.schema.indexes_removed) == {"orders_by_product", "attachments_by_order"}
    settings_file = next(item for item in comparison.files if item.path == "files/settings.json")
    assert settings_file.status == "changed" and settings_file.size_delta == 3 - settings_file.size_before
    assert any("orders lost" in warning for warning in comparison.warnings)
    assert any("table attachments" in warning and "no longer exists" in warning for warning in comparison.warnings)


def test_compare_two_snapshots_uses_both_manifests(settings, project: Path) -> None:
    first = create_backup(settings).snapshot
    _execute(project / "data" / "analytics.sqlite", "DELETE FROM events WHERE id > 4000")
    second = create_backup(settings).snapshot
    _execute(project / "data" / "analytics.sqlite", "DELETE FROM events")
    comparison = compare_snapshot(settings, first.id, second.id)
    analytics = next(item for item in comparison.files if item.path == "data/analytics.sqlite")
    (events,) = analytics.tables
    assert (events.rows_before, events.rows_after, events.delta) == (5000, 4000, -1000)
    assert analytics.schema is None  # same schema hash: no schema detail needed
    assert any("events lost 1000 of 5000" in warning for warning in comparison.warnings)


@pytest.mark.parametrize(
    ("deleted", "threshold", "warned"),
    [(500, 0.10, False), (501, 0.10, True), (0, 0.0, False), (1, 0.0, True), (5000, 1.0, False)],
    ids=["exactly-10pc", "just-over-10pc", "nothing-lost-at-0", "one-row-at-0", "all-lost-at-100pc"],
)
def test_loss_warning_is_for_more_than_the_threshold(settings, project: Path, deleted: int, threshold: float, warned: bool) -> None:
    create_backup(settings)
    _execute(project / "data" / "analytics.sqlite", f"DELETE FROM events WHERE id <= {deleted}")
    comparison = compare_snapshot(settings, "latest", loss_threshold=threshold)
    assert any("table events lost" in warning for warning in comparison.warnings) is warned


def test_compare_warns_when_a_database_disappears(settings, project: Path) -> None:
    create_backup(settings)
    (project / "data" / "analytics.sqlite").unlink()
    comparison = compare_snapshot(settings, "latest")
    gone = next(item for item in comparison.files if item.path == "data/analytics.sqlite")
    assert gone.status == "removed" and gone.size_after is None and gone.size_delta == -gone.size_before
    assert "data/analytics.sqlite: the database no longer exists" in comparison.warnings


def test_compare_refuses_a_threshold_outside_zero_to_one(settings) -> None:
    create_backup(settings)
    with pytest.raises(UsageError):
        compare_snapshot(settings, "latest", loss_threshold=1.5)


def test_size_report_counts_shared_and_unique_bytes(settings, project: Path) -> None:
    first = create_backup(settings).snapshot
    create_backup(settings)  # identical: every chunk shared
    report = repository_size(settings)
    assert report.snapshot_count == 2
    assert report.logical_bytes == 2 * first.logical_bytes
    assert [usage.unique_bytes for usage in report.snapshots] == [0, 0]
    assert report.dedup_ratio == pytest.approx(2.0, rel=0.01)
    assert report.unreferenced_bytes == 0
    assert report.repository_bytes > report.pack_bytes > 0
    assert report.databases[0].path == "app.db" and report.databases[0].distinct_versions == 1
    _execute(project / "app.db", "UPDATE users SET name = name || '!'")
    create_backup(settings)
    changed = repository_size(settings)
    assert changed.snapshots[-1].unique_bytes > 0
    assert changed.databases[0].distinct_versions == 2


def test_size_report_lists_a_damaged_manifest_apart(settings, project: Path) -> None:
    create_backup(settings)
    damaged = create_backup(settings).snapshot
    manifest = settings.repository / "snapshots" / f"{damaged.id}.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"tag"', b'"tog"', 1))
    report = repository_size(settings)
    assert report.snapshot_count == 1 and damaged.id in report.damaged


def test_list_snapshots_filters_by_tag_and_since(settings) -> None:
    now = datetime.now(timezone.utc)
    create_backup(settings, tag="daily", now=now - timedelta(days=3))
    create_backup(settings, tag="manual", now=now - timedelta(hours=1))
    assert [snapshot.tag for snapshot in list_snapshots(settings, tag="daily").snapshots] == ["daily"]
    assert [snapshot.tag for snapshot in list_snapshots(settings, since="2d", now=now).snapshots] == ["manual"]
    assert list_snapshots(settings, tag="weekly").snapshots == ()


def test_parse_since_reads_a_bare_date_as_the_start_of_that_day() -> None:
    moment = parse_since("2025-01-16", now=datetime(2025, 2, 1, tzinfo=timezone.utc))
    local = moment.astimezone()
    assert (local.year, local.month, local.day, local.hour, local.minute) == (2025, 1, 16, 0, 0)
    with pytest.raises(UsageError, match="'soon'"):
        parse_since("soon", now=datetime.now(timezone.utc))
