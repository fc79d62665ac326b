"""Maintenance: the routines that keep backups trustworthy without anyone watching.

Owns: the daily, weekly and monthly routines, the selftest, notifications and the
verification rotation. Composes the ``backup`` library's functions; holds policy,
not mechanism. Returns report records; never prints (``maintenance.tasks`` renders).

    from maintenance import load_routine_config, run_daily
    report = run_daily(load_routine_config())
    assert report.ok, report.log_lines()
"""

from .config import EmailSettings, MaintenanceSettings, NotifySettings, RoutineConfig, load_routine_config, routine_config_from_mapping
from .notify import Delivery, notify
from .report import RoutineReport, Step
from .routines import run_daily, run_monthly, run_weekly

__all__ = [
    "Delivery",
    "EmailSettings",
    "MaintenanceSettings",
    "NotifySettings",
    "RoutineConfig",
    "RoutineReport",
    "SelftestReport",
    "Step",
    "load_routine_config",
    "notify",
    "routine_config_from_mapping",
    "run_daily",
    "run_monthly",
    "run_selftest",
    "run_weekly",
]


def __getattr__(name: str):
    # The selftest (and the sample data it generates) loads only when asked for, so
    # ``python -m maintenance.sampledata`` runs without importing itself twice.
    if name in ("SelftestReport", "run_selftest"):
        from . import selftest

        return getattr(selftest, name)
    raise AttributeError(f"module 'maintenance' has no attribute {name!r}")
