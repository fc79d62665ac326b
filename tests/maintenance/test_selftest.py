"""The selftest passes on a healthy build, fails loudly on a broken one, and runs from Invoke."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maintenance import selftest
from maintenance.selftest import FAILED, PASSED, run_selftest

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT_TASKS = """
from invoke import Collection
from maintenance.tasks import ns as maintenance_ns, selftest
ns = Collection()
ns.add_collection(maintenance_ns)
ns.add_task(selftest)
"""


def test_selftest_passes_every_scenario_in_under_a_minute(tmp_path):
    report = run_selftest(directory=tmp_path)
    assert report.ok, report.render()
    assert {result.status for result in report.results} <= {PASSED, "skipped"}
    assert report.seconds < 60
    assert len(report.results) == len(selftest.SCENARIOS) >= 12
    assert not Path(report.directory).exists(), "the temporary directory is removed"


def test_selftest_reports_a_broken_scenario_as_failed(tmp_path, monkeypatch):
    def broken_restore(world):
        world.wal_database.write_bytes(b"not a database any more")
        return selftest.scenario_point_in_time(world)

    scenarios = tuple((name, broken_restore if name == "point-in-time restore" else function) for name, function in selftest.SCENARIOS)
    monkeypatch.setattr(selftest, "SCENARIOS", scenarios)
    report = run_selftest(directory=tmp_path)
    assert not report.ok
    statuses = {result.name: result.status for result in report.results}
    assert statuses["restore with safety snapshot"] == PASSED
    assert FAILED in statuses.values()


def test_invoke_selftest_prints_the_table_and_exits_0(tmp_path):
    (tmp_path / "tasks.py").write_text(ROOT_TASKS)
    completed = subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(tmp_path), "selftest"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "scenario" in completed.stdout and "selftest: ok" in completed.stdout
    assert "recovery after interrupted backup" in completed.stdout
