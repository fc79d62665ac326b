"""dbkeep: verified, deduplicated backups of the databases a project keeps on disk.

The library API. Everything the command line does is one call here plus rendering.

    from backup import create_backup, load_settings
    report = create_backup(load_settings(), tag="manual")

    with backup.guard("add users table"):
        run_migration()          # restored automatically if this raises
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    AmbiguousSnapshot,
    AuthenticationFailed,
    BackupError,
    ConfigError,
    CorruptChunk,
    CorruptData,
    CorruptIndex,
    CorruptManifest,
    CorruptPack,
    LockLost,
    NoSpace,
    RepositoryLocked,
    RepositoryNotFound,
    RestoreRefused,
    SnapshotNotFound,
    SourceError,
    StorageError,
    UsageError,
    VerificationFailed,
    WeakKeyDerivation,
    WrongPassphrase,
)
if TYPE_CHECKING:
    from .export import ExportReport, export_snapshot
    from .inspection import Comparison, FileComparison, SizeReport, compare_snapshot, list_snapshots, repository_size
    from .manifest import FileEntry, ServerInfo, Snapshot, SQLiteInfo
    from .keys import KeyInfo, add_key, change_passphrase, init_repository, list_keys, remove_key
    from .operations import BackupReport, CleanReport, DrillReport, RestorePlan, RestoreReport, SnapshotListing, clean_old_backups, create_backup, create_safety_backup, drill_backup, find_snapshot, guard, list_backups, plan_restore, restore_backup, verify_backup
    from .prune import PruneOptions, PruneRefused
    from .retention import PolicyRefused, RetentionPolicy, apply_policy
    from .sample import SampleReport, create_sample_project
    from .settings import Settings, load_settings, settings_from_mapping
    from .transfer import CopyReport, ImportLimits, ImportRefused, ImportReport, copy_snapshots, import_archive
    from .unlocking import UnlockReport, unlock_repository
    from .verification import Problem, VerifyReport
    from .provenance import TOOL_VERSION as __version__

#: Public name -> (module, attribute). Imported on first use: a command that
#: backs up needs neither export, inspection nor transfer, and importing every
#: module cost about 40 ms, a tenth of a backup of an unchanged 100 MiB database.
_LAZY: dict[str, tuple[str, str]] = {
    "ExportReport": ("export", "ExportReport"),
    "export_snapshot": ("export", "export_snapshot"),
    "Comparison": ("inspection", "Comparison"),
    "FileComparison": ("inspection", "FileComparison"),
    "SizeReport": ("inspection", "SizeReport"),
    "compare_snapshot": ("inspection", "compare_snapshot"),
    "list_snapshots": ("inspection", "list_snapshots"),
    "repository_size": ("inspection", "repository_size"),
    "FileEntry": ("manifest", "FileEntry"),
    "ServerInfo": ("manifest", "ServerInfo"),
    "Snapshot": ("manifest", "Snapshot"),
    "SQLiteInfo": ("manifest", "SQLiteInfo"),
    "KeyInfo": ("keys", "KeyInfo"),
    "add_key": ("keys", "add_key"),
    "change_passphrase": ("keys", "change_passphrase"),
    "init_repository": ("keys", "init_repository"),
    "list_keys": ("keys", "list_keys"),
    "remove_key": ("keys", "remove_key"),
    "BackupReport": ("operations", "BackupReport"),
    "CleanReport": ("operations", "CleanReport"),
    "DrillReport": ("operations", "DrillReport"),
    "RestorePlan": ("operations", "RestorePlan"),
    "RestoreReport": ("operations", "RestoreReport"),
    "SnapshotListing": ("operations", "SnapshotListing"),
    "clean_old_backups": ("operations", "clean_old_backups"),
    "create_backup": ("operations", "create_backup"),
    "create_safety_backup": ("operations", "create_safety_backup"),
    "drill_backup": ("operations", "drill_backup"),
    "find_snapshot": ("operations", "find_snapshot"),
    "guard": ("operations", "guard"),
    "list_backups": ("operations", "list_backups"),
    "plan_restore": ("operations", "plan_restore"),
    "restore_backup": ("operations", "restore_backup"),
    "verify_backup": ("operations", "verify_backup"),
    "PruneOptions": ("prune", "PruneOptions"),
    "PruneRefused": ("prune", "PruneRefused"),
    "PolicyRefused": ("retention", "PolicyRefused"),
    "RetentionPolicy": ("retention", "RetentionPolicy"),
    "apply_policy": ("retention", "apply_policy"),
    "SampleReport": ("sample", "SampleReport"),
    "create_sample_project": ("sample", "create_sample_project"),
    "Settings": ("settings", "Settings"),
    "load_settings": ("settings", "load_settings"),
    "settings_from_mapping": ("settings", "settings_from_mapping"),
    "CopyReport": ("transfer", "CopyReport"),
    "ImportLimits": ("transfer", "ImportLimits"),
    "ImportRefused": ("transfer", "ImportRefused"),
    "ImportReport": ("transfer", "ImportReport"),
    "copy_snapshots": ("transfer", "copy_snapshots"),
    "import_archive": ("transfer", "import_archive"),
    "UnlockReport": ("unlocking", "UnlockReport"),
    "unlock_repository": ("unlocking", "unlock_repository"),
    "Problem": ("verification", "Problem"),
    "VerifyReport": ("verification", "VerifyReport"),
    "__version__": ("provenance", "TOOL_VERSION"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AmbiguousSnapshot",
    "AuthenticationFailed",
    "BackupError",
    "BackupReport",
    "CleanReport",
    "Comparison",
    "ConfigError",
    "CopyReport",
    "CorruptChunk",
    "CorruptData",
    "CorruptIndex",
    "CorruptManifest",
    "CorruptPack",
    "DrillReport",
    "ExportReport",
    "FileComparison",
    "FileEntry",
    "ImportLimits",
    "ImportRefused",
    "ImportReport",
    "KeyInfo",
    "LockLost",
    "NoSpace",
    "PolicyRefused",
    "Problem",
    "PruneOptions",
    "PruneRefused",
    "RepositoryLocked",
    "RepositoryNotFound",
    "RestorePlan",
    "RestoreRefused",
    "RestoreReport",
    "RetentionPolicy",
    "SQLiteInfo",
    "SampleReport",
    "ServerInfo",
    "Settings",
    "SizeReport",
    "Snapshot",
    "SnapshotListing",
    "SnapshotNotFound",
    "SourceError",
    "StorageError",
    "UnlockReport",
    "UsageError",
    "VerificationFailed",
    "VerifyReport",
    "WeakKeyDerivation",
    "WrongPassphrase",
    "__version__",
    "add_key",
    "apply_policy",
    "change_passphrase",
    "clean_old_backups",
    "compare_snapshot",
    "copy_snapshots",
    "create_backup",
    "create_safety_backup",
    "create_sample_project",
    "drill_backup",
    "export_snapshot",
    "find_snapshot",
    "guard",
    "import_archive",
    "init_repository",
    "list_backups",
    "list_keys",
    "list_snapshots",
    "load_settings",
    "plan_restore",
    "remove_key",
    "repository_size",
    "restore_backup",
    "settings_from_mapping",
    "unlock_repository",
    "verify_backup",
]
