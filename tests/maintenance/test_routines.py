"""Daily, weekly and monthly routines on real projects with real SQLite databases."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from invoke import Config, Context, Exit

from backup import ConfigError, list_backups, restore_backup, settings_from_mapping, verify_backup
from backup.ledger import Verification, load_ledger
from backup.locking import LockRecord
from backup.operations import open_repository
from backup.sources import logical_dump_digest
from maintenance.config import routine_config_from_mapping
from maintenance.routines import choose_rotation, coverage, run_daily, run_monthly, run_weekly
from maintenance.sampledata import change_database, create_sample_database
from maintenance.tasks import daily, monthly, weekly
from tests.s3_support import aws_environment, new_bucket, s3_server  # noqa: F401

START = datetime(2025, 1, 10, 2, 0, tzinfo=timezone.utc)


def section(root: Path, repository: Path, **extra) -> dict:
    return {
        "root": str(root),
        "repository": str(repository),
        "lock_wait": 0,
        "retention": {"keep_daily": 3, "timezone": "UTC", "keep_verified": 1, **extra.pop("retention", {})},
        "maintenance": {"grace_minutes": 0, "exports": str(root / "exports"), **extra.pop("maintenance", {})},
        **extra,
    }


@pytest.fixture
def project(tmp_path: Path):
    root = tmp_path / "project"
    database = create_sample_database(root / "app.db", rows=1500)
    create_sample_database(root / "logs" / "audit.sqlite", rows=300, journal_mode="delete", seed=5)
    config = routine_config_from_mapping(section(root, tmp_path / "repo"))
    return config, database


def flip_byte_in_pack_of(config, snapshot_id: str) -> None:
    repository = open_repository(config.settings)
    snapshot = repository.load_snapshot(snapshot_id)
    chunk_id = next(repository.chunk_ids_of(snapshot.files[0].chunk_lists, levels=snapshot.files[0].chunk_list_levels))
    location = repository.index().locations[chunk_id]
    pack = config.settings.repository / "packs" / location.pack_id[:2] / location.pack_id
    data = bytearray(pack.read_bytes())
    data[location.entry.frame_offset + 3] ^= 0x10
    pack.write_bytes(bytes(data))


def test_daily_creates_verifies_records_and_applies_retention(project):
    config, database = project
    reports = []
    for day in range(5):
        change_database(database, seed=day)
        reports.append(run_daily(config, now=START + timedelta(days=day)))
    assert all(report.ok for report in reports), [report.log_lines() for report in reports]
    assert [step.name for step in reports[-1].steps] == ["create", "verify", "retention + prune", "freshness"]
    snapshots = list_backups(config.settings).snapshots
    assert [snapshot.time.day for snapshot in snapshots] == [12, 13, 14]
    assert all(snapshot.tag == "daily" for snapshot in snapshots)
    ledger = load_ledger(open_repository(config.settings).storage)
    assert all(ledger.snapshots[snapshot.id].ok for snapshot in snapshots)
    assert reports[-1].step("retention + prune").details["removed"]


def test_daily_whose_new_snapshot_fails_verification_removes_nothing_and_fails(project):
    config, database = project
    for day in range(4):
        run_daily(config, now=START + timedelta(days=day))
    before = [snapshot.id for snapshot in list_backups(config.settings).snapshots]
    flip_byte_in_pack_of(config, before[-1])  # the unchanged database reuses that chunk
    report = run_daily(config, now=START + timedelta(days=4))
    assert not report.ok
    assert report.step("verify").status == "failed"
    assert report.step("retention + prune").status == "skipped"
    after = [snapshot.id for snapshot in list_backups(config.settings).snapshots]
    assert set(before) <= set(after) and len(after) == len(before) + 1
    assert load_ledger(open_repository(config.settings).storage).snapshots[after[-1]].ok is False


def test_freshness_alert_when_newest_verified_snapshot_is_too_old(project):
    config, _database = project
    run_daily(config, now=START)
    late = run_weekly(config, now=START + timedelta(hours=40))
    assert late.alerts and "40.0 hours old" in late.alerts[0]
    assert not late.ok
    assert run_weekly(config, now=START + timedelta(hours=20)).ok


def test_weekly_rotation_covers_every_snapshot_within_the_window(project):
    config, database = project
    for day in range(4):
        change_database(database, seed=day)
        run_daily(config, now=START + timedelta(days=day))
    weekly_config = routine_config_from_mapping(section(config.settings.root, config.settings.repository, maintenance={"verify_weeks": 2, "alert_after_hours": 10_000}))
    first = run_weekly(weekly_config, now=START + timedelta(days=30))
    assert first.ok, first.log_lines()
    details = first.step("verify (rotation)").details
    assert details["verified_snapshots"] == [snapshot.id for snapshot in list_backups(config.settings).snapshots]  # all overdue
    assert details["coverage_percent"] == 100.0
    # Three days later nothing is close to overdue: the minimum share is re-read.
    second = run_weekly(weekly_config, now=START + timedelta(days=33))
    share = second.step("verify (rotation)").details
    assert len(share["verified_snapshots"]) == 2  # half of the 3 snapshots, rounded up
    assert "coverage 100.0%" in second.step("verify (rotation)").summary
    skipped = set(details["verified_snapshots"]) - set(share["verified_snapshots"])
    third = run_weekly(weekly_config, now=START + timedelta(days=39))
    assert skipped <= set(third.step("verify (rotation)").details["verified_snapshots"])
    assert third.step("verify (rotation)").details["coverage_percent"] == 100.0


def test_weekly_finds_a_flipped_byte_and_reports_the_snapshot(project):
    config, database = project
    run_daily(config, now=START)
    snapshot_id = list_backups(config.settings).snapshots[-1].id
    flip_byte_in_pack_of(config, snapshot_id)
    weekly_config = routine_config_from_mapping(section(config.settings.root, config.settings.repository, maintenance={"verify_weeks": 1}))
    report = run_weekly(weekly_config, now=START + timedelta(days=7))
    step = report.step("verify (rotation)")
    assert step.status == "failed" and snapshot_id in step.summary
    assert load_ledger(open_repository(config.settings).storage).snapshots[snapshot_id].ok is False


def test_weekly_reports_a_lock_without_heartbeat_and_names_the_remedy(project):
    config, _database = project
    run_daily(config, now=START)
    storage = open_repository(config.settings).storage
    record = LockRecord(exclusive=True, host="other-host", pid=1, process_start=None, user="ci", since="2025-01-01T00:00:00Z", heartbeat="2025-01-01T00:00:00Z", purpose="backup", token="ab")
    storage.put("locks/exclusive", [record.to_json()])
    report = run_weekly(config, now=START + timedelta(hours=2))
    locks = report.step("locks")
    assert locks.status == "failed" and "backup.unlock" in locks.summary and "other-host" in locks.summary
    assert report.step("storage").ok and "dedup" in report.step("storage").summary


def test_monthly_drill_restores_latest_and_oldest_and_removes_only_old_exports(project, tmp_path):
    config, database = project
    for day in range(3):
        change_database(database, seed=day)
        run_daily(config, now=START + timedelta(days=day))
    exports = config.exports_directory
    exports.mkdir()
    old, young = exports / "old.tar", exports / "young.tar"
    old.write_bytes(b"x" * 100)
    young.write_bytes(b"y")
    month_ago = (START + timedelta(days=40)).timestamp()
    os.utime(old, (month_ago - 31 * 86400, month_ago - 31 * 86400))
    os.utime(young, (month_ago, month_ago))
    report = run_monthly(config, now=START + timedelta(days=40, hours=1), scratch=tmp_path)
    drill = report.step("restore drill")
    assert drill.status == "ok", drill.summary
    snapshots = list_backups(config.settings).snapshots
    restored = {(row["snapshot"], row["path"]) for row in drill.details["files"]}
    assert restored == {(snapshot.id, path) for snapshot in (snapshots[0], snapshots[-1]) for path in ("app.db", "logs/audit.sqlite")}
    assert all(row["row_counts"] == "match" and row["schema_hash"] == "match" for row in drill.details["files"])
    assert not old.exists() and young.exists()
    review = report.step("retention review")
    assert review.details["per_rule"]["daily"] == 3
    assert review.details["oldest_restorable"] == snapshots[0].time


def test_monthly_drill_fails_when_a_kept_snapshot_cannot_be_restored(project, tmp_path):
    config, _database = project
    run_daily(config, now=START)
    flip_byte_in_pack_of(config, list_backups(config.settings).snapshots[-1].id)
    report = run_monthly(config, now=START + timedelta(hours=1), scratch=tmp_path)
    assert report.step("restore drill").status == "failed"
    assert not report.ok


# -- off-site copies -----------------------------------------------------------------------


def offsite_config(config, **maintenance):
    return routine_config_from_mapping(section(config.settings.root, config.settings.repository, maintenance=maintenance))


def test_daily_with_offsite_copies_each_new_snapshot_verified_into_a_second_repository(project, tmp_path):
    config, database = project
    config = offsite_config(config, offsite="../offsite")  # relative to the project root
    assert config.offsite_location == tmp_path / "offsite"
    for day in range(3):
        change_database(database, seed=day)
        report = run_daily(config, now=START + timedelta(days=day))
        assert report.ok, report.log_lines()
    assert [step.name for step in report.steps] == ["create", "verify", "off-site copy", "retention + prune", "freshness"]
    step = report.step("off-site copy")
    assert step.details["copied"] == [list_backups(config.settings).snapshots[-1].id] and step.details["chunks_sent"] > 0
    offsite = settings_from_mapping({"repository": str(tmp_path / "offsite")}, root=config.settings.root)
    assert [snapshot.id for snapshot in list_backups(offsite).snapshots] == [snapshot.id for snapshot in list_backups(config.settings).snapshots]
    assert verify_backup(offsite, read_data=True).ok
    restore_backup(offsite, "latest", target=tmp_path / "from-offsite", force=True)
    assert logical_dump_digest(tmp_path / "from-offsite" / "app.db") == logical_dump_digest(database)


def test_daily_offsite_catches_up_missed_copies_but_never_brings_back_pruned_ones(project, tmp_path):
    config, database = project
    run_daily(config, now=START)  # no off-site copy configured yet
    with_offsite = offsite_config(config, offsite=str(tmp_path / "offsite"))
    change_database(database, seed=1)
    first = run_daily(with_offsite, now=START + timedelta(days=1))
    ids = [snapshot.id for snapshot in list_backups(config.settings).snapshots]
    assert first.step("off-site copy").details["copied"] == ids
    offsite = settings_from_mapping({"repository": str(tmp_path / "offsite")}, root=config.settings.root)
    (tmp_path / "offsite" / "snapshots" / f"{ids[0]}.json").unlink()  # as a prune there would
    change_database(database, seed=2)
    second = run_daily(with_offsite, now=START + timedelta(days=2))
    newest = list_backups(config.settings).snapshots[-1].id
    assert second.step("off-site copy").details["copied"] == [newest]
    assert [snapshot.id for snapshot in list_backups(offsite).snapshots] == [ids[1], newest]


def test_daily_whose_offsite_copy_fails_reports_the_step_fails_and_still_applies_retention(project, tmp_path, monkeypatch):
    config, _database = project
    for name in ("DBKEEP_PASSWORD", "DBKEEP_PASSWORD_FILE", "DBKEEP_PASSWORD_COMMAND", "DBKEEP_TARGET_PASSWORD", "DBKEEP_TARGET_PASSWORD_FILE", "DBKEEP_TARGET_PASSWORD_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    config = offsite_config(config, offsite=str(tmp_path / "offsite"), offsite_encrypt=True)
    report = run_daily(config, now=START)
    step = report.step("off-site copy")
    assert step.status == "failed" and "needs a passphrase" in step.summary
    assert report.step("retention + prune").status == "ok" and not report.ok
    assert not (tmp_path / "offsite" / "config.json").exists()


def test_daily_skips_the_offsite_copy_of_a_snapshot_that_failed_verification(project, tmp_path):
    config, _database = project
    run_daily(config, now=START)
    flip_byte_in_pack_of(config, list_backups(config.settings).snapshots[-1].id)  # the unchanged database reuses that chunk
    report = run_daily(offsite_config(config, offsite=str(tmp_path / "offsite")), now=START + timedelta(days=1))
    assert report.step("verify").status == "failed" and report.step("off-site copy").status == "skipped"
    assert not (tmp_path / "offsite").exists()


@pytest.mark.parametrize(
    ("offsite", "fragment"),
    [("../repo", "names the repository itself"), ("s3://", "backup.maintenance.offsite = 's3://' is not allowed"), ("", "a non-empty string")],
    ids=["the-repository-itself", "bad-s3-location", "empty"],
)
def test_bad_offsite_setting_is_a_config_error_naming_it(project, offsite, fragment):
    config, _database = project
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        offsite_config(config, offsite=offsite)


def test_daily_copies_off_site_into_an_encrypted_s3_repository(project, tmp_path, aws_environment, monkeypatch):
    pytest.importorskip("cryptography")
    config, database = project
    location = f"s3://{new_bucket(aws_environment)}/offsite"
    monkeypatch.delenv("DBKEEP_PASSWORD", raising=False)
    monkeypatch.setenv("DBKEEP_TARGET_PASSWORD", "off-site passphrase")
    report = run_daily(offsite_config(config, offsite=location, offsite_encrypt=True), now=START)
    assert report.ok, report.log_lines()
    monkeypatch.setenv("DBKEEP_PASSWORD", "off-site passphrase")
    remote = settings_from_mapping({"repository": location, "encryption": "aes-256-gcm"}, root=config.settings.root)
    assert [snapshot.id for snapshot in list_backups(remote).snapshots] == [snapshot.id for snapshot in list_backups(config.settings).snapshots]
    restore_backup(remote, "latest", target=tmp_path / "from-s3", force=True)
    assert logical_dump_digest(tmp_path / "from-s3" / "app.db") == logical_dump_digest(database)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=30), st.integers(min_value=1, max_value=6), st.integers(min_value=0, max_value=40))
def test_run_weekly_every_item_is_reverified_within_the_window(items, weeks, verified_before):
    names = [f"item-{number:03d}" for number in range(items)]
    ledger = {name: Verification(at=START - timedelta(days=verified_before), ok=True) for name in names[: items // 2]}
    for week in range(3 * weeks + 2):
        now = START + timedelta(weeks=week)
        due = choose_rotation(names, ledger, now=now, weeks=weeks)
        ledger.update({name: Verification(at=now, ok=True) for name in due})
        if week >= weeks - 1:
            assert all(ledger[name].at > now - timedelta(weeks=weeks) for name in names)
        assert len(due) <= max(items, 1)


def test_coverage_names_the_least_recently_verified_snapshot():
    from backup.ledger import Ledger

    ledger = Ledger(snapshots={"a": Verification(at=START, ok=True), "b": Verification(at=START - timedelta(weeks=9), ok=True), "c": Verification(at=START, ok=False)})
    percent, oldest, when = coverage(["a", "b", "c"], ledger, now=START, weeks=4)
    assert percent == 33.3 and oldest == "c" and when is None


# -- the Invoke tasks ------------------------------------------------------------------


def context_for(config_section: dict) -> Context:
    return Context(config=Config(overrides={"backup": config_section}))


def test_daily_task_prints_json_and_appends_markdown_to_the_step_summary(tmp_path, capsys, monkeypatch):
    root = tmp_path / "project"
    create_sample_database(root / "app.db", rows=200)
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    daily(context_for(section(root, tmp_path / "repo")), json=True)
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is True and document["routine"] == "daily"
    assert [step["name"] for step in document["steps"]] == ["create", "verify", "retention + prune", "freshness"]
    assert "### dbkeep maintenance.daily: passed" in summary.read_text()


def test_weekly_task_exits_1_with_a_table_when_verification_fails(tmp_path, capsys):
    root = tmp_path / "project"
    create_sample_database(root / "app.db", rows=200)
    config_section = section(root, tmp_path / "repo", maintenance={"verify_weeks": 1})
    daily(context_for(config_section))
    capsys.readouterr()
    flip_byte_in_pack_of(routine_config_from_mapping(config_section), list_backups(routine_config_from_mapping(config_section).settings).snapshots[-1].id)
    with pytest.raises(Exit) as raised:
        weekly(context_for(config_section))
    assert raised.value.code == 1
    out = capsys.readouterr().out
    assert "verify (rotation)" in out and "failed" in out and "maintenance.weekly: FAILED" in out


def test_bad_config_key_exits_2_naming_the_key(tmp_path):
    with pytest.raises(Exit) as raised:
        monthly(context_for(section(tmp_path, tmp_path / "repo", maintenance={"verify_weks": 2})))
    assert raised.value.code == 2 and "backup.maintenance.verify_weks" in str(raised.value.message)


def test_daily_task_notifies_a_webhook_and_fails_when_delivery_fails(tmp_path, capsys):
    root = tmp_path / "project"
    create_sample_database(root / "app.db", rows=100)
    with pytest.raises(Exit) as raised:
        daily(context_for(section(root, tmp_path / "repo", notify={"webhook": "http://127.0.0.1:9/hc", "timeout": 5})))
    assert raised.value.code == 1
    assert "webhook notification (start) failed" in capsys.readouterr().err
