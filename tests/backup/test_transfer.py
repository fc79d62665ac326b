"""Copying snapshots between repositories, and importing (hostile) archives.

Copies run between local and S3 repositories, encrypted or not, and are checked
by restoring from the target. Import archives are built member by member in the
test, including every trick a hostile archive plays; each must be refused with
nothing outside the repository changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sqlite3
import tarfile
from pathlib import Path

import pytest
import zstandard

from backup.errors import UsageError, VerificationFailed
from backup.export import export_snapshot
from backup.operations import create_backup, list_backups, restore_backup, verify_backup
from backup.settings import settings_from_mapping
from backup.sources import logical_dump_digest
from backup.storage import LocalStaged, LocalStorage
from backup.transfer import ImportLimits, ImportRefused, copy_snapshots, import_archive
from tests.s3_support import aws_environment, new_bucket, s3_server  # noqa: F401


def make_database(path: Path, rows: int = 1200, *, start: int = 0) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, body TEXT)")
        connection.executemany("INSERT INTO items VALUES (?, ?)", ((start + i, f"item {start + i} " * 10) for i in range(rows)))


@pytest.fixture(autouse=True)
def no_passphrases(monkeypatch: pytest.MonkeyPatch) -> None:
    for prefix in ("DBKEEP_PASSWORD", "DBKEEP_TARGET_PASSWORD"):
        for suffix in ("", "_FILE", "_COMMAND"):
            monkeypatch.delenv(prefix + suffix, raising=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    make_database(root / "app.db")
    return root


@pytest.fixture
def source(project: Path):
    return settings_from_mapping({"include": ["*.db"], "repository": str(project.parent / "source-repo")}, root=project)


def target_settings(project: Path, location, **extra):
    return settings_from_mapping({"include": ["*.db"], "repository": location, **extra}, root=project)


def restore_digest(settings, snapshot_id: str, into: Path) -> str:
    restore_backup(settings, snapshot_id, target=into, force=True)
    return logical_dump_digest(into / "app.db")


# -- copy -------------------------------------------------------------------------------


def test_copy_to_a_new_local_repository_restores_the_same_database(source, project: Path, tmp_path: Path) -> None:
    snapshot = create_backup(source).snapshot
    report = copy_snapshots(source, ["latest"], tmp_path / "offsite")
    assert [item.snapshot_id for item in report.snapshots] == [snapshot.id] and report.snapshots[0].chunks_sent > 0
    target = target_settings(project, str(tmp_path / "offsite"))
    assert restore_digest(target, snapshot.id, tmp_path / "out") == logical_dump_digest(project / "app.db")
    assert verify_backup(target, read_data=True).ok


def test_second_copy_sends_only_chunks_the_target_lacks(source, project: Path, tmp_path: Path) -> None:
    first = create_backup(source)
    copy_snapshots(source, [first.snapshot.id], tmp_path / "offsite")
    make_database(project / "app.db", 3, start=50_000)
    second = create_backup(source)
    report = copy_snapshots(source, [second.snapshot.id], tmp_path / "offsite")
    copied = report.snapshots[0]
    assert copied.chunks_sent == second.stats.new_chunks
    assert copied.chunks_reused > copied.chunks_sent


def test_copy_of_a_snapshot_already_in_the_target_changes_nothing(source, tmp_path: Path) -> None:
    snapshot = create_backup(source).snapshot
    copy_snapshots(source, [snapshot.id], tmp_path / "offsite")
    before = sorted(path.name for path in (tmp_path / "offsite").rglob("*") if path.is_file() and "locks" not in path.parts)
    again = copy_snapshots(source, [snapshot.id[:10]], tmp_path / "offsite")
    assert again.snapshots[0].already_present
    assert sorted(path.name for path in (tmp_path / "offsite").rglob("*") if path.is_file() and "locks" not in path.parts) == before


def test_copy_into_the_source_itself_is_refused(source) -> None:
    create_backup(source)
    with pytest.raises(UsageError, match="source repository itself"):
        copy_snapshots(source, ["latest"], source.repository)


def test_copy_from_plain_local_to_encrypted_s3_and_back(source, project: Path, tmp_path: Path, aws_environment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = create_backup(source).snapshot
    expected = logical_dump_digest(project / "app.db")
    remote = f"s3://{new_bucket(aws_environment)}/offsite"
    monkeypatch.setenv("DBKEEP_TARGET_PASSWORD", "remote passphrase")
    report = copy_snapshots(source, ["latest"], remote, encrypt_target=True)
    assert report.target == remote and report.snapshots[0].chunks_sent > 0
    monkeypatch.delenv("DBKEEP_TARGET_PASSWORD")
    monkeypatch.setenv("DBKEEP_PASSWORD", "remote passphrase")
    encrypted_remote = target_settings(project, remote, encryption="aes-256-gcm")
    assert verify_backup(encrypted_remote, read_data=True).ok
    assert restore_digest(encrypted_remote, snapshot.id, tmp_path / "from-s3") == expected
    back = copy_snapshots(encrypted_remote, [snapshot.id], tmp_path / "plain-again")
    assert back.snapshots[0].chunks_sent > 0
    monkeypatch.delenv("DBKEEP_PASSWORD")
    assert restore_digest(target_settings(project, str(tmp_path / "plain-again")), snapshot.id, tmp_path / "round-trip") == expected


class _CorruptingStorage(LocalStorage):
    """A target disk that silently damages the packs written to it."""

    def put(self, name, pieces, *, exclusive=False):
        pieces = list(pieces)
        if name.startswith("packs/") and pieces and pieces[0]:
            pieces[0] = bytes([pieces[0][0] ^ 0xFF]) + pieces[0][1:]
        return super().put(name, pieces, exclusive=exclusive)

    def stage(self, folder):
        staged = super().stage(folder)
        return _CorruptingStaged(self, staged._staged) if folder == "packs" else staged


class _CorruptingStaged(LocalStaged):
    """A pack written frame by frame whose first byte is damaged on the way."""

    def write(self, data):
        if self.size == 0 and data:
            data = bytes([data[0] ^ 0xFF]) + bytes(data[1:])
        super().write(data)


def test_copy_whose_bytes_arrive_damaged_publishes_no_snapshot(source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    create_backup(source)
    import backup.transfer as transfer

    monkeypatch.setattr(transfer, "open_storage", lambda location: _CorruptingStorage(Path(location)))
    with pytest.raises(VerificationFailed, match="did not arrive intact"):
        copy_snapshots(source, ["latest"], tmp_path / "offsite")
    assert list((tmp_path / "offsite" / "snapshots").iterdir()) == []


# -- import: archives that are fine ----------------------------------------------------------


def export_members(project: Path, *, mode: int = 0o640) -> list[tuple[str, bytes]]:
    """(name, bytes) of a well-formed export of the project's app.db."""
    data = (project / "app.db").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    metadata = {
        "format": "dbkeep-export",
        "schema_version": 1,
        "snapshot": {"id": "20250116T020000Z-3f9a", "time": "2025-01-16T02:00:00Z", "tag": "daily"},
        "files": [{"path": "files/data/app.db", "kind": "sqlite", "size": len(data), "mode": mode, "mtime": 1_700_000_000, "sha256": digest}],
    }
    encoded = json.dumps(metadata).encode()
    return [
        ("metadata.json", encoded),
        ("SHA256SUMS", f"{digest}  files/data/app.db\n{hashlib.sha256(encoded).hexdigest()}  metadata.json\n".encode()),
        ("files/data/app.db", data),
    ]


