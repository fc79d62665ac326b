"""The health report as one self-contained HTML page.

Owns: the page's markup, its stylesheet (light and dark through
``prefers-color-scheme``, a phone layout, a print layout) and the choice of
charts. The page loads nothing: no script, no font, no image from anywhere (a
Content-Security-Policy tells the browser so); charts are inline SVG from
``charts``, each next to a table with the exact numbers, so it reads the same
without JavaScript, on paper and in a screen reader. Every value that comes from
the repository is escaped. Knows the ``HealthReport`` records only; never reads
the repository.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from typing import TYPE_CHECKING

from . import charts

if TYPE_CHECKING:
    from .report import DatabaseHistory, DatabaseVersion, HealthReport

SNAPSHOT_ROWS = 60
VERSION_ROWS = 20
ROW_COUNT_COLUMNS = 5
TABLES_CHARTED = charts.PALETTE_SIZE
COVERAGE_ROWS = 60
RETENTION_ROWS = 120
WIDE, HALF, NARROW = 960, 470, 360

_STATUS_TEXT = {"healthy": "Healthy", "attention": "Needs attention", "failing": "Failing"}
_CHECK_TEXT = {"verified": "verified", "checked": "structure checked", "failed": "FAILED"}


# -- small formatting helpers ---------------------------------------------------------


def _utc(moment: datetime) -> str:
    return f"{moment.astimezone(timezone.utc):%Y-%m-%d %H:%M} UTC"


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def ago(moment: datetime, now: datetime) -> str:
    """``3 hours ago``, ``2 days ago``, ``just now``; ``in 5 minutes`` for the future."""
    seconds = (now - moment).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 60:
        return "just now"
    for limit, size, unit in (
        (3600, 60, "minute"),
        (86400 * 2, 3600, "hour"),
        (86400 * 14, 86400, "day"),
        (86400 * 61, 86400 * 7, "week"),
        (86400 * 730, 86400 * 30.44, "month"),
        (float("inf"), 86400 * 365.25, "year"),
    ):
        if seconds < limit:
            count = int(seconds // size)
            text = f"{count} {unit}{'' if count == 1 else 's'}"
            return f"in {text}" if future else f"{text} ago"
    return ""  # pragma: no cover - the last limit is infinite


def _time(moment: datetime, now: datetime) -> str:
    """A ``<time>`` with the UTC time, then how long ago (on its own line in tables)."""
    return f'<time datetime="{_iso(moment)}">{escape(_utc(moment))}</time> <span class="ago">{escape(ago(moment, now))}</span>'


def _since(moment: datetime, now: datetime) -> str:
    """How long ago first, the UTC time in brackets: for running text."""
    return f'<time datetime="{_iso(moment)}">{escape(ago(moment, now))}</time> <span class="muted">({escape(_utc(moment))})</span>'


def _bytes(size: int) -> str:
    return f'<span data-bytes="{size}">{escape(charts.human_bytes(size))}</span>'


def _count(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}×" if value >= 100 else f"{value:.1f}×"


def _code(text: str) -> str:
    return f"<code>{escape(text)}</code>"


def _shape(tag: str) -> str:
    return {"safety": "diamond", "migration": "square"}.get(tag, "circle")


def _check(status: str) -> str:
    text = escape(_CHECK_TEXT.get(status, status))
    return f'<strong class="bad">{text}</strong>' if status == "failed" else text


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


@dataclass(frozen=True, slots=True)
class Cell:
    """One table cell: its markup, extra classes and extra (already escaped) attributes."""

    html: str
    css: str = ""
    attributes: str = ""


@dataclass(frozen=True, slots=True)
class Row:
    """One table row; its first cell is the row's header."""

    cells: Sequence[Cell]
    attributes: str = ""


def _table(
    caption: str,
    headers: Sequence[str],
    rows: Iterable[Row],
    *,
    numeric: Sequence[int] = (),
    css: str = "",
    note: str = "",
    header_html: Sequence[str] | None = None,
    cards: bool = True,
) -> str:
    """A captioned table; with ``cards`` each row becomes a labelled card on narrow screens."""
    numeric_class = ' class="num"'
    shown = header_html or [escape(header) for header in headers]
    head = "".join(f'<th scope="col"{numeric_class if index in numeric else ""}>{markup}</th>' for index, markup in enumerate(shown))
    body = []
    for row in rows:
        cells = []
        for index, cell in enumerate(row.cells):
            classes = " ".join(part for part in ("num" if index in numeric else "", cell.css) if part)
            klass = f' class="{classes}"' if classes else ""
            label = f' data-label="{escape(headers[index])}"' if index < len(headers) and headers[index] else ""
            if index == 0:
                cells.append(f'<th scope="row"{klass}{label}{cell.attributes}>{cell.html}</th>')
            else:
                cells.append(f'<td{klass}{label}{cell.attributes}><span class="cell">{cell.html}</span></td>')
        body.append(f"<tr{row.attributes}>{''.join(cells)}</tr>")
    classes = " ".join(part for part in (css, "cards" if cards else "") if part)
    after = f'<p class="note">{note}</p>' if note else ""
    return (
        f'<div class="table-wrap"><table class="{classes}"><caption>{escape(caption)}</caption>'
        f'<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>{after}'
    )


def _figure(wide_svg: str, narrow_svg: str, caption: str) -> str:
    """Two drawings of one chart: the page shows the one that fits the screen."""
    return f'<figure class="chart-figure">{wide_svg}{narrow_svg}<figcaption>{caption}</figcaption></figure>'


def _legend(items: Iterable[tuple[str, str]]) -> str:
    return '<ul class="legend">' + "".join(f"<li>{swatch}{escape(label)}</li>" for swatch, label in items) + "</ul>"


def _swatch(css: str, *, dashed: bool = False) -> str:
    line_class = "line dashed" if dashed else "line"
    return f'<svg class="swatch" viewBox="0 0 22 12" width="22" height="12" aria-hidden="true"><line class="{line_class} {css}" x1="1" y1="6" x2="21" y2="6"/></svg>'


def _shape_swatch(shape: str, state: str) -> str:
    icon = charts.marker_shape(shape, 9, 9, f"mark m-{state}", size=5.5)
    if state == "failed":
        icon += '<path class="cross" d="M6,6l6,6m0,-6l-6,6"/>'
    return f'<svg class="swatch" viewBox="0 0 18 18" width="18" height="18" aria-hidden="true">{icon}</svg>'


