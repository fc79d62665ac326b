"""The migration example really fails halfway and is really rolled back."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from backup import list_backups, settings_from_mapping
from backup.sources import logical_dump_digest

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "migrate_with_backup.py"


def run_example(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *arguments],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def user_version(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return connection.execute("PRAGMA user_version").fetchone()[0]


def test_failing_migration_is_rolled_back_to_the_exact_previous_content(tmp_path):
    first = run_example("--project", str(tmp_path), "--fixed")  # creates the sample, then migrates it fully
    assert first.returncode == 0, first.stdout + first.stderr
    database = tmp_path / "data" / "app.db"
    assert user_version(database) == 2
    # A second project for the failing run, so the database starts at version 0.
    project = tmp_path / "second"
    failing = run_example("--project", str(project))
    assert failing.returncode == 1, failing.stdout + failing.stderr
    out = failing.stdout
    assert "copied 1500/3000 events (50%)" in out, "the migration committed half of the copy before failing"
    assert "migration FAILED: CHECK constraint failed" in out
    assert "content identical to the state before the migration" in out
    second_database = project / "data" / "app.db"
    assert user_version(second_database) == 0
    with sqlite3.connect(second_database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"accounts", "events"}
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    snapshots = list_backups(settings_from_mapping({"root": str(project), "repository": str(project / ".backups")})).snapshots
    assert [snapshot.tag for snapshot in snapshots] == ["migration", "safety"]
    guard_snapshot = snapshots[0]
    assert guard_snapshot.files[0].sqlite.tables == {"accounts": 10, "events": 3000}
    assert logical_dump_digest(second_database)  # still opens and dumps
