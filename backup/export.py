"""Export: one snapshot's files as a portable archive anyone can check without dbkeep.

Owns: writing a snapshot as ``tar.gz``, ``tar.zst`` or a plain directory, laid out as

    dbkeep-<snapshot-id>/           (the archive's top folder; a directory export is this folder)
      files/<path>                  every file of the snapshot, at its project-relative path
      metadata.json                 what the export holds (each file's path, size, sha256,
                                    kind, mode, mtime) and the snapshot's manifest
      SHA256SUMS                    what ``sha256sum -c SHA256SUMS`` checks, run in that folder

docs/format.md ("Export archives") specifies every field; ``backup.transfer``
imports exactly this layout, so an export can always be imported again.

Every file's bytes are verified while they are written (each chunk against its
id, the whole file against its recorded SHA-256). Output appears under its final
name only when complete: archives go to a private temp file that is fsynced and
then linked into place (never over an existing file); directories are built
under a hidden partial name and renamed. A failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import zstandard

from . import fsio, locking, progress
from .errors import UsageError, VerificationFailed
from .inspection import verified_chunks
from .lookup import resolve_snapshot
from .manifest import FileEntry, Snapshot
from .operations import open_repository
from .provenance import TOOL_VERSION
from .repository import Repository
from .settings import Settings
from .storage import describe_os_error
from .verification import Problem

FORMATS = ("tar.gz", "tar.zst", "dir")
EXPORT_SCHEMA_VERSION = 1
ZSTD_LEVEL = 10


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportedFile:
    path: str  # inside the export folder, e.g. "files/app.db"
    size: int
    sha256: str
    #: What ``import`` needs to store the file again; None for metadata.json itself.
    kind: str | None = None
    mode: int | None = None
    mtime: float | None = None


def _exported(entry: FileEntry) -> ExportedFile:
    return ExportedFile(path=_member_path(entry), size=entry.size, sha256=entry.sha256, kind=entry.kind, mode=entry.mode, mtime=entry.mtime)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportReport:
    snapshot: Snapshot
    output: str
    format: str
    folder: str  # the top folder inside an archive ("" for a directory export)
    files: tuple[ExportedFile, ...]
    output_bytes: int  # size of the archive, or of every file written for a directory


def format_for(output: Path, requested: str | None) -> str:
    """The export format: the one asked for, else guessed from the name, else tar.gz."""
    if requested is not None:
        if requested not in FORMATS:
            raise UsageError(f"export format {requested!r} is not allowed: expected one of {', '.join(FORMATS)}")
        return requested
    name = output.name.lower()
    if name.endswith((".tar.zst", ".tzst")):
        return "tar.zst"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    return "tar.gz"


def export_snapshot(
    settings: Settings,
    snapshot: str,
    output: Path,
    *,
    format: str | None = None,
    now: datetime | None = None,
) -> ExportReport:
    """Write the snapshot ``snapshot`` to ``output`` (which must not exist yet).

    Raises UsageError when ``output`` exists or its folder does not, VerificationFailed
    or CorruptData when stored bytes are wrong (nothing is left behind), StorageError
    when the output cannot be written.
    """
    chosen_format = format_for(output, format)
    output = Path(os.path.abspath(output))
    if output.exists() or output.is_symlink():
        raise UsageError(f"{output} already exists; choose another name or remove it first")
    if not output.parent.is_dir():
        raise UsageError(f"cannot export to {output}: the folder {output.parent} does not exist")
    moment = now or datetime.now(timezone.utc)
    repository = open_repository(settings)
    with locking.acquire(repository.storage, exclusive=False, purpose="export", wait=settings.lock_wait):
        chosen = repository.load_snapshot(resolve_snapshot(snapshot, repository.snapshot_ids(), now=moment))
        progress.begin("export", sum(entry.size for entry in chosen.files))
        try:
            if chosen_format == "dir":
                files, size = _export_directory(repository, chosen, output, moment)
                folder = ""
            else:
                folder = f"dbkeep-{chosen.id}"
                files, size = _export_archive(repository, chosen, output, chosen_format, folder, moment)
        except FileExistsError as error:
            raise UsageError(f"{output} appeared while exporting; nothing was written over it") from error
        except OSError as error:
            raise describe_os_error("write", output, error) from error
    return ExportReport(snapshot=chosen, output=str(output), format=chosen_format, folder=folder, files=tuple(files), output_bytes=size)


# -- shared pieces ---------------------------------------------------------------------


def _member_path(entry: FileEntry) -> str:
    return f"files/{entry.path}"


def _metadata(snapshot: Snapshot, files: list[ExportedFile], moment: datetime) -> bytes:
    document = {
        "schema_version": EXPORT_SCHEMA_VERSION,
        "format": "dbkeep-export",
        "exported_at": moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "tool_version": TOOL_VERSION,
        "files": [
            {"path": item.path, "size": item.size, "sha256": item.sha256, "kind": item.kind, "mode": item.mode, "mtime": item.mtime} for item in files
        ],
        "snapshot": snapshot.to_body(),
    }
    return json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False).encode() + b"\n"


def _sums_line(digest: str, name: str) -> str:
    """One ``sha256sum`` line; names with a newline or backslash use its escaped form."""
    if "\\" in name or "\n" in name or "\r" in name:
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{digest}  {escaped}\n"
    return f"{digest}  {name}\n"


def _sums(files: list[ExportedFile]) -> bytes:
    return "".join(_sums_line(item.sha256, item.path) for item in files).encode()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _ChunkReader(io.RawIOBase):
    """A file object over a file's verified chunks, for tarfile.addfile."""

    def __init__(self, entry: FileEntry, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._entry = entry
        self._chunks = chunks
        self._buffer = bytearray()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            progress.advance(len(chunk))
            self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def finish(self) -> None:
        """Drain the chunks so the whole-file check runs; refuse bytes beyond the recorded size."""
        extra = len(self._buffer) + sum(len(chunk) for chunk in self._chunks)
        if extra:
            raise VerificationFailed(
                f"{self._entry.path}: stored file is longer than the recorded {self._entry.size} bytes; run backup.verify --read-data",
                [Problem(kind="file-hash", message="stored file is longer than recorded", path=self._entry.path)],
            )


class _DescriptorSink(io.RawIOBase):
    """Write-only file object over a descriptor, through the fsio seam."""

    def __init__(self, descriptor: int) -> None:
        super().__init__()
        self._descriptor = descriptor
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        fsio.write(self._descriptor, data)
        self.written += len(data)
        return len(data)


# -- archives --------------------------------------------------------------------------


def _export_archive(repository: Repository, snapshot: Snapshot, output: Path, chosen_format: str, folder: str, moment: datetime) -> tuple[list[ExportedFile], int]:
    descriptor, temp = fsio.create_temp(output.parent)
    try:
        try:
            sink = _DescriptorSink(descriptor)
            if chosen_format == "tar.zst":
                with zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(sink, closefd=False) as compressed:
                    files = _write_tar(repository, snapshot, compressed, "w|", folder, moment)
            else:
                files = _write_tar(repository, snapshot, sink, "w|gz", folder, moment)
            fsio.fsync(descriptor)
        finally:
            os.close(descriptor)
        fsio.link(temp, output)
        fsio.unlink(temp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    fsio.fsync_dir(output.parent)
    return files, sink.written


def _tar_info(name: str, size: int, mode: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = mode & 0o777
    info.mtime = int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_tar(repository: Repository, snapshot: Snapshot, fileobj, mode: str, folder: str, moment: datetime) -> list[ExportedFile]:
    files: list[ExportedFile] = []
    with tarfile.open(fileobj=fileobj, mode=mode, format=tarfile.PAX_FORMAT) as archive:
        for entry in snapshot.files:
            reader = _ChunkReader(entry, verified_chunks(repository, entry))
            archive.addfile(_tar_info(f"{folder}/{_member_path(entry)}", entry.size, entry.mode, entry.mtime), reader)
            reader.finish()
            files.append(_exported(entry))
        metadata = _metadata(snapshot, files, moment)
        files.append(ExportedFile(path="metadata.json", size=len(metadata), sha256=_digest(metadata)))
        sums = _sums(files)
        for name, data in (("metadata.json", metadata), ("SHA256SUMS", sums)):
            archive.addfile(_tar_info(f"{folder}/{name}", len(data), 0o644, moment.timestamp()), io.BytesIO(data))
    return files


# -- directories -----------------------------------------------------------------------


def _write_private_file(path: Path, pieces) -> int:
    fsio.make_private_dirs(path.parent)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), fsio.FILE_MODE)
    size = 0
    try:
        for piece in pieces:
            fsio.write(descriptor, piece)
            size += len(piece)
            progress.advance(len(piece))
        fsio.fsync(descriptor)
    finally:
        os.close(descriptor)
    return size


def _export_directory(repository: Repository, snapshot: Snapshot, output: Path, moment: datetime) -> tuple[list[ExportedFile], int]:
    partial = output.parent / f".{output.name}.dbkeep-partial-{secrets.token_hex(4)}"
    fsio.make_private_dirs(partial)
    try:
        files: list[ExportedFile] = []
        total = 0
        for entry in snapshot.files:
            total += _write_private_file(partial / _member_path(entry), verified_chunks(repository, entry))
            files.append(_exported(entry))
        metadata = _metadata(snapshot, files, moment)
        total += _write_private_file(partial / "metadata.json", [metadata])
        files.append(ExportedFile(path="metadata.json", size=len(metadata), sha256=_digest(metadata)))
        total += _write_private_file(partial / "SHA256SUMS", [_sums(files)])
        for directory, _subdirectories, _files in os.walk(partial):
            fsio.fsync_dir(Path(directory))
        if output.exists():
            raise FileExistsError(output)
        fsio.replace(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    fsio.fsync_dir(output.parent)
    return files, total
