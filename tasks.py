"""Invoke entry point of this repository: builds the root namespace, nothing else.

    invoke --list
    invoke sample && invoke backup.create --root sample
"""

from invoke import Collection

from backup import tasks as backup_tasks

namespace = Collection()
namespace.add_collection(backup_tasks.build_collection())
namespace.add_task(backup_tasks.sample)
