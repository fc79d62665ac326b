"""Work handed to one thread that runs it in the order given, a bounded number of calls behind.

Hashing (hashlib), writing (os.write) and zstd let go of the GIL, so a second
thread can take them over while the caller reads and decompresses on the
other core. Backup hashes the stream aside, the writer hashes and stages its
pack, restore hashes and writes the copy, verify hashes the versions it reads:
each needs its calls run in order, at most a few behind, their errors raised
in the caller, and nothing still running once it is done with its file.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class InOrder:
    """Calls run one after another on one thread; ``submit`` returns with at most ``ahead`` of them not done.

    ``drain`` waits for every call and raises the first error. Leaving the
    ``with`` block (or ``close``) cancels what has not started and waits for
    the running call, so nothing runs after it; on success, drain first. The
    thread is started by the first call and again after a ``close``.
    """

    def __init__(self, name: str, *, ahead: int) -> None:
        self._name = name
        self._ahead = ahead
        self._executor: ThreadPoolExecutor | None = None
        self._waiting: collections.deque[Future[None]] = collections.deque()

    def submit(self, function: Callable[..., None], *arguments: Any) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        self._waiting.append(self._executor.submit(function, *arguments))
        if len(self._waiting) > self._ahead:
            self._waiting.popleft().result()

    def drain(self) -> None:
        while self._waiting:
            self._waiting.popleft().result()

    def close(self) -> None:
        for future in self._waiting:
            future.cancel()
        self._waiting.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> InOrder:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()
