"""The in-order worker behind every hashing and writing thread: order, bound, errors, and nothing after close."""

from __future__ import annotations

import threading

import pytest

from backup.inorder import InOrder


def test_calls_run_in_the_order_given_and_drain_waits_for_all() -> None:
    done: list[int] = []
    with InOrder("test", ahead=3) as work:
        for number in range(200):
            work.submit(done.append, number)
        work.drain()
        assert done == list(range(200))


def test_submit_waits_once_more_than_ahead_calls_are_waiting() -> None:
    release = threading.Event()
    started: list[int] = []

    def blocked(number: int) -> None:
        started.append(number)
        release.wait()

    with InOrder("test", ahead=2) as work:
        for number in range(2):  # two not done yet: neither submit waits
            work.submit(blocked, number)
        waiter = threading.Thread(target=work.submit, args=(blocked, 2))
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive(), "a third call must wait while two are not done"
        release.set()
        waiter.join()
        work.drain()
    assert started == [0, 1, 2]


def test_an_error_on_the_thread_is_raised_in_the_caller() -> None:
    def fails() -> None:
        raise OSError(28, "No space left on device")

    with InOrder("test", ahead=1) as work:
        work.submit(fails)
        with pytest.raises(OSError, match="No space"):
            work.submit(lambda: None)
            work.submit(lambda: None)
            work.drain()


def test_close_cancels_what_has_not_started_and_nothing_runs_after_it() -> None:
    release = threading.Event()
    ran: list[int] = []

    def first() -> None:
        release.wait()
        ran.append(0)

    work = InOrder("test", ahead=10)
    work.submit(first)
    for number in range(1, 6):
        work.submit(ran.append, number)

    def release_once_cancelled() -> None:
        while work._waiting:  # close empties it right after cancelling the queued calls
            pass
        release.set()

    releaser = threading.Thread(target=release_once_cancelled)
    releaser.start()
    work.close()  # returns only when the running call is done
    releaser.join()
    assert ran == [0], "the call running at close finishes; the queued ones never start"
    work.submit(ran.append, 99)  # usable again after close
    work.drain()
    work.close()
    assert ran == [0, 99]
