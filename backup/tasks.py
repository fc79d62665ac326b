"""The ``backup`` Invoke collection: every backup operation as a command.

Owns: turning flags and Invoke configuration (``backup:`` in the project's
``invoke.yaml``, ``INVOKE_BACKUP_*`` variables) into one validated ``Settings``,
calling exactly one library function per task, rendering its report (tables, or
one JSON document with ``--json``), progress on a terminal, the restore
confirmation, and mapping the exception tree to exit codes:

    0 success   1 an operation or check failed   2 bad usage, bad config, refused
    3 locked    4 wrong passphrase

Passphrases never come from flags: from the environment (``DBKEEP_PASSWORD``,
``DBKEEP_NEW_PASSWORD``, ``DBKEEP_TARGET_PASSWORD``, each also ``_FILE`` and
``_COMMAND``), and for a new passphrase, when none is set, asked twice on a terminal.

Only ``BackupError`` is caught: anything else is a bug and keeps its traceback.
Holds no backup logic; ``maintenance`` and the root ``tasks.py`` build on it.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from invoke import Collection, Context, Exit, task

from . import crypto, progress, render
from .errors import BackupError, ConfigError, RepositoryLocked, RepositoryNotFound, RestoreRefused, UsageError, WrongPassphrase
from .export import FORMATS, export_snapshot
from .inspection import DEFAULT_LOSS_THRESHOLD, compare_snapshot, list_snapshots, repository_size
from .keys import add_key, change_passphrase, init_repository, list_keys, new_passphrase_from_environment, remove_key
from .prune import PruneOptions
from .retention import RetentionPolicy
from .operations import RestorePlan, clean_old_backups, create_backup, find_snapshot, restore_backup, verify_backup
from .sample import DEFAULT_SIZE, create_sample_project
from .settings import EXTERNAL_SECTIONS, Settings, config_defaults, project_section, settings_from_mapping, to_plain
from .transfer import copy_snapshots, import_archive
from .unlocking import unlock_repository
from .report_task import report

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_WRONG_PASSPHRASE = 4
#: Seconds of work before a progress line appears (tests set it to 0).
PROGRESS_AFTER_VARIABLE = "DBKEEP_PROGRESS_AFTER"

ROOT_HELP = "project directory to work on (default: where tasks.py is, else the current directory); its invoke.yaml is read"
JSON_HELP = "print one JSON document (with schema_version) on stdout instead of tables"
NEW_PASSPHRASE_ROOT_HELP = ROOT_HELP + "; the new passphrase comes from DBKEEP_NEW_PASSWORD (_FILE, _COMMAND) or is asked for twice"
SNAPSHOT_HELP = "snapshot id, unique prefix, 'latest', or a point in time (2025-01-16T10:00, 2025-01-16, yesterday, 3h)"


# -- errors and output ----------------------------------------------------------------


def exit_code_for(error: BackupError) -> int:
    """The exit code of an expected failure: 4 wrong passphrase, 3 locked, 2 usage/config/refused, else 1."""
    if isinstance(error, WrongPassphrase):
        return EXIT_WRONG_PASSPHRASE
    if isinstance(error, RepositoryLocked):
        return EXIT_LOCKED
    if isinstance(error, (ConfigError, UsageError, RestoreRefused, RepositoryNotFound)):
        return EXIT_USAGE
    return EXIT_FAILED


@contextlib.contextmanager
def _reporting_errors(command: str, json_output: bool) -> Iterator[None]:
    """Turn a BackupError into one line on stderr (and the JSON error document) plus its exit code."""
    try:
        yield
    except BackupError as error:
        code = exit_code_for(error)
        if json_output:
            _out(render.json_error(command, error, code))
        raise Exit(f"error: {render.one_line(str(error))}", code) from None


def _out(text: str) -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # The reader (head, less) went away: stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise Exit(code=EXIT_FAILED) from None


def _note(text: str) -> None:
    print(render.one_line(text), file=sys.stderr, flush=True)


def _emit(command: str, json_output: bool, table: Callable[[], str], document: Callable[[], dict[str, Any]], *, ok: bool = True) -> None:
    _out(render.json_document(command, document(), ok=ok) if json_output else table())


@contextlib.contextmanager
def _progress(json_output: bool) -> Iterator[None]:
    """A progress line on stderr, only on a terminal and never with --json."""
    if json_output or not sys.stderr.isatty():
        yield
        return
    try:
        after = float(os.environ.get(PROGRESS_AFTER_VARIABLE, "2"))
    except ValueError:
        after = 2.0
    line = render.ProgressLine(sys.stderr, after=after)
    try:
        with progress.reporting(line):
            yield
    finally:
        line.close()


def _interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _ask(question: str, stream) -> bool:
    stream.write(f"{question} [y/N] ")
    stream.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _ask_new_passphrase(what: str) -> str | None:
    """A new passphrase typed twice on the terminal (not echoed); None without a terminal."""
    if not _interactive():
        return None
    # The prompt goes to the terminal itself (stderr only when there is none), never to stdout.
    first = getpass.getpass(f"{what}: ")
    if first and getpass.getpass(f"{what} again: ") != first:
        raise UsageError("the two passphrases typed differ; nothing was changed")
    return first


def _new_repository_passphrase() -> str | None:
    return crypto.passphrase_from_environment() or _ask_new_passphrase("passphrase for the new repository")


def _new_key_passphrase() -> str | None:
    return new_passphrase_from_environment() or _ask_new_passphrase("new passphrase")


def _snapshot_specs(values: Sequence[str] | None) -> list[str]:
    """``--snapshot`` values, each possibly comma-separated; ``latest`` when none is given."""
    specs = [part.strip() for value in values or () for part in value.split(",") if part.strip()]
    return specs or ["latest"]


# -- settings -------------------------------------------------------------------------


def settings_for(c: Context, root: str | None, **overrides: Any) -> Settings:
    """Settings from Invoke's config for the project at ``root``, with flag ``overrides``.

    Raises UsageError when ``root`` is no directory and ConfigError naming the key,
    the value and what is allowed when the configuration is wrong.
    """
    directory, section = project_section(c.config, root)
    values = dict(section)
    if root is not None:
        values["root"] = str(directory)
    elif isinstance(values.get("root"), str) and values["root"] and not os.path.isabs(values["root"]):
        values["root"] = str(directory / values["root"])
    values.update({key: value for key, value in overrides.items() if value is not None})
    return settings_from_mapping(values, root=directory, ignore=frozenset(EXTERNAL_SECTIONS))


def _positive_int(flag: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise UsageError(f"{flag} {value!r} is not allowed: expected a whole number of 1 or more")
    return number


def _percentage(flag: str, value: str | None, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number <= 100:
        raise UsageError(f"{flag} {value!r} is not allowed: expected a percentage from 0 to 100")
    return number / 100


# -- tasks ----------------------------------------------------------------------------


@task(
    auto_shortflags=False,
    help={
        "tag": "why this snapshot exists (manual, daily, migration, ...); default: manual",
        "note": "free text stored with the snapshot",
        "verify": "re-read every byte of the new snapshot after writing it (like verify --read-data)",
        "compress": "compress new chunks at backup.compression_level (default); --no-compress stores them raw",
        "full": "read every database again, even those whose file is unchanged since the last backup",
        "root": ROOT_HELP,
        "json": JSON_HELP,
    },
)
def create(c, tag="manual", note="", verify=False, compress=True, full=False, root=None, json=False):
    """Back up the project's databases as a snapshot."""
    with _reporting_errors("backup.create", json):
        settings = settings_for(c, root, compression_level=None if compress else 0, reuse_unchanged=False if full else None)
        with _progress(json):
            report = create_backup(settings, tag=tag, note=note, verify=verify)
        for warning in report.warnings:
            _note(f"note: {warning}")
        ok = report.verification is None or report.verification.ok
        _emit("backup.create", json, lambda: render.backup_table(report), lambda: render.backup_json(report), ok=ok)
        if not ok:
            problems = len(report.verification.problems)
            raise Exit(f"error: snapshot {report.snapshot.id} failed verification with {problems} problems; run backup.verify --read-data", EXIT_FAILED)