def regular(name: str, data: bytes, *, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def special(name: str, kind: bytes, *, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b""


def write_tar(path: Path, members, *, compression: str = "gz", tar_format: int = tarfile.PAX_FORMAT) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tar_format) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    raw = buffer.getvalue()
    if compression == "gz":
        import gzip

        raw = gzip.compress(raw)
    elif compression == "zst":
        raw = zstandard.ZstdCompressor().compress(raw)
    path.write_bytes(raw)
    return path


def outside_state(tmp_path: Path, repository: Path) -> dict[str, bytes | str]:
    """Every path under tmp_path except the repository: what an import must not touch."""
    state: dict[str, bytes | str] = {}
    for path in sorted(tmp_path.rglob("*")):
        if repository in path.parents or path == repository or "archives" in path.parts:
            continue
        state[str(path)] = path.read_bytes() if path.is_file() and not path.is_symlink() else f"{os.lstat(path).st_mode:o}"
    return state


@pytest.fixture
def target(project: Path, tmp_path: Path):
    (tmp_path / "archives").mkdir()
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "passwd").write_text("root:x:0:0\n")
    return settings_from_mapping({"include": ["*.db"], "repository": str(tmp_path / "repo")}, root=project)


@pytest.mark.parametrize("compression", ["gz", "zst", "none"])
def test_import_of_an_export_restores_the_database(target, project: Path, tmp_path: Path, compression: str) -> None:
    archive = write_tar(tmp_path / "archives" / f"export.tar.{compression}", [regular(name, data) for name, data in export_members(project)], compression=compression)
    report = import_archive(target, archive)
    assert report.files == ("data/app.db",) and report.source_snapshot_id == "20250116T020000Z-3f9a"
    snapshot = report.backup.snapshot
    assert snapshot.tag == "import" and snapshot.files[0].mode == 0o640 and snapshot.files[0].mtime == 1_700_000_000
    restore_backup(target, snapshot.id, target=tmp_path / "restored", force=True)
    assert logical_dump_digest(tmp_path / "restored" / "data" / "app.db") == logical_dump_digest(project / "app.db")


