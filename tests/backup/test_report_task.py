"""The ``backup.report`` task, run as a real command line in a subprocess."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

from backup import create_backup
from backup.settings import settings_from_mapping

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = """
import sys
from invoke import Collection, Program
from backup.report_task import report
namespace = Collection()
collection = Collection("backup")
collection.add_task(report)
namespace.add_collection(collection)
Program(namespace=namespace, name="dbkeep").run(["dbkeep", *sys.argv[1:]])
"""


def run(*arguments: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(cwd), **(env or {})}
    return subprocess.run([sys.executable, "-c", PROGRAM, "backup.report", *arguments], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120, check=False)


def make_project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    with closing(sqlite3.connect(root / "app.db")) as connection:
        connection.execute("CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT)")
        connection.executemany("INSERT INTO users(name) VALUES (?)", [(f"user {index}",) for index in range(40)])
        connection.commit()
    create_backup(settings_from_mapping({"lock_wait": 0}, root=root), tag="daily")
    return root


def test_report_task_documents_every_flag_and_fits_one_list_line(tmp_path):
    from backup.report_task import report

    assert len(report.__doc__.strip().splitlines()[0]) <= 62  # `invoke --list` wraps longer lines on 80 columns
    # In a fresh process: Invoke hands each flag's help out only once per task object.
    completed = run("--help", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    lines = [line.strip() for line in completed.stdout.splitlines() if line.strip().startswith("--")]
    assert sorted(line.split()[0].split("=")[0] for line in lines) == ["--json", "--open", "--out", "--read-data", "--root"]
    assert all(len(line.split()) > 1 for line in lines), lines


def test_report_task_writes_the_page_and_says_where(tmp_path):
    root = make_project(tmp_path)
    completed = run("--out", "out/health.html", cwd=root)
    assert completed.returncode == 0, completed.stderr
    page = root / "out" / "health.html"
    assert completed.stdout.startswith(f"wrote {page}: healthy; 1 snapshots of 1 databases and files; newest verified restore point: app.db ")
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and 'data-table="users"' in text and 'data-rows="40"' in text


def test_report_task_with_json_prints_one_document(tmp_path):
    root = make_project(tmp_path)
    completed = run("--json", "--read-data", "--root", str(root), "--out", str(tmp_path / "r.html"), cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["schema_version"] == 1 and document["command"] == "backup.report" and document["ok"] is True
    assert document["path"] == str(tmp_path / "r.html") and document["status"] == "healthy"
    assert document["check_level"] == "read-data"
    assert document["restore_points"]["app.db"]["level"] == "read-data"


def test_report_task_without_a_repository_exits_2_with_one_line_and_writes_nothing(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    completed = run("--out", "r.html", cwd=root)
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: no dbkeep repository at ") and completed.stderr.count("\n") == 1
    assert "Traceback" not in completed.stderr
    assert not (root / "r.html").exists()
    as_json = run("--json", cwd=root)
    assert as_json.returncode == 2 and json.loads(as_json.stdout)["error"]["type"] == "RepositoryNotFound"


def test_report_task_open_hands_the_written_file_to_the_browser(tmp_path):
    root = make_project(tmp_path)
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.py"
    browser.write_text(f"import sys\nopen({str(opened)!r}, 'w').write(sys.argv[1])\n")
    completed = run("--open", cwd=root, env={"BROWSER": f"{sys.executable} {browser} %s"})
    assert completed.returncode == 0, completed.stderr
    assert opened.read_text() == (root / "report.html").as_uri()
