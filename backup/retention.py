"""Retention: which snapshots a policy keeps, which it removes, and why.

Owns: the ``RetentionPolicy`` record (validated from the ``backup.retention``
configuration section) and ``apply_policy``, a pure function with restic's
semantics plus dbkeep's guards. Knows snapshots only by id, time and tag; never
touches storage, so every decision can be tested without a repository.

Rules (a snapshot is kept if any rule keeps it):

- ``keep_last N``: the N newest snapshots.
- ``keep_hourly/daily/weekly/monthly/yearly N``: for the N newest calendar
  periods that hold a snapshot, the newest snapshot of that period. Periods are
  taken in the policy's time zone (``timezone``, default the local zone);
  weeks are ISO weeks (Monday to Sunday). ``-1`` means every period.
- ``keep_within DURATION`` (``1y2m3w4d5h``): every snapshot taken within that
  span before the *newest* snapshot, not before now, so a repository whose
  backups stopped does not expire itself.
- ``keep_tags``: every snapshot whose tag is listed.

These rules count only regular snapshots. Safety and migration snapshots
(``protected_tags``) have their own rule: the ``protected_keep_last`` newest of
each tag, and every one younger than ``protected_keep_within`` (measured from
``now``). ``keep_tags`` applies to every snapshot.

Guards, applied after the rules:

- the newest snapshot is always kept;
- the ``keep_verified`` newest snapshots whose last verification passed are
  never removed;
- while the newest snapshot's last verification failed, nothing is removed;
- a policy whose rules would keep no snapshot at all is refused
  (``PolicyRefused``) instead of being rescued by the guards;
- a policy with no rule at all keeps everything.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import ConfigError, UsageError

UNLIMITED = -1
PERIOD_RULES = ("hourly", "daily", "weekly", "monthly", "yearly")
DEFAULT_PROTECTED_TAGS = ("safety", "migration")


class PolicyRefused(UsageError):
    """The policy would remove every snapshot; nothing was removed."""


_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Duration:
    """A calendar span such as ``1y6m`` or ``7d``: months and years are calendar months."""

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text: str) -> Duration:
        """Parse ``[Ny][Nm][Nw][Nd][Nh]`` (m is months); raises ValueError otherwise."""
        match = _DURATION.match(text.strip()) if isinstance(text, str) else None
        if match is None or not any(match.groups()):
            raise ValueError(f"a duration such as 7d, 2w, 6m, 1y or 1y6m12h, not {text!r}")
        years, months, weeks, days, hours = (int(group or 0) for group in match.groups())
        return cls(years=years, months=months, weeks=weeks, days=days, hours=hours)

    @property
    def is_zero(self) -> bool:
        return not (self.years or self.months or self.weeks or self.days or self.hours)

    def before(self, moment: datetime) -> datetime:
        """``moment`` minus this span; a day past the end of the target month is clamped."""
        month_index = moment.year * 12 + (moment.month - 1) - self.years * 12 - self.months
        year, month = divmod(month_index, 12)
        month += 1
        day = min(moment.day, calendar.monthrange(year, month)[1])
        shifted = moment.replace(year=year, month=month, day=day)
        return shifted - timedelta(weeks=self.weeks, days=self.days, hours=self.hours)

    def __str__(self) -> str:
        parts = [(self.years, "y"), (self.months, "m"), (self.weeks, "w"), (self.days, "d"), (self.hours, "h")]
        return "".join(f"{value}{unit}" for value, unit in parts if value) or "0h"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionPolicy:
    """What to keep. Counts of 0 switch a rule off; -1 keeps every period."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: Duration | None = None
    keep_tags: tuple[str, ...] = ()
    timezone: str = "local"
    keep_verified: int = 2
    protected_tags: tuple[str, ...] = DEFAULT_PROTECTED_TAGS
    protected_keep_last: int = 3
    protected_keep_within: Duration | None = field(default_factory=lambda: Duration(days=7))

    @property
    def has_rules(self) -> bool:
        """True when at least one keep rule for regular snapshots is set."""
        counts = (self.keep_last, self.keep_hourly, self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly)
        return any(counts) or bool(self.keep_tags) or (self.keep_within is not None and not self.keep_within.is_zero)

    def zone(self) -> tzinfo | None:
        """The zone calendar periods are counted in; None means the local zone."""
        if self.timezone == "local":
            return None
        if self.timezone.upper() == "UTC":
            return timezone.utc
        return ZoneInfo(self.timezone)

    def describe(self) -> str:
        """The policy as flags, e.g. ``--keep-daily 7 --keep-within 30d``."""
        parts = []
        for name in ("keep_last", *(f"keep_{rule}" for rule in PERIOD_RULES)):
            value = getattr(self, name)
            if value:
                parts.append(f"--{name.replace('_', '-')} {value}")
        if self.keep_within is not None and not self.keep_within.is_zero:
            parts.append(f"--keep-within {self.keep_within}")
        parts.extend(f"--keep-tag {tag}" for tag in self.keep_tags)
        return " ".join(parts) or "(no rule: keep everything)"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RetentionPolicy:
        """Validate the ``backup.retention`` section; raises ConfigError listing every problem."""
        problems: list[str] = []
        parsed: dict[str, Any] = {}
        for key, value in values.items():
            parser = _PARSERS.get(key)
            if parser is None:
                problems.append(f"unknown setting backup.retention.{key}; known settings are: {', '.join(sorted(_PARSERS))}")
                continue
            try:
                parsed[key] = parser(value)
            except ValueError as error:
                problems.append(f"backup.retention.{key} = {value!r} is not allowed: expected {error}")
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(**parsed)

    def with_overrides(self, **overrides: Any) -> RetentionPolicy:
        """A copy with the given (already validated or raw) values; None values are ignored."""
        raw = {key: value for key, value in overrides.items() if value is not None}
        changed = RetentionPolicy.from_mapping(raw)
        merged = {item.name: getattr(self, item.name) for item in fields(self)}
        merged.update({key: getattr(changed, key) for key in raw})
        return RetentionPolicy(**merged)


