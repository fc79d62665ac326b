"""Helpers for tests: real SQLite databases and proofs that files were not touched."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
from contextlib import closing
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def make_database(path: Path, *, rows: int = 2000, journal_mode: str = "wal", seed: int = 1, blob_size: int = 200) -> Path:
    """A database with tables, an index, BLOBs, NULLs and unicode text."""
    generator = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(path)) as connection:
        connection.execute(f"PRAGMA journal_mode={journal_mode}")
        connection.executescript(
            """
            CREATE TABLE IF NOT EXISTS accounts(id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS events(id INTEGER PRIMARY KEY, account INTEGER REFERENCES accounts(id),
                                              label TEXT, payload BLOB, note TEXT);
            CREATE INDEX IF NOT EXISTS events_account ON events(account);
            """
        )
        connection.executemany(
            "INSERT INTO accounts(owner, balance) VALUES (?, ?)",
            [(f"owner-{i} ünïcødé ✓", 1000) for i in range(50)],
        )
        connection.executemany(
            "INSERT INTO events(account, label, payload, note) VALUES (?, ?, ?, ?)",
            [
                (
                    generator.randint(1, 50),
                    f"event {i} — {generator.random():.6f}",
                    generator.randbytes(blob_size),
                    None if i % 7 == 0 else "note",
                )
                for i in range(rows)
            ],
        )
        connection.commit()
    return path


def row_count(path: Path, table: str = "events") -> int:
    with closing(sqlite3.connect(path)) as connection:
        return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def integrity(path: Path) -> str:
    with closing(sqlite3.connect(path)) as connection:
        return str(connection.execute("PRAGMA integrity_check").fetchone()[0])


def file_state(path: Path) -> tuple[bytes, int]:
    """SHA-256 and mtime of a file: proof that it was not touched."""
    return hashlib.sha256(path.read_bytes()).digest(), os.stat(path).st_mtime_ns
