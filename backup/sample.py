"""A sample project to try dbkeep on: two SQLite databases and a plain file.

Owns: generating, deterministically from a seed, a small project folder:

    app.db                  SQLite in WAL mode: users (unicode names), products,
                            orders, attachments (BLOBs), with indexes (~5 MB)
    data/analytics.sqlite   SQLite in rollback-journal mode: events
    files/settings.json     a plain file
    invoke.yaml             the project's dbkeep settings (adds files/** to include)

The folder is built under a hidden name and renamed into place, so it is either
complete or absent. Knows SQLite, never the repository.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .errors import UsageError

DEFAULT_SIZE = 5 * 1024 * 1024
NAMES = ("Zoë", "José", "Łukasz", "渡辺 花子", "Ægir", "Chloé", "Søren", "Αθηνά", "Иван", "Nguyễn", "Dvořák", "O'Brien", "🐍 Py")
PRODUCTS = ("tea", "coffee", "crème brûlée", "Käsespätzle", "smørbrød", "pão de queijo", "抹茶", "borscht")
EVENT_KINDS = ("page_view", "click", "signup", "purchase", "error")
SETTINGS_YAML = """\
# dbkeep settings for this project: the 'backup' section of invoke.yaml.
backup:
  include: ["**/*.db", "**/*.sqlite", "**/*.sqlite3", "**/*.db3", "files/**"]
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleReport:
    root: str
    created: bool  # False when a sample project was already there
    files: tuple[tuple[str, int], ...]  # (path relative to root, size)


def _listing(root: Path) -> tuple[tuple[str, int], ...]:
    return tuple(
        (path.relative_to(root).as_posix(), path.stat().st_size)
        for path in sorted(root.rglob("*"))
        if path.is_file() and ".backups" not in path.relative_to(root).parts
    )


def create_sample_project(root: Path, *, size: int = DEFAULT_SIZE, seed: int = 2025) -> SampleReport:
    """Create the sample project at ``root`` unless one is already there.

    ``size`` is the approximate size of ``app.db`` in bytes. Raises UsageError
    when ``root`` exists but is not a sample project (nothing is touched then).
    """
    root = Path(root).absolute()
    if (root / "app.db").is_file():
        return SampleReport(root=str(root), created=False, files=_listing(root))
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UsageError(f"{root} exists and is not a sample project; choose another path")
    partial = root.parent / f".{root.name}.sample-partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        generator = random.Random(seed)
        start = datetime(2025, 1, 1, tzinfo=timezone.utc)
        _app_database(partial / "app.db", generator, size, start)
        (partial / "data").mkdir()
        _analytics_database(partial / "data" / "analytics.sqlite", generator, start)
        (partial / "files").mkdir()
        settings = {"name": "sample shop", "currency": "EUR", "greeting": "Grüß Gott, 世界", "features": ["orders", "attachments"]}
        (partial / "files" / "settings.json").write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (partial / "invoke.yaml").write_text(SETTINGS_YAML, encoding="utf-8")
        if root.exists():
            root.rmdir()  # empty, checked above
        partial.rename(root)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return SampleReport(root=str(root), created=True, files=_listing(root))


def _app_database(path: Path, generator: random.Random, size: int, start: datetime) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(
            """
            CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
            CREATE TABLE products (id INTEGER PRIMARY KEY, title TEXT NOT NULL, price_cents INTEGER NOT NULL);
            CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id),
                                 product_id INTEGER NOT NULL REFERENCES products(id), quantity INTEGER NOT NULL, ordered_at TEXT NOT NULL);
            CREATE TABLE attachments (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL REFERENCES orders(id),
                                      filename TEXT NOT NULL, content BLOB NOT NULL);
            CREATE INDEX orders_by_user ON orders(user_id);
            CREATE INDEX orders_by_product ON orders(product_id);
            CREATE INDEX attachments_by_order ON attachments(order_id);
            """
        )
        users = max(50, size // 20_000)
        connection.executemany(
            "INSERT INTO users VALUES (?, ?, ?, ?)",
            [
                (number, f"{generator.choice(NAMES)} {number}", f"user{number}@example.org", (start + timedelta(hours=number)).isoformat())
                for number in range(1, users + 1)
            ],
        )
        connection.executemany("INSERT INTO products VALUES (?, ?, ?)", [(number, title, 100 + 37 * number) for number, title in enumerate(PRODUCTS, 1)])
        orders = users * 4
        connection.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
            [
                (number, generator.randint(1, users), generator.randint(1, len(PRODUCTS)), generator.randint(1, 5), (start + timedelta(minutes=7 * number)).isoformat())
                for number in range(1, orders + 1)
            ],
        )
        # Half random (incompressible, like photos), half repetitive (like text): both kinds of page.
        blob_budget = max(size - orders * 60 - users * 80, 64 * 1024)
        blob_size = 8 * 1024
        attachments = []
        for number in range(1, blob_budget // blob_size + 1):
            content = generator.randbytes(blob_size) if number % 2 else (f"receipt {number} · ünïcödé ".encode() * blob_size)[:blob_size]
            attachments.append((number, generator.randint(1, orders), f"receipt-{number}.bin", content))
        connection.executemany("INSERT INTO attachments VALUES (?, ?, ?, ?)", attachments)


def _analytics_database(path: Path, generator: random.Random, start: datetime) -> None:
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("PRAGMA journal_mode=DELETE")
        connection.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, payload TEXT NOT NULL, at TEXT NOT NULL)")
        connection.execute("CREATE INDEX events_by_kind ON events(kind)")
        connection.executemany(
            "INSERT INTO events VALUES (?, ?, ?, ?)",
            [
                (
                    number,
                    generator.choice(EVENT_KINDS),
                    json.dumps({"path": f"/item/{generator.randint(1, 500)}", "ms": generator.randint(5, 900)}),
                    (start + timedelta(seconds=13 * number)).isoformat(),
                )
                for number in range(1, 5001)
            ],
        )
