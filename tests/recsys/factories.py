"""Small real parts for decision-path and service tests.

The decision pipeline's ports filled with real, small things:

a catalogue of a few offers and touchpoints, an in-memory feature source that serves
:class:`FeatureBlock` columns as the online store does (unknown customer -> cold start), a
numeric decision matrix of customer x offer features, and a tiny LightGBM model really
trained on such matrices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from recsys.arbitration import EpsilonGreedy
from recsys.catalog import Catalog, TouchpointOffers, catalog_from_records
from recsys.decision import (
    DecisionPipeline,
    FeatureBlock,
    MatrixScorer,
    ModelInfo,
    ServedModel,
    SingleArm,
)
from recsys.eventlog import SQLiteEventLog
from recsys.scoring import LightGBMScorer

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
SPEC_VERSION = "test-spec-1"
CATEGORIES = ("electronics", "fashion", "home", "beauty")
OFFER_TYPES = ("discount", "cross_sell", "upsell", "loyalty_reward", "service", "content")
COLUMNS = (
    "spend_90d",
    "purchases_90d",
    "email_opt_in",
    "offer_value",
    "offer_weight",
    *(f"type_{t}" for t in OFFER_TYPES),
    "category_affinity",
    "channel_email",
    "ctx_mobile",
)

TOUCHPOINTS = [
    {"touchpoint_id": "web_home", "channel": "web", "stage": "awareness", "slots": 2},
    {"touchpoint_id": "app_home", "channel": "app", "stage": "consideration", "slots": 1},
    {
        "touchpoint_id": "email_weekly",
        "channel": "email",
        "stage": "post_purchase",
        "slots": 2,
        "mode": "batch",
        "consent_column": "email_opt_in",
    },
]

OFFERS = [
    {
        "offer_id": "o_tv",
        "name": "TV deal",
        "offer_type": "discount",
        "category": "electronics",
        "value": 3.0,
    },
    {
        "offer_id": "o_dress",
        "name": "Dress 10%",
        "offer_type": "discount",
        "category": "fashion",
        "value": 1.5,
    },
    {
        "offer_id": "o_sofa",
        "name": "Sofa upsell",
        "offer_type": "upsell",
        "category": "home",
        "value": 2.0,
        "touchpoints": ["web_home", "email_weekly"],
    },
    {
        "offer_id": "o_capped",
        "name": "Capped headphones",
        "offer_type": "cross_sell",
        "category": "electronics",
        "value": 50.0,
        "cap_per_customer": 2,
        "cap_window_days": 7,
    },
    {
        "offer_id": "o_gold",
        "name": "Gold lounge",
        "offer_type": "loyalty_reward",
        "category": "beauty",
        "value": 40.0,
        "eligibility": [{"feature": "loyalty_tier", "op": "in", "value": ["gold", "platinum"]}],
    },
    {
        "offer_id": "o_big_spender",
        "name": "Big spender gift",
        "offer_type": "upsell",
        "category": "home",
        "value": 30.0,
        "eligibility": [{"feature": "spend_90d", "op": ">=", "value": 500}],
    },
    {
        "offer_id": "o_expired",
        "name": "Summer sale",
        "offer_type": "discount",
        "category": "fashion",
        "value": 100.0,
        "end_at": "2026-01-31T23:59:59",
    },
    {
        "offer_id": "o_future",
        "name": "Xmas sale",
        "offer_type": "discount",
        "category": "fashion",
        "value": 100.0,
        "start_at": "2026-12-01T00:00:00+00:00",
    },
    {
        "offer_id": "o_newsletter",
        "name": "Newsletter tips",
        "offer_type": "content",
        "category": "home",
        "value": 0.5,
        "fallback": True,
    },
]

CUSTOMERS: dict[str, dict[str, Any]] = {
    "c1": {
        "spend_90d": 820.0,
        "purchases_90d": 6,
        "email_opt_in": True,
        "loyalty_tier": "gold",
        "affinity_electronics": 0.7,
        "affinity_fashion": 0.1,
        "affinity_home": 0.2,
        "affinity_beauty": 0.0,
    },
    "c2": {
        "spend_90d": 40.0,
        "purchases_90d": 1,
        "email_opt_in": False,
        "loyalty_tier": "basic",
        "affinity_electronics": 0.0,
        "affinity_fashion": 0.8,
        "affinity_home": 0.1,
        "affinity_beauty": 0.1,
    },
    "c3": {
        "spend_90d": 300.0,
        "purchases_90d": 3,
        "email_opt_in": True,
        "loyalty_tier": None,
        "affinity_electronics": 0.2,
        "affinity_fashion": 0.2,
        "affinity_home": 0.5,
        "affinity_beauty": 0.1,
    },
}
COLD_START = {
    "spend_90d": 0.0,
    "purchases_90d": 0,
    "email_opt_in": False,
    "loyalty_tier": None,
    "is_cold_start": True,
    **{f"affinity_{c}": 0.25 for c in CATEGORIES},
}


def make_catalog(offers: Sequence[Mapping[str, Any]] = OFFERS) -> Catalog:
    return catalog_from_records(offers, TOUCHPOINTS)


def block_of(
    ids: Sequence[str], vectors: Sequence[Mapping[str, Any]], cold: Sequence[bool], spec: str
) -> FeatureBlock:
    """A feature block of plain vectors: numbers as the numeric matrix, the rest as text."""
    names = sorted({k for v in vectors for k in v if k != "is_cold_start"})
    numeric = [
        k
        for k in names
        if all(isinstance(v.get(k), int | float | bool) or v.get(k) is None for v in vectors)
    ]
    text = [k for k in names if k not in numeric]
    matrix = np.array(
        [[np.nan if v.get(k) is None else float(v[k]) for k in numeric] for v in vectors],
        dtype=np.float64,
    ).reshape(len(ids), len(numeric))
    return FeatureBlock(
        ids=tuple(ids),
        numeric_names=tuple(numeric),
        numeric=matrix,
        text={k: _objects([v.get(k) for v in vectors]) for k in text},
        stats={},
        as_of=np.array(
            [np.datetime64("NaT") if c else np.datetime64(NOW.replace(tzinfo=None), "us")
             for c in cold] or [], dtype="datetime64[us]"
        ),
        cold_start=np.array(cold, dtype=bool),
        spec_version=spec,
    )  # fmt: skip


def _objects(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


@dataclass
class DictFeatureSource:
    """In-memory online store: latest vector per customer, cold start for unknown ids."""

    vectors: dict[str, dict[str, Any]] = field(default_factory=lambda: dict(CUSTOMERS))
    version: str = SPEC_VERSION

    def read(self, customer_ids: Sequence[str]) -> FeatureBlock:
        found = [self.vectors.get(c) for c in customer_ids]
        return block_of(
            customer_ids,
            [v if v is not None else COLD_START for v in found],
            [v is None for v in found],
            self.version,
        )

    def spec_version(self) -> str:
        return self.version


class TestMatrix:
    """Customer features broadcast over offers, offer attributes, one cross; (p, 14)."""

    def build(
        self,
        features: FeatureBlock,
        offers: TouchpointOffers,
        contexts: Sequence[Mapping[str, Any]],
        now: datetime,
        pair_customer: np.ndarray,
        pair_offer: np.ndarray,
    ) -> np.ndarray:
        p = pair_customer.shape[0]
        out = np.zeros((p, len(COLUMNS)), dtype=np.float64)
        spend = np.nan_to_num(features.column("spend_90d").astype(np.float64))
        purchases = np.nan_to_num(features.column("purchases_90d").astype(np.float64))
        opt_in = np.nan_to_num(features.column("email_opt_in").astype(np.float64))
        out[:, 0] = spend[pair_customer]
        out[:, 1] = purchases[pair_customer]
        out[:, 2] = opt_in[pair_customer] != 0
        cands = [offers.offers[j] for j in pair_offer.tolist()]
        out[:, 3] = [o.value for o in cands]
        out[:, 4] = [o.weight for o in cands]
        type_col = {t: 5 + i for i, t in enumerate(OFFER_TYPES)}
        out[np.arange(p), [type_col[o.offer_type] for o in cands]] = 1.0
        affinity = {c: np.nan_to_num(features.column(f"affinity_{c}").astype(np.float64))
                    for c in CATEGORIES}  # fmt: skip
        out[:, 11] = [
            affinity[o.category][i] if o.category in affinity else 0.0
            for o, i in zip(cands, pair_customer.tolist(), strict=True)
        ]
        out[:, 12] = float(offers.touchpoint.channel == "email")
        out[:, 13] = [float(contexts[i].get("device") == "mobile") for i in pair_customer.tolist()]
        return out


def train_tiny_model(seed: int = 0, n: int = 4000, trees: int = 20) -> lgb.Booster:
    """A LightGBM model trained on synthetic rows where acceptance follows category affinity."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, len(COLUMNS)))
    x[:, 0] = rng.gamma(2.0, 150.0, n)
    x[:, 1] = rng.poisson(3, n)
    x[:, 2] = rng.integers(0, 2, n)
    x[:, 3] = rng.choice([0.5, 1.5, 2.0, 3.0, 30.0, 40.0, 50.0], n)
    x[:, 4] = 1.0
    x[np.arange(n), 5 + rng.integers(0, len(OFFER_TYPES), n)] = 1.0
    x[:, 11] = rng.random(n)
    x[:, 12] = rng.integers(0, 2, n)
    x[:, 13] = rng.integers(0, 2, n)
    logit = -2.5 + 3.0 * x[:, 11] + 0.002 * x[:, 0] - 0.02 * x[:, 3]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    data = lgb.Dataset(x, label=y, feature_name=list(COLUMNS), free_raw_data=False)
    params = {
        "objective": "binary",
        "num_leaves": 7,
        "learning_rate": 0.2,
        "verbose": -1,
        "seed": seed,
        "num_threads": 1,
        "deterministic": True,
    }
    return lgb.train(params, data, num_boost_round=trees)