def test_import_accepts_one_top_level_folder_and_a_plain_directory(target, project: Path, tmp_path: Path) -> None:
    wrapped = [regular(f"export-1/{name}", data) for name, data in export_members(project)]
    import_archive(target, write_tar(tmp_path / "archives" / "wrapped.tgz", wrapped))
    directory = tmp_path / "archives" / "unpacked"
    for name, data in export_members(project):
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    import_archive(target, directory)
    assert len(list_backups(target).snapshots) == 2


def test_import_strips_set_id_bits_from_modes(target, project: Path, tmp_path: Path) -> None:
    members = export_members(project, mode=0o6755)
    archive = write_tar(tmp_path / "archives" / "setuid.tgz", [regular(name, data, mode=0o4755) for name, data in members])
    snapshot = import_archive(target, archive).backup.snapshot
    assert snapshot.files[0].mode == 0o755


@pytest.mark.parametrize("chosen_format", ["tar.gz", "tar.zst", "dir"])
def test_what_export_writes_imports_into_a_fresh_repository_with_the_same_content(source, project: Path, tmp_path: Path, chosen_format: str) -> None:
    (project / "notes.txt").write_text("plain file\n" * 50)
    os.chmod(project / "notes.txt", 0o640)
    settings = settings_from_mapping({"include": ["*.db", "*.txt"], "repository": str(project.parent / "source-repo")}, root=project)
    original = create_backup(settings).snapshot
    archive = tmp_path / f"export.{chosen_format}"
    export_snapshot(settings, original.id, archive, format=chosen_format)
    fresh = settings_from_mapping({"include": ["*.db"], "repository": str(tmp_path / "fresh")}, root=project)
    report = import_archive(fresh, archive)
    assert report.source_snapshot_id == original.id and report.backup.warnings == ()
    imported = {entry.path: entry for entry in report.backup.snapshot.files}
    for entry in original.files:
        assert (imported[entry.path].kind, imported[entry.path].sha256, imported[entry.path].mode) == (entry.kind, entry.sha256, entry.mode)
        assert imported[entry.path].mtime == pytest.approx(entry.mtime)
    restore_backup(fresh, report.backup.snapshot.id, target=tmp_path / "restored", force=True)
    assert logical_dump_digest(tmp_path / "restored" / "app.db") == logical_dump_digest(project / "app.db")
    assert (tmp_path / "restored" / "notes.txt").read_text() == "plain file\n" * 50


