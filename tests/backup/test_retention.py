"""Retention policy: table-driven cases with readable ids, and the invariants as properties."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup.errors import ConfigError
from backup.retention import Duration, PolicyRefused, RetentionPolicy, apply_policy, oldest_restorable

UTC = timezone.utc


@dataclass(frozen=True)
class Snap:
    id: str
    time: datetime
    tag: str = "daily"


def snap(text: str, tag: str = "daily") -> Snap:
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return Snap(id=f"{moment:%Y%m%dT%H%M%SZ}-{abs(hash(tag)) % 0xFFFF:04x}", time=moment, tag=tag)


def kept_times(plan) -> list[str]:
    return [decision.time.strftime("%Y-%m-%dT%H:%M") for decision in plan.decisions if decision.keep]


NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)

CASES = [
    pytest.param(
        ["2025-01-01T02:00", "2025-01-02T02:00", "2025-01-03T02:00", "2025-01-04T02:00", "2025-01-05T02:00"],
        dict(keep_last=3),
        ["2025-01-03T02:00", "2025-01-04T02:00", "2025-01-05T02:00"],
        id="keep-last-3-of-5-keeps-the-three-newest",
    ),
    pytest.param(
        ["2025-01-01T01:00", "2025-01-01T09:00", "2025-01-01T23:00", "2025-01-02T08:00", "2025-01-02T20:00", "2025-01-03T10:00"],
        dict(keep_daily=2),
        ["2025-01-02T20:00", "2025-01-03T10:00"],
        id="keep-daily-2-keeps-newest-of-each-of-the-two-newest-days",
    ),
    pytest.param(
        ["2025-01-01T01:00", "2025-01-03T09:00", "2025-01-10T10:00"],
        dict(keep_daily=-1),
        ["2025-01-01T01:00", "2025-01-03T09:00", "2025-01-10T10:00"],
        id="keep-daily-unlimited-keeps-one-per-day-forever",
    ),
    pytest.param(
        # 2025-01-05 is a Sunday, 2025-01-06 a Monday: ISO weeks 1 and 2.
        ["2025-01-04T10:00", "2025-01-05T10:00", "2025-01-06T10:00", "2025-01-07T10:00"],
        dict(keep_weekly=2),
        ["2025-01-05T10:00", "2025-01-07T10:00"],
        id="keep-weekly-uses-iso-weeks-monday-to-sunday",
    ),
    pytest.param(
        ["2025-01-15T00:00", "2025-01-31T00:00", "2025-02-10T00:00", "2025-03-01T00:00", "2025-03-20T00:00"],
        dict(keep_monthly=2),
        ["2025-02-10T00:00", "2025-03-20T00:00"],
        id="keep-monthly-2-keeps-last-snapshot-of-two-newest-months",
    ),
    pytest.param(
        ["2023-06-01T00:00", "2023-12-31T00:00", "2024-03-01T00:00", "2025-01-01T00:00"],
        dict(keep_yearly=2),
        ["2024-03-01T00:00", "2025-01-01T00:00"],
        id="keep-yearly-2-keeps-newest-of-two-newest-years",
    ),
    pytest.param(
        ["2025-01-01T10:05", "2025-01-01T10:55", "2025-01-01T11:10", "2025-01-01T12:01"],
        dict(keep_hourly=2),
        ["2025-01-01T11:10", "2025-01-01T12:01"],
        id="keep-hourly-2-keeps-newest-of-two-newest-hours",
    ),
    pytest.param(
        ["2025-01-01T00:00", "2025-01-08T00:00", "2025-01-09T12:00", "2025-01-10T00:00"],
        dict(keep_within="2d"),
        ["2025-01-09T12:00", "2025-01-10T00:00"],
        id="keep-within-counts-back-from-newest-snapshot-not-from-now",
    ),
    pytest.param(
        ["2024-02-28T12:00", "2024-02-29T12:00", "2024-03-31T00:00"],
        dict(keep_within="1m"),
        ["2024-02-29T12:00", "2024-03-31T00:00"],
        id="keep-within-one-month-from-march-31-reaches-back-to-february-29-midnight",
    ),
    pytest.param(
        ["2024-02-28T12:00", "2024-02-29T12:00", "2024-03-01T12:00", "2024-03-31T00:00"],
        dict(keep_daily=1, keep_monthly=2),
        ["2024-02-29T12:00", "2024-03-31T00:00"],
        id="rules-combine-as-a-union",
    ),
]


@pytest.mark.parametrize(("times", "rules", "expected"), CASES)
def test_policy_keeps_exactly_the_expected_snapshots(times, rules, expected):
    policy = RetentionPolicy.from_mapping({"timezone": "UTC", **rules})
    plan = apply_policy([snap(text) for text in times], policy, now=NOW)
    assert kept_times(plan) == expected
    assert set(plan.keep) | set(plan.remove) == {snap(text).id for text in times}


def test_daily_periods_follow_the_configured_time_zone():
    # 22:30Z and 23:30Z are the same UTC day but 23:30 on the 16th and 00:30 on the 17th in Berlin.
    snapshots = [snap("2025-01-15T12:00"), snap("2025-01-16T22:30"), snap("2025-01-16T23:30")]
    in_utc = apply_policy(snapshots, RetentionPolicy(keep_daily=2, timezone="UTC"), now=NOW)
    in_berlin = apply_policy(snapshots, RetentionPolicy(keep_daily=2, timezone="Europe/Berlin"), now=NOW)
    assert kept_times(in_utc) == ["2025-01-15T12:00", "2025-01-16T23:30"]
    assert kept_times(in_berlin) == ["2025-01-16T22:30", "2025-01-16T23:30"]
    assert in_berlin.reasons()[snapshots[2].id] == ("daily 2025-01-17", "newest")


def test_keep_tag_keeps_tagged_snapshots_and_the_newest():
    snapshots = [snap("2025-01-01T00:00", "manual"), snap("2025-01-02T00:00"), snap("2025-01-03T00:00", "manual"), snap("2025-01-04T00:00")]
    plan = apply_policy(snapshots, RetentionPolicy(keep_tags=("manual",)), now=NOW)
    assert kept_times(plan) == ["2025-01-01T00:00", "2025-01-03T00:00", "2025-01-04T00:00"]
    assert plan.reasons()[snapshots[3].id] == ("newest",)


def test_safety_snapshots_follow_their_own_rule_last_three_and_younger_than_seven_days():
    old_safety = [snap(f"2025-01-0{day}T00:00", "safety") for day in range(1, 6)]
    young_migration = snap("2025-05-30T00:00", "migration")
    regular = snap("2025-05-31T00:00")
    plan = apply_policy([*old_safety, young_migration, regular], RetentionPolicy(keep_last=1), now=NOW)
    assert kept_times(plan) == ["2025-01-03T00:00", "2025-01-04T00:00", "2025-01-05T00:00", "2025-05-30T00:00", "2025-05-31T00:00"]
    assert plan.reasons()[young_migration.id] == ("migration last 3", "migration within 7d")
    assert plan.reasons()[old_safety[0].id] == ()


def test_safety_snapshots_do_not_use_up_keep_last():
    snapshots = [snap("2025-01-01T00:00"), snap("2025-01-02T00:00"), snap("2025-01-03T00:00", "safety")]
    plan = apply_policy(snapshots, RetentionPolicy(keep_last=2, protected_keep_last=0, protected_keep_within=None), now=NOW)
    assert plan.reasons()[snapshots[0].id] == ("last",)
    assert plan.reasons()[snapshots[1].id] == ("last",)
    assert plan.reasons()[snapshots[2].id] == ("newest",)


def test_newest_verified_snapshots_are_never_removed():
    snapshots = [snap(f"2025-01-0{day}T00:00") for day in range(1, 6)]
    verification = {snapshots[1].id: True, snapshots[2].id: True, snapshots[4].id: False}
    plan = apply_policy(snapshots[:4] + [snapshots[4]], RetentionPolicy(keep_last=1, keep_verified=1), now=NOW, verification={snapshots[1].id: True, snapshots[2].id: True})
    assert kept_times(plan) == ["2025-01-03T00:00", "2025-01-05T00:00"]
    assert plan.reasons()[snapshots[2].id] == ("newest verified",)
    held = apply_policy(snapshots, RetentionPolicy(keep_last=1), now=NOW, verification=verification)
    assert held.remove == ()
    assert held.held is not None and snapshots[4].id in held.held
    assert held.reasons()[snapshots[0].id] == ("held",)


def test_policy_that_keeps_nothing_is_refused():
    snapshots = [snap("2025-01-01T00:00"), snap("2025-01-02T00:00")]
    with pytest.raises(PolicyRefused, match="would remove all 2 snapshots"):
        apply_policy(snapshots, RetentionPolicy(keep_tags=("no-such-tag",)), now=NOW)


def test_policy_without_rules_keeps_everything():
    snapshots = [snap("2025-01-01T00:00"), snap("2025-01-02T00:00")]
    plan = apply_policy(snapshots, RetentionPolicy(), now=NOW)
    assert plan.remove == ()
    assert oldest_restorable(plan) == snapshots[0].time


def test_empty_repository_gives_an_empty_plan():
    assert apply_policy([], RetentionPolicy(keep_last=1), now=NOW).decisions == ()


def test_config_section_is_validated_and_every_problem_named_at_once():
    policy = RetentionPolicy.from_mapping({"keep_daily": 7, "keep_within": "1y6m", "keep_tags": "manual, release", "timezone": "Europe/Berlin"})
    assert policy.keep_within == Duration(years=1, months=6)
    assert policy.keep_tags == ("manual", "release")
    with pytest.raises(ConfigError) as raised:
        RetentionPolicy.from_mapping({"keep_dialy": 7, "keep_weekly": "many", "keep_within": "7 days", "timezone": "Mars/Olympus"})
    message = str(raised.value)
    for fragment in ("backup.retention.keep_dialy", "keep_weekly = 'many'", "keep_within = '7 days'", "timezone = 'Mars/Olympus'"):
        assert fragment in message


@pytest.mark.parametrize(
    ("text", "moment", "expected"),
    [
        pytest.param("7d", "2025-03-10T00:00", "2025-03-03T00:00", id="days"),
        pytest.param("2w", "2025-03-15T00:00", "2025-03-01T00:00", id="weeks"),
        pytest.param("1m", "2025-03-31T06:00", "2025-02-28T06:00", id="month-clamped-to-month-end"),
        pytest.param("1y", "2024-02-29T00:00", "2023-02-28T00:00", id="leap-day-minus-a-year"),
        pytest.param("1y2m3d4h", "2025-05-10T12:00", "2024-03-07T08:00", id="all-units"),
    ],
)
def test_duration_subtracts_calendar_units(text, moment, expected):
    start = datetime.fromisoformat(moment).replace(tzinfo=UTC)
    assert Duration.parse(text).before(start) == datetime.fromisoformat(expected).replace(tzinfo=UTC)


# -- properties --------------------------------------------------------------------

BASE = datetime(2024, 1, 1, tzinfo=UTC)
TAGS = ["daily", "manual", "safety", "migration"]


@st.composite
def snapshot_sets(draw):
    offsets = draw(st.lists(st.integers(min_value=0, max_value=2 * 365 * 24 * 60), min_size=1, max_size=40, unique=True))
    snapshots = []
    for number, offset in enumerate(sorted(offsets)):
        moment = BASE + timedelta(minutes=offset)
        snapshots.append(Snap(id=f"{moment:%Y%m%dT%H%M%SZ}-{number:04x}", time=moment, tag=draw(st.sampled_from(TAGS))))
    return snapshots


counts = st.integers(min_value=0, max_value=6)
policies = st.builds(
    RetentionPolicy,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_yearly=counts,
    keep_within=st.one_of(st.none(), st.sampled_from([Duration(days=1), Duration(days=30), Duration(months=6)])),
    timezone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]),
    keep_verified=st.integers(min_value=0, max_value=3),
    protected_keep_last=st.integers(min_value=0, max_value=3),
    protected_keep_within=st.one_of(st.none(), st.just(Duration(days=7))),
)


@st.composite
def scenarios(draw):
    snapshots = draw(snapshot_sets())
    policy = draw(policies)
    verification = {snapshot.id: draw(st.booleans()) for snapshot in snapshots if draw(st.booleans())}
    now = snapshots[-1].time + timedelta(days=draw(st.integers(min_value=0, max_value=400)))
    return snapshots, policy, verification, now


def plan_or_refused(snapshots, policy, verification, now):
    try:
        return apply_policy(snapshots, policy, now=now, verification=verification)
    except PolicyRefused:
        return None


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_every_snapshot_is_kept_or_removed_and_the_newest_is_always_kept(scenario):
    snapshots, policy, verification, now = scenario
    plan = plan_or_refused(snapshots, policy, verification, now)
    if plan is None:
        return
    assert sorted(plan.keep + plan.remove) == sorted(snapshot.id for snapshot in snapshots)
    assert not set(plan.keep) & set(plan.remove)
    assert snapshots[-1].id in plan.keep
    assert all(decision.reasons for decision in plan.decisions if decision.keep)


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_newest_verified_snapshots_survive_and_a_failed_newest_holds_everything(scenario):
    snapshots, policy, verification, now = scenario
    plan = plan_or_refused(snapshots, policy, verification, now)
    if plan is None:
        return
    verified = [snapshot.id for snapshot in reversed(snapshots) if verification.get(snapshot.id) is True]
    assert set(verified[: policy.keep_verified]) <= set(plan.keep)
    if verification.get(snapshots[-1].id) is False:
        assert plan.remove == ()
        assert plan.held


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_applying_the_policy_to_what_it_kept_removes_nothing_more(scenario):
    snapshots, policy, verification, now = scenario
    plan = plan_or_refused(snapshots, policy, verification, now)
    if plan is None:
        return
    kept = [snapshot for snapshot in snapshots if snapshot.id in set(plan.keep)]
    again = apply_policy(kept, policy, now=now, verification=verification)
    assert again.remove == ()


@settings(max_examples=300, deadline=None)
@given(scenarios(), st.sampled_from(["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "protected_keep_last"]))
def test_raising_any_count_never_removes_a_snapshot_that_was_kept(scenario, rule):
    snapshots, policy, verification, now = scenario
    plan = plan_or_refused(snapshots, policy, verification, now)
    if plan is None or not policy.has_rules:  # no rule at all keeps everything by definition
        return
    bigger = policy.with_overrides(**{rule: getattr(policy, rule) + 1})
    assert set(plan.keep) <= set(apply_policy(snapshots, bigger, now=now, verification=verification).keep)


@settings(max_examples=200, deadline=None)
@given(snapshot_sets(), st.integers(min_value=1, max_value=5))
def test_keep_daily_keeps_at_most_n_distinct_days_each_with_its_newest_snapshot(snapshots, days):
    policy = RetentionPolicy(keep_daily=days, timezone="UTC", keep_verified=0, protected_tags=())
    plan = apply_policy(snapshots, policy, now=snapshots[-1].time)
    daily = [decision for decision in plan.decisions if any(reason.startswith("daily") for reason in decision.reasons)]
    dates = [decision.time.date() for decision in daily]
    assert len(dates) == len(set(dates)) == min(days, len({snapshot.time.date() for snapshot in snapshots}))
    for decision in daily:
        assert decision.time == max(snapshot.time for snapshot in snapshots if snapshot.time.date() == decision.time.date())


@settings(max_examples=200, deadline=None)
@given(snapshot_sets(), st.integers(min_value=1, max_value=8))
def test_keep_last_keeps_the_n_newest_regular_snapshots(snapshots, count):
    plan = apply_policy(snapshots, RetentionPolicy(keep_last=count), now=snapshots[-1].time)
    regular = [snapshot.id for snapshot in snapshots if snapshot.tag not in ("safety", "migration")]
    assert set(regular[-count:]) <= set(plan.keep)
