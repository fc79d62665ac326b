"""Rendering: the reports of the library as tables for people and JSON for scripts.

Owns: human units (sizes, local times with the UTC snapshot id beside them,
ratios), tabulate tables, the JSON documents (each with ``schema_version``), and
the progress line drawn on a terminal. Returns strings, except ``ProgressLine``
which writes to the stream it is given; knows nothing of Invoke or exit codes.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import PurePath
from typing import Any, TextIO

from tabulate import tabulate

SCHEMA_VERSION = 1
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
MEANINGFUL_COMPRESSION_BYTES = 64 * 1024


# -- units ----------------------------------------------------------------------------


def human_size(size: int | None) -> str:
    """``1536`` -> ``1.5 KiB``; None -> ``-``."""
    if size is None:
        return "-"
    value = float(abs(size))
    unit = 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    sign = "-" if size < 0 else ""
    if unit == 0:
        return f"{sign}{int(value)} B"
    return f"{sign}{value:.1f} {_UNITS[unit]}"


def signed_size(delta: int) -> str:
    """A size change: ``+1.5 KiB``, ``-20 B``, ``0 B``."""
    return ("+" if delta > 0 else "") + human_size(delta)


def local_time(moment: datetime) -> str:
    """``2025-01-16 03:00:00 CET``: the moment in the local time zone."""
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def utc_text(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def ratio(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}x"
    return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{rest:02d}" if hours else f"{minutes}:{rest:02d}"


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    return tabulate(list(rows), headers=list(headers), tablefmt="simple", disable_numparse=True)


def fields(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column "name  value" block."""
    return tabulate([(name, value) for name, value in pairs], tablefmt="plain", disable_numparse=True)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# -- JSON -----------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Records, datetimes, paths and tuples as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [jsonable(item) for item in value]
        return sorted(items) if isinstance(value, (set, frozenset)) else items
    return value


def json_document(command: str, payload: Mapping[str, Any], *, ok: bool = True) -> str:
    """The one JSON document a ``--json`` run prints on stdout."""
    document = {"schema_version": SCHEMA_VERSION, "command": command, "ok": ok, **jsonable(payload)}
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)


def json_error(command: str, error: BaseException, exit_code: int) -> str:
    return json_document(
        command,
        {"error": {"type": type(error).__name__, "message": one_line(str(error)), "exit_code": exit_code}},
        ok=False,
    )


# -- snapshots ------------------------------------------------------------------------


def git_text(snapshot) -> str:
    git = snapshot.git
    if not git.commit:
        return "-"
    text = f"{git.branch or '?'}@{git.commit[:8]}"
    return text + ("+dirty" if git.dirty else "")


def integrity_text(snapshot) -> str:
    """What the integrity checks at backup time found for the snapshot's databases."""
    checks = [entry.sqlite for entry in snapshot.files if entry.sqlite is not None]
    if not checks:
        return "n/a"
    if any(info.integrity != "ok" for info in checks):
        return "FAILED"
    return "ok (quick)" if any(info.check == "quick_check" for info in checks) else "ok"


def snapshot_summary(snapshot) -> dict[str, Any]:
    return {
        "id": snapshot.id,
        "time": utc_text(snapshot.time),
        "local_time": local_time(snapshot.time),
        "tag": snapshot.tag,
        "note": snapshot.note,
        "git": jsonable(snapshot.git),
        "user": snapshot.user,
        "host": snapshot.host,
        "files": len(snapshot.files),
        "logical_bytes": snapshot.logical_bytes,
        "new_bytes": snapshot.stats.new_bytes,
        "stored_bytes": snapshot.stats.stored_bytes,
        "duration": snapshot.duration,
        "integrity": integrity_text(snapshot),
    }


