"""The local copy of the merged index: used only when it is exactly the index files' content.

The copy saves a backup or restore from reading and sorting every index file.
These tests try to make it lie: it must answer as the files do after many
backups, be refused when damaged, cut short or stale, never stand in for the
files in verify, and never exist for an encrypted repository.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from pathlib import Path

import pytest

from backup import create_backup, restore_backup, verify_backup
from backup import indexcache
from backup.operations import open_repository
from backup.chunk_index import ROW, Index
from backup.errors import StorageError
from backup.repository import Repository
from backup.settings import settings_from_mapping
from backup.storage import LocalStorage
from tests.dbhelpers import make_database


def _change(database: Path, seed: int) -> None:
    generator = random.Random(seed)
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        for _ in range(40):
            connection.execute("UPDATE events SET payload = ? WHERE id = ?", (generator.randbytes(300), generator.randint(1, 3000)))
        connection.execute("INSERT INTO events(label, payload) VALUES ('new', ?)", (generator.randbytes(5000),))


@pytest.fixture
def backed_up(tmp_path: Path, make_settings):
    """A project with five backups of a changing database: five index files."""
    root = tmp_path / "project"
    database = make_database(root / "app.db", rows=3000, journal_mode="wal")
    settings = make_settings(root)
    for round_number in range(5):
        create_backup(settings)
        _change(database, round_number)
    return settings


def _locations(index) -> dict[str, set[tuple[str, int, int]]]:
    found: dict[str, set[tuple[str, int, int]]] = {}
    for location in index.every_location():
        found.setdefault(location.entry.chunk_id, set()).add((location.pack_id, location.entry.frame_offset, location.entry.offset_in_frame))
    return found


def _files_index(settings):
    return Repository.open(LocalStorage(settings.repository)).index()


def _cached_index(settings):
    repository = open_repository(settings)
    names = [info.name for info in repository.storage.list("index")]
    return indexcache.load(repository.index_cache, names)


def test_the_copy_a_backup_leaves_answers_every_lookup_as_the_index_files_do(backed_up) -> None:
    from_files = _files_index(backed_up)
    cached = _cached_index(backed_up)
    assert cached is not None, "the last backup left no usable copy"
    assert len(from_files.files) == 5 and sorted(cached.files) == sorted(from_files.files)
    assert cached.pack_sizes == from_files.pack_sizes
    assert _locations(cached) == _locations(from_files)
    generator = random.Random(7)
    asked = [bytes.fromhex(chunk_id) for chunk_id in _locations(from_files)] + [generator.randbytes(32) for _ in range(200)]
    packs = {bytes.fromhex(pack_id) for pack_id in from_files.pack_sizes}
    assert cached.held_flags(asked, packs) == from_files.held_flags(asked, packs)


@pytest.mark.parametrize("damage", ["flip a row byte", "flip the key", "flip the checksum", "cut short", "append a byte", "empty"])
def test_a_damaged_copy_is_not_used_and_the_index_files_are_read(backed_up, damage: str) -> None:
    path = indexcache.cache_path(open_repository(backed_up).config.id)
    data = bytearray(path.read_bytes())
    if damage == "flip a row byte":
        data[len(data) // 2] ^= 0x01
    elif damage == "flip the key":
        data[len(indexcache.MAGIC) + 3] ^= 0x80
    elif damage == "flip the checksum":
        data[-1] ^= 0x01
    elif damage == "cut short":
        del data[-100:]
    elif damage == "append a byte":
        data.append(0)
    else:
        data.clear()
    path.write_bytes(bytes(data))
    assert _cached_index(backed_up) is None
    repository = open_repository(backed_up)
    assert _locations(repository.index()) == _locations(_files_index(backed_up))
    assert _cached_index(backed_up) is not None, "reading the index files wrote a good copy again"


def test_a_copy_made_from_other_index_files_is_not_used(backed_up) -> None:
    repository = open_repository(backed_up)
    names = [info.name for info in repository.storage.list("index")]
    assert indexcache.load(repository.index_cache, names) is not None
    assert indexcache.load(repository.index_cache, names[:-1]) is None
    assert indexcache.load(repository.index_cache, [*names, "index/" + "0" * 64]) is None


def _plant_copy_without_the_last_pack(settings) -> str:
    """Save a copy keyed to the current index files that lacks one pack's rows; returns that pack's id."""
    repository = open_repository(settings)
    index = _files_index(settings)
    dropped = index.held_state()[0][-40:-8].hex()
    rows = index.row_bytes(range(len(index)))
    smaller = Index()
    smaller.add_rows(b"".join(rows[start : start + ROW.size] for start in range(0, len(rows), ROW.size) if rows[start : start + 32].hex() != dropped))
    smaller.files = list(index.files)
    indexcache.save(smaller, repository.index_cache)
    assert dropped not in indexcache.load(repository.index_cache, index.files).pack_sizes
    return dropped


def test_a_backup_trusts_the_copy_but_verify_reads_the_index_files(backed_up) -> None:
    """A copy lacking a pack makes a backup store that pack's chunks again; verify, reading the files, finds all well."""
    _plant_copy_without_the_last_pack(backed_up)
    report = create_backup(backed_up)
    assert report.stats.new_chunks > 0, "the backup did not use the copy"
    verified = verify_backup(backed_up)
    assert verified.ok, [problem.message for problem in verified.problems]