@task(
    auto_shortflags=False,
    iterable=["only"],
    help={
        "snapshot": SNAPSHOT_HELP,
        "target": "restore into this directory instead of over the project's live files",
        "only": "PATTERN: restore only files matching this gitignore-style pattern; repeat for more",
        "verify": "after writing, read every restored file back and check its SHA-256 and integrity",
        "force": "do not ask before overwriting live files (required without a terminal)",
        "dry_run": "show the plan and change nothing",
        "root": ROOT_HELP,
        "json": JSON_HELP,
    },
)
def restore(c, snapshot, target=None, only=None, verify=False, force=False, dry_run=False, root=None, json=False):
    """Restore: verify, safety snapshot, then write."""
    plan_stream = sys.stderr if json else sys.stdout
    shown: list[RestorePlan] = []

    def confirm(plan: RestorePlan) -> bool:
        shown.append(plan)
        if not json or _interactive():
            print(render.restore_plan_table(plan), file=plan_stream, flush=True)
        if not _interactive():
            return False
        overwritten = sum(1 for item in plan.items if item.overwrites)
        return _ask(f"Overwrite {overwritten} live files with snapshot {plan.snapshot.id}?", plan_stream)

    with _reporting_errors("backup.restore", json):
        settings = settings_for(c, root)
        destination = Path(target) if target is not None else None
        try:
            with _progress(json):
                report = restore_backup(settings, snapshot, target=destination, only=tuple(only or ()), force=force, confirm=confirm, dry_run=dry_run, verify=verify)
        except RestoreRefused as error:
            if _interactive():
                raise
            raise RestoreRefused("no terminal to confirm overwriting live files; nothing was changed (run again with --force)") from error
        for warning in report.warnings:
            _note(f"note: {warning}")
        ok = all(render.restored_ok(restored) for restored in report.files)

        def table() -> str:
            plan = "" if shown else render.restore_plan_table(report.plan)
            if report.dry_run:
                return plan + "\n\ndry run: nothing was changed"
            return (plan + "\n\n" if plan else "") + render.restore_table(report)

        _emit("backup.restore", json, table, lambda: render.restore_json(report), ok=ok)
        if not ok:
            bad = ", ".join(restored.path for restored in report.files if not render.restored_ok(restored))
            undo = f"; roll back with backup.restore {report.safety_snapshot.id} --force" if report.safety_snapshot else ""
            raise Exit(f"error: restored files failed the read-back check: {bad}{undo}", EXIT_FAILED)


