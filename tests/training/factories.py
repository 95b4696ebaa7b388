"""A small simulated world with known acceptance probabilities, for training tests.

Customers have two numeric features and a segment; each offer's acceptance probability
depends on them (segment x offer interaction), so a model that uses the features beats
popularity. A softmax logging policy shows 2-offer slates and records the propensity of the
first offer (marginal) and of the second (given the first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from recsys.catalog import Catalog, EligibilityRule, Offer, Touchpoint, TouchpointOffers
from recsys.decision import FeatureBlock
from training.served import PointInTimeFeatures, PointInTimeHistory, Replay, epoch_us

OFFERS = ("o1", "o2", "o3", "o4", "o5", "o6")
OFFER_VALUE = np.array([10.0, 20.0, 5.0, 15.0, 8.0, 12.0])
TOUCHPOINTS = ("web_cart", "email")
FEATURES = ("x1", "x2", "segment", "touchpoint_code", "offer_code", "offer_value")
CATEGORICAL = (2, 3, 4)
#: The catalogue of the served policy: ``o6`` only for segments below 6 (a rule the
#: eligibility check applies), ``o4`` weighted up (priority = P x value x weight).
RESTRICTED_OFFER, RESTRICTED_BELOW_SEGMENT = "o6", 6
WEIGHT = {"o4": 1.5}


def catalog() -> Catalog:
    return Catalog(
        [
            Offer(
                offer_id,
                offer_id,
                "discount",
                value=float(value),
                weight=WEIGHT.get(offer_id, 1.0),
                eligibility=(EligibilityRule("segment", "<", RESTRICTED_BELOW_SEGMENT),)
                if offer_id == RESTRICTED_OFFER
                else (),
            )
            for offer_id, value in zip(OFFERS, OFFER_VALUE, strict=True)
        ],
        [Touchpoint("web_cart", "web"), Touchpoint("email", "email")],
    )


class FrameMatrix:
    """The decision pipeline's ``MatrixBuilder`` for the factory's columns: the customer's
    ``x1, x2, segment`` with the touchpoint's and offer's codes and the offer's value."""

    def build(
        self,
        features: FeatureBlock,
        offers: TouchpointOffers,
        contexts: Sequence[Mapping[str, Any]],
        now: datetime,
        pair_customer: np.ndarray,
        pair_offer: np.ndarray,
    ) -> np.ndarray:
        offer_ids = offers.offer_ids[pair_offer]
        return np.column_stack(
            [
                features.column("x1")[pair_customer],
                features.column("x2")[pair_customer],
                features.column("segment")[pair_customer],
                np.full(len(pair_customer), TOUCHPOINTS.index(offers.touchpoint.touchpoint_id)),
                [OFFERS.index(o) for o in offer_ids],
                offers.value[pair_offer],
            ]
        ).astype(np.float64)