def test_verify_reads_the_index_files_and_finds_one_the_copy_would_hide(backed_up) -> None:
    index_file = sorted((backed_up.repository / "index").iterdir())[0]
    damaged = bytearray(index_file.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    index_file.chmod(0o600)
    index_file.write_bytes(bytes(damaged))
    assert _cached_index(backed_up) is not None, "the copy still matches the file names"
    report = verify_backup(backed_up)
    assert not report.ok and any(problem.kind == "corrupt-index" for problem in report.problems)


def test_rows_of_a_writer_that_failed_before_its_index_file_never_reach_the_copy(backed_up, monkeypatch: pytest.MonkeyPatch) -> None:
    repository = open_repository(backed_up)
    repository.index()
    lost = b"published, but no index file lists me" * 100
    write_index_file = Repository._write_index_file

    def fail(self, data: bytes) -> str:
        raise StorageError("the index file could not be written")

    monkeypatch.setattr(Repository, "_write_index_file", fail)
    with pytest.raises(StorageError), repository.writer() as failed:
        failed.add(failed.chunk_id(lost), lost)
        failed.finish()
    monkeypatch.setattr(Repository, "_write_index_file", write_index_file)
    kept = b"written by the next writer" * 100
    with repository.writer() as writer:
        writer.add(writer.chunk_id(kept), kept)
        writer.finish()
    cached = _cached_index(backed_up)
    assert cached is not None
    every_pack = {bytes.fromhex(pack_id) for pack_id in cached.pack_sizes}
    assert cached.held_flags([bytes.fromhex(repository.chunk_id(lost)), bytes.fromhex(repository.chunk_id(kept))], every_pack) == [False, True]
    assert _locations(cached) == _locations(_files_index(backed_up))


def test_a_cache_folder_others_may_write_into_is_not_used(index_cache_directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared = index_cache_directory / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(indexcache.CACHE_ENV, str(shared))
    assert indexcache.cache_path("0123abcd") is None
    shared.chmod(0o700)
    assert indexcache.cache_path("0123abcd") == shared / "0123abcd" / "index"


def test_a_backup_with_a_copy_still_stores_again_what_a_lost_pack_held(backed_up, tmp_path: Path) -> None:
    assert _cached_index(backed_up) is not None
    for pack in (backed_up.repository / "packs").rglob("*"):
        if pack.is_file():
            pack.unlink()
            break
    create_backup(backed_up)
    target = tmp_path / "restored"
    restore_backup(backed_up, "latest", target=target)
    with contextlib.closing(sqlite3.connect(target / "app.db")) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_an_encrypted_repository_keeps_no_copy(tmp_path: Path, index_cache_directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "project"
    make_database(root / "app.db", rows=500)
    monkeypatch.setenv("DBKEEP_PASSWORD", "correct horse battery staple")
    settings = settings_from_mapping({"encryption": "aes-256-gcm", "include": ["*.db"]}, root=root)
    create_backup(settings)
    create_backup(settings)
    assert list(index_cache_directory.rglob("index")) == []


def test_an_empty_cache_setting_turns_the_copy_off(tmp_path: Path, make_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(indexcache.CACHE_ENV, "")
    root = tmp_path / "project"
    make_database(root / "app.db", rows=500)
    settings = make_settings(root)
    create_backup(settings)
    assert open_repository(settings).index_cache is None


def test_a_backup_after_an_index_file_was_damaged_stores_its_chunks_again_despite_the_copy(backed_up) -> None:
    """The copy still lists the damaged file's rows; a new backup must not lean on rows no reader can find."""
    first, second = sorted((backed_up.repository / "index").iterdir())[:2]
    first.chmod(0o600)
    first.write_bytes(second.read_bytes())  # hashes to the other file's name now
    latest = create_backup(backed_up).snapshot.id
    report = verify_backup(backed_up)
    assert any(problem.kind == "corrupt-index" for problem in report.problems)
    assert latest not in report.affected_snapshots, [problem.message for problem in report.problems]


def test_a_large_index_with_sorted_and_waiting_rows_comes_back_whole(tmp_path: Path) -> None:
    """50,000 rows: most sorted into the prefix arrays, the last packs still waiting; some ids share a prefix."""
    from backup.chunk_index import Index
    from backup.pack import PackEntry

    generator = random.Random(3)
    index = Index()
    shared_prefix = generator.randbytes(8)
    for pack_number in range(52):
        entries = []
        for position in range(1000):
            raw = (shared_prefix + generator.randbytes(24)) if position % 97 == 0 else generator.randbytes(32)
            entries.append(PackEntry(chunk_id=raw.hex(), frame_offset=position * 10, frame_length=10, offset_in_frame=0, length=4096, compression=1))
        index.add_pack(generator.randbytes(32).hex(), 1_000_000 + pack_number, entries)
    assert 0 < len(index.held_state()[2]) < len(index), "the index holds both sorted and waiting rows"
    index.files = [f"index/{number:064x}" for number in range(3)]
    path = tmp_path / "index"
    indexcache.save(index, path)
    loaded = indexcache.load(path, index.files)
    assert loaded is not None
    assert loaded.pack_sizes == index.pack_sizes and _locations(loaded) == _locations(index)
    asked = [bytes.fromhex(chunk_id) for chunk_id in _locations(index)] + [shared_prefix + generator.randbytes(24) for _ in range(100)]
    packs = set(generator.sample(sorted(bytes.fromhex(pack_id) for pack_id in index.pack_sizes), 20))
    assert loaded.held_flags(asked, packs) == index.held_flags(asked, packs)
    assert loaded.first_rows(b"".join(asked)) == index.first_rows(b"".join(asked))
