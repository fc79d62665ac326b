"""Progress: how long operations tell a caller how many bytes they have done.

Owns: the context-local progress callback and the two calls the library makes
while it works (``begin`` with the expected total, ``advance`` per piece).
Knows nothing of terminals, rates or formatting: the library never prints. A
caller that wants a display wraps an operation in ``reporting(callback)``;
without one, ``begin`` and ``advance`` cost a context-variable lookup.

    with progress.reporting(lambda label, done, total: ...):
        create_backup(settings)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

#: ``callback(label, bytes_done, bytes_total_or_None)``; called after every advance.
ProgressCallback = Callable[[str, int, "int | None"], None]


@dataclass(slots=True)
class _Tracker:
    callback: ProgressCallback
    label: str = ""
    done: int = 0
    total: int | None = None


_current: ContextVar[_Tracker | None] = ContextVar("dbkeep_progress", default=None)


@contextlib.contextmanager
def reporting(callback: ProgressCallback) -> Iterator[None]:
    """Send progress of the operations run inside the block to ``callback``."""
    token = _current.set(_Tracker(callback=callback))
    try:
        yield
    finally:
        _current.reset(token)


def begin(label: str, total: int | None) -> None:
    """Start a new phase (``backup``, ``restore``, ...) expected to cover ``total`` bytes."""
    tracker = _current.get()
    if tracker is not None:
        tracker.label, tracker.done, tracker.total = label, 0, total
        tracker.callback(label, 0, total)


def advance(amount: int) -> None:
    """Count ``amount`` more bytes done in the current phase."""
    tracker = _current.get()
    if tracker is not None:
        tracker.done += amount
        tracker.callback(tracker.label, tracker.done, tracker.total)
