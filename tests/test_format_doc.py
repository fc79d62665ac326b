"""docs/format.md's recovery procedure really recovers a database with standard tools."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from backup import create_backup
from backup.sources import logical_dump_digest
from tests.dbhelpers import REPOSITORY_ROOT, make_database

TOOLS = ["jq", "zstd", "xxd", "dd", "sha256sum", "bash"]


def _recovery_block() -> str:
    text = (REPOSITORY_ROOT / "docs" / "format.md").read_text()
    section = text.split("## Recovering a database with standard tools", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


@pytest.mark.skipif(any(shutil.which(tool) is None for tool in TOOLS), reason=f"needs {', '.join(TOOLS)} (installed by .ci/run)")
def test_documented_shell_procedure_recovers_the_database_byte_for_byte(tmp_path, make_settings):
    root = tmp_path / "project"
    database = make_database(root / "app.db", rows=3000)
    report = create_backup(make_settings(root))
    lines = _recovery_block().splitlines()
    assert lines[0].startswith("REPO=")
    lines[0] = f"REPO={root / '.backups'} SNAP={report.snapshot.id} FILE=app.db OUT=recovered.db"

    completed = subprocess.run(["bash", "-c", "\n".join(lines)], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert completed.returncode == 0, completed.stderr
    recorded, recovered = completed.stdout.split()
    assert recorded == recovered == report.snapshot.files[0].sha256
    assert logical_dump_digest(tmp_path / "recovered.db") == logical_dump_digest(database)