@task(
    name="list",
    auto_shortflags=False,
    help={
        "tag": "only snapshots with this tag",
        "since": "only snapshots taken at or after this point in time (2025-01-16, 2025-01-16T10:00, yesterday, 3h)",
        "root": ROOT_HELP,
        "json": JSON_HELP,
    },
)
def list_(c, tag=None, since=None, root=None, json=False):
    """List snapshots: time, tag, git commit, size, new bytes."""
    with _reporting_errors("backup.list", json):
        listing = list_snapshots(settings_for(c, root), tag=tag, since=since)
        _emit("backup.list", json, lambda: render.listing_table(listing), lambda: render.listing_json(listing))
        if listing.damaged and not json:
            _note(f"warning: {len(listing.damaged)} snapshot manifests are damaged; run backup.verify")


@task(
    auto_shortflags=False,
    help={
        "snapshot": "check only this snapshot (" + SNAPSHOT_HELP + "); default: all",
        "read_data": "re-read and re-hash every byte, not only the structure",
        "root": ROOT_HELP,
        "json": JSON_HELP,
    },
)
def verify(c, snapshot=None, read_data=False, root=None, json=False):
    """Check snapshots; exit 1 on any problem."""
    with _reporting_errors("backup.verify", json):
        settings = settings_for(c, root)
        with _progress(json):
            report = verify_backup(settings, snapshot, read_data=read_data)
        _emit("backup.verify", json, lambda: render.verify_table(report), lambda: render.verify_json(report), ok=report.ok)
        if not report.ok:
            raise Exit(
                f"error: verification found {len(report.problems)} problems affecting {len(report.affected_snapshots)} snapshots",
                EXIT_FAILED,
            )


