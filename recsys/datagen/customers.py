"""The demo business's customers, answering offers as the generator's hidden model does.

A generated dataset can be answered for after its history ends: :class:`DemoCustomers` draws
the same catalogue and customers again from ``ground_truth/params.json`` (same seed, same
draws), and for any decision a service makes it gives the true acceptance probability and
draws the customer's visits and responses (clicks, accepts, conversions with revenue,
dismissals) with the acceptance model of :mod:`recsys.datagen.simulate`. A live experiment on
the demo therefore has real outcomes and a known truth.

What the live customers keep: offer and offer-type fatigue from what they are shown here
(halving every ``fatigue_half_life_days``). What they do not: the fatigue and complaints of
the generated history (they start rested and without a recent complaint).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.datagen.catalog import CATEGORIES, Catalog, build_catalog
from recsys.datagen.mechanics import (
    AcceptanceModel,
    Accumulator,
    VisitModel,
    draw_outcomes,
)
from recsys.datagen.params import DEVICES, OFFER_TYPES, OUTCOME_NAMES, SimParams
from recsys.datagen.population import Population, draw_population
from recsys.errors import DataError, NotFoundError

PARAMS_FILE = "params.json"


@dataclass(frozen=True)
class Visit:
    """One realtime visit: who, where, when, and the page's context."""

    customer_id: str
    touchpoint_id: str
    ts: datetime
    context: dict[str, str]


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _concat(blocks: Sequence[Population]) -> Population:
    names = [f.name for f in fields(Population)]
    return Population(**{n: np.concatenate([getattr(b, n) for b in blocks]) for n in names})


