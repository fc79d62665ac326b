"""One dbkeep operation through the library API, run by bench/run.py in a child process.

Usage: python bench/dbkeep_op.py backup|verify|restore ROOT REPOSITORY [TARGET]

Kept apart from run.py so the measured process imports only what the operation
needs (its start-up cost and peak RSS are part of the measurement, as they are
for restic and borg). Exit status 0 on success, 1 when the operation reports a
problem.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from backup import Settings, create_backup, restore_backup, verify_backup  # noqa: E402

DATABASE_NAME = "app.db"


def main(argv: list[str]) -> int:
    operation, root, repository, *rest = argv
    settings = Settings(root=Path(root), repository=Path(repository))
    if operation == "backup":
        create_backup(settings, paths=[DATABASE_NAME], tag="bench")
        return 0
    if operation == "verify":
        report = verify_backup(settings, read_data=True)
        for problem in report.problems:
            print(problem.message, file=sys.stderr)
        return 0 if report.ok else 1
    if operation == "restore":
        restore_backup(settings, "latest", target=Path(rest[0]), force=True)
        return 0
    print(f"unknown operation {operation}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
