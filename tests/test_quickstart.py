"""docs/quickstart.md works as written: every shell block runs, in order, in a fresh folder.

``dbkeep`` and ``python3`` are small shims on PATH that run this checkout with the
test's interpreter, so the walk exercises the real program exactly as a user types it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_support import REPOSITORY_ROOT, cli_environment  # noqa: E402

QUICKSTART = REPOSITORY_ROOT / "docs" / "quickstart.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)


def shell_blocks(markdown: str) -> list[str]:
    return [match.group(1) for match in BLOCK.finditer(markdown)]


def _shim(directory: Path, name: str, module: str | None) -> None:
    command = f"exec {shlex.quote(sys.executable)}" + (f" -m {module}" if module else "") + ' "$@"\n'
    path = directory / name
    path.write_text("#!/bin/sh\n" + command)
    path.chmod(0o755)


def test_quickstart_has_a_block_for_each_step() -> None:
    script = "\n".join(shell_blocks(QUICKSTART.read_text(encoding="utf-8")))
    for task in ("backup.create", "backup.list", "backup.compare", "backup.restore", "backup.export"):
        assert f"dbkeep {task}" in script, task


@pytest.mark.skipif(shutil.which("sha256sum") is None or shutil.which("tar") is None, reason="needs sha256sum and tar")
def test_every_command_of_the_quickstart_succeeds(tmp_path: Path) -> None:
    shims = tmp_path / "bin"
    shims.mkdir()
    _shim(shims, "dbkeep", "maintenance.program")
    _shim(shims, "python3", None)
    work = tmp_path / "work"
    work.mkdir()
    blocks = shell_blocks(QUICKSTART.read_text(encoding="utf-8"))
    # One shell runs every block in order (a `cd` in one block holds for the next);
    # each command is echoed so a failure names the line of the document.
    script = "set -eu\n" + "\n".join(f"echo '>>> block {number}'\n{block}" for number, block in enumerate(blocks, 1))
    environment = cli_environment(home=work)
    environment["PATH"] = f"{shims}{os.pathsep}{environment['PATH']}"
    result = subprocess.run(["bash", "-x", "-c", script], cwd=work, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = result.stdout
    assert "WARNING: app.db: table orders lost" in output  # compare saw the accident
    assert "dry run: nothing was changed" in output
    assert "safety snapshot:" in output and "(read back)" in output
    assert output.count(": OK") == 4  # sha256sum -c checked three files and metadata.json
    assert (work / "shop-backup.tar.gz").is_file()
