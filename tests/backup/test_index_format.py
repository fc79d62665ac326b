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
