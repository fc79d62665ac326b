"""The ``dbkeep`` program: the same task namespace as ``invoke``, for any project.

Owns: the console script (``dbkeep backup.create``, ``dbkeep --list``), built on
Invoke's ``Program`` with a fixed namespace, so a project that does not use
Invoke needs no tasks.py. The project configuration is the ``invoke.yaml`` of
the project being worked on (the current directory, or ``--root``).
"""

from __future__ import annotations

import os
import sys

from invoke import Collection, Program

from . import tasks
from .provenance import TOOL_VERSION


def build_namespace() -> Collection:
    """The root namespace of ``dbkeep``: the ``backup`` collection and ``sample``."""
    namespace = Collection()
    namespace.add_collection(tasks.build_collection())
    namespace.add_task(tasks.sample)
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
