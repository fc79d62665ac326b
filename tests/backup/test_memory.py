"""Invariant 6: memory stays flat as databases grow.

The buffers that do not depend on the database (frames in flight, the pack being
assembled, read-ahead, the frame cache) are shrunk here so that a small database
already fills them; what is left to grow with the database is the cost per chunk
of the in-memory index and the file's chunk ids. Both must stay a small fraction
of the 4 KiB a chunk holds: an object per chunk (about 500 bytes as a dict entry
with its hex id) fails this test.
"""

from __future__ import annotations

import random
import sqlite3
import tracemalloc
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from backup import create_backup, restore_backup, verify_backup
from backup import chunk_index, verification
from backup import repository as repository_module

#: Traced bytes the peak may grow by per chunk added to the database.
MOST_BYTES_PER_CHUNK = 256
CHUNK_BYTES = 4096


def _text_database(path: Path, mib: int) -> None:
    """A WAL database of about ``mib`` MiB of text that compresses about threefold, as text tables do."""
    generator = random.Random(mib)
    words = ["".join(generator.choices("abcdefghij", k=6)) for _ in range(500)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        rows = mib * 1024 * 1024 // 1100
        connection.executemany("INSERT INTO notes(body) VALUES (?)", ((" ".join(generator.choices(words, k=150)),) for _ in range(rows)))
        connection.commit()
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _peak(operation: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        operation()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture
def small_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "PACK_TARGET_BYTES": 1024 * 1024,
        "FRAME_TARGET_BYTES": 256 * 1024,
        "READ_BATCH_BYTES": 256 * 1024,
        "READAHEAD_MAX": 1024 * 1024,
        "FRAME_CACHE_BYTES": 1024 * 1024,
    }.items():
        monkeypatch.setattr(repository_module, name, value)
    monkeypatch.setattr(chunk_index, "_KEPT_ANSWERS", 256)
    monkeypatch.setattr(chunk_index, "_MERGE_AT_LEAST", 256)
    monkeypatch.setattr(verification, "LIST_CACHE_ENTRIES", 64)


def test_peak_memory_grows_by_far_less_than_a_chunk_per_chunk(tmp_path: Path, make_settings, small_buffers) -> None:
    peaks: dict[str, list[int]] = {"backup": [], "verify": [], "restore": []}
    chunks: list[int] = []
    for mib in (8, 64):
        root = tmp_path / f"project-{mib}"
        _text_database(root / "app.db", mib)
        settings = make_settings(root)
        chunks.append((root / "app.db").stat().st_size // CHUNK_BYTES)
        peaks["backup"].append(_peak(lambda: create_backup(settings)))
        peaks["verify"].append(_peak(lambda: verify_backup(settings, read_data=True)))
        peaks["restore"].append(_peak(lambda: restore_backup(settings, "latest", target=tmp_path / f"restored-{mib}")))
    added = chunks[1] - chunks[0]
    growth = {operation: (large - small) / added for operation, (small, large) in peaks.items()}
    assert all(per_chunk < MOST_BYTES_PER_CHUNK for per_chunk in growth.values()), f"bytes per added chunk: {growth}"
