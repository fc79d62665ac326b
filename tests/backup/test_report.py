"""The health report: right numbers for a known history, and a page a real browser renders.

The history is made of real snapshots (``create_backup``) of real SQLite databases
whose rows change between them; the HTML is parsed with ``html.parser`` and its
numbers compared with what the databases held. The browser test renders the page
with Debian's chromium at desktop and phone widths and in dark mode.
"""

from __future__ import annotations

import ast
import errno
import os
import random
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from backup import create_backup
from tests.browser import BROWSER, Browser, chromium
from backup.fsio import FaultPlan, inject
from backup.errors import NoSpace, StorageError, UsageError
from backup.report import (
    DEFAULT_LOSS_THRESHOLD,
    DatabaseHistory,
    DatabaseVersion,
    Verification,
    build_report,
    find_anomalies,
    newest_restore_point,
    publish_html,
    render_html,
    report_json,
    write_report,
)
from backup.settings import Settings, settings_from_mapping

T0 = datetime(2025, 1, 10, 2, 0, tzinfo=timezone.utc)
NOW = T0 + timedelta(days=4, hours=6)
ROOT = Path(__file__).resolve().parents[2]


# -- a repository with a known history ---------------------------------------------------


def _execute(path: Path, *statements: str) -> None:
    with closing(sqlite3.connect(path)) as connection:
        for statement in statements:
            connection.execute(statement)
        connection.commit()


