"""Moving snapshots between repositories, and importing exported archives.

Owns: ``copy_snapshots`` (send a snapshot's chunks that the target lacks, verify
every byte that arrived, then publish the manifest there) and ``import_archive``
(bring an archive made by ``export`` back as a snapshot). Knows repositories and
the archive layout; captures go through the same path as a backup.

An archive is hostile until proven otherwise. It is never unpacked with
``tarfile.extract``: each member is checked (regular file, normalised relative
name, size and count bounds, no duplicates) and written by this module into a
private directory, hashed while it is written, and checked against
``SHA256SUMS`` and ``metadata.json`` before anything reaches the repository.
The accepted layout is exactly what ``backup.export`` writes (docs/format.md,
"Export archives"):

    metadata.json        "format": "dbkeep-export", "schema_version": 1, and
                         "files": each exported file's path ("files/<path>"),
                         size, sha256, kind, mode and mtime; "snapshot": the
                         exported manifest (only its id is used)
    SHA256SUMS           "<sha256>  <member name>" for every member under files/
                         (and for metadata.json)
    files/<path>         the bytes of each file, at its project-relative path

optionally all below one top-level folder, as a ``.tar``, ``.tar.gz`` or
``.tar.zst`` (recognised by content, not by name), or as a plain directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import zstandard

from . import crypto, fsio, locking
from .errors import BackupError, CorruptData, UsageError, VerificationFailed
from .lookup import resolve_snapshot
from .manifest import FileEntry, Snapshot, check_relative_path
from .operations import BackupReport, _create_locked, open_repository
from .repository import CONFIG_NAME, Repository
from .settings import Settings
from .sources import SQLITE_HEADER, SelectedFile
from .storage import open_storage
from .verification import Problem

READ_PIECE = 1024 * 1024


# -- copy ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CopiedSnapshot:
    snapshot_id: str
    already_present: bool = False
    chunks_sent: int = 0
    chunks_reused: int = 0
    bytes_sent: int = 0  # logical bytes of the chunks the target lacked


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyReport:
    target: str
    snapshots: tuple[CopiedSnapshot, ...]
    warnings: tuple[str, ...] = ()


def target_passphrase_from_environment() -> str | None:
    """``DBKEEP_TARGET_PASSWORD[_FILE|_COMMAND]``, else the source's ``DBKEEP_PASSWORD...``."""
    return crypto.passphrase_from_environment(prefix="DBKEEP_TARGET_PASSWORD") or crypto.passphrase_from_environment()


def open_target(
    target_location: Path | str,
    source: Repository,
    *,
    encrypt: bool = False,
    passphrase: Callable[[], str | None] = target_passphrase_from_environment,
) -> Repository:
    """Open the target repository, creating it with the source's chunking if absent."""
    storage = open_storage(target_location)
    if storage.exists(CONFIG_NAME):
        return Repository.open(storage, passphrase=passphrase, require_encryption=encrypt)
    return Repository.open_or_init(
        storage,
        chunk_size=source.config.chunk_size,
        compression_level=source.config.compression_level,
        passphrase=passphrase,
        encrypt=encrypt,
    )


def copy_snapshots(
    source_settings: Settings,
    ids: Sequence[str],
    target_location: Path | str,
    *,
    encrypt_target: bool = False,
    target_passphrase: Callable[[], str | None] = target_passphrase_from_environment,
    catch_up: bool = False,
    now: datetime | None = None,
) -> CopyReport:
    """Copy snapshots (ids, prefixes, ``latest`` or points in time) into another repository.

    With ``catch_up``, every source snapshot newer than the target's newest one
    is copied too (all of them into an empty target), so a copy missed by an
    earlier run is made now while snapshots pruned from the target never return.

    Sends only chunks the target lacks; re-reads every copied file from the
    target and checks its SHA-256 before the manifest is published there, so a
    snapshot appears in the target only when all of its bytes arrived intact.
    Works between local and S3, encrypted or not (chunk ids are re-derived when
    the two repositories name chunks differently). A snapshot already in the
    target is reported and left alone. Raises VerificationFailed (nothing
    published for that snapshot) when arrived bytes do not match.
    """
    source = open_repository(source_settings)
    moment = now or datetime.now(timezone.utc)
    with locking.acquire(source.storage, exclusive=False, purpose="copy (source)", wait=source_settings.lock_wait) as source_lock:
        available = source.snapshot_ids()
        wanted = list(dict.fromkeys(resolve_snapshot(spec, available, now=moment) for spec in ids))
        target = open_target(target_location, source, encrypt=encrypt_target, passphrase=target_passphrase)
        if target.config.id == source.config.id and target.storage.location == source.storage.location:
            raise UsageError("the target is the source repository itself; name another repository")
        results: list[CopiedSnapshot] = []
        with locking.acquire(target.storage, exclusive=True, purpose="copy (target)", wait=source_settings.lock_wait) as target_lock:
            present = set(target.snapshot_ids())
            if catch_up:
                newest = max(present, default="")
                wanted = sorted(set(wanted) | {snapshot_id for snapshot_id in available if snapshot_id > newest})
            for snapshot_id in wanted:
                if snapshot_id in present:
                    results.append(CopiedSnapshot(snapshot_id=snapshot_id, already_present=True))
                    continue
                results.append(_copy_one(source, target, source.load_snapshot(snapshot_id), target_lock))
        warnings = _exposure_warning(source, target) + tuple(source_lock.broken) + tuple(target_lock.broken)
    return CopyReport(target=target.storage.location, snapshots=tuple(results), warnings=warnings)


