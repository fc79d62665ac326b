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
from .keys import KeyInfo, add_key, change_passphrase, init_repository, list_keys, remove_key
from .manifest import FileEntry, Snapshot, SQLiteInfo
from .operations import (
    BackupReport,
    CleanReport,
    RestorePlan,
    RestoreReport,
    SnapshotListing,
    clean_old_backups,
    create_backup,
    create_safety_backup,
    find_snapshot,
    guard,
    list_backups,
    plan_restore,
    restore_backup,
    verify_backup,
)
from .provenance import TOOL_VERSION as __version__
from .settings import Settings, load_settings, settings_from_mapping
from .transfer import CopyReport, ImportLimits, ImportRefused, ImportReport, copy_snapshots, import_archive
from .verification import Problem, VerifyReport

__all__ = [
    "AmbiguousSnapshot",
    "AuthenticationFailed",
    "BackupError",
    "BackupReport",
    "CleanReport",
    "ConfigError",
    "CopyReport",
    "CorruptChunk",
    "CorruptData",
    "CorruptIndex",
    "CorruptManifest",
    "CorruptPack",
    "FileEntry",
    "ImportLimits",
    "ImportRefused",
    "ImportReport",
    "KeyInfo",
    "LockLost",
    "NoSpace",
    "Problem",
    "RepositoryLocked",
    "RepositoryNotFound",
    "RestorePlan",
    "RestoreRefused",
    "RestoreReport",
    "SQLiteInfo",
    "Settings",
    "Snapshot",
    "SnapshotListing",
    "SnapshotNotFound",
    "SourceError",
    "StorageError",
    "UsageError",
    "VerificationFailed",
    "VerifyReport",
    "WeakKeyDerivation",
    "WrongPassphrase",
    "__version__",
    "add_key",
    "change_passphrase",
    "clean_old_backups",
    "copy_snapshots",
    "create_backup",
    "create_safety_backup",
    "find_snapshot",
    "guard",
    "import_archive",
    "init_repository",
    "list_backups",
    "list_keys",
    "load_settings",
    "plan_restore",
    "remove_key",
    "restore_backup",
    "settings_from_mapping",
    "verify_backup",
]
