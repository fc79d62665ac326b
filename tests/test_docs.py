"""The documented recovery without dbkeep really recovers, and the troubleshooting covers our messages."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backup import create_backup, settings_from_mapping
from backup.sources import logical_dump_digest
from maintenance.sampledata import change_database, create_sample_database

REPO_ROOT = Path(__file__).resolve().parents[1]
STRATEGY = REPO_ROOT / "docs" / "backup-strategy.md"
TROUBLESHOOTING_PAGES = [STRATEGY, REPO_ROOT / "docs" / "servers.md", REPO_ROOT / "docs" / "remote-and-encryption.md"]


def recovery_script() -> str:
    text = STRATEGY.read_text()
    match = re.search(r"<!-- recover.py -->\n```python\n(.*?)```", text, re.S)
    assert match, "the recovery script is missing from docs/backup-strategy.md"
    return match.group(1)


@pytest.mark.skipif(shutil.which("zstd") is None or shutil.which("sha256sum") is None, reason="needs the zstd and sha256sum commands")
def test_documented_recovery_with_standard_tools_rebuilds_a_snapshot(tmp_path):
    root = tmp_path / "project"
    database = create_sample_database(root / "data" / "app.db", rows=3000)
    (root / "notes.txt").write_text("plain file\n" * 1000)
    settings = settings_from_mapping({"root": str(root), "repository": str(tmp_path / "repo"), "include": ["**/*.db", "*.txt"]})
    create_backup(settings)
    change_database(database)
    snapshot = create_backup(settings).snapshot
    expected = logical_dump_digest(database)
    script = tmp_path / "recover.py"
    script.write_text(recovery_script())
    output = tmp_path / "out"
    # Run with no access to dbkeep: a bare interpreter in an empty directory.
    completed = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "repo"), snapshot.id, str(output)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert sorted(completed.stdout.splitlines()) == ["data/app.db: OK", "notes.txt: OK"]
    assert logical_dump_digest(output / "data" / "app.db") == expected
    (output / "SHA256SUMS").write_text("".join(f"{entry.sha256}  {entry.path}\n" for entry in snapshot.files))
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=output, capture_output=True).returncode == 0


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd command")
def test_documented_recovery_walks_a_two_level_chunk_list_tree(tmp_path):
    from tests.dbhelpers import make_database

    root = tmp_path / "project"
    database = make_database(root / "big.db", rows=8000, blob_size=1000)
    settings = settings_from_mapping({"root": str(root), "repository": str(tmp_path / "repo")})
    snapshot = create_backup(settings).snapshot
    assert snapshot.files[0].chunk_list_levels >= 2
    script = tmp_path / "recover.py"
    script.write_text(recovery_script())
    completed = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "repo"), snapshot.id, str(tmp_path / "out")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == ["big.db: OK"]
    assert logical_dump_digest(tmp_path / "out" / "big.db") == logical_dump_digest(database)


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd command")
def test_documented_recovery_refuses_an_edited_manifest(tmp_path):
    root = tmp_path / "project"
    create_sample_database(root / "app.db", rows=100)
    settings = settings_from_mapping({"root": str(root), "repository": str(tmp_path / "repo")})
    snapshot = create_backup(settings).snapshot
    manifest = tmp_path / "repo" / "snapshots" / f"{snapshot.id}.json"
    manifest.write_text(manifest.read_text().replace('"manual"', '"edited"'))
    script = tmp_path / "recover.py"
    script.write_text(recovery_script())
    completed = subprocess.run([sys.executable, "-I", str(script), str(tmp_path / "repo"), snapshot.id, str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert completed.returncode != 0 and "damaged or edited" in completed.stderr


def test_troubleshooting_names_every_error_message_the_library_raises():
    """Each raise of a BackupError in the library has its message's fixed start in the docs.

    The troubleshooting section of backup-strategy.md covers the core; the
    database-server and remote/encryption pages each carry their own error tables.
    """
    text = "\n".join(path.read_text() for path in TROUBLESHOOTING_PAGES if path.exists())
    missing = []
    for path in sorted((REPO_ROOT / "backup").rglob("*.py")) + sorted((REPO_ROOT / "maintenance").rglob("*.py")):
        source = path.read_text()
        if path.name == "selftest.py":
            continue  # its expectations are scenario results, not errors a user meets
        for match in re.finditer(r"raise (?:_refused|[A-Z][A-Za-z]*(?:Error|Refused|Found|Snapshot|Locked|Lost|Space|Chunk|Pack|Index|Manifest|Failed))\(\s*f?\"([^\"]*)\"", source):
            if match.group(0).startswith(("raise ValueError", "raise RuntimeError")):
                continue  # internal: ValueError texts end up inside a ConfigError's "expected ..."
            if "has no attribute" in match.group(1):
                continue  # Python's own AttributeError contract, not a user-facing message
            fixed = re.split(r"\{[^}]*\}", match.group(1))
            words = max(fixed, key=len).strip(" :;,()'")
            if len(words) >= 12 and words not in text:
                missing.append(f"{path.relative_to(REPO_ROOT)}: {words}")
    assert not missing, "\n".join(missing)
