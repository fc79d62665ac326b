"""Charts: small inline SVG drawings for the health report, made without a plotting library.

Owns: time and value scales with readable ticks (dates, IEC byte units, compact
counts), a line chart of series over time, a timeline of snapshot markers in one
lane per database, and a stacked bar. Every function returns one ``<svg>``
element as text, sized by its ``viewBox`` so the page can scale it; colours come
from CSS classes the page defines (so dark mode and print restyle them), text is
escaped, and each chart carries a ``<title>`` and ``<desc>`` for screen readers.
Knows nothing of repositories, snapshots or databases: only times, numbers and labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html import escape
from .render import human_size

#: Categorical colour classes the page defines (``s0`` ... ``s7``).
PALETTE_SIZE = 8
_IEC = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_MINUTE, _HOUR, _DAY = 60, 3600, 86400
_SECOND_STEPS = (
    _MINUTE,
    5 * _MINUTE,
    15 * _MINUTE,
    30 * _MINUTE,
    _HOUR,
    3 * _HOUR,
    6 * _HOUR,
    12 * _HOUR,
    _DAY,
    2 * _DAY,
    7 * _DAY,
    14 * _DAY,
)
_MONTH_STEPS = (1, 2, 3, 6, 12, 24, 60, 120)
#: 1970-01-05 was a Monday: weekly ticks fall on Mondays.
_MONDAY_OFFSET = 4 * _DAY


# -- units ----------------------------------------------------------------------------


def human_bytes(size: float) -> str:
    """``1536`` -> ``1.5 KiB``; whole bytes below 1 KiB; IEC units (the CLI's format)."""
    return human_size(int(size))


def compact_count(value: float) -> str:
    """``950`` -> ``950``, ``12500`` -> ``12.5k``, ``3000000`` -> ``3M``."""
    magnitude = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e4, "k")):
        if magnitude >= limit:
            divisor = limit if suffix != "k" else 1e3
            text = f"{value / divisor:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def _trim(number: float) -> str:
    text = f"{number:.2f}".rstrip("0").rstrip(".")
    return text or "0"


# -- scales ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeScale:
    """Maps moments between ``start`` and ``end`` onto ``left`` .. ``right``."""

    start: datetime
    end: datetime
    left: float
    right: float

    def x(self, moment: datetime) -> float:
        span = (self.end - self.start).total_seconds() or 1.0
        fraction = (moment - self.start).total_seconds() / span
        return self.left + fraction * (self.right - self.left)


@dataclass(frozen=True, slots=True, kw_only=True)
class ValueScale:
    """Maps ``0`` .. ``high`` onto ``bottom`` .. ``top`` (SVG y grows downwards)."""

    high: float
    top: float
    bottom: float

    def y(self, value: float) -> float:
        return self.bottom - (value / (self.high or 1.0)) * (self.bottom - self.top)


def time_range(moments: Sequence[datetime]) -> tuple[datetime, datetime]:
    """The span to draw: every moment inside, with a margin so edge markers are not cut."""
    if not moments:
        now = datetime.now(timezone.utc)
        return now - timedelta(hours=12), now + timedelta(hours=12)
    first, last = min(moments), max(moments)
    span = last - first
    if span < timedelta(minutes=10):
        return first - timedelta(hours=1), last + timedelta(hours=1)
    margin = span * 0.04
    return first - margin, last + margin


