"""T10: hostile manifests, index files, pack headers, frames, config and lock records.

Two layers. Property tests (hypothesis) feed mutated but correctly sealed
documents (so the parser's deeper checks are reached, not just the checksum),
raw garbage, duplicate keys, deep nesting, huge numbers, traversal paths and ids
that are not hex to every parser of repository files: each must return a valid
record or raise its CorruptData error, never anything else. Then end-to-end
runs in a child process with ``RLIMIT_AS`` (bounded memory) and an audit hook
(``sys.addaudithook``) logging every file it opens or lists: verify, list and
restore over a repository holding hostile files (a traversal path, a symlink to
a file outside, a 10 GiB sparse manifest, a pack the index claims is huge, a
decompression bomb) must end in a one-line BackupError, stay within memory, and
never open anything outside the repository and the restore target.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import struct
from functools import cache
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import backup
import faultkit
from backup import pack as packformat
from backup.locking import LockRecord
from backup.manifest import Snapshot, seal, unseal
from backup.repository import INDEX_MAGIC, INDEX_ROW, RepositoryConfig, decode_index, encode_index, pack_name

EXAMPLES = int(os.environ.get("DBKEEP_FUZZ_EXAMPLES", 150))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture], print_blob=True)

HOSTILE_STRINGS = [
    "../../etc/passwd",
    "/etc/passwd",
    "a/../../b",
    "a\x00b",
    "",
    ".",
    "..",
    "x" * 5000,
    "G" * 64,
    "A" * 64,
    "20250101T000000Z-zzzz",
    "\ud800",
    "a\\..\\b",
]
HOSTILE_NUMBERS = [-1, 2**63, 2**200, 10**30, 1e308, -0.0, True, False]
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30) | st.sampled_from(HOSTILE_STRINGS) | st.sampled_from(HOSTILE_NUMBERS)
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4), max_leaves=12)


@cache
def _sample_repository() -> tuple[Path, dict, dict, bytes, dict]:
    """One small real repository: a manifest body, an index body, a pack and the config body."""
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="dbkeep-hostile-"))
    project = faultkit.build_project(directory, rows=30, plain_bytes=3000)
    snapshot_id = project.backup()
    repository = faultkit.open_repository(project)
    manifest = unseal((project.repository / "snapshots" / f"{snapshot_id}.json").read_bytes(), kind="snapshot")
    index_path = next((project.repository / "index").iterdir())
    index_body = json_index_body(decode_index(index_path.read_bytes(), f"index/{index_path.name}"))
    pack_id = next(iter(repository.index().pack_sizes))
    pack = (project.repository / pack_name(pack_id)).read_bytes()
    config = unseal((project.repository / "config.json").read_bytes(), kind="config")
    return directory, manifest, index_body, pack, config


def json_index_body(packs: dict[str, tuple[int, list[packformat.PackEntry]]]) -> dict:
    """The body of an index file of version 1 (JSON), as dbkeep wrote before version 2."""
    return {
        "format": "dbkeep-index",
        "version": 1,
        "packs": [{"id": pack_id, "size": size, "chunks": [entry.to_row() for entry in entries]} for pack_id, (size, entries) in sorted(packs.items())],
    }


def index_file(rows: bytes, *, content_size: bool = True) -> bytes:
    """An index file of version 2 around raw ``rows`` (which need not be valid)."""
    return INDEX_MAGIC + zstandard.ZstdCompressor(level=1, write_content_size=content_size).compress(rows)


def mutate(data: st.DataObject, document: object) -> object:
    """Replace, delete or add one value somewhere inside a JSON document."""
    document = copy.deepcopy(document)
    parent, key = None, None
    node = document
    while isinstance(node, (dict, list)) and node and data.draw(st.integers(0, 3)) > 0:
        parent, key = node, data.draw(st.sampled_from(sorted(node)) if isinstance(node, dict) else st.integers(0, len(node) - 1))
        node = node[key]
    if parent is None:
        return data.draw(json_values)
    action = data.draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if action == "replace":
        parent[key] = data.draw(json_values)
    elif action == "delete":
        del parent[key]
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=10))] = data.draw(json_values)
    else:
        parent.append(data.draw(json_values))
    return document


def seal_any(body: object, kind: str) -> bytes:
    """Sealed JSON as dbkeep writes it, or (for text no writer could encode) with a bogus seal."""
    if isinstance(body, dict):
        try:
            return seal(body, kind=kind)
        except (UnicodeEncodeError, ValueError):  # lone surrogates, infinities
            pass
    return json.dumps({"format": f"dbkeep-{kind}", "version": 1, "sha256": "0" * 64, "body": body}).encode()


def _expect(parse, allowed: type[Exception]) -> None:
    try:
        parse()
    except allowed:
        pass


@FUZZ
@given(data=st.data())
def test_mutated_sealed_manifests_parse_or_raise_corrupt_manifest(data) -> None:
    _directory, manifest, _index, _pack, _config = _sample_repository()
    sealed = seal_any(mutate(data, manifest), "snapshot")
    _expect(lambda: Snapshot.from_json(sealed, expected_id=manifest["id"]), backup.CorruptManifest)


@FUZZ
@given(raw=st.binary(max_size=2000))
@example(raw=b"[" * 200_000 + b"]" * 200_000)
@example(raw=b'{"format": "dbkeep-snapshot", "format": "x"}')
@example(raw=b'{"format": "dbkeep-snapshot", "version": 1, "sha256": "0", "body": {"a": NaN}}')
@example(raw=b"\xff\xfe\x00")
@example(raw=b'{"format":"dbkeep-snapshot","version":1,"sha256":"x","body":{"a":"\\ud800"}}')
def test_raw_garbage_manifests_raise_corrupt_manifest(raw: bytes) -> None:
    _expect(lambda: Snapshot.from_json(raw), backup.CorruptManifest)


@FUZZ
@given(data=st.data())
def test_sealed_manifests_with_hostile_file_paths_are_refused(data) -> None:
    _directory, manifest, _index, _pack, _config = _sample_repository()
    body = copy.deepcopy(manifest)
    path = data.draw(st.sampled_from(["../../outside/victim", "/etc/passwd", "a/../../b", "./a", "a//b", "a/", "a\x00", "a\\b", ".."]))
    body["files"][0]["path"] = path
    with pytest.raises(backup.CorruptManifest):
        Snapshot.from_json(seal(body, kind="snapshot"))


@FUZZ
@given(data=st.data())
def test_mutated_index_files_decode_or_raise_corrupt_index(data) -> None:
    _directory, _manifest, index, _pack, _config = _sample_repository()
    body = mutate(data, index)
    raw = json.dumps(body).encode()
    name = f"index/{hashlib.sha256(raw).hexdigest()}"
    _expect(lambda: decode_index(raw, name), backup.CorruptIndex)


@FUZZ
@given(raw=st.binary(max_size=3000))
@example(raw=b"[" * 100_000)
@example(raw=b'{"format":"dbkeep-index","version":1,"packs":[{"id":"../../x","size":1,"chunks":[]}]}')
def test_raw_garbage_index_files_raise_corrupt_index(raw: bytes) -> None:
    _expect(lambda: decode_index(raw, f"index/{hashlib.sha256(raw).hexdigest()}"), backup.CorruptIndex)


@FUZZ
@given(data=st.data())
def test_damaged_binary_index_files_decode_or_raise_corrupt_index(data) -> None:
    sample = _sample_index_bytes()
    rows = bytearray(zstandard.ZstdDecompressor().decompress(sample[len(INDEX_MAGIC) :]))
    where = data.draw(st.sampled_from(["rows", "stored"]))
    if where == "rows":
        # Damage below the compression, so the row checks themselves are reached.
        for _ in range(data.draw(st.integers(1, 6))):
            rows[data.draw(st.integers(0, len(rows) - 1))] = data.draw(st.integers(0, 255))
        cut = data.draw(st.integers(0, len(rows)))
        raw = index_file(bytes(rows[:cut] if data.draw(st.booleans()) else rows), content_size=data.draw(st.booleans()))
    else:
        stored = bytearray(sample)
        for _ in range(data.draw(st.integers(1, 6))):
            stored[data.draw(st.integers(0, len(stored) - 1))] = data.draw(st.integers(0, 255))
        raw = bytes(stored[: data.draw(st.integers(0, len(stored)))])
    _expect(lambda: decode_index(raw, f"index/{hashlib.sha256(raw).hexdigest()}"), backup.CorruptIndex)


@cache
def _sample_index_bytes() -> bytes:
    directory, _manifest, _index, _pack, _config = _sample_repository()
    return next(path for path in directory.rglob("*") if path.parent.name == "index" and path.is_file()).read_bytes()


@FUZZ
@given(raw=st.binary(max_size=3000))
@example(raw=b"")
@example(raw=b"\x28\xb5\x2f\xfd")
def test_raw_garbage_after_the_index_magic_raises_corrupt_index(raw: bytes) -> None:
    raw = INDEX_MAGIC + raw
    _expect(lambda: decode_index(raw, f"index/{hashlib.sha256(raw).hexdigest()}"), backup.CorruptIndex)


@pytest.mark.parametrize("content_size", [True, False], ids=["declared-size", "undeclared-size"])
def test_index_decompression_bomb_is_refused_before_it_is_expanded(content_size: bool) -> None:
    rows = bytes(INDEX_ROW.size * (64 * 1024 * 1024 // INDEX_ROW.size))
    raw = index_file(rows, content_size=content_size)
    assert len(raw) < 64 * 1024
    with pytest.raises(backup.CorruptIndex, match="claims|declare"):
        decode_index(raw, f"index/{hashlib.sha256(raw).hexdigest()}")


def test_index_giving_one_pack_two_sizes_is_refused() -> None:
    entry = packformat.PackEntry(chunk_id="cd" * 32, frame_offset=0, frame_length=10, offset_in_frame=0, length=10, compression=0)
    row = lambda size: INDEX_ROW.pack(b"\xab" * 32, size, b"\xcd" * 32, 0, 10, 0, 10, 0)  # noqa: E731
    raw = index_file(row(100) + row(101))
    with pytest.raises(backup.CorruptIndex, match="two sizes"):
        decode_index(raw, f"index/{hashlib.sha256(raw).hexdigest()}")
    good = index_file(row(100))
    assert decode_index(good, f"index/{hashlib.sha256(good).hexdigest()}") == {"ab" * 32: (100, [entry])}


@pytest.mark.parametrize("damage", ["row out of bounds", "pack given two sizes", "cut inside a row"])
def test_an_index_file_damaged_only_in_its_last_piece_adds_none_of_its_rows(tmp_path: Path, damage: str) -> None:
    # Index files are decompressed piece by piece into the in-memory index: the
    # damage must be found before the first piece is held, or the good pieces
    # of a damaged file would be used while the file is reported unusable.
    project = faultkit.build_project(tmp_path, rows=30, plain_bytes=3000)
    project.backup()
    pack_id = bytes.fromhex(next(iter(faultkit.open_repository(project).index().pack_sizes)))
    count = 3 * 8192 + 5  # more pieces than one (repository._PIECE_ROWS rows each)
    ids = [hashlib.sha256(b"forged %d" % number).digest() for number in range(count)]
    rows = bytearray(b"".join(INDEX_ROW.pack(pack_id, 4096, chunk_id, 0, 100, 0, 10, 1) for chunk_id in ids))
    last = len(rows) - INDEX_ROW.size
    if damage == "row out of bounds":
        rows[last:] = INDEX_ROW.pack(pack_id, 4096, ids[-1], 0, 100, 0, 10, 9)
    elif damage == "pack given two sizes":
        rows[last:] = INDEX_ROW.pack(pack_id, 4097, ids[-1], 0, 100, 0, 10, 1)
    else:
        del rows[-7:]
    raw = index_file(bytes(rows))
    name = hashlib.sha256(raw).hexdigest()
    (project.repository / "index" / name).write_bytes(raw)
    index = faultkit.open_repository(project).index()
    assert any(name in problem for problem in index.problems)
    assert not any(chunk_id.hex() in index for chunk_id in (ids[0], ids[8192], ids[-2]))
    assert not any("listed with other rows" in problem for problem in index.problems)


def _as_version_1_pack(pack: bytes) -> bytes:
    """The same pack as dbkeep wrote before version 2: entries uncompressed, then count and DBKPACK1."""
    entries = packformat.parse_pack(pack, "sample")
    (stored,) = struct.unpack_from("<I", pack, len(pack) - packformat.TRAILER.size)
    frames = pack[: len(pack) - packformat.TRAILER.size - stored]
    header = b"".join(packformat.ENTRY.pack(bytes.fromhex(e.chunk_id), e.frame_offset, e.frame_length, e.offset_in_frame, e.length, e.compression) for e in entries)
    return frames + header + packformat.TRAILER.pack(len(entries), packformat.MAGIC)


@FUZZ
@given(data=st.data())
def test_damaged_pack_headers_parse_or_raise_corrupt_data(data) -> None:
    _directory, _manifest, _index, pack, _config = _sample_repository()
    assert pack.endswith(packformat.MAGIC_COMPRESSED)
    if data.draw(st.booleans()):
        pack = _as_version_1_pack(pack)
        assert packformat.parse_pack(pack, "v1") == packformat.parse_pack(_sample_repository()[3], "v2")
    damaged = bytearray(pack)
    region = data.draw(st.sampled_from(["trailer", "header", "anywhere"]))
    start = {"trailer": len(pack) - packformat.TRAILER.size, "header": max(0, len(pack) - 200), "anywhere": 0}[region]
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(start, len(pack) - 1))
        damaged[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(damaged)))
    damaged = damaged[:cut] if data.draw(st.booleans()) else damaged
    _expect(lambda: packformat.parse_pack(bytes(damaged), "fuzzed"), backup.CorruptData)


@FUZZ
@given(count=st.integers(0, 2**32 - 1), tail=st.binary(max_size=200))
def test_pack_trailers_claiming_any_entry_count_are_bounded(count: int, tail: bytes) -> None:
    data = tail + packformat.TRAILER.pack(count, packformat.MAGIC)
    _expect(lambda: packformat.parse_pack(data, "fuzzed"), backup.CorruptData)


@FUZZ
@given(length=st.integers(0, 2**32 - 1), tail=st.binary(max_size=200))
def test_compressed_pack_trailers_claiming_any_header_length_are_bounded(length: int, tail: bytes) -> None:
    data = tail + packformat.TRAILER.pack(length, packformat.MAGIC_COMPRESSED)
    _expect(lambda: packformat.parse_pack(data, "fuzzed"), backup.CorruptData)


@pytest.mark.parametrize("content_size", [True, False], ids=["declared-size", "undeclared-size"])
def test_pack_header_decompression_bomb_is_refused_before_it_is_expanded(content_size: bool) -> None:
    entries = bytes(packformat.ENTRY.size * (packformat.MAX_FRAME_BYTES // packformat.ENTRY.size))
    header = zstandard.ZstdCompressor(level=1, write_content_size=content_size).compress(entries)
    data = header + packformat.TRAILER.pack(len(header), packformat.MAGIC_COMPRESSED)
    assert len(data) < 64 * 1024
    with pytest.raises(backup.CorruptPack, match="declares"):
        packformat.parse_pack(data, "bomb")


@FUZZ
@given(raw=st.binary(max_size=4000))
def test_garbage_frames_decompress_within_bounds_or_raise_corrupt_chunk(raw: bytes) -> None:
    try:
        output = packformat.decompress_frame(raw, packformat.COMPRESSION_ZSTD)
    except backup.CorruptChunk:
        return
    assert len(output) <= packformat.MAX_FRAME_BYTES


@cache
def decompression_bomb(gibibytes: int = 1) -> bytes:
    """A zstd frame of a few KiB that decompresses to ``gibibytes`` GiB of zeros."""
    output = io.BytesIO()
    with zstandard.ZstdCompressor(level=1, write_content_size=False).stream_writer(output, closefd=False) as writer:
        zeros = bytes(1 << 24)
        for _ in range(64 * gibibytes):
            writer.write(zeros)
    return output.getvalue()


def test_decompression_bomb_stops_at_the_frame_limit() -> None:
    with pytest.raises(backup.CorruptChunk, match="more than"):
        packformat.decompress_frame(decompression_bomb(), packformat.COMPRESSION_ZSTD)


def test_frame_declaring_more_than_the_limit_is_refused_before_it_is_expanded() -> None:
    frame = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(bytes(packformat.MAX_FRAME_BYTES + 1))
    with pytest.raises(backup.CorruptChunk, match="more than"):
        packformat.decompress_frame(frame, packformat.COMPRESSION_ZSTD)


@pytest.mark.parametrize("claim", [1000, 200_000], ids=["declares-less", "declares-more"])
def test_frame_declaring_a_wrong_size_raises_corrupt_chunk(claim: int) -> None:
    frame = bytearray(zstandard.ZstdCompressor(level=1, write_content_size=True).compress(os.urandom(1000) + bytes(100_000)))
    assert frame[4] == 0xA0  # single segment, 4-byte content size at offset 5
    frame[5:9] = struct.pack("<I", claim)
    with pytest.raises(backup.CorruptChunk, match="does not decompress"):
        packformat.decompress_frame(bytes(frame), packformat.COMPRESSION_ZSTD)


@FUZZ
@given(data=st.data())
def test_mutated_configs_load_or_raise_corrupt_manifest(data) -> None:
    _directory, _manifest, _index, _pack, config = _sample_repository()
    sealed = seal_any(mutate(data, config), "config")
    _expect(lambda: RepositoryConfig.from_body(unseal(sealed, kind="config")), backup.CorruptManifest)


@FUZZ
@given(raw=st.binary(max_size=500) | json_values.map(lambda value: json.dumps(value).encode()))
@example(raw=b"[" * 100_000)
def test_lock_records_parse_or_count_as_garbled(raw: bytes) -> None:
    record = LockRecord.from_json(raw)
    assert record is None or 0 < record.pid < 2**31


def test_fuzzers_can_fail_on_a_parser_that_raises_the_wrong_error() -> None:
    """Negative control: _expect lets an unexpected exception through."""

    def careless() -> None:
        raise KeyError("files")

    with pytest.raises(KeyError):
        _expect(careless, backup.CorruptManifest)
    assert decode_index(encode_index({}), f"index/{hashlib.sha256(encode_index({})).hexdigest()}") == {}


# -- end to end: a child process with bounded memory and an audit hook ---------------------

MEMORY_LIMIT = 384 * 1024 * 1024
HUGE = 10 * 1024**3


def _victim_copy(outside: Path, source: Path) -> Path:
    victim = outside / "victim"
    victim.write_bytes(source.read_bytes())
    return victim


def _symlink_out(path: Path, outside: Path) -> Path:
    victim = _victim_copy(outside, path)
    path.unlink()
    path.symlink_to(victim)
    return victim


def _sparse(path: Path, size: int) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)


def _bomb_pack(project: faultkit.Project) -> None:
    """Make every location of one chunk of the newest snapshot a decompression bomb."""
    repository = faultkit.open_repository(project)
    snapshot = repository.load_snapshot(repository.snapshot_ids()[-1])
    chunk_id = next(repository.chunk_ids_of(snapshot.files[0].chunk_lists, levels=snapshot.files[0].chunk_list_levels))
    bomb = decompression_bomb()
    entry = packformat.PackEntry(chunk_id=chunk_id, frame_offset=0, frame_length=len(bomb), offset_in_frame=0, length=4096, compression=packformat.COMPRESSION_ZSTD)
    frame = packformat.Frame(data=bomb, compression=packformat.COMPRESSION_ZSTD, chunks=((chunk_id, 0, 4096),))
    data = bomb + packformat.encode_header(packformat.encode_entries([(0, frame)]))
    pack_id = hashlib.sha256(data).hexdigest()
    (project.repository / pack_name(pack_id)).parent.mkdir(exist_ok=True)
    (project.repository / pack_name(pack_id)).write_bytes(data)
    original = repository.index().locations[chunk_id].pack_id
    (project.repository / pack_name(original)).unlink()
    index = encode_index({pack_id: (len(data), [entry])})
    (project.repository / "index" / hashlib.sha256(index).hexdigest()).write_bytes(index)


def _huge_pack_in_index(project: faultkit.Project, *, version: int) -> None:
    pack_id = "ab" * 32
    (project.repository / "packs" / "ab").mkdir(exist_ok=True)
    _sparse(project.repository / pack_name(pack_id), HUGE)
    if version == 1:
        index = json.dumps(json_index_body({pack_id: (HUGE, [])})).encode()
    else:
        index = index_file(INDEX_ROW.pack(bytes.fromhex(pack_id), HUGE, b"\xcd" * 32, 0, 4096, 0, 4096, 0))
    (project.repository / "index" / hashlib.sha256(index).hexdigest()).write_bytes(index)


def _index_bomb(project: faultkit.Project) -> None:
    """An index file of a few KiB whose rows would decompress to 1 GiB."""
    index = INDEX_MAGIC + decompression_bomb()
    (project.repository / "index" / hashlib.sha256(index).hexdigest()).write_bytes(index)


def _traversal_manifest(project: faultkit.Project) -> None:
    path = sorted((project.repository / "snapshots").iterdir())[-1]
    body = unseal(path.read_bytes(), kind="snapshot")
    body["files"][0]["path"] = "../../outside/victim"
    path.write_bytes(seal(body, kind="snapshot"))


def _newest(project: faultkit.Project, folder: str) -> Path:
    return sorted(path for path in (project.repository / folder).rglob("*") if path.is_file())[-1]


HOSTILE_REPOSITORIES = {
    "manifest-with-traversal-path": lambda project, outside: _traversal_manifest(project),
    "manifest-symlinked-outside": lambda project, outside: _symlink_out(_newest(project, "snapshots"), outside),
    "pack-symlinked-outside": lambda project, outside: _symlink_out(_newest(project, "packs"), outside),
    "index-symlinked-outside": lambda project, outside: _symlink_out(_newest(project, "index"), outside),
    "config-symlinked-outside": lambda project, outside: _symlink_out(project.repository / "config.json", outside),
    "sparse-10-GiB-manifest": lambda project, outside: _sparse(_newest(project, "snapshots"), HUGE),
    "sparse-10-GiB-index-file": lambda project, outside: _sparse(_newest(project, "index"), HUGE),
    "index-claiming-a-10-GiB-pack": lambda project, outside: _huge_pack_in_index(project, version=2),
    "json-index-claiming-a-10-GiB-pack": lambda project, outside: _huge_pack_in_index(project, version=1),
    "index-decompression-bomb": lambda project, outside: _index_bomb(project),
    "decompression-bomb-chunk": lambda project, outside: _bomb_pack(project),
    "deeply-nested-manifest": lambda project, outside: _newest(project, "snapshots").write_bytes(b"[" * 500_000 + b"]" * 500_000),
}


def _outside_the_roots(events: list, tmp_path: Path, roots: list[Path]) -> list[str]:
    """Audited file accesses below the test's folder that do not land inside one of ``roots``.

    The hook sees the name a process opened; a symlink planted under that name
    is resolved here (the links are still in place), so a read that followed
    one out of the repository counts as outside.
    """
    found = []
    for event, target, *flags in events:
        named = Path(target.split("?", 1)[0].removeprefix("file:"))
        follows = not (flags and flags[0] & os.O_NOFOLLOW)
        for path in (named, Path(os.path.realpath(named))) if follows else (named,):
            if path.is_relative_to(tmp_path) and not any(path == root or path.is_relative_to(root) for root in roots):
                found.append(f"{event} {named} -> {path}")
    return found


@pytest.mark.parametrize("hostile", sorted(HOSTILE_REPOSITORIES))
def test_hostile_repository_gives_a_clear_error_in_bounded_memory_touching_nothing_outside(driver, tmp_path: Path, hostile: str) -> None:
    project = faultkit.build_project(tmp_path / "p", rows=30, plain_bytes=3000)
    project.backup()
    faultkit.change_project(project, seed=70)
    project.backup()
    outside = tmp_path / "outside"
    outside.mkdir()
    HOSTILE_REPOSITORIES[hostile](project, outside)
    target = tmp_path / "target"
    runs = {
        "verify": project.spec("verify", read_data=True),
        "list": project.spec("list"),
        "restore": project.spec("restore", snapshot="latest", target=str(target)),
    }
    for name, spec in runs.items():
        outcome = driver.run({**spec, "memory_limit": MEMORY_LIMIT, "audit": True})
        output = outcome.get("output") or {}
        assert outcome["status"] == "exited" and outcome["code"] in (0, 1), f"{name}: {outcome}"
        strays = _outside_the_roots(output.get("audit", []), tmp_path, [project.repository, target])
        assert strays == [], f"{name} touched files outside the repository and target: {strays}"
        if name == "verify" and output.get("ok"):
            assert output["result"]["ok"] is False, f"verify found nothing wrong with {hostile}"
    faultkit.tally(f"T10 hostile repository ({hostile})", trials=len(runs), faults=1)


def test_audit_oracle_fails_when_a_process_reads_a_file_outside(tmp_path: Path) -> None:
    """Negative control: a read through a symlink that no code prevents is seen by the audit hook."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("secret")
    link = tmp_path / "repository" / "link"
    link.parent.mkdir()
    link.symlink_to(victim)
    script = (
        "import sys, json; events = []; "
        "sys.addaudithook(lambda event, args: events.append((event, str(args[0]), args[2])) if event == 'open' else None); "
        f"open({str(link)!r}).read(); print(json.dumps(events))"
    )
    import subprocess
    import sys

    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    events = json.loads(completed.stdout.splitlines()[-1])
    assert _outside_the_roots(events, tmp_path, [tmp_path / "repository"]) == [f"open {link} -> {victim}"]


def test_restore_refuses_a_target_whose_subfolder_links_outside_it(project: faultkit.Project, tmp_path: Path) -> None:
    snapshot_id = project.backup()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "store1.sqlite").write_bytes(b"not yours")
    target = tmp_path / "target"
    target.mkdir()
    (target / "data").symlink_to(outside)
    before = faultkit.tree_state(outside)
    with pytest.raises(backup.UsageError, match="outside"):
        backup.restore_backup(project.settings, snapshot_id, target=target, force=True)
    assert faultkit.tree_state(outside) == before
    assert not (target / "app.db").exists(), "nothing is restored when one path is refused"