def _with_metadata(project: Path, change) -> list[tuple[str, bytes]]:
    """The well-formed export with metadata.json changed by ``change`` and SHA256SUMS to match."""
    members = dict(export_members(project))
    metadata = json.loads(members["metadata.json"])
    change(metadata)
    members["metadata.json"] = json.dumps(metadata).encode()
    digest = hashlib.sha256(members["files/data/app.db"]).hexdigest()
    members["SHA256SUMS"] = f"{digest}  files/data/app.db\n{hashlib.sha256(members['metadata.json']).hexdigest()}  metadata.json\n".encode()
    return list(members.items())


def test_database_server_dump_in_an_archive_comes_back_as_a_plain_file_with_a_note(target, project: Path, tmp_path: Path) -> None:
    dump = b"-- PostgreSQL database dump\nCREATE TABLE t (id int);\n"
    members = dict(export_members(project))
    members["files/postgres/app"] = dump

    def add_dump(metadata) -> None:
        metadata["files"].append({"path": "files/postgres/app", "kind": "postgres", "size": len(dump), "mode": 0o600, "mtime": 1_700_000_000, "sha256": hashlib.sha256(dump).hexdigest()})

    changed = dict(_with_metadata(project, add_dump))
    sums = changed["SHA256SUMS"].decode() + f"{hashlib.sha256(dump).hexdigest()}  files/postgres/app\n"
    archive = write_tar(tmp_path / "archives" / "dump.tgz", [regular(name, data) for name, data in {**changed, "SHA256SUMS": sums.encode(), "files/postgres/app": dump}.items()])
    report = import_archive(target, archive)
    kinds = {entry.path: entry.kind for entry in report.backup.snapshot.files}
    assert kinds == {"data/app.db": "sqlite", "postgres/app": "file"}
    assert any("postgres/app was a postgres dump" in warning for warning in report.backup.warnings)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda metadata: metadata["files"][0].update(path="data/app.db"), "does not start with 'files/'"),
        (lambda metadata: metadata.pop("schema_version"), "schema_version 1"),
        (lambda metadata: metadata["files"][0].update(kind="oracle"), "unknown kind"),
    ],
    ids=["path-outside-files", "no-schema-version", "unknown-kind"],
)
def test_metadata_that_breaks_the_export_layout_is_refused(target, project: Path, tmp_path: Path, change, fragment: str) -> None:
    archive = write_tar(tmp_path / "archives" / "bad-metadata.tgz", [regular(name, data) for name, data in _with_metadata(project, change)])
    with pytest.raises(ImportRefused, match=fragment):
        import_archive(target, archive)
    assert not (Path(target.repository) / "snapshots").exists()


# -- import: hostile archives ------------------------------------------------------------------


def _hostile_cases(project: Path, tmp_path: Path) -> dict[str, list]:
    good = [regular(name, data) for name, data in export_members(project)]
    victim = str(tmp_path / "victim" / "passwd")
    return {
        "absolute": good + [regular(str(tmp_path / "victim" / "new"), b"pwned")],
        "parent": good + [regular("../x", b"pwned")],
        "climbing": good + [regular("files/a/../../x", b"pwned")],
        "symlink-then-through-it": good + [special("files/evil", tarfile.SYMTYPE, linkname=str(tmp_path / "victim")), regular("files/evil/passwd", b"pwned")],
        "hardlink-outside": good + [special("files/link", tarfile.LNKTYPE, linkname=victim)],
        "hardlink-to-symlink": good + [special("files/s", tarfile.SYMTYPE, linkname=victim), special("files/h", tarfile.LNKTYPE, linkname="files/s")],
        "fifo": good + [special("files/pipe", tarfile.FIFOTYPE)],
        "char-device": good + [special("files/null", tarfile.CHRTYPE)],
        "block-device": good + [special("files/disk", tarfile.BLKTYPE)],
        "duplicate": good + [regular("files/data/app.db", b"second copy")],
        "unlisted": good + [regular("files/extra.txt", b"not in SHA256SUMS")],
        "outside-layout": good + [regular("run-me.sh", b"#!/bin/sh\n")],
        "hash-mismatch": [regular(name, data if name != "files/data/app.db" else data[:-1] + b"X") for name, data in export_members(project)],
        "backslash": good + [regular("files\\..\\..\\x", b"pwned")],
        "nul": good + [regular("files/a\x00b", b"pwned")],
        "no-metadata": [member for member in good if member[0].name != "metadata.json"],
    }