class DemoCustomers:
    """The customers of a generated dataset, live.

    Parameters
    ----------
    catalog, population, params : what the generator drew for the dataset
    """

    def __init__(self, catalog: Catalog, population: Population, params: SimParams):
        self.catalog, self.population, self.params = catalog, population, params
        self.acceptance = AcceptanceModel(catalog, population, params)
        self.visits = VisitModel(catalog, population, params)
        self.customer_ids = population.customer_ids()
        self._row = {cid: i for i, cid in enumerate(self.customer_ids)}
        self._offer = {o.offer_id: j for j, o in enumerate(catalog.offers)}
        self._tp = {t.touchpoint_id: k for k, t in enumerate(catalog.touchpoints)}
        self._category = {c: i for i, c in enumerate(CATEGORIES)}
        self._realtime = np.array([t.mode == "realtime" for t in catalog.touchpoints])
        self.fat_offer = np.zeros((len(population), catalog.n_offers), dtype=np.float32)
        self.fat_type = np.zeros((len(population), len(OFFER_TYPES)), dtype=np.float32)
        self._decay = np.float32(0.5 ** (1.0 / params.fatigue_half_life_days))

    @classmethod
    def from_dataset(cls, directory: Path | str) -> DemoCustomers:
        """The customers of the dataset generated into ``directory`` (or its ground truth)."""
        directory = Path(directory)
        path = directory / PARAMS_FILE
        if not path.exists():
            path = directory / "ground_truth" / PARAMS_FILE
        if not path.exists():
            raise NotFoundError(
                f"`directory` must hold ground_truth/{PARAMS_FILE} of a generated dataset "
                f"(recsys data generate), got {directory}"
            )
        doc = json.loads(path.read_text("utf-8"))
        seed, customers, days = int(doc["seed"]), int(doc["customers"]), int(doc["days"])
        block_size = int(doc["block_size"])
        params = SimParams(**{k: _tuples(v) for k, v in doc["simulation"].items()})
        start = datetime.fromisoformat(doc["start"]).replace(tzinfo=UTC)
        # the generator's draws, in its order: the catalogue, then each block's customers
        catalog = build_catalog(start, np.random.default_rng([seed, 0]))
        blocks = []
        for block in range(-(-customers // block_size)):
            first = block * block_size
            n = min(block_size, customers - first)
            rng = np.random.default_rng([seed, 1, block])
            blocks.append(draw_population(first + 1, n, catalog.start_s, days, rng))
        return cls(catalog, _concat(blocks), params)

    def _codes(self, kind: str, lookup: dict[str, int], values: Sequence[str]) -> np.ndarray:
        codes = np.fromiter((lookup.get(v, -1) for v in values), np.int64, len(values))
        if (codes < 0).any():
            unknown = sorted({v for v, c in zip(values, codes, strict=True) if c < 0})
            raise DataError(
                f"`{kind}` must name the demo's {kind}s, got unknown {unknown[:5]} "
                f"({len(unknown)} in all)"
            )
        return codes

    def p_accept(
        self,
        customer_ids: Sequence[str],
        offer_ids: Sequence[str],
        touchpoint_ids: Sequence[str],
        page_categories: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """True P(accept at position 1) of each (customer, offer, touchpoint, page category)
        in the customers' current state, shape (m,)."""
        cust = self._codes("customer_id", self._row, customer_ids)
        offer = self._codes("offer_id", self._offer, offer_ids)
        tp = self._codes("touchpoint_id", self._tp, touchpoint_ids)
        pages = page_categories if page_categories is not None else [None] * len(cust)
        page = np.array([self._category.get(p, -1) if p else -1 for p in pages], np.int64)
        none = np.zeros(len(cust))
        p = self.acceptance.p_accept(
            cust, tp, page, self.fat_offer[cust], self.fat_type[cust], none
        )
        return p[np.arange(len(cust)), offer]

    def visits_on(self, day: datetime, rng: np.random.Generator) -> list[Visit]:
        """The realtime visits of ``day`` (midnight UTC), in time order."""
        v = self.visits.draw(np.zeros(len(self.population)), rng)
        midnight = day.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        base = int(midnight.timestamp())
        out = []
        for i in np.argsort(v.sec, kind="stable"):
            context = {}
            if v.device[i] < len(DEVICES):
                context["device"] = DEVICES[v.device[i]]
            if v.page[i] >= 0:
                context["page_category"] = CATEGORIES[v.page[i]]
            out.append(
                Visit(
                    self.customer_ids[v.cust[i]],
                    self.catalog.touchpoints[v.tp[i]].touchpoint_id,
                    datetime.fromtimestamp(base + int(v.sec[i]), UTC),
                    context,
                )
            )
        return out

    def respond(self, shown: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        """The customers' responses to offers shown to them, and their fatigue from them.

        Parameters
        ----------
        shown : DataFrame
            One row per offer shown: ``decision_id``, ``customer_id``, ``offer_id``,
            ``touchpoint_id``, ``position`` (1-based), ``ts`` (aware datetime) and
            optionally ``page_category``.

        Returns
        -------
        DataFrame with columns decision_id, offer_id, customer_id, type (click, accept,
        convert, dismiss), ts (aware datetime), revenue (conversions only).
        """
        m = len(shown)
        cust = self._codes("customer_id", self._row, list(shown["customer_id"]))
        offer = self._codes("offer_id", self._offer, list(shown["offer_id"]))
        tp = self._codes("touchpoint_id", self._tp, list(shown["touchpoint_id"]))
        pages = shown["page_category"] if "page_category" in shown else [None] * m
        p = self.p_accept(
            list(shown["customer_id"]),
            list(shown["offer_id"]),
            list(shown["touchpoint_id"]),
            list(pages),
        )
        bias = np.array(self.params.position_bias)
        position = np.clip(shown["position"].to_numpy(np.int64), 1, len(bias))
        accepted = rng.random(m) < p * bias[position - 1]
        since_epoch = pd.to_datetime(shown["ts"], utc=True) - pd.Timestamp(0, tz=UTC)
        ts = (since_epoch // pd.Timedelta(seconds=1)).to_numpy(np.int64)
        out = Accumulator("decision", "offer", "ts", "outcome", "revenue")
        cat = self.catalog
        draw_outcomes(
            out,
            self.params,
            rng,
            np.arange(m),
            offer,
            ts,
            self._realtime[tp],
            accepted,
            cat.offer_type[offer],
            cat.offer_category[offer],
            self.population.spend_level[cust],
            self.fat_offer[cust, offer],
        )
        np.add.at(self.fat_offer, (cust, offer), 1.0)
        np.add.at(self.fat_type, (cust, cat.offer_type[offer]), 1.0)
        cols = out.arrays()
        rows = cols["decision"].astype(np.int64)
        return pd.DataFrame(
            {
                "decision_id": shown["decision_id"].to_numpy()[rows],
                "offer_id": shown["offer_id"].to_numpy()[rows],
                "customer_id": shown["customer_id"].to_numpy()[rows],
                "type": np.array(OUTCOME_NAMES, dtype=object)[cols["outcome"].astype(np.int64)],
                "ts": pd.to_datetime(cols["ts"].astype(np.int64), unit="s", utc=True),
                "revenue": cols["revenue"].astype(np.float64),
            }
        )

    def end_day(self) -> None:
        """A day passes: fatigue fades."""
        self.fat_offer *= self._decay
        self.fat_type *= self._decay
