"""Sources: what is backed up, and how it is read and written back consistently.

Owns: choosing files under a project root, capturing a consistent state of each
(SQLite inside a read transaction or through the online backup API, plain files
with a change check), the
metadata recorded about them, and writing a verified copy back into place.
Knows databases and files, never the repository or storage formats.
"""

from .plainfile import capture_file, install_file
from .selection import SQLITE_HEADER, SelectedFile, is_sqlite_file, select_files
from .sqlite import (
    capture_sqlite,
    check_sqlite_copy,
    copy_sqlite,
    describe_copy,
    describe_sqlite,
    logical_dump_digest,
    open_capture,
    page_size_of,
    restore_sqlite_into,
)

__all__ = [
    "SQLITE_HEADER",
    "SelectedFile",
    "capture_file",
    "capture_sqlite",
    "check_sqlite_copy",
    "copy_sqlite",
    "describe_copy",
    "describe_sqlite",
    "install_file",
    "is_sqlite_file",
    "logical_dump_digest",
    "open_capture",
    "page_size_of",
    "restore_sqlite_into",
    "select_files",
]