HOSTILE = [
    "absolute",
    "parent",
    "climbing",
    "symlink-then-through-it",
    "hardlink-outside",
    "hardlink-to-symlink",
    "fifo",
    "char-device",
    "block-device",
    "duplicate",
    "unlisted",
    "outside-layout",
    "hash-mismatch",
    "backslash",
    "nul",
    "no-metadata",
]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_archive_is_refused_and_nothing_outside_the_repository_changes(target, project: Path, tmp_path: Path, case: str) -> None:
    members = _hostile_cases(project, tmp_path)[case]
    try:
        archive = write_tar(tmp_path / "archives" / f"{case}.tgz", members)
    except ValueError:
        pytest.skip("this Python's tarfile refuses to even write such a name")
    before = outside_state(tmp_path, Path(target.repository))
    with pytest.raises(ImportRefused):
        import_archive(target, archive)
    assert outside_state(tmp_path, Path(target.repository)) == before
    assert not (tmp_path / "x").exists() and not (project.parent / "x").exists()
    scratch = Path(target.repository) / "tmp"
    assert not scratch.exists() or list(scratch.iterdir()) == []
    assert not (Path(target.repository) / "snapshots").exists() or list((Path(target.repository) / "snapshots").iterdir()) == []


def test_archive_with_very_many_members_is_refused_at_the_bound(target, project: Path, tmp_path: Path) -> None:
    members = [regular(name, data) for name, data in export_members(project)]
    for index in range(ImportLimits().max_members):
        info = tarfile.TarInfo(f"files/d{index}")
        info.type = tarfile.DIRTYPE
        members.append((info, b""))
    archive = write_tar(tmp_path / "archives" / "many.tgz", members)
    with pytest.raises(ImportRefused, match="more than 10000 members"):
        import_archive(target, archive)


def test_member_larger_than_the_bound_is_refused_before_it_is_written(target, project: Path, tmp_path: Path) -> None:
    members = [regular(name, data) for name, data in export_members(project)]
    archive = write_tar(tmp_path / "archives" / "big.tgz", members)
    with pytest.raises(ImportRefused, match="more than the 1000 allowed"):
        import_archive(target, archive, limits=ImportLimits(max_member_bytes=1000))


def test_huge_extended_header_is_refused_before_it_is_read_into_memory(target, project: Path, tmp_path: Path) -> None:
    info, data = regular("files/data/app.db", b"x")
    info.pax_headers = {"comment": "y" * (2 * 1024 * 1024)}
    archive = write_tar(tmp_path / "archives" / "pax.tgz", [(info, data)])
    with pytest.raises(ImportRefused, match="extended header"):
        import_archive(target, archive)


def test_compression_bomb_is_refused_by_the_total_bound(target, project: Path, tmp_path: Path) -> None:
    members = [regular(name, data) for name, data in export_members(project)] + [regular("files/zeros", bytes(8 * 1024 * 1024))]
    archive = write_tar(tmp_path / "archives" / "bomb.tar.zst", members, compression="zst")
    assert archive.stat().st_size < 100_000
    with pytest.raises(ImportRefused, match="more than 1048576 bytes"):
        import_archive(target, archive, limits=ImportLimits(max_total_bytes=1024 * 1024))


def test_symlinked_file_in_an_export_directory_is_refused(target, project: Path, tmp_path: Path) -> None:
    directory = tmp_path / "archives" / "unpacked"
    for name, data in export_members(project):
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)
    (directory / "files" / "passwd").symlink_to(tmp_path / "victim" / "passwd")
    with pytest.raises(ImportRefused, match="symbolic link"):
        import_archive(target, directory)


def test_truncated_archive_is_refused(target, project: Path, tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "archives" / "cut.tar", [regular(name, data) for name, data in export_members(project)], compression="none")
    archive.write_bytes(archive.read_bytes()[:5000])
    with pytest.raises(ImportRefused):
        import_archive(target, archive)