def _slug(text: str, index: int) -> str:
    kept = "".join(character if character.isalnum() else "-" for character in text.lower()).strip("-")
    return f"db{index}-{kept[:40]}"


def _attributes(**values: str) -> str:
    """``data_snapshot="x"`` -> `` data-snapshot="x"`` (escaped)."""
    return "".join(f' {name.replace("_", "-")}="{escape(value)}"' for name, value in values.items())


# -- the page -------------------------------------------------------------------------


def render_html(report: HealthReport) -> str:
    """The whole report as one HTML document (UTF-8 text) that loads nothing from anywhere."""
    title = f"Backup health of {_project_name(report.root)}"
    sections = [
        _restore_points(report),
        _glance(report),
        _warnings(report),
        _timeline(report),
        _storage(report),
        _databases(report),
        _coverage(report),
        _retention(report),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'\">\n"
        '<meta name="color-scheme" content="light dark">\n'
        f'<meta name="generator" content="dbkeep {escape(report.tool_version)}">\n'
        f"<title>{escape(title)} · {escape(_utc(report.generated))}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        f"{_header(report)}\n<main>\n" + "\n".join(sections) + f"\n</main>\n{_footer(report)}\n</body>\n</html>\n"
    )


def _project_name(root: str) -> str:
    return root.rstrip("/").rsplit("/", 1)[-1] or root


def _header(report: HealthReport) -> str:
    status = report.status
    facts = [
        ("Project", _code(report.root)),
        ("Repository", _code(report.repository)),
        ("Generated", f'<time datetime="{_iso(report.generated)}">{escape(_utc(report.generated))}</time>'),
    ]
    facts_html = "".join(f"<div><dt>{escape(name)}</dt><dd>{value}</dd></div>" for name, value in facts)
    return (
        '<header class="page-header">\n<p class="eyebrow">dbkeep · backup health report</p>\n'
        f"<h1>Backup health of {_code(_project_name(report.root))}</h1>\n"
        f'<p class="status status-{status}" id="status" data-status="{status}"><strong>{_STATUS_TEXT[status]}</strong> '
        f"{escape(_status_reasons(report))}</p>\n"
        f'<dl class="facts">{facts_html}</dl>\n</header>'
    )


def _status_reasons(report: HealthReport) -> str:
    parts = []
    missing = [path for path, point in report.restore_points.items() if point is None]
    if missing:
        parts.append(f"no verified restore point for {', '.join(missing)}")
    if report.failures:
        parts.append(_plural(len(report.failures), "failed verification"))
    if report.repository_problems:
        parts.append(_plural(len(report.repository_problems), "repository problem"))
    if report.anomalies:
        parts.append(_plural(len(report.anomalies), "warning"))
    if not report.snapshots:
        parts.append("the repository holds no snapshot yet")
    if not parts:
        if any(point is not None and point.level != "read-data" for point in report.restore_points.values()):
            return "— every database has a restore point whose structure checked out (its bytes were not re-read here), and nothing looks unusual."
        return "— every database has a verified restore point and nothing looks unusual."
    return "— " + "; ".join(parts) + "."


def _section(section_id: str, heading: str, body: str, *, intro: str = "") -> str:
    lead = f'<p class="intro">{intro}</p>' if intro else ""
    return f'<section id="{section_id}" aria-labelledby="{section_id}-heading">\n<h2 id="{section_id}-heading">{escape(heading)}</h2>\n{lead}{body}\n</section>'


# -- restore points -------------------------------------------------------------------


def _restore_points(report: HealthReport) -> str:
    heading = "Newest verified restore point"
    if not report.databases:
        return _section("restore-points", heading, '<p class="empty">No database has been backed up yet: run <code>invoke backup.create</code>.</p>')
    cards = []
    for database in report.databases:
        point = database.restore_point
        if point is None:
            cards.append(
                f'<li class="restore-point rp-none"{_attributes(data_database=database.path)}>'
                f'<p class="rp-db">{_code(database.path)}</p><p class="rp-when">None</p>'
                '<p class="rp-detail">No snapshot of this database passed verification. '
                "Run <code>invoke backup.verify --read-data</code> to see what is wrong, and take a new backup.</p></li>"
            )
            continue
        if point.level == "read-data":
            by = "the verification routine" if point.source == "ledger" else "this report"
            when = _since(point.verified_at, report.generated) if point.verified_at else "at an unknown time"
            depth, css = f"Every byte re-read and matched by {by}, {when}.", "rp-verified"
        else:
            depth = (
                "Structure checked while building this report (every chunk indexed, every pack present); "
                "its bytes were not re-read here. <code>invoke backup.verify --read-data</code> re-reads them."
            )
            css = "rp-checked"
        attributes = _attributes(data_database=database.path, data_snapshot=point.snapshot_id, data_time=_iso(point.time), data_level=point.level)
        cards.append(
            f'<li class="restore-point {css}"{attributes}>'
            f'<p class="rp-db">{_code(database.path)}</p>'
            f'<p class="rp-when"><time datetime="{_iso(point.time)}">{escape(ago(point.time, report.generated))}</time></p>'
            f'<p class="rp-detail">{escape(_utc(point.time))} · {escape(point.tag)} · {_bytes(point.size)}<br>snapshot {_code(point.snapshot_id)}</p>'
            f'<p class="rp-level">{depth}</p></li>'
        )
    return _section("restore-points", heading, f'<ul class="restore-points">{"".join(cards)}</ul>')


# -- at a glance ----------------------------------------------------------------------


def _glance(report: HealthReport) -> str:
    storage = report.storage
    newest = report.snapshots[-1] if report.snapshots else None
    checked = "every byte" if report.check_level == "read-data" else "structure"
    tiles = [
        ("snapshots", "Snapshots", f"{len(report.snapshots):,}", f"newest {ago(newest.time, report.generated)}" if newest else "none yet", ""),
        ("databases", "Databases and files", f"{len(report.databases):,}", f"{sum(1 for item in report.databases if item.kind == 'sqlite')} SQLite", ""),
        ("disk", "On disk now", charts.human_bytes(storage.pack_bytes), f"in {_plural(storage.pack_count, 'pack')}", ""),
        ("logical", "All snapshots in full", charts.human_bytes(storage.logical_bytes), f"{_ratio(storage.overall_ratio)} the size on disk", ""),
        ("warnings", "Warnings", f"{len(report.anomalies):,}", "rows lost, schema, integrity", "tile-warn" if report.anomalies else ""),
        ("failures", "Failed verifications", f"{len(report.failures):,}", f"this report checked {checked}", "tile-bad" if report.failures else ""),
    ]
    items = "".join(
        f'<div class="tile {css}" data-tile="{key}"><dt>{escape(label)}</dt><dd><span class="big">{escape(value)}</span> <span class="muted">{escape(note)}</span></dd></div>'
        for key, label, value, note, css in tiles
    )
    return _section("glance", "At a glance", f'<dl class="tiles">{items}</dl>')


