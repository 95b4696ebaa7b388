"""Building blocks of the day simulation: random draws, the compiled eligibility rules of the
generated catalogue, the per-day containers and the outcome draws of shown offers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike

from recsys.datagen.catalog import (
    CATEGORY_BASE_PRICE,
    ELIGIBILITY_FEATURES,
    HABIT_CHANNELS,
    SERVICE_TOUCHPOINTS,
    Catalog,
)
from recsys.datagen.params import N_CAT, N_CH, TYPE, SimParams
from recsys.datagen.population import DAY, Population


class Accumulator:
    """Append-only column accumulator."""

    def __init__(self, *names: str):
        self.parts: dict[str, list[np.ndarray]] = {name: [] for name in names}

    def add(self, **cols: np.ndarray) -> None:
        for name, values in cols.items():
            self.parts[name].append(np.asarray(values))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) if v else np.zeros(0) for k, v in self.parts.items()}


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def draw_categories(cum_taste: np.ndarray, rng: np.random.Generator, noise: float = 0.0):
    """One category per row of ``cum_taste`` (m, n_cat) cumulative shares -> (m,) codes."""
    u = rng.random(len(cum_taste))
    cat = np.minimum((cum_taste < u[:, None]).sum(axis=1), N_CAT - 1)
    if noise > 0:
        mix = rng.random(len(cum_taste)) < noise
        cat = np.where(mix, rng.integers(0, N_CAT, size=len(cum_taste)), cat)
    return cat


def pick_rows(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Index drawn per row in proportion to ``weights`` (m, k) -> (m,)."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(axis=1), weights.shape[1] - 1)


def seconds_in_day(rng: np.random.Generator, m: int) -> np.ndarray:
    """Time of day, more activity in the afternoon/evening; (m,) int seconds."""
    hours = np.clip(rng.normal(15.0, 4.5, size=m), 0.0, 23.999)
    return (hours * 3600).astype(np.int64)


class AcceptanceModel:
    """The hidden acceptance model of one block of customers (module doc of
    :mod:`recsys.datagen.simulate`): its static terms, and the logit of every offer for
    requests in a given state."""

    def __init__(self, catalog: Catalog, pop: Population, params: SimParams):
        p = self.p = params
        self.catalog = catalog
        otype, ocat = catalog.offer_type, catalog.offer_category
        taste_at = np.where(ocat >= 0, pop.taste[:, np.maximum(ocat, 0)], 1.0 / N_CAT)
        #: (n, n_offers) the customer x offer terms
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
        #: (n, n_channels)
        self.chan_term = p.channel_coef * np.log(N_CH * pop.channel_habit + 0.2)
        #: (n_touchpoints, n_offers)
        self.stage_type = np.array(p.stage_type)[catalog.tp_stage][:, otype]
        self.complaint_shift = np.where(
            otype == TYPE["service"], p.complaint_service_coef, p.complaint_coef
        )

    def p_accept(
        self,
        cust: np.ndarray,
        tp: np.ndarray,
        page: np.ndarray,
        fat_offer: np.ndarray,
        fat_type: np.ndarray,
        complaint_effect: np.ndarray,
    ) -> np.ndarray:
        """P(accept at position 1) of every offer for m requests -> (m, n_offers).

        ``cust``, ``tp``, ``page`` (category code, -1 none), ``complaint_effect``: (m,);
        ``fat_offer`` (m, n_offers) and ``fat_type`` (m, n_types): the customers' fatigue.
        """
        p, ocat = self.p, self.catalog.offer_category
        logit = (
            self.static_logit[cust]
            + self.chan_term[cust, self.catalog.tp_channel[tp]][:, None]
            + self.stage_type[tp]
            + p.context_coef * (ocat[None, :] == page[:, None]) * (ocat >= 0)[None, :]
            - p.fatigue_offer_coef * fat_offer
            - p.fatigue_type_coef * fat_type[:, self.catalog.offer_type]
            + complaint_effect[:, None] * self.complaint_shift[None, :]
        )
        return np.clip(sigmoid(logit), *p.p_clip)


@dataclass(frozen=True)
class Visits:
    """Realtime visits of one day, shape (m,) each: customer row, touchpoint code, second of
    the day, device code (desktop, mobile, tablet, other) and the page's category code (-1 for
    a page without one)."""

    cust: np.ndarray
    tp: np.ndarray
    sec: np.ndarray
    device: np.ndarray
    page: np.ndarray


class VisitModel:
    """Who visits which realtime touchpoint on a day, by activity and channel habits."""

    def __init__(self, catalog: Catalog, pop: Population, params: SimParams):
        self.catalog, self.pop, self.p = catalog, pop, params
        tpi = {tp.touchpoint_id: i for i, tp in enumerate(catalog.touchpoints)}
        visit_w = np.array([tp.visit_weight for tp in catalog.touchpoints])
        self.visit_base = visit_w[None, :] * N_CH * pop.channel_habit[:, catalog.tp_channel]
        n_tp = len(catalog.touchpoints)
        self.service_tp = np.isin(np.arange(n_tp), [tpi[t] for t in SERVICE_TOUCHPOINTS])
        self.rt_cols = np.flatnonzero([tp.mode == "realtime" for tp in catalog.touchpoints])
        self.category_pages = [tpi["web_product"], tpi["web_cart"]]
        self.cum_taste = np.cumsum(pop.taste, axis=1)

    def draw(self, complaint_effect: np.ndarray, rng: np.random.Generator) -> Visits:
        """One day's visits; a recent complaint (``complaint_effect`` (n,)) draws customers to
        service touchpoints."""
        p, pop = self.p, self.pop
        cust = np.repeat(np.arange(len(pop)), rng.poisson(p.visit_rate * pop.activity))
        w = self.visit_base[cust][:, self.rt_cols]
        boost = 1 + p.complaint_service_visit_boost * complaint_effect[cust]
        w = w * np.where(self.service_tp[self.rt_cols][None, :], boost[:, None], 1.0)
        tp = self.rt_cols[pick_rows(w, rng)]
        sec = seconds_in_day(rng, len(cust))
        ch = self.catalog.tp_channel[tp]
        device = np.where(
            ch == HABIT_CHANNELS.index("web"),
            rng.choice(3, size=len(cust), p=[0.45, 0.45, 0.1]),
            np.where(ch == HABIT_CHANNELS.index("app"), 1, 3),
        )
        shows_category = np.isin(tp, self.category_pages)
        page = np.where(shows_category, draw_categories(self.cum_taste[cust], rng, 0.2), -1)
        return Visits(cust, tp, sec, device, page)


class RuleEligibility:
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
class DayEvents:
    """Same-day purchases and complaints, sorted by key ``cust * DAY + second_of_day``."""

    purchase_cust: np.ndarray
    purchase_amount: np.ndarray
    purchase_keys: np.ndarray
    spend_cum: np.ndarray  # (n_purchases + 1,) running total of amounts in key order
    complaint_cust: np.ndarray
    complaint_keys: np.ndarray


@dataclass(frozen=True)
class Requests:
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


def draw_outcomes(
    out: Accumulator,
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
