"""The public API is what backup/__init__.py exports, and __all__ lists all of it."""

from __future__ import annotations

import backup


def test_all_names_exist_and_are_sorted():
    assert sorted(backup.__all__) == list(backup.__all__)
    for name in backup.__all__:
        assert hasattr(backup, name), name


def test_design_api_is_present():
    for name in ["create_backup", "restore_backup", "list_backups", "verify_backup", "clean_old_backups", "create_safety_backup", "guard"]:
        assert callable(getattr(backup, name))


def test_every_public_exception_descends_from_backup_error():
    for name in backup.__all__:
        value = getattr(backup, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, backup.BackupError), name