# -- warnings -------------------------------------------------------------------------


def _warnings(report: HealthReport) -> str:
    blocks = []
    if report.failures:
        rows = []
        for failure in report.failures:
            taken = _time(failure.time, report.generated) if failure.time else '<span class="muted">manifest unreadable</span>'
            found = (_time(failure.at, report.generated) if failure.at else "–") + (
                " <span class='ago'>by the verification routine</span>" if failure.source == "ledger" else " <span class='ago'>by this report</span>"
            )
            files = ", ".join(_code(path) for path in failure.paths) or "all"
            rows.append(
                Row(
                    [Cell(_code(failure.snapshot_id)), Cell(taken), Cell(escape(failure.tag or "–")), Cell(found), Cell(files), Cell(escape(failure.detail), css="wrap")],
                    attributes=' class="failed"' + _attributes(data_snapshot=failure.snapshot_id),
                )
            )
        blocks.append(
            _table(
                "Failed verifications: do not restore these snapshots",
                ["Snapshot", "Taken", "Tag", "Found", "Files", "Problem"],
                rows,
                css="failures",
                note="<code>invoke backup.verify --read-data</code> lists every problem; restore an older verified snapshot if you need one of these databases.",
            )
        )
    if report.repository_problems:
        items = "".join(f'<li class="problem">{escape(message)}</li>' for message in report.repository_problems)
        blocks.append(f'<h3>Repository problems</h3><ul class="problems">{items}</ul>')
    if report.anomalies:
        items = "".join(
            f'<li class="anomaly"{_attributes(data_kind=anomaly.kind, data_database=anomaly.path, data_snapshot=anomaly.snapshot_id)}>'
            f'<span class="kind">{escape(anomaly.kind.replace("-", " "))}</span> {escape(anomaly.message)} '
            f'<span class="muted">({escape(_utc(anomaly.time))}, {escape(ago(anomaly.time, report.generated))})</span></li>'
            for anomaly in report.anomalies
        )
        blocks.append(f'<h3>Changes worth a look</h3><ul class="anomalies">{items}</ul>')
    if not blocks:
        blocks.append(
            f'<p class="all-clear">No warnings: no failed verification, no table lost more than {report.loss_threshold:.0%} of its rows, '
            "no schema change outside a migration.</p>"
        )
    intro = (
        f"Listed here: a failed verification, a table losing more than {report.loss_threshold:.0%} of its rows or vanishing, "
        "a schema change with no <code>migration</code> snapshot just before it, a failed integrity check."
    )
    return _section("warnings", "Warnings", "\n".join(blocks), intro=intro)


# -- timeline -------------------------------------------------------------------------


def _span(report: HealthReport) -> tuple[datetime, datetime]:
    return charts.time_range([point.time for point in report.snapshots])


def _timeline(report: HealthReport) -> str:
    if not report.snapshots:
        return _section("timeline", "Snapshots over time", '<p class="empty">No snapshots yet.</p>')
    span = _span(report)
    warned = {(anomaly.path, anomaly.snapshot_id) for anomaly in report.anomalies}
    lanes = []
    for database in report.databases:
        ring = database.restore_point.snapshot_id if database.restore_point else None
        markers = tuple(
            charts.Marker(
                time=version.time,
                shape=_shape(version.tag),
                state=version.status,
                tooltip=(
                    f"{database.path} in {version.snapshot_id} ({version.tag}), {_utc(version.time)}: "
                    f"{charts.human_bytes(version.size)}, {_CHECK_TEXT.get(version.status, version.status)}"
                ),
                ring=version.snapshot_id == ring,
                warning=(database.path, version.snapshot_id) in warned,
            )
            for version in database.versions
        )
        lanes.append(charts.Lane(label=database.path, markers=markers))
    failed = sum(1 for point in report.snapshots if point.verification.status == "failed")
    description = (
        f"{_plural(len(report.snapshots), 'snapshot')} of {_plural(len(report.databases), 'database or file')} "
        f"between {_utc(report.snapshots[0].time)} and {_utc(report.snapshots[-1].time)}; {failed} failed verification."
    )
    title = "Snapshots per database over time"
    labels = [(point.time, point.tag, point.tag in ("safety", "migration")) for point in report.snapshots]
    common = {"title": title, "description": description, "span": span, "labels": labels}
    wide = charts.timeline_chart(lanes, chart_id="timeline-wide", width=WIDE, css="chart-wide", **common)
    narrow = charts.timeline_chart(lanes, chart_id="timeline-narrow", width=NARROW, css="chart-narrow", **common)
    ring_icon = '<svg class="swatch" viewBox="0 0 24 24" width="18" height="18" aria-hidden="true"><circle class="mark m-verified" cx="12" cy="12" r="5"/><circle class="ring" cx="12" cy="12" r="10"/></svg>'
    flag_icon = '<svg class="swatch" viewBox="0 0 18 18" width="18" height="18" aria-hidden="true"><path class="warn-flag" d="M9,3l6,11h-12z"/></svg>'
    legend = _legend(
        [
            (_shape_swatch("circle", "verified"), "regular snapshot, verified"),
            (_shape_swatch("diamond", "verified"), "safety snapshot"),
            (_shape_swatch("square", "verified"), "migration snapshot"),
            (_shape_swatch("circle", "checked"), "structure checked only"),
            (_shape_swatch("circle", "failed"), "failed verification"),
            (ring_icon, "newest verified restore point"),
            (flag_icon, "warning"),
        ]
    )
    figure = _figure(wide, narrow, f"One row per database or file, one marker per snapshot holding it, its tag above (where there is room); the table below lists them.{legend}")
    return _section("timeline", "Snapshots over time", figure + _snapshot_table(report))


