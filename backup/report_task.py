"""The ``backup.report`` Invoke task: the repository's health as one HTML file.

Owns: turning the flags into one ``build_report`` call, writing the page with
``publish_html``, one line (or one JSON document) on stdout, opening the page on
request, and mapping the exception tree to exit codes (0 written, 1 failed,
2 usage/config/no repository, 3 locked). Holds no report logic.
"""

from __future__ import annotations

import json as json_module
import os
import sys
import webbrowser
from datetime import datetime, timezone
from pathlib import Path

from invoke import Exit, task

from .errors import BackupError, ConfigError, RepositoryLocked, RepositoryNotFound, RestoreRefused, UsageError
from .report import HealthReport, build_report, publish_html, render_html, report_json
from .report_html import ago
from .ledger import load_ledger
from .operations import list_backups, open_repository
from .retention import PolicyRefused, RetentionPolicy, apply_policy
from .settings import Settings, load_settings, to_plain

SCHEMA_VERSION = 1


def _exit_code(error: BackupError) -> int:
    if isinstance(error, RepositoryLocked):
        return 3
    if isinstance(error, (ConfigError, UsageError, RestoreRefused, RepositoryNotFound)):
        return 2
    return 1


def _settings(c, root: str | None) -> Settings:
    """Settings of the project at ``root`` (default: where tasks.py was found, else here)."""
    if root is not None:
        directory = Path(os.path.abspath(root))
    else:
        found = getattr(c.config, "_project_prefix", None)
        directory = Path(os.path.abspath(found)) if found else Path.cwd()
    if not directory.is_dir():
        raise UsageError(f"project root {directory} is not a directory")
    return load_settings(directory)


def maintenance_inputs(settings: Settings, section: dict, *, now: datetime):
    """The verification ledger, and the plan ``backup.clean`` would follow now (None if refused)."""
    ledger = load_ledger(open_repository(settings).storage)
    configured = section.get("retention") or {}
    policy = RetentionPolicy.from_mapping(configured) if configured else RetentionPolicy(keep_last=settings.keep_last)
    try:
        plan = apply_policy(list_backups(settings).snapshots, policy, now=now, verification=ledger.outcomes())
    except PolicyRefused:
        plan = None
    return ledger, plan, policy.describe()


def summary_line(report: HealthReport, path: Path) -> str:
    """``wrote report.html: healthy; 7 snapshots of 3 databases; ...`` in one line."""
    points = report.restore_points
    missing = [name for name, point in points.items() if point is None]
    newest = [point for point in points.values() if point is not None]
    parts = [f"wrote {path}: {report.status}", f"{len(report.snapshots)} snapshots of {len(report.databases)} databases and files"]
    if newest:
        stalest = sorted(newest, key=lambda point: point.time)[:3]
        listed = ", ".join(f"{point.path} {ago(point.time, report.generated)}" for point in stalest)
        more = f" and {len(newest) - len(stalest)} more" if len(newest) > len(stalest) else ""
        parts.append(f"newest verified restore point: {listed}{more}")
    if missing:
        parts.append(f"no verified restore point for {', '.join(missing)}")
    if report.failures:
        parts.append(f"{len(report.failures)} failed verifications")
    if report.anomalies:
        parts.append(f"{len(report.anomalies)} warnings")
    return "; ".join(parts)


@task(
    auto_shortflags=False,
    help={
        "out": "where to write the HTML file (default: report.html in the current directory)",
        "open": "open the written report in the default web browser",
        "read_data": "re-read every byte of every snapshot while building the report (slower); default: check structure",
        "root": "project directory to work on (default: where tasks.py is, else the current directory); its invoke.yaml is read",
        "json": "print one JSON document (with schema_version) on stdout instead of a line",
    },
)
def report(c, out="report.html", open_=False, root=None, json=False, read_data=False):
    """Write the repository's health as one HTML page.

    Snapshots over time, storage growth, sizes and row counts per database,
    warnings, failed verifications and the newest verified restore point.
    """
    try:
        from .tasks import settings_for  # here: backup.tasks imports this module

        now = datetime.now(timezone.utc)
        settings = settings_for(c, root)
        ledger, plan, policy = maintenance_inputs(settings, to_plain(c.config.get("backup", {})), now=now)
        health = build_report(settings, now=now, read_data=read_data, ledger=ledger, retention_plan=plan, retention_policy=policy)
        path = publish_html(render_html(health), Path(out))
    except BackupError as error:
        code = _exit_code(error)
        message = " ".join(str(error).split())
        if json:
            document = {"schema_version": SCHEMA_VERSION, "command": "backup.report", "ok": False, "error": {"type": type(error).__name__, "message": message, "exit_code": code}}
            print(json_module.dumps(document, indent=2, ensure_ascii=False), flush=True)
        raise Exit(f"error: {message}", code) from None
    if json:
        document = {"schema_version": SCHEMA_VERSION, "command": "backup.report", "ok": True, "path": str(path), **report_json(health)}
        print(json_module.dumps(document, indent=2, ensure_ascii=False), flush=True)
    else:
        print(summary_line(health, path), flush=True)
    if open_ and not webbrowser.open(path.as_uri()):
        print(f"note: no web browser could be started; open {path} yourself", file=sys.stderr, flush=True)
