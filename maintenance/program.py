"""The ``dbkeep`` program with every task: backup.*, maintenance.*, sample, selftest.

Owns: the full root namespace, shared by the console script and this repository's
``tasks.py``. It lives here, above the library, because the library must not
import the routines.
"""

from __future__ import annotations

import os
import sys

from invoke import Collection, Program

from backup import tasks as backup_tasks
from backup.provenance import TOOL_VERSION

from .tasks import ns as maintenance_collection
from .tasks import selftest


def build_namespace() -> Collection:
    namespace = Collection()
    namespace.add_collection(backup_tasks.build_collection())
    namespace.add_collection(maintenance_collection)
    namespace.add_task(backup_tasks.sample)
    namespace.add_task(selftest)
    return namespace


program = Program(namespace=build_namespace(), version=TOOL_VERSION, name="dbkeep", binary="dbkeep")


def main() -> None:
    try:
        program.run()
    except BrokenPipeError:
        # The reader of our output (head, less) went away: stop quietly, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)


if __name__ == "__main__":
    main()