def _snapshot_table(report: HealthReport) -> str:
    shown = list(reversed(report.snapshots))[:SNAPSHOT_ROWS]
    rows = [
        Row(
            [
                Cell(_code(point.id)),
                Cell(_time(point.time, report.generated)),
                Cell(f'<span class="tag tag-{_shape(point.tag)}">{escape(point.tag)}</span>'),
                Cell(str(len(point.paths))),
                Cell(_bytes(point.logical_bytes)),
                Cell(_bytes(point.new_bytes)),
                Cell(_bytes(point.stored_bytes)),
                Cell(_check(point.verification.status)),
            ],
            attributes=f' class="snapshot status-{point.verification.status}"' + _attributes(data_snapshot=point.id, data_tag=point.tag),
        )
        for point in shown
    ]
    hidden = len(report.snapshots) - len(shown)
    return _table(
        "Snapshots, newest first",
        ["Snapshot", "Taken", "Tag", "Files", "Size", "New after dedup", "Added on disk", "Check"],
        rows,
        numeric=(3, 4, 5, 6),
        css="snapshots",
        note=f"{hidden} older snapshots are not listed here; <code>invoke backup.list</code> shows them all." if hidden > 0 else "",
    )


# -- storage --------------------------------------------------------------------------


def _storage(report: HealthReport) -> str:
    storage = report.storage
    if not report.snapshots:
        return _section("storage", "Storage", '<p class="empty">Nothing stored yet.</p>')
    span = _span(report)
    disk = charts.Series(name="On disk", css="s-disk", points=tuple((point.time, point.cumulative_stored_bytes) for point in report.snapshots), area=True)
    series = [
        charts.Series(name="All snapshots in full", css="s-logical", points=tuple((point.time, point.cumulative_logical_bytes) for point in report.snapshots), dashed=True),
        charts.Series(name="After deduplication", css="s-dedup", points=tuple((point.time, point.cumulative_new_bytes) for point in report.snapshots)),
        disk,
    ]
    description = (
        f"After {_plural(len(report.snapshots), 'snapshot')}: {charts.human_bytes(storage.logical_bytes)} if every snapshot were stored in full, "
        f"{charts.human_bytes(storage.new_bytes)} after deduplication, {charts.human_bytes(storage.stored_bytes)} on disk after compression."
    )
    logical_chart = _figure(
        charts.line_chart(series, chart_id="storage-wide", width=HALF, height=260, css="chart-wide", title="Logical size against size on disk", description=description, kind="bytes", span=span),
        charts.line_chart(series, chart_id="storage-narrow", width=NARROW, height=240, css="chart-narrow", title="Logical size against size on disk", description=description, kind="bytes", span=span),
        "What the snapshots would take in full, after deduplication, and on disk after compression (cumulative)."
        + _legend([(_swatch("s-logical", dashed=True), "all snapshots in full"), (_swatch("s-dedup"), "after deduplication"), (_swatch("s-disk"), "on disk")]),
    )
    growth_description = f"Bytes the snapshots added to the repository's packs, cumulative: {charts.human_bytes(storage.stored_bytes)} after the newest."
    growth_chart = _figure(
        charts.line_chart([disk], chart_id="growth-wide", width=HALF, height=260, css="chart-wide", title="Growth on disk", description=growth_description, kind="bytes", span=span),
        charts.line_chart([disk], chart_id="growth-narrow", width=NARROW, height=240, css="chart-narrow", title="Growth on disk", description=growth_description, kind="bytes", span=span),
        "Growth on disk alone, on its own scale: each step is what one snapshot added.",
    )
    measures = [
        ("All snapshots stored in full", storage.logical_bytes, "logical"),
        ("After deduplication", storage.new_bytes, "deduplicated"),
        ("Added to packs by these snapshots (compressed)", storage.stored_bytes, "stored"),
        ("Packs on disk now", storage.pack_bytes, "packs"),
        ("Whole repository on disk now", storage.repository_bytes, "repository"),
    ]
    table = _table(
        "Storage totals",
        ["Measure", "Size"],
        (Row([Cell(escape(label)), Cell(_bytes(size))], attributes=_attributes(data_measure=key)) for label, size, key in measures),
        numeric=(1,),
        css="storage",
        cards=False,
        note=(
            f"Deduplication {_ratio(storage.dedup_ratio)}, compression {_ratio(storage.compression_ratio)}, together {_ratio(storage.overall_ratio)}. "
            "The sums cover the snapshots present; after a clean, data that removed snapshots stored and later ones still use is in the packs but not in these sums."
        ),
    )
    return _section("storage", "Storage", f'<div class="chart-pair">{logical_chart}{growth_chart}</div>{table}')


# -- databases ------------------------------------------------------------------------


def _databases(report: HealthReport) -> str:
    if not report.databases:
        return _section("databases", "Databases", '<p class="empty">No databases yet.</p>')
    span = _span(report)
    articles = [_database(report, database, index, span) for index, database in enumerate(report.databases)]
    toc = "".join(f'<li><a href="#{_slug(database.path, index)}">{escape(database.path)}</a></li>' for index, database in enumerate(report.databases))
    return _section("databases", "Databases", f'<nav aria-label="Databases"><ul class="toc">{toc}</ul></nav>' + "\n".join(articles))


def _database(report: HealthReport, database: DatabaseHistory, index: int, span: tuple[datetime, datetime]) -> str:
    slug = _slug(database.path, index)
    latest = database.latest
    anomalies = [anomaly for anomaly in report.anomalies if anomaly.path == database.path]
    badges = [
        f'<span class="badge">{"SQLite" if database.kind == "sqlite" else "plain file"}</span>',
        f'<span class="badge">{_bytes(latest.size)} now</span>',
        f'<span class="badge">{_plural(len(database.versions), "snapshot")}, {database.distinct_contents} distinct</span>',
    ]
    if anomalies:
        badges.append(f'<span class="badge badge-warn">{_plural(len(anomalies), "warning")}</span>')
    size_series = [charts.Series(name="Size", css="s-disk", points=tuple((version.time, version.size) for version in database.versions), area=True)]
    size_description = f"Size of {database.path} in each snapshot; {charts.human_bytes(latest.size)} in the newest."
    common = {"title": f"Size of {database.path}", "description": size_description, "kind": "bytes", "span": span}
    charts_html = _figure(
        charts.line_chart(size_series, chart_id=f"{slug}-size-wide", width=HALF, height=230, css="chart-wide", **common),
        charts.line_chart(size_series, chart_id=f"{slug}-size-narrow", width=NARROW, height=220, css="chart-narrow", **common),
        "Size in each snapshot.",
    )
    tables_html = ""
    if database.kind == "sqlite" and database.table_names:
        charts_html += _row_chart(database, slug, span)
        tables_html = _row_table(report, database)
    anomaly_html = ""
    if anomalies:
        anomaly_html = '<ul class="anomalies">' + "".join(f'<li class="anomaly">{escape(anomaly.message)}</li>' for anomaly in anomalies) + "</ul>"
    return (
        f'<article class="database" id="{slug}" aria-labelledby="{slug}-heading"{_attributes(data_database=database.path)}>'
        f'<h3 id="{slug}-heading">{_code(database.path)}</h3><p class="badges">{"".join(badges)}</p>{anomaly_html}'
        f'<div class="chart-pair">{charts_html}</div>{tables_html}{_version_table(report, database)}</article>'
    )


