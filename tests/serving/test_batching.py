"""Dynamic batching: concurrent decisions share engine calls and stay each their own."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from recsys.decision import DecisionRequest
from recsys.eventlog import SQLiteEventLog
from recsys.settings import ServingSettings
from serving.batching import DecisionBatcher
from serving.main import create_app
from tests.serving.factories import make_components


def decide_with(log, **kwargs):
    """The service's decide function on small real parts."""
    return make_components(log, **kwargs).decide


class GatedEngine:
    """The service's decide function; its first call waits for a gate, so requests pile up
    behind it."""

    def __init__(self, decide, fail_for: str | None = None):
        self.decide = decide
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[list[str]] = []
        self.fail_for = fail_for

    def __call__(self, requests, *, trace=False, record=True):
        self.calls.append([r.customer_id for r in requests])
        if len(self.calls) == 1:
            self.entered.set()
            self.gate.wait(10)
        if any(r.customer_id == self.fail_for for r in requests):
            raise ValueError(f"cannot decide for {self.fail_for}")
        return self.decide(requests, trace=trace, record=record)


@pytest.fixture
def log(tmp_path):
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    yield log
    log.close()


async def _pile_up(batcher, gated, customers, trace_for=()):
    first = asyncio.create_task(batcher.decide(DecisionRequest("C-first", "web_home")))
    await asyncio.to_thread(gated.entered.wait, 10)
    rest = [
        asyncio.create_task(batcher.decide(DecisionRequest(c, "web_home"), trace=c in trace_for))
        for c in customers
    ]
    await asyncio.sleep(0.05)  # every request is queued behind the held first call
    gated.gate.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_queued_requests_are_decided_in_one_engine_call(log):
    gated = GatedEngine(decide_with(log))
    batcher = DecisionBatcher(gated, max_batch=32)
    customers = [f"C{i:03d}" for i in range(20)]
    results = asyncio.run(_pile_up(batcher, gated, customers))
    batcher.close()
    assert gated.calls == [["C-first"], customers]
    assert [d.customer_id for d in results] == ["C-first", *customers]
    assert len({d.decision_id for d in results}) == 21
    assert log.counts()["decision_rows"] == sum(len(d.offers) for d in results)


def test_batches_never_exceed_max_batch(log):
    gated = GatedEngine(decide_with(log))
    batcher = DecisionBatcher(gated, max_batch=8)
    customers = [f"C{i:03d}" for i in range(20)]
    asyncio.run(_pile_up(batcher, gated, customers))
    batcher.close()
    assert [len(c) for c in gated.calls] == [1, 8, 8, 4]


class RecordingEngine:
    """The service's decide function, recording the customers of each call."""

    def __init__(self, decide):
        self.decide = decide
        self.calls: list[list[str]] = []

    def __call__(self, requests, *, trace=False, record=True):
        self.calls.append([r.customer_id for r in requests])
        return self.decide(requests, trace=trace, record=record)


async def _arrive_apart(batcher, customers, gap_s):
    tasks = []
    for customer in customers:
        tasks.append(asyncio.create_task(batcher.decide(DecisionRequest(customer, "web_home"))))
        await asyncio.sleep(gap_s)
    return await asyncio.gather(*tasks)


def test_a_batch_wait_gathers_requests_that_arrive_apart(log):
    recording = RecordingEngine(decide_with(log))
    batcher = DecisionBatcher(recording, max_batch=32, wait_s=0.5)
    results = asyncio.run(_arrive_apart(batcher, ["C1", "C2", "C3"], gap_s=0.05))
    batcher.close()
    assert recording.calls == [["C1", "C2", "C3"]]
    assert [d.customer_id for d in results] == ["C1", "C2", "C3"]


def test_without_a_batch_wait_nothing_waits_for_company(log):
    recording = RecordingEngine(decide_with(log))
    batcher = DecisionBatcher(recording, max_batch=32)
    asyncio.run(_arrive_apart(batcher, ["C1", "C2", "C3"], gap_s=0.2))
    batcher.close()
    assert recording.calls == [["C1"], ["C2"], ["C3"]]


