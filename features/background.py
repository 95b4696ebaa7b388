"""Iterate in a background thread: the producer runs ahead of the consumer by a few items."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Generator, Iterator
from queue import Empty, Full, Queue
from typing import Any


def in_background(items: Iterator[Any], depth: int = 2) -> Background:
    """Iterate ``items`` in a background thread, ``depth`` items ahead: the engine computes
    the next batches while the caller writes the previous ones. The thread starts at once, so
    the caller can prepare (e.g. drop an old table) while the first items are computed;
    ``close()`` the result if it may not be read to the end."""
    return Background(items, depth)


class Background:
    """The iterator :func:`in_background` returns."""

    def __init__(self, items: Iterator[Any], depth: int):
        self._queue: Queue[tuple[bool, Any]] = Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        # The thread holds the queue, the event and the items, not this object: dropping the
        # last reference to it closes it (``__del__``).
        self._worker = threading.Thread(
            target=_produce,
            args=(items, self._queue, self._stop),
            name="feature-batches",
            daemon=True,
        )
        self._worker.start()

    def __iter__(self) -> Background:
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        ok, item = self._queue.get()
        if ok:
            return item
        self.close()
        if item is not None:
            raise item
        raise StopIteration

    def close(self) -> None:
        """Stop the producer (released if blocked on a full queue) and wait for it; the
        iterator it ran is closed in its thread, so its clean-up has run on return."""
        self._finished = True
        self._stop.set()
        while self._worker.is_alive():
            with contextlib.suppress(Empty):
                self._queue.get(timeout=0.1)
        self._worker.join()

    def __del__(self) -> None:
        self.close()


def _produce(items: Iterator[Any], queue: Queue[tuple[bool, Any]], stop: threading.Event) -> None:
    try:
        for item in items:
            while not stop.is_set():
                try:
                    queue.put((True, item), timeout=0.1)
                    break
                except Full:
                    continue
            if stop.is_set():
                break
        else:
            queue.put((False, None))
    except BaseException as exc:  # handed to the consumer
        queue.put((False, exc))
    finally:
        # A consumer that stopped early: close a generator here, in the thread that ran it,
        # so its own clean-up (temporary tables) runs now.
        if isinstance(items, Generator):
            items.close()