def _charted_tables(database: DatabaseHistory) -> list[str]:
    def largest(name: str) -> int:
        return max((version.tables.get(name) or 0) for version in database.versions)

    return sorted(sorted(database.table_names, key=lambda name: (-largest(name), name))[:TABLES_CHARTED])


def _row_chart(database: DatabaseHistory, slug: str, span: tuple[datetime, datetime]) -> str:
    names = _charted_tables(database)
    series = [
        charts.Series(
            name=name,
            css=f"s{position}",
            points=tuple((version.time, float(version.tables[name])) for version in database.versions if version.tables.get(name) is not None),
        )
        for position, name in enumerate(names)
    ]
    description = "Rows per table in each snapshot; in the newest: " + ", ".join(f"{name} {_count(database.latest.tables.get(name))}" for name in names) + "."
    common = {"title": f"Rows per table of {database.path}", "description": description, "kind": "count", "span": span}
    more = len(database.table_names) - len(names)
    caption = "Rows per table in each snapshot" + (f" (the {len(names)} largest tables; all are in the table below)" if more else "") + "."
    return _figure(
        charts.line_chart(series, chart_id=f"{slug}-rows-wide", width=HALF, height=230, css="chart-wide", **common),
        charts.line_chart(series, chart_id=f"{slug}-rows-narrow", width=NARROW, height=220, css="chart-narrow", **common),
        caption + _legend((_swatch(f"s{position}"), name) for position, name in enumerate(names)),
    )


def _row_table(report: HealthReport, database: DatabaseHistory) -> str:
    versions = list(database.versions)
    shown = versions[-ROW_COUNT_COLUMNS:][::-1]  # newest first
    headers = ["Table"] + [f"{version.time.astimezone(timezone.utc):%Y-%m-%d %H:%M} {version.tag}" for version in shown]
    header_html = ["Table"] + [
        f'<time datetime="{_iso(version.time)}">{version.time.astimezone(timezone.utc):%Y-%m-%d %H:%M}</time><br><span class="tag-line">{escape(version.tag)}</span>'
        for version in shown
    ]
    rows = []
    for name in database.table_names:
        cells = [Cell(_code(name))]
        for version in shown:
            position = versions.index(version)
            previous = versions[position - 1] if position > 0 else None
            cells.append(_row_cell(version, previous, name, report.loss_threshold))
        rows.append(Row(cells, attributes=_attributes(data_table=name)))
    return _table(
        f"Rows per table of {database.path}, newest snapshot first",
        headers,
        rows,
        numeric=tuple(range(1, len(headers))),
        css="row-counts",
        header_html=header_html,
    )


def _row_cell(version: DatabaseVersion, previous: DatabaseVersion | None, name: str, threshold: float) -> Cell:
    value = version.tables.get(name)
    attributes = _attributes(data_snapshot=version.snapshot_id)
    if name not in version.tables:
        return Cell("absent", css="muted", attributes=attributes)
    if value is None:
        return Cell("not counted", css="muted", attributes=attributes)
    delta_html, css = "", ""
    old = previous.tables.get(name) if previous is not None else None
    if old is not None and value != old:
        delta = value - old
        css = "loss" if delta < 0 and old > 0 and -delta / old > threshold else ""
        sign = "+" if delta > 0 else "−"
        delta_html = f' <span class="delta {"down" if delta < 0 else "up"}">{sign}{abs(delta):,}</span>'
    return Cell(f"{value:,}{delta_html}", css=css, attributes=attributes + f' data-rows="{value}"')


def _version_table(report: HealthReport, database: DatabaseHistory) -> str:
    versions = list(database.versions)
    rows = []
    for position in range(len(versions) - 1, max(-1, len(versions) - 1 - VERSION_ROWS), -1):
        version = versions[position]
        previous = versions[position - 1] if position > 0 else None
        if previous is None:
            change = "first"
        elif previous.sha256 == version.sha256:
            change = "same"
        elif previous.size == version.size:
            change = "changed"
        else:
            change = ("+" if version.size > previous.size else "") + charts.human_bytes(version.size - previous.size)
        schema = "–"
        if version.kind == "sqlite":
            if previous is None or previous.schema_hash is None:
                schema = "first"
            else:
                schema = "same" if previous.schema_hash == version.schema_hash else "<strong>changed</strong>"
        rows.append(
            Row(
                [
                    Cell(_code(version.snapshot_id)),
                    Cell(_time(version.time, report.generated)),
                    Cell(escape(version.tag)),
                    Cell(_bytes(version.size)),
                    Cell(escape(change)),
                    Cell(schema),
                    Cell(escape(version.integrity) if version.integrity else "–"),
                    Cell(_check(version.status)),
                ],
                attributes=f' class="status-{version.status}"' + _attributes(data_snapshot=version.snapshot_id, data_size=str(version.size)),
            )
        )
    hidden = len(versions) - min(len(versions), VERSION_ROWS)
    return _table(
        f"Snapshots of {database.path}, newest first",
        ["Snapshot", "Taken", "Tag", "Size", "Change", "Schema", "Integrity", "Check"],
        rows,
        numeric=(3, 4),
        css="versions",
        note=f"{hidden} older snapshots of this file are not listed." if hidden else "",
    )


# -- verification coverage ------------------------------------------------------------


def _not_available(section_id: str, heading: str, what: str) -> str:
    return _section(section_id, heading, f'<p class="not-available" data-available="false"><strong>Not available.</strong> {what}</p>')


