"""Database-server entries of a snapshot: verify, restore and drill them.

Owns: joining the repository (where a dump's chunks live) with the server
sources (sources/server.py and one module per engine) for the restore and
drill of "postgres" and "mysql" entries: which connection an entry is
restored through, streaming its chunks into the server's client tool, and the
checks on the way. Capture lives in operations (it is one more entry of a
snapshot). Never prints; returns records.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .errors import CorruptData, SourceError, UsageError, VerificationFailed
from .manifest import FileEntry, Snapshot
from .repository import Repository
from .sources.server import DatabaseConfig, DrillResult, database_exists, drill_database, engine_module, restore_database
from .verification import Problem


@dataclass(frozen=True, slots=True, kw_only=True)
class DatabaseRestoreItem:
    """One dump to restore: through which connection, into which database."""

    entry: FileEntry
    connection: DatabaseConfig
    target: str
    overwrites: bool

    @property
    def destination(self) -> str:
        return self.connection.location(self.target)


def connection_for(databases: Sequence[DatabaseConfig], entry: FileEntry) -> DatabaseConfig:
    """The configured connection named like ``entry``, else the one its manifest records.

    A recorded connection carries no password: the client tools find one in
    their usual places (PGPASSWORD, ~/.pgpass, ~/.my.cnf).
    """
    for database in databases:
        if database.name == entry.path and database.engine == entry.kind:
            return database
    info = entry.server
    assert info is not None
    return DatabaseConfig(
        name=entry.path, engine=entry.kind, database=info.database, host=info.host or None, port=info.port, user=info.user or None
    )


def plan_item(databases: Sequence[DatabaseConfig], entry: FileEntry, target: str | None) -> DatabaseRestoreItem:
    """Where ``entry`` would be restored; asks the server whether that database exists."""
    connection = connection_for(databases, entry)
    name = target or connection.database
    return DatabaseRestoreItem(entry=entry, connection=connection, target=name, overwrites=database_exists(connection, name))


def live_connection(item: DatabaseRestoreItem) -> DatabaseConfig:
    """The connection of the database a restore would replace, named for its safety snapshot."""
    if item.target == item.connection.database:
        return item.connection
    return dataclasses.replace(item.connection, database=item.target, name=f"{item.entry.kind}/{item.target}")


def _hashed(pieces: Iterable[bytes], digest, counter: list[int]) -> Iterator[bytes]:
    for piece in pieces:
        digest.update(piece)
        counter[0] += len(piece)
        yield piece


def verify_dump(repository: Repository, entry: FileEntry) -> None:
    """Read every chunk of the dump and check its SHA-256; VerificationFailed if anything is off."""
    digest = hashlib.sha256()
    size = [0]
    try:
        for _ in _hashed(repository.read_file_chunks(entry.chunk_lists, levels=entry.chunk_list_levels), digest, size):
            pass
    except CorruptData as error:
        problem = Problem(kind="corrupt-data", message=str(error), path=entry.path)
        raise VerificationFailed(f"snapshot cannot be restored: {entry.path}: {error}; nothing was changed", [problem]) from error
    if digest.hexdigest() != entry.sha256 or size[0] != entry.size:
        problem = Problem(kind="file-hash", message="dump bytes do not match the recorded SHA-256", path=entry.path)
        raise VerificationFailed(
            f"snapshot cannot be restored: {entry.path}: {problem.message}; nothing was changed "
            "(run backup.verify --read-data for the full list, then restore an older snapshot)",
            [problem],
        )


def apply_restore(repository: Repository, item: DatabaseRestoreItem, safety: Snapshot | None) -> str:
    """Restore a verified dump into its target database; returns what was done.

    Raises SourceError if the server refused; the engine guarantees what is
    left then (docs/servers.md).
    """
    entry = item.entry
    assert entry.server is not None
    rollback_entry = None
    if safety is not None:
        name = live_connection(item).name
        rollback_entry = next((candidate for candidate in safety.files if candidate.path == name and candidate.is_server), None)
    open_rollback = (lambda: repository.read_file_chunks(rollback_entry.chunk_lists, levels=rollback_entry.chunk_list_levels)) if rollback_entry else None
    return restore_database(
        item.connection,
        entry.server,
        lambda: repository.read_file_chunks(entry.chunk_lists, levels=entry.chunk_list_levels),
        target=item.target,
        open_rollback=open_rollback,
    )


def drill_entry(repository: Repository, connection: DatabaseConfig, entry: FileEntry) -> DrillResult:
    """Restore ``entry``'s dump into a scratch database, compare with the manifest, drop it.

    The dump's SHA-256 is checked on the way; damaged chunks are problems of
    the result. Raises SourceError only when the server cannot be used at all.
    """
    assert entry.server is not None
    digest = hashlib.sha256()
    size = [0]
    try:
        result = drill_database(connection, _hashed(repository.read_file_chunks(entry.chunk_lists, levels=entry.chunk_list_levels), digest, size), entry.server)
    except CorruptData as error:
        return DrillResult(name=entry.path, scratch_database="", problems=(f"the dump cannot be read: {error}",))
    problems = list(result.problems)
    if digest.hexdigest() != entry.sha256 or size[0] != entry.size:
        problems.insert(0, "dump bytes do not match the recorded SHA-256")
    return dataclasses.replace(result, name=entry.path, problems=tuple(problems))


def server_entries(snapshot: Snapshot, only: Sequence[str]) -> list[FileEntry]:
    import pathspec

    matcher = pathspec.GitIgnoreSpec.from_lines(only) if only else None
    entries = [entry for entry in snapshot.files if entry.is_server and (matcher is None or matcher.match_file(entry.path))]
    if not entries:
        raise UsageError(f"snapshot {snapshot.id} holds no database-server dump" + (f" matching {', '.join(only)}" if only else ""))
    return entries


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerProbe:
    """Whether a configured database can be reached, for selftest and info screens."""

    name: str
    location: str
    reachable: bool
    detail: str  # the server version, or the one-line reason it cannot be used


def probe_databases(databases: Sequence[DatabaseConfig]) -> tuple[ServerProbe, ...]:
    """Try each configured database once; never raises for an unreachable server."""
    probes = []
    for database in databases:
        try:
            description = engine_module(database.engine).describe(database)
        except SourceError as error:
            probes.append(ServerProbe(name=database.name, location=database.location(), reachable=False, detail=str(error)))
            continue
        probes.append(ServerProbe(name=database.name, location=database.location(), reachable=True, detail=description.server_version))
    return tuple(probes)
