"""Unlocking: removing lock records that block the repository.

Owns: the policy of ``backup.unlock``: records of processes that provably died
are removed without asking; records of live (or unverifiable, e.g. other-host)
owners only when the caller asks for it and confirms. Uses the locking module's
records; never touches snapshots or data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import locking
from .errors import UsageError
from .operations import open_repository
from .settings import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class UnlockReport:
    removed: tuple[str, ...]  # descriptions of the records removed
    remaining: tuple[str, ...]  # descriptions of the records still in place


def _describe_all(storage) -> list[tuple[str, str, bool]]:
    """(name, description, stale) for every lock record."""
    found = []
    for name, record in locking.list_locks(storage):
        if record is None:
            found.append((name, f"unreadable lock record {name}", True))
        else:
            found.append((name, record.describe(), record.owner_is_dead()))
    return found


def unlock_repository(
    settings: Settings,
    *,
    include_live: bool = False,
    force: bool = False,
    confirm: Callable[[Sequence[str]], bool] | None = None,
) -> UnlockReport:
    """Remove stale lock records; with ``include_live`` also those of live owners.

    Removing a live owner's lock lets two writers meet, so it needs ``force`` or
    a ``confirm`` callback (given the descriptions) that says yes; otherwise
    UsageError and nothing is removed.
    """
    repository = open_repository(settings)
    live = [description for _, description, stale in _describe_all(repository.storage) if not stale]
    if include_live and live and not force and (confirm is None or not confirm(live)):
        raise UsageError("removing locks of processes that may still be running was not confirmed; nothing was removed (add --force to remove them without asking)")
    removed = locking.remove_locks(repository.storage, include_live=include_live)
    remaining = [description for _, description, _ in _describe_all(repository.storage)]
    return UnlockReport(removed=tuple(removed), remaining=tuple(remaining))
