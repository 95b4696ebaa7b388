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
    Catalog,
)
from recsys.datagen.params import N_CAT, SimParams
from recsys.datagen.population import DAY


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