def listing_table(listing) -> str:
    if not listing.snapshots and not listing.damaged:
        return "no snapshots"
    rows = [
        (
            snapshot.id,
            local_time(snapshot.time),
            snapshot.tag,
            git_text(snapshot),
            len(snapshot.files),
            human_size(snapshot.logical_bytes),
            human_size(snapshot.stats.new_bytes),
            integrity_text(snapshot),
        )
        for snapshot in listing.snapshots
    ]
    text = table(rows, ["id (UTC)", "local time", "tag", "git", "files", "size", "new", "verified"]) if rows else "no snapshots match"
    if listing.damaged:
        text += "\n\ndamaged manifests (run backup.verify):\n" + table(sorted(listing.damaged.items()), ["id", "problem"])
    return text


def listing_json(listing) -> dict[str, Any]:
    return {"snapshots": [snapshot_summary(snapshot) for snapshot in listing.snapshots], "damaged": dict(listing.damaged)}


# -- create ---------------------------------------------------------------------------


def _stored_ratio(report) -> tuple[float | None, float | None, float | None]:
    stats = report.snapshot.stats
    logical = report.snapshot.logical_bytes
    dedup = logical / stats.new_bytes if stats.new_bytes else None
    # Stored bytes include chunk lists and pack headers: for a few new bytes that
    # overhead, not compression, would make up the ratio.
    compression = stats.new_bytes / stats.stored_bytes if stats.stored_bytes and stats.new_bytes >= MEANINGFUL_COMPRESSION_BYTES else None
    overall = logical / stats.stored_bytes if stats.stored_bytes else None
    return dedup, compression, overall


def backup_table(report) -> str:
    snapshot = report.snapshot
    stats = snapshot.stats
    dedup, compression, overall = _stored_ratio(report)
    reused = f"{stats.reused_chunks} of {stats.new_chunks + stats.reused_chunks} chunks already stored"
    pairs = [
        ("snapshot", snapshot.id),
        ("time", local_time(snapshot.time)),
        ("tag", snapshot.tag + (f" ({snapshot.note})" if snapshot.note else "")),
        ("git", git_text(snapshot)),
        ("files", len(snapshot.files)),
        ("logical size", human_size(snapshot.logical_bytes)),
        ("new bytes stored", f"{human_size(stats.stored_bytes)} ({reused})"),
        ("ratio", "everything was already stored" if overall is None else f"{ratio(overall)} (dedup {ratio(dedup)}, compression {ratio(compression)})"),
        ("integrity", integrity_text(snapshot)),
        ("duration", duration(snapshot.duration)),
    ]
    if report.verification is not None:
        verification = report.verification
        pairs.append(("verified", "ok, every byte re-read" if verification.ok else f"FAILED: {len(verification.problems)} problems"))
    files = table(
        [(entry.path, entry.kind, human_size(entry.size), _integrity_cell(entry, report.unchanged)) for entry in snapshot.files],
        ["file", "kind", "size", "integrity"],
    )
    text = fields(pairs) + "\n\n" + files
    if report.verification is not None and not report.verification.ok:
        text += "\n\n" + problems_table(report.verification.problems)
    return text


def _integrity_cell(entry, unchanged: tuple[str, ...]) -> str:
    result = entry.sqlite.integrity if entry.sqlite else "n/a"
    return f"{result} (unchanged, not read again)" if entry.path in unchanged else result


def backup_json(report) -> dict[str, Any]:
    dedup, compression, overall = _stored_ratio(report)
    return {
        "snapshot": snapshot_summary(report.snapshot),
        "stats": jsonable(report.snapshot.stats),
        "ratios": {"dedup": dedup, "compression": compression, "overall": overall},
        "files": [
            {"path": entry.path, "kind": entry.kind, "size": entry.size, "sha256": entry.sha256, "integrity": entry.sqlite.integrity if entry.sqlite else None}
            for entry in report.snapshot.files
        ],
        "verification": verify_json(report.verification) if report.verification is not None else None,
        "warnings": list(report.warnings),
        "unchanged": list(report.unchanged),
    }


# -- verify ---------------------------------------------------------------------------


def problems_table(problems) -> str:
    return table(
        [(problem.snapshot_id or "-", problem.path or "-", problem.kind, problem.message) for problem in problems],
        ["snapshot", "file", "problem", "details"],
    )


