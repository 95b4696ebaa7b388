"""Factories for small, hand-made warehouses (real DuckDB, contract tables)."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable
from datetime import datetime
from datetime import timedelta as td

import duckdb
import pytest

from features.online import RedisOnlineStore, SQLiteOnlineStore
from recsys import warehouse
from recsys.contract import OFFER_TYPES

T0 = datetime(2024, 3, 1)


class Warehouse:
    """A real in-memory DuckDB warehouse with helpers to add contract rows."""

    def __init__(self, path: str = ":memory:", attributes: Iterable[str] = ("region",)):
        self.con: duckdb.DuckDBPyConnection = warehouse.connect(path)
        for attr in attributes:
            self.con.execute(f'ALTER TABLE customers ADD COLUMN IF NOT EXISTS "{attr}" VARCHAR')

    def customer(
        self,
        customer_id: str,
        created_at: datetime | None = None,
        email: bool | None = True,
        sms: bool | None = False,
        push: bool | None = None,
        **attrs: str,
    ) -> None:
        cols = ["customer_id", "created_at", "email_opt_in", "sms_opt_in", "push_opt_in", *attrs]
        vals = [customer_id, created_at, email, sms, push, *attrs.values()]
        self._insert("customers", cols, vals)

    def offer(
        self,
        offer_id: str,
        offer_type: str = "discount",
        category: str | None = "shoes",
        value: float = 1.0,
    ) -> None:
        self._insert(
            "offers",
            [
                "offer_id",
                "name",
                "offer_type",
                "category",
                "value",
                "touchpoints",
                "eligibility",
                "weight",
                "fallback",
            ],
            [offer_id, offer_id.title(), offer_type, category, value, [], "[]", 1.0, False],
        )

    def touchpoint(
        self, touchpoint_id: str, channel: str = "web", stage: str | None = "consideration"
    ) -> None:
        self._insert(
            "touchpoints",
            ["touchpoint_id", "channel", "stage", "slots", "mode"],
            [touchpoint_id, channel, stage, 1, "realtime"],
        )

    def purchase(
        self,
        customer_id: str,
        ts: datetime,
        amount: float,
        category: str | None = "shoes",
        channel: str | None = "web",
        quantity: int | None = None,
    ) -> None:
        self._insert(
            "transactions",
            ["customer_id", "ts", "amount", "category", "channel", "quantity"],
            [customer_id, ts, amount, category, channel, quantity],
        )

    def interaction(
        self,
        customer_id: str,
        ts: datetime,
        touchpoint_id: str,
        event_type: str = "page_view",
        value: float | None = None,
        category: str | None = None,
    ) -> None:
        self._insert(
            "interactions",
            ["customer_id", "ts", "touchpoint_id", "event_type", "value", "category"],
            [customer_id, ts, touchpoint_id, event_type, value, category],
        )

    def decision(
        self,
        decision_id: str,
        ts: datetime,
        touchpoint_id: str,
        offer_id: str,
        customer_id: str | None,
        position: int = 1,
        propensity: float = 0.5,
        policy: str = "random",
        context: dict | None = None,
    ) -> None:
        self._insert(
            "decisions",
            [
                "decision_id",
                "ts",
                "touchpoint_id",
                "offer_id",
                "customer_id",
                "position",
                "propensity",
                "policy",
                "context",
            ],
            [
                decision_id,
                ts,
                touchpoint_id,
                offer_id,
                customer_id,
                position,
                propensity,
                policy,
                None if context is None else json.dumps(context),
            ],
        )

    def outcome(
        self,
        decision_id: str,
        offer_id: str,
        ts: datetime,
        outcome: str,
        revenue: float | None = None,
    ) -> None:
        self._insert(
            "outcomes",
            ["decision_id", "offer_id", "ts", "outcome", "revenue"],
            [decision_id, offer_id, ts, outcome, revenue],
        )

    def _insert(self, table: str, cols: list[str], vals: list) -> None:
        names = ", ".join(f'"{c}"' for c in cols)
        marks = ", ".join("?" for _ in cols)
        self.con.execute(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', vals)


@pytest.fixture
def wh() -> Warehouse:
    w = Warehouse()
    yield w
    w.con.close()


def build_story(w: Warehouse) -> Warehouse:
    """Three customers with a small, hand-checkable history before T0 (and some after).

    c1: created 100 days before T0, region north; purchases 2 days (50, shoes, web) and 40 days
        (30, bags, store) before T0 and one AT T0 (999, must never count as of T0); a cart visit
        1 day before (a page view of shoes), NPS 9 five days before and NPS 4 three days before;
        shown o1 at web_home 10 days before, accepted 9 days before.
    c2: region south, no history at all (a cold start that is known to the warehouse).
    c3: one complaint on the call centre 20 days before T0, one purchase 400 days before
        (beyond the horizon).
    """
    from datetime import timedelta as td

    w.touchpoint("web_home")
    w.touchpoint("cart", stage="decision")
    w.touchpoint("email_w", channel="email", stage="awareness")
    w.touchpoint("call", channel="call_center", stage="service")
    w.offer("o1")
    w.offer("o2", offer_type="upsell", category="bags", value=3.0)
    w.customer("c1", created_at=T0 - td(days=100), region="north")
    w.customer("c2", region="south", email=None, sms=None)
    w.customer("c3", created_at=T0 - td(days=500), region="north", push=True)
    w.purchase("c1", T0 - td(days=2), 50.0)
    w.purchase("c1", T0 - td(days=40), 30.0, category="bags", channel="store")
    w.purchase("c1", T0, 999.0)
    w.interaction("c1", T0 - td(days=1), "cart", category="shoes")
    w.interaction("c1", T0 - td(days=5), "email_w", "nps", 9.0)
    w.interaction("c1", T0 - td(days=3), "email_w", "nps", 4.0)
    w.decision("d1", T0 - td(days=10), "web_home", "o1", "c1")
    w.outcome("d1", "o1", T0 - td(days=9), "accept", 10.0)
    w.interaction("c3", T0 - td(days=20), "call", "complaint")
    w.purchase("c3", T0 - td(days=400), 70.0)
    return w


def mixed_types_warehouse() -> Warehouse:
    """Customers with a random history over offers of every contract type, one type outside
    the contract (``legacy_coupon``, which a warehouse may still hold) and an offer missing
    from ``offers`` (no type); decisions at many times, repeated points, anonymous ones."""
    rng = random.Random(11)
    w = Warehouse()
    for tp in ("web_home", "cart", "app_feed"):
        w.touchpoint(tp)
    offers = [(f"o_{ot}_{i}", ot) for ot in (*OFFER_TYPES, "legacy_coupon") for i in (1, 2)]
    for offer_id, offer_type in offers:
        w.offer(offer_id, offer_type=offer_type, category=rng.choice(["shoes", "bags"]))
    offer_ids = [o for o, _ in offers] + ["o_missing"]
    customers = [f"c{i}" for i in range(8)]
    for c in customers:
        w.customer(c, created_at=T0 - td(days=600))
    for n in range(260):
        # whole and fractional seconds, up to beyond the horizon
        ts = T0 - td(days=rng.uniform(-20, 400), seconds=rng.choice([0, 0.25]))
        customer = rng.choice([*customers, None])
        slate = rng.sample(offer_ids, rng.randint(1, 3))
        for pos, offer_id in enumerate(slate, 1):
            w.decision(
                f"d{n}",
                ts,
                rng.choice(["web_home", "cart", "app_feed"]),
                offer_id,
                customer,
                position=pos,
            )
            for outcome in ("click", "accept", "convert", "dismiss"):
                if rng.random() < 0.3:
                    w.outcome(f"d{n}", offer_id, ts + td(days=rng.choice([0, 0.5, 3, 30])), outcome)
    return w


@pytest.fixture
def story(wh: Warehouse) -> Warehouse:
    return build_story(wh)


@pytest.fixture(scope="module")
def logged():
    """The story plus a slate at T0 for c1, an anonymous decision and a later c3 decision
    (after a view of bags and a cart add of shoes).

    Module-scoped: tests only read it.
    """
    story = build_story(Warehouse())
    story.decision(
        "d2",
        T0,
        "cart",
        "o2",
        "c1",
        position=1,
        context={"device": "mobile", "basket": 3, "member": True},
    )
    story.decision(
        "d2", T0, "cart", "o1", "c1", position=2, context={"device": "mobile", "basket": 3}
    )
    story.decision(
        "d3",
        T0 + td(hours=1),
        "web_home",
        "o1",
        None,
        context={"device": "desktop", "basket": 1.5, "seg": 7},
    )
    # the context names o2's category: x_context_category_match is 1 for this row only
    story.decision("d4", T0 + td(days=3), "call", "o2", "c3", context={"seg": "bags"})
    # category-tagged interactions after T0 (the story's features as of T0 stay as they are)
    story.interaction("c3", T0 + td(days=1), "web_home", "product_view", category="bags")
    story.interaction("c3", T0 + td(days=2), "cart", "add_to_cart", category="shoes")
    story.outcome("d2", "o2", T0 + td(days=1), "click")
    story.outcome("d2", "o2", T0 + td(days=2), "convert", 20.0)
    story.outcome("d2", "o1", T0 + td(days=7), "accept", 4.0)  # exactly at the window's end
    story.outcome("d3", "o1", T0 + td(days=8), "accept", 5.0)  # too late
    story.outcome("d4", "o2", T0 + td(days=3, minutes=5), "dismiss")
    yield story
    story.con.close()


@pytest.fixture(scope="module")
def training_frame(logged):
    from features.training_set import build_training_set

    return build_training_set(logged.con)


REDIS_URL = "redis://127.0.0.1:6379/13"  # tests never touch db 0


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.services)])
def store(request, tmp_path):
    """An empty online store: SQLite, and Redis on a fresh key prefix of a test db."""
    if request.param == "sqlite":
        s = SQLiteOnlineStore(tmp_path / "online.sqlite")
        yield s
        s.close()
    else:
        s = RedisOnlineStore(REDIS_URL, prefix=f"test:features:{uuid.uuid4().hex}")
        try:
            s.clear()
        except Exception as exc:  # pragma: no cover - the service is part of the test setup
            pytest.skip(f"Redis at {REDIS_URL} is not reachable: {exc}")
        yield s
        s.clear()
        s.close()


def reader_expecting(store, version: str):
    """Another reader of ``store``'s entries, one that expects feature spec ``version``."""
    if isinstance(store, SQLiteOnlineStore):
        return SQLiteOnlineStore(store.path, expected_version=version)
    return RedisOnlineStore(REDIS_URL, prefix=store.prefix, expected_version=version)
