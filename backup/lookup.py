"""Naming snapshots: id, unique prefix, ``latest``, or a point in time.

Owns: turning what a user typed into one snapshot id, given the ids that exist.
Pure functions: the time "now" is passed in, so tests are deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from .errors import AmbiguousSnapshot, SnapshotNotFound

_AGO = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_ID_TIME = "%Y%m%dT%H%M%SZ"


def snapshot_time(snapshot_id: str) -> datetime:
    return datetime.strptime(snapshot_id.split("-", 1)[0], _ID_TIME).replace(tzinfo=timezone.utc)


def parse_point_in_time(text: str, *, now: datetime) -> datetime | None:
    """A moment from ``2025-01-16T10:00``, ``2025-01-16``, ``yesterday``, ``today`` or ``3h``.

    Times without a zone are local time. Returns None when ``text`` is no time.
    """
    value = text.strip().lower()
    local_now = now.astimezone()
    if value == "now":
        return now
    if value == "today":
        return local_now
    if value == "yesterday":
        return local_now - timedelta(days=1)
    match = _AGO.match(value)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if len(text.strip()) == 10:  # a bare date means the end of that day
        moment = moment.replace(hour=23, minute=59, second=59)
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive means local time
    return moment


def resolve_snapshot(spec: str, snapshot_ids: Sequence[str], *, now: datetime) -> str:
    """The one snapshot id that ``spec`` names among ``snapshot_ids`` (sorted oldest first).

    Raises SnapshotNotFound or AmbiguousSnapshot with a message saying what to do.
    """
    spec = spec.strip()
    if not snapshot_ids:
        raise SnapshotNotFound("the repository has no snapshots yet; create one with backup.create")
    if spec == "latest":
        return snapshot_ids[-1]
    if spec in snapshot_ids:
        return spec
    matches = [snapshot_id for snapshot_id in snapshot_ids if snapshot_id.startswith(spec)] if spec else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (" ..." if len(matches) > 5 else "")
        raise AmbiguousSnapshot(f"snapshot prefix {spec!r} matches {len(matches)} snapshots ({shown}); type more characters")
    moment = parse_point_in_time(spec, now=now)
    if moment is None:
        raise SnapshotNotFound(
            f"no snapshot matches {spec!r}; use an id or unique prefix from backup.list, 'latest', "
            "or a point in time such as 2025-01-16T10:00, yesterday or 3h"
        )
    earlier = [snapshot_id for snapshot_id in snapshot_ids if snapshot_time(snapshot_id) <= moment]
    if not earlier:
        raise SnapshotNotFound(f"no snapshot was taken at or before {moment.isoformat(timespec='seconds')}; the oldest is {snapshot_ids[0]}")
    return earlier[-1]
