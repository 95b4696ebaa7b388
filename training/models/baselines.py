"""Baselines: random, popularity per touchpoint, logistic regression."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from recsys.scoring import SklearnScorer
from training.examples import Examples
from training.models.base import Scorer, ServableScorer

logger = logging.getLogger(__name__)


class RandomScorer(Scorer):
    """Uniform random scores: the policy that picks any candidate with equal probability.

    Scores are a hash of (seed, decision_id, offer_id), so the same row always gets the same
    score and results do not depend on row order.
    """

    name = "random"
    probabilistic = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def fit(self, train: Examples, valid: Examples | None = None) -> RandomScorer:
        self.fitted_ = True
        return self

    def _predict(self, X: np.ndarray, meta: pd.DataFrame) -> np.ndarray:
        keys = (
            str(self.seed)
            + "|"
            + meta["decision_id"].astype(str)
            + "|"
            + meta["offer_id"].astype(str)
        )
        digests = [hashlib.blake2b(k.encode(), digest_size=8).digest() for k in keys]
        as_int = np.frombuffer(b"".join(digests), dtype=np.uint64)
        return as_int / float(np.iinfo(np.uint64).max)


class PopularityScorer(Scorer):
    """Acceptance rate of each offer at each touchpoint in the training data.

    Rates are smoothed towards the touchpoint's overall rate (``prior_weight`` pseudo-shows),
    and an offer never shown at a touchpoint gets that overall rate.
    """

    name = "popularity"

    def __init__(self, prior_weight: float = 20.0, seed: int = 0) -> None:
        self.prior_weight = prior_weight
        self.seed = seed

    def fit(self, train: Examples, valid: Examples | None = None) -> PopularityScorer:
        frame = pd.DataFrame(
            {
                "touchpoint_id": train.meta["touchpoint_id"].to_numpy(),
                "offer_id": train.meta["offer_id"].to_numpy(),
                "y": train.y,
            }
        )
        overall = float(frame["y"].mean())
        per_touchpoint = frame.groupby("touchpoint_id")["y"].mean()
        stats = frame.groupby(["touchpoint_id", "offer_id"])["y"].agg(["sum", "count"])
        prior = per_touchpoint.reindex(stats.index.get_level_values("touchpoint_id")).to_numpy()
        rate = (stats["sum"] + self.prior_weight * prior) / (stats["count"] + self.prior_weight)
        self.rates_ = rate.to_dict()
        self.touchpoint_rates_ = per_touchpoint.to_dict()
        self.overall_rate_ = overall
        return self

    def _predict(self, X: np.ndarray, meta: pd.DataFrame) -> np.ndarray:
        keys = zip(meta["touchpoint_id"], meta["offer_id"], strict=True)
        tps = meta["touchpoint_id"].map(self.touchpoint_rates_).fillna(self.overall_rate_)
        return np.array(
            [self.rates_.get(key, fallback) for key, fallback in zip(keys, tps, strict=True)]
        )


class LogisticRegressionScorer(ServableScorer):
    """scikit-learn pipeline: one-hot categoricals, imputed + standardised numerics, L2 logit.

    After ``fit`` the pipeline scores through :class:`recsys.scoring.SklearnScorer`, the
    scorer serving loads from the saved skops file.
    """

    name = "logistic_regression"
    flavour = SklearnScorer.reads
    model_file = "model.skops"

    def __init__(self, C: float = 1.0, max_iter: int = 500, seed: int = 0) -> None:
        self.C = C
        self.max_iter = max_iter
        self.seed = seed

    def fit(self, train: Examples, valid: Examples | None = None) -> LogisticRegressionScorer:
        categorical = list(train.categorical)
        numeric = [i for i in range(len(train.columns)) if i not in set(categorical)]
        transformers = []
        if categorical:
            transformers.append(
                (
                    "categorical",
                    Pipeline(
                        [
                            ("impute", SimpleImputer(strategy="constant", fill_value=-1.0)),
                            ("onehot", OneHotEncoder(handle_unknown="ignore", min_frequency=5)),
                        ]
                    ),
                    categorical,
                )
            )
        if numeric:
            transformers.append(
                (
                    "numeric",
                    Pipeline(
                        [
                            ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
                            ("scale", StandardScaler()),
                        ]
                    ),
                    numeric,
                )
            )
        self.pipeline_ = Pipeline(
            [
                ("columns", ColumnTransformer(transformers)),
                (
                    "logit",
                    LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed),
                ),
            ]
        )
        self.pipeline_.fit(train.X, train.y)
        self.scorer_ = SklearnScorer(self.pipeline_, train.columns)
        return self

    def _predict(self, X: np.ndarray, meta: pd.DataFrame) -> np.ndarray:
        return self.scorer_.score(X)

    def _save_model(self, path: Path) -> Path:
        """The fitted pipeline as a skops file."""
        return self.scorer_.save(path)

    def fit_summary(self) -> dict[str, float]:
        return {"iterations": float(self.pipeline_[-1].n_iter_[0])}

    def degenerate(self) -> str | None:
        """Every coefficient 0: the same score for every row."""
        if not np.any(self.pipeline_[-1].coef_):
            return "the logistic regression has every coefficient 0"
        return None

    def refit(self, examples: Examples) -> LogisticRegressionScorer:
        return LogisticRegressionScorer(C=self.C, max_iter=self.max_iter, seed=self.seed).fit(
            examples
        )
