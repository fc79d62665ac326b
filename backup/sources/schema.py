"""SQLite schema shapes: which tables, columns and indexes a database copy holds.

Owns: reading the shape of a private database copy (never a live database: the
copy is opened immutable) and the difference between two shapes. Used when two
states of a database have different schema hashes, to say what changed. Knows
SQLite, never the repository.
"""

from __future__ import annotations

import contextlib
import sqlite3
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SourceError


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaShape:
    """Tables with their columns (in order) and indexes with their table."""

    tables: dict[str, tuple[str, ...]] = field(default_factory=dict)
    indexes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class SchemaChanges:
    """What changed between two shapes; every field empty means no change in shape."""

    tables_added: tuple[str, ...] = ()
    tables_removed: tuple[str, ...] = ()
    columns_added: dict[str, tuple[str, ...]] = field(default_factory=dict)
    columns_removed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    indexes_added: tuple[str, ...] = ()
    indexes_removed: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (
            self.tables_added or self.tables_removed or self.columns_added or self.columns_removed or self.indexes_added or self.indexes_removed
        )


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def read_schema(copy_path: Path) -> SchemaShape:
    """The shape of a private database copy; raises SourceError if it cannot be read."""
    uri = f"file:{urllib.parse.quote(str(copy_path))}?mode=ro&immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as connection:
            tables: dict[str, tuple[str, ...]] = {}
            names = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").fetchall()
            for (name,) in names:
                try:
                    columns = connection.execute(f"PRAGMA table_info({_quote(name)})").fetchall()
                except sqlite3.Error:
                    columns = []  # a virtual table whose module is not loaded here
                tables[name] = tuple(str(row[1]) for row in columns)
            indexes = {
                str(name): str(table)
                for name, table in connection.execute(
                    "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            }
    except sqlite3.Error as error:
        raise SourceError(f"cannot read the schema of {copy_path}: {error}") from error
    return SchemaShape(tables=tables, indexes=indexes)


def diff_schema(before: SchemaShape, after: SchemaShape) -> SchemaChanges:
    """What ``after`` added to and removed from ``before``."""
    common = sorted(set(before.tables) & set(after.tables))
    columns_added = {name: tuple(c for c in after.tables[name] if c not in before.tables[name]) for name in common}
    columns_removed = {name: tuple(c for c in before.tables[name] if c not in after.tables[name]) for name in common}
    return SchemaChanges(
        tables_added=tuple(sorted(set(after.tables) - set(before.tables))),
        tables_removed=tuple(sorted(set(before.tables) - set(after.tables))),
        columns_added={name: columns for name, columns in columns_added.items() if columns},
        columns_removed={name: columns for name, columns in columns_removed.items() if columns},
        indexes_added=tuple(sorted(set(after.indexes) - set(before.indexes))),
        indexes_removed=tuple(sorted(set(before.indexes) - set(after.indexes))),
    )