def _exposure_warning(source: Repository, target: Repository) -> tuple[str, ...]:
    if source.keys is None or target.keys is not None:
        return ()
    return (f"the target {target.storage.location} is not encrypted: whoever can read it can read the copied snapshots (create an encrypted target with backup.copy --encrypt)",)


def _copy_one(source: Repository, target: Repository, snapshot: Snapshot, lock: locking.Lock) -> CopiedSnapshot:
    with target.writer() as writer:
        same_ids = source.keys is None and target.keys is None  # both name chunks by SHA-256
        sent = reused = sent_bytes = 0
        entries: list[FileEntry] = []
        for entry in snapshot.files:
            target_ids: list[str] = []
            for chunk_id in source.chunk_ids_of(entry.chunk_lists, levels=entry.chunk_list_levels):
                if same_ids and writer.reuse(chunk_id):
                    reused += 1
                    target_ids.append(chunk_id)
                    continue
                data = source.read_chunk(chunk_id)  # verified against the source's id
                new_id = target.chunk_id(data)
                if writer.add(new_id, data):
                    sent += 1
                    sent_bytes += len(data)
                else:
                    reused += 1
                target_ids.append(new_id)
            chunk_lists, levels = writer.add_chunk_tree(target_ids)
            entries.append(dataclasses.replace(entry, chunk_lists=tuple(chunk_lists), chunk_list_levels=levels))
        writer.finish()
    _verify_arrived(target, snapshot.id, entries)
    lock.ensure_held()
    target.save_snapshot(dataclasses.replace(snapshot, files=tuple(entries)))
    return CopiedSnapshot(snapshot_id=snapshot.id, chunks_sent=sent, chunks_reused=reused, bytes_sent=sent_bytes)


def _verify_arrived(target: Repository, snapshot_id: str, entries: Sequence[FileEntry]) -> None:
    """Read every file back from the target's stored packs and index; raise if any differs."""
    target.index(reload=True)
    for entry in entries:
        digest = hashlib.sha256()
        size = 0
        try:
            for chunk in target.read_file_chunks(entry.chunk_lists, levels=entry.chunk_list_levels):
                digest.update(chunk)
                size += len(chunk)
        except CorruptData as error:
            problem = Problem(kind="corrupt-chunk", message=str(error), snapshot_id=snapshot_id, path=entry.path)
            raise VerificationFailed(f"copy of snapshot {snapshot_id} did not arrive intact: {entry.path}: {error}; it was not published", [problem]) from error
        if size != entry.size or digest.hexdigest() != entry.sha256:
            problem = Problem(kind="file-hash", message="copied bytes do not match the recorded SHA-256", snapshot_id=snapshot_id, path=entry.path)
            raise VerificationFailed(f"copy of snapshot {snapshot_id} did not arrive intact: {entry.path} differs; it was not published", [problem])


# -- import ----------------------------------------------------------------------------


