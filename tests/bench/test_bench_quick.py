"""The benchmark's quick mode runs end to end, so bench/run.py cannot rot unnoticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
STEPS = (
    "first backup",
    "backup after (a) 1% updates",
    "backup after (b) appends",
    "backup after (c) no change",
    "verify (read data)",
    "restore",
)


def test_quick_benchmark_measures_every_dbkeep_operation_and_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "run.py"), "--quick", "--no-install", "--work", str(tmp_path / "work"), "--out", str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # A failed operation or a restore that differs from the live database exits 1.
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = out.read_text(encoding="utf-8")
    assert "| operation" in table and "## Targets (issue 8)" in table and "## Machine" in table
    dbkeep_rows = [line for line in table.splitlines() if line.startswith("| ") and "| dbkeep " in line]
    for step in STEPS:
        assert any(row.startswith(f"| {step} ") for row in dbkeep_rows), f"no dbkeep row for {step}"
