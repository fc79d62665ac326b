"""Routine configuration: the ``backup.maintenance``, ``backup.notify`` and ``backup.retention`` sections.

Owns: validating those sections into records (every problem reported at once,
each naming its key) and loading them the way the command line sees them.
The core ``Settings`` come from ``backup.settings``; this module only adds the
sections that settings reserves for the routines.

    backup:
      retention: {keep_daily: 7, keep_weekly: 5, keep_monthly: 12, timezone: Europe/Berlin}
      maintenance: {verify_weeks: 4, alert_after_hours: 36, exports: .backup-exports,
                    export_max_age_days: 30, repack_below: 0.5, grace_minutes: 60,
                    offsite: s3://acme-backups/shop, offsite_encrypt: true}
      notify:
        webhook: https://hc-ping.com/<uuid>        # start / success / fail pings
        command: "logger -t dbkeep"                # gets the JSON report on stdin
        email: {host: smtp.example.org, port: 587, sender: backup@example.org,
                to: [ops@example.org], starttls: true, username: backup,
                password_env: DBKEEP_SMTP_PASSWORD, on: [failure]}
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from backup.errors import ConfigError
from backup.prune import PruneOptions
from backup.retention import RetentionPolicy
from backup.settings import EXTERNAL_SECTIONS, Settings, config_defaults, parse_boolean, settings_from_mapping, to_plain

EVENTS = ("start", "success", "failure")


@dataclass(frozen=True, slots=True, kw_only=True)
class MaintenanceSettings:
    daily_tag: str = "daily"
    #: Every retained snapshot is fully re-read at least once in this many weeks.
    verify_weeks: int = 4
    #: Alert when the newest verified snapshot is older than this.
    alert_after: timedelta = timedelta(hours=36)
    #: Where exports are written (relative to the project root) and how long they stay.
    exports: str = ".backup-exports"
    export_max_age: timedelta = timedelta(days=30)
    repack_below: float = 0.5
    grace: timedelta = timedelta(minutes=60)
    #: A lock whose heartbeat is older than this, and whose owner is not provably dead, is reported.
    stale_lock_after: timedelta = timedelta(hours=1)
    log_tail_lines: int = 50
    #: A second repository (directory, relative to the project root, or s3://) that
    #: daily copies each new snapshot to; None: no off-site copy.
    offsite: str | None = None
    #: Create the off-site repository encrypted if it does not exist yet.
    offsite_encrypt: bool = False

    @property
    def prune_options(self) -> PruneOptions:
        return PruneOptions(repack_below=self.repack_below, grace=self.grace)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailSettings:
    host: str
    port: int = 25
    sender: str
    to: tuple[str, ...]
    starttls: bool = False
    username: str | None = None
    password_env: str | None = None
    on: tuple[str, ...] = ("failure",)


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifySettings:
    webhook: str | None = None
    webhook_on: tuple[str, ...] = EVENTS
    command: str | None = None
    command_on: tuple[str, ...] = EVENTS
    email: EmailSettings | None = None
    timeout: float = 10.0

    @property
    def configured(self) -> bool:
        return bool(self.webhook or self.command or self.email)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutineConfig:
    settings: Settings
    retention: RetentionPolicy
    maintenance: MaintenanceSettings = field(default_factory=MaintenanceSettings)
    notify: NotifySettings = field(default_factory=NotifySettings)

    @property
    def reports_directory(self) -> Path:
        """Where weekly and monthly write their HTML health pages: beside the exports."""
        return self.exports_directory.parent / ".backup-reports"

    @property
    def exports_directory(self) -> Path:
        path = Path(self.maintenance.exports)
        return path if path.is_absolute() else self.settings.root / path

    @property
    def offsite_location(self) -> Path | str | None:
        """Where daily copies new snapshots: an s3:// location, or an absolute directory."""
        return _offsite_location(self.maintenance.offsite, self.settings.root)


def _offsite_location(offsite: str | None, root: Path) -> Path | str | None:
    if offsite is None or offsite.startswith("s3://"):
        return offsite
    path = Path(offsite).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else root / path))


# -- parsers -------------------------------------------------------------------------


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError("a whole number, 1 or more")
    try:
        number = int(value)
    except ValueError:
        raise ValueError("a whole number, 1 or more") from None
    if number < 1:
        raise ValueError("a whole number, 1 or more")
    return number