class ImportRefused(UsageError):
    """The archive breaks the accepted layout or a safety bound; nothing was imported."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportLimits:
    """Bounds that keep a hostile archive from exhausting disk, memory or time."""

    max_members: int = 10_000
    max_member_bytes: int = 64 * 1024**3
    max_total_bytes: int = 256 * 1024**3
    max_metadata_bytes: int = 16 * 1024**2
    max_name_bytes: int = 1024
    max_extension_header_bytes: int = 1024**2


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportReport:
    backup: BackupReport
    source_snapshot_id: str | None
    files: tuple[str, ...]


ARCHIVE_FORMAT = "dbkeep-export"
ARCHIVE_VERSION = 1
#: Kinds an archive may record; database-server dumps come back as plain files.
IMPORTED_KINDS = {"sqlite": "sqlite", "file": "file", "postgres": "file", "mysql": "file"}
METADATA_NAME = "metadata.json"
SUMS_NAME = "SHA256SUMS"
FILES_PREFIX = "files/"
_SUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


@dataclass(slots=True)
class _Member:
    """One archive member as the reader reports it, before any trust."""

    name: str
    kind: str  # "file", "directory" or what else it claims to be
    size: int
    open: Callable[[], IO[bytes]]


def import_archive(settings: Settings, archive_path: Path, *, limits: ImportLimits = ImportLimits(), now: datetime | None = None) -> ImportReport:
    """Bring an exported archive back as a new snapshot tagged ``import``.

    Every member is validated and written by dbkeep itself into a private
    directory; any link, device, traversal, duplicate, oversize or unlisted
    member, or any hash that differs from SHA256SUMS or metadata.json, refuses
    the whole archive (ImportRefused) before the repository is touched.
    File modes come from metadata.json with set-id and sticky bits removed.
    """
    archive_path = Path(archive_path)
    if not archive_path.exists():
        raise UsageError(f"archive {archive_path} does not exist")
    scratch = settings.scratch_directory
    fsio.make_private_dirs(scratch)
    staging = Path(tempfile.mkdtemp(prefix="dbkeep-import-", dir=scratch))
    try:
        staged = _stage(archive_path, staging, limits)
        metadata, files = _check_staged(staged, staging, limits)
        selected = _prepare_files(staging, files)
        repository = open_repository(settings, create=True)
        note = f"imported from {archive_path.name}" + (f" (snapshot {metadata.get('snapshot_id')})" if metadata.get("snapshot_id") else "")
        with locking.acquire(repository.storage, exclusive=True, purpose="import", wait=settings.lock_wait) as lock:
            snapshot = _create_locked(repository, lock, settings, selected, root=settings.root, tag="import", note=note, now=now)
            warnings = _dump_warnings(files) + tuple(lock.broken)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImportReport(
        backup=BackupReport(snapshot=snapshot, warnings=warnings),
        source_snapshot_id=metadata.get("snapshot_id"),
        files=tuple(item.relative for item in selected),
    )


@dataclass(slots=True)
class _Staged:
    hashes: dict[str, str]  # member name (wrapper removed) -> sha256 of what was written
    sizes: dict[str, int]
    metadata: bytes | None = None
    sums: bytes | None = None


def _stage(archive_path: Path, staging: Path, limits: ImportLimits) -> _Staged:
    staged = _Staged(hashes={}, sizes={})
    wrapper: str | None = None
    count = 0
    total = 0
    with _members(archive_path, limits) as members:
        for member in members:
            count += 1
            if count > limits.max_members:
                raise ImportRefused(f"archive {archive_path.name} has more than {limits.max_members} members; refusing it")
            name = _normalised_name(member.name, limits)
            if name is None:
                continue  # the archive's own "." entry
            if wrapper is None:
                wrapper = _wrapper_of(name)
            name = _unwrap(name, wrapper)
            if member.kind == "directory":
                if name and name != "files" and not name.startswith(FILES_PREFIX):
                    raise ImportRefused(f"archive member {member.name!r} is not part of the export layout")
                continue
            if member.kind != "file":
                raise ImportRefused(f"archive member {member.name!r} is a {member.kind}; only regular files are accepted")
            if name in staged.hashes:
                raise ImportRefused(f"archive member {member.name!r} appears twice")
            if member.size < 0 or member.size > limits.max_member_bytes:
                raise ImportRefused(f"archive member {member.name!r} is {member.size} bytes, more than the {limits.max_member_bytes} allowed")
            total += member.size
            if total > limits.max_total_bytes:
                raise ImportRefused(f"archive holds more than {limits.max_total_bytes} bytes; refusing it")
            if name in (METADATA_NAME, SUMS_NAME):
                data = _read_small(member, limits.max_metadata_bytes)
                if name == METADATA_NAME:
                    staged.metadata = data
                else:
                    staged.sums = data
                staged.hashes[name] = hashlib.sha256(data).hexdigest()
                staged.sizes[name] = len(data)
                continue
            if not name.startswith(FILES_PREFIX):
                raise ImportRefused(f"archive member {member.name!r} is not part of the export layout (metadata.json, SHA256SUMS, files/...)")
            staged.hashes[name], staged.sizes[name] = _write_member(member, staging, name, limits)
    return staged


def _normalised_name(raw: str, limits: ImportLimits) -> str | None:
    """The member name if it is a normalised relative path; None for "." itself."""
    name = raw[2:] if raw.startswith("./") else raw
    name = name[:-1] if name.endswith("/") else name
    if raw in (".", "./"):
        return None
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ImportRefused(f"archive member name {raw!r} is not valid UTF-8") from None
    if not name or len(encoded) > limits.max_name_bytes:
        raise ImportRefused(f"archive member name {raw[:80]!r} is empty or too long")
    if name.startswith("/") or "\\" in name or any(ord(character) < 32 or ord(character) == 127 for character in name):
        raise ImportRefused(f"archive member name {raw[:80]!r} is absolute or holds control characters or backslashes")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ImportRefused(f"archive member name {raw[:80]!r} is not normalised (empty, '.' or '..' parts)")
    return name


def _wrapper_of(name: str) -> str:
    first = name.split("/", 1)[0]
    return "" if first in (METADATA_NAME, SUMS_NAME, "files") else first


def _unwrap(name: str, wrapper: str) -> str:
    if not wrapper:
        return name
    if name == wrapper:
        return ""
    if not name.startswith(wrapper + "/"):
        raise ImportRefused(f"archive member {name!r} is outside the archive's top-level folder {wrapper!r}")
    return name[len(wrapper) + 1 :]


def _read_small(member: _Member, limit: int) -> bytes:
    if member.size > limit:
        raise ImportRefused(f"archive member {member.name!r} is larger than {limit} bytes")
    with member.open() as handle:
        data = handle.read(limit + 1)
    if len(data) != member.size:
        raise ImportRefused(f"archive member {member.name!r} is truncated")
    return data


def _write_member(member: _Member, staging: Path, name: str, limits: ImportLimits) -> tuple[str, int]:
    """Write one member's bytes into ``staging/name`` ourselves; returns (sha256, size)."""
    destination = staging / name
    _make_parents(staging, name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(destination, flags, 0o600)
    except FileExistsError:
        raise ImportRefused(f"archive member {member.name!r} appears twice") from None
    except OSError as error:
        raise ImportRefused(f"archive member {member.name!r} cannot be placed: {error.strerror}") from error
    digest = hashlib.sha256()
    size = 0
    try:
        with member.open() as handle:
            while piece := handle.read(READ_PIECE):
                size += len(piece)
                if size > member.size or size > limits.max_member_bytes:
                    raise ImportRefused(f"archive member {member.name!r} holds more bytes than it declares")
                digest.update(piece)
                fsio.write(descriptor, piece)
        fsio.fsync(descriptor)
    finally:
        os.close(descriptor)
    if size != member.size:
        raise ImportRefused(f"archive member {member.name!r} is truncated ({size} of {member.size} bytes)")
    return digest.hexdigest(), size


def _make_parents(staging: Path, name: str) -> None:
    current = staging
    for part in name.split("/")[:-1]:
        current = current / part
        try:
            os.mkdir(current, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                raise ImportRefused(f"archive member path {name!r} runs through a file") from None


def _check_staged(staged: _Staged, staging: Path, limits: ImportLimits) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Cross-check members, SHA256SUMS and metadata.json; returns (metadata, file records)."""
    if staged.metadata is None or staged.sums is None:
        raise ImportRefused("archive lacks metadata.json or SHA256SUMS; it is not a dbkeep export")
    listed: dict[str, str] = {}
    try:
        lines = staged.sums.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ImportRefused("SHA256SUMS is not UTF-8 text") from None
    for line in lines:
        if not line.strip():
            continue
        match = _SUM_LINE.match(line)
        if match is None:
            raise ImportRefused(f"SHA256SUMS line {line[:80]!r} is not '<sha256>  <name>'")
        digest, name = match.group(1), match.group(2)
        name = name[2:] if name.startswith("./") else name
        if name in listed:
            raise ImportRefused(f"SHA256SUMS lists {name!r} twice")
        listed[name] = digest
    members = {name for name in staged.hashes if name.startswith(FILES_PREFIX)}
    unlisted = sorted(members - set(listed))
    if unlisted:
        raise ImportRefused(f"archive member {unlisted[0]!r} is not listed in SHA256SUMS")
    for name, digest in listed.items():
        if name not in staged.hashes:
            raise ImportRefused(f"SHA256SUMS lists {name!r} but the archive does not hold it")
        if staged.hashes[name] != digest:
            raise ImportRefused(f"archive member {name!r} does not match its SHA-256 in SHA256SUMS: it was damaged or altered")
    metadata, files = _parse_metadata(staged.metadata)
    recorded = {FILES_PREFIX + item["path"]: item for item in files}
    if set(recorded) != members:
        missing = sorted(set(recorded) ^ members)
        raise ImportRefused(f"metadata.json and the archive disagree about {missing[0]!r}")
    for name, item in recorded.items():
        if item["sha256"] != staged.hashes[name] or item["size"] != staged.sizes[name]:
            raise ImportRefused(f"{name!r} does not match the size and SHA-256 recorded in metadata.json")
        claims_sqlite = item["kind"] == "sqlite"
        with open(staging / name, "rb") as handle:
            is_sqlite = handle.read(len(SQLITE_HEADER)) == SQLITE_HEADER
        if claims_sqlite != is_sqlite:
            raise ImportRefused(f"{name!r} is recorded as {item['recorded_kind']} but its content says otherwise")
    return metadata, files


def _dump_warnings(files: list[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(
        f"{item['path']} was a {item['recorded_kind']} dump; it was imported as a plain file (load it into a server with that server's own tools)"
        for item in files
        if item["recorded_kind"] != item["kind"]
    )


def _parse_metadata(data: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        body = json.loads(data.decode("utf-8"))
        if not isinstance(body, dict) or body.get("format") != ARCHIVE_FORMAT or body.get("schema_version") != ARCHIVE_VERSION:
            raise ValueError(f"not a {ARCHIVE_FORMAT} document of schema_version {ARCHIVE_VERSION}")
        files = body["files"]
        if not isinstance(files, list):
            raise ValueError("'files' is not a list")
        parsed = [_file_record(item) for item in files]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError, CorruptData) as error:
        raise ImportRefused(f"metadata.json does not match the export format: {error}") from error
    paths = [item["path"] for item in parsed]
    if len(set(paths)) != len(paths):
        raise ImportRefused("metadata.json lists a path twice")
    snapshot = body.get("snapshot") if isinstance(body.get("snapshot"), dict) else {}
    snapshot_id = snapshot.get("id") if isinstance(snapshot.get("id"), str) else None
    return {"snapshot_id": snapshot_id[:64] if snapshot_id else None}, parsed


def _file_record(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise ValueError("a file record is not an object")
    numbers = {key: item.get(key) for key in ("size", "mode")}
    if not all(isinstance(value, int) and not isinstance(value, bool) and value >= 0 for value in numbers.values()):
        raise ValueError("size and mode must be non-negative integers")
    mtime = item.get("mtime", 0)
    if isinstance(mtime, bool) or not isinstance(mtime, (int, float)) or not 0 <= mtime < 2**40:
        raise ValueError("mtime must be a number of seconds")
    kind = item.get("kind")
    if not isinstance(kind, str) or kind not in IMPORTED_KINDS:
        raise ValueError(f"unknown kind {str(kind)[:20]!r}")
    digest = item.get("sha256")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError("sha256 must be 64 lowercase hex characters")
    member = item.get("path")
    if not isinstance(member, str) or not member.startswith(FILES_PREFIX):
        raise ValueError(f"file path {str(member)[:80]!r} does not start with {FILES_PREFIX!r}")
    return {
        "path": check_relative_path(member[len(FILES_PREFIX) :]),
        "kind": IMPORTED_KINDS[kind],
        "recorded_kind": kind,
        "size": numbers["size"],
        "mode": numbers["mode"] & 0o777,  # never set-id or sticky bits from an archive
        "mtime": float(mtime),
        "sha256": digest,
    }


def _prepare_files(staging: Path, files: list[dict[str, Any]]) -> list[SelectedFile]:
    selected: list[SelectedFile] = []
    for item in sorted(files, key=lambda record: record["path"]):
        path = staging / (FILES_PREFIX + item["path"])
        os.chmod(path, item["mode"] | 0o400)  # the capture must be able to read it
        os.utime(path, (item["mtime"], item["mtime"]))
        selected.append(SelectedFile(path=path, relative=item["path"], kind=item["kind"]))
    if not selected:
        raise ImportRefused("the archive holds no files")
    return selected


# -- archive readers -------------------------------------------------------------------------


class _Budget(io.RawIOBase):
    """A reader that refuses to deliver more than ``limit`` bytes (decompression bombs)."""

    def __init__(self, source: IO[bytes], limit: int) -> None:
        self._source = source
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        data = self._source.read(min(len(view), max(self._left, 0) + 1))
        if len(data) > self._left:
            raise ImportRefused("archive expands beyond the allowed total size; refusing it")
        self._left -= len(data)
        view[: len(data)] = data
        return len(data)


def _bounded_tarinfo(limits: ImportLimits) -> type[tarfile.TarInfo]:
    class BoundedTarInfo(tarfile.TarInfo):
        # tarfile reads a pax or GNU long-name header's whole body into memory:
        # refuse an absurd one before it does.
        def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
            extension = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE)
            if self.type in extension and self.size > limits.max_extension_header_bytes:
                raise ImportRefused(f"archive has an extended header of {self.size} bytes; refusing it")
            return super()._proc_member(tar)  # type: ignore[misc]

    return BoundedTarInfo


_TAR_KINDS = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


@contextlib.contextmanager
def _members(archive_path: Path, limits: ImportLimits) -> Iterator[Iterator[_Member]]:
    if archive_path.is_dir() and not archive_path.is_symlink():
        yield _directory_members(archive_path)
        return
    try:
        raw = open(archive_path, "rb")
    except OSError as error:
        raise UsageError(f"cannot read archive {archive_path}: {error.strerror}") from error
    with raw:
        magic = raw.read(4)
        raw.seek(0)
        budget = limits.max_total_bytes + (limits.max_members + 16) * 3 * tarfile.BLOCKSIZE + limits.max_metadata_bytes * 2
        if magic[:2] == b"\x1f\x8b":
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb")
        elif magic == b"\x28\xb5\x2f\xfd":
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        else:
            stream = raw
        bounded = io.BufferedReader(_Budget(stream, budget), buffer_size=READ_PIECE)
        try:
            archive = tarfile.open(fileobj=bounded, mode="r|", tarinfo=_bounded_tarinfo(limits))
        except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as error:
            raise ImportRefused(f"{archive_path.name} is not a readable tar, tar.gz or tar.zst archive: {error}") from error
        with archive:
            try:
                yield _tar_members(archive)
            except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as error:
                if isinstance(error, BackupError):
                    raise
                raise ImportRefused(f"{archive_path.name} is damaged or truncated: {error}") from error


def _tar_members(archive: tarfile.TarFile) -> Iterator[_Member]:
    for info in archive:
        if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
            kind = "file"
        elif info.type == tarfile.DIRTYPE:
            kind = "directory"
        else:
            kind = _TAR_KINDS.get(info.type, f"member of unknown type {info.type!r}")

        def opener(info: tarfile.TarInfo = info) -> IO[bytes]:
            handle = archive.extractfile(info)
            if handle is None:
                raise ImportRefused(f"archive member {info.name!r} has no data")
            return handle

        yield _Member(name=info.name, kind=kind, size=info.size, open=opener)


def _directory_members(root: Path) -> Iterator[_Member]:
    """An unpacked export directory, walked without following any link."""
    for directory, subdirectories, files in os.walk(root, followlinks=False):
        subdirectories.sort()
        base = Path(directory)
        for name in sorted(subdirectories) + sorted(files):
            path = base / name
            relative = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                yield _Member(name=relative, kind="directory", size=0, open=_no_data)
            elif stat.S_ISREG(mode):
                yield _Member(name=relative, kind="file", size=os.lstat(path).st_size, open=_regular_file_opener(path))
            else:
                kind = "symbolic link" if stat.S_ISLNK(mode) else "special file"
                yield _Member(name=relative, kind=kind, size=0, open=_no_data)


def _no_data() -> IO[bytes]:
    raise ImportRefused("this archive member has no data")


def _regular_file_opener(path: Path) -> Callable[[], IO[bytes]]:
    def opener() -> IO[bytes]:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.close(descriptor)
            raise ImportRefused(f"{path} stopped being a regular file")
        return os.fdopen(descriptor, "rb")

    return opener