def _count(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a whole number, 0 (off) or more, or -1 (unlimited)")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("a whole number, 0 (off) or more, or -1 (unlimited)") from None
    if number < UNLIMITED or (isinstance(value, float) and value != number):
        raise ValueError("a whole number, 0 (off) or more, or -1 (unlimited)")
    return number


def _non_negative(value: Any) -> int:
    number = _count(value)
    if number < 0:
        raise ValueError("a whole number, 0 or more")
    return number


def _duration(value: Any) -> Duration | None:
    if value is None or value == "" or value == 0:
        return None
    if not isinstance(value, str):
        raise ValueError("a duration such as 7d, 2w, 6m, 1y or 1y6m12h")
    return Duration.parse(value)


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValueError("a list of tags (or one comma-separated string)")
    if not all(isinstance(item, str) and item for item in items):
        raise ValueError("a list of non-empty tags")
    return tuple(items)


def _zone_name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("'local', 'UTC' or an IANA zone name such as Europe/Berlin")
    if value == "local" or value.upper() == "UTC":
        return value
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("'local', 'UTC' or an IANA zone name such as Europe/Berlin") from None
    return value


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "keep_last": _count,
    "keep_hourly": _count,
    "keep_daily": _count,
    "keep_weekly": _count,
    "keep_monthly": _count,
    "keep_yearly": _count,
    "keep_within": _duration,
    "keep_tags": _tags,
    "timezone": _zone_name,
    "keep_verified": _non_negative,
    "protected_tags": _tags,
    "protected_keep_last": _non_negative,
    "protected_keep_within": _duration,
}


class SnapshotLike(Protocol):
    """What retention needs of a snapshot (``backup.Snapshot`` has it)."""

    @property
    def id(self) -> str: ...

    @property
    def time(self) -> datetime: ...

    @property
    def tag(self) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One snapshot's fate and every rule that keeps it (empty when removed)."""

    snapshot_id: str
    time: datetime
    tag: str
    reasons: tuple[str, ...]

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionPlan:
    """The result of ``apply_policy``: decisions oldest first, and why nothing may go."""

    decisions: tuple[Decision, ...]
    held: str | None = None

    @property
    def keep(self) -> tuple[str, ...]:
        return tuple(decision.snapshot_id for decision in self.decisions if decision.keep)

    @property
    def remove(self) -> tuple[str, ...]:
        return tuple(decision.snapshot_id for decision in self.decisions if not decision.keep)

    def reasons(self) -> dict[str, tuple[str, ...]]:
        return {decision.snapshot_id: decision.reasons for decision in self.decisions}

    def count_by_rule(self) -> dict[str, int]:
        """How many snapshots each rule keeps (a snapshot kept by two rules counts twice)."""
        counts: dict[str, int] = {}
        for decision in self.decisions:
            for reason in decision.reasons:
                first = reason.split(" ", 1)[0]
                rule = first if first in _GROUPED_REASONS else reason
                counts[rule] = counts.get(rule, 0) + 1
        return counts


_GROUPED_REASONS = frozenset({*PERIOD_RULES, "within", "tag"})


def _period_key(rule: str, moment: datetime) -> tuple[int, ...]:
    if rule == "hourly":
        return (moment.year, moment.month, moment.day, moment.hour)
    if rule == "daily":
        return (moment.year, moment.month, moment.day)
    if rule == "weekly":
        iso = moment.isocalendar()
        return (iso[0], iso[1])
    if rule == "monthly":
        return (moment.year, moment.month)
    return (moment.year,)


def _period_label(rule: str, key: tuple[int, ...]) -> str:
    if rule == "hourly":
        return f"{key[0]:04d}-{key[1]:02d}-{key[2]:02d} {key[3]:02d}h"
    if rule == "daily":
        return f"{key[0]:04d}-{key[1]:02d}-{key[2]:02d}"
    if rule == "weekly":
        return f"{key[0]:04d}-W{key[1]:02d}"
    if rule == "monthly":
        return f"{key[0]:04d}-{key[1]:02d}"
    return f"{key[0]:04d}"


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("retention needs time-zone-aware datetimes")
    return moment.astimezone(timezone.utc)