@task(
    auto_shortflags=False,
    help={
        "snapshot": SNAPSHOT_HELP,
        "other": "compare with this snapshot instead of the live project",
        "warn_loss": f"warn when a table lost more than this percentage of its rows (default {DEFAULT_LOSS_THRESHOLD:.0%})",
        "root": ROOT_HELP,
        "json": JSON_HELP,
    },
)
def compare(c, snapshot, other=None, warn_loss=None, root=None, json=False):
    """Compare a snapshot with live files or another."""
    with _reporting_errors("backup.compare", json):
        threshold = _percentage("--warn-loss", warn_loss, DEFAULT_LOSS_THRESHOLD)
        comparison = compare_snapshot(settings_for(c, root), snapshot, other, loss_threshold=threshold)
        _emit("backup.compare", json, lambda: render.comparison_table(comparison), lambda: render.comparison_json(comparison))


@task(auto_shortflags=False, help={"snapshot": SNAPSHOT_HELP, "root": ROOT_HELP, "json": JSON_HELP})
def info(c, snapshot, root=None, json=False):
    """Show everything a snapshot's manifest records."""
    with _reporting_errors("backup.info", json):
        found = find_snapshot(settings_for(c, root), snapshot)
        _emit("backup.info", json, lambda: render.info_table(found), lambda: render.info_json(found))


@task(auto_shortflags=False, help={"root": ROOT_HELP, "json": JSON_HELP})
def size(c, root=None, json=False):
    """Show storage use, dedup and compression ratios."""
    with _reporting_errors("backup.size", json):
        report = repository_size(settings_for(c, root))
        _emit("backup.size", json, lambda: render.size_table(report), lambda: render.size_json(report))


@task(
    auto_shortflags=False,
    help={
        "keep": "keep the newest N snapshots (overrides backup.retention.keep_last; default 10 without a policy)",
        "keep_hourly": "keep the newest snapshot of each of the last N hours",
        "keep_daily": "keep the newest snapshot of each of the last N days",
        "keep_weekly": "keep the newest snapshot of each of the last N weeks",
        "keep_monthly": "keep the newest snapshot of each of the last N months",
        "keep_yearly": "keep the newest snapshot of each of the last N years",
        "keep_within": "keep every snapshot within this duration of the newest, e.g. 7d, 2w3d, 1y",
        "keep_tag": "keep every snapshot with this tag (comma-separated for several)",
        "dry_run": "show each snapshot with the rule that keeps it, or 'remove', and change nothing",
        "root": ROOT_HELP,
        "json": JSON_HELP,
    },
)
def clean(
    c,
    keep=None,
    keep_hourly=None,
    keep_daily=None,
    keep_weekly=None,
    keep_monthly=None,
    keep_yearly=None,
    keep_within=None,
    keep_tag=None,
    dry_run=False,
    root=None,
    json=False,
):
    """Apply retention: remove snapshots, prune data."""
    with _reporting_errors("backup.clean", json):
        settings = settings_for(c, root)
        section = to_plain(c.config.get("backup", {}))
        flags = {
            "keep_hourly": keep_hourly,
            "keep_daily": keep_daily,
            "keep_weekly": keep_weekly,
            "keep_monthly": keep_monthly,
            "keep_yearly": keep_yearly,
            "keep_within": keep_within,
            "keep_tags": keep_tag,
        }
        configured = section.get("retention") or {}
        policy = None
        if configured or any(value is not None for value in flags.values()):
            policy = RetentionPolicy.from_mapping(configured).with_overrides(**flags)
        prune = PruneOptions.from_maintenance_section(section.get("maintenance") or {})
        report = clean_old_backups(settings, keep_last=_positive_int("--keep", keep), policy=policy, prune=prune, dry_run=dry_run)
        for warning in report.warnings:
            _note(f"note: {warning}")
        _emit("backup.clean", json, lambda: render.clean_table(report), lambda: render.clean_json(report))


