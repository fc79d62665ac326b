"""Progress reporting: what long operations tell a caller, without printing anything."""

from __future__ import annotations

from pathlib import Path

from backup import create_backup, load_settings, progress, restore_backup, verify_backup
from backup.sample import create_sample_project


def test_create_restore_and_verify_report_bytes_up_to_their_totals(tmp_path: Path, capsys) -> None:
    create_sample_project(tmp_path / "shop", size=256 * 1024)
    settings = load_settings(tmp_path / "shop")
    events: list[tuple[str, int, int | None]] = []
    with progress.reporting(lambda label, done, total: events.append((label, done, total))):
        snapshot = create_backup(settings).snapshot
        restore_backup(settings, snapshot.id, target=tmp_path / "copy")
        verify_backup(settings, read_data=True)
    labels = [label for label, _, _ in events]
    assert labels.index("backup") < labels.index("restore") < labels.index("verify packs") < labels.index("verify files")
    for label in ("backup", "restore", "verify files"):
        phase = [(done, total) for name, done, total in events if name == label]
        done = [value for value, _ in phase]
        assert done == sorted(done) and done[-1] == phase[-1][1] == snapshot.logical_bytes
    assert capsys.readouterr() == ("", "")


def test_without_a_callback_nothing_is_recorded() -> None:
    progress.begin("backup", 10)
    progress.advance(5)  # no reporting block: a no-op, never an error
