"""T25: property-based round trips of random databases and files.

hypothesis draws schemas and rows (BLOBs, NULLs, unicode, large values), page
sizes from 512 to 65536, auto_vacuum modes, WAL or rollback journal, plain
files of awkward sizes (empty, one byte, chunk size minus, equal, plus one, a
sparse file) and compression on or off. Each example is backed up, restored
into a fresh folder and compared: integrity_check ok and the same logical dump
for databases, the same SHA-256 and mode for files; a second backup of the
unchanged input stores no new chunk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backup
import faultkit

EXAMPLES = int(os.environ.get("DBKEEP_ROUND_TRIP_EXAMPLES", 5))
CHUNK = 4096

values = st.none() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=300) | st.binary(max_size=3000)
big_values = st.binary(min_size=5000, max_size=70_000) | st.text(min_size=2000, max_size=5000)
tables = st.lists(st.lists(values | big_values, min_size=3, max_size=3), max_size=40)
file_sizes = st.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17])


@st.composite
def projects(draw):
    return {
        "page_size": draw(st.sampled_from([512, 1024, 4096, 16384, 65536])),
        "auto_vacuum": draw(st.sampled_from(["none", "full", "incremental"])),
        "journal_mode": draw(st.sampled_from(["wal", "delete"])),
        "rows": draw(tables),
        "other_rows": draw(tables),
        "file_sizes": draw(st.lists(file_sizes, min_size=1, max_size=3)),
        "sparse": draw(st.booleans()),
        "compression_level": draw(st.sampled_from([0, 3])),
        "seed": draw(st.integers(0, 2**32)),
    }


def _build(root: Path, example: dict) -> list[str]:
    database = root / "data.db"
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as connection:
        connection.execute(f"PRAGMA page_size={example['page_size']}")
        connection.execute(f"PRAGMA auto_vacuum={example['auto_vacuum']}")
        connection.execute(f"PRAGMA journal_mode={example['journal_mode']}")
        connection.execute('CREATE TABLE "t ü" (a, b BLOB, "c d" TEXT)')
        connection.execute("CREATE TABLE other (x PRIMARY KEY, y, z) WITHOUT ROWID")
        connection.executemany('INSERT INTO "t ü" VALUES (?, ?, ?)', example["rows"])
        connection.executemany("INSERT OR IGNORE INTO other VALUES (?, ?, ?)", [row for row in example["other_rows"] if row[0] is not None])
        connection.execute("DELETE FROM \"t ü\" WHERE rowid % 3 = 0")
    import random

    rng = random.Random(example["seed"])
    files = []
    for number, size in enumerate(example["file_sizes"]):
        path = root / "files" / f"f{number}.db"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        os.chmod(path, rng.choice([0o600, 0o640, 0o644]))
        files.append(path.relative_to(root).as_posix())
    if example["sparse"]:
        sparse = root / "files" / "sparse.db"
        with open(sparse, "wb") as handle:
            handle.seek(5 * CHUNK + 3)
            handle.write(b"end")
        files.append("files/sparse.db")
    return files


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)
@given(example=projects())
def test_random_databases_and_files_round_trip_exactly_and_dedup_fully(example: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="dbkeep-round-trip-") as folder:
        root = Path(folder) / "project"
        root.mkdir()
        files = _build(root, example)
        settings_ = backup.settings_from_mapping({"root": str(root), "repository": str(root / ".backups"), "chunk_size": CHUNK, "compression_level": example["compression_level"]})
        dump = faultkit.database_digest(root / "data.db")
        digests = {relative: faultkit.file_digest(root / relative) for relative in files}
        first = backup.create_backup(settings_)
        target = Path(folder) / "target"
        backup.restore_backup(settings_, first.snapshot.id, target=target)
        assert faultkit.integrity(target / "data.db") == "ok"
        assert faultkit.database_digest(target / "data.db") == dump
        for relative, digest in digests.items():
            assert faultkit.file_digest(target / relative) == digest, relative
            assert stat.S_IMODE((target / relative).stat().st_mode) == stat.S_IMODE((root / relative).stat().st_mode)
        again = backup.create_backup(settings_)
        assert again.stats.new_chunks == 0 and again.stats.stored_bytes == 0
        assert backup.verify_backup(settings_, read_data=True).ok
        shutil.rmtree(target)


def test_logical_dump_oracle_fails_when_one_value_differs(tmp_path: Path) -> None:
    """Negative control: the comparison the round trip relies on sees a one-byte change."""
    project = faultkit.build_project(tmp_path, rows=10, journal_modes=("wal",), plain_bytes=0)
    before = faultkit.database_digest(project.live("app.db"))
    with contextlib.closing(sqlite3.connect(project.live("app.db"), isolation_level=None)) as connection:
        connection.execute("UPDATE notes SET score = score + 1e-9 WHERE id = 3")
    assert faultkit.database_digest(project.live("app.db")) != before