def _rows(path: Path, table: str) -> int:
    with closing(sqlite3.connect(path)) as connection:
        return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _insert(path: Path, table: str, count: int, width: int = 60) -> None:
    """``count`` rows of ``width`` random characters (roughly as compressible as real text)."""
    generator = random.Random(f"{path.name}-{table}-{count}")
    with closing(sqlite3.connect(path)) as connection:
        column = "name" if table == "users" else "item" if table == "orders" else "value"
        values = [(generator.randbytes(width // 2).hex(),) for _ in range(count)]
        connection.executemany(f"INSERT INTO {table}({column}) VALUES (?)", values)
        connection.commit()


@dataclass
class History:
    """What the test did, so assertions compare with facts rather than with the report."""

    settings: Settings
    ids: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    sizes: dict[str, list[int]] = field(default_factory=dict)  # path -> size in each snapshot holding it
    rows: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (path, table) -> rows per snapshot
    packs_before_last: set[str] = field(default_factory=set)

    def snapshot(self, tag: str, when: datetime, paths: list[str] | None = None) -> str:
        root = self.settings.root
        self.packs_before_last = _packs(self.settings)
        report = create_backup(self.settings, tag=tag, now=when, paths=paths)
        for relative in paths or ["app.db", "data/metrics.sqlite", "notes.db"]:
            self.sizes.setdefault(relative, []).append((root / relative).stat().st_size)
        for relative, table in (("app.db", "users"), ("app.db", "orders"), ("data/metrics.sqlite", "samples")):
            if paths is None or relative in paths:
                self.rows.setdefault((relative, table), []).append(_rows(root / relative, table))
        self.ids.append(report.snapshot.id)
        self.tags.append(tag)
        return report.snapshot.id


def _packs(settings: Settings) -> set[str]:
    packs = settings.repository / "packs"
    return {str(path) for path in packs.rglob("*") if path.is_file()} if packs.exists() else set()


def make_history(tmp_path: Path) -> History:
    """Seven snapshots over four days:

    1 daily     app.db users 100, orders 400; metrics samples 1000
    2 daily     orders 500, samples 1200
    3 migration (nothing changed: the snapshot before a migration)
    4 manual    users gains a column (schema change right after a migration: expected)
    5 daily     orders 500 -> 200 (60% lost: warning); metrics gains an index outside a migration (warning)
    6 safety    app.db only, users 100
    7 daily     users 100 -> 95 (5%: below the threshold, no warning)
    """
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    app, metrics = root / "app.db", root / "data" / "metrics.sqlite"
    _execute(app, "PRAGMA journal_mode=wal", "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)", "CREATE TABLE orders(id INTEGER PRIMARY KEY, item TEXT)")
    _execute(metrics, "CREATE TABLE samples(id INTEGER PRIMARY KEY, value TEXT)")
    _insert(app, "users", 100)
    _insert(app, "orders", 400)
    _insert(metrics, "samples", 1000, width=200)
    (root / "notes.db").write_bytes(b"plain notes, not SQLite\n" * 50)
    history = History(settings=settings_from_mapping({"lock_wait": 0}, root=root))
    history.snapshot("daily", T0)
    _insert(app, "orders", 100)
    _insert(metrics, "samples", 200, width=200)
    history.snapshot("daily", T0 + timedelta(days=1))
    history.snapshot("migration", T0 + timedelta(days=2))
    _execute(app, "ALTER TABLE users ADD COLUMN email TEXT")
    history.snapshot("manual", T0 + timedelta(days=2, hours=1))
    _execute(app, "DELETE FROM orders WHERE id > 200")
    _execute(metrics, "CREATE INDEX samples_value ON samples(value)")
    history.snapshot("daily", T0 + timedelta(days=3))
    history.snapshot("safety", T0 + timedelta(days=3, hours=2), paths=["app.db"])
    _execute(app, "DELETE FROM users WHERE id > 95")
    history.snapshot("daily", T0 + timedelta(days=4))
    return history


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return make_history(tmp_path_factory.mktemp("history"))


# -- reading the page back ---------------------------------------------------------------


@dataclass
class Element:
    tag: str
    attributes: dict[str, str]
    content: list[str | Element] = field(default_factory=list)  # text and elements, in document order

    @property
    def children(self) -> list[Element]:
        return [item for item in self.content if isinstance(item, Element)]

    def find_all(self, predicate: Callable[[Element], bool]) -> list[Element]:
        found = [self] if predicate(self) else []
        for child in self.children:
            found += child.find_all(predicate)
        return found

    def select(self, tag: str | None = None, **attributes: str) -> list[Element]:
        """Elements below (and including) this one with ``tag`` and these attributes;
        ``data_tile`` means ``data-tile``, ``class_`` one of the classes."""

        def matches(element: Element) -> bool:
            if tag is not None and element.tag != tag:
                return False
            for name, value in attributes.items():
                if name == "class_":
                    if value not in element.attributes.get("class", "").split():
                        return False
                elif element.attributes.get(name.replace("_", "-")) != value:
                    return False
            return True

        return self.find_all(matches)

    def one(self, tag: str | None = None, **attributes: str) -> Element:
        found = self.select(tag, **attributes)
        assert len(found) == 1, f"expected one <{tag}> with {attributes}, found {len(found)}"
        return found[0]

    @property
    def all_text(self) -> str:
        return " ".join("".join(item if isinstance(item, str) else f" {item.all_text} " for item in self.content).split())


VOID = {"meta", "link", "br", "img", "input", "hr", "col", "source", "area", "base", "wbr"}


class TreeBuilder(HTMLParser):
    """A strict little DOM: every non-void element must be closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.stack[-1].content.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].content.append(Element(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].content.append(data)


def parse(page: str) -> Element:
    builder = TreeBuilder()
    builder.feed(page)
    builder.close()
    assert builder.stack == [builder.root], f"unclosed elements: {[element.tag for element in builder.stack[1:]]}"
    return builder.root


@pytest.fixture(scope="module")
def plain_page(history: History) -> Element:
    return parse(render_html(build_report(history.settings, now=NOW)))


# -- the numbers -------------------------------------------------------------------------


def test_report_of_known_history_counts_every_snapshot_per_database(history):
    report = build_report(history.settings, now=NOW)
    assert [point.id for point in report.snapshots] == history.ids
    assert [point.tag for point in report.snapshots] == history.tags
    by_path = {database.path: database for database in report.databases}
    assert sorted(by_path) == ["app.db", "data/metrics.sqlite", "notes.db"]
    assert len(by_path["app.db"].versions) == 7
    assert len(by_path["data/metrics.sqlite"].versions) == 6
    assert by_path["notes.db"].kind == "file" and len(by_path["notes.db"].versions) == 6
    assert by_path["notes.db"].distinct_contents == 1


def test_timeline_marks_safety_and_migration_snapshots_and_names_their_tags(plain_page):
    timeline = plain_page.one("svg", id="timeline-wide")
    strong = [text.all_text for text in timeline.select("text", class_="tag-label-strong")]
    assert sorted(strong) == ["migration", "safety"]
    assert len(timeline.select("rect", class_="mark")) == 3, "one migration square per lane"
    assert len(timeline.select("path", class_="mark")) == 1, "one safety diamond, in app.db's lane"


def test_page_lists_each_snapshot_with_its_tag_newest_first(history, plain_page):
    rows = plain_page.one("table", class_="snapshots").select("tr", class_="snapshot")
    assert [row.attributes["data-snapshot"] for row in rows] == list(reversed(history.ids))
    assert [row.attributes["data-tag"] for row in rows] == list(reversed(history.tags))
    assert plain_page.one(data_tile="snapshots").all_text.startswith("Snapshots 7")


def test_page_shows_each_database_size_in_each_snapshot(history, plain_page):
    for path, sizes in history.sizes.items():
        article = plain_page.one("article", data_database=path)
        rows = article.one("table", class_="versions").select("tr")[1:]
        assert [int(row.attributes["data-size"]) for row in rows] == list(reversed(sizes)), path
        shown = rows[0].find_all(lambda element: "data-bytes" in element.attributes)[0]
        assert int(shown.attributes["data-bytes"]) == sizes[-1]
        assert shown.all_text.endswith(("KiB", " B")), "sizes are shown in human units"


def test_page_shows_row_counts_of_the_newest_snapshots(history, plain_page):
    for (path, table), counts in history.rows.items():
        article = plain_page.one("article", data_database=path)
        row = article.one("table", class_="row-counts").one("tr", data_table=table)
        cells = row.select("td")
        expected = list(reversed(counts))[: len(cells)]
        assert [int(cell.attributes["data-rows"]) for cell in cells] == expected, (path, table)
        assert cells[0].all_text.startswith(f"{counts[-1]:,}")
    app_orders = plain_page.one("article", data_database="app.db").one("tr", data_table="orders")
    lost = [cell for cell in app_orders.select("td") if "loss" in cell.attributes.get("class", "")]
    assert len(lost) == 1 and "−300" in lost[0].all_text, "the 60% loss is marked in the table"


def test_rows_lost_and_schema_change_outside_a_migration_raise_warnings(history, plain_page):
    anomalies = plain_page.one("section", id="warnings").select("li", class_="anomaly")
    found = sorted((item.attributes["data-kind"], item.attributes["data-database"], item.attributes["data-snapshot"]) for item in anomalies)
    assert found == [("rows-lost", "app.db", history.ids[4]), ("schema-change", "data/metrics.sqlite", history.ids[4])]
    rows_lost = next(item for item in anomalies if item.attributes["data-kind"] == "rows-lost")
    assert "orders lost 300 of 500 rows (60%" in rows_lost.all_text
    assert plain_page.one(id="status").attributes["data-status"] == "attention"


def test_schema_change_right_after_a_migration_and_small_losses_are_not_warnings(history):
    report = build_report(history.settings, now=NOW)
    assert not [anomaly for anomaly in report.anomalies if anomaly.snapshot_id == history.ids[3]], "app.db's column came after a migration snapshot"
    assert not [anomaly for anomaly in report.anomalies if anomaly.snapshot_id == history.ids[6]], "5% fewer users is below the threshold"
    stricter = build_report(history.settings, now=NOW, loss_threshold=0.04)
    assert [(anomaly.kind, anomaly.snapshot_id) for anomaly in stricter.anomalies if anomaly.path == "app.db"] == [
        ("rows-lost", history.ids[4]),
        ("rows-lost", history.ids[6]),
    ]
    assert DEFAULT_LOSS_THRESHOLD == 0.10


def test_storage_growth_sums_what_each_snapshot_added(history, plain_page):
    report = build_report(history.settings, now=NOW)
    stored = [point.stored_bytes for point in report.snapshots]
    assert [point.cumulative_stored_bytes for point in report.snapshots] == [sum(stored[: index + 1]) for index in range(len(stored))]
    assert stored[2] == 0, "a snapshot of unchanged databases stores nothing new"
    packs = sum(Path(path).stat().st_size for path in _packs(history.settings))
    assert report.storage.pack_bytes == packs
    assert report.storage.stored_bytes == packs, "nothing was pruned, so the sum is what is on disk"
    logical = sum(sum(sizes) for sizes in history.sizes.values())
    assert report.storage.logical_bytes == logical
    assert report.storage.dedup_ratio > 2
    rows = plain_page.one("table", class_="storage").select("tr")[1:]
    totals = {row.attributes["data-measure"]: int(row.find_all(lambda element: "data-bytes" in element.attributes)[0].attributes["data-bytes"]) for row in rows}
    assert totals["logical"] == logical and totals["packs"] == packs and totals["stored"] == packs


def test_newest_restore_point_without_a_ledger_is_the_newest_structurally_sound_snapshot(history, plain_page):
    points = {item.attributes["data-database"]: item for item in plain_page.select("li", class_="restore-point")}
    assert points["app.db"].attributes["data-snapshot"] == history.ids[6]
    assert points["data/metrics.sqlite"].attributes["data-snapshot"] == history.ids[6]
    assert points["app.db"].attributes["data-level"] == "structure"
    assert points["app.db"].one("p", class_="rp-when").all_text == "6 hours ago"
    assert "bytes were not re-read" in points["app.db"].all_text
    for section in ("verification", "retention"):
        assert plain_page.one("section", id=section).one(data_available="false").all_text.startswith("Not available.")


def test_ledger_failure_and_verified_entries_choose_the_restore_point(history):
    at = NOW - timedelta(hours=1)
    ledger = {snapshot_id: {"at": "2025-01-14T07:00:00Z", "ok": True, "level": "read-data"} for snapshot_id in history.ids[:5]}
    ledger[history.ids[6]] = {"at": at, "ok": False, "level": "read-data", "detail": "chunk 1f00 does not hash to its id"}
    page = parse(render_html(build_report(history.settings, now=NOW, ledger=ledger)))
    points = {item.attributes["data-database"]: item for item in page.select("li", class_="restore-point")}
    # 7 failed and 6 (safety, app.db only) was never re-read: 5 is the newest whose bytes were.
    assert points["app.db"].attributes["data-snapshot"] == history.ids[4]
    assert points["app.db"].attributes["data-level"] == "read-data"
    assert "re-read and matched by the verification routine, 1 hour ago" in points["app.db"].all_text
    failures = page.one("table", class_="failures").select("tr", class_="failed")
    assert [row.attributes["data-snapshot"] for row in failures] == [history.ids[6]]
    assert "does not hash" in failures[0].all_text
    timeline_row = page.one("table", class_="snapshots").one("tr", data_snapshot=history.ids[6])
    assert "status-failed" in timeline_row.attributes["class"]
    assert page.one(id="status").attributes["data-status"] == "failing"
    coverage = page.one("section", id="verification")
    assert coverage.one(data_available="true")
    assert "5 of 7" in coverage.all_text and "Never verified 1" in coverage.all_text
    assert coverage.one("tr", data_snapshot=history.ids[5]).all_text.endswith("never verified –")


def test_ledger_as_a_record_with_attribute_entries_is_accepted(history):
    @dataclass(frozen=True)
    class Entry:
        at: datetime
        ok: bool
        level: str = "read-data"
        detail: str = ""

    @dataclass(frozen=True)
    class Ledger:
        snapshots: dict[str, Entry]

    ledger = Ledger(snapshots={snapshot_id: Entry(at=NOW - timedelta(days=1), ok=True) for snapshot_id in history.ids})
    report = build_report(history.settings, now=NOW, ledger=ledger)
    assert report.restore_points["app.db"].snapshot_id == history.ids[6]
    assert report.restore_points["app.db"].level == "read-data"
    assert report.coverage is not None and report.coverage.passed == 7 and report.coverage.never == 0


def test_malformed_ledger_is_a_caller_bug_named_in_one_line(history):
    with pytest.raises(ValueError, match="has no boolean 'ok'"):
        build_report(history.settings, now=NOW, ledger={history.ids[0]: {"at": "2025-01-14T07:00:00Z", "ok": "yes"}})
    with pytest.raises(ValueError, match="no ISO 8601 time"):
        build_report(history.settings, now=NOW, ledger={history.ids[0]: {"at": "last week", "ok": True}})


def test_retention_plan_shows_what_the_next_clean_removes_and_why(history):
    plan = [{"snapshot_id": snapshot_id, "reasons": ["last"] if index >= 3 else []} for index, snapshot_id in enumerate(history.ids)]
    plan[2]["reasons"] = ["migration last 3"]
    page = parse(render_html(build_report(history.settings, now=NOW, retention_plan=plan, retention_policy="--keep-last 4")))
    section = page.one("section", id="retention")
    removed = [item.all_text for item in section.one("ul", class_="removals").select("li")]
    assert removed == history.ids[:2]
    assert section.one("strong", data_count="2")
    assert section.one("tr", data_snapshot=history.ids[2]).all_text.endswith("keep migration last 3")
    assert section.one("tr", data_snapshot=history.ids[0]).attributes["data-decision"] == "remove"
    assert "--keep-last 4" in section.all_text


def test_retention_plan_record_that_holds_everything_says_so(history):
    @dataclass(frozen=True)
    class Decision:
        snapshot_id: str
        time: datetime
        tag: str
        reasons: tuple[str, ...]

    @dataclass(frozen=True)
    class Plan:
        decisions: tuple[Decision, ...]
        held: str | None

    decisions = tuple(Decision(snapshot_id=snapshot_id, time=T0, tag="daily", reasons=("newest verified",) if index == 6 else ("held",)) for index, snapshot_id in enumerate(history.ids))
    report = build_report(history.settings, now=NOW, retention_plan=Plan(decisions=decisions, held="the newest snapshot failed verification"))
    page = parse(render_html(report))
    assert "Nothing will be removed: the newest snapshot failed verification" in page.one("p", class_="held").all_text


def test_damaged_pack_fails_the_snapshots_that_need_it_and_moves_the_restore_point(tmp_path):
    history = make_history(tmp_path)
    newest_packs = sorted(_packs(history.settings) - history.packs_before_last)
    assert newest_packs, "the last snapshot stored new data"
    for pack in newest_packs:
        with open(pack, "r+b") as handle:
            handle.truncate(10)
    report = build_report(history.settings, now=NOW)
    assert [(failure.snapshot_id, failure.paths) for failure in report.failures] == [(history.ids[6], ("app.db",))]
    assert report.restore_points["app.db"].snapshot_id == history.ids[5], "the safety snapshot before it is the newest sound one"
    assert report.restore_points["notes.db"].snapshot_id == history.ids[6], "unchanged files of the damaged snapshot are still sound"
    assert report.status == "failing"
    page = parse(render_html(report))
    assert page.one("table", class_="failures").one("tr", data_snapshot=history.ids[6])
    assert page.one(data_tile="failures").all_text.startswith("Failed verifications 1")


def test_read_data_check_marks_every_snapshot_verified(history):
    report = build_report(history.settings, now=NOW, read_data=True)
    assert {point.verification.status for point in report.snapshots} == {"verified"}
    assert {point.level for point in report.restore_points.values() if point} == {"read-data"}
    assert report.status == "attention", "the anomalies remain"


@pytest.mark.parametrize(("read_data", "says"), [(False, "structure checked out"), (True, "every database has a verified restore point")])
def test_healthy_status_says_how_deep_the_restore_points_were_checked(tmp_path, read_data, says):
    root = tmp_path / "project"
    root.mkdir()
    _execute(root / "x.db", "CREATE TABLE t(a)", "INSERT INTO t VALUES (1)")
    settings = settings_from_mapping({"lock_wait": 0}, root=root)
    create_backup(settings, now=T0)
    status = parse(render_html(build_report(settings, now=NOW, read_data=read_data))).one(id="status")
    assert status.attributes["data-status"] == "healthy" and says in status.all_text


def test_hostile_tag_and_note_are_escaped(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    _execute(root / "x.db", "CREATE TABLE t(a)")
    settings = settings_from_mapping({"lock_wait": 0}, root=root)
    create_backup(settings, tag='<script>alert("x")</script>', note="<img src=x onerror=alert(1)>", now=T0)
    page = render_html(build_report(settings, now=NOW))
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;" in page
    tree = parse(page)
    assert not tree.select("script") and not tree.select("img")


def test_empty_repository_gives_a_page_that_says_so(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    _execute(root / "x.db", "CREATE TABLE t(a)")
    settings = settings_from_mapping({"lock_wait": 0}, root=root)
    create_backup(settings, now=T0)
    (settings.repository / "snapshots").joinpath(next(os.scandir(settings.repository / "snapshots")).name).unlink()
    report = build_report(settings, now=NOW)
    page = parse(render_html(report))
    assert report.status == "attention"
    assert "No database has been backed up yet" in page.one("section", id="restore-points").all_text


def test_page_loads_nothing_and_holds_no_script(history, plain_page):
    page = render_html(build_report(history.settings, now=NOW))
    head = plain_page.one("head")
    policy = head.one("meta", http_equiv="Content-Security-Policy").attributes["content"]
    assert "default-src 'none'" in policy
    assert not plain_page.select("script") and not plain_page.select("link") and not plain_page.select("img")
    for element in plain_page.find_all(lambda element: True):
        for name, value in element.attributes.items():
            assert not name.startswith("on"), f"event handler {name} on <{element.tag}>"
            if name in ("href", "src"):
                assert value.startswith("#"), f"<{element.tag} {name}={value}> points outside the page"
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "@media print" in page and "prefers-color-scheme: dark" in page


def test_page_is_semantic_with_captioned_tables_and_labelled_charts(plain_page):
    body = plain_page.one("body")
    assert [child.tag for child in body.children] == ["header", "main", "footer"]
    assert len(body.select("h1")) == 1
    sections = body.one("main").select("section")
    assert {section.attributes["id"] for section in sections} == {"restore-points", "glance", "warnings", "timeline", "storage", "databases", "verification", "retention"}
    for section in sections:
        assert section.children[0].tag == "h2"
    for table in body.select("table"):
        assert table.children[0].tag == "caption" and table.children[0].all_text
    for svg in body.select("svg", role="img"):
        labels = svg.attributes["aria-labelledby"].split()
        assert [child.tag for child in svg.children[:2]] == ["title", "desc"]
        assert [child.attributes["id"] for child in svg.children[:2]] == labels
    ids = [element.attributes["id"] for element in body.find_all(lambda element: "id" in element.attributes)]
    assert len(ids) == len(set(ids)), "element ids are unique"


def _version(index: int, tag: str, tables: dict[str, int | None], *, schema: str = "s1", integrity: str = "ok") -> DatabaseVersion:
    return DatabaseVersion(
        path="app.db",
        snapshot_id=f"2025011{index}T020000Z-000{index}",
        time=T0 + timedelta(days=index),
        tag=tag,
        kind="sqlite",
        size=4096,
        sha256=f"{index:064x}",
        tables=tables,
        schema_hash=schema,
        integrity=integrity,
        verification=Verification(status="checked", level="structure", at=NOW, source="report"),
    )


def test_anomaly_rules_on_versions_of_one_database():
    versions = (
        _version(0, "daily", {"users": 100, "orders": 10, "audit": 5}),
        _version(1, "daily", {"users": 100, "orders": None, "audit": 5}),  # an uncounted table warns about nothing
        _version(2, "daily", {"users": 100, "orders": 10}),  # audit vanished
        _version(3, "daily", {"users": 100, "orders": 10, "empty": 0}, schema="s2"),  # schema change, no migration
        _version(4, "migration", {"users": 100, "orders": 10, "empty": 0}, schema="s2"),
        _version(5, "daily", {"users": 100, "orders": 10}, schema="s3", integrity="*** page 3 is never used"),  # after a migration
    )
    database = DatabaseHistory(path="app.db", kind="sqlite", versions=versions, restore_point=None)
    found = [(anomaly.kind, anomaly.snapshot_id[-1]) for anomaly in find_anomalies(database)]
    assert found == [("table-removed", "2"), ("schema-change", "3"), ("integrity", "5")]
    assert newest_restore_point("app.db", versions).snapshot_id == versions[4].snapshot_id, "a version failing its integrity check is no restore point"


def test_naive_now_threshold_outside_a_fraction_and_malformed_plan_are_caller_bugs(history):
    with pytest.raises(ValueError, match="time-zone-aware"):
        build_report(history.settings, now=datetime(2025, 1, 14))
    with pytest.raises(ValueError, match="expected a fraction from 0 to 1"):
        build_report(history.settings, now=NOW, loss_threshold=10)
    with pytest.raises(ValueError, match="needs a 'snapshot_id'"):
        build_report(history.settings, now=NOW, retention_plan=[{"reasons": ["last"]}])


def test_missing_repository_is_reported_not_created(tmp_path):
    from backup.errors import RepositoryNotFound

    settings = settings_from_mapping({"lock_wait": 0}, root=tmp_path)
    with pytest.raises(RepositoryNotFound):
        build_report(settings, now=NOW)
    assert not (tmp_path / ".backups").exists()


# -- writing -----------------------------------------------------------------------------


def test_write_report_creates_missing_folders_and_writes_the_page(history, tmp_path):
    out = tmp_path / "reports" / "weekly" / "health.html"
    written = write_report(history.settings, out, now=NOW)
    assert written == out
    page = parse(out.read_text(encoding="utf-8"))
    assert [row.attributes["data-snapshot"] for row in page.select("tr", class_="snapshot")] == list(reversed(history.ids))


@pytest.mark.parametrize(("operation", "errno_name", "error"), [("fsync", "EIO", StorageError), ("write", "ENOSPC", NoSpace), ("replace", "EACCES", StorageError)])
def test_failed_write_leaves_the_previous_report_untouched_and_no_temp_file(history, tmp_path, operation, errno_name, error):
    out = tmp_path / "health.html"
    out.write_text("previous report")
    page = render_html(build_report(history.settings, now=NOW))
    with inject(FaultPlan(fail_op=operation, fail_errno=getattr(errno, errno_name), fail_at=1)), pytest.raises(error, match="cannot write the report"):
        publish_html(page, out)
    assert out.read_text() == "previous report"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["health.html"], "no temp file stays behind"


def test_report_destination_that_is_a_folder_is_refused(history, tmp_path):
    with pytest.raises(UsageError, match="is a directory"):
        write_report(history.settings, tmp_path, now=NOW)


def test_report_json_is_plain_data(history):
    import json

    document = report_json(build_report(history.settings, now=NOW))
    text = json.dumps(document)
    assert document["status"] == "attention"
    assert document["restore_points"]["app.db"]["snapshot_id"] == history.ids[6]
    assert len(document["snapshots"]) == 7 and "2025-01-10T02:00:00Z" in text


def test_report_module_exports_what_it_lists():
    import backup.report

    assert sorted(backup.report.__all__) == list(backup.report.__all__)
    assert all(hasattr(backup.report, name) for name in backup.report.__all__)


def test_rendering_modules_never_touch_the_repository():
    for name in ("report_html.py", "charts.py"):
        tree = ast.parse((ROOT / "backup" / name).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not imported & {"repository", "storage", "operations", "locking", "sqlite3", "fsio"}, name


# -- a real browser ----------------------------------------------------------------------


needs_browser = pytest.mark.skipif(BROWSER is None, reason="no chromium installed (Debian: apt-get install chromium)")
DARK_BACKGROUND, LIGHT_BACKGROUND = "rgb(13, 17, 23)", "rgb(255, 255, 255)"


@pytest.fixture(scope="module")
def full_page(history: History, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page with every section filled: a ledger (one failure), a retention plan, warnings."""
    ledger = {snapshot_id: {"at": NOW - timedelta(days=1), "ok": True, "level": "read-data"} for snapshot_id in history.ids[:5]}
    ledger[history.ids[6]] = {"at": NOW - timedelta(hours=2), "ok": False, "detail": "chunk 1f00 does not hash to its id"}
    plan = [{"snapshot_id": snapshot_id, "reasons": ["last"] if index >= 2 else []} for index, snapshot_id in enumerate(history.ids)]
    return write_report(history.settings, tmp_path_factory.mktemp("page") / "report.html", now=NOW, ledger=ledger, retention_plan=plan, retention_policy="--keep-last 5")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    with chromium(tmp_path_factory.mktemp("chromium") / "profile") as running:
        yield running


LAYOUT = """({
  pageWidth: document.documentElement.scrollWidth,
  background: getComputedStyle(document.body).backgroundColor,
  wideCharts: [...document.querySelectorAll('svg.chart-wide')].filter(e => getComputedStyle(e).display !== 'none').length,
  narrowCharts: [...document.querySelectorAll('svg.chart-narrow')].filter(e => getComputedStyle(e).display !== 'none').length,
  restorePointSize: parseFloat(getComputedStyle(document.querySelector('.rp-when')).fontSize),
  bodySize: parseFloat(getComputedStyle(document.body).fontSize),
  overflowing: [...document.querySelectorAll('main *')].filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1
      && !e.closest('.table-wrap')).map(e => e.tagName + '.' + e.className).slice(0, 5),
})"""


@needs_browser
@pytest.mark.parametrize(
    ("width", "media", "scheme", "background"),
    [
        (1280, "screen", "light", LIGHT_BACKGROUND),
        (390, "screen", "light", LIGHT_BACKGROUND),
        (390, "screen", "dark", DARK_BACKGROUND),
        (1280, "screen", "dark", DARK_BACKGROUND),
        (760, "print", "dark", LIGHT_BACKGROUND),
    ],
    ids=["desktop", "phone", "phone-dark", "desktop-dark", "print-from-dark"],
)
def test_browser_renders_the_page_without_console_messages_or_overflow(browser, full_page, tmp_path, width, media, scheme, background):
    page = browser.new_page(width=width, media=media, color_scheme=scheme)
    page.open(full_page.as_uri())
    layout = page.evaluate(LAYOUT)
    png = page.screenshot(tmp_path / f"report-{width}-{media}-{scheme}.png")
    assert page.collect_problems() == []
    assert layout["pageWidth"] <= width, "nothing makes the page scroll sideways"
    assert layout["overflowing"] == []
    assert layout["background"] == background
    phone = width < 640 and media == "screen"
    assert (layout["wideCharts"] == 0) == phone and (layout["narrowCharts"] == 0) != phone, layout
    assert layout["restorePointSize"] >= 1.9 * layout["bodySize"], "the restore point is in large type"
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == width


@needs_browser
@pytest.mark.parametrize(
    "body",
    ["<script>notDefinedAnywhere()</script>", '<img src="http://example.invalid/logo.png" alt="">', "<script>console.error('x')</script>"],
    ids=["script-error", "refused-request", "console-error"],
)
def test_browser_check_notices_script_errors_and_refused_requests(browser, tmp_path, body):
    """The check above can fail: a broken script, a console error, or a request the
    Content-Security-Policy refuses is reported."""
    policy = "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; script-src 'unsafe-inline'\">"
    page_file = tmp_path / "broken.html"
    page_file.write_text(f"<!DOCTYPE html><html><head>{policy}<title>x</title></head><body>{body}</body></html>")
    page = browser.new_page(width=390)
    page.open(page_file.as_uri())
    page.evaluate("document.title")  # a round trip, so every message of the load has arrived
    assert page.collect_problems(), body


@needs_browser
def test_layout_check_notices_a_page_wider_than_the_screen(browser, tmp_path):
    """The overflow assertion above can fail: an element wider than a phone is measured."""
    page_file = tmp_path / "wide.html"
    page_file.write_text('<!DOCTYPE html><html><head><meta name="viewport" content="width=device-width"><title>x</title></head>'
                         '<body><main><p class="rp-when" style="width:900px">wide</p></main></body></html>')
    page = browser.new_page(width=390)
    page.open(page_file.as_uri())
    layout = page.evaluate(LAYOUT)
    assert layout["pageWidth"] > 390 and layout["overflowing"] == ["P.rp-when"]
