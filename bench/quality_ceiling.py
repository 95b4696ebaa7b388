"""Information ceilings of the decision-quality bench (``bench/bench_quality.py``): the demo's
TRUE acceptance model with some of a customer's hidden terms replaced by what the logs tell.

Bench rows, not a product feature. Each row is an "oracle" that knows the generator's
acceptance model (:class:`recsys.datagen.mechanics.AcceptanceModel`, rebuilt from
``ground_truth/params.json``) and every term of it as the truth has it (base, responsiveness,
satisfaction, loyalty tier, channel habit, touchpoint stage, page context, fatigue,
complaints), except:

- ``taste`` (Dirichlet(0.4) category shares), replaced by its posterior mean given the
  category counts of the customer's events strictly before the round: purchases, product
  views and page views (``TASTE_EVENTS``; a review repeats a purchase's category and is not
  counted again). Page and product views are drawn from the taste with 20% uniform noise;
  the posterior treats them as exact draws (Dirichlet(0.4 + counts)), a slight
  over-confidence;
- ``price_sensitivity`` (Beta(2, 2)), replaced by its prior mean 0.5.

The other rows know one of the two and estimate the other, to split the gap between the
ceiling and the oracle. A row's policy picks, per round, the candidate with the highest
estimated P(accept) (acceptance) or estimated P(accept) x value (revenue); its true value
is that candidate's true P(accept) (x value) like every other row's. Each row plugs in point
estimates (not the posterior expectation of P(accept)), so it is a slight underestimate of
the best a policy with that information can do.

The estimated logit is the true one (``logit(p_accept)`` of the ground truth; the truth's
clip at 0.95 is never reached on the demo) minus the customer x offer terms with the true
``taste`` and ``price_sensitivity`` plus the same terms with the estimates.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.datagen.catalog import CATEGORIES
from recsys.datagen.customers import DemoCustomers
from recsys.datagen.mechanics import AcceptanceModel
from recsys.datagen.population import TASTE_CONCENTRATION

#: Category-bearing events that are draws from the customer's taste.
TASTE_EVENTS = ("purchase", "product_view", "page_view")
PRIOR_PRICE_SENSITIVITY = 0.5  # mean of Beta(2, 2)

CEILING = "oracle from observed history (taste posterior, price sensitivity 0.5)"
TASTE_KNOWN = "oracle, true taste, price sensitivity 0.5"
PRICE_KNOWN = "oracle, taste posterior, true price sensitivity"
#: Row name -> (taste known, price sensitivity known).
ROWS = {CEILING: (False, False), TASTE_KNOWN: (True, False), PRICE_KNOWN: (False, True)}


def category_counts(con: Any, points: pd.DataFrame) -> np.ndarray:
    """Per row of ``points`` (``customer_id, ts``): the counts of ``TASTE_EVENTS`` per
    category (``CATEGORIES`` order) strictly before ``ts``, shape (len(points), n_categories).
    """
    points = points[["customer_id", "ts"]].reset_index(drop=True)
    points = points.assign(ts=pd.to_datetime(points["ts"]), _row=np.arange(len(points)))
    views = ", ".join(f"'{e}'" for e in TASTE_EVENTS if e != "purchase")
    con.register("_ceiling_points", points)
    try:
        counts = con.execute(
            f"""
            WITH events AS (
                SELECT customer_id, ts, category FROM transactions WHERE category IS NOT NULL
                UNION ALL
                SELECT customer_id, ts, category FROM interactions
                WHERE category IS NOT NULL AND event_type IN ({views}))
            SELECT p._row, e.category, count(*) AS n
            FROM _ceiling_points p JOIN events e
              ON e.customer_id = p.customer_id AND e.ts < p.ts
            GROUP BY p._row, e.category
            """
        ).fetchdf()
    finally:
        con.unregister("_ceiling_points")
    out = np.zeros((len(points), len(CATEGORIES)))
    column = counts["category"].map({c: i for i, c in enumerate(CATEGORIES)})
    known = column.notna().to_numpy()
    out[counts["_row"].to_numpy()[known], column[known].to_numpy(np.int64)] = counts["n"][known]
    return out


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class HistoryOracle:
    """The ceiling rows' estimated P(accept) of a round's candidates.

    Parameters
    ----------
    dataset : folder of the generated dataset (with ``ground_truth/params.json``)
    """

    def __init__(self, dataset: Path) -> None:
        demo = DemoCustomers.from_dataset(dataset)
        self.catalog, self.population, self.params = demo.catalog, demo.population, demo.params
        self.row = {cid: i for i, cid in enumerate(self.population.customer_ids())}
        self.offer = {o.offer_id: j for j, o in enumerate(self.catalog.offers)}

    def _static(self, cust: np.ndarray, taste: np.ndarray, price: np.ndarray) -> np.ndarray:
        """The customer x offer terms (n, n_offers) of customers ``cust`` with this taste
        and price sensitivity."""
        pop = self.population
        sub = dataclasses.replace(
            pop,
            **{f.name: getattr(pop, f.name)[cust] for f in dataclasses.fields(pop)},
        )
        sub = dataclasses.replace(sub, taste=taste, price_sensitivity=price)
        return AcceptanceModel(self.catalog, sub, self.params).static_logit.astype(np.float64)

    def scores(
        self, con: Any, logged: pd.DataFrame, candidates: pd.DataFrame, truth: pd.DataFrame
    ) -> dict[str, np.ndarray]:
        """Row name -> estimated P(accept) of each ``candidates`` row (``decision_id,
        offer_id``), shape (len(candidates),); ``logged`` gives each decision's
        ``customer_id, ts``, ``truth`` each candidate's true ``p_accept``."""
        points = logged[["decision_id", "customer_id", "ts"]].drop_duplicates("decision_id")
        counts = category_counts(con, points)
        taste_post = TASTE_CONCENTRATION + counts
        taste_post /= taste_post.sum(axis=1, keepdims=True)
        cust = points["customer_id"].map(self.row).to_numpy(np.int64)
        true_taste = self.population.taste[cust]
        true_price = self.population.price_sensitivity[cust]
        prior_price = np.full(len(cust), PRIOR_PRICE_SENSITIVITY)
        true_static = self._static(cust, true_taste, true_price)

        pairs = candidates[["decision_id", "offer_id"]].merge(
            truth[["decision_id", "offer_id", "p_accept"]],
            on=["decision_id", "offer_id"],
            how="left",
            validate="1:1",
        )
        if pairs["p_accept"].isna().any():
            missing = pairs.loc[pairs["p_accept"].isna()].iloc[0]
            raise ValueError(
                f"`truth` must hold every candidate, got none for decision "
                f"{missing['decision_id']!r}, offer {missing['offer_id']!r}"
            )
        r = pairs["decision_id"].map(
            pd.Series(np.arange(len(points)), index=points["decision_id"].to_numpy())
        )
        r_idx = r.to_numpy(np.int64)
        o_idx = pairs["offer_id"].map(self.offer).to_numpy(np.int64)
        true_logit = _logit(pairs["p_accept"].to_numpy(np.float64))
        out = {}
        for name, (taste_known, price_known) in ROWS.items():
            static = self._static(
                cust,
                true_taste if taste_known else taste_post,
                true_price if price_known else prior_price,
            )
            shift = static[r_idx, o_idx] - true_static[r_idx, o_idx]
            out[name] = _sigmoid(true_logit + shift)
        return out
