"""Dynamic batching of decisions: concurrent HTTP requests share one pipeline run.

Every ``POST /v1/decisions`` of a process goes to one decision thread. While that thread
decides, newly arrived requests queue; it then takes them all (up to ``max_batch``) and
decides them in ONE :meth:`DecisionPipeline.run`: one feature lookup, one contact
history read, one model call and one event-log transaction for the lot. Under light load a
batch is a single request (by default nothing is delayed to fill a batch; ``wait_s`` trades
that latency for CPU); under heavy load the fixed costs are shared, which is where
throughput comes from.

The CPU work stays off the event loop (the loop only parses, queues and answers), and one
thread per process instead of a pool avoids threads fighting over the GIL and the event
log's write lock. A batch that fails is decided again one request at a time, so one bad
request never fails the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from recsys.decision import Decision, DecisionRequest

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32


@dataclass
class _Waiting:
    request: DecisionRequest
    trace: bool
    record: bool
    future: asyncio.Future[Decision]
    loop: asyncio.AbstractEventLoop


#: Decides (and records) requests: ``decide(requests, trace=..., record=...) -> decisions``
#: (in order).
Decide = Callable[..., list[Decision]]


class DecisionBatcher:
    """Decides queued requests on one thread, many per pipeline run (Ray Serve's
    ``@serve.batch`` contract: a single request is a batch of one).

    Parameters
    ----------
    decide : callable(requests, *, trace, record) -> list of Decision
        ``serving.components.Components.decide``.
    max_batch : int
        Most requests decided in one call.
    wait_s : float
        After a request arrives, wait up to this long for more (never past ``max_batch``)
        before deciding; 0 decides at once.
    """

    def __init__(self, decide: Decide, max_batch: int = DEFAULT_MAX_BATCH, wait_s: float = 0.0):
        if max_batch < 1:
            raise ValueError(f"`max_batch` must be >= 1, got {max_batch}")
        if wait_s < 0:
            raise ValueError(f"`wait_s` must be >= 0, got {wait_s}")
        self._decide_many = decide
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._queue: list[_Waiting] = []
        self._ready = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.decided = 0

    async def decide(
        self, request: DecisionRequest, *, trace: bool = False, record: bool = True
    ) -> Decision:
        """Queue ``request``; returns its decision (or raises what deciding it raised).

        ``record=False`` (a preview) decides it without logging it.
        """
        loop = asyncio.get_running_loop()
        waiting = _Waiting(request, trace, record, loop.create_future(), loop)
        with self._ready:
            if self._closed:
                raise RuntimeError("the decision batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="decisions", daemon=True)
                self._thread.start()
            self._queue.append(waiting)
            self._ready.notify()
        return await waiting.future

    def close(self) -> None:
        """Finish the queued requests, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=10)

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
                if self.wait_s:
                    deadline = time.monotonic() + self.wait_s
                    while len(self._queue) < self.max_batch and not self._closed:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._ready.wait(left)
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
            outcomes = self._decide(batch)
            self.batches += 1
            self.decided += len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
            for waiting, outcome in zip(batch, outcomes, strict=True):
                by_loop[waiting.loop].append((waiting.future, outcome))
            for loop, done in by_loop.items():
                # A closed loop has nobody waiting for these any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_resolve, done)

    def _decide(self, batch: list[_Waiting]) -> list[Decision | BaseException]:
        decide = self._decide_many
        groups: dict[tuple[bool, bool], list[int]] = defaultdict(list)
        for i, waiting in enumerate(batch):
            groups[waiting.trace, waiting.record].append(i)
        outcomes: list[Decision | BaseException] = [None] * len(batch)  # type: ignore[list-item]
        for (trace, record), positions in groups.items():
            requests = [batch[i].request for i in positions]
            try:
                decisions = decide(requests, trace=trace, record=record)
            except Exception as exc:
                if len(positions) == 1:
                    outcomes[positions[0]] = exc
                    continue
                # Find the request that failed: the others still get their decision.
                for i in positions:
                    try:
                        outcomes[i] = decide([batch[i].request], trace=trace, record=record)[0]
                    except Exception as single:
                        outcomes[i] = single
                continue
            for i, decision in zip(positions, decisions, strict=True):
                outcomes[i] = decision
        return outcomes


def _resolve(done: list[tuple[asyncio.Future[Decision], Decision | BaseException]]) -> None:
    for future, outcome in done:
        if future.cancelled():  # the client went away; the decision is logged all the same
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