def _number(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"a number from {low} to {high}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"a number from {low} to {high}") from None
        if not low <= number <= high:
            raise ValueError(f"a number from {low} to {high}")
        return number

    return parse


def _span(unit: str) -> Callable[[Any], timedelta]:
    parse_number = _number(0, 1e9)

    def parse(value: Any) -> timedelta:
        return timedelta(**{unit: parse_number(value)})

    return parse


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("a non-empty string")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    items = [item.strip() for item in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(item, str) and item for item in items):
        raise ValueError("a non-empty list of strings (or one comma-separated string)")
    return tuple(items)


def _location(value: Any) -> str:
    text = _text(value)
    if text.startswith("s3://"):
        from backup.s3storage import parse_s3_location

        try:
            parse_s3_location(text)
        except ConfigError as error:
            raise ValueError(f"an s3://bucket/prefix location or a directory ({error})") from None
    return text


def _events(value: Any) -> tuple[str, ...]:
    events = _strings(value)
    if not set(events) <= set(EVENTS):
        raise ValueError(f"a list of events from {', '.join(EVENTS)}")
    return events


_MAINTENANCE: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "daily_tag": ("daily_tag", _text),
    "verify_weeks": ("verify_weeks", _positive_int),
    "alert_after_hours": ("alert_after", _span("hours")),
    "exports": ("exports", _text),
    "export_max_age_days": ("export_max_age", _span("days")),
    "repack_below": ("repack_below", _number(0, 1)),
    "grace_minutes": ("grace", _span("minutes")),
    "stale_lock_after_minutes": ("stale_lock_after", _span("minutes")),
    "log_tail_lines": ("log_tail_lines", _positive_int),
    "offsite": ("offsite", _location),
    "offsite_encrypt": ("offsite_encrypt", parse_boolean),
}

_NOTIFY: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "webhook": ("webhook", _text),
    "webhook_on": ("webhook_on", _events),
    "command": ("command", _text),
    "command_on": ("command_on", _events),
    "timeout": ("timeout", _number(0.1, 600)),
}

_EMAIL: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "host": ("host", _text),
    "port": ("port", _positive_int),
    "sender": ("sender", _text),
    "to": ("to", _strings),
    "starttls": ("starttls", parse_boolean),
    "username": ("username", _text),
    "password_env": ("password_env", _text),
    "on": ("on", _events),
}


def _parse_section(values: Any, parsers: Mapping[str, tuple[str, Callable[[Any], Any]]], prefix: str, problems: list[str]) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        problems.append(f"{prefix} must be a mapping of settings")
        return {}
    parsed: dict[str, Any] = {}
    for key, value in values.items():
        if prefix == "backup.notify" and key == "email":
            continue
        entry = parsers.get(key)
        if entry is None:
            problems.append(f"unknown setting {prefix}.{key}; known settings are: {', '.join(sorted(parsers))}")
            continue
        name, parser = entry
        try:
            parsed[name] = parser(value)
        except ValueError as error:
            problems.append(f"{prefix}.{key} = {value!r} is not allowed: expected {error}")
    return parsed


def routine_config_from_mapping(section: Mapping[str, Any], *, root: Path | None = None) -> RoutineConfig:
    """Validate the whole ``backup`` section; raises ConfigError listing every problem."""
    problems: list[str] = []
    settings = retention = None
    try:
        settings = settings_from_mapping(section, root=root, ignore=frozenset(EXTERNAL_SECTIONS))
    except ConfigError as error:
        problems.append(str(error))
    try:
        retention = RetentionPolicy.from_mapping(section.get("retention") or {})
    except ConfigError as error:
        problems.append(str(error))
    maintenance = _parse_section(section.get("maintenance"), _MAINTENANCE, "backup.maintenance", problems)
    notify_section = section.get("notify") or {}
    notify = _parse_section(notify_section, _NOTIFY, "backup.notify", problems)
    email_values = notify_section.get("email") if isinstance(notify_section, Mapping) else None
    if email_values:
        email = _parse_section(email_values, _EMAIL, "backup.notify.email", problems)
        missing = [key for key in ("host", "sender", "to") if key not in email]
        if missing:
            problems.append(f"backup.notify.email needs {', '.join(missing)}")
        else:
            notify["email"] = EmailSettings(**email)
    if settings is not None and _offsite_location(maintenance.get("offsite"), settings.root) == settings.repository:
        problems.append("backup.maintenance.offsite names the repository itself; name a second repository (another disk or s3://...)")
    if problems:
        raise ConfigError("; ".join(problems))
    assert settings is not None and retention is not None
    return RoutineConfig(settings=settings, retention=retention, maintenance=MaintenanceSettings(**maintenance), notify=NotifySettings(**notify))


def load_routine_config(root: Path | None = None, **overrides: Any) -> RoutineConfig:
    """The routine configuration of a project, read like the command line reads it.

    ``invoke.yaml`` (key ``backup``) and ``INVOKE_BACKUP_*`` variables through
    Invoke's own loader, then ``overrides`` for top-level keys.
    """
    from invoke import Config

    project_root = Path(root or Path.cwd()).resolve()
    config = Config(defaults={"backup": config_defaults()}, project_location=str(project_root), lazy=True)
    config.load_project()
    config.load_shell_env()
    section = to_plain(config.get("backup", {}) or {})
    section.update({key: value for key, value in overrides.items() if value is not None})
    return routine_config_from_mapping(section, root=project_root)


def smtp_password(email: EmailSettings) -> str | None:
    """The SMTP password from the environment variable the config names (never from the file)."""
    return os.environ.get(email.password_env) if email.password_env else None
