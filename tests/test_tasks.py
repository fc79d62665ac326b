"""The task layer in-process: namespace shape, help for every flag, settings from config, exit codes."""

from __future__ import annotations

import inspect
import io
import json
from pathlib import Path

import pytest
from invoke import Config, Context

import tasks as root_tasks
from backup import errors, render
from backup.transfer import ImportRefused
from backup import tasks as backup_tasks
from maintenance.program import build_namespace
from backup.settings import DEFAULT_INCLUDE, config_defaults

BACKUP_TASKS = {
    "clean",
    "compare",
    "copy",
    "create",
    "export",
    "import",
    "info",
    "init",
    "key-add",
    "key-list",
    "key-passwd",
    "key-remove",
    "list",
    "report",
    "restore",
    "size",
    "unlock",
    "verify",
}


def _parameters(task) -> list[str]:
    return [name for name in inspect.signature(task.body).parameters if name != "c"]


def test_backup_collection_holds_every_task() -> None:
    assert set(backup_tasks.namespace.task_names) == BACKUP_TASKS


def test_root_namespace_and_program_namespace_offer_the_same_tasks() -> None:
    expected = {f"backup.{name}" for name in BACKUP_TASKS} | {"sample", "selftest", "maintenance.daily", "maintenance.weekly", "maintenance.monthly"}
    assert set(build_namespace().task_names) == expected
    # The repository's own tasks.py adds the benchmark, which lives only in a checkout.
    assert set(root_tasks.namespace.task_names) == expected | {"bench"}


@pytest.mark.parametrize("name", sorted(BACKUP_TASKS))
def test_every_backup_task_takes_root_and_json(name: str) -> None:
    parameters = _parameters(backup_tasks.namespace[name])
    assert "root" in parameters and "json" in parameters


@pytest.mark.parametrize("name", sorted(BACKUP_TASKS) + ["sample"])
def test_every_flag_has_help_and_the_docstring_fits_one_list_line(name: str) -> None:
    task = backup_tasks.sample if name == "sample" else backup_tasks.namespace[name]
    documented = {argument.name for argument in task.get_arguments() if argument.help}
    flags = {argument.name for argument in task.get_arguments()}
    assert documented == flags, flags - documented
    first_line = task.__doc__.strip().splitlines()[0]
    assert len(first_line) <= 62, first_line  # `invoke --list` wraps longer lines on 80 columns


def test_issue_flags_are_all_present() -> None:
    expected = {
        "create": {"tag", "note", "verify", "compress"},
        "restore": {"snapshot", "target", "only", "verify", "force", "dry-run"},
        "list": {"tag", "since"},
        "verify": {"snapshot", "read-data"},
        "compare": {"snapshot", "other", "warn-loss"},
        "info": {"snapshot"},
        "clean": {"keep", "dry-run"},
        "export": {"snapshot", "out", "format"},
        "unlock": {"all", "force"},
        "init": {"encrypt"},
        "key-remove": {"key-id"},
        "copy": {"snapshot", "to", "encrypt"},
        "import": {"archive"},
    }
    for name, flags in expected.items():
        names = {flag for argument in backup_tasks.namespace[name].get_arguments() for flag in argument.names}
        assert flags <= names, (name, flags - names)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.WrongPassphrase("x"), 4),
        (errors.RepositoryLocked("x"), 3),
        (errors.ConfigError("x"), 2),
        (errors.UsageError("x"), 2),
        (errors.SnapshotNotFound("x"), 2),
        (errors.AmbiguousSnapshot("x"), 2),
        (errors.RestoreRefused("x"), 2),
        (errors.RepositoryNotFound("x"), 2),
        (errors.VerificationFailed("x"), 1),
        (errors.CorruptChunk("x"), 1),
        (errors.StorageError("x"), 1),
        (errors.NoSpace("x"), 1),
        (errors.SourceError("x"), 1),
        (errors.AuthenticationFailed("x"), 1),
        (ImportRefused("x"), 2),
        (errors.LockLost("x"), 1),
        (errors.BackupError("x"), 1),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_exit_code_for_each_error_class(error: errors.BackupError, code: int) -> None:
    assert backup_tasks.exit_code_for(error) == code


# -- settings from Invoke config ------------------------------------------------------


def _context(project_files: dict[str, str], tmp_path: Path) -> Context:
    for name, text in project_files.items():
        (tmp_path / name).write_text(text)
    config = Config(defaults={"backup": config_defaults()}, lazy=True)
    config.load_shell_env()
    return Context(config=config)


