"""The public API: everything in backup.__all__ exists, and the list is sorted."""

from __future__ import annotations

import backup


def test_all_names_exist_and_are_sorted() -> None:
    assert [name for name in backup.__all__ if not hasattr(backup, name)] == []
    assert backup.__all__ == sorted(backup.__all__)


def test_command_line_library_functions_are_public() -> None:
    for name in ("compare_snapshot", "repository_size", "list_snapshots", "export_snapshot", "unlock_repository", "create_sample_project"):
        assert name in backup.__all__
