"""Eligibility and contact policy: windows, consent, rules, already accepted, caps."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from recsys.catalog import EligibilityRule
from recsys.decision import DecisionRequest
from recsys.eligibility import Check, ContactHistory, check_eligibility, check_eligibility_many
from recsys.errors import ConfigError
from recsys.eventlog import Event, EventType, SQLiteEventLog
from tests.serving.factories import CUSTOMERS, NOW, FixedClock, make_catalog, make_engine

NOW_US = int(NOW.timestamp() * 1_000_000)
DAY_US = 86_400 * 1_000_000


def eligible_ids(
    touchpoint: str, customer: dict, history: ContactHistory | None = None, exclude=()
) -> set[str]:
    offers = make_catalog().for_touchpoint(touchpoint)
    result = check_eligibility(offers, customer, history or ContactHistory(), NOW_US, exclude)
    return set(offers.offer_ids[result.mask])


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
    assert rule.holds(customer) is holds


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
    offers = make_catalog().for_touchpoint("web_home")
    result = check_eligibility(offers, CUSTOMERS["c2"], ContactHistory(), NOW_US)
    removed = {r.detail: r.offer_ids for r in result.removals if r.check is Check.RULE}
    assert removed == {
        "loyalty_tier in ('gold', 'platinum')": ("o_gold",),
        "spend_90d >= 500": ("o_big_spender",),
    }
    assert {"o_gold", "o_big_spender"} <= eligible_ids("web_home", CUSTOMERS["c1"])


def test_already_accepted_and_excluded_offers_are_removed():
    history = ContactHistory(accepted=frozenset({"o_tv"}))
    ids = eligible_ids("web_home", CUSTOMERS["c1"], history, exclude=("o_dress",))
    assert "o_tv" not in ids and "o_dress" not in ids and "o_sofa" in ids


def test_cap_counts_contacts_inside_the_window_only():
    old = NOW_US - 8 * DAY_US
    recent = NOW_US - 1 * DAY_US
    history = ContactHistory(contacts={"o_capped": np.array([old, old, recent])})
    assert "o_capped" in eligible_ids("web_home", CUSTOMERS["c1"], history)
    history = ContactHistory(contacts={"o_capped": np.array([old, recent, recent])})
    offers = make_catalog().for_touchpoint("web_home")
    result = check_eligibility(offers, CUSTOMERS["c1"], history, NOW_US)
    assert "o_capped" not in set(offers.offer_ids[result.mask])
    (hit,) = result.caps_hit
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
    engine = make_engine(log, clock=clock)
    served = []
    for touchpoint in ("web_home", "app_home", "email_weekly"):
        decision = engine.decide(DecisionRequest("c1", touchpoint, limit=3), trace=True)
        served.append([o.offer_id for o in decision.offers])
        clock.now += timedelta(seconds=30)
    assert "o_capped" in served[0] and "o_capped" in served[1]
    assert "o_capped" not in served[2]
    why = decision.trace.why_not("o_capped")
    assert [r.check for r in why] == [Check.CAP]
    # a week later the cap window has passed
    clock.now += timedelta(days=7, minutes=1)
    again = engine.decide(DecisionRequest("c1", "email_weekly", limit=3))
    assert "o_capped" in [o.offer_id for o in again.offers]


def test_accept_event_stops_the_offer_everywhere(tmp_path):
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    engine = make_engine(log)
    first = engine.decide(DecisionRequest("c3", "web_home", limit=2))
    taken = first.offers[0].offer_id
    result = log.record_events(
        [Event("e1", first.decision_id, taken, EventType.ACCEPT, NOW + timedelta(minutes=1))]
    )
    assert result.new == ("e1",)
    later = engine.decide(DecisionRequest("c3", "email_weekly", limit=5), trace=True)
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
    first = make_engine(log, clock=clock)
    for touchpoint in ("web_home", "app_home"):
        served = first.decide(DecisionRequest("c1", touchpoint, limit=3))
        assert "o_capped" in [o.offer_id for o in served.offers]
    # another worker decided from a history read before those two contacts were committed
    racer = make_engine(log, clock=clock)
    racer.history = StaleOnce(log)
    decision = racer.decide(DecisionRequest("c1", "email_weekly", limit=3), trace=True)
    assert "o_capped" not in [o.offer_id for o in decision.offers]
    assert [r.check for r in decision.trace.why_not("o_capped")] == [Check.CAP]
    contacts = log.contact_history(["c1"], NOW - timedelta(days=7))["c1"].contacts
    assert len(contacts["o_capped"]) == 2
    # the stored decision is the one returned
    rows = [r for r in log.decision_rows() if r["decision_id"] == decision.decision_id]
    assert [r["offer_id"] for r in rows] == [o.offer_id for o in decision.offers]


def test_a_history_that_stays_stale_still_never_breaks_a_cap(tmp_path):
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    first = make_engine(log)
    for touchpoint in ("web_home", "app_home"):
        first.decide(DecisionRequest("c1", touchpoint, limit=3))
    blind = make_engine(log)
    blind.history = type("Blind", (), {"contact_history": lambda self, ids, since: {}})()
    decision = blind.decide(DecisionRequest("c1", "email_weekly", limit=3))
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
    batch = check_eligibility_many(offers, customers, histories, NOW_US, excludes)
    assert batch.mask.shape == (len(customers), len(offers.offers))
    for i, customer in enumerate(customers):
        alone = check_eligibility(offers, customer, histories[i], NOW_US, excludes[i])
        assert batch.mask[i].tolist() == alone.mask.tolist(), (i, customer)
        assert bool(batch.consent[i]) == alone.consent


@pytest.mark.parametrize(
    "spends",
    [
        [499, 500, 500.0, -0.0, float("inf"), float("nan"), True, 2**53],  # one numpy compare
        [499, 500, 1e300, 2**53 + 1],  # beyond float64's exact integers: value by value
    ],
)
def test_numeric_rules_on_a_column_compare_like_python(spends):
    offers = make_catalog().for_touchpoint("web_home")
    customers = [{"spend_90d": s, "loyalty_tier": "gold"} for s in spends]
    batch = check_eligibility_many(
        offers, customers, [ContactHistory()] * len(spends), NOW_US, [()] * len(spends)
    )
    big = offers.index["o_big_spender"]
    assert batch.mask[:, big].tolist() == [s >= 500 for s in spends]  # NaN: False


def test_many_customers_need_one_history_and_exclude_each():
    offers = make_catalog().for_touchpoint("web_home")
    with pytest.raises(ValueError, match=r"one entry per customer \(2\), got 1 and 2"):
        check_eligibility_many(offers, [{}, {}], [ContactHistory()], NOW_US, [(), ()])


def test_recorded_chunks_of_a_batch_count_each_others_contacts(tmp_path):
    """``decide_tables`` overlaps chunks, yet a customer's contacts logged by one chunk
    cap the next chunks (cap 2 per 7 days: served twice, not a third time)."""
    log = SQLiteEventLog(tmp_path / "events.sqlite")
    engine = make_engine(log)
    chunks = [
        [DecisionRequest("c1", "web_home", limit=3), DecisionRequest("c3", "web_home", limit=3)],
        [DecisionRequest("c1", "app_home", limit=3)],
        [DecisionRequest("c3", "app_home", limit=3)],
        [DecisionRequest("c1", "email_weekly", limit=3)],
    ]
    tables = list(engine.decide_tables(iter(chunks), now=NOW))
    served = [t.offer_id[t.row_decision == 0].tolist() for t in tables]
    assert "o_capped" in served[0] and "o_capped" in served[1]
    assert "o_capped" not in served[3]
    logged = [r for r in log.decision_rows() if r["customer_id"] == "c1"]
    assert sum(r["offer_id"] == "o_capped" for r in logged) == 2
    log.close()
