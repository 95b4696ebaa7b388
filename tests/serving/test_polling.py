"""The pollers that follow the model registry, the experiment store and the warehouse's
catalogue survive a failing tick and stop when told."""

from __future__ import annotations

import threading

from serving.polling import Poller


def test_a_failing_tick_is_reported_and_the_next_tick_runs():
    calls: list[int] = []
    errors: list[str] = []
    third = threading.Event()

    def refresh() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("store unreadable")
        if len(calls) >= 3:
            third.set()

    poller = Poller("test-poller", refresh, lambda exc: errors.append(str(exc)))
    poller.start(0.01)
    assert third.wait(5)
    poller.stop()
    assert errors == ["store unreadable"]
    assert not poller.running
    after_stop = len(calls)
    threading.Event().wait(0.05)
    assert len(calls) == after_stop


def test_no_thread_without_an_interval():
    poller = Poller("test-poller", lambda: None, lambda exc: None)
    poller.start(0)
    assert not poller.running
