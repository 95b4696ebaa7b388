"""Day-by-day simulation of one block of customers, vectorised over the block.

Each day: purchases, service events (complaints, tickets), browsing, realtime visits and
batch campaigns. Decisions of a day are processed in rounds (a customer's first decision
of the day, then the second, ...) so fatigue and caps see every earlier impression.
The acceptance model (logit scale) is::

    logit = base[offer] + responsiveness + c_sat * satisfaction
          + c_aff[type] * log(n_categories * taste[category] + 0.1)
          + c_price[type] * (2 * price_sensitivity - 1) + c_tier * tier [loyalty offers]
          + c_chan * log(n_channels * habit[channel of touchpoint] + 0.2)
          + stage_type[stage of touchpoint, type] + c_ctx * [category == page_category]
          - c_fat_offer * fatigue[offer] - c_fat_type * fatigue[type]
          + complaint_effect * (c_service if type == service else c_complaint)

``p_true = sigmoid(logit)``; a shown offer is accepted with ``p_true x position_bias``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from recsys.datagen.catalog import (
    CATEGORIES,
    CATEGORY_BASE_PRICE,
    ELIGIBILITY_FEATURES,
    HABIT_CHANNELS,
    OFFER_TYPES,
    SERVICE_TOUCHPOINTS,
    Catalog,
)
from recsys.datagen.policy import epsilon_greedy_slates
from recsys.datagen.population import DAY, Population

N_CAT = len(CATEGORIES)
N_CH = len(HABIT_CHANNELS)
TYPE = {name: i for i, name in enumerate(OFFER_TYPES)}
DEVICES = ("desktop", "mobile", "tablet")  # code 3 = no device in the context
TRANSACTION_CHANNELS = ("web", "app", "store", "call_center")
PRODUCTS_PER_CATEGORY = 40

# Interaction event types (codes into this tuple).
EVENT_TYPES = (
    "page_view",
    "product_view",
    "app_open",
    "chat",
    "call",
    "store_visit",
    "email_open",
    "complaint",
    "support_ticket",
    "nps_answer",
    "review",
)
EV = {name: i for i, name in enumerate(EVENT_TYPES)}
OUTCOME_NAMES = ("click", "accept", "convert", "dismiss")
NEVER = -(10**12)  # "no complaint yet", epoch seconds


def _stage_type_default() -> tuple[tuple[float, ...], ...]:
    # rows: STAGES; columns: OFFER_TYPES (discount, cross_sell, upsell, loyalty, service, content)
    return (
        (0.3, -0.3, -0.2, 0.0, -0.6, 0.4),  # awareness
        (0.2, 0.1, 0.3, 0.0, -0.5, 0.3),  # consideration
        (0.4, 0.4, 0.2, 0.1, -0.3, -0.3),  # decision
        (-0.1, 0.5, 0.0, 0.4, 0.2, 0.1),  # post_purchase
        (-0.4, -0.4, -0.4, 0.1, 0.9, 0.0),  # service
    )


@dataclass(frozen=True)
class SimParams:
    """Every knob of the simulation; written to ``ground_truth/params.json``."""

    epsilon: float = 0.3
    position_bias: tuple[float, ...] = (1.0, 0.75, 0.55)
    max_decisions_per_day: int = 4
    # behaviour rates (per customer-day, times the customer's activity)
    transaction_rate: float = 0.09
    browse_rate: float = 0.15
    visit_rate: float = 0.11
    newsletter_every_days: int = 7
    newsletter_share: float = 0.3
    sms_every_days: int = 14
    sms_share: float = 0.4
    post_purchase_email_prob: float = 0.6
    nps_survey_prob: float = 0.25
    nps_answer_prob: float = 0.4
    complaint_rate: float = 0.0015
    ticket_rate: float = 0.003
    review_prob: float = 0.05
    complaint_purchase_drop: float = 0.6
    complaint_service_visit_boost: float = 4.0
    complaint_decay_days: float = 10.0
    fatigue_half_life_days: float = 7.0
    # acceptance model
    affinity_coef: tuple[float, ...] = (0.7, 0.8, 0.7, 0.5, 0.2, 0.6)  # per OFFER_TYPES
    price_coef: tuple[float, ...] = (1.2, 0.2, -1.2, 0.3, 0.0, -0.3)  # per OFFER_TYPES
    satisfaction_coef: float = 0.25
    tier_coef: float = 0.3
    channel_coef: float = 0.35
    context_coef: float = 0.6
    fatigue_offer_coef: float = 0.5
    fatigue_type_coef: float = 0.15
    complaint_coef: float = -1.2
    complaint_service_coef: float = 1.5
    stage_type: tuple[tuple[float, ...], ...] = field(default_factory=_stage_type_default)
    p_clip: tuple[float, float] = (1e-4, 0.95)
    # outcomes
    click_before_accept_prob: float = 0.85
    stray_click_prob: float = 0.04
    dismiss_prob_realtime: float = 0.12
    dismiss_prob_batch: float = 0.03
    late_accept_prob_realtime: float = 0.1
    convert_prob: tuple[float, ...] = (0.6, 0.5, 0.5, 0.4, 0.0, 0.0)  # per OFFER_TYPES
    revenue_factor: tuple[float, ...] = (0.9, 0.6, 1.8, 0.7, 0.0, 0.0)  # per OFFER_TYPES


@dataclass
class BlockOutput:
    """Column arrays of one block, ready for the writers (codes index the name tuples)."""

    transactions: dict[str, np.ndarray]
    interactions: dict[str, np.ndarray]
    decisions: dict[str, np.ndarray]
    outcomes: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]
    n_decisions: int


class _Acc:
    """Append-only column accumulator."""

    def __init__(self, *names: str):
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in names}

    def add(self, **cols: np.ndarray) -> None:
        for name, values in cols.items():
            self.parts[name].append(np.asarray(values))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.parts.items()}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw_categories(cum_taste: np.ndarray, rng: np.random.Generator, noise: float = 0.0):
    """One category per row of ``cum_taste`` (m, n_cat) cumulative shares -> (m,) codes."""
    u = rng.random(len(cum_taste))
    cat = np.minimum((cum_taste < u[:, None]).sum(axis=1), N_CAT - 1)
    if noise > 0:
        mix = rng.random(len(cum_taste)) < noise
        cat = np.where(mix, rng.integers(0, N_CAT, size=len(cum_taste)), cat)
    return cat


def _pick_rows(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Index drawn per row in proportion to ``weights`` (m, k) -> (m,)."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), weights.shape[1] - 1)


def _seconds_in_day(rng: np.random.Generator, m: int) -> np.ndarray:
    """Time of day, more activity in the afternoon/evening; (m,) int seconds."""
    hours = np.clip(rng.normal(15.0, 4.5, size=m), 0.0, 23.999)
    return (hours * 3600).astype(np.int64)


class _Eligibility:
    """Compiled eligibility rules of the catalogue (see docs/demo-data.md for features)."""

    _OPS: ClassVar[dict[str, np.ufunc]] = {
        "==": np.equal,
        "!=": np.not_equal,
        "<": np.less,
        "<=": np.less_equal,
        ">": np.greater,
        ">=": np.greater_equal,
    }

    def __init__(self, catalog: Catalog):
        self.rules: list[tuple[int, str, str, ArrayLike]] = []
        for j, offer in enumerate(catalog.offers):
            for rule in offer.eligibility:
                kind = ELIGIBILITY_FEATURES[rule.feature]
                value = rule.value
                if isinstance(kind, tuple):  # categorical: compare codes
                    if rule.op not in ("==", "!=", "in", "not_in"):
                        raise ValueError(
                            f"`op` of a rule on {rule.feature!r} must be ==, !=, in or not_in, "
                            f"got {rule.op!r}"
                        )
                    value = (
                        np.array([kind.index(v) for v in value])
                        if rule.op in ("in", "not_in")
                        else kind.index(value)
                    )
                self.rules.append((j, rule.feature, rule.op, value))

    def apply(self, candidates: np.ndarray, features: dict[str, np.ndarray]) -> None:
        """Clear candidates (m, n_offers) in place where a rule fails."""
        for j, feature, op, value in self.rules:
            x = features[feature]
            if op == "in":
                ok = np.isin(x, value)
            elif op == "not_in":
                ok = ~np.isin(x, value)
            else:
                ok = self._OPS[op](x, value)
            candidates[:, j] &= ok


@dataclass(frozen=True)
class _DayEvents:
    """Same-day purchases and complaints, sorted by key ``cust * DAY + second_of_day``."""

    purchase_cust: np.ndarray
    purchase_amount: np.ndarray
    purchase_keys: np.ndarray
    spend_cum: np.ndarray  # (n_purchases + 1,) running total of amounts in key order
    complaint_cust: np.ndarray
    complaint_keys: np.ndarray


@dataclass(frozen=True)
class _Requests:
    """Decision requests of one day, sorted by (customer, time); arrays of shape (m,)."""

    cust: np.ndarray
    tp: np.ndarray
    ts: np.ndarray
    device: np.ndarray  # code into DEVICES, 3 = none
    page: np.ndarray  # category code of the page, -1 = none
    rank: np.ndarray  # 0 for the customer's first request of the day, 1 for the second, ...
    order_count: np.ndarray  # point-in-time history aggregates for eligibility
    total_spend: np.ndarray
    complaint_effect: np.ndarray  # exp(-(ts - last complaint) / decay)


class _BlockSimulator:
    """Holds one block's static terms and state; ``run`` simulates day after day."""

    def __init__(
        self, catalog: Catalog, pop: Population, params: SimParams, rng: np.random.Generator
    ):
        p = self.p = params
        self.catalog, self.pop, self.rng = catalog, pop, rng
        n, n_off = len(pop), catalog.n_offers
        otype, ocat = catalog.offer_type, catalog.offer_category
        n_tp = len(catalog.touchpoints)
        self.tpi = {tp.touchpoint_id: i for i, tp in enumerate(catalog.touchpoints)}
        self.tp_realtime = np.array([tp.mode == "realtime" for tp in catalog.touchpoints])
        self.tp_email = np.array([tp.channel == "email" for tp in catalog.touchpoints])
        self.eligibility = _Eligibility(catalog)
        self.position_bias = np.array(p.position_bias)
        if len(self.position_bias) < int(catalog.tp_slots.max()):
            raise ValueError(
                f"`position_bias` needs one entry per slot (max slots {catalog.tp_slots.max()}), "
                f"got {len(self.position_bias)}"
            )

        # static parts of the acceptance logit, (n, n_offers)
        taste_at = np.where(ocat >= 0, pop.taste[:, np.maximum(ocat, 0)], 1.0 / N_CAT)
        self.static_logit = (
            catalog.base_logit[None, :]
            + pop.responsiveness[:, None]
            + p.satisfaction_coef * pop.satisfaction[:, None]
            + np.array(p.affinity_coef)[otype][None, :]
            * np.log(N_CAT * taste_at + 0.1)
            * (ocat >= 0)[None, :]
            + np.array(p.price_coef)[otype][None, :] * (2 * pop.price_sensitivity - 1)[:, None]
            + p.tier_coef * pop.loyalty_tier[:, None] * (otype == TYPE["loyalty_reward"])[None, :]
        ).astype(np.float32)
        self.chan_term = p.channel_coef * np.log(N_CH * pop.channel_habit + 0.2)
        self.stage_type = np.array(p.stage_type)[catalog.tp_stage][:, otype]  # (n_tp, n_offers)
        self.complaint_shift = np.where(
            otype == TYPE["service"], p.complaint_service_coef, p.complaint_coef
        )
        self.consent = np.ones((n, n_tp), dtype=bool)
        opt_in = {"email_opt_in": pop.email, "sms_opt_in": pop.sms, "push_opt_in": pop.push}
        for t, column in enumerate(catalog.tp_consent):
            if column is not None:
                self.consent[:, t] = opt_in[column]
        self.cum_taste = np.cumsum(pop.taste, axis=1)

        # realtime visit weights per customer and touchpoint, (n, n_tp)
        visit_w = np.array([tp.visit_weight for tp in catalog.touchpoints])
        self.visit_base = visit_w[None, :] * N_CH * pop.channel_habit[:, catalog.tp_channel]
        self.service_tp = np.isin(np.arange(n_tp), [self.tpi[t] for t in SERVICE_TOUCHPOINTS])
        self.rt_cols = np.flatnonzero(self.tp_realtime)
        visit_event = {
            "web": EV["page_view"],
            "app": EV["app_open"],
            "chat": EV["chat"],
            "call_center": EV["call"],
            "store": EV["store_visit"],
        }
        self.event_of_tp = np.array(
            [visit_event.get(HABIT_CHANNELS[c], -1) for c in catalog.tp_channel]
        )

        # state: fatigue (decayed impression counts), caps (daily ring buffer), history
        self.fat_offer = np.zeros((n, n_off), dtype=np.float32)
        self.fat_type = np.zeros((n, len(OFFER_TYPES)), dtype=np.float32)
        self.fatigue_decay = np.float32(0.5 ** (1.0 / p.fatigue_half_life_days))
        self.capped = np.flatnonzero(catalog.cap > 0)
        self.windows = sorted({int(w) for w in catalog.cap_window[self.capped]})
        self.max_w = max(self.windows, default=1)
        self.ring = np.zeros((self.max_w, n, len(self.capped)), dtype=np.uint8)
        # impressions in the previous (w - 1) days per cap window w, and today
        self.prev_sum = {w: np.zeros((n, len(self.capped)), dtype=np.int16) for w in self.windows}
        self.today_shown = np.zeros((n, len(self.capped)), dtype=np.uint8)
        self.cap_limit = catalog.cap[self.capped]
        self.cap_w = catalog.cap_window[self.capped]
        self.order_count = np.zeros(n, dtype=np.int64)
        self.total_spend = np.zeros(n, dtype=np.float64)
        self.last_complaint = np.full(n, NEVER, dtype=np.int64)
        self.prev_day_buyers = np.zeros(0, dtype=np.int64)
        self.decay_s = p.complaint_decay_days * DAY

        self.tx = _Acc("cust", "ts", "amount", "category", "product", "quantity", "channel")
        self.it = _Acc("cust", "ts", "tp", "event", "value", "category")
        self.dec = _Acc(
            "decision", "ts", "tp", "offer", "cust", "position", "propensity", "device",
            "page_category",
        )  # fmt: skip
        self.out = _Acc("decision", "offer", "ts", "outcome", "revenue")
        self.truth = _Acc("decision", "offer", "p_accept")
        self.next_decision = 0

    def run(self, days: int) -> BlockOutput:
        for d in range(days):
            self._simulate_day(d)
        return BlockOutput(
            transactions=self.tx.arrays(),
            interactions=self.it.arrays(),
            decisions=self.dec.arrays(),
            outcomes=self.out.arrays(),
            truth=self.truth.arrays(),
            n_decisions=self.next_decision,
        )

    def _interactions(self, cust, ts, tp, event, value=None, category=None) -> None:
        m = len(cust)
        self.it.add(
            cust=cust,
            ts=ts,
            tp=np.broadcast_to(tp, m),
            event=np.full(m, event) if np.isscalar(event) else event,
            value=np.full(m, np.nan) if value is None else value,
            category=np.full(m, -1) if category is None else category,
        )

    def _simulate_day(self, d: int) -> None:
        day0 = self.catalog.start_s + d * DAY
        complaint_effect = np.exp(-(day0 - self.last_complaint) / self.decay_s)
        events = self._purchases_and_service(day0, complaint_effect)
        self._browsing(day0)
        requests = self._requests(d, day0, complaint_effect, events)
        for rnd in range(min(self.p.max_decisions_per_day, int(requests.rank.max(initial=-1)) + 1)):
            self._decide(requests, np.flatnonzero(requests.rank == rnd))
        self._end_of_day(d, events)

    def _purchases_and_service(self, day0: int, complaint_effect: np.ndarray) -> _DayEvents:
        p, pop, rng, n = self.p, self.pop, self.rng, len(self.pop)
        rate = (
            p.transaction_rate * pop.activity * (1 - p.complaint_purchase_drop * complaint_effect)
        )
        t_cust = np.repeat(np.arange(n), rng.poisson(rate))
        t_sec = _seconds_in_day(rng, len(t_cust))
        keep = day0 + t_sec >= pop.created_s[t_cust]
        t_cust, t_sec = t_cust[keep], t_sec[keep]
        order = np.lexsort((t_sec, t_cust))
        t_cust, t_sec = t_cust[order], t_sec[order]
        t_cat = _draw_categories(self.cum_taste[t_cust], rng)
        t_amount = np.round(
            CATEGORY_BASE_PRICE[t_cat]
            * pop.spend_level[t_cust]
            * rng.lognormal(0.0, 0.5, size=len(t_cust))
            * (1.15 - 0.3 * pop.price_sensitivity[t_cust]),
            2,
        )
        habit_cols = [HABIT_CHANNELS.index(c) for c in TRANSACTION_CHANNELS]
        self.tx.add(
            cust=t_cust,
            ts=day0 + t_sec,
            amount=t_amount,
            category=t_cat,
            product=t_cat * PRODUCTS_PER_CATEGORY
            + np.minimum(rng.geometric(0.12, size=len(t_cust)) - 1, PRODUCTS_PER_CATEGORY - 1),
            quantity=1 + rng.poisson(0.3, size=len(t_cust)),
            channel=_pick_rows(pop.channel_habit[t_cust][:, habit_cols] + 1e-9, rng),
        )
        # reviews a few days after some purchases
        rv = rng.random(len(t_cust)) < p.review_prob
        n_rv = int(rv.sum())
        self._interactions(
            t_cust[rv],
            day0 + t_sec[rv] + rng.integers(DAY, 4 * DAY, size=n_rv),
            self.tpi["web_product"],
            EV["review"],
            value=np.clip(
                np.round(3.8 + 0.8 * pop.satisfaction[t_cust[rv]] + rng.normal(0, 0.7, n_rv)), 1, 5
            ),
            category=t_cat[rv],
        )

        # complaints (at most one per customer and day) and support tickets
        c_mask = rng.random(n) < p.complaint_rate * pop.issue_proneness
        c_cust = np.flatnonzero(c_mask & (pop.created_s <= day0))
        c_sec = _seconds_in_day(rng, len(c_cust))
        where = [self.tpi[t] for t in ("call_center", "chat_widget", "web_help", "store_pos")]
        c_tp = np.array(where)[rng.choice(4, size=len(c_cust), p=[0.35, 0.3, 0.2, 0.15])]
        self._interactions(c_cust, day0 + c_sec, c_tp, EV["complaint"])
        s_cust = np.flatnonzero(
            (rng.random(n) < p.ticket_rate * pop.issue_proneness) & (pop.created_s <= day0)
        )
        self._interactions(
            s_cust,
            day0 + _seconds_in_day(rng, len(s_cust)),
            np.array([self.tpi[t] for t in SERVICE_TOUCHPOINTS])[
                rng.integers(0, 3, size=len(s_cust))
            ],
            EV["support_ticket"],
        )
        return _DayEvents(
            purchase_cust=t_cust,
            purchase_amount=t_amount,
            purchase_keys=t_cust * DAY + t_sec,
            spend_cum=np.concatenate([[0.0], np.cumsum(t_amount)]),
            complaint_cust=c_cust,
            complaint_keys=c_cust * DAY + c_sec,  # c_cust ascending: keys sorted
        )

    def _browsing(self, day0: int) -> None:
        """Product views without offers; their category follows the customer's taste."""
        p, pop, rng = self.p, self.pop, self.rng
        b_cust = np.repeat(np.arange(len(pop)), rng.poisson(p.browse_rate * pop.activity))
        b_sec = _seconds_in_day(rng, len(b_cust))
        keep = day0 + b_sec >= pop.created_s[b_cust]
        b_cust, b_sec = b_cust[keep], b_sec[keep]
        web = pop.channel_habit[b_cust, HABIT_CHANNELS.index("web")]
        app = pop.channel_habit[b_cust, HABIT_CHANNELS.index("app")]
        on_app = rng.random(len(b_cust)) < app / (web + app)
        self._interactions(
            b_cust,
            day0 + b_sec,
            np.where(on_app, self.tpi["app_home"], self.tpi["web_product"]),
            EV["product_view"],
            category=_draw_categories(self.cum_taste[b_cust], rng, noise=0.2),
        )

    def _requests(
        self, d: int, day0: int, complaint_effect: np.ndarray, events: _DayEvents
    ) -> _Requests:
        """Realtime visits and batch campaign sends of day ``d``, with point-in-time features."""
        p, pop, rng, tpi, n = self.p, self.pop, self.rng, self.tpi, len(self.pop)
        v_cust = np.repeat(np.arange(n), rng.poisson(p.visit_rate * pop.activity))
        w = self.visit_base[v_cust][:, self.rt_cols]
        boost = 1 + p.complaint_service_visit_boost * complaint_effect[v_cust]
        w = w * np.where(self.service_tp[self.rt_cols][None, :], boost[:, None], 1.0)
        v_tp = self.rt_cols[_pick_rows(w, rng)]
        v_sec = _seconds_in_day(rng, len(v_cust))
        ch = self.catalog.tp_channel[v_tp]
        v_device = np.where(
            ch == HABIT_CHANNELS.index("web"),
            rng.choice(3, size=len(v_cust), p=[0.45, 0.45, 0.1]),
            np.where(ch == HABIT_CHANNELS.index("app"), 1, 3),
        )
        shows_category = np.isin(v_tp, [tpi["web_product"], tpi["web_cart"]])
        v_page = np.where(shows_category, _draw_categories(self.cum_taste[v_cust], rng, 0.2), -1)
        self._interactions(v_cust, day0 + v_sec, v_tp, self.event_of_tp[v_tp], category=v_page)

        batch: list[tuple[np.ndarray, int, int]] = []  # (customers, touchpoint, hour of day)
        if d % p.newsletter_every_days == 3 % p.newsletter_every_days:
            to = np.flatnonzero(pop.email & (rng.random(n) < p.newsletter_share))
            batch.append((to, tpi["email_newsletter"], 9))
        if d % p.sms_every_days == 5 % p.sms_every_days:
            to = np.flatnonzero(pop.sms & (rng.random(n) < p.sms_share))
            batch.append((to, tpi["sms_promo"], 12))
        buyers = self.prev_day_buyers
        to = buyers[pop.email[buyers] & (rng.random(len(buyers)) < p.post_purchase_email_prob)]
        batch.append((to, tpi["email_post_purchase"], 10))
        nps = buyers[pop.email[buyers] & (rng.random(len(buyers)) < p.nps_survey_prob)]
        batch.append((nps, tpi["email_nps_survey"], 18))
        # NPS answers: lower after a complaint, higher for satisfied customers
        ans = nps[rng.random(len(nps)) < p.nps_answer_prob]
        score = 7.5 + 1.6 * pop.satisfaction[ans] - 5.0 * complaint_effect[ans]
        score = np.clip(np.round(score + rng.normal(0, 1.2, size=len(ans))), 0, 10)
        self._interactions(
            ans,
            day0 + 18 * 3600 + rng.integers(600, 6 * 3600, size=len(ans)),
            tpi["email_nps_survey"],
            EV["nps_answer"],
            value=score,
        )

        cust = np.concatenate([v_cust] + [b[0] for b in batch])
        tp = np.concatenate([v_tp] + [np.full(len(b[0]), b[1]) for b in batch])
        sec = np.concatenate(
            [v_sec] + [b[2] * 3600 + rng.integers(0, 3600, size=len(b[0])) for b in batch]
        )
        device = np.concatenate([v_device] + [np.full(len(b[0]), 3) for b in batch])
        page = np.concatenate([v_page] + [np.full(len(b[0]), -1) for b in batch])
        keep = day0 + sec >= pop.created_s[cust]
        order = np.lexsort((sec, cust))
        order = order[keep[order]]
        cust, tp, sec, device, page = (a[order] for a in (cust, tp, sec, device, page))
        first = np.r_[True, cust[1:] != cust[:-1]] if len(cust) else np.zeros(0, bool)
        run_start = np.maximum.accumulate(np.where(first, np.arange(len(cust)), 0))

        # point-in-time history: earlier days' totals plus today's events before the request
        keys = cust * DAY + sec
        hi = np.searchsorted(events.purchase_keys, keys, side="left")
        lo = np.searchsorted(events.purchase_keys, cust * DAY, side="left")
        c_keys = events.complaint_keys
        ci = np.searchsorted(c_keys, keys, side="left") - 1
        prior = c_keys[np.maximum(ci, 0)] if len(c_keys) else np.zeros(len(cust), np.int64)
        same_day = (ci >= 0) & (prior // DAY == cust)
        last_complaint = np.where(same_day, day0 + prior % DAY, self.last_complaint[cust])
        return _Requests(
            cust=cust,
            tp=tp,
            ts=day0 + sec,
            device=device,
            page=page,
            rank=np.arange(len(cust)) - run_start,
            order_count=self.order_count[cust] + (hi - lo),
            total_spend=self.total_spend[cust] + events.spend_cum[hi] - events.spend_cum[lo],
            complaint_effect=np.exp(-(day0 + sec - last_complaint) / self.decay_s),
        )

    def _candidates(self, r: _Requests, sel: np.ndarray) -> np.ndarray:
        """Eligible offers (len(sel), n_offers): touchpoint, consent, dates, rules, caps."""
        cat, pop = self.catalog, self.pop
        c, t, ts = r.cust[sel], r.tp[sel], r.ts[sel]
        cand = cat.tp_mask[t] & self.consent[c, t][:, None]
        cand &= (cat.active_from[None, :] <= ts[:, None]) & (
            ts[:, None] <= cat.active_until[None, :]
        )
        features = {
            "loyalty_tier": pop.loyalty_tier[c],
            "age_band": pop.age_band[c],
            "region": pop.region[c],
            "email_opt_in": pop.email[c],
            "sms_opt_in": pop.sms[c],
            "push_opt_in": pop.push[c],
            "tenure_days": (ts - pop.created_s[c]) // DAY,
            "order_count": r.order_count[sel],
            "total_spend": r.total_spend[sel],
        }
        self.eligibility.apply(cand, features)
        if len(self.capped):
            shown = self.today_shown[c].astype(np.int16)
            in_window = np.zeros_like(shown)
            for w_days in self.windows:
                cols = self.cap_w == w_days
                in_window[:, cols] = self.prev_sum[w_days][c][:, cols] + shown[:, cols]
            cand[:, self.capped] &= in_window < self.cap_limit[None, :]
        regular = cand & ~cat.is_fallback[None, :]
        return np.where(regular.any(axis=1)[:, None], regular, cand)

    def _decide(self, r: _Requests, sel: np.ndarray) -> None:
        """One round: at most one request per customer, so state updates do not collide."""
        p, cat, rng = self.p, self.catalog, self.rng
        otype, ocat = cat.offer_type, cat.offer_category
        cand = self._candidates(r, sel)
        ok = cand.any(axis=1)
        sel, cand = sel[ok], cand[ok]
        m = len(sel)
        if m == 0:
            return
        c, t, ts = r.cust[sel], r.tp[sel], r.ts[sel]
        logit = (
            self.static_logit[c]
            + self.chan_term[c, cat.tp_channel[t]][:, None]
            + self.stage_type[t]
            + p.context_coef * (ocat[None, :] == r.page[sel][:, None]) * (ocat >= 0)[None, :]
            - p.fatigue_offer_coef * self.fat_offer[c]
            - p.fatigue_type_coef * self.fat_type[c][:, otype]
            + r.complaint_effect[sel][:, None] * self.complaint_shift[None, :]
        )
        p_true = np.clip(_sigmoid(logit), *p.p_clip)
        ids = self.next_decision + np.arange(m)
        self.next_decision += m
        tr, to = np.nonzero(cand)
        self.truth.add(decision=ids[tr], offer=to, p_accept=p_true[tr, to])

        slate = epsilon_greedy_slates(cand, cat.score, cat.tp_slots[t], p.epsilon, rng)
        row, off = slate.row, slate.offer
        sc, st, sts = c[row], t[row], ts[row]
        self.dec.add(
            decision=ids[row],
            ts=sts,
            tp=st,
            offer=off,
            cust=sc,
            position=slate.position,
            propensity=slate.propensity,
            device=r.device[sel][row],
            page_category=r.page[sel][row],
        )
        p_show = p_true[row, off] * self.position_bias[slate.position - 1]
        accepted = rng.random(len(row)) < p_show
        _outcomes(
            self.out,
            p,
            rng,
            ids[row],
            off,
            sts,
            self.tp_realtime[st],
            accepted,
            otype[off],
            ocat[off],
            self.pop.spend_level[sc],
            self.fat_offer[sc, off],
        )
        email_rows = self.tp_email[st] & (slate.position == 1)
        opens = email_rows & (
            accepted | (rng.random(len(row)) < 0.25 + self.pop.channel_habit[sc, 2])
        )
        self._interactions(
            sc[opens],
            sts[opens] + 60 + rng.integers(0, 6 * 3600, int(opens.sum())),
            st[opens],
            EV["email_open"],
        )

        # state updates: each customer appears once per round; offers once per slate
        self.fat_offer[sc, off] += 1.0
        np.add.at(self.fat_type, (sc, otype[off]), 1.0)
        if len(self.capped):
            col = np.searchsorted(self.capped, off)
            hit = (col < len(self.capped)) & (
                self.capped[np.minimum(col, len(self.capped) - 1)] == off
            )
            self.today_shown[sc[hit], col[hit]] += 1

    def _end_of_day(self, d: int, events: _DayEvents) -> None:
        if len(self.capped):
            for w_days in self.windows:
                self.prev_sum[w_days] += self.today_shown
                leaving = d - w_days + 1  # the day that drops out of tomorrow's window
                if leaving >= 0:
                    self.prev_sum[w_days] -= (
                        self.ring[leaving % self.max_w] if leaving != d else self.today_shown
                    )
            self.ring[d % self.max_w] = self.today_shown
            self.today_shown[:] = 0
        self.fat_offer *= self.fatigue_decay
        self.fat_type *= self.fatigue_decay
        np.add.at(self.order_count, events.purchase_cust, 1)
        np.add.at(self.total_spend, events.purchase_cust, events.purchase_amount)
        if len(events.complaint_cust):
            day0 = self.catalog.start_s + d * DAY
            self.last_complaint[events.complaint_cust] = day0 + events.complaint_keys % DAY
        self.prev_day_buyers = np.unique(events.purchase_cust)


def simulate_block(
    catalog: Catalog,
    pop: Population,
    params: SimParams,
    days: int,
    rng: np.random.Generator,
) -> BlockOutput:
    """Simulate ``days`` days for one block of customers (local decision ids from 0)."""
    return _BlockSimulator(catalog, pop, params, rng).run(days)


def _outcomes(
    out: _Acc,
    p: SimParams,
    rng: np.random.Generator,
    decision: np.ndarray,
    offer: np.ndarray,
    ts: np.ndarray,
    realtime: np.ndarray,
    accepted: np.ndarray,
    otype: np.ndarray,
    ocat: np.ndarray,
    spend_level: np.ndarray,
    fatigue: np.ndarray,
) -> None:
    """Clicks, accepts, conversions (with revenue) and dismissals of shown offers."""
    m = len(decision)
    nan = np.full(m, np.nan)
    click_first = accepted & (rng.random(m) < p.click_before_accept_prob)
    stray_click = ~accepted & (rng.random(m) < p.stray_click_prob)
    click_delay = np.where(realtime, rng.exponential(90.0, m), rng.exponential(6 * 3600.0, m))
    click_ts = ts + 1 + click_delay.astype(np.int64)
    clicked = click_first | stray_click
    out.add(
        decision=decision[clicked],
        offer=offer[clicked],
        ts=click_ts[clicked],
        outcome=np.zeros(int(clicked.sum()), np.int64),
        revenue=nan[clicked],
    )
    late = rng.random(m) < p.late_accept_prob_realtime
    accept_delay = np.where(
        realtime,
        np.where(late, rng.exponential(2.5 * DAY, m), rng.exponential(240.0, m)),
        rng.exponential(1.5 * DAY, m),
    )
    accept_ts = np.where(click_first, click_ts, ts) + 1 + accept_delay.astype(np.int64)
    out.add(
        decision=decision[accepted],
        offer=offer[accepted],
        ts=accept_ts[accepted],
        outcome=np.ones(int(accepted.sum()), np.int64),
        revenue=nan[accepted],
    )
    converted = accepted & (rng.random(m) < np.array(p.convert_prob)[otype])
    price = np.where(
        ocat >= 0, CATEGORY_BASE_PRICE[np.maximum(ocat, 0)], CATEGORY_BASE_PRICE.mean()
    )
    revenue = np.round(
        price * np.array(p.revenue_factor)[otype] * spend_level * rng.lognormal(0, 0.4, m), 2
    )
    convert_ts = accept_ts + 60 + rng.exponential(0.5 * DAY, m).astype(np.int64)
    out.add(
        decision=decision[converted],
        offer=offer[converted],
        ts=convert_ts[converted],
        outcome=np.full(int(converted.sum()), 2),
        revenue=revenue[converted],
    )
    dismiss_p = np.where(
        realtime, p.dismiss_prob_realtime, p.dismiss_prob_batch
    ) + 0.05 * np.minimum(fatigue, 4.0)
    dismissed = ~accepted & (rng.random(m) < dismiss_p)
    dismiss_ts = ts + 2 + rng.exponential(20.0, m).astype(np.int64)
    out.add(
        decision=decision[dismissed],
        offer=offer[dismissed],
        ts=dismiss_ts[dismissed],
        outcome=np.full(int(dismissed.sum()), 3),
        revenue=nan[dismissed],
    )


__all__ = [
    "DEVICES",
    "EVENT_TYPES",
    "OUTCOME_NAMES",
    "TRANSACTION_CHANNELS",
    "BlockOutput",
    "SimParams",
    "simulate_block",
]
