"""Chart primitives: human units, readable ticks, and well-formed, escaped SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backup import charts

T0 = datetime(2025, 1, 10, 2, 0, tzinfo=timezone.utc)
SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 * 1024**3, "5.0 GiB"), (-2048, "-2.0 KiB")],
)
def test_sizes_are_shown_in_binary_units(size, text):
    assert charts.human_bytes(size) == text


@pytest.mark.parametrize(("value", "text"), [(950, "950"), (1234, "1,234"), (12500, "12.5k"), (3_000_000, "3M"), (20_000, "20k")])
def test_counts_are_compact_and_readable(value, text):
    assert charts.compact_count(value) == text


def test_byte_ticks_are_round_numbers_of_one_unit_covering_the_maximum():
    ticks = charts.value_ticks(3.5 * 1024**2, 4, "bytes")
    assert [label for _, label in ticks] == ["0", "1 MiB", "2 MiB", "3 MiB", "4 MiB"]
    assert ticks[-1][0] >= 3.5 * 1024**2


def test_count_ticks_never_split_a_row():
    assert [value for value, _ in charts.value_ticks(3, 5, "count")] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("span", "room", "labels"),
    [
        (timedelta(hours=3), 600, ["02:00", "02:30", "03:00", "03:30", "04:00", "04:30", "05:00"]),
        (timedelta(days=4), 600, ["11 Jan", "12 Jan", "13 Jan", "14 Jan"]),
        (timedelta(days=4), 180, ["12 Jan", "14 Jan"]),
        (timedelta(days=400), 600, ["Mar 2025", "May 2025", "Jul 2025", "Sep 2025", "Nov 2025", "Jan 2026"]),
        (timedelta(days=400), 300, ["Jul 2025", "Jan 2026"]),
    ],
    ids=["half-hours", "days", "days-in-little-room", "months", "half-years"],
)
def test_time_ticks_pick_the_finest_step_whose_labels_fit(span, room, labels):
    assert [label for _, label in charts.time_ticks(T0, T0 + span, room)] == labels


@settings(max_examples=200, deadline=None)
@given(
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2040, 1, 1), timezones=st.just(timezone.utc)),
    seconds=st.integers(min_value=600, max_value=20 * 365 * 86400),
    room=st.integers(min_value=150, max_value=1200),
)
def test_time_ticks_are_inside_the_span_ascending_and_never_crowded(start, seconds, room):
    end = start + timedelta(seconds=seconds)
    ticks = charts.time_ticks(start, end, room)
    moments = [moment for moment, _ in ticks]
    assert moments == sorted(set(moments))
    assert all(start <= moment <= end for moment in moments)
    if ticks:
        widest = max(charts.label_width(label) for _, label in ticks)
        assert len(ticks) * (widest + 22) <= room
    if seconds >= 3 * 86400 and room >= 300:
        assert ticks, "a span of days always gets a tick"


def _parse(svg: str) -> ElementTree.Element:
    root = ElementTree.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    assert [child.tag for child in root[:2]] == [f"{SVG}title", f"{SVG}desc"]
    assert "nan" not in svg.lower().replace("nanos", "")
    return root


def test_line_chart_of_one_point_and_of_nothing_is_well_formed():
    one = charts.Series(name="size", css="s0", points=((T0, 1024.0),))
    empty = charts.Series(name="none", css="s1", points=())
    span = charts.time_range([T0])
    root = _parse(charts.line_chart([one, empty], chart_id="c", title="t", description="d", kind="bytes", width=400, height=200, span=span))
    dots = root.findall(f".//{SVG}circle")
    assert len(dots) == 1 and dots[0].find(f"{SVG}title").text.startswith("size: 1.0 KiB at 2025-01-10 02:00 UTC")


def test_timeline_escapes_labels_and_marks_failed_and_restore_point():
    lane = charts.Lane(
        label="<db>&co.sqlite",
        markers=(
            charts.Marker(time=T0, shape="diamond", state="verified", tooltip="a <b>", ring=True),
            charts.Marker(time=T0 + timedelta(days=1), shape="square", state="failed", tooltip="b", warning=True),
        ),
    )
    svg = charts.timeline_chart([lane], chart_id="t", title="t", description="d", width=500, span=charts.time_range([T0, T0 + timedelta(days=1)]))
    root = _parse(svg)
    assert root.find(f".//{SVG}text[@class='lane-label']").text == "<db>&co.sqlite"
    assert len(root.findall(f".//{SVG}circle[@class='ring']")) == 1
    assert len(root.findall(f".//{SVG}path[@class='cross']")) == 1 and len(root.findall(f".//{SVG}path[@class='warn-flag']")) == 1


def test_stacked_bar_of_zeros_draws_nothing_and_does_not_divide_by_zero():
    root = _parse(charts.stacked_bar([("none", 0, "a"), ("none", 0, "b")], chart_id="b", title="t"))
    assert root.findall(f"{SVG}rect") == []


def test_timeline_tags_put_safety_and_migration_first_and_never_overlap():
    moments = [T0 + timedelta(minutes=10 * index) for index in range(6)]
    labels = [(moment, "daily", False) for moment in moments[:-1]] + [(moments[-1], "migration", True)]
    svg = charts.timeline_chart([], chart_id="t", title="t", description="d", width=400, span=(T0 - timedelta(hours=1), T0 + timedelta(hours=2)), labels=labels)
    shown = [(float(text.get("x")), text.text) for text in _parse(svg).findall(f".//{SVG}text") if "tag-label" in (text.get("class") or "")]
    assert ("migration" in [text for _, text in shown]) and 1 <= len(shown) < len(labels)
    spans = sorted((x - charts.label_width(text) * 0.46, x + charts.label_width(text) * 0.46) for x, text in shown)
    assert all(left[1] + 6 <= right[0] for left, right in zip(spans, spans[1:]))


def test_dense_lines_drop_their_dots_and_crowded_lanes_shrink_their_markers():
    many = charts.Series(name="rows", css="s0", points=tuple((T0 + timedelta(hours=index), float(index)) for index in range(charts.DOTS_UP_TO + 1)))
    span = (T0, T0 + timedelta(hours=charts.DOTS_UP_TO + 1))
    root = _parse(charts.line_chart([many], chart_id="c", title="t", description="d", kind="count", width=400, height=200, span=span))
    assert root.findall(f".//{SVG}circle") == [] and len(root.findall(f".//{SVG}polyline")) == 1
    markers = tuple(charts.Marker(time=T0 + timedelta(hours=index), shape="circle", state="checked", tooltip="x") for index in range(200))
    lane = _parse(charts.timeline_chart([charts.Lane(label="a", markers=markers)], chart_id="t", title="t", description="d", width=400, span=span))
    assert {circle.get("r") for circle in lane.findall(f".//{SVG}circle")} == {"2.5"}
