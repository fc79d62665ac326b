"""The real command line, end to end: every task, flag and error path in subprocesses.

A module-wide sample project with two snapshots serves every test that only
reads; tests that change something work on their own copy of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pty
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_support import (  # noqa: E402
    assert_expected_failure,
    dbkeep,
    fingerprint,
    invoke,
    parse_json,
    snapshot_ids,
)

from backup.locking import LockRecord  # noqa: E402
from backup.sample import create_sample_project  # noqa: E402
from backup.storage import LocalStorage  # noqa: E402

SAMPLE_SIZE = 1024 * 1024


def _rows(database: Path, table: str) -> int:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _damage_orders(project: Path) -> None:
    """Delete a third of the orders and add a column: a data loss and a schema change."""
    with contextlib.closing(sqlite3.connect(project / "app.db")) as connection, connection:
        connection.execute("DELETE FROM orders WHERE id % 3 = 0")
        connection.execute("ALTER TABLE users ADD COLUMN phone TEXT")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with two snapshots: 'first', then 'second' after losing a third of the orders."""
    project = tmp_path_factory.mktemp("shared") / "shop"
    create_sample_project(project, size=SAMPLE_SIZE)
    assert dbkeep("backup.create", "--tag", "first", cwd=project).returncode == 0
    _damage_orders(project)
    assert dbkeep("backup.create", "--tag", "second", cwd=project).returncode == 0
    return project


@pytest.fixture
def project(shared: Path, tmp_path: Path) -> Path:
    """A private copy of the shared project, free to change."""
    copy = tmp_path / "shop"
    shutil.copytree(shared, copy)
    return copy


# -- list / info / size / verify ------------------------------------------------------


def test_list_shows_each_snapshot_with_tag_local_time_and_integrity(shared: Path) -> None:
    result = dbkeep("backup.list", cwd=shared)
    assert result.returncode == 0, result.stderr
    first, second = snapshot_ids(shared)
    lines = result.stdout.splitlines()
    assert "local time" in lines[0] and "verified" in lines[0]
    assert any(first in line and "first" in line and " ok" in line for line in lines)
    assert any(second in line and "second" in line for line in lines)
    assert result.stderr == ""


def test_list_filters_by_tag_and_since(shared: Path) -> None:
    by_tag = parse_json(dbkeep("backup.list", "--tag", "second", "--json", cwd=shared))
    assert [item["tag"] for item in by_tag["snapshots"]] == ["second"]
    recent = parse_json(dbkeep("backup.list", "--since", "1h", "--json", cwd=shared))
    assert len(recent["snapshots"]) == 2
    future = parse_json(dbkeep("backup.list", "--since", "2999-01-01", "--json", cwd=shared))
    assert future["snapshots"] == []


def test_list_with_bad_since_exits_2_naming_the_value(shared: Path) -> None:
    assert_expected_failure(dbkeep("backup.list", "--since", "someday", cwd=shared), 2, "'someday'")


def test_info_shows_provenance_files_and_row_counts(shared: Path) -> None:
    first, second = snapshot_ids(shared)
    prefix = first[: len(os.path.commonprefix([first, second])) + 1]  # the shortest unique prefix
    result = dbkeep("backup.info", prefix, cwd=shared)
    assert result.returncode == 0, result.stderr
    for fragment in (first, "first", "app.db", "data/analytics.sqlite", "files/settings.json", "integrity_check", "orders", "journal mode"):
        assert fragment in result.stdout
    document = parse_json(dbkeep("backup.info", first, "--json", cwd=shared))
    manifest = document["snapshot"]["manifest"]
    app = next(entry for entry in manifest["files"] if entry["path"] == "app.db")
    assert app["sqlite"]["journal_mode"] == "wal"
    assert app["sqlite"]["tables"]["orders"] > 0