_BOOSTER: lgb.Booster | None = None


def tiny_scorer() -> LightGBMScorer:
    global _BOOSTER
    if _BOOSTER is None:
        _BOOSTER = train_tiny_model()
    return LightGBMScorer(_BOOSTER, COLUMNS)


def write_model_dir(path: Path, booster: lgb.Booster | None = None) -> Path:
    """A model folder as the registry hands it over: native model + feature_spec.json."""
    import json

    path.mkdir(parents=True, exist_ok=True)
    (booster or tiny_scorer().booster).save_model(str(path / "model.txt"))
    (path / "feature_spec.json").write_text(
        json.dumps(
            {
                "feature_spec_version": SPEC_VERSION,
                "columns": list(COLUMNS),
                "model_file": "model.txt",
            }
        )
    )
    return path


class FixedClock:
    def __init__(self, now: datetime = NOW):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_pipeline(
    log: SQLiteEventLog | None,
    *,
    epsilon: float = 0.0,
    catalog: Catalog | None = None,
    features: DictFeatureSource | None = None,
    clock: FixedClock | None = None,
    seed: int = 7,
) -> DecisionPipeline:
    return DecisionPipeline(
        catalog=catalog or make_catalog(),
        features=features or DictFeatureSource(),
        history=log if log is not None else NO_HISTORY,
        sink=log,
        arms=SingleArm(tiny_model(), EpsilonGreedy(epsilon)),
        seed=seed,
        clock=clock or FixedClock(),
    )


def tiny_model(spec_version: str = SPEC_VERSION) -> ServedModel:
    info = ModelInfo("offer-ranker", "test", spec_version)
    return ServedModel(info, TestMatrix(), MatrixScorer(tiny_scorer(), info))


class _NoHistory:
    def contact_history(self, customer_ids: Sequence[str], since: datetime) -> dict[str, Any]:
        return {}


NO_HISTORY = _NoHistory()


def decide(pipeline: DecisionPipeline, request: Any, **kwargs: Any) -> Any:
    """The decision of one request (a batch of one)."""
    (decision,) = pipeline.run([request], **kwargs).decisions()
    return decision


def decide_many(pipeline: DecisionPipeline, requests: Any, **kwargs: Any) -> list[Any]:
    return pipeline.run(requests, **kwargs).decisions()
