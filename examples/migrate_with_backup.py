"""A schema migration guarded by dbkeep: snapshot first, automatic restore on failure.

    python examples/migrate_with_backup.py [--project DIR] [--fixed]

Creates a sample project (unless DIR already holds ``data/app.db``), then runs a
five-step migration to schema version 2 that commits as it goes. Without
``--fixed`` step 4 meets rows that break the new table's CHECK constraint halfway
through the copy; ``backup.guard`` then restores the pre-migration snapshot, so the
database is exactly as it was, and the script exits 1. With ``--fixed`` the copy
trims oversized payloads and the migration completes (exit 0).
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backup  # noqa: E402
from backup.sources import logical_dump_digest  # noqa: E402
from maintenance.sampledata import create_sample_database, integrity, row_counts  # noqa: E402

BATCH = 500
MAX_PAYLOAD = 300


def say(message: str) -> None:
    print(message, flush=True)


def step_currencies(connection: sqlite3.Connection, fixed: bool) -> None:
    connection.execute("CREATE TABLE currencies (code TEXT PRIMARY KEY, name TEXT NOT NULL)")
    connection.executemany("INSERT INTO currencies VALUES (?, ?)", [("EUR", "Euro"), ("USD", "US dollar"), ("CHF", "Swiss franc")])


def step_account_currency(connection: sqlite3.Connection, fixed: bool) -> None:
    connection.execute("ALTER TABLE accounts ADD COLUMN currency TEXT REFERENCES currencies(code)")


def step_backfill(connection: sqlite3.Connection, fixed: bool) -> None:
    ids = [row[0] for row in connection.execute("SELECT id FROM accounts ORDER BY id")]
    for position, account in enumerate(ids, 1):
        connection.execute("UPDATE accounts SET currency = ? WHERE id = ?", (("EUR", "USD", "CHF")[account % 3], account))
    say(f"      backfilled {len(ids)} accounts")


def step_copy_events(connection: sqlite3.Connection, fixed: bool) -> None:
    connection.execute(
        f"CREATE TABLE events_v2 (id INTEGER PRIMARY KEY, account INTEGER NOT NULL REFERENCES accounts(id), "
        f"kind TEXT NOT NULL, payload BLOB CHECK (length(payload) <= {MAX_PAYLOAD}))"
    )
    total = connection.execute("SELECT count(*) FROM events").fetchone()[0]
    copied = 0
    last_id = 0
    while True:
        rows = connection.execute("SELECT id, account, kind, payload FROM events WHERE id > ? ORDER BY id LIMIT ?", (last_id, BATCH)).fetchall()
        if not rows:
            break
        if fixed:
            rows = [(row[0], row[1], row[2], row[3][:MAX_PAYLOAD] if row[3] is not None else None) for row in rows]
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO events_v2 VALUES (?, ?, ?, ?)", rows)
        connection.execute("COMMIT")  # committed batch by batch: a failure leaves a half-migrated database
        copied += len(rows)
        last_id = rows[-1][0]
        say(f"      copied {copied}/{total} events ({100 * copied // total}%)")


def step_swap(connection: sqlite3.Connection, fixed: bool) -> None:
    connection.execute("DROP TABLE events")
    connection.execute("ALTER TABLE events_v2 RENAME TO events")
    connection.execute("CREATE INDEX events_by_account ON events(account)")
    connection.execute("PRAGMA user_version = 2")


STEPS = (
    ("create table currencies", step_currencies),
    ("add accounts.currency", step_account_currency),
    ("backfill accounts.currency", step_backfill),
    ("copy events into events_v2 (payload at most 300 bytes)", step_copy_events),
    ("swap events_v2 in, schema version 2", step_swap),
)


def migrate(database: Path, *, fixed: bool) -> None:
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as connection:
        connection.execute("PRAGMA foreign_keys = ON")
        for number, (title, action) in enumerate(STEPS, 1):
            say(f"[{number}/{len(STEPS)}] {title} ...")
            in_transaction = action is not step_copy_events
            if in_transaction:
                connection.execute("BEGIN")
            try:
                action(connection, fixed)
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            if in_transaction:
                connection.execute("COMMIT")
            say(f"[{number}/{len(STEPS)}] {title}: done")


def main(arguments: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="project directory (a sample one is created when it holds no data/app.db)")
    parser.add_argument("--fixed", action="store_true", help="trim oversized payloads so the migration succeeds")
    options = parser.parse_args(arguments)
    project = options.project or Path(tempfile.mkdtemp(prefix="dbkeep-migration-"))
    database = project / "data" / "app.db"
    if not database.exists():
        say(f"creating sample database {database}")
        create_sample_database(database, rows=3000)
        # Older rows were written by an app version that kept payloads short; the
        # newer ones are what the migration trips over, halfway through the copy.
        with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as connection:
            connection.execute("UPDATE events SET payload = substr(payload, 1, 200) WHERE id <= 1600")
    settings = backup.settings_from_mapping({"root": str(project), "repository": str(project / ".backups")})
    before = (logical_dump_digest(database), row_counts(database))
    say(f"before: {before[1]}")
    try:
        with backup.guard("schema version 2: currencies and bounded payloads", settings) as report:
            say(f"safety snapshot {report.snapshot.id} taken ({len(report.snapshot.files)} file(s))")
            migrate(database, fixed=options.fixed)
    except sqlite3.Error as error:
        after = (logical_dump_digest(database), row_counts(database))
        say(f"migration FAILED: {error}")
        say(f"rolled back automatically to snapshot {report.snapshot.id}: integrity {integrity(database)}, "
            f"content {'identical to' if after == before else 'DIFFERENT from'} the state before the migration")
        return 1
    except backup.BackupError as error:
        say(f"dbkeep: {error}")
        return 1
    say(f"migration complete: {row_counts(database)}, integrity {integrity(database)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
