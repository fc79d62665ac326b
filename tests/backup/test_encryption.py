"""Encrypted repositories: passphrases, keys, confidentiality, and tampering.

Real SQLite databases are backed up into encrypted repositories and restored; the
tests then edit, swap and replace stored bytes directly and require an
authentication failure (never decompressor garbage, never a silent restore).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import sqlite3
import sys
from pathlib import Path

import pytest

pytest.importorskip("cryptography")

from backup import crypto, keys  # noqa: E402
from backup.errors import (  # noqa: E402
    AuthenticationFailed,
    ConfigError,
    UsageError,
    VerificationFailed,
    WeakKeyDerivation,
    WrongPassphrase,
)
from backup.manifest import unseal  # noqa: E402
from backup.operations import create_backup, list_backups, open_repository, restore_backup, verify_backup  # noqa: E402
from backup.repository import FRAME_TARGET_BYTES, Repository  # noqa: E402
from backup.settings import settings_from_mapping  # noqa: E402
from backup.sources import logical_dump_digest  # noqa: E402
from backup.storage import LocalStorage  # noqa: E402

SECRET_TEXT = "confidential-payroll-record"
PASSPHRASE = "correct horse battery staple"


def make_database(path: Path, rows: int = 1500, *, start: int = 0) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, body TEXT)")
        connection.executemany("INSERT INTO items VALUES (?, ?)", ((start + i, f"{SECRET_TEXT} {start + i} " * 8) for i in range(rows)))


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    make_database(root / "app.db")
    return root


@pytest.fixture
def settings(project: Path, monkeypatch: pytest.MonkeyPatch):
    for name in crypto.PASSWORD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DBKEEP_PASSWORD", PASSPHRASE)
    return settings_from_mapping({"encryption": "aes-256-gcm", "include": ["*.db"]}, root=project)


@pytest.fixture
def backed_up(settings):
    return create_backup(settings)


def repository_files(settings) -> list[Path]:
    return [path for path in Path(settings.repository).rglob("*") if path.is_file()]


# -- passphrase sources --------------------------------------------------------------------


def test_passphrase_comes_from_the_variable_the_file_or_the_command(tmp_path: Path) -> None:
    secret_file = tmp_path / "pass"
    secret_file.write_text("from file\n")
    assert crypto.passphrase_from_environment({"DBKEEP_PASSWORD": "direct"}) == "direct"
    assert crypto.passphrase_from_environment({"DBKEEP_PASSWORD_FILE": str(secret_file)}) == "from file"
    command = f"{sys.executable} -c \"print('from command')\""
    assert crypto.passphrase_from_environment({"DBKEEP_PASSWORD_COMMAND": command}) == "from command"
    assert crypto.passphrase_from_environment({}) is None


@pytest.mark.parametrize(
    "environment, message",
    [
        ({"DBKEEP_PASSWORD": "a", "DBKEEP_PASSWORD_FILE": "/x"}, "only one"),
        ({"DBKEEP_PASSWORD_FILE": "/nonexistent/pass"}, "cannot read"),
        ({"DBKEEP_PASSWORD_COMMAND": f"{sys.executable} -c 'raise SystemExit(3)'"}, "exit code 3"),
        ({"DBKEEP_PASSWORD_COMMAND": f"{sys.executable} -c 'print()'"}, "empty"),
    ],
    ids=["two-sources", "unreadable-file", "failing-command", "empty"],
)
def test_bad_passphrase_source_is_a_config_error(environment: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        crypto.passphrase_from_environment(environment)


# -- key derivation ------------------------------------------------------------------------


@pytest.mark.parametrize("n, r, p", [(2**14, 8, 1), (2**15, 4, 1), (2**15 + 1, 8, 1), (2**24, 8, 1)], ids=["low-n", "low-r", "n-not-power", "huge-memory"])
def test_scrypt_parameters_outside_the_bounds_are_refused(n: int, r: int, p: int) -> None:
    with pytest.raises(WeakKeyDerivation):
        crypto.KdfParams(n=n, r=r, p=p, salt=b"s" * 16).check()


def test_planted_key_file_with_weak_parameters_is_never_used(settings, backed_up) -> None:
    repository = open_repository(settings)
    good = json.loads((Path(settings.repository) / "keys" / repository.keys.key_id).read_text())
    planted = dict(good, id="0" * 32, kdf=dict(good["kdf"], n=2**10))
    (Path(settings.repository) / "keys" / ("0" * 32)).write_text(json.dumps(planted))
    assert [key.id for key in keys.list_keys(settings)] == [repository.keys.key_id]
    os.unlink(Path(settings.repository) / "keys" / repository.keys.key_id)
    with pytest.raises(WeakKeyDerivation):
        open_repository(settings)


# -- round trip and confidentiality ------------------------------------------------------------


def test_encrypted_backup_restores_the_same_database(settings, project: Path, backed_up) -> None:
    database = project / "app.db"
    before = logical_dump_digest(database)
    make_database(database, 10, start=90_000)
    restore_backup(settings, backed_up.snapshot.id, force=True)
    assert logical_dump_digest(database) == before
    report = verify_backup(settings, read_data=True)
    assert report.ok and report.chunks_checked > 0


def test_repository_files_reveal_neither_content_nor_content_hashes(settings, project: Path, backed_up) -> None:
    data = (project / "app.db").read_bytes()
    chunks = [data[start : start + settings.chunk_size] for start in range(settings.chunk_size, len(data), settings.chunk_size)]
    leaks = [SECRET_TEXT.encode(), b"app.db", b"items"]
    leaks += [hashlib.sha256(chunk).hexdigest().encode() for chunk in chunks] + [hashlib.sha256(chunk).digest() for chunk in chunks]
    for path in repository_files(settings):
        content = path.read_bytes()
        for leak in leaks:
            assert leak not in content, f"{path.name} reveals {leak[:20]!r}"


def test_second_encrypted_backup_dedupes_with_keyed_chunk_ids(settings, project: Path, backed_up) -> None:
    make_database(project / "app.db", 1, start=70_000)
    second = create_backup(settings)
    assert second.stats.reused_chunks > 0 and second.stats.new_chunks < backed_up.stats.new_chunks


def test_chunk_ids_differ_between_repositories_holding_the_same_data(settings, tmp_path: Path, backed_up) -> None:
    other = settings_from_mapping({"encryption": "aes-256-gcm", "include": ["*.db"], "repository": str(tmp_path / "other")}, root=settings.root)
    create_backup(other)
    ids_here = set(open_repository(settings).index().locations)
    ids_there = set(open_repository(other).index().locations)
    assert ids_here and ids_there and not ids_here & ids_there


# -- wrong or missing passphrase ---------------------------------------------------------------


def test_wrong_passphrase_is_a_distinct_error_and_changes_nothing(settings, backed_up, monkeypatch: pytest.MonkeyPatch) -> None:
    before = tree_digest(Path(settings.repository))
    monkeypatch.setenv("DBKEEP_PASSWORD", "not the passphrase")
    for action in (lambda: list_backups(settings), lambda: create_backup(settings), lambda: verify_backup(settings)):
        with pytest.raises(WrongPassphrase, match="nothing was changed"):
            action()
    assert tree_digest(Path(settings.repository)) == before
    assert [path.name for path in (Path(settings.repository) / "locks").iterdir()] == ["guard"]  # no lock record


def test_encrypted_repository_without_a_passphrase_says_how_to_give_one(settings, backed_up, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DBKEEP_PASSWORD")
    with pytest.raises(ConfigError, match="DBKEEP_PASSWORD"):
        list_backups(settings)


# -- tampering ---------------------------------------------------------------------------------


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_bit_in_a_pack_frame_fails_authentication_and_restore_keeps_the_live_database(settings, project: Path, backed_up) -> None:
    pack = next(path for path in (Path(settings.repository) / "packs").rglob("*") if path.is_file())
    _flip(pack, 40)
    report = verify_backup(settings, read_data=True)
    assert not report.ok
    assert any("failed authentication" in problem.message for problem in report.problems)
    assert not any("decompress" in problem.message for problem in report.problems)
    make_database(project / "app.db", 5, start=80_000)
    live = (project / "app.db").read_bytes()
    with pytest.raises(VerificationFailed, match="failed authentication"):
        restore_backup(settings, backed_up.snapshot.id, force=True)
    assert (project / "app.db").read_bytes() == live


def test_edited_manifest_fails_authentication(settings, backed_up) -> None:
    manifest = Path(settings.repository) / "snapshots" / f"{backed_up.snapshot.id}.json"
    _flip(manifest, len(manifest.read_bytes()) - 5)
    listing = list_backups(settings)
    assert listing.snapshots == () and "failed authentication" in listing.damaged[backed_up.snapshot.id]


def test_manifest_swapped_under_another_snapshot_name_fails_authentication(settings, project: Path, backed_up) -> None:
    make_database(project / "app.db", 5, start=60_000)
    second = create_backup(settings)
    folder = Path(settings.repository) / "snapshots"
    first_bytes = (folder / f"{backed_up.snapshot.id}.json").read_bytes()
    (folder / f"{second.snapshot.id}.json").write_bytes(first_bytes)  # replay the old manifest as the new one
    listing = list_backups(settings)
    assert [snapshot.id for snapshot in listing.snapshots] == [backed_up.snapshot.id]
    assert "failed authentication" in listing.damaged[second.snapshot.id]


def test_index_sealed_with_another_repository_key_fails_authentication(settings, tmp_path: Path, backed_up) -> None:
    other = settings_from_mapping({"encryption": "aes-256-gcm", "include": ["*.db"], "repository": str(tmp_path / "other")}, root=settings.root)
    create_backup(other)
    foreign = next((Path(other.repository) / "index").iterdir())
    (Path(settings.repository) / "index" / foreign.name).write_bytes(foreign.read_bytes())
    problems = open_repository(settings).index(reload=True).problems
    assert len(problems) == 1 and "failed authentication" in problems[0]


def test_edited_config_fails_authentication(settings, backed_up) -> None:
    config_path = Path(settings.repository) / "config.json"
    envelope = json.loads(config_path.read_text())
    data = bytearray(__import__("base64").b64decode(envelope["data"]))
    data[20] ^= 1
    envelope["data"] = __import__("base64").b64encode(bytes(data)).decode()
    config_path.write_text(json.dumps(envelope))
    with pytest.raises(AuthenticationFailed, match="repository config"):
        list_backups(settings)


def test_config_downgraded_to_unencrypted_is_refused(settings, backed_up) -> None:
    repository = open_repository(settings)
    from backup.manifest import seal

    body = {key: value for key, value in repository.config.to_body().items() if key != "encryption"}
    (Path(settings.repository) / "config.json").write_bytes(seal(body, kind="config"))
    with pytest.raises(ConfigError, match="not encrypted"):
        list_backups(settings)
    plain_settings = settings_from_mapping({"include": ["*.db"]}, root=settings.root)
    with pytest.raises(AuthenticationFailed, match="downgrade"):
        list_backups(plain_settings)


# -- several passphrases ---------------------------------------------------------------------------


def test_added_passphrase_opens_the_repository_and_is_listed(settings, backed_up, monkeypatch: pytest.MonkeyPatch) -> None:
    added = keys.add_key(settings, "second passphrase")
    listed = keys.list_keys(settings)
    assert {key.id for key in listed} == {added.id, open_repository(settings).keys.key_id}
    assert [key.current for key in listed].count(True) == 1
    monkeypatch.setenv("DBKEEP_PASSWORD", "second passphrase")
    assert [snapshot.id for snapshot in list_backups(settings).snapshots] == [backed_up.snapshot.id]
    assert open_repository(settings).keys.key_id == added.id


def test_changed_passphrase_replaces_the_old_one(settings, backed_up, monkeypatch: pytest.MonkeyPatch) -> None:
    keys.change_passphrase(settings, "brand new")
    with pytest.raises(WrongPassphrase):
        list_backups(settings)
    monkeypatch.setenv("DBKEEP_PASSWORD", "brand new")
    assert len(list_backups(settings).snapshots) == 1
    assert len(keys.list_keys(settings)) == 1


def test_removing_the_current_or_the_last_key_is_refused(settings, backed_up, monkeypatch: pytest.MonkeyPatch) -> None:
    current = open_repository(settings).keys.key_id
    with pytest.raises(UsageError, match="this passphrase opened"):
        keys.remove_key(settings, current)
    added = keys.add_key(settings, "other")
    monkeypatch.setenv("DBKEEP_PASSWORD", "other")
    keys.remove_key(settings, current)
    assert [key.id for key in keys.list_keys(settings)] == [added.id]
    with pytest.raises(UsageError):
        keys.remove_key(settings, added.id)
    monkeypatch.setenv("DBKEEP_PASSWORD", PASSPHRASE)
    with pytest.raises(WrongPassphrase):
        list_backups(settings)


def test_new_passphrase_is_asked_for_only_after_the_present_one_opened_the_repository(settings, backed_up, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []
    monkeypatch.setenv("DBKEEP_PASSWORD", "wrong")
    with pytest.raises(WrongPassphrase):
        keys.add_key(settings, lambda: asked.append("asked") or "never used")
    assert asked == []
    monkeypatch.setenv("DBKEEP_PASSWORD", PASSPHRASE)
    monkeypatch.setenv("DBKEEP_NEW_PASSWORD", "from the environment")
    added = keys.add_key(settings)
    monkeypatch.delenv("DBKEEP_NEW_PASSWORD")
    with pytest.raises(ConfigError, match="DBKEEP_NEW_PASSWORD"):
        keys.change_passphrase(settings, lambda: None)
    monkeypatch.setenv("DBKEEP_PASSWORD", "from the environment")
    assert open_repository(settings).keys.key_id == added.id


def test_key_is_removed_by_a_unique_prefix_and_an_ambiguous_one_is_refused(settings, backed_up, monkeypatch: pytest.MonkeyPatch) -> None:
    current = open_repository(settings).keys.key_id
    added = keys.add_key(settings, "other")
    ids = [current, added.id]
    while len({key_id[0] for key_id in ids}) == len(ids):  # at most 17 keys until two share a first digit
        ids.append(keys.add_key(settings, "more", kdf=crypto.KdfParams.fresh(n=crypto.MIN_N)).id)
    shared = next(key_id[0] for key_id in ids if sum(other[0] == key_id[0] for other in ids) > 1)
    with pytest.raises(UsageError, match="matches 2 keys"):
        keys.remove_key(settings, shared)
    with pytest.raises(UsageError, match="no key ''"):
        keys.remove_key(settings, "")  # an empty prefix names nothing
    monkeypatch.setenv("DBKEEP_PASSWORD", "other")
    unique = next(key_id for key_id in (current[:length] for length in range(1, 33)) if sum(other.startswith(key_id) for other in ids) == 1)
    assert keys.remove_key(settings, unique) == current
    assert current not in [key.id for key in keys.list_keys(settings)]


# -- unencrypted repositories keep today's format ------------------------------------------------------


def test_unencrypted_repository_keeps_the_plain_format(project: Path) -> None:
    settings = settings_from_mapping({"include": ["*.db"]}, root=project)
    report = create_backup(settings)
    root = Path(settings.repository)
    body = unseal((root / "config.json").read_bytes(), kind="config")
    assert sorted(body) == ["chunk_size", "compression", "compression_level", "id", "version"]
    assert not (root / "keys").exists()
    pack = next(path for path in (root / "packs").rglob("*") if path.is_file())
    assert pack.read_bytes().endswith(b"DBKPACK2")
    index_file = next((root / "index").iterdir())
    assert index_file.read_bytes()[:8] == b"DBKINDX2"  # unsealed: the index file as an unencrypted repository writes it
    assert json.loads((root / "snapshots" / f"{report.snapshot.id}.json").read_bytes())["format"] == "dbkeep-snapshot"
    repository = Repository.open(LocalStorage(root))
    chunk_ids = list(repository.chunk_ids_of(report.snapshot.files[0].chunk_lists, levels=report.snapshot.files[0].chunk_list_levels))
    assert all(hashlib.sha256(repository.read_chunk(chunk_id)).hexdigest() == chunk_id for chunk_id in chunk_ids)


def test_encryption_setting_on_an_existing_plain_repository_is_refused(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    create_backup(settings_from_mapping({"include": ["*.db"]}, root=project))
    monkeypatch.setenv("DBKEEP_PASSWORD", PASSPHRASE)
    encrypted = settings_from_mapping({"include": ["*.db"], "encryption": "aes-256-gcm"}, root=project)
    with pytest.raises(ConfigError, match="chosen when a repository is created"):
        create_backup(encrypted)


def test_frames_swapped_inside_a_pack_fail_the_keyed_id_check(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Raw frames of exactly FRAME_TARGET_BYTES: a file of three of them gives two equal frames to swap.
    (project / "big.db").write_bytes(random.Random(7).randbytes(3 * FRAME_TARGET_BYTES + 4096))
    monkeypatch.setenv("DBKEEP_PASSWORD", PASSPHRASE)
    settings = settings_from_mapping({"encryption": "aes-256-gcm", "include": ["big.db"], "compression_level": 0}, root=project)
    snapshot = create_backup(settings).snapshot
    repository = open_repository(settings)
    entries = sorted({location.entry.frame_offset: location for location in repository.index().locations.values()}.values(), key=lambda l: l.entry.frame_offset)
    first, second = entries[0].entry, entries[1].entry
    assert first.frame_length == second.frame_length and entries[0].pack_id == entries[1].pack_id
    pack = next((Path(settings.repository) / "packs").rglob(entries[0].pack_id))
    data = bytearray(pack.read_bytes())
    a = bytes(data[first.frame_offset : first.frame_offset + first.frame_length])
    b = bytes(data[second.frame_offset : second.frame_offset + second.frame_length])
    data[first.frame_offset : first.frame_offset + first.frame_length] = b
    data[second.frame_offset : second.frame_offset + second.frame_length] = a
    pack.write_bytes(bytes(data))
    report = verify_backup(settings, read_data=True)
    assert any("keyed id" in problem.message for problem in report.problems)
    with pytest.raises(VerificationFailed, match="keyed id"):
        restore_backup(settings, snapshot.id, target=project.parent / "restored", force=True)


def test_index_of_an_encrypted_repository_can_be_rebuilt_from_its_packs(settings, backed_up) -> None:
    repository = open_repository(settings)
    before = dict(repository.index().locations)
    for path in (Path(settings.repository) / "index").iterdir():
        path.unlink()
    packs, problems = repository.rebuild_index()
    assert packs >= 1 and problems == []
    assert open_repository(settings).index().locations == before
    assert verify_backup(settings, read_data=True).ok