def verify_table(report) -> str:
    mode = "structure and every byte" if report.read_data else "structure (add --read-data to re-read every byte)"
    pairs = [
        ("checked", mode),
        ("snapshots", report.snapshots_checked),
        ("files", report.files_checked),
        ("chunks", report.chunks_checked),
    ]
    if report.read_data:
        pairs += [("packs", report.packs_checked), ("bytes read", human_size(report.bytes_read))]
    pairs.append(("result", "ok" if report.ok else f"{len(report.problems)} problems in {len(report.affected_snapshots)} snapshots"))
    text = fields(pairs)
    if not report.ok:
        text += "\n\n" + problems_table(report.problems)
    return text


def verify_json(report) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "read_data": report.read_data,
        "snapshots_checked": report.snapshots_checked,
        "files_checked": report.files_checked,
        "chunks_checked": report.chunks_checked,
        "packs_checked": report.packs_checked,
        "bytes_read": report.bytes_read,
        "verified_snapshots": list(report.verified_snapshots),
        "affected_snapshots": report.affected_snapshots,
        "problems": jsonable(report.problems),
    }


# -- restore --------------------------------------------------------------------------


def restore_plan_table(plan) -> str:
    rows = [
        (
            item.entry.path,
            plan.snapshot.id,
            f"overwrites {item.destination}" if item.overwrites else f"creates {item.destination}",
            human_size(item.entry.size),
        )
        for item in plan.items
    ]
    header = f"restore plan: {len(plan.items)} files from snapshot {plan.snapshot.id} ({local_time(plan.snapshot.time)}, tag {plan.snapshot.tag})"
    return header + "\n" + table(rows, ["file", "from snapshot", "action", "size"])


def restore_plan_json(plan) -> dict[str, Any]:
    return {
        "snapshot": snapshot_summary(plan.snapshot),
        "destination_root": str(plan.destination_root),
        "items": [
            {"path": item.entry.path, "destination": str(item.destination), "overwrites": item.overwrites, "size": item.entry.size}
            for item in plan.items
        ],
    }


def restored_ok(restored) -> bool:
    return restored.sha256_ok and restored.integrity in ("ok", "n/a")


def restore_table(report) -> str:
    rows = [
        (
            restored.path,
            human_size(restored.size),
            ("ok" if restored.sha256_ok else "MISMATCH") + (" (read back)" if restored.read_back else ""),
            restored.integrity,
        )
        for restored in report.files
    ]
    text = table(rows, ["file", "size", "SHA-256", "integrity"])
    if report.safety_snapshot is not None:
        text += f"\n\nsafety snapshot: {report.safety_snapshot.id} (undo with: backup.restore {report.safety_snapshot.id} --force)"
    else:
        text += "\n\nsafety snapshot: none needed (no live file was overwritten)"
    return text


def restore_json(report) -> dict[str, Any]:
    return {
        "dry_run": report.dry_run,
        "plan": restore_plan_json(report.plan),
        "files": jsonable(report.files),
        "safety_snapshot": report.safety_snapshot.id if report.safety_snapshot is not None else None,
        "warnings": list(report.warnings),
    }


# -- compare --------------------------------------------------------------------------


def _rows_text(rows: int | None) -> str:
    return "-" if rows is None else str(rows)


def _schema_lines(path: str, schema) -> list[str]:
    lines = []
    for label, names in (
        ("tables added", schema.tables_added),
        ("tables removed", schema.tables_removed),
        ("indexes added", schema.indexes_added),
        ("indexes removed", schema.indexes_removed),
    ):
        if names:
            lines.append(f"{path}: {label}: {', '.join(names)}")
    for label, columns in (("columns added", schema.columns_added), ("columns removed", schema.columns_removed)):
        for table_name, names in columns.items():
            lines.append(f"{path}: {label} in {table_name}: {', '.join(names)}")
    return lines