def _p_accept(x1: np.ndarray, x2: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Acceptance probability, shape (n, n_offers)."""
    base = np.array([-3.0, -3.2, -2.8, -3.1, -3.4, -3.0])
    w1 = np.array([1.2, -1.0, 0.2, 0.0, 0.8, -0.5])
    w2 = np.array([-0.4, 0.9, 0.0, 1.1, -0.8, 0.3])
    bonus = np.zeros((len(x1), len(OFFERS)))
    bonus[np.arange(len(x1)), segment % len(OFFERS)] = 1.8  # each segment loves one offer
    logit = base + np.outer(x1, w1) + np.outer(x2, w2) + bonus
    return 1 / (1 + np.exp(-logit))


def frame_encoder(frame: pd.DataFrame) -> FrameEncoder:
    return FrameEncoder()


class FrameEncoder:
    """The factory frame's columns are already numeric: the model matrix is a column pick."""

    spec_version = "test-1"
    columns = FEATURES
    categorical = CATEGORICAL

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return frame[list(self.columns)].to_numpy(dtype=np.float64)

    def metadata(self) -> dict:
        return {
            "offer_code": {o: i for i, o in enumerate(OFFERS)},
            "touchpoint_code": {t: i for i, t in enumerate(TOUCHPOINTS)},
        }


@dataclass(frozen=True)
class World:
    frame: pd.DataFrame  # training-set frame: META_COLUMNS + FEATURES
    truth: pd.DataFrame  # decision_id, offer_id, p_accept for every candidate

    def candidates(
        self, logged: pd.DataFrame, encoder: FrameEncoder
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Every offer for every logged round, with the offer columns swapped in."""
        rows = logged.loc[logged.index.repeat(len(OFFERS))].reset_index(drop=True)
        codes = np.tile(np.arange(len(OFFERS)), len(logged))
        rows["offer_code"] = codes
        rows["offer_id"] = np.array(OFFERS)[codes]
        rows["offer_value"] = OFFER_VALUE[codes]
        return rows, encoder.transform(rows)

    def replay(self, logged: pd.DataFrame, encoder: FrameEncoder) -> Replay:
        """The served policy's world: the catalogue, each round's own features at its time,
        and the contacts and acceptances of every earlier decision."""
        names = ("x1", "x2", "segment")
        n = len(logged)
        numeric = np.vstack(
            [logged[list(names)].to_numpy(np.float64), np.full((1, len(names)), np.nan)]
        )
        as_of = np.append(logged["ts"].to_numpy("datetime64[us]"), np.datetime64("NaT", "us"))
        block = FeatureBlock(
            ids=tuple(str(i) for i in range(n + 1)),
            numeric_names=names,
            numeric=numeric,
            text=MappingProxyType({}),
            stats=MappingProxyType({}),
            as_of=as_of,
            cold_start=np.arange(n + 1) == n,
            spec_version=encoder.spec_version,
        )
        points = {
            (c, epoch_us(ts)): i
            for i, (c, ts) in enumerate(zip(logged["customer_id"], logged["ts"], strict=True))
        }
        shown = self.frame[["customer_id", "offer_id", "ts"]]
        accepted = self.frame.loc[self.frame["label"] == 1, ["customer_id", "offer_id", "ts"]]
        return Replay(
            catalog(),
            PointInTimeFeatures(block, points, cold=n),
            PointInTimeHistory(shown, accepted),
            FrameMatrix(),
        )


def make_world(decisions: int = 6000, seed: int = 0, temperature: float = 1.5) -> World:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=decisions)
    x2 = rng.normal(size=decisions)
    segment = rng.integers(0, 12, decisions)
    tp = rng.integers(0, len(TOUCHPOINTS), decisions)
    p = _p_accept(x1, x2, segment)
    # Logging policy: softmax of a noisy guess at the value; position 2 from the rest.
    guess = np.log(p) + rng.normal(scale=0.8, size=p.shape)
    logits = guess / temperature
    prob1 = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob1 /= prob1.sum(axis=1, keepdims=True)
    first = np.array([rng.choice(len(OFFERS), p=row) for row in prob1])
    prob2 = prob1.copy()
    prob2[np.arange(decisions), first] = 0
    prob2 /= prob2.sum(axis=1, keepdims=True)
    second = np.array([rng.choice(len(OFFERS), p=row) for row in prob2])
    ts = pd.Timestamp("2024-01-01") + pd.to_timedelta(
        np.sort(rng.uniform(0, 60, decisions)), unit="D"
    )
    ids = np.array([f"d{i:06d}" for i in range(decisions)])
    parts = []
    for position, chosen, prob in ((1, first, prob1), (2, second, prob2)):
        accept_p = p[np.arange(decisions), chosen] * (1.0 if position == 1 else 0.7)
        label = (rng.random(decisions) < accept_p).astype(np.int8)
        parts.append(
            pd.DataFrame(
                {
                    "decision_id": ids,
                    "ts": ts,
                    "customer_id": [f"c{i % 2000}" for i in range(decisions)],
                    "touchpoint_id": np.array(TOUCHPOINTS)[tp],
                    "offer_id": np.array(OFFERS)[chosen],
                    "position": position,
                    "propensity": prob[np.arange(decisions), chosen],
                    "policy": "softmax",
                    "label": label,
                    "revenue": np.where(label == 1, OFFER_VALUE[chosen], 0.0),
                    "x1": x1,
                    "x2": x2,
                    "segment": segment,
                    "touchpoint_code": tp,
                    "offer_code": chosen,
                    "offer_value": OFFER_VALUE[chosen],
                }
            )
        )
    frame = pd.concat(parts, ignore_index=True)
    truth = pd.DataFrame(
        {
            "decision_id": np.repeat(ids, len(OFFERS)),
            "offer_id": np.tile(OFFERS, decisions),
            "p_accept": p.ravel(),
        }
    )
    return World(frame, truth)
