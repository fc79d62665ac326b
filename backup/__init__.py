"""dbkeep: verified, deduplicated backups of the databases a project keeps on disk.

The library API. Everything the command line does is one call here plus rendering.

    from backup import create_backup, load_settings
    report = create_backup(load_settings(), tag="manual")

    with backup.guard("add users table"):
        run_migration()          # restored automatically if this raises
"""

from .errors import (
    AmbiguousSnapshot,
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
)
from .manifest import FileEntry, ServerInfo, Snapshot, SQLiteInfo
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
from .settings import Settings, load_settings, settings_from_mapping
from .verification import Problem, VerifyReport

__all__ = [
    "AmbiguousSnapshot",
    "BackupError",
    "BackupReport",
    "CleanReport",
    "ConfigError",
    "CorruptChunk",
    "CorruptData",
    "CorruptIndex",
    "CorruptManifest",
    "CorruptPack",
    "DrillReport",
    "FileEntry",
    "LockLost",
    "NoSpace",
    "Problem",
    "RepositoryLocked",
    "RepositoryNotFound",
    "RestorePlan",
    "RestoreRefused",
    "RestoreReport",
    "SQLiteInfo",
    "ServerInfo",
    "Settings",
    "Snapshot",
    "SnapshotListing",
    "SnapshotNotFound",
    "SourceError",
    "StorageError",
    "UsageError",
    "VerificationFailed",
    "VerifyReport",
    "__version__",
    "clean_old_backups",
    "create_backup",
    "create_safety_backup",
    "drill_backup",
    "find_snapshot",
    "guard",
    "list_backups",
    "load_settings",
    "plan_restore",
    "restore_backup",
    "settings_from_mapping",
    "verify_backup",
]
