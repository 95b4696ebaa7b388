"""The decision-quality peers of ``bench/bench_quality.py``, on the same history features.

Each peer learns from logged decisions before the test period and scores every candidate of
every test round; the bench then picks, per round, the candidate with the highest score (the
peer's exploit action):

- ``LightGBMPeer``: P(accept) of every shown offer, on the context, the offer and their
  crosses, position as a feature (scored at position 1), early stopping on the validation
  period; the revenue objective ranks by P x value.
- ``LinUCBPeer`` (MABWiser): one ridge model per offer (every shown offer, position as a
  feature) on a compact context: the customer's purchase and view shares per category, the
  touchpoint and the page category. The exploit action is the ridge mean (``alpha`` adds
  LinUCB's exploration bonus at decision time and is 0 here). Rewards scale linearly through
  ridge, so the revenue objective ranks by expectation x value.
- ``VWPeer`` (Vowpal Wabbit ``--cb_explore_adf``): one contextual-bandit example per logged
  first-shown decision (its candidates as actions, the logged offer with its propensity and
  cost = -reward), shared x action quadratic features, one pass in time order; the exploit
  action is the most probable one of its PMF. The revenue objective trains a second learner
  on reward = accept x value (scaled by the mean value).

Settings tried on the demo (10,000 customers x 90 days, seed 7, every test decision), the
best kept; normalised acceptance (random 0, oracle 1): VW learning rate 0.5 (VW's default)
0.33 on 2,000 customers x 60 days (0.01 0.56 there), 0.03 0.63, 0.01 0.72, 0.003 0.76, 0.001 0.76; LinUCB on every
history feature and every request/customer category 0.57-0.60 (l2 1-30, scaled or not), on the
compact context 0.71 (l2 30, unscaled). The test rounds served to choose them, which can
only favour the peers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

import lightgbm as lgb
import numpy as np
import pandas as pd
import vowpalwabbit
from mabwiser.mab import MAB, LearningPolicy
from quality_features import CONTEXT_CATEGORIES, CROSS_COLUMNS

OFFER_CATEGORIES = ("offer_id", "offer_type", "category")
OBJECTIVES = ("acceptance", "revenue")


class Peer(Protocol):
    """A peer: learns from logged rows before the test period, scores test candidates."""

    name: str

    def fit(self, rows: pd.DataFrame) -> None: ...

    def score(self, candidates: pd.DataFrame, objective: str) -> np.ndarray: ...


def _categorical(frame: pd.DataFrame, columns: Sequence[str], levels: dict) -> pd.DataFrame:
    out = pd.DataFrame(index=frame.index)
    for column in columns:
        values = frame[column].astype(object).where(frame[column].notna(), "none").astype(str)
        out[column] = pd.Categorical(values, categories=levels[column])
    return out


def category_levels(frames: Sequence[pd.DataFrame]) -> dict[str, list[str]]:
    """Every level of every categorical column over ``frames`` (fixed before fitting)."""
    levels = {}
    for column in (*CONTEXT_CATEGORIES, *OFFER_CATEGORIES):
        seen: set[str] = set()
        for frame in frames:
            seen |= set(
                frame[column].astype(object).where(frame[column].notna(), "none").astype(str)
            )
        levels[column] = sorted(seen)
    return levels


class LightGBMPeer:
    name = "LightGBM (history features)"

    def __init__(self, context: Sequence[str], levels: dict, threads: int, seed: int) -> None:
        self.context, self.levels, self.threads, self.seed = list(context), levels, threads, seed
        self.booster: lgb.Booster | None = None

    def _matrix(self, rows: pd.DataFrame, position: np.ndarray) -> pd.DataFrame:
        X = rows[[*self.context, "value", *CROSS_COLUMNS]].astype(np.float64)
        X = X.assign(position=position)
        return pd.concat(
            [X, _categorical(rows, (*CONTEXT_CATEGORIES, *OFFER_CATEGORIES), self.levels)], axis=1
        )

    def fit(self, shown: pd.DataFrame) -> None:
        """``shown``: every shown offer before the test period, with ``label``, ``position``
        and ``period`` (train / valid)."""
        X = self._matrix(shown, shown["position"].to_numpy(np.float64))
        y = shown["label"].to_numpy()
        train = (shown["period"] == "train").to_numpy()
        params = {
            "objective": "binary", "learning_rate": 0.05, "num_leaves": 31,
            "min_data_in_leaf": 100, "feature_fraction": 0.8, "lambda_l2": 1.0,
            "num_threads": self.threads, "seed": self.seed, "deterministic": True,
            "verbosity": -1,
        }  # fmt: skip
        dtrain = lgb.Dataset(X[train], y[train])
        dvalid = lgb.Dataset(X[~train], y[~train], reference=dtrain)
        self.booster = lgb.train(
            params,
            dtrain,
            num_boost_round=1000,
            valid_sets=[dvalid],
            callbacks=[lgb.early_stopping(50, verbose=False)],
        )

    def score(self, candidates: pd.DataFrame, objective: str) -> np.ndarray:
        assert self.booster is not None, "fit first"
        X = self._matrix(candidates, np.ones(len(candidates)))
        p = np.asarray(self.booster.predict(X, num_iteration=self.booster.best_iteration))
        return p * candidates["value"].to_numpy() if objective == "revenue" else p


def _one_hot(frame: pd.DataFrame, columns: Sequence[str], levels: dict) -> np.ndarray:
    parts = []
    for column in columns:
        codes = _categorical(frame, [column], levels)[column].cat.codes.to_numpy()
        parts.append(np.eye(len(levels[column]))[codes])
    return np.hstack(parts)


class LinUCBPeer:
    name = "MABWiser LinUCB"
    categories = ("touchpoint_id", "ctx_page_category")

    def __init__(self, context: Sequence[str], levels: dict, seed: int, l2: float = 30.0) -> None:
        self.context, self.levels, self.seed = list(context), levels, seed
        self.arms = levels["offer_id"]
        policy = LearningPolicy.LinUCB(alpha=0.0, l2_lambda=l2, scale=False)
        self.mab = MAB(self.arms, policy, seed=seed)

    def _contexts(self, rows: pd.DataFrame, position: np.ndarray) -> np.ndarray:
        numeric = rows[self.context].to_numpy(np.float64)
        one_hot = _one_hot(rows, self.categories, self.levels)
        return np.hstack([numeric, one_hot, (position - 1)[:, None]])

    def fit(self, shown: pd.DataFrame) -> None:
        contexts = self._contexts(shown, shown["position"].to_numpy(np.float64))
        self.mab.fit(shown["offer_id"].astype(str).to_numpy(), shown["label"].to_numpy(), contexts)

    def score(self, candidates: pd.DataFrame, objective: str) -> np.ndarray:
        """Each candidate's expectation under its own arm's model, for its round's context."""
        rounds = candidates.drop_duplicates("decision_id")
        contexts = self._contexts(rounds, np.ones(len(rounds)))
        expectations = self.mab.predict_expectations(contexts)
        if isinstance(expectations, dict):  # a single round
            expectations = [expectations]
        table = pd.DataFrame(expectations, index=rounds["decision_id"].to_numpy())
        rows = table.index.get_indexer(pd.Index(candidates["decision_id"]))
        cols = table.columns.get_indexer(pd.Index(candidates["offer_id"].astype(str)))
        if (cols < 0).any():
            raise ValueError(
                f"offers without an arm: {sorted(set(candidates['offer_id'][cols < 0]))}"
            )
        e = table.to_numpy(np.float64)[rows, cols]
        return e * candidates["value"].to_numpy() if objective == "revenue" else e