def _coverage(report: HealthReport) -> str:
    coverage = report.coverage
    if coverage is None:
        return _not_available(
            "verification",
            "Verification coverage",
            "The verification ledger was not read for this report, so when each snapshot's bytes were last re-read is not shown. "
            "The weekly maintenance routine keeps that ledger.",
        )
    total = len(coverage.rows)
    oldest = coverage.least_recently_verified
    unverified = coverage.oldest_unverified
    facts = [
        ("Verified and passed", f"{coverage.passed} of {total}"),
        ("Failed", str(coverage.failed)),
        ("Never verified", str(coverage.never)),
        ("Least recently verified", f"{_code(oldest.snapshot_id)}, {_since(oldest.at, report.generated)}" if oldest and oldest.at else "–"),
        ("Oldest never verified", f"{_code(unverified.snapshot_id)}, taken {_since(unverified.time, report.generated)}" if unverified else "none"),
    ]
    long_item = ' class="long"'
    pairs = "".join(f'<div{long_item if index >= 3 else ""}><dt>{escape(name)}</dt><dd>{value}</dd></div>' for index, (name, value) in enumerate(facts))
    summary = f'<dl class="pairs">{pairs}</dl>'
    bar = charts.stacked_bar(
        [
            (f"{coverage.passed} passed", coverage.passed, "cov-passed"),
            (f"{coverage.failed} failed", coverage.failed, "cov-failed"),
            (f"{coverage.never} never verified", coverage.never, "cov-never"),
        ],
        chart_id="coverage-bar",
        title="Verification coverage",
    )
    rows = []
    for row in list(reversed(coverage.rows))[:COVERAGE_ROWS]:
        if row.at is None:
            result, css = "never verified", "never"
        elif row.ok:
            result, css = "passed", "passed"
        else:
            result, css = "FAILED", "failed"
        detail = f' <span class="muted">{escape(row.detail)}</span>' if row.detail else ""
        rows.append(
            Row(
                [
                    Cell(_code(row.snapshot_id)),
                    Cell(_time(row.time, report.generated)),
                    Cell(escape(row.tag)),
                    Cell(_time(row.at, report.generated) if row.at else "–"),
                    Cell(f'<span class="result-{css}">{escape(result)}</span>{detail}', css="wrap"),
                    Cell(escape(row.level or "–"), css="nowrap"),
                ],
                attributes=f' class="cov-row-{css}"' + _attributes(data_snapshot=row.snapshot_id),
            )
        )
    legend = _legend(
        [
            ('<span class="box cov-passed" aria-hidden="true"></span>', f"passed ({coverage.passed})"),
            ('<span class="box cov-failed" aria-hidden="true"></span>', f"failed ({coverage.failed})"),
            ('<span class="box cov-never" aria-hidden="true"></span>', f"never verified ({coverage.never})"),
        ]
    )
    table = _table("Last verification of each snapshot, newest snapshot first", ["Snapshot", "Taken", "Tag", "Last verified", "Result", "Level"], rows, css="coverage")
    return _section("verification", "Verification coverage", f'<div data-available="true">{summary}<figure class="bar-figure">{bar}<figcaption>{legend}</figcaption></figure>{table}</div>')


# -- retention ------------------------------------------------------------------------


def _retention(report: HealthReport) -> str:
    retention = report.retention
    if retention is None:
        return _not_available(
            "retention",
            "Retention plan",
            "No retention plan was given to this report, so which rule keeps which snapshot, and what the next clean would remove, is not shown. "
            "<code>invoke backup.clean --dry-run</code> prints it.",
        )
    removed = retention.removed
    lines = []
    if retention.policy:
        lines.append(f"<p>Policy: {_code(retention.policy)}</p>")
    if retention.held:
        lines.append(f'<p class="held"><strong>Nothing will be removed:</strong> {escape(retention.held)}</p>')
    elif removed:
        items = "".join(f"<li>{_code(snapshot_id)}</li>" for snapshot_id in removed)
        lines.append(
            f'<p>The next clean removes <strong data-count="{len(removed)}">{len(removed)}</strong> of {_plural(len(retention.rows), "snapshot")}:</p>'
            f'<ul class="removals">{items}</ul>'
        )
    else:
        lines.append(f'<p>The next clean removes <strong data-count="0">nothing</strong>: all {_plural(len(retention.rows), "snapshot")} are kept.</p>')
    rows = []
    for row in list(reversed(retention.rows))[:RETENTION_ROWS]:
        decision = "keep" if row.keep else "remove"
        rows.append(
            Row(
                [
                    Cell(_code(row.snapshot_id)),
                    Cell(_time(row.time, report.generated) if row.time else "–"),
                    Cell(escape(row.tag)),
                    Cell(f'<span class="decision-{decision}">{decision}</span>'),
                    Cell(", ".join(escape(reason) for reason in row.reasons) or "no rule keeps it", css="wrap"),
                ],
                attributes=f' class="{decision}"' + _attributes(data_snapshot=row.snapshot_id, data_decision=decision),
            )
        )
    table = _table("What the retention policy keeps, and why, newest first", ["Snapshot", "Taken", "Tag", "Decision", "Kept by"], rows, css="retention")
    return _section("retention", "Retention plan", f'<div data-available="true">{"".join(lines)}{table}</div>')


# -- footer ---------------------------------------------------------------------------


def _footer(report: HealthReport) -> str:
    check = (
        "every byte of every snapshot was re-read"
        if report.check_level == "read-data"
        else "the structure of every snapshot was checked (every chunk indexed, every pack present at its size)"
    )
    return (
        '<footer class="page-footer"><p>'
        f"Made by dbkeep {escape(report.tool_version)} at {escape(_utc(report.generated))}; while building it {check}. "
        "Times are UTC; sizes are in binary units (1 KiB = 1024 bytes). This page loads nothing from the network and needs no JavaScript."
        "</p></footer>"
    )


