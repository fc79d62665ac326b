"""Helpers for tests that drive the real command line in subprocesses.

Imported by the CLI tests after they put this folder on sys.path. Every run uses
``sys.executable -m ...`` with PYTHONPATH at this checkout, never an installed
``dbkeep``, and an environment without the caller's INVOKE_* settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def cli_environment(extra: dict[str, str] | None = None, *, home: Path | None = None) -> dict[str, str]:
    # The index cache folder stays the one the test chose (conftest.py), never the source tree.
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("INVOKE_", "DBKEEP_")) or key == "DBKEEP_CACHE_DIR"}
    environment["PYTHONPATH"] = str(REPOSITORY_ROOT)
    if home is not None:
        environment["HOME"] = str(home)  # no ~/.invoke.yaml of the person running the tests
    environment.update(extra or {})
    return environment


def run(module: str, *arguments: str, cwd: Path, env: dict[str, str] | None = None, stdin: Any = subprocess.DEVNULL, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=cwd,
        env=cli_environment(env, home=cwd),
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def dbkeep(*arguments: str, cwd: Path, env: dict[str, str] | None = None, stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """Run ``dbkeep`` (the console script's module) in ``cwd``."""
    return run("maintenance.program", *arguments, cwd=cwd, env=env, stdin=stdin)


def invoke(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``invoke`` in this checkout, so its tasks.py is the namespace."""
    return run("invoke", *arguments, cwd=REPOSITORY_ROOT, env=env)


def parse_json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one JSON document on stdout (json.loads fails if anything else is there)."""
    document = json.loads(result.stdout)
    assert document["schema_version"] == 1
    return document


def assert_expected_failure(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """Exit ``code``, one line on stderr, no traceback; returns that line."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def fingerprint(path: Path) -> tuple[str, int]:
    """SHA-256 and mtime (ns) of a file: equal fingerprints mean it was not touched."""
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def snapshot_ids(project: Path) -> list[str]:
    return sorted(path.name[: -len(".json")] for path in (project / ".backups" / "snapshots").glob("*.json"))
