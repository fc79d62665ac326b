"""Export on real snapshots: archives sha256sum accepts, and nothing left behind on failure."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from backup import CorruptData, UsageError, VerificationFailed, create_backup, export_snapshot, load_settings
from backup.export import _sums_line, format_for
from backup.sample import create_sample_project

needs_sha256sum = pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs sha256sum")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    create_sample_project(root, size=256 * 1024)
    return root


@pytest.fixture
def settings(project: Path):
    return load_settings(project)


@pytest.fixture
def snapshot(settings):
    return create_backup(settings).snapshot


def _members(path: Path, chosen_format: str) -> dict[str, bytes]:
    if chosen_format == "tar.zst":
        with open(path, "rb") as handle:
            data = zstandard.ZstdDecompressor().stream_reader(handle).read()
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    else:
        archive = tarfile.open(path, mode="r:gz")
    with archive:
        return {member.name: archive.extractfile(member).read() for member in archive.getmembers() if member.isfile()}


@pytest.mark.parametrize("chosen_format", ["tar.gz", "tar.zst"])
def test_archive_holds_every_file_with_sums_and_metadata(settings, snapshot, tmp_path: Path, chosen_format: str) -> None:
    output = tmp_path / f"out.{chosen_format}"
    report = export_snapshot(settings, "latest", output)
    assert report.format == chosen_format and report.output_bytes == output.stat().st_size
    assert output.stat().st_mode & 0o777 == 0o600
    members = _members(output, chosen_format)
    folder = f"dbkeep-{snapshot.id}"
    assert all(name.startswith(folder + "/") and ".." not in name.split("/") for name in members)
    for entry in snapshot.files:
        assert hashlib.sha256(members[f"{folder}/files/{entry.path}"]).hexdigest() == entry.sha256
    metadata = json.loads(members[f"{folder}/metadata.json"])
    assert metadata["schema_version"] == 1 and metadata["snapshot"]["id"] == snapshot.id
    sums = members[f"{folder}/SHA256SUMS"].decode().splitlines()
    assert len(sums) == len(snapshot.files) + 1
    assert f"{hashlib.sha256(members[f'{folder}/metadata.json']).hexdigest()}  metadata.json" in sums


@needs_sha256sum
def test_directory_export_passes_sha256sum_and_opens_as_sqlite(settings, snapshot, tmp_path: Path) -> None:
    output = tmp_path / "exported"
    export_snapshot(settings, snapshot.id, output, format="dir")
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=output, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with contextlib.closing(sqlite3.connect(f"file:{output / 'files' / 'app.db'}?mode=ro", uri=True)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


@needs_sha256sum
def test_sums_of_a_path_with_a_newline_are_accepted_by_sha256sum(settings, project: Path, tmp_path: Path) -> None:
    (project / "files" / "odd\nname.txt").write_text("line\n")
    create_backup(settings)
    output = tmp_path / "exported"
    export_snapshot(settings, "latest", output, format="dir")
    check = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=output, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert _sums_line("ab" * 32, "a\nb") == "\\" + "ab" * 32 + "  a\\nb\n"


def test_existing_output_is_refused_and_left_alone(settings, snapshot, tmp_path: Path) -> None:
    output = tmp_path / "taken.tar.gz"
    output.write_bytes(b"precious")
    with pytest.raises(UsageError, match="already exists"):
        export_snapshot(settings, "latest", output)
    assert output.read_bytes() == b"precious"


def test_missing_output_folder_is_a_usage_error(settings, snapshot, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        export_snapshot(settings, "latest", tmp_path / "nowhere" / "out.tar.gz")


@pytest.mark.parametrize("chosen_format", ["tar.gz", "tar.zst", "dir"])
def test_damaged_data_fails_the_export_and_leaves_nothing(settings, snapshot, tmp_path: Path, chosen_format: str) -> None:
    packs = [path for path in (settings.repository / "packs").rglob("*") if path.is_file()]
    for pack in packs:
        data = bytearray(pack.read_bytes())
        data[len(data) // 2] ^= 0x40
        pack.write_bytes(bytes(data))
    target = tmp_path / "exports"
    target.mkdir()
    with pytest.raises((CorruptData, VerificationFailed)):
        export_snapshot(settings, "latest", target / "out", format=chosen_format)
    assert os.listdir(target) == []


@pytest.mark.parametrize(
    ("name", "requested", "expected"),
    [("a.tar.gz", None, "tar.gz"), ("a.tgz", None, "tar.gz"), ("a.tar.zst", None, "tar.zst"), ("a", None, "tar.gz"), ("a.tar.gz", "dir", "dir")],
)
def test_format_comes_from_the_flag_then_the_name(name: str, requested: str | None, expected: str) -> None:
    assert format_for(Path(name), requested) == expected


def test_unknown_format_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="tar.gz, tar.zst, dir"):
        format_for(Path("a.zip"), "zip")