def comparison_table(comparison) -> str:
    against = f"snapshot {comparison.other.id}" if comparison.other is not None else "the live project"
    header = f"snapshot {comparison.base.id} ({local_time(comparison.base.time)}) compared with {against}"
    counts = ", ".join(f"{comparison.count(status)} {status}" for status in ("added", "removed", "changed", "same"))
    files = table(
        [
            (item.path, item.status, human_size(item.size_before), human_size(item.size_after), signed_size(item.size_delta))
            for item in comparison.files
        ],
        ["file", "status", "before", "after", "delta"],
    )
    text = f"{header}\n{counts}\n\n{files}"
    table_rows = [
        (item.path, delta.name, delta.status, _rows_text(delta.rows_before), _rows_text(delta.rows_after), "-" if delta.delta is None else f"{delta.delta:+d}")
        for item in comparison.files
        for delta in item.tables
        if delta.status != "same" or item.status == "changed"
    ]
    if table_rows:
        text += "\n\n" + table(table_rows, ["database", "table", "status", "rows before", "rows after", "delta"])
    schema_lines = [line for item in comparison.files if item.schema is not None for line in _schema_lines(item.path, item.schema)]
    if schema_lines:
        text += "\n\nschema changes:\n" + "\n".join(f"  {line}" for line in schema_lines)
    if comparison.warnings:
        text += "\n\n" + "\n".join(f"WARNING: {warning}" for warning in comparison.warnings)
    return text


def comparison_json(comparison) -> dict[str, Any]:
    return {
        "base": snapshot_summary(comparison.base),
        "other": snapshot_summary(comparison.other) if comparison.other is not None else None,
        "against": "snapshot" if comparison.other is not None else "live",
        "counts": {status: comparison.count(status) for status in ("added", "removed", "changed", "same")},
        "files": jsonable(comparison.files),
        "warnings": list(comparison.warnings),
        "loss_threshold": comparison.loss_threshold,
    }


# -- info -----------------------------------------------------------------------------


def info_table(snapshot) -> str:
    stats = snapshot.stats
    pairs = [
        ("snapshot", snapshot.id),
        ("time", f"{local_time(snapshot.time)} ({utc_text(snapshot.time)})"),
        ("tag", snapshot.tag),
        ("note", snapshot.note or "-"),
        ("project root", snapshot.root),
        ("user@host", f"{snapshot.user}@{snapshot.host}"),
        ("git", git_text(snapshot)),
        ("tool version", snapshot.tool_version),
        ("duration", duration(snapshot.duration)),
        ("files", len(snapshot.files)),
        ("logical size", human_size(snapshot.logical_bytes)),
        ("new bytes", f"{human_size(stats.new_bytes)} in {stats.new_chunks} new chunks ({stats.reused_chunks} reused)"),
        ("stored bytes", human_size(stats.stored_bytes)),
        ("integrity", integrity_text(snapshot)),
    ]
    sections = [fields(pairs)]
    for entry in snapshot.files:
        details = [
            ("file", entry.path),
            ("kind", entry.kind),
            ("size", f"{human_size(entry.size)} ({entry.size} bytes)"),
            ("mode", f"{entry.mode:04o}"),
            ("modified", local_time(datetime.fromtimestamp(entry.mtime, timezone.utc))),
            ("sha256", entry.sha256),
            ("chunks", f"{entry.chunk_count} in {len(entry.chunk_lists)} chunk lists"),
        ]
        info = entry.sqlite
        if info is not None:
            details += [
                ("pages", f"{info.page_count} x {info.page_size} bytes"),
                ("journal mode", info.journal_mode),
                ("user_version", info.user_version),
                ("sqlite version", info.sqlite_version),
                ("schema hash", info.schema_hash),
                ("integrity", f"{info.integrity} ({info.check})"),
            ]
        block = fields(details)
        if info is not None and info.tables:
            block += "\n" + table([(name, _rows_text(rows)) for name, rows in info.tables.items()], ["table", "rows"])
        sections.append(block)
    return "\n\n".join(sections)


def info_json(snapshot) -> dict[str, Any]:
    return {"snapshot": {**snapshot_summary(snapshot), "manifest": snapshot.to_body()}}


# -- size -----------------------------------------------------------------------------


