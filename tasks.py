"""Invoke entry point of this repository: builds the root namespace, nothing else.

    invoke --list
    invoke sample && invoke backup.create --root sample
"""

from maintenance.program import build_namespace

namespace = build_namespace()
