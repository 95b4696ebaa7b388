"""Simple history features of the decision-quality peers (``bench/bench_quality.py``).

The peers do not read recsys's feature pipeline: they get what a data scientist would write
in an afternoon, straight from the warehouse's contract tables, each as of the decision time
(only events strictly before it count):

- the customer: attributes, tenure, consents;
- purchases: count, spend, days since the last, and the share of purchases per category;
- interactions: count per event type, the share of category-carrying interactions (product
  and page views, reviews) per category, days since the last complaint or ticket, last NPS;
- offers: impressions and acceptances so far (and their smoothed rate), impressions of each
  offer in the last 14 days (fatigue);
- the request: touchpoint, device and page category.

Action features are the offer's id, type, category and value, and three crosses of the offer
with the customer: purchase and view share of the offer's category, page category = offer
category.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from recsys.eventlog import ACCEPTED_TYPES

#: Request and customer columns that are categories (the rest of the context is numeric).
CONTEXT_CATEGORIES = ("touchpoint_id", "ctx_device", "ctx_page_category", "loyalty_tier",
                      "age_band", "region")  # fmt: skip
#: Offer columns (from the ``offers`` table) the peers see.
OFFER_COLUMNS = ("offer_id", "offer_type", "category", "value")
#: Action-dependent numeric columns: crosses of the offer with the customer and the request.
CROSS_COLUMNS = ("x_purchase_share", "x_view_share", "x_page_match", "x_offer_shown_14d")
FATIGUE_DAYS = 14


def _name(value: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", value.lower()).strip("_")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class HistoryFeatures:
    """Point-in-time customer features and offer fatigue from a warehouse connection.

    Parameters
    ----------
    con : duckdb connection to the warehouse (read only is enough)
    """

    def __init__(self, con: Any) -> None:
        self.con = con
        self.categories = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT category FROM offers WHERE category IS NOT NULL ORDER BY 1"
            ).fetchall()
        ]
        self.event_types = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT event_type FROM interactions ORDER BY 1"
            ).fetchall()
        ]
        self.offers = con.execute(
            f"SELECT {', '.join(OFFER_COLUMNS)} FROM offers ORDER BY offer_id"
        ).fetchdf()

    def customer(self, points: pd.DataFrame) -> pd.DataFrame:
        """One row per distinct ``(customer_id, ts)`` of ``points``: the customer's features
        as of ``ts`` (numeric, NaN-free) and attributes (categories)."""
        points = points[["customer_id", "ts"]].drop_duplicates().reset_index(drop=True)
        cats = [(_literal(c), _name(c)) for c in self.categories]
        purchase_cols = ", ".join(
            f"count(t.ts) FILTER (WHERE t.category = {lit}) AS n_purch_{n}" for lit, n in cats
        )
        view_cols = ", ".join(
            f"count(i.ts) FILTER (WHERE i.category = {lit}) AS n_view_{n}" for lit, n in cats
        )
        event_cols = ", ".join(
            f"count(i.ts) FILTER (WHERE i.event_type = {_literal(e)}) AS n_event_{_name(e)}"
            for e in self.event_types
        )
        accepted = ", ".join(_literal(str(t)) for t in ACCEPTED_TYPES)
        self.con.register("_peer_points", points)
        try:
            frame = self.con.execute(
                f"""
                WITH tx AS (
                    SELECT p.customer_id, p.ts, count(t.ts) AS n_purch,
                           coalesce(sum(t.amount), 0) AS spend,
                           coalesce(date_diff('hour', max(t.ts), p.ts) / 24.0, 365) AS days_purch,
                           {purchase_cols}
                    FROM _peer_points p LEFT JOIN transactions t
                      ON t.customer_id = p.customer_id AND t.ts < p.ts
                    GROUP BY p.customer_id, p.ts),
                ev AS (
                    SELECT p.customer_id, p.ts, count(i.category) AS n_view,
                           {view_cols}, {event_cols},
                           coalesce(date_diff('hour', max(i.ts) FILTER (WHERE i.event_type IN
                               ('complaint', 'support_ticket')), p.ts) / 24.0, 365) AS days_issue,
                           coalesce(arg_max(i.value, i.ts) FILTER (WHERE i.event_type =
                               'nps_answer'), -1) AS nps_last
                    FROM _peer_points p LEFT JOIN interactions i
                      ON i.customer_id = p.customer_id AND i.ts < p.ts
                    GROUP BY p.customer_id, p.ts),
                shown AS (
                    SELECT p.customer_id, p.ts, count(d.ts) AS n_shown,
                           count(d.ts) FILTER (WHERE d.ts >= p.ts - INTERVAL 7 DAY) AS n_shown_7d
                    FROM _peer_points p LEFT JOIN decisions d
                      ON d.customer_id = p.customer_id AND d.ts < p.ts
                    GROUP BY p.customer_id, p.ts),
                acc AS (
                    SELECT p.customer_id, p.ts, count(o.ts) AS n_accepted
                    FROM _peer_points p LEFT JOIN (
                        SELECT d.customer_id, o.ts FROM outcomes o JOIN decisions d
                          ON o.decision_id = d.decision_id AND o.offer_id = d.offer_id
                        WHERE o.outcome IN ({accepted})) o
                      ON o.customer_id = p.customer_id AND o.ts < p.ts
                    GROUP BY p.customer_id, p.ts)
                SELECT p.customer_id, p.ts, tx.* EXCLUDE (customer_id, ts),
                       ev.* EXCLUDE (customer_id, ts), shown.n_shown, shown.n_shown_7d,
                       acc.n_accepted,
                       coalesce(date_diff('hour', c.created_at, p.ts) / 24.0, 0) AS tenure_days,
                       c.email_opt_in::DOUBLE AS email_opt_in, c.sms_opt_in::DOUBLE AS sms_opt_in,
                       c.push_opt_in::DOUBLE AS push_opt_in,
                       c.loyalty_tier, c.age_band, c.region
                FROM _peer_points p
                JOIN tx USING (customer_id, ts) JOIN ev USING (customer_id, ts)
                JOIN shown USING (customer_id, ts) JOIN acc USING (customer_id, ts)
                LEFT JOIN customers c ON c.customer_id = p.customer_id
                """
            ).fetchdf()
        finally:
            self.con.unregister("_peer_points")
        for _, n in cats:
            frame[f"share_purch_{n}"] = frame[f"n_purch_{n}"] / frame["n_purch"].clip(lower=1)
            frame[f"share_view_{n}"] = frame[f"n_view_{n}"] / frame["n_view"].clip(lower=1)
        frame["accept_rate"] = (frame["n_accepted"] + 0.5) / (frame["n_shown"] + 5.0)
        counts = [c for c in frame.columns if c.startswith("n_") or c == "spend"]
        frame[counts] = np.log1p(frame[counts].astype(np.float64))
        for column in ("days_purch", "days_issue", "tenure_days"):
            frame[column] = frame[column].astype(np.float64) / 365.0
        frame["ts"] = pd.to_datetime(frame["ts"])
        return frame

    def fatigue(self, pairs: pd.DataFrame) -> np.ndarray:
        """Impressions of each ``(customer_id, ts, offer_id)`` pair's offer to its customer in
        the ``FATIGUE_DAYS`` days before ``ts``, shape (len(pairs),), in the pairs' order."""
        pairs = pairs[["customer_id", "ts", "offer_id"]].reset_index(drop=True)
        self.con.register("_peer_pairs", pairs.assign(_row=np.arange(len(pairs))))
        try:
            counts = self.con.execute(
                f"""
                SELECT p._row, count(d.ts) AS n
                FROM _peer_pairs p LEFT JOIN decisions d
                  ON d.customer_id = p.customer_id AND d.offer_id = p.offer_id AND d.ts < p.ts
                 AND d.ts >= p.ts - INTERVAL {FATIGUE_DAYS} DAY
                GROUP BY p._row
                """
            ).fetchdf()
        finally:
            self.con.unregister("_peer_pairs")
        out = np.zeros(len(pairs))
        out[counts["_row"].to_numpy()] = counts["n"].to_numpy(np.float64)
        return out

    def rows(self, requests: pd.DataFrame, offer_ids: pd.Series) -> pd.DataFrame:
        """Model rows of (request, offer) pairs: ``requests`` (one per pair: ``customer_id,
        ts, touchpoint_id, ctx_device, ctx_page_category``) joined with the customer's
        features as of ``ts``, the offer's columns and the crosses."""
        requests = requests.reset_index(drop=True)
        requests = requests.assign(ts=pd.to_datetime(requests["ts"]))
        context = self.customer(requests)
        frame = requests.merge(context, on=["customer_id", "ts"], how="left", validate="m:1")
        offers = self.offers.set_index("offer_id").reindex(offer_ids.to_numpy())
        frame["offer_id"] = offer_ids.to_numpy()
        frame["offer_type"] = offers["offer_type"].to_numpy()
        frame["category"] = offers["category"].to_numpy()
        frame["value"] = offers["value"].to_numpy(np.float64)
        names = offers["category"].map(lambda c: _name(c) if isinstance(c, str) else "")
        frame["x_purchase_share"] = _pick(frame, "share_purch_", names)
        frame["x_view_share"] = _pick(frame, "share_view_", names)
        frame["x_page_match"] = (
            frame["ctx_page_category"].astype(object).to_numpy() == frame["category"].to_numpy()
        ).astype(np.float64)
        frame["x_offer_shown_14d"] = np.log1p(self.fatigue(frame))
        return frame

    def share_columns(self) -> list[str]:
        """The customer's share of purchases and of views per category (of :meth:`customer`)."""
        names = [_name(c) for c in self.categories]
        return [*(f"share_purch_{n}" for n in names), *(f"share_view_{n}" for n in names)]

    def context_columns(self) -> list[str]:
        """The numeric context columns of :meth:`customer`, in a fixed order."""
        return [
            "n_purch", "spend", "days_purch", "n_view", "days_issue", "nps_last", "n_shown",
            "n_shown_7d", "n_accepted", "accept_rate", "tenure_days", "email_opt_in",
            "sms_opt_in", "push_opt_in",
            *(f"n_event_{_name(e)}" for e in self.event_types),
            *self.share_columns(),
        ]  # fmt: skip


def _pick(frame: pd.DataFrame, prefix: str, names: pd.Series) -> np.ndarray:
    """Per row, the column ``prefix + name`` of its offer's category (0 without one)."""
    out = np.zeros(len(frame))
    for name in names.unique():
        if name:
            mask = (names == name).to_numpy()
            out[mask] = frame.loc[mask, f"{prefix}{name}"].to_numpy(np.float64)
    return out