@task(
    name="export",
    auto_shortflags=False,
    help={
        "snapshot": SNAPSHOT_HELP,
        "out": "archive file (or directory, with --format dir) to create; must not exist",
        "format": f"one of {', '.join(FORMATS)} (default: from OUT's name, else tar.gz)",
        "root": ROOT_HELP,
        "json": JSON_HELP,
    },
)
def export_(c, snapshot, out, format_=None, root=None, json=False):
    """Export a snapshot as an archive with SHA256SUMS."""
    with _reporting_errors("backup.export", json):
        settings = settings_for(c, root)
        with _progress(json):
            report = export_snapshot(settings, snapshot, Path(out), format=format_)
        _emit("backup.export", json, lambda: render.export_table(report), lambda: render.export_json(report))


@task(
    auto_shortflags=False,
    help={
        "all": "also remove locks of processes that may still run (asks first, or --force)",
        "force": "with --all, do not ask",
        "root": ROOT_HELP,
        "json": JSON_HELP,
    },
)
def unlock(c, all_=False, force=False, root=None, json=False):
    """Remove lock records left by processes that died."""

    def confirm(descriptions: Sequence[str]) -> bool:
        stream = sys.stderr if json else sys.stdout
        for description in descriptions:
            print(f"live: {description}", file=stream)
        if not _interactive():
            return False
        return _ask(f"Remove {len(descriptions)} locks that may still be in use?", stream)

    with _reporting_errors("backup.unlock", json):
        report = unlock_repository(settings_for(c, root), include_live=all_, force=force, confirm=confirm)
        _emit("backup.unlock", json, lambda: render.unlock_table(report), lambda: render.jsonable(report))


@task(
    auto_shortflags=False,
    help={
        "path": "where to create the sample project (default: sample)",
        "size_mb": "approximate size of sample/app.db in MiB (default 5)",
        "json": JSON_HELP,
    },
)
def sample(c, path="sample", size_mb=None, json=False):
    """Create a sample project to try dbkeep on."""
    with _reporting_errors("sample", json):
        megabytes = _positive_int("--size-mb", size_mb)
        report = create_sample_project(Path(path), size=megabytes * 1024 * 1024 if megabytes else DEFAULT_SIZE)
        _emit("sample", json, lambda: render.sample_table(report), lambda: render.jsonable(report))


@task(
    auto_shortflags=False,
    help={
        "encrypt": "encrypt the repository (AES-256-GCM); the passphrase comes from DBKEEP_PASSWORD, DBKEEP_PASSWORD_FILE or "
        "DBKEEP_PASSWORD_COMMAND, or is asked for twice on a terminal; also implied by backup.encryption: aes-256-gcm",
        "root": ROOT_HELP,
        "json": JSON_HELP,
    },
)
def init(c, encrypt=False, root=None, json=False):
    """Create the repository, encrypted with --encrypt."""
    with _reporting_errors("backup.init", json):
        settings = settings_for(c, root, encryption=crypto.CIPHER if encrypt else None)
        passphrase = _new_repository_passphrase if settings.encryption != "none" else None
        repository = init_repository(settings, passphrase=passphrase)
        _emit("backup.init", json, lambda: render.init_table(repository), lambda: render.init_json(repository))


@task(
    name="key-add",
    auto_shortflags=False,
    help={
        "root": NEW_PASSPHRASE_ROOT_HELP,
        "json": JSON_HELP,
    },
)
def key_add(c, root=None, json=False):
    """Add a passphrase to an encrypted repository."""
    with _reporting_errors("backup.key-add", json):
        added = add_key(settings_for(c, root), _new_key_passphrase)
        _emit("backup.key-add", json, lambda: render.key_table([added], f"added key {added.id}"), lambda: {"key": render.jsonable(added)})


