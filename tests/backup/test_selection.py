"""Which files are selected: patterns, SQLite headers, excluded places, no sidecars."""

from __future__ import annotations

import os

from backup.sources import select_files
from tests.dbhelpers import make_database


def _relative(root, **options):
    return {(item.relative, item.kind) for item in select_files(root, **options)}


def test_defaults_find_sqlite_by_header_and_plain_files_by_name(project):
    assert _relative(project) == {("app.db", "sqlite"), ("data/analytics.sqlite", "sqlite"), ("data/notes.db", "file")}


def test_sidecars_vcs_virtualenvs_node_modules_and_repository_are_skipped(project):
    for place in [".git", "node_modules/pkg", "env", ".backups"]:
        make_database(project / place / "hidden.db", rows=1)
    (project / "env" / "pyvenv.cfg").write_text("home = /usr\n")
    (project / "app.db-wal").write_bytes(b"")
    (project / "app.db-journal").write_bytes(b"")

    found = _relative(project, skip=[project / ".backups"])

    assert all(not path.startswith((".git", "node_modules", "env", ".backups")) for path, _ in found)
    assert all(not path.endswith(("-wal", "-shm", "-journal")) for path, _ in found)


def test_backupignore_and_exclude_patterns_remove_files(project):
    (project / ".backupignore").write_text("# comment\ndata/\n")
    assert _relative(project) == {("app.db", "sqlite")}
    (project / ".backupignore").unlink()
    assert _relative(project, exclude=["*.sqlite"]) == {("app.db", "sqlite"), ("data/notes.db", "file")}


def test_symlinks_are_not_followed_out_of_the_root(project, tmp_path):
    outside = make_database(tmp_path / "outside" / "secret.db", rows=1)
    os.symlink(outside, project / "link.db")
    os.symlink(outside.parent, project / "linkdir")

    found = _relative(project)

    assert not any("link" in path for path, _ in found)


def test_sqlite_database_with_unusual_name_is_found_by_its_header_when_included(project):
    make_database(project / "store.bin", rows=1)
    assert ("store.bin", "sqlite") in _relative(project, include=["*.bin"])