def size_table(report) -> str:
    pairs = [
        ("repository", report.repository),
        ("bytes on disk", human_size(report.repository_bytes)),
        ("packs", f"{report.pack_count} ({human_size(report.pack_bytes)})"),
        ("snapshots", report.snapshot_count),
        ("logical bytes", f"{human_size(report.logical_bytes)} (what restoring every snapshot would write)"),
        ("unique bytes", f"{human_size(report.unique_bytes)} (distinct data before compression)"),
        ("dedup ratio", ratio(report.dedup_ratio)),
        ("compression ratio", ratio(report.compression_ratio)),
        ("overall ratio", ratio(report.overall_ratio)),
        ("unreferenced", f"{human_size(report.unreferenced_bytes)} (backup.clean removes it)"),
    ]
    text = fields(pairs)
    if report.snapshots:
        text += "\n\n" + table(
            [(usage.id, local_time(usage.time), usage.tag, usage.files, human_size(usage.logical_bytes), human_size(usage.unique_bytes)) for usage in report.snapshots],
            ["snapshot (UTC)", "local time", "tag", "files", "size", "unique"],
        )
    if report.databases:
        text += "\n\nlargest files:\n" + table(
            [(usage.path, usage.kind, human_size(usage.latest_size), usage.versions, usage.distinct_versions, human_size(usage.stored_bytes)) for usage in report.databases],
            ["file", "kind", "latest size", "snapshots", "versions", "stored"],
        )
    if report.damaged:
        text += "\n\ndamaged snapshots left out (run backup.verify):\n" + table(sorted(report.damaged.items()), ["id", "problem"])
    return text


def size_json(report) -> dict[str, Any]:
    return {
        **jsonable(report),
        "dedup_ratio": report.dedup_ratio,
        "compression_ratio": report.compression_ratio,
        "overall_ratio": report.overall_ratio,
    }


# -- clean, export, unlock, sample ----------------------------------------------------------


def clean_table(report) -> str:
    removed = "to remove (dry run)" if report.dry_run else "removed"
    kept = ", ".join(report.kept) if len(report.kept) <= 3 else f"{report.kept[0]} .. {report.kept[-1]}"
    pairs = [
        (f"snapshots {removed}", f"{len(report.removed)}" + (f": {', '.join(report.removed)}" if report.removed else "")),
        ("snapshots kept", f"{len(report.kept)}" + (f": {kept}" if report.kept else "")),
        (f"packs {removed}", report.packs_removed),
        ("bytes to free" if report.dry_run else "bytes freed", human_size(report.bytes_freed)),
    ]
    if getattr(report, "policy", None) is not None:
        pairs.insert(0, ("policy", report.policy.describe()))
    summary = fields(pairs)
    decisions = getattr(report, "decisions", ())
    if not decisions:
        return summary
    rows = [(decision.snapshot_id, local_time(decision.time), decision.tag, ", ".join(decision.reasons) or "remove") for decision in decisions]
    return table(rows, ["snapshot", "time", "tag", "kept by"]) + "\n\n" + summary


def clean_json(report) -> dict[str, Any]:
    return jsonable(report)


def export_table(report) -> str:
    rows = [(item.path, human_size(item.size), item.sha256) for item in report.files]
    where = f"{report.output}" + (f" (folder {report.folder}/ inside)" if report.folder else "")
    check = f"cd {report.folder or '<export>'} && sha256sum -c SHA256SUMS"
    return (
        f"exported snapshot {report.snapshot.id} as {report.format} to {where}, {human_size(report.output_bytes)}\n\n"
        + table(rows, ["file", "size", "sha256"])
        + f"\n\ncheck it anywhere with: {check}"
    )


def export_json(report) -> dict[str, Any]:
    return {**jsonable(report), "snapshot": snapshot_summary(report.snapshot)}


def unlock_table(report) -> str:
    lines = [f"removed: {item}" for item in report.removed] or ["no lock records removed"]
    lines += [f"still held: {item}" for item in report.remaining]
    return "\n".join(lines)