def test_a_full_batch_does_not_wait_out_the_batch_wait(log):
    recording = RecordingEngine(decide_with(log))
    batcher = DecisionBatcher(recording, max_batch=2, wait_s=30.0)

    async def four_at_once():
        return await asyncio.wait_for(
            asyncio.gather(
                *(batcher.decide(DecisionRequest(f"C{i}", "web_home")) for i in range(4))
            ),
            timeout=10,
        )

    asyncio.run(four_at_once())
    batcher.close()
    assert recording.calls == [["C0", "C1"], ["C2", "C3"]]


def test_a_negative_batch_wait_is_refused():
    with pytest.raises(ValueError, match="`wait_s` must be >= 0, got -1"):
        DecisionBatcher(lambda requests, trace=False: [], wait_s=-1)


def test_one_failing_request_does_not_fail_its_batch(log):
    gated = GatedEngine(decide_with(log), fail_for="C-bad")
    batcher = DecisionBatcher(gated)
    results = asyncio.run(_pile_up(batcher, gated, ["C1", "C-bad", "C2"]))
    batcher.close()
    assert [getattr(r, "customer_id", None) for r in results] == ["C-first", "C1", None, "C2"]
    assert isinstance(results[2], ValueError) and "C-bad" in str(results[2])


def test_trace_is_given_only_to_requests_that_asked(log):
    gated = GatedEngine(decide_with(log))
    batcher = DecisionBatcher(gated)
    results = asyncio.run(_pile_up(batcher, gated, ["C1", "C2", "C3"], trace_for={"C2"}))
    batcher.close()
    assert [r.trace is not None for r in results] == [False, False, True, False]


def test_batched_decisions_equal_one_at_a_time_decisions(tmp_path):
    """Same customers, same clock: batching changes nothing a customer sees."""
    alone_log = SQLiteEventLog(tmp_path / "alone.sqlite")
    batched_log = SQLiteEventLog(tmp_path / "batched.sqlite")
    customers = [f"C{i:03d}" for i in range(12)]
    decide_alone = decide_with(alone_log, epsilon=0.3)
    alone = [decide_alone([DecisionRequest(c, "web_home")])[0] for c in customers]
    gated = GatedEngine(decide_with(batched_log, epsilon=0.3))
    batcher = DecisionBatcher(gated)
    batched = asyncio.run(_pile_up(batcher, gated, customers))[1:]
    batcher.close()
    alone_log.close()
    batched_log.close()

    def slate(d):
        return [(o.offer_id, o.propensity, o.explored) for o in d.offers]

    assert [slate(d) for d in batched] == [slate(d) for d in alone]


def test_concurrent_http_decisions_are_all_answered_and_logged(tmp_path):
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    components = make_components(log)
    app = create_app(components=components)

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/decisions", json={"customer_id": f"C{i:03d}", "touchpoint": "web_home"}
                    )
                    for i in range(40)
                )
            )

    responses = asyncio.run(run())
    components.close()
    assert [r.status_code for r in responses] == [200] * 40
    bodies = [r.json() for r in responses]
    assert [b["customer_id"] for b in bodies] == [f"C{i:03d}" for i in range(40)]
    assert components.batcher.decided == 40
    reopened = SQLiteEventLog(tmp_path / "events.sqlite")
    logged = {row["decision_id"] for row in reopened.decision_rows()}
    reopened.close()
    assert logged == {b["decision_id"] for b in bodies}


def test_a_closed_batcher_refuses_new_requests(log):
    batcher = DecisionBatcher(decide_with(log))
    decision = asyncio.run(batcher.decide(DecisionRequest("C1", "web_home")))
    assert decision.customer_id == "C1"
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(batcher.decide(DecisionRequest("C2", "web_home")))


def test_runtime_tuning_sets_the_switch_interval_and_freezes_startup_objects():
    import gc
    import sys

    from serving.main import tune_runtime

    before = sys.getswitchinterval()
    try:
        tune_runtime(ServingSettings(switch_interval_ms=2.0, freeze_startup_objects=True))
        assert sys.getswitchinterval() == pytest.approx(0.002)
        assert gc.get_freeze_count() > 0  # start-up objects are out of every collection
        gc.unfreeze()
        tune_runtime(ServingSettings(switch_interval_ms=0.5, freeze_startup_objects=False))
        assert sys.getswitchinterval() == pytest.approx(0.0005)
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        sys.setswitchinterval(before)
