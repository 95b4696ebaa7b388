"""Eligibility and contact policy: windows, consent, rules, already accepted, caps."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from recsys.catalog import EligibilityRule
from recsys.decision import DecisionRequest
from recsys.eligibility import (
    CHECKS,
    Check,
    CheckOutcome,
    ContactHistory,
    EligibilityCheck,
    EligibilityInput,
    Removal,
    check_eligibility,
    rule_holds,
    rule_holds_many,
)
from recsys.errors import ConfigError
from recsys.eventlog import Event, EventType, SQLiteEventLog
from tests.recsys.factories import (
    CUSTOMERS,
    NOW,
    SPEC_VERSION,
    FixedClock,
    block_of,
    make_catalog,
    make_pipeline,
)

NOW_US = int(NOW.timestamp() * 1_000_000)
DAY_US = 86_400 * 1_000_000


def check(touchpoints_offers, customers, histories=None, excludes=None, checks=CHECKS):
    n = len(customers)
    block = block_of([f"c{i}" for i in range(n)], customers, [False] * n, SPEC_VERSION)
    inp = EligibilityInput(
        offers=touchpoints_offers,
        features=block,
        histories=histories or [ContactHistory()] * n,
        excludes=excludes or [()] * n,
        now_us=NOW_US,
    )
    return check_eligibility(inp, checks)


def check_one(touchpoint, customer, history=None, exclude=()):
    offers = make_catalog().for_touchpoint(touchpoint)
    return offers, check(offers, [customer], [history or ContactHistory()], [tuple(exclude)])


def eligible_ids(
    touchpoint: str, customer: dict, history: ContactHistory | None = None, exclude=()
) -> set[str]:
    offers, result = check_one(touchpoint, customer, history, exclude)
    return set(offers.offer_ids[result.mask[0]])


def decide(pipeline, request, **kwargs):
    (decision,) = pipeline.run([request], **kwargs).decisions()
    return decision


def test_date_window_removes_expired_and_future_offers():
    ids = eligible_ids("web_home", CUSTOMERS["c1"])
    assert "o_expired" not in ids and "o_future" not in ids
    assert "o_tv" in ids


def test_touchpoint_list_limits_where_an_offer_is_shown():
    assert "o_sofa" in eligible_ids("web_home", CUSTOMERS["c3"])
    assert "o_sofa" not in eligible_ids("app_home", CUSTOMERS["c3"])


def test_no_email_offers_without_email_consent():
    assert eligible_ids("email_weekly", CUSTOMERS["c2"]) == set()
    assert eligible_ids("email_weekly", {**CUSTOMERS["c2"], "email_opt_in": None}) == set()
    assert eligible_ids("email_weekly", CUSTOMERS["c1"])
    # consent is per channel: the same customer still gets web offers
    assert eligible_ids("web_home", CUSTOMERS["c2"])


@pytest.mark.parametrize(
    ("rule", "customer", "holds"),
    [
        (EligibilityRule("tier", "==", "gold"), {"tier": "gold"}, True),
        (EligibilityRule("tier", "!=", "gold"), {"tier": "gold"}, False),
        (EligibilityRule("spend", "<", 10), {"spend": 9.5}, True),
        (EligibilityRule("spend", "<=", 10), {"spend": 10}, True),
        (EligibilityRule("spend", ">", 10), {"spend": 10}, False),
        (EligibilityRule("spend", ">=", 10), {"spend": 10}, True),
        (EligibilityRule("tier", "in", ["gold", "silver"]), {"tier": "silver"}, True),
        (EligibilityRule("tier", "not_in", ["gold"]), {"tier": "basic"}, True),
        (EligibilityRule("tier", "not_in", ["gold"]), {}, False),  # unknown never qualifies
        (EligibilityRule("spend", ">", 10), {"spend": float("nan")}, False),
        (EligibilityRule("spend", ">", 10), {"spend": "lots"}, False),  # type clash excludes
    ],
)
def test_rule_operators(rule, customer, holds):
    value = customer.get(rule.feature)
    assert rule_holds(rule, value) is holds
    assert rule_holds_many(rule, np.array([value, value], dtype=object)).tolist() == [holds] * 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"feature": "x", "op": "~=", "value": 1}, "`op` must be one of"),
        ({"feature": "", "op": "==", "value": 1}, "`feature` must be a non-empty string"),
        ({"feature": "x", "op": "in", "value": "gold"}, "must be a list, got 'gold'"),
    ],
)
def test_bad_rules_are_refused_with_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        EligibilityRule(**kwargs)


def test_rules_on_customer_features_and_the_removal_names_the_rule():
    _, result = check_one("web_home", CUSTOMERS["c2"])
    removed = {r.detail: r.offer_ids for r in result.removals(0) if r.check is Check.RULE}
    assert removed == {
        "loyalty_tier in ('gold', 'platinum')": ("o_gold",),
        "spend_90d >= 500": ("o_big_spender",),
    }
    assert {"o_gold", "o_big_spender"} <= eligible_ids("web_home", CUSTOMERS["c1"])


def test_already_accepted_and_excluded_offers_are_removed():
    history = ContactHistory(accepted=frozenset({"o_tv"}))
    ids = eligible_ids("web_home", CUSTOMERS["c1"], history, exclude=("o_dress",))
    assert "o_tv" not in ids and "o_dress" not in ids and "o_sofa" in ids


def test_a_repeatable_offer_is_offered_again_after_an_acceptance():
    from tests.recsys.factories import OFFERS

    offers = [dict(o, repeatable=True) if o["offer_id"] == "o_tv" else o for o in OFFERS]
    touchpoint = make_catalog(offers).for_touchpoint("web_home")
    history = ContactHistory(accepted=frozenset({"o_tv", "o_sofa"}))
    result = check(touchpoint, [CUSTOMERS["c1"]], [history], [()])
    eligible = set(touchpoint.offer_ids[result.mask[0]])
    assert "o_tv" in eligible and "o_sofa" not in eligible  # only the repeatable one comes back


def test_cap_counts_contacts_inside_the_window_only():
    old = NOW_US - 8 * DAY_US
    recent = NOW_US - 1 * DAY_US
    history = ContactHistory(contacts={"o_capped": np.array([old, old, recent])})
    assert "o_capped" in eligible_ids("web_home", CUSTOMERS["c1"], history)
    history = ContactHistory(contacts={"o_capped": np.array([old, recent, recent])})
    offers, result = check_one("web_home", CUSTOMERS["c1"], history)
    assert "o_capped" not in set(offers.offer_ids[result.mask[0]])
    (hit,) = result.caps_hit(0)
    assert (hit.offer_id, hit.cap_per_customer, hit.cap_window_days, hit.contacts) == (
        "o_capped",
        2,
        7,
        2,
    )


def test_capped_offer_is_not_served_a_third_time_across_channels(tmp_path):
    """cap 2 per 7 days: served on web, then app -> not on email, minutes later."""
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    clock = FixedClock()
    pipeline = make_pipeline(log, clock=clock)
    served = []
    for touchpoint in ("web_home", "app_home", "email_weekly"):
        decision = decide(pipeline, DecisionRequest("c1", touchpoint, limit=3), trace=True)
        served.append([o.offer_id for o in decision.offers])
        clock.now += timedelta(seconds=30)
    assert "o_capped" in served[0] and "o_capped" in served[1]
    assert "o_capped" not in served[2]
    why = decision.trace.why_not("o_capped")
    assert [r.check for r in why] == [Check.CAP]
    # a week later the cap window has passed
    clock.now += timedelta(days=7, minutes=1)
    again = decide(pipeline, DecisionRequest("c1", "email_weekly", limit=3))
    assert "o_capped" in [o.offer_id for o in again.offers]


def test_accept_event_stops_the_offer_everywhere(tmp_path):
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    pipeline = make_pipeline(log)
    first = decide(pipeline, DecisionRequest("c3", "web_home", limit=2))
    taken = first.offers[0].offer_id
    result = log.record_events(
        [Event("e1", first.decision_id, taken, EventType.ACCEPT, NOW + timedelta(minutes=1))]
    )
    assert result.new == ("e1",)
    later = decide(pipeline, DecisionRequest("c3", "email_weekly", limit=5), trace=True)
    assert taken not in [o.offer_id for o in later.offers]
    assert [r.check for r in later.trace.why_not(taken)] == [Check.ALREADY_ACCEPTED]


class StaleOnce:
    """A history read that misses the latest contacts once (a concurrent worker's view)."""

    def __init__(self, log):
        self.log = log
        self.stale = True

    def contact_history(self, customer_ids, since):
        if self.stale:
            self.stale = False
            return {}
        return self.log.contact_history(customer_ids, since)


def test_a_decision_that_lost_the_race_for_a_cap_is_decided_again(tmp_path):
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    clock = FixedClock()
    first = make_pipeline(log, clock=clock)
    for touchpoint in ("web_home", "app_home"):
        served = decide(first, DecisionRequest("c1", touchpoint, limit=3))
        assert "o_capped" in [o.offer_id for o in served.offers]
    # another worker decided from a history read before those two contacts were committed
    racer = make_pipeline(log, clock=clock)
    racer.history = StaleOnce(log)
    decision = decide(racer, DecisionRequest("c1", "email_weekly", limit=3), trace=True)
    assert "o_capped" not in [o.offer_id for o in decision.offers]
    assert [r.check for r in decision.trace.why_not("o_capped")] == [Check.CAP]
    contacts = log.contact_history(["c1"], NOW - timedelta(days=7))["c1"].contacts
    assert len(contacts["o_capped"]) == 2
    # the stored decision is the one returned
    rows = [r for r in log.decision_rows() if r["decision_id"] == decision.decision_id]
    assert [r["offer_id"] for r in rows] == [o.offer_id for o in decision.offers]


def test_a_history_that_stays_stale_still_never_breaks_a_cap(tmp_path):
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    first = make_pipeline(log)
    for touchpoint in ("web_home", "app_home"):
        decide(first, DecisionRequest("c1", touchpoint, limit=3))
    blind = make_pipeline(log)
    blind.history = type("Blind", (), {"contact_history": lambda self, ids, since: {}})()
    decision = decide(blind, DecisionRequest("c1", "email_weekly", limit=3))
    assert decision.offers and "o_capped" not in [o.offer_id for o in decision.offers]
    contacts = log.contact_history(["c1"], NOW - timedelta(days=7))["c1"].contacts
    assert len(contacts["o_capped"]) == 2


# --------------------------------------------------------------------------- many customers

ODD_CUSTOMERS = [
    {},  # nothing known
    {"email_opt_in": "yes", "loyalty_tier": "platinum", "spend_90d": 500},
    {"email_opt_in": 1, "loyalty_tier": "gold", "spend_90d": 499.999},
    {"email_opt_in": float("nan"), "spend_90d": float("nan")},
    {"email_opt_in": True, "spend_90d": "lots", "loyalty_tier": ["gold"]},  # unhashable
    {"email_opt_in": True, "spend_90d": 2**60, "loyalty_tier": 3},  # beyond float precision
    {"email_opt_in": True, "spend_90d": True},
]


@pytest.mark.parametrize("touchpoint", ["web_home", "app_home", "email_weekly"])
def test_many_customers_get_the_masks_each_gets_alone(touchpoint):
    offers = make_catalog().for_touchpoint(touchpoint)
    customers = [*CUSTOMERS.values(), *ODD_CUSTOMERS] * 3
    histories = [ContactHistory()] * len(customers)
    histories[0] = ContactHistory(accepted=frozenset({"o_tv", "unknown"}))
    histories[1] = ContactHistory(
        contacts={"o_capped": np.array([NOW_US - DAY_US, NOW_US]), "o_tv": np.array([NOW_US])}
    )
    histories[2] = ContactHistory(contacts={"o_capped": np.array([NOW_US - 8 * DAY_US] * 3)})
    excludes = [()] * len(customers)
    excludes[3] = ("o_dress", "not-a-candidate")
    batch = check(offers, customers, histories, excludes)
    assert batch.mask.shape == (len(customers), len(offers.offers))
    for i, customer in enumerate(customers):
        alone = check(offers, [customer], [histories[i]], [excludes[i]])
        assert batch.mask[i].tolist() == alone.mask[0].tolist(), (i, customer)
        assert bool(batch.allows_fallback[i]) == bool(alone.allows_fallback[0])
        assert batch.removals(i) == alone.removals(0)


@pytest.mark.parametrize(
    "spends",
    [
        [499, 500, 500.0, -0.0, float("inf"), float("nan"), True, 2**53],
        [499, 500, 1e300, 2**53 + 1],
    ],
)
def test_numeric_rules_on_a_column_compare_like_python(spends):
    offers = make_catalog().for_touchpoint("web_home")
    customers = [{"spend_90d": s, "loyalty_tier": "gold"} for s in spends]
    batch = check(offers, customers)
    big = offers.index["o_big_spender"]
    assert batch.mask[:, big].tolist() == [s >= 500 for s in spends]  # NaN: False


class VipOnly(EligibilityCheck):
    """A plug-in check: offers named ``vip_*`` only for customers with ``vip`` true."""

    name = "vip_only"  # type: ignore[assignment]

    def run(self, inp: EligibilityInput) -> CheckOutcome:
        n = len(inp.features)
        vip = np.array([v is True or v == 1 for v in inp.features.column("vip").tolist()])
        vip_offer = np.array([o.startswith("o_gold") for o in inp.offers.offer_ids.tolist()])
        mask = ~vip_offer[None, :] | vip[:, None]
        ids = inp.offers.offer_ids

        def explain(i: int) -> tuple[Removal, ...]:
            gone = ~mask[i]
            return (Removal(self.name, tuple(ids[gone]), "not a VIP"),) if gone.any() else ()

        return CheckOutcome(mask, np.ones(n, dtype=bool), explain=explain)


def test_a_check_added_as_a_plug_in_masks_offers_and_explains_itself():
    checks = (*CHECKS, VipOnly())
    gold = {**CUSTOMERS["c1"], "vip": 0}
    vip = {**CUSTOMERS["c1"], "vip": 1}
    pipeline = make_pipeline(None)
    pipeline.checks = checks
    pipeline.features.vectors.update({"gold": gold, "vip": vip})
    (for_gold, for_vip) = pipeline.run(
        [DecisionRequest("gold", "web_home", limit=9), DecisionRequest("vip", "web_home", limit=9)],
        trace=True,
    ).decisions()
    assert "o_gold" not in [o.offer_id for o in for_gold.offers]
    assert "o_gold" in [o.offer_id for o in for_vip.offers]
    (why,) = for_gold.trace.why_not("o_gold")
    assert (why.check, why.detail) == ("vip_only", "not a VIP")
