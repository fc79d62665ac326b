"""Naming snapshots by id, prefix, latest or a point in time."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from backup.errors import AmbiguousSnapshot, SnapshotNotFound
from backup.lookup import parse_point_in_time, resolve_snapshot

IDS = ["20250115T020000Z-0a00", "20250116T020000Z-3f9a", "20250116T020000Z-4000", "20250116T100000Z-1234"]
NOW = datetime(2025, 1, 17, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("latest", "20250116T100000Z-1234"),
        ("20250115T020000Z-0a00", "20250115T020000Z-0a00"),
        ("20250115", "20250115T020000Z-0a00"),
        ("20250116T020000Z-3", "20250116T020000Z-3f9a"),
        ("2025-01-16T05:00Z", "20250116T020000Z-4000"),
        ("2025-01-15T23:59:59+00:00", "20250115T020000Z-0a00"),
        ("30h", "20250116T020000Z-4000"),
        ("1d", "20250116T100000Z-1234"),
    ],
    ids=["latest", "full-id", "unique-prefix", "longer-prefix", "utc-time", "offset-time", "hours-ago", "days-ago"],
)
def test_spec_resolves_to_expected_snapshot(spec, expected):
    assert resolve_snapshot(spec, IDS, now=NOW) == expected


def test_ambiguous_prefix_names_the_matches():
    with pytest.raises(AmbiguousSnapshot, match="matches 2 snapshots"):
        resolve_snapshot("20250116T02", IDS, now=NOW)


@pytest.mark.parametrize("spec", ["nonsense", "2024-01-01", "99d"])
def test_unknown_or_too_early_spec_raises_not_found(spec):
    with pytest.raises(SnapshotNotFound):
        resolve_snapshot(spec, IDS, now=NOW)


def test_empty_repository_says_to_create_a_backup():
    with pytest.raises(SnapshotNotFound, match="backup.create"):
        resolve_snapshot("latest", [], now=NOW)


def test_bare_date_means_end_of_that_local_day():
    moment = parse_point_in_time("2025-01-16", now=NOW)
    assert (moment.hour, moment.minute) == (23, 59)
    assert moment.tzinfo is not None
