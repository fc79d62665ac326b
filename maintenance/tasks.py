"""Invoke tasks ``maintenance.daily|weekly|monthly`` and ``selftest``.

Owns: reading the ``backup`` configuration from Invoke, sending start / success /
failure notifications around a routine, rendering the report (a table, or JSON
with ``--json``), appending Markdown to ``$GITHUB_STEP_SUMMARY`` when it is set,
and the exit code: 0 when everything passed, 1 when a step, an alert or a
notification failed, 2 for a bad configuration. The routines themselves live in
``maintenance.routines`` and know nothing of Invoke.

The root ``tasks.py`` adds them with:

    from maintenance.tasks import ns as maintenance_ns, selftest
    ns.add_collection(maintenance_ns); ns.add_task(selftest)
"""

from __future__ import annotations

import json as jsonlib
import os
import sys
import traceback
from collections.abc import Callable

from invoke import Collection, Exit, task
from tabulate import tabulate

from backup.errors import ConfigError, UsageError
from backup.settings import config_defaults, project_section

from .config import RoutineConfig, routine_config_from_mapping
from .notify import Delivery, notify
from .report import RoutineReport
from .routines import run_daily, run_monthly, run_weekly


def _config(c) -> RoutineConfig:
    """The routine configuration of the project Invoke runs in (its invoke.yaml included)."""
    try:
        directory, section = project_section(c.config)
        root = section.get("root")
        if isinstance(root, str) and root and not os.path.isabs(root):
            section["root"] = str(directory / root)
        return routine_config_from_mapping(section or config_defaults(), root=directory)
    except (ConfigError, UsageError) as error:
        raise Exit(f"dbkeep: {error}", 2) from error


def render_table(report: RoutineReport) -> str:
    rows = [(step.name, step.status, f"{step.seconds:.1f}", step.summary) for step in report.steps]
    lines = [tabulate(rows, headers=("step", "result", "seconds", "summary"), tablefmt="simple", maxcolwidths=[None, None, None, 100])]
    lines += [f"ALERT: {alert}" for alert in report.alerts]
    lines.append(f"maintenance.{report.routine}: {'ok' if report.ok else 'FAILED'} in {report.seconds:.1f}s")
    return "\n".join(lines)


def append_step_summary(markdown: str) -> None:
    """Append to the GitHub Actions job summary when running there."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(markdown + "\n")


def run_routine(c, name: str, routine: Callable[[RoutineConfig], RoutineReport], *, json: bool) -> RoutineReport:
    config = _config(c)
    deliveries: list[Delivery] = notify(config.notify, event="start", routine=name)
    try:
        report = routine(config)
    except BaseException as error:
        # A bug, not an expected failure: still tell whoever watches, then keep the traceback.
        tail = traceback.format_exc().splitlines()[-config.maintenance.log_tail_lines :]
        notify(config.notify, event="failure", routine=name, log_tail=tail, message=f"dbkeep maintenance.{name} crashed: {type(error).__name__}: {error}")
        raise
    tail = report.log_lines()[-config.maintenance.log_tail_lines :]
    deliveries += notify(config.notify, event="success" if report.ok else "failure", routine=name, report=report, log_tail=tail)
    failed_deliveries = [delivery for delivery in deliveries if not delivery.ok]
    if json:
        document = report.to_dict()
        document["notifications"] = [{"channel": d.channel, "event": d.event, "ok": d.ok, "detail": d.detail} for d in deliveries]
        print(jsonlib.dumps(document, indent=2))
    else:
        print(render_table(report))
    append_step_summary(report.to_markdown())
    for delivery in failed_deliveries:
        print(f"dbkeep: {delivery.channel} notification ({delivery.event}) failed: {delivery.detail}", file=sys.stderr)
    if not report.ok or failed_deliveries:
        raise Exit(code=1)
    return report


@task(help={"json": "print the report as JSON instead of a table"})
def daily(c, json=False):
    """Back up, verify it, apply retention, prune."""
    run_routine(c, "daily", run_daily, json=json)


@task(help={"json": "print the report as JSON instead of a table"})
def weekly(c, json=False):
    """Re-verify a rotating share; storage and locks."""
    run_routine(c, "weekly", run_weekly, json=json)


@task(help={"json": "print the report as JSON instead of a table"})
def monthly(c, json=False):
    """Restore drill, retention review, old exports."""
    run_routine(c, "monthly", run_monthly, json=json)


@task(help={"json": "print the results as JSON instead of a table", "keep": "keep the temporary directory for inspection"})
def selftest(c, json=False, keep=False):
    """End-to-end self test in a temporary directory."""
    from .selftest import run_selftest

    results = run_selftest(keep=keep)
    if json:
        print(jsonlib.dumps(results.to_dict(), indent=2))
    else:
        print(results.render())
    append_step_summary(results.to_markdown())
    if not results.ok:
        raise Exit(code=1)


ns = Collection("maintenance")
ns.add_task(daily)
ns.add_task(weekly)
ns.add_task(monthly)