def sample_table(report) -> str:
    state = "created" if report.created else "already present, left as is"
    rows = [(path, human_size(size)) for path, size in report.files]
    return f"sample project {report.root} {state}\n\n" + table(rows, ["file", "size"])


# -- repositories, keys, copy, import -----------------------------------------------


def init_json(repository) -> dict[str, Any]:
    config = repository.config
    return {
        "repository": repository.storage.location,
        "id": config.id,
        "encryption": config.encryption,
        "chunk_size": config.chunk_size,
        "compression": config.compression,
        "compression_level": config.compression_level,
        "key": repository.keys.key_id if repository.keys is not None else None,
    }


def init_table(repository) -> str:
    document = init_json(repository)
    pairs = [
        ("repository", document["repository"]),
        ("id", document["id"]),
        ("encryption", document["encryption"]),
        ("chunk size", human_size(document["chunk_size"])),
        ("compression", f"{document['compression']} (level {document['compression_level']})"),
    ]
    text = "created repository\n\n" + fields(pairs + ([("key", document["key"])] if document["key"] else []))
    if document["key"]:
        text += "\n\nkeep the passphrase safe: without it (or another key) the snapshots cannot be read; add a second with backup.key-add"
    return text


def key_table(keys, headline: str = "") -> str:
    rows = [(key.id, key.created, f"{key.user}@{key.host}", key.scrypt, "yes" if key.current else "") for key in keys]
    text = table(rows, ["key", "created", "by", "scrypt", "in use"])
    return f"{headline}\n\n{text}" if headline else text


def copy_table(report) -> str:
    rows = [
        (
            item.snapshot_id,
            "already there" if item.already_present else "copied",
            "-" if item.already_present else item.chunks_sent,
            "-" if item.already_present else item.chunks_reused,
            "-" if item.already_present else human_size(item.bytes_sent),
        )
        for item in report.snapshots
    ]
    copied = sum(1 for item in report.snapshots if not item.already_present)
    headline = f"copied {copied} of {len(report.snapshots)} snapshot(s) to {report.target}, each verified there before it was published"
    return headline + "\n\n" + table(rows, ["snapshot", "result", "chunks sent", "chunks reused", "bytes sent"])


def import_table(report) -> str:
    origin = f" (exported snapshot {report.source_snapshot_id})" if report.source_snapshot_id else ""
    return f"imported {len(report.files)} file(s){origin}\n\n" + backup_table(report.backup)


def import_json(report) -> dict[str, Any]:
    return {**backup_json(report.backup), "source_snapshot_id": report.source_snapshot_id, "imported_files": list(report.files)}


# -- progress -------------------------------------------------------------------------


class ProgressLine:
    """A one-line progress display (bytes, rate, ETA), redrawn in place on a terminal.

    Stays silent until the work has run for ``after`` seconds, so quick commands
    print nothing; redraws at most every ``interval`` seconds.
    """

    def __init__(self, stream: TextIO, *, after: float = 2.0, interval: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._after = after
        self._interval = interval
        self._clock = clock
        self._first: float | None = None
        self._phase_start = 0.0
        self._label = ""
        self._last_drawn = -1.0
        self.drawn = False

    def __call__(self, label: str, done: int, total: int | None) -> None:
        now = self._clock()
        if self._first is None:
            self._first = now
        if label != self._label or done == 0:
            self._label, self._phase_start = label, now
        if now - self._first < self._after or (now - self._last_drawn < self._interval and done != total):
            return
        self._last_drawn = now
        self._stream.write("\r" + self.describe(label, done, total, now - self._phase_start) + "\x1b[K")
        self._stream.flush()
        self.drawn = True

    @staticmethod
    def describe(label: str, done: int, total: int | None, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{label}: {human_size(done)}"
        if total:
            text += f" of {human_size(total)} ({min(done / total, 1.0):.0%})"
        text += f", {human_size(int(rate))}/s"
        if total and rate > 0 and done < total:
            text += f", ETA {duration((total - done) / rate)}"
        return text

    def close(self) -> None:
        if self.drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