@task(name="key-list", auto_shortflags=False, help={"root": ROOT_HELP, "json": JSON_HELP})
def key_list(c, root=None, json=False):
    """List the passphrase keys of an encrypted repository."""
    with _reporting_errors("backup.key-list", json):
        found = list_keys(settings_for(c, root))
        _emit("backup.key-list", json, lambda: render.key_table(found), lambda: {"keys": render.jsonable(found)})


@task(
    name="key-remove",
    auto_shortflags=False,
    help={"key_id": "id (or unique prefix) of the key to remove, from backup.key-list", "root": ROOT_HELP, "json": JSON_HELP},
)
def key_remove(c, key_id, root=None, json=False):
    """Remove another passphrase's key."""
    with _reporting_errors("backup.key-remove", json):
        removed = remove_key(settings_for(c, root), key_id)
        _emit("backup.key-remove", json, lambda: f"removed key {removed}", lambda: {"removed": removed})


@task(
    name="key-passwd",
    auto_shortflags=False,
    help={
        "root": NEW_PASSPHRASE_ROOT_HELP,
        "json": JSON_HELP,
    },
)
def key_passwd(c, root=None, json=False):
    """Change the passphrase that opens the repository."""
    with _reporting_errors("backup.key-passwd", json):
        changed = change_passphrase(settings_for(c, root), _new_key_passphrase)
        _emit("backup.key-passwd", json, lambda: render.key_table([changed], f"passphrase changed: new key {changed.id}"), lambda: {"key": render.jsonable(changed)})


@task(
    name="copy",
    auto_shortflags=False,
    iterable=["snapshot"],
    help={
        "snapshot": SNAPSHOT_HELP + "; repeat or separate with commas for several (default: latest)",
        "to": "the other repository: a directory or s3://bucket/prefix; created with this one's chunking if absent",
        "encrypt": "create the target encrypted if it does not exist yet "
        "(passphrase from DBKEEP_TARGET_PASSWORD, _FILE or _COMMAND, else the source's DBKEEP_PASSWORD...)",
        "root": ROOT_HELP,
        "json": JSON_HELP,
    },
)
def copy_(c, snapshot=None, to=None, encrypt=False, root=None, json=False):
    """Copy snapshots to another repository (off-site)."""
    with _reporting_errors("backup.copy", json):
        if not to:
            raise UsageError("backup.copy needs --to LOCATION: a directory or s3://bucket/prefix")
        settings = settings_for(c, root)
        target = to if to.startswith("s3://") else Path(os.path.abspath(to))
        with _progress(json):
            report = copy_snapshots(settings, _snapshot_specs(snapshot), target, encrypt_target=encrypt)
        for warning in report.warnings:
            _note(f"note: {warning}")
        _emit("backup.copy", json, lambda: render.copy_table(report), lambda: render.jsonable(report))


@task(
    name="import",
    auto_shortflags=False,
    help={
        "archive": "an archive written by backup.export (.tar.gz, .tar.zst, .tar) or its unpacked folder",
        "root": ROOT_HELP,
        "json": JSON_HELP,
    },
)
def import_(c, archive, root=None, json=False):
    """Import an exported archive as a new snapshot."""
    with _reporting_errors("backup.import", json):
        settings = settings_for(c, root)
        with _progress(json):
            report = import_archive(settings, Path(archive))
        for warning in report.backup.warnings:
            _note(f"note: {warning}")
        _emit("backup.import", json, lambda: render.import_table(report), lambda: render.import_json(report))


def build_collection() -> Collection:
    """The ``backup`` collection with its configuration defaults."""
    collection = Collection("backup")
    for each in (init, create, restore, list_, verify, compare, info, size, clean, export_, unlock, key_add, key_list, key_remove, key_passwd, copy_, import_, report):
        collection.add_task(each)
    collection.configure({"backup": config_defaults()})
    return collection


#: The collection other namespaces add: ``Collection().add_collection(tasks.namespace)``.
namespace = build_collection()