_TOKEN = re.compile(r"[\s|:]+")


def _token(value: object) -> str:
    return "none" if value is None or value != value else _TOKEN.sub("_", str(value))


class VWPeer:
    name = "VW cb_explore_adf"

    def __init__(self, context: Sequence[str], seed: int, learning_rate: float = 0.003) -> None:
        self.context, self.seed, self.learning_rate = list(context), seed, learning_rate
        self.learners: dict[str, vowpalwabbit.Workspace] = {}

    def _shared(self, rounds: pd.DataFrame) -> list[str]:
        numeric = rounds[self.context].to_numpy(np.float64)
        names = [_token(c) for c in self.context]
        cats = [rounds[c].astype(object).map(_token).to_numpy() for c in CONTEXT_CATEGORIES]
        out = []
        for i in range(len(rounds)):
            num = " ".join(f"{n}:{v:.5g}" for n, v in zip(names, numeric[i], strict=True) if v)
            cat = " ".join(
                f"{c}={values[i]}" for c, values in zip(CONTEXT_CATEGORIES, cats, strict=True)
            )
            out.append(f"shared |s {cat} {num}")
        return out

    def _actions(self, candidates: pd.DataFrame) -> list[str]:
        cols = [candidates[c].astype(object).map(_token).to_numpy() for c in OFFER_CATEGORIES]
        numeric = candidates[["value", *CROSS_COLUMNS]].to_numpy(np.float64)
        numeric[:, 0] = numeric[:, 0] / 10.0
        names = ("value", *CROSS_COLUMNS)
        out = []
        for i in range(len(candidates)):
            cat = " ".join(f"{c}={v[i]}" for c, v in zip(OFFER_CATEGORIES, cols, strict=True))
            num = " ".join(f"{n}:{x:.5g}" for n, x in zip(names, numeric[i], strict=True) if x)
            out.append(f"|a {cat} {num}")
        return out

    def _examples(self, candidates: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray]:
        """Shared lines per round, action lines per candidate, and each round's first row."""
        ids = candidates["decision_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        bounds = np.r_[starts, len(candidates)]
        return self._shared(candidates.iloc[starts]), self._actions(candidates), bounds

    def fit(self, slates: pd.DataFrame, objectives: Sequence[str] = OBJECTIVES) -> None:
        """``slates``: every candidate of every logged first-shown decision before the test
        period, a decision's rows together, in time order; ``chosen`` marks the logged offer
        (with its ``label`` and ``propensity``)."""
        shared, actions, bounds = self._examples(slates)
        chosen = slates["chosen"].to_numpy(bool)
        reward = slates["label"].to_numpy(np.float64)
        prob = slates["propensity"].to_numpy(np.float64)
        value = slates["value"].to_numpy(np.float64)
        for objective in objectives:
            scale = value / value[chosen].mean() if objective == "revenue" else np.ones(len(value))
            learner = vowpalwabbit.Workspace(
                f"--cb_explore_adf -q sa -l {self.learning_rate} --quiet --random_seed {self.seed}"
            )
            for r in range(len(shared)):
                lines = [shared[r]]
                for i in range(bounds[r], bounds[r + 1]):
                    label = f"0:{-reward[i] * scale[i]:.6g}:{prob[i]:.6g} " if chosen[i] else ""
                    lines.append(label + actions[i])
                learner.learn(lines)
            self.learners[objective] = learner

    def score(self, candidates: pd.DataFrame, objective: str) -> np.ndarray:
        """The learner's probability of each candidate (its exploit action has the highest);
        ``candidates`` holds a round's rows together."""
        learner = self.learners[objective]
        shared, actions, bounds = self._examples(candidates)
        out = np.zeros(len(candidates))
        for r in range(len(shared)):
            pmf = learner.predict([shared[r], *actions[bounds[r] : bounds[r + 1]]])
            out[bounds[r] : bounds[r + 1]] = pmf
        return out