def _add_months(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + moment.month - 1 + months
    return moment.replace(year=index // 12, month=index % 12 + 1, day=1, hour=0, minute=0, second=0, microsecond=0)


def label_width(text: str) -> float:
    """Roughly how wide ``text`` is at the charts' 12px font, in pixels."""
    return 6.8 * len(text)


def time_ticks(start: datetime, end: datetime, room: float) -> list[tuple[datetime, str]]:
    """Round moments (UTC) between ``start`` and ``end`` with labels that fit in ``room`` pixels.

    Tries minutes, hours, days, weeks (on Mondays), then calendar months and
    years, and takes the finest step whose labels do not crowd each other.
    """
    start_utc, end_utc = start.astimezone(timezone.utc), end.astimezone(timezone.utc)
    span = (end_utc - start_utc).total_seconds()
    for step in _SECOND_STEPS:
        if span / step > 40:
            continue
        offset = _MONDAY_OFFSET if step % (7 * _DAY) == 0 else 0
        value = math.ceil((start_utc.timestamp() - offset) / step) * step + offset
        ticks = []
        while value <= end_utc.timestamp():
            moment = datetime.fromtimestamp(value, timezone.utc)
            ticks.append((moment, _tick_label(moment, step, start_utc, end_utc)))
            value += step
        if _fits(ticks, room):
            return ticks
    for months in _MONTH_STEPS:
        moment = start_utc if (start_utc.day, start_utc.time()) == (1, datetime.min.time()) else _add_months(start_utc, 1)
        while (moment.month - 1) % months:
            moment = _add_months(moment, 1)
        ticks = []
        while moment <= end_utc:
            ticks.append((moment, moment.strftime("%Y") if months >= 12 else moment.strftime("%b %Y")))
            moment = _add_months(moment, months)
        if _fits(ticks, room):
            return ticks
    return []


def _fits(ticks: Sequence[tuple[datetime, str]], room: float) -> bool:
    if not ticks:
        return False
    widest = max(label_width(label) for _, label in ticks)
    return len(ticks) * (widest + 22) <= room


def _tick_label(moment: datetime, step: int, start: datetime, end: datetime) -> str:
    if step < _DAY:
        if start.date() == end.date():
            return moment.strftime("%H:%M")
        return f"{moment.day} {moment:%b} {moment:%H:%M}"
    if start.year != end.year:
        return f"{moment.day} {moment:%b %Y}"
    return f"{moment.day} {moment:%b}"


def _nice_step(raw: float) -> float:
    exponent = math.floor(math.log10(raw))
    fraction = raw / 10**exponent
    for nice in (1, 2, 2.5, 5, 10):
        if fraction <= nice + 1e-9:
            return nice * 10**exponent
    return 10 ** (exponent + 1)  # pragma: no cover - fraction is below 10


def value_ticks(high: float, max_ticks: int, kind: str) -> list[tuple[float, str]]:
    """Ticks from 0 to at least ``high``: IEC byte units for ``bytes``, compact counts otherwise."""
    high = max(high, 1.0)
    max_ticks = max(2, max_ticks)
    if kind == "bytes":
        unit_index = 0
        while unit_index < len(_IEC) - 1 and high >= 1024 ** (unit_index + 1):
            unit_index += 1
        unit = 1024**unit_index
        step = _nice_step(high / unit / max_ticks) * unit
        if unit_index == 0:
            step = max(1.0, math.ceil(step))
        count = math.ceil(high / step - 1e-9)
        return [(index * step, "0" if index == 0 else f"{_trim(index * step / unit)} {_IEC[unit_index]}") for index in range(count + 1)]
    step = max(1.0, _nice_step(high / max_ticks))
    count = math.ceil(high / step - 1e-9)
    return [(index * step, compact_count(index * step)) for index in range(count + 1)]


# -- drawing helpers ------------------------------------------------------------------


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _svg(*, width: int, height: int, chart_id: str, title: str, description: str, body: Sequence[str], css: str, stretch: bool = False) -> str:
    """One accessible, self-contained ``<svg>`` element; ``stretch`` lets it fill any box."""
    title_id, desc_id = f"{chart_id}-title", f"{chart_id}-desc"
    aspect = ' preserveAspectRatio="none"' if stretch else ""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {css}" id="{escape(chart_id)}" viewBox="0 0 {width} {height}"{aspect} '
        f'width="{width}" height="{height}" role="img" aria-labelledby="{escape(title_id)} {escape(desc_id)}">'
        f'<title id="{escape(title_id)}">{escape(title)}</title><desc id="{escape(desc_id)}">{escape(description)}</desc>'
        + "".join(body)
        + "</svg>"
    )


def _text(x: float, y: float, content: str, css: str = "", anchor: str = "start") -> str:
    klass = f' class="{css}"' if css else ""
    return f'<text x="{_number(x)}" y="{_number(y)}" text-anchor="{anchor}"{klass}>{escape(content)}</text>'


def _time_axis(scale: TimeScale, *, top: float, bottom: float, width: float, grid: bool = True) -> list[str]:
    """The time axis below a plot; a label that would stick out of the drawing is left off."""
    parts = [f'<line class="axis" x1="{_number(scale.left)}" y1="{_number(bottom)}" x2="{_number(scale.right)}" y2="{_number(bottom)}"/>']
    for moment, label in time_ticks(scale.start, scale.end, scale.right - scale.left):
        x = scale.x(moment)
        if grid:
            parts.append(f'<line class="grid" x1="{_number(x)}" y1="{_number(top)}" x2="{_number(x)}" y2="{_number(bottom)}"/>')
        parts.append(f'<line class="axis" x1="{_number(x)}" y1="{_number(bottom)}" x2="{_number(x)}" y2="{_number(bottom + 4)}"/>')
        half = label_width(label) / 2
        if x - half >= 0 and x + half <= width:
            parts.append(_text(x, bottom + 17, label, "tick", "middle"))
    return parts


# -- line chart -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    """One line: ``css`` names its colour class; ``step`` holds each value until the next."""

    name: str
    css: str
    points: tuple[tuple[datetime, float], ...]
    dashed: bool = False
    area: bool = False
    step: bool = True


def line_chart(
    series: Sequence[Series],
    *,
    chart_id: str,
    title: str,
    description: str,
    kind: str,
    width: int,
    height: int,
    span: tuple[datetime, datetime],
    css: str = "",
) -> str:
    """Series over time on shared axes; ``kind`` is ``bytes`` or ``count`` for the value axis.

    Points become small dots with a tooltip (``<title>``) holding the exact value,
    so the chart is readable without the legend and without JavaScript.
    """
    left, right, top, bottom = 64.0, width - 14.0, 14.0, height - 28.0
    scale = TimeScale(start=span[0], end=span[1], left=left, right=right)
    high = max((value for item in series for _, value in item.points), default=0.0)
    ticks = value_ticks(high * 1.05 if high else 1.0, max(2, int((bottom - top) / 44)), kind)
    values = ValueScale(high=ticks[-1][0], top=top, bottom=bottom)
    parts: list[str] = []
    for value, label in ticks:
        y = values.y(value)
        parts.append(f'<line class="grid" x1="{_number(left)}" y1="{_number(y)}" x2="{_number(right)}" y2="{_number(y)}"/>')
        parts.append(_text(left - 6, y + 4, label, "tick", "end"))
    parts += _time_axis(scale, top=top, bottom=bottom, width=width)
    show = human_bytes if kind == "bytes" else compact_count
    for item in series:
        points = sorted(item.points)
        if not points:
            continue
        coordinates = _path_points(points, scale, values, step=item.step)
        if item.area and len(points) > 1:
            area = coordinates + [(coordinates[-1][0], bottom), (coordinates[0][0], bottom)]
            parts.append(f'<polygon class="area {escape(item.css)}" points="{_points(area)}"/>')
        if len(points) > 1:
            dash = " dashed" if item.dashed else ""
            parts.append(f'<polyline class="line {escape(item.css)}{dash}" points="{_points(coordinates)}"/>')
        if len(points) > DOTS_UP_TO:
            continue  # a dense line reads better without dots, and the page stays small
        radius = 3.5 if len(points) <= 30 else 2.2
        for moment, value in points:
            tip = f"{item.name}: {show(value)} at {moment.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"
            parts.append(
                f'<circle class="dot {escape(item.css)}" cx="{_number(scale.x(moment))}" cy="{_number(values.y(value))}" r="{radius}">'
                f"<title>{escape(tip)}</title></circle>"
            )
    return _svg(width=width, height=height, chart_id=chart_id, title=title, description=description, body=parts, css=css)


def _path_points(points: Sequence[tuple[datetime, float]], scale: TimeScale, values: ValueScale, *, step: bool) -> list[tuple[float, float]]:
    coordinates: list[tuple[float, float]] = []
    for moment, value in points:
        x, y = scale.x(moment), values.y(value)
        if step and coordinates:
            coordinates.append((x, coordinates[-1][1]))
        coordinates.append((x, y))
    return coordinates


def _points(coordinates: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{_number(x)},{_number(y)}" for x, y in coordinates)


# -- timeline -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Marker:
    """One snapshot in one lane.

    ``shape``: circle (regular), diamond (safety) or square (migration).
    ``state``: verified, checked, failed, or unverified; ``ring`` marks the newest
    verified restore point, ``warning`` an anomaly found in this snapshot.
    """

    time: datetime
    shape: str
    state: str
    tooltip: str
    ring: bool = False
    warning: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Lane:
    label: str
    markers: tuple[Marker, ...]


LANE_HEIGHT = 46
#: Lines with more points than this are drawn without a dot (and tooltip) per point.
DOTS_UP_TO = 60


def timeline_chart(
    lanes: Sequence[Lane],
    *,
    chart_id: str,
    title: str,
    description: str,
    width: int,
    span: tuple[datetime, datetime],
    labels: Sequence[tuple[datetime, str, bool]] = (),
    css: str = "",
) -> str:
    """One lane per database, a marker per snapshot holding it, a shared time axis below.

    ``labels`` are (time, text, prominent) tags written above the lanes; prominent
    ones are placed first, and a label that would overlap another is left off.
    """
    left, right = 14.0, width - 14.0
    top = 26.0 if labels else 8.0
    bottom = top + LANE_HEIGHT * max(1, len(lanes)) + 6
    height = int(bottom + 26)
    scale = TimeScale(start=span[0], end=span[1], left=left, right=right)
    parts = _time_axis(scale, top=top, bottom=bottom, width=width)
    parts += _tag_labels(labels, scale, width=width, baseline=top - 9)
    label_chars = max(8, int((right - left) / 7.2))
    for index, lane in enumerate(lanes):
        lane_top = top + index * LANE_HEIGHT
        baseline = lane_top + 31
        if index % 2:
            parts.append(f'<rect class="lane-band" x="0" y="{_number(lane_top)}" width="{width}" height="{LANE_HEIGHT}"/>')
        label = lane.label if len(lane.label) <= label_chars else "…" + lane.label[-(label_chars - 1) :]
        parts.append(_text(left, lane_top + 13, label, "lane-label"))
        parts.append(f'<line class="lane-line" x1="{_number(left)}" y1="{_number(baseline)}" x2="{_number(right)}" y2="{_number(baseline)}"/>')
        size = _marker_size(len(lane.markers), right - left)
        for marker in sorted(lane.markers, key=lambda item: (item.ring, item.state == "failed", item.time)):
            parts.append(_marker(scale.x(marker.time), baseline, marker, size))
    return _svg(width=width, height=height, chart_id=chart_id, title=title, description=description, body=parts, css=css)


def _tag_labels(labels: Sequence[tuple[datetime, str, bool]], scale: TimeScale, *, width: float, baseline: float) -> list[str]:
    """Tag texts centred over their snapshots, prominent first, none overlapping or cut off."""
    placed: list[tuple[float, float]] = []
    parts: list[str] = []
    for moment, text, prominent in sorted(labels, key=lambda item: (not item[2], item[0])):
        x = scale.x(moment)
        half = label_width(text) * 0.92 / 2
        start, end = x - half, x + half
        if start < 0 or end > width or any(start < other_end + 6 and end > other_start - 6 for other_start, other_end in placed):
            continue
        placed.append((start, end))
        parts.append(_text(x, baseline, text, "tag-label tag-label-strong" if prominent else "tag-label", "middle"))
    return parts


def _marker_size(count: int, room: float) -> float:
    """Marker radius: 6 when snapshots are far apart, down to 2.5 when they crowd the lane."""
    return max(2.5, min(6.0, room / max(count, 1) * 0.4))


def _marker(x: float, y: float, marker: Marker, size: float = 6.0) -> str:
    shape = marker_shape(marker.shape, x, y, f"mark m-{marker.state}", size=size)
    extra = ""
    if marker.state == "failed":
        arm = max(2.0, size / 2)
        extra += f'<path class="cross" d="M{_number(x - arm)},{_number(y - arm)}l{_number(2 * arm)},{_number(2 * arm)}m0,{_number(-2 * arm)}l{_number(-2 * arm)},{_number(2 * arm)}"/>'
    if marker.ring:
        extra += f'<circle class="ring" cx="{_number(x)}" cy="{_number(y)}" r="{_number(size + 5)}"/>'
    if marker.warning:
        extra += f'<path class="warn-flag" d="M{_number(x)},{_number(y - size - 13)}l5,8h-10z"/>'
    return f"<g>{shape}{extra}<title>{escape(marker.tooltip)}</title></g>"


def marker_shape(shape: str, x: float, y: float, css: str, size: float = 6.0) -> str:
    """The SVG of one marker shape centred on (x, y), also used by the page's legend."""
    if shape == "diamond":
        s = size * 1.25
        return f'<path class="{css}" d="M{_number(x)},{_number(y - s)}l{_number(s)},{_number(s)}l{_number(-s)},{_number(s)}l{_number(-s)},{_number(-s)}z"/>'
    if shape == "square":
        s = size * 0.9
        return f'<rect class="{css}" x="{_number(x - s)}" y="{_number(y - s)}" width="{_number(2 * s)}" height="{_number(2 * s)}"/>'
    return f'<circle class="{css}" cx="{_number(x)}" cy="{_number(y)}" r="{_number(size)}"/>'


# -- stacked bar ----------------------------------------------------------------------


def stacked_bar(parts: Sequence[tuple[str, float, str]], *, chart_id: str, title: str, width: int = 600, height: int = 22, css: str = "") -> str:
    """A single bar split into ``(label, value, css class)`` parts, in proportion."""
    total = sum(value for _, value, _ in parts) or 1.0
    body: list[str] = []
    x = 0.0
    for label, value, klass in parts:
        if value <= 0:
            continue
        part_width = width * value / total
        body.append(
            f'<rect class="{escape(klass)}" x="{_number(x)}" y="0" width="{_number(part_width)}" height="{height}"><title>{escape(label)}</title></rect>'
        )
        x += part_width
    description = "; ".join(f"{label}" for label, value, _ in parts if value > 0)
    return _svg(width=width, height=height, chart_id=chart_id, title=title, description=description, body=body, css=f"bar {css}".strip(), stretch=True)