def test_settings_read_the_root_projects_invoke_yaml(tmp_path: Path) -> None:
    context = _context({"invoke.yaml": "backup:\n  keep_last: 4\n  repository: /srv/backups\n  retention:\n    daily: 7\n"}, tmp_path)
    settings = backup_tasks.settings_for(context, str(tmp_path))
    assert settings.root == tmp_path.resolve()
    assert settings.keep_last == 4
    assert settings.repository == Path("/srv/backups")
    assert settings.include == DEFAULT_INCLUDE


def test_settings_flag_overrides_beat_the_file(tmp_path: Path) -> None:
    context = _context({"invoke.yaml": "backup:\n  compression_level: 9\n"}, tmp_path)
    assert backup_tasks.settings_for(context, str(tmp_path), compression_level=0).compression_level == 0


def test_settings_relative_root_key_is_taken_from_the_project(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    context = _context({"invoke.yaml": "backup:\n  root: data\n"}, tmp_path)
    context.config.set_project_location(str(tmp_path))
    context.config.load_project()
    settings = backup_tasks.settings_for(context, None)
    assert settings.root == (tmp_path / "data").resolve()
    assert settings.repository == (tmp_path / "data" / ".backups").resolve()


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("backup:\n  keep_lats: 3\n", ("backup.keep_lats", "known settings are")),
        ("backup:\n  chunk_size: 5000\n", ("backup.chunk_size = 5000", "power of two")),
        ("backup: 5\n", ("must be a mapping",)),
    ],
    ids=["unknown-key", "bad-value", "not-a-mapping"],
)
def test_settings_errors_name_key_value_and_allowed(tmp_path: Path, text: str, fragments: tuple[str, ...]) -> None:
    context = _context({"invoke.yaml": text}, tmp_path)
    with pytest.raises(errors.ConfigError) as caught:
        backup_tasks.settings_for(context, str(tmp_path))
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_environment_string_overrides_are_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOKE_BACKUP_INCLUDE", "a.db, b/*.sqlite")
    monkeypatch.setenv("INVOKE_BACKUP_KEEP_LAST", "3")
    context = _context({}, tmp_path)
    settings = backup_tasks.settings_for(context, str(tmp_path))
    assert settings.include == ("a.db", "b/*.sqlite")
    assert settings.keep_last == 3


def test_root_that_is_not_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(errors.UsageError):
        backup_tasks.settings_for(_context({}, tmp_path), str(tmp_path / "missing"))


# -- rendering ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "text"),
    [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 * 1024**3, "5.0 GiB"), (-2048, "-2.0 KiB")],
)
def test_human_size(size: int | None, text: str) -> None:
    assert render.human_size(size) == text


def test_signed_size_and_ratio() -> None:
    assert render.signed_size(2048) == "+2.0 KiB"
    assert render.signed_size(0) == "0 B"
    assert render.ratio(None) == "-"
    assert render.ratio(2.345) == "2.35x"
    assert render.ratio(40071.6) == "40,072x"


def test_json_document_carries_schema_version_and_plain_values(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    document = json.loads(render.json_document("backup.x", {"when": datetime(2025, 1, 16, 2, tzinfo=timezone.utc), "where": tmp_path, "ids": ("a", "b")}))
    assert document == {"schema_version": 1, "command": "backup.x", "ok": True, "when": "2025-01-16T02:00:00Z", "where": str(tmp_path), "ids": ["a", "b"]}


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_line_is_silent_for_short_work_then_shows_bytes_rate_and_eta() -> None:
    stream, clock = io.StringIO(), _Clock()
    line = render.ProgressLine(stream, after=2.0, clock=clock)
    line("backup", 0, 100 * 1024**2)
    clock.now += 1.0
    line("backup", 10 * 1024**2, 100 * 1024**2)
    assert stream.getvalue() == ""
    clock.now += 3.0
    line("backup", 40 * 1024**2, 100 * 1024**2)
    shown = stream.getvalue()
    assert "backup: 40.0 MiB of 100.0 MiB (40%)" in shown and "10.0 MiB/s" in shown and "ETA 6.0 s" in shown
    line.close()
    assert stream.getvalue().endswith("\r\x1b[K")


def test_progress_line_that_never_drew_leaves_no_trace() -> None:
    stream = io.StringIO()
    line = render.ProgressLine(stream, after=2.0, clock=_Clock())
    line("verify", 5, 10)
    line.close()
    assert stream.getvalue() == ""
