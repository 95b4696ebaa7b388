"""Served-offer rows of one group of decisions: each request's slate, or its fallback."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from recsys.arbitration import SlateBatch
from recsys.catalog import Offer, TouchpointOffers
from recsys.eligibility import in_date_window


@dataclass(frozen=True)
class ServedRows:
    """The offers served to n requests, one row each (requests in order, ranks ascending).

    Attributes
    ----------
    row_start : ndarray of int64, shape (n + 1,)
    fallback : ndarray of bool, shape (n,)
        The request got the touchpoint's fallback offers (nothing eligible, consent given).
    offer_id, offer_name : ndarray of object, shape (r,)
    score : ndarray of float64, shape (r,), NaN for fallback offers
    priority, value, weight, propensity : ndarray of float64, shape (r,)
    explored : ndarray of bool, shape (r,)
    """

    row_start: np.ndarray
    fallback: np.ndarray
    offer_id: np.ndarray
    offer_name: np.ndarray
    score: np.ndarray
    priority: np.ndarray
    value: np.ndarray
    weight: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray


def served_rows(
    offers: TouchpointOffers,
    slates: SlateBatch,
    limits: np.ndarray,
    allows_fallback: np.ndarray,
    priority: np.ndarray,
    p_accept: np.ndarray,
    now_us: int,
) -> ServedRows:
    """The rows of every request's slate (``priority``, ``p_accept``: shape (n, m)), or of the
    touchpoint's live fallback offers where the slate is empty and ``allows_fallback``."""
    n = limits.shape[0]
    fallback_offers = live_fallback(offers.fallback, now_us)
    fallback = (slates.k == 0) & allows_fallback
    fb_counts = np.where(fallback, np.minimum(limits, len(fallback_offers)), 0)
    fallback &= fb_counts > 0
    counts = np.where(fallback, fb_counts, slates.k)
    row_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=row_start[1:])
    r = int(row_start[-1])
    out = ServedRows(
        row_start=row_start,
        fallback=fallback,
        offer_id=np.empty(r, dtype=object),
        offer_name=np.empty(r, dtype=object),
        score=np.full(r, np.nan),
        priority=np.zeros(r),
        value=np.zeros(r),
        weight=np.zeros(r),
        propensity=np.ones(r),
        explored=np.zeros(r, dtype=bool),
    )
    model_rows = np.repeat(~fallback, counts)
    filled = slates.positions >= 0
    rows, cols = np.nonzero(filled)[0], slates.positions[filled]
    names = np.array([o.name for o in offers.offers], dtype=object)
    out.offer_id[model_rows] = offers.offer_ids[cols]
    out.offer_name[model_rows] = names[cols]
    out.score[model_rows] = p_accept[rows, cols]
    out.priority[model_rows] = priority[rows, cols]
    out.value[model_rows] = offers.value[cols]
    out.weight[model_rows] = offers.weight[cols]
    out.propensity[model_rows] = slates.propensity[filled]
    out.explored[model_rows] = slates.explored[filled]
    if fallback.any():
        at = np.flatnonzero(~model_rows)
        taken = fb_counts[fallback]
        ranks = np.arange(at.size) - np.repeat(np.cumsum(taken) - taken, taken)
        chosen = [fallback_offers[k] for k in ranks.tolist()]
        out.offer_id[at] = [o.offer_id for o in chosen]
        out.offer_name[at] = [o.name for o in chosen]
        out.priority[at] = [o.value * o.weight for o in chosen]
        out.value[at] = [o.value for o in chosen]
        out.weight[at] = [o.weight for o in chosen]
    return out


def live_fallback(offers: tuple[Offer, ...], now_us: int) -> list[Offer]:
    """The touchpoint's fallback offers inside their date window, best value x weight first."""
    if not offers:
        return []
    start = np.array([_us(o.start_at, np.iinfo(np.int64).min) for o in offers])
    end = np.array([_us(o.end_at, np.iinfo(np.int64).max) for o in offers])
    live = [o for o, ok in zip(offers, in_date_window(start, end, now_us), strict=True) if ok]
    return sorted(live, key=lambda o: -(o.value * o.weight))


def _us(ts: datetime | None, default: int) -> int:
    return default if ts is None else int(ts.timestamp() * 1_000_000)
