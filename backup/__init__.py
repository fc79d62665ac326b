"""dbkeep: verified, deduplicated backups of the databases a project keeps on disk.

The library API. Everything the command line does is one call here plus rendering.

    from backup import create_backup, load_settings
    report = create_backup(load_settings(), tag="manual")

    with backup.guard("add users table"):
        run_migration()          # restored automatically if this raises
"""

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
from .export import ExportReport, export_snapshot
from .inspection import Comparison, FileComparison, SizeReport, compare_snapshot, list_snapshots, repository_size
from .manifest import FileEntry, ServerInfo, Snapshot, SQLiteInfo
from .keys import KeyInfo, add_key, change_passphrase, init_repository, list_keys, remove_key
from .operations import (
    BackupReport,
    CleanReport,
    DrillReport,
    RestorePlan,
    RestoreReport,
    SnapshotListing,
    clean_old_backups,
    create_backup,
    create_safety_backup,
    drill_backup,
    find_snapshot,
    guard,
    list_backups,
    plan_restore,
    restore_backup,
    verify_backup,
)
from .provenance import TOOL_VERSION as __version__
from .prune import PruneOptions, PruneRefused
from .retention import PolicyRefused, RetentionPolicy, apply_policy
from .sample import SampleReport, create_sample_project
from .settings import Settings, load_settings, settings_from_mapping
from .transfer import CopyReport, ImportLimits, ImportRefused, ImportReport, copy_snapshots, import_archive
from .unlocking import UnlockReport, unlock_repository
from .verification import Problem, VerifyReport

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
