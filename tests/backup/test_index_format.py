"""Index files: version 2 (zstd-compressed rows) is written, version 1 (JSON) is still read."""

from __future__ import annotations

import hashlib
import json

import pytest

from backup import create_backup, restore_backup, verify_backup
from backup.repository import INDEX_MAGIC, Repository, decode_index, encode_index
from backup.storage import LocalStorage
from tests.dbhelpers import make_database

PASSPHRASE = "index format passphrase"


def _as_version_1(repository: Repository) -> None:
    """Rewrite every index file as dbkeep wrote it before version 2 (JSON), sealed when encrypted."""
    root = repository.storage.root
    for path in sorted((root / "index").iterdir()):
        packs = repository._decode_index(path.read_bytes(), f"index/{path.name}")
        body = {
            "format": "dbkeep-index",
            "version": 1,
            "packs": [{"id": pack_id, "size": size, "chunks": [entry.to_row() for entry in entries]} for pack_id, (size, entries) in sorted(packs.items())],
        }
        data = json.dumps(body, separators=(",", ":")).encode() + b"\n"
        if repository.keys is not None:
            data = repository.keys.seal_object(data, repository._aad("index"))
        path.unlink()
        (root / "index" / hashlib.sha256(data).hexdigest()).write_bytes(data)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_repository_with_json_index_files_still_verifies_restores_and_takes_backups(tmp_path, make_settings, monkeypatch, encrypted):
    if encrypted:
        pytest.importorskip("cryptography")
        monkeypatch.setenv("DBKEEP_PASSWORD", PASSPHRASE)
    root = tmp_path / "project"
    make_database(root / "app.db", rows=3000)
    settings = make_settings(root, **({"encryption": "aes-256-gcm"} if encrypted else {}))
    first = create_backup(settings)
    repository = Repository.open(LocalStorage(settings.repository), passphrase=lambda: PASSPHRASE)
    _as_version_1(repository)

    make_database(root / "app.db", rows=3500)
    second = create_backup(settings)

    assert second.stats.reused_chunks > 0, "chunks listed only in the JSON index were found and not stored again"
    index_files = sorted((settings.repository / "index").iterdir())
    assert len(index_files) == 2
    opened = Repository.open(LocalStorage(settings.repository), passphrase=lambda: PASSPHRASE)
    plaintexts = [opened.keys.open_object(path.read_bytes(), opened._aad("index"), path.name) if encrypted else path.read_bytes() for path in index_files]
    assert sorted(text[:8] == INDEX_MAGIC for text in plaintexts) == [False, True], "one JSON file kept, one version 2 file added"
    assert verify_backup(settings, read_data=True).ok
    restore_backup(settings, first.snapshot.id, target=tmp_path / "first", force=True)
    restore_backup(settings, second.snapshot.id, target=tmp_path / "second", force=True)
    for snapshot, target in ((first.snapshot, tmp_path / "first"), (second.snapshot, tmp_path / "second")):
        assert hashlib.sha256((target / "app.db").read_bytes()).hexdigest() == snapshot.files[0].sha256


def test_index_file_bytes_depend_only_on_the_packs_listed(tmp_path, make_settings):
    root = tmp_path / "project"
    make_database(root / "app.db", rows=3000)
    settings = make_settings(root)
    create_backup(settings)
    [path] = (settings.repository / "index").iterdir()
    data = path.read_bytes()
    packs = decode_index(data, f"index/{path.name}")
    shuffled = {pack_id: (size, list(reversed(entries))) for pack_id, (size, entries) in reversed(list(packs.items()))}

    assert data.startswith(INDEX_MAGIC)
    assert encode_index(shuffled) == data
    assert hashlib.sha256(data).hexdigest() == path.name


def test_a_pack_stored_again_is_indexed_with_its_real_size_whatever_a_damaged_file_says(tmp_path):
    # The in-memory index keeps one size per pack, the first listed. A pack lost and
    # stored again under the same id must go into the new index file with the size
    # it was written with, not one a damaged (but hash-named) index file claims.
    import zstandard

    from backup.chunk_index import ROW
    from backup.repository import decode_index_rows

    storage = LocalStorage(tmp_path / "repo")
    repository = Repository.init(storage, chunk_size=4096, compression_level=0)
    chunks = [bytes([number]) * 4096 for number in range(20)]
    with repository.writer() as writer:
        writer.add_chunks(chunks)
        writer.finish()
    [(pack_id, size)] = repository.index().pack_sizes.items()
    for path in [*(tmp_path / "repo" / "packs").rglob(pack_id), *(tmp_path / "repo" / "index").iterdir()]:
        path.unlink()
    forged = INDEX_MAGIC + zstandard.ZstdCompressor(write_content_size=True).compress(ROW.pack(bytes.fromhex(pack_id), size + 7, hashlib.sha256(b"x").digest(), 0, 10, 0, 10, 0))
    forged_name = hashlib.sha256(forged).hexdigest()
    (tmp_path / "repo" / "index" / forged_name).write_bytes(forged)

    repository = Repository.open(storage)
    with repository.writer() as writer:
        writer.add_chunks(chunks)  # the same frames: the same pack id again
        writer.finish()

    assert [info.size for info in storage.list("packs")] == [size]
    [new_file] = [info.name for info in storage.list("index") if not info.name.endswith(forged_name)]
    rows = decode_index_rows(storage.get(new_file), new_file)
    assert {int.from_bytes(rows[start + 32 : start + 40], "little") for start in range(0, len(rows), ROW.size)} == {size}
    (tmp_path / "repo" / "index" / forged_name).unlink()
    assert Repository.open(storage).index().pack_sizes == {pack_id: size}
