"""Sample SQLite databases for the selftest, the examples and the tests.

Owns: creating realistic small databases (WAL or rollback journal), changing
them in ways that touch some pages and not others, and a writer process that
keeps committing while a backup runs. Knows SQLite, never the repository.

Run ``python -m maintenance.sampledata writer DB`` for a writer that inserts rows
in a loop: it prints ``ready <last id>`` once it has committed, then keeps
committing (each row moves money between two accounts, so the total stays
constant) until its standard input is closed.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import sqlite3
import sys
from pathlib import Path

TOTAL_BALANCE = 1_000_000


def create_sample_database(path: Path, *, rows: int = 2000, journal_mode: str = "wal", seed: int = 1) -> Path:
    """Create a database with accounts, events and an index; returns ``path``."""
    generator = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute(f"PRAGMA journal_mode={journal_mode}")
        connection.execute("BEGIN")
        connection.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, balance INTEGER NOT NULL)")
        connection.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, account INTEGER NOT NULL REFERENCES accounts(id), kind TEXT, payload BLOB)")
        connection.execute("CREATE INDEX events_by_account ON events(account)")
        accounts = 10
        connection.executemany(
            "INSERT INTO accounts (id, name, balance) VALUES (?, ?, ?)",
            [(number, f"account-{number}", TOTAL_BALANCE // accounts) for number in range(1, accounts + 1)],
        )
        connection.executemany(
            "INSERT INTO events (account, kind, payload) VALUES (?, ?, ?)",
            [(generator.randint(1, accounts), generator.choice(["open", "move", "close"]), generator.randbytes(generator.randint(20, 400))) for _ in range(rows)],
        )
        connection.execute("COMMIT")
    return path


def change_database(path: Path, *, inserts: int = 100, updates: int = 20, seed: int = 2) -> None:
    """Insert and update some rows (touching a few pages), in one transaction."""
    generator = random.Random(seed)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=30)) as connection:
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(
            "INSERT INTO events (account, kind, payload) VALUES (?, 'move', ?)",
            [(generator.randint(1, 10), generator.randbytes(200)) for _ in range(inserts)],
        )
        highest = connection.execute("SELECT max(id) FROM events").fetchone()[0] or 1
        for _ in range(updates):
            connection.execute("UPDATE events SET payload = ? WHERE id = ?", (generator.randbytes(300), generator.randint(1, highest)))
        connection.execute("COMMIT")


def row_counts(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        names = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {name: connection.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0] for name in names}


def integrity(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return "; ".join(str(row[0]) for row in connection.execute("PRAGMA integrity_check"))


def total_balance(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return int(connection.execute("SELECT sum(balance) FROM accounts").fetchone()[0])


def run_writer(path: Path) -> None:
    """Commit moves until stdin closes; announce ``ready <id>`` after the first commit."""
    generator = random.Random(7)
    announced = False
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=30)) as connection:
        connection.execute("PRAGMA busy_timeout=30000")
        while True:
            source, target = generator.sample(range(1, 11), 2)
            amount = generator.randint(1, 50)
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, source))
            connection.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, target))
            cursor = connection.execute("INSERT INTO events (account, kind, payload) VALUES (?, 'move', ?)", (source, generator.randbytes(64)))
            connection.execute("COMMIT")
            if not announced:
                print(f"ready {cursor.lastrowid}", flush=True)
                announced = True
            readable, _, _ = select.select([sys.stdin], [], [], 0)
            if readable and not os.read(sys.stdin.fileno(), 1):
                return


def main(arguments: list[str]) -> int:
    if len(arguments) == 2 and arguments[0] == "writer":
        run_writer(Path(arguments[1]))
        return 0
    if len(arguments) >= 2 and arguments[0] == "create":
        create_sample_database(Path(arguments[1]), journal_mode=arguments[2] if len(arguments) > 2 else "wal")
        return 0
    print("usage: python -m maintenance.sampledata writer DB | create DB [wal|delete]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