STYLE = """
:root{
  color-scheme: light dark;
  --bg:#ffffff; --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --panel:#f6f8fa; --band:#f6f8fa;
  --accent:#0969da; --ok:#1a7f37; --ok-bg:#dafbe1; --bad:#cf222e; --bad-bg:#ffebe9; --warn:#9a6700; --warn-bg:#fff8c5;
  --s-logical:#8c959f; --s-dedup:#bf8700; --s-disk:#0969da;
  --s0:#0072b2; --s1:#d55e00; --s2:#009e73; --s3:#cc79a7; --s4:#56b4e9; --s5:#e69f00; --s6:#6e7781; --s7:#8250df;
}
@media (prefers-color-scheme: dark){
  :root{
    --bg:#0d1117; --fg:#e6edf3; --muted:#9198a1; --line:#3d444d; --panel:#151b23; --band:#121821;
    --accent:#4493f8; --ok:#3fb950; --ok-bg:#12261a; --bad:#ff7b72; --bad-bg:#3c1618; --warn:#d29922; --warn-bg:#2e2410;
    --s-logical:#9198a1; --s-dedup:#e3b341; --s-disk:#4493f8;
    --s0:#58a6ff; --s1:#ff9e64; --s2:#3fb950; --s3:#f778ba; --s4:#79c0ff; --s5:#e3b341; --s6:#b1bac4; --s7:#bc8cff;
  }
}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%;text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--fg);
  font:16px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","Noto Sans","Liberation Sans",Arial,sans-serif}
.page-header,main,.page-footer{max-width:1040px;margin:0 auto;padding:0 24px}
.page-header{padding-top:28px}
h1{font-size:1.9rem;line-height:1.2;margin:.1em 0 .5em;overflow-wrap:anywhere}
h2{font-size:1.35rem;margin:0 0 .6em;padding-top:.3em}
h3{font-size:1.1rem;margin:1.4em 0 .5em;overflow-wrap:anywhere}
section{margin:0 0 36px;padding-top:20px;border-top:1px solid var(--line)}
code{font-family:ui-monospace,SFMono-Regular,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:.88em;overflow-wrap:anywhere}
table code{white-space:nowrap;overflow-wrap:normal}
.muted,.ago{color:var(--muted)}
.eyebrow{margin:0;color:var(--muted);font-size:.85rem;letter-spacing:.04em;text-transform:uppercase}
.intro,.note{color:var(--muted);font-size:.92rem;max-width:75ch}
.note{margin:.4em 0 1.2em}
.status{margin:0 0 18px;padding:12px 16px;border-radius:8px;border:1px solid;font-size:1.02rem}
.status-healthy{background:var(--ok-bg);border-color:var(--ok)}
.status-attention{background:var(--warn-bg);border-color:var(--warn)}
.status-failing{background:var(--bad-bg);border-color:var(--bad)}
.status strong{margin-right:.2em}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(240px,1fr));gap:6px 24px;margin:0 0 20px;font-size:.92rem}
.facts dt,.pairs dt{color:var(--muted);font-size:.8rem}
.facts dd,.pairs dd{margin:0;overflow-wrap:anywhere}
.restore-points{list-style:none;margin:0;padding:0;display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:16px}
.restore-point{border:1px solid var(--line);border-left:6px solid var(--ok);border-radius:8px;padding:14px 18px;background:var(--panel)}
.restore-point p{margin:0}
.rp-checked{border-left-color:var(--accent)}
.rp-none{border-left-color:var(--bad);background:var(--bad-bg)}
.rp-db{font-weight:600}
.restore-point .rp-when{font-size:2.15rem;line-height:1.15;font-weight:700;margin:.12em 0 .25em;letter-spacing:-.01em}
.rp-none .rp-when{color:var(--bad)}
.rp-detail{font-size:.9rem;overflow-wrap:anywhere}
.restore-point .rp-level{font-size:.85rem;color:var(--muted);margin-top:.5em}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px;margin:0}
.tile{background:var(--panel);border:1px solid var(--line);border-radius:8px;padding:10px 14px}
.tile dt{font-size:.8rem;color:var(--muted)}
.tile dd{margin:0}
.tile .big{display:block;font-size:1.5rem;font-weight:700;line-height:1.3;white-space:nowrap}
.tile .muted{font-size:.8rem;line-height:1.35;display:block}
.tile-warn{border-color:var(--warn)}
.tile-warn .big{color:var(--warn)}
.tile-bad{border-color:var(--bad);background:var(--bad-bg)}
.tile-bad .big{color:var(--bad)}
ul.anomalies,ul.problems{padding-left:1.2em}
li.anomaly,li.problem{margin:.4em 0;overflow-wrap:anywhere}
.anomaly .kind{display:inline-block;font-size:.72rem;font-weight:700;text-transform:uppercase;letter-spacing:.03em;color:var(--warn);border:1px solid var(--warn);border-radius:4px;padding:0 5px;margin-right:.3em;vertical-align:.1em}
.all-clear{padding:10px 14px;border-radius:8px;background:var(--ok-bg);border:1px solid var(--ok);margin:0}
.bad{color:var(--bad)}
.empty,.not-available{padding:12px 16px;border:1px dashed var(--line);border-radius:8px;color:var(--muted);margin:0}
.not-available strong{color:var(--fg)}
.held{padding:10px 14px;border-radius:8px;background:var(--warn-bg);border:1px solid var(--warn)}
.removals{columns:2 280px;padding-left:1.2em}
.table-wrap{overflow-x:auto;margin:16px 0 6px}
table{border-collapse:collapse;width:100%;font-size:.88rem;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:0 0 6px;caption-side:top;font-size:.95rem}
th,td{padding:6px 9px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{font-size:.76rem;color:var(--muted);font-weight:600;letter-spacing:.02em;border-bottom-width:2px;vertical-align:bottom}
tbody th{font-weight:normal}
.num{text-align:right;white-space:nowrap}
[data-bytes]{white-space:nowrap}
td time{white-space:nowrap}
td .ago{display:block;font-size:.85em;white-space:nowrap}
td.wrap{min-width:12em}
tr.failed>*,tr.status-failed>*,tr.cov-row-failed>*{background:var(--bad-bg)}
tr.remove>*{color:var(--muted)}
.decision-remove{font-weight:600;color:var(--bad)}
.result-failed{font-weight:700;color:var(--bad)}
td.loss{background:var(--bad-bg)}
.delta{font-size:.85em}
.delta.down{color:var(--bad)}
.delta.up{color:var(--ok)}
.tag-line{font-weight:normal}
.tag{display:inline-block;padding:0 7px;border-radius:10px;border:1px solid var(--line);font-size:.82rem;white-space:nowrap}
.tag-diamond{border-color:var(--warn)}
.tag-square{border-color:var(--s7)}
.badges{margin:.2em 0 .6em;display:flex;flex-wrap:wrap;gap:6px}
.badge{display:inline-block;padding:1px 8px;border:1px solid var(--line);border-radius:10px;font-size:.82rem;background:var(--panel)}
.badge-warn{border-color:var(--warn);color:var(--warn)}
.toc{display:flex;flex-wrap:wrap;gap:4px 18px;padding:0;list-style:none;margin:0 0 8px}
a{color:var(--accent)}
.database{margin-top:22px;padding-top:4px}
.chart-figure,.bar-figure{margin:10px 0 4px;min-width:0}
.chart-pair{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:8px 28px}
.chart-pair svg.chart-wide{max-width:620px}
figcaption{font-size:.86rem;color:var(--muted);margin-top:4px}
svg.chart{display:block;width:100%;height:auto;max-width:100%}
svg.chart-narrow{display:none}
svg.bar{height:22px;border-radius:4px}
.legend{list-style:none;padding:0;margin:6px 0 0;display:flex;flex-wrap:wrap;gap:4px 16px;color:var(--fg)}
.legend li{display:inline-flex;align-items:center;gap:6px;font-size:.85rem}
.swatch{flex:none}
.box{display:inline-block;width:14px;height:14px;border-radius:3px}
.pairs{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:8px 24px;margin:0 0 12px}
.pairs .long{grid-column:1/-1}
.nowrap{white-space:nowrap}
.page-footer{color:var(--muted);font-size:.85rem;padding-bottom:40px}
.page-footer p{border-top:1px solid var(--line);padding-top:14px;margin:0}
.chart text{fill:var(--muted);font-size:12px;font-family:inherit}
.chart .lane-label{fill:var(--fg);font-size:12.5px;font-weight:600}
.chart .tag-label{font-size:11px}
.chart .tag-label-strong{fill:var(--fg);font-weight:600}
.chart .grid{stroke:var(--line);stroke-width:1;opacity:.7}
.chart .axis{stroke:var(--muted);stroke-width:1}
.chart .lane-line{stroke:var(--line);stroke-width:1.5}
.chart .lane-band{fill:var(--band)}
.line{fill:none;stroke-width:2.2;stroke-linejoin:round}
.dashed{stroke-dasharray:6 4}
.area{stroke:none;opacity:.14}
.dot{stroke:var(--bg);stroke-width:1}
.s-logical{stroke:var(--s-logical);fill:var(--s-logical)}
.s-dedup{stroke:var(--s-dedup);fill:var(--s-dedup)}
.s-disk{stroke:var(--s-disk);fill:var(--s-disk)}
.s0{stroke:var(--s0);fill:var(--s0)} .s1{stroke:var(--s1);fill:var(--s1)} .s2{stroke:var(--s2);fill:var(--s2)} .s3{stroke:var(--s3);fill:var(--s3)}
.s4{stroke:var(--s4);fill:var(--s4)} .s5{stroke:var(--s5);fill:var(--s5)} .s6{stroke:var(--s6);fill:var(--s6)} .s7{stroke:var(--s7);fill:var(--s7)}
.line.s0,.line.s1,.line.s2,.line.s3,.line.s4,.line.s5,.line.s6,.line.s7,.line.s-logical,.line.s-dedup,.line.s-disk{fill:none}
.mark{stroke-width:2}
.m-verified{fill:var(--ok);stroke:var(--ok)}
.m-checked{fill:var(--bg);stroke:var(--ok)}
.m-failed{fill:var(--bad);stroke:var(--bad)}
.m-unverified{fill:var(--bg);stroke:var(--muted)}
.cross{stroke:#ffffff;stroke-width:2;fill:none;stroke-linecap:round}
.ring{fill:none;stroke:var(--fg);stroke-width:1.6}
.warn-flag{fill:var(--warn);stroke:var(--bg);stroke-width:1}
.cov-passed{fill:var(--ok);background:var(--ok)}
.cov-failed{fill:var(--bad);background:var(--bad)}
.cov-never{fill:var(--line);background:var(--line)}
@media (max-width: 640px){
  body{font-size:15px}
  .page-header,main,.page-footer{padding:0 14px}
  .page-header{padding-top:18px}
  h1{font-size:1.45rem}
  .restore-point .rp-when{font-size:2rem}
  svg.chart-wide{display:none}
  svg.chart-narrow{display:block}
  .chart-pair{grid-template-columns:minmax(0,1fr)}
  .restore-points{grid-template-columns:minmax(0,1fr)}
  .tiles{grid-template-columns:repeat(2,minmax(0,1fr))}
  .tile .big{font-size:1.3rem}
}
@media screen and (max-width: 820px){
  table.cards,table.cards tbody,table.cards caption{display:block;width:100%}
  table.cards thead{position:absolute;width:1px;height:1px;overflow:hidden;clip-path:inset(50%);white-space:nowrap}
  table.cards tr{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:6px 14px;border-bottom:1px solid var(--line);padding:10px 0}
  table.cards tbody th{grid-column:1/-1;border:0;padding:0;font-weight:600}
  table.cards td{display:block;border:0;padding:0;text-align:left;min-width:0;white-space:normal}
  table.cards td::before{content:attr(data-label);display:block;color:var(--muted);font-size:.74rem;line-height:1.3}
  table.cards td.wrap{grid-column:1/-1}
  table.cards td .cell{overflow-wrap:anywhere}
  table.cards tr.failed>*,table.cards tr.status-failed>*,table.cards tr.cov-row-failed>*{background:none}
  table.cards tr.failed,table.cards tr.status-failed,table.cards tr.cov-row-failed{background:var(--bad-bg);padding-left:8px;padding-right:8px}
  table.cards td.loss{background:var(--bad-bg)}
  .table-wrap{overflow-x:visible}
}
@media screen and (min-width: 641px) and (max-width: 820px){
  table.cards tr{grid-template-columns:repeat(3,minmax(0,1fr))}
}
@media print{
  :root{
    --bg:#ffffff; --fg:#000000; --muted:#444c56; --line:#b8c0c8; --panel:#ffffff; --band:#f3f4f6;
    --ok:#1a7f37; --ok-bg:#ffffff; --bad:#b3261e; --bad-bg:#fff0f0; --warn:#7d4e00; --warn-bg:#ffffff; --accent:#0550ae;
    --s-logical:#6e7781; --s-dedup:#9a6700; --s-disk:#0550ae;
    --s0:#0072b2; --s1:#d55e00; --s2:#009e73; --s3:#cc79a7; --s4:#56b4e9; --s5:#e69f00; --s6:#6e7781; --s7:#8250df;
  }
  body{font-size:10.5pt}
  .page-header,main,.page-footer{max-width:none;padding:0}
  table{font-size:8pt}
  th,td{padding:3px 4px}
  thead th{font-size:7pt}
  td .ago{font-size:7pt}
  .tag{font-size:inherit}
  svg.chart-wide{display:block!important}
  svg.chart-narrow{display:none!important}
  h2,h3,caption{break-after:avoid}
  figure,.restore-point,.tile,tr{break-inside:avoid}
  .table-wrap{overflow:visible}
  a{color:inherit;text-decoration:none}
  nav{display:none}
  *{print-color-adjust:exact;-webkit-print-color-adjust:exact}
}
"""