def test_size_reports_dedup_between_the_two_snapshots(shared: Path) -> None:
    document = parse_json(dbkeep("backup.size", "--json", cwd=shared))
    assert document["snapshot_count"] == 2
    assert document["dedup_ratio"] > 1.5  # the second snapshot reuses most chunks
    assert document["compression_ratio"] > 1.0
    assert document["logical_bytes"] == sum(item["logical_bytes"] for item in document["snapshots"])
    assert document["databases"][0]["path"] == "app.db"
    table = dbkeep("backup.size", cwd=shared)
    assert "dedup ratio" in table.stdout and "largest files" in table.stdout


@pytest.mark.parametrize("arguments", [(), ("--read-data",), ("--snapshot", "latest", "--read-data")], ids=["structure", "read-data", "one-snapshot"])
def test_verify_of_an_intact_repository_exits_0(shared: Path, arguments: tuple[str, ...]) -> None:
    result = dbkeep("backup.verify", *arguments, cwd=shared)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "result" in result.stdout and "ok" in result.stdout


def test_verify_of_a_flipped_byte_exits_1_with_a_table_naming_snapshot_and_file(project: Path) -> None:
    pack = max((project / ".backups" / "packs").rglob("*"), key=lambda path: path.stat().st_size if path.is_file() else 0)
    data = bytearray(pack.read_bytes())
    data[len(data) // 3] ^= 0x01
    pack.write_bytes(bytes(data))
    result = dbkeep("backup.verify", "--read-data", cwd=project)
    assert_expected_failure(result, 1, "problems")
    assert "app.db" in result.stdout or "data/analytics.sqlite" in result.stdout
    document = parse_json(dbkeep("backup.verify", "--read-data", "--json", cwd=project))
    assert document["ok"] is False and document["problems"]
    assert document["affected_snapshots"]


# -- compare --------------------------------------------------------------------------


def test_compare_two_snapshots_shows_row_deltas_schema_changes_and_a_loss_warning(shared: Path) -> None:
    first, second = snapshot_ids(shared)
    result = dbkeep("backup.compare", first, "--other", second, cwd=shared)
    assert result.returncode == 0, result.stderr
    assert "WARNING: app.db: table orders lost" in result.stdout
    assert "columns added in users: phone" in result.stdout
    document = parse_json(dbkeep("backup.compare", first, "--other", second, "--json", cwd=shared))
    app = next(item for item in document["files"] if item["path"] == "app.db")
    orders = next(table for table in app["tables"] if table["name"] == "orders")
    assert app["status"] == "changed" and orders["delta"] < 0
    assert app["schema"]["columns_added"] == {"users": ["phone"]}
    assert document["counts"]["same"] == 2


def test_compare_with_the_live_project_sees_new_files_and_respects_warn_loss(project: Path) -> None:
    (project / "files" / "new.txt").write_text("hello\n")
    first = snapshot_ids(project)[0]
    document = parse_json(dbkeep("backup.compare", first, "--json", cwd=project))
    statuses = {item["path"]: item["status"] for item in document["files"]}
    assert statuses == {"app.db": "changed", "data/analytics.sqlite": "same", "files/new.txt": "added", "files/settings.json": "same"}
    assert any("orders lost" in warning for warning in document["warnings"])
    quiet = parse_json(dbkeep("backup.compare", first, "--warn-loss", "50", "--json", cwd=project))
    assert not any("orders lost" in warning for warning in quiet["warnings"])
    assert_expected_failure(dbkeep("backup.compare", first, "--warn-loss", "150", cwd=project), 2, "--warn-loss")


def test_compare_latest_with_unchanged_live_files_reports_all_same(shared: Path) -> None:
    document = parse_json(dbkeep("backup.compare", "latest", "--json", cwd=shared))
    assert {item["status"] for item in document["files"]} == {"same"}
    assert document["warnings"] == []


# -- snapshot naming errors -----------------------------------------------------------


@pytest.mark.parametrize(
    "task",
    [("backup.info",), ("backup.compare",), ("backup.restore", "--force"), ("backup.export", "OUT")],
    ids=["info", "compare", "restore", "export"],
)
def test_unknown_snapshot_exits_2_with_one_line(shared: Path, task: tuple[str, ...], tmp_path: Path) -> None:
    arguments = [task[0], "no-such-snapshot", *(str(tmp_path / "out.tar.gz") if part == "OUT" else part for part in task[1:])]
    assert_expected_failure(dbkeep(*arguments, cwd=shared), 2, "no snapshot matches 'no-such-snapshot'")


def test_ambiguous_prefix_exits_2_and_names_the_matches(shared: Path) -> None:
    first, second = snapshot_ids(shared)
    prefix = os.path.commonprefix([first, second])
    line = assert_expected_failure(dbkeep("backup.info", prefix, cwd=shared), 2, "matches 2 snapshots")
    assert first in line and second in line


def test_json_error_is_one_document_on_stdout(shared: Path) -> None:
    result = dbkeep("backup.info", "no-such-snapshot", "--json", cwd=shared)
    assert result.returncode == 2
    document = parse_json(result)
    assert document["ok"] is False and document["error"]["type"] == "SnapshotNotFound"


@pytest.mark.parametrize(
    "arguments",
    [
        ("backup.list",),
        ("backup.info", "latest"),
        ("backup.size",),
        ("backup.verify",),
        ("backup.compare", "latest"),
        ("backup.restore", "latest", "--dry-run"),
        ("backup.clean", "--dry-run"),
        ("backup.unlock",),
    ],
    ids=lambda arguments: arguments[0],
)
def test_json_output_is_exactly_one_document_and_stdout_stays_clean(shared: Path, arguments: tuple[str, ...]) -> None:
    result = dbkeep(*arguments, "--json", cwd=shared)
    assert result.returncode == 0, result.stderr
    document = parse_json(result)
    assert document["command"] == arguments[0] and document["ok"] is True
    assert result.stderr == ""


# -- restore --------------------------------------------------------------------------


def test_restore_without_terminal_and_without_force_exits_2_and_changes_nothing(project: Path) -> None:
    before = {name: fingerprint(project / name) for name in ("app.db", "data/analytics.sqlite", "files/settings.json")}
    snapshots_before = snapshot_ids(project)
    result = dbkeep("backup.restore", snapshot_ids(project)[0], cwd=project)
    assert_expected_failure(result, 2, "--force", "nothing was changed")
    assert "restore plan" in result.stdout and "overwrites" in result.stdout
    assert {name: fingerprint(project / name) for name in before} == before
    assert snapshot_ids(project) == snapshots_before  # not even a safety snapshot
    assert not list(project.rglob(".dbkeep-tmp-*"))


def test_restore_with_force_brings_rows_back_and_names_the_safety_snapshot(project: Path) -> None:
    before = snapshot_ids(project)
    lost = _rows(project / "app.db", "orders")
    result = dbkeep("backup.restore", before[0], "--force", cwd=project)
    assert result.returncode == 0, result.stderr
    (safety,) = set(snapshot_ids(project)) - set(before)
    assert f"safety snapshot: {safety}" in result.stdout
    assert "SHA-256" in result.stdout and "integrity" in result.stdout
    assert _rows(project / "app.db", "orders") > lost
    with contextlib.closing(sqlite3.connect(project / "app.db")) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # The safety snapshot holds the state before the restore: the damaged one.
    undo = parse_json(dbkeep("backup.compare", safety, "--json", cwd=project))
    assert next(item for item in undo["files"] if item["path"] == "app.db")["status"] == "changed"


def test_restore_dry_run_prints_the_plan_and_changes_nothing(project: Path) -> None:
    before = fingerprint(project / "app.db")
    result = dbkeep("backup.restore", snapshot_ids(project)[0], "--dry-run", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing was changed" in result.stdout and "overwrites" in result.stdout
    assert fingerprint(project / "app.db") == before


def test_restore_into_target_with_only_and_verify_reads_back_what_it_wrote(project: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    result = dbkeep("backup.restore", "latest", "--target", str(target), "--only", "data/**", "--only", "files/*.json", "--verify", "--json", cwd=project)
    document = parse_json(result)
    assert result.returncode == 0, result.stderr
    assert sorted(item["path"] for item in document["files"]) == ["data/analytics.sqlite", "files/settings.json"]
    assert all(item["read_back"] and item["sha256_ok"] for item in document["files"])
    assert document["safety_snapshot"] is None  # nothing live was overwritten
    assert (target / "data" / "analytics.sqlite").read_bytes()[:16] == b"SQLite format 3\x00"
    assert not (target / "app.db").exists()


def test_restore_only_pattern_matching_nothing_exits_2(project: Path) -> None:
    assert_expected_failure(dbkeep("backup.restore", "latest", "--only", "nothing/**", "--force", cwd=project), 2, "no file matching")


def _without_dac_override() -> list[str]:
    """A prefix that runs a command without root's permission override, or [] when not root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a directory unwritable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_restore_into_unwritable_target_exits_1_and_writes_nothing(project: Path, tmp_path: Path) -> None:
    target = tmp_path / "locked"
    target.mkdir()
    target.chmod(0o555)
    from cli_support import cli_environment

    result = subprocess.run(
        [*_without_dac_override(), sys.executable, "-m", "maintenance.program", "backup.restore", "latest", "--target", str(target), "--force"],
        cwd=project,
        env=cli_environment(home=project),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    assert_expected_failure(result, 1, str(target))
    assert list(target.iterdir()) == []


def _run_on_terminal(arguments: list[str], cwd: Path, *, answer: bytes = b"", stderr_on_terminal: bool = False, env: dict[str, str] | None = None):
    """Run dbkeep with stdin (and optionally stderr) on a pseudo-terminal; returns (result, terminal output)."""
    from cli_support import cli_environment

    master, slave = pty.openpty()
    try:
        if answer:
            os.write(master, answer)
        process = subprocess.Popen(
            [sys.executable, "-m", "maintenance.program", *arguments],
            cwd=cwd,
            env=cli_environment(env, home=cwd),
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=slave if stderr_on_terminal else subprocess.PIPE,
            text=True,
        )
        os.close(slave)
        slave = -1
        stdout, stderr = process.communicate(timeout=120)
        terminal = b""
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                terminal += chunk
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr), terminal.decode(errors="replace")


def test_restore_on_a_terminal_asks_and_a_no_changes_nothing(project: Path) -> None:
    before = fingerprint(project / "app.db")
    result, _ = _run_on_terminal(["backup.restore", snapshot_ids(project)[0]], project, answer=b"n\n")
    assert_expected_failure(result, 2, "not confirmed")
    assert "Overwrite 3 live files" in result.stdout and "[y/N]" in result.stdout
    assert fingerprint(project / "app.db") == before


def test_restore_on_a_terminal_answered_yes_restores(project: Path) -> None:
    first = snapshot_ids(project)[0]
    result, _ = _run_on_terminal(["backup.restore", first], project, answer=b"y\n")
    assert result.returncode == 0, result.stderr
    assert "safety snapshot:" in result.stdout
    assert parse_json(dbkeep("backup.compare", first, "--json", cwd=project))["counts"]["changed"] == 0


# -- create ---------------------------------------------------------------------------


def test_create_with_tag_note_and_verify_reports_the_snapshot(project: Path) -> None:
    result = dbkeep("backup.create", "--tag", "migration", "--note", "before v2", "--verify", cwd=project)
    assert result.returncode == 0, result.stderr
    for fragment in ("snapshot", "migration (before v2)", "logical size", "new bytes stored", "ratio", "integrity", "duration", "every byte re-read"):
        assert fragment in result.stdout
    document = parse_json(dbkeep("backup.create", "--json", cwd=project))
    assert document["snapshot"]["tag"] == "manual"
    assert document["stats"]["reused_chunks"] > 0 and document["stats"]["new_chunks"] == 0
    assert document["verification"] is None


def test_create_no_compress_stores_new_chunks_raw(tmp_path: Path) -> None:
    raw, packed = tmp_path / "raw", tmp_path / "packed"
    for path in (raw, packed):
        create_sample_project(path, size=SAMPLE_SIZE)
    raw_stats = parse_json(dbkeep("backup.create", "--no-compress", "--json", cwd=raw))["stats"]
    packed_stats = parse_json(dbkeep("backup.create", "--compress", "--json", cwd=packed))["stats"]
    assert raw_stats["stored_bytes"] >= raw_stats["new_bytes"]
    assert packed_stats["stored_bytes"] < packed_stats["new_bytes"] * 0.8
    assert dbkeep("backup.verify", "--read-data", cwd=raw).returncode == 0


def test_create_in_a_project_without_databases_exits_2(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no databases here\n")
    assert_expected_failure(dbkeep("backup.create", cwd=tmp_path), 2, "no databases found")
    assert not (tmp_path / ".backups" / "snapshots").exists() or not list((tmp_path / ".backups" / "snapshots").iterdir())


def test_tasks_in_a_project_without_a_repository_exit_2(tmp_path: Path) -> None:
    assert_expected_failure(dbkeep("backup.list", cwd=tmp_path), 2, "no dbkeep repository")


def test_root_flag_points_at_another_project_and_reads_its_invoke_yaml(shared: Path, tmp_path: Path) -> None:
    document = parse_json(dbkeep("backup.list", "--root", str(shared), "--json", cwd=tmp_path))
    assert len(document["snapshots"]) == 2
    # The sample's invoke.yaml adds files/**: a plain file only that config selects.
    assert any(item["path"] == "files/settings.json" for item in parse_json(dbkeep("backup.compare", "latest", "--root", str(shared), "--json", cwd=tmp_path))["files"])
    assert_expected_failure(dbkeep("backup.list", "--root", str(tmp_path / "missing"), cwd=tmp_path), 2, "is not a directory")


# -- configuration errors -------------------------------------------------------------


def test_unknown_key_in_invoke_yaml_exits_2_naming_it(project: Path) -> None:
    (project / "invoke.yaml").write_text("backup:\n  keep_lats: 3\n")
    assert_expected_failure(dbkeep("backup.list", cwd=project), 2, "backup.keep_lats", "known settings are")


def test_bad_value_in_invoke_yaml_exits_2_naming_key_value_and_allowed(project: Path) -> None:
    (project / "invoke.yaml").write_text("backup:\n  compression_level: 99\n")
    assert_expected_failure(dbkeep("backup.create", cwd=project), 2, "backup.compression_level", "99", "from 0 to 22")


def test_malformed_invoke_yaml_exits_2(project: Path) -> None:
    (project / "invoke.yaml").write_text("backup: [unclosed\n")
    assert_expected_failure(dbkeep("backup.list", cwd=project), 2, "invoke.yaml")


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [("INVOKE_BACKUP_KEEP_LAST", "ten", "backup.keep_last = 'ten'"), ("INVOKE_BACKUP_CHUNK_SIZE", "5000", "power of two"), ("INVOKE_BACKUP_LOCK_WAIT", "-1", "backup.lock_wait")],
    ids=["keep_last", "chunk_size", "lock_wait"],
)
def test_bad_environment_value_exits_2_naming_it(shared: Path, variable: str, value: str, fragment: str) -> None:
    assert_expected_failure(dbkeep("backup.list", cwd=shared, env={variable: value}), 2, fragment)


def test_environment_list_value_selects_only_those_files(project: Path) -> None:
    document = parse_json(dbkeep("backup.create", "--json", cwd=project, env={"INVOKE_BACKUP_INCLUDE": "app.db"}))
    assert [item["path"] for item in document["files"]] == ["app.db"]


def test_bad_flag_values_exit_2(shared: Path) -> None:
    assert_expected_failure(dbkeep("backup.clean", "--keep", "0", cwd=shared), 2, "--keep")
    assert_expected_failure(dbkeep("backup.clean", "--keep", "many", cwd=shared), 2, "--keep")
    assert_expected_failure(dbkeep("backup.export", "latest", "x.zip", "--format", "zip", cwd=shared), 2, "tar.gz, tar.zst, dir")


# -- clean ----------------------------------------------------------------------------


def test_clean_dry_run_then_clean_keeps_the_newest(project: Path) -> None:
    first, second = snapshot_ids(project)
    dry = parse_json(dbkeep("backup.clean", "--keep", "1", "--dry-run", "--json", cwd=project))
    assert dry["removed"] == [first] and dry["kept"] == [second] and dry["dry_run"] is True
    assert snapshot_ids(project) == [first, second]
    result = dbkeep("backup.clean", "--keep", "1", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "snapshots removed  1" in result.stdout
    assert snapshot_ids(project) == [second]
    assert dbkeep("backup.verify", "--read-data", cwd=project).returncode == 0


# -- locks ----------------------------------------------------------------------------


def _write_lock(project: Path, **changes) -> None:
    record = dataclasses.replace(LockRecord.for_this_process(exclusive=True, purpose="a test holding the lock"), **changes)
    LocalStorage(project / ".backups").put("locks/exclusive", [record.to_json()])


def test_locked_repository_exits_3_and_unlock_all_force_frees_it(project: Path) -> None:
    _write_lock(project)  # held by this (live) test process
    environment = {"INVOKE_BACKUP_LOCK_WAIT": "0"}
    before = snapshot_ids(project)
    assert_expected_failure(dbkeep("backup.create", cwd=project, env=environment), 3, "is locked", "a test holding the lock")
    assert_expected_failure(dbkeep("backup.restore", "latest", "--force", cwd=project, env=environment), 3, "is locked")
    assert snapshot_ids(project) == before
    kept = dbkeep("backup.unlock", cwd=project)
    assert kept.returncode == 0 and "still held" in kept.stdout
    assert_expected_failure(dbkeep("backup.unlock", "--all", cwd=project), 2, "not confirmed")
    freed = parse_json(dbkeep("backup.unlock", "--all", "--force", "--json", cwd=project))
    assert len(freed["removed"]) == 1 and freed["remaining"] == []
    assert dbkeep("backup.create", cwd=project, env=environment).returncode == 0


def test_unlock_removes_the_lock_of_a_dead_process(project: Path) -> None:
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    _write_lock(project, pid=int(finished.stdout), process_start=None)
    document = parse_json(dbkeep("backup.unlock", "--json", cwd=project))
    assert len(document["removed"]) == 1 and "a test holding the lock" in document["removed"][0]
    assert not (project / ".backups" / "locks" / "exclusive").exists()


# -- export ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "arguments"), [("out.tar.gz", ()), ("out.tar.zst", ()), ("out", ("--format", "dir"))], ids=["tar.gz", "tar.zst", "dir"])
def test_export_writes_an_archive_that_sha256sum_accepts(shared: Path, tmp_path: Path, name: str, arguments: tuple[str, ...]) -> None:
    output = tmp_path / name
    result = dbkeep("backup.export", "latest", str(output), *arguments, "--json", cwd=shared)
    document = parse_json(result)
    assert result.returncode == 0, result.stderr
    if document["format"] == "dir":
        folder = output
    else:
        unpacked = tmp_path / "unpacked"
        unpacked.mkdir()
        if document["format"] == "tar.zst":
            import zstandard

            with open(output, "rb") as handle, zstandard.ZstdDecompressor().stream_reader(handle) as reader, tarfile.open(fileobj=reader, mode="r|") as archive:
                archive.extractall(unpacked, filter="data")
        else:
            with tarfile.open(output) as archive:
                archive.extractall(unpacked, filter="data")
        folder = unpacked / document["folder"]
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == 4  # three files and metadata.json
    assert _rows(folder / "files" / "app.db", "orders") == _rows(shared / "app.db", "orders")


def test_export_refuses_an_existing_output_and_leaves_it_alone(shared: Path, tmp_path: Path) -> None:
    output = tmp_path / "taken.tar.gz"
    output.write_text("precious\n")
    assert_expected_failure(dbkeep("backup.export", "latest", str(output), cwd=shared), 2, "already exists")
    assert output.read_text() == "precious\n"
    assert [path.name for path in tmp_path.iterdir()] == ["taken.tar.gz"]


# -- listing, help, entry points ------------------------------------------------------

TASKS = (
    "backup.clean",
    "backup.compare",
    "backup.copy",
    "backup.create",
    "backup.export",
    "backup.import",
    "backup.info",
    "backup.init",
    "backup.key-add",
    "backup.key-list",
    "backup.key-passwd",
    "backup.key-remove",
    "backup.list",
    "backup.report",
    "backup.restore",
    "backup.size",
    "backup.unlock",
    "backup.verify",
    "maintenance.daily",
    "maintenance.monthly",
    "maintenance.weekly",
    "sample",
    "selftest",
)


@pytest.mark.parametrize("runner", ["invoke", "dbkeep"])
def test_list_shows_one_line_per_task(runner: str, tmp_path: Path) -> None:
    result = invoke("--list") if runner == "invoke" else dbkeep("--list", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    task_lines = [line.strip() for line in result.stdout.splitlines() if line.startswith("  ") and line.strip()]
    names = [line.split()[0] for line in task_lines]
    # tasks.py adds the benchmark, which lives only in a checkout of the repository.
    expected = (*TASKS, "bench") if runner == "invoke" else TASKS
    assert sorted(names) == sorted(expected)
    assert all(len(line.split(maxsplit=1)) == 2 for line in task_lines)  # each has its help on the same line


def test_help_of_restore_documents_every_flag(tmp_path: Path) -> None:
    result = dbkeep("--help", "backup.restore", cwd=tmp_path)
    assert result.returncode == 0
    for flag in ("--snapshot", "--target", "--only", "--verify", "--force", "--dry-run", "--root", "--json"):
        line = next(line for line in result.stdout.splitlines() if line.strip().startswith(flag))
        assert len(line.split()) > 1, line


def test_readme_first_command_creates_the_sample_and_backs_it_up(tmp_path: Path) -> None:
    sample = tmp_path / "sample"
    created = invoke("sample", "--path", str(sample))
    assert created.returncode == 0, created.stderr
    assert "created" in created.stdout
    again = invoke("sample", "--path", str(sample))
    assert "already present" in again.stdout
    backed_up = invoke("backup.create", "--root", str(sample))
    assert backed_up.returncode == 0, backed_up.stderr
    assert "files/settings.json" in backed_up.stdout  # the sample's invoke.yaml was read
    with contextlib.closing(sqlite3.connect(sample / "app.db")) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("SELECT count(*) FROM attachments").fetchone()[0] > 0
    assert (sample / "app.db").stat().st_size > 4 * 1024 * 1024


def test_version_flag(tmp_path: Path) -> None:
    result = dbkeep("--version", cwd=tmp_path)
    assert result.returncode == 0 and "0.1.0" in result.stdout


# -- progress -------------------------------------------------------------------------


def test_progress_appears_on_a_terminal_and_never_with_json(project: Path) -> None:
    environment = {"DBKEEP_PROGRESS_AFTER": "0"}
    result, terminal = _run_on_terminal(["backup.verify", "--read-data"], project, stderr_on_terminal=True, env=environment)
    assert result.returncode == 0
    assert "verify" in terminal and "/s" in terminal
    assert "Traceback" not in terminal
    result, terminal = _run_on_terminal(["backup.verify", "--read-data", "--json"], project, stderr_on_terminal=True, env=environment)
    assert parse_json(result)["ok"] is True
    assert terminal.strip() == ""


def test_progress_stays_off_when_stderr_is_not_a_terminal(project: Path) -> None:
    result = dbkeep("backup.create", cwd=project, env={"DBKEEP_PROGRESS_AFTER": "0"})
    assert result.returncode == 0 and result.stderr == ""


def test_backup_full_reads_every_database_again(project: Path) -> None:
    result = dbkeep("backup.create", "--full", "--json", cwd=project)

    document = parse_json(result)
    assert result.returncode == 0, result.stderr
    assert document["unchanged"] == []
    assert document["stats"]["logical_bytes"] > 0
