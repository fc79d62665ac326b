"""docs/format.md is enough: its shell procedure recovers a database, and its encrypted layout reads a snapshot."""

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
@pytest.mark.parametrize(("rows", "levels"), [(3000, 1), (16000, 2)], ids=["one-level-chunk-lists", "two-level-chunk-list-tree"])
def test_documented_shell_procedure_recovers_the_database_byte_for_byte(tmp_path, make_settings, rows, levels):
    root = tmp_path / "project"
    database = make_database(root / "app.db", rows=rows, blob_size=400)
    report = create_backup(make_settings(root))
    assert report.snapshot.files[0].chunk_list_levels == levels
    lines = _recovery_block().splitlines()
    assert lines[0].startswith("REPO=")
    lines[0] = f"REPO={root / '.backups'} SNAP={report.snapshot.id} FILE=app.db OUT=recovered.db"

    completed = subprocess.run(["bash", "-c", "\n".join(lines)], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    assert completed.returncode == 0, completed.stderr
    recorded, recovered = completed.stdout.split()
    assert recorded == recovered == report.snapshot.files[0].sha256
    assert logical_dump_digest(tmp_path / "recovered.db") == logical_dump_digest(database)


def test_documented_encrypted_layout_is_enough_to_read_a_snapshot(tmp_path, make_settings, monkeypatch):
    """A reader written from docs/format.md ("Encrypted repositories") alone, with standard primitives."""
    pytest.importorskip("cryptography")
    import base64
    import hashlib
    import hmac
    import json
    import struct

    import zstandard
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    root = tmp_path / "project"
    database = make_database(root / "app.db", rows=3000)
    monkeypatch.setenv("DBKEEP_PASSWORD", "documented passphrase")
    report = create_backup(make_settings(root, encryption="aes-256-gcm"))
    repo = root / ".backups"

    def aad(kind: str, repo_id: str, name: str = "") -> bytes:
        return b"\x00".join((b"dbkeep", kind.encode(), repo_id.encode(), name.encode()))

    def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
        return AESGCM(key).decrypt(sealed[:12], sealed[12:], associated)

    envelope = json.loads((repo / "config.json").read_text())
    repo_id = envelope["id"]
    [key_path] = list((repo / "keys").iterdir())
    key = json.loads(key_path.read_text())
    kdf = key["kdf"]
    kek = hashlib.scrypt(b"documented passphrase", salt=base64.b64decode(kdf["salt"]), n=kdf["n"], r=kdf["r"], p=kdf["p"], dklen=32, maxmem=2**30)
    secret = open_sealed(kek, base64.b64decode(key["wrapped"]), aad("key", repo_id, "\x00".join((key["id"], key["created"], key["host"], key["user"]))))
    object_key, id_key = (HKDF(algorithm=hashes.SHA256(), length=32, salt=repo_id.encode(), info=info).derive(secret) for info in (b"dbkeep aes-256-gcm object key", b"dbkeep hmac-sha256 chunk id key"))
    config = json.loads(open_sealed(object_key, base64.b64decode(envelope["data"]), aad("config", repo_id)))
    assert config["body"]["encryption"] == "aes-256-gcm" and config["body"]["id"] == repo_id

    def open_object(path: Path, associated: bytes) -> bytes:
        data = path.read_bytes()
        assert data[:8] == b"DBKEOBJ1"
        return open_sealed(object_key, data[8:], associated)

    locations = {}
    for index_path in (repo / "index").iterdir():
        assert hashlib.sha256(index_path.read_bytes()).hexdigest() == index_path.name
        index = open_object(index_path, aad("index", repo_id))
        assert index[:8] == b"DBKINDX2"
        for row in struct.iter_unpack("<32sQ32sQIIIB", zstandard.ZstdDecompressor().decompress(index[8:])):
            pack_id, _pack_size, chunk_id, *location = row
            locations[chunk_id.hex()] = (pack_id.hex(), *location)
    manifest = json.loads(open_object(repo / "snapshots" / f"{report.snapshot.id}.json", aad("snapshot", repo_id, report.snapshot.id)))

    def chunk(chunk_id: str) -> bytes:
        pack_id, frame_offset, frame_length, inner, length, compression = locations[chunk_id]
        with open(repo / "packs" / pack_id[:2] / pack_id, "rb") as handle:
            handle.seek(frame_offset)
            frame = open_sealed(object_key, handle.read(frame_length), aad("frame", repo_id))
        data = (zstandard.ZstdDecompressor().decompress(frame) if compression == 1 else frame)[inner : inner + length]
        assert hmac.new(id_key, data, hashlib.sha256).hexdigest() == chunk_id
        return data

    [entry] = manifest["body"]["files"]
    ids = [chunk(list_id) for list_id in entry["chunk_lists"]]
    content = b"".join(chunk(raw[i : i + 32].hex()) for raw in ids for i in range(0, len(raw), 32))
    assert hashlib.sha256(content).hexdigest() == entry["sha256"] == report.snapshot.files[0].sha256
    recovered = tmp_path / "recovered.db"
    recovered.write_bytes(content)
    assert logical_dump_digest(recovered) == logical_dump_digest(database)

    pack_path = next(path for path in (repo / "packs").rglob("*") if path.is_file())
    data = pack_path.read_bytes()
    header_length, magic = struct.unpack("<I8s", data[-12:])
    entries = open_sealed(object_key, data[-12 - header_length : -12], aad("pack-header", repo_id))
    assert magic == b"DBKPACKE" and len(entries) % 53 == 0 and hashlib.sha256(data).hexdigest() == pack_path.name