def _rule_reasons(regular: Sequence[SnapshotLike], policy: RetentionPolicy) -> dict[str, list[str]]:
    """Reasons from keep-last, the period rules and keep-within; ``regular`` newest first."""
    reasons: dict[str, list[str]] = {snapshot.id: [] for snapshot in regular}
    if not regular:
        return reasons
    zone = policy.zone()
    for position, snapshot in enumerate(regular):
        if policy.keep_last == UNLIMITED or position < policy.keep_last:
            reasons[snapshot.id].append("last")
    for rule in PERIOD_RULES:
        budget = getattr(policy, f"keep_{rule}")
        seen: list[tuple[int, ...]] = []
        for snapshot in regular:
            key = _period_key(rule, snapshot.time.astimezone(zone))
            if seen and seen[-1] == key:
                continue
            if budget != UNLIMITED and len(seen) >= budget:
                break
            seen.append(key)
            reasons[snapshot.id].append(f"{rule} {_period_label(rule, key)}")
    if policy.keep_within is not None and not policy.keep_within.is_zero:
        newest = regular[0].time.astimezone(zone)
        cutoff = policy.keep_within.before(newest)
        for snapshot in regular:
            if snapshot.time > cutoff:
                reasons[snapshot.id].append(f"within {policy.keep_within}")
    return reasons


def _protected_reasons(protected: Sequence[SnapshotLike], policy: RetentionPolicy, now: datetime) -> dict[str, list[str]]:
    """The safety/migration rule; ``protected`` newest first."""
    reasons: dict[str, list[str]] = {snapshot.id: [] for snapshot in protected}
    per_tag: dict[str, int] = {}
    cutoff = policy.protected_keep_within.before(now.astimezone(policy.zone())) if policy.protected_keep_within else None
    for snapshot in protected:
        seen = per_tag.get(snapshot.tag, 0)
        if seen < policy.protected_keep_last:
            reasons[snapshot.id].append(f"{snapshot.tag} last {policy.protected_keep_last}")
        per_tag[snapshot.tag] = seen + 1
        if cutoff is not None and snapshot.time > cutoff:
            reasons[snapshot.id].append(f"{snapshot.tag} within {policy.protected_keep_within}")
    return reasons


def apply_policy(
    snapshots: Sequence[SnapshotLike],
    policy: RetentionPolicy,
    *,
    now: datetime,
    verification: Mapping[str, bool] | None = None,
) -> RetentionPlan:
    """Decide, for every snapshot, whether ``policy`` keeps it and by which rules.

    ``verification`` maps snapshot ids to the result of their last verification
    (True passed, False failed; absent means never verified). Returns a plan with
    decisions oldest first. Raises PolicyRefused when the policy has rules and they
    keep no snapshot at all. Pure: no I/O, ``now`` is passed in.
    """
    verification = verification or {}
    _utc(now)
    ordered = sorted(snapshots, key=lambda snapshot: (_utc(snapshot.time), snapshot.id), reverse=True)
    if len({snapshot.id for snapshot in ordered}) != len(ordered):
        raise ValueError("snapshot ids must be unique")
    if not ordered:
        return RetentionPlan(decisions=())
    protected_tags = set(policy.protected_tags)
    regular = [snapshot for snapshot in ordered if snapshot.tag not in protected_tags]
    protected = [snapshot for snapshot in ordered if snapshot.tag in protected_tags]
    reasons = {**_rule_reasons(regular, policy), **_protected_reasons(protected, policy, now)}
    for snapshot in ordered:
        if snapshot.tag in policy.keep_tags:
            reasons[snapshot.id].append(f"tag {snapshot.tag}")
    held: str | None = None
    if not policy.has_rules:
        for snapshot in ordered:
            reasons[snapshot.id].append("no rule")
    elif not any(reasons.values()):
        raise PolicyRefused(
            f"retention policy {policy.describe()} would remove all {len(ordered)} snapshots; "
            "nothing was removed (keep at least one, e.g. --keep-last 1)"
        )
    reasons[ordered[0].id].append("newest")
    verified = [snapshot for snapshot in ordered if verification.get(snapshot.id) is True]
    for snapshot in verified[: policy.keep_verified]:
        reasons[snapshot.id].append("newest verified")
    if verification.get(ordered[0].id) is False:
        held = f"the newest snapshot {ordered[0].id} failed its last verification; nothing is removed until a backup verifies"
        for snapshot in ordered:
            if not reasons[snapshot.id]:
                reasons[snapshot.id].append("held")
    decisions = tuple(
        Decision(snapshot_id=snapshot.id, time=snapshot.time, tag=snapshot.tag, reasons=tuple(reasons[snapshot.id]))
        for snapshot in reversed(ordered)
    )
    return RetentionPlan(decisions=decisions, held=held)


def oldest_restorable(plan: RetentionPlan) -> datetime | None:
    """The earliest point in time a kept snapshot can restore, or None if none is kept."""
    kept = [decision.time for decision in plan.decisions if decision.keep]
    return min(kept) if kept else None

