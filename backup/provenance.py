"""Who, where and which commit: the provenance recorded in every manifest.

Owns: asking git about the project root (branch, commit, dirty flag), the user,
the host and the tool version. A project that is not a git checkout, or a
machine without git, simply records no git details.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
from pathlib import Path

from .manifest import GitInfo

TOOL_VERSION = "0.1.0"


def _git(root: Path, *arguments: str) -> str | None:
    try:
        completed = subprocess.run(
            ["git", "-C", str(root), *arguments],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def git_info(root: Path) -> GitInfo:
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return GitInfo()
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return GitInfo(branch=branch, commit=commit, dirty=None if status is None else bool(status))


def user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def host_name() -> str:
    return socket.gethostname()
