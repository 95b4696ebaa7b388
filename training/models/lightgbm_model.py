"""LightGBM scorer: binary objective (default) or lambdarank over decision slates."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from recsys.scoring import LightGBMScorer as LightGBMFlavour
from training.examples import Examples
from training.models.base import NotFittedError, ServableScorer
from training.progress import LightGBMProgress, progress_bar

logger = logging.getLogger(__name__)


class LightGBMScorer(ServableScorer):
    """Gradient-boosted trees with native categorical handling and early stopping.

    After ``fit`` the model (trees up to the best iteration) scores through
    :class:`recsys.scoring.LightGBMScorer`, the scorer serving loads from the saved file.

    Parameters
    ----------
    objective : "binary" or "lambdarank"
        lambdarank groups rows by ``decision_id`` (the shown slate) and returns ranking
        scores, not probabilities.
    params : dict
        Passed to ``lightgbm.train``; ``seed`` and determinism flags are set here so the same
        data and seed give the same model.
    """

    name = "lightgbm"
    flavour = LightGBMFlavour.reads
    model_file = "model.txt"

    def __init__(
        self,
        objective: str = "binary",
        params: dict[str, Any] | None = None,
        num_boost_round: int = 500,
        early_stopping_rounds: int = 30,
        seed: int = 0,
    ) -> None:
        self.objective = objective
        self.params = params or {}
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.seed = seed

    @property
    def probabilistic(self) -> bool:  # type: ignore[override]
        return self.objective == "binary"

    def _dataset(self, examples: Examples, reference: lgb.Dataset | None = None) -> lgb.Dataset:
        group = None
        if self.objective == "lambdarank":
            # Rows of a decision are contiguous (sorted by ts, decision_id upstream).
            ids = examples.meta["decision_id"].to_numpy()
            change = np.flatnonzero(ids[1:] != ids[:-1]) + 1
            group = np.diff(np.concatenate([[0], change, [len(ids)]]))
        return lgb.Dataset(
            examples.X,
            label=examples.y,
            group=group,
            feature_name=list(examples.columns),
            categorical_feature=list(examples.categorical),
            reference=reference,
            free_raw_data=True,
            # Unknown categories are coded -1, which LightGBM reads as missing (on purpose).
            params={"verbose": -1},
        )

    def fit(self, train: Examples, valid: Examples | None = None) -> LightGBMScorer:
        params = {
            "verbose": -1,
            **self.params,
            "objective": self.objective,
            "seed": self.seed,
            "deterministic": True,
            "force_col_wise": True,
        }
        if self.objective == "binary":
            params.setdefault("metric", "binary_logloss")
        else:
            params.setdefault("metric", "ndcg")
            params.setdefault("eval_at", [1, 3])
        train_set = self._dataset(train)
        bar = progress_bar(f"fitting lightgbm ({len(train):,} rows)", self.num_boost_round, "round")
        callbacks = [lgb.log_evaluation(period=0), LightGBMProgress(bar)]
        valid_sets = []
        if valid is not None and len(valid) > 0:
            valid_sets = [self._dataset(valid, reference=train_set)]
            callbacks.append(
                lgb.early_stopping(
                    self.early_stopping_rounds, first_metric_only=True, verbose=False
                )
            )
        try:
            trained = lgb.train(
                params,
                train_set,
                num_boost_round=self.num_boost_round,
                valid_sets=valid_sets,
                valid_names=["valid"] * len(valid_sets),
                callbacks=callbacks,
            )
        finally:
            bar.close()  # early stopping ends the rounds before the total
        self.best_iteration_ = int(trained.best_iteration or trained.current_iteration())
        logger.info("LightGBM stopped at %d trees", self.best_iteration_)
        # The served model: trees up to the best iteration, as saved and loaded by serving.
        self.booster_ = lgb.Booster(
            model_str=trained.model_to_string(num_iteration=self.best_iteration_)
        )
        self.scorer_ = LightGBMFlavour(
            self.booster_, train.columns, num_threads=int(self.params.get("num_threads", 0))
        )
        return self

    def _predict(self, X: np.ndarray, meta: pd.DataFrame) -> np.ndarray:
        return self.scorer_.score(X)

    def _save_model(self, path: Path) -> Path:
        """The booster (best iteration) in LightGBM's text format."""
        return self.scorer_.save(path)

    def fit_summary(self) -> dict[str, float]:
        """``best_iteration``, ``num_trees`` of the saved model and its ``num_splits``."""
        return {
            "best_iteration": float(self.best_iteration_),
            "num_trees": float(self.booster_.num_trees()),
            "num_splits": float(self.booster_.feature_importance(importance_type="split").sum()),
        }

    def degenerate(self) -> str | None:
        """A model of one tree (nothing learnt after the first step) or without any split."""
        summary = self.fit_summary()
        if summary["num_splits"] == 0:
            return f"LightGBM has no split in its {summary['num_trees']:g} trees"
        if summary["num_trees"] <= 1:
            return (
                f"LightGBM stopped at {summary['num_trees']:g} tree (early stopping found "
                "nothing to learn after the first)"
            )
        return None

    def refit(self, examples: Examples) -> LightGBMScorer:
        """The same parameters with ``best_iteration_`` trees, no early stopping."""
        if not self._is_fitted():
            raise NotFittedError(f"{type(self).__name__} must be fitted before refit")
        return LightGBMScorer(
            objective=self.objective,
            params=self.params,
            num_boost_round=self.best_iteration_,
            early_stopping_rounds=self.early_stopping_rounds,
            seed=self.seed,
        ).fit(examples)

    def feature_importance(self) -> pd.Series:
        """Total gain per column, largest first."""
        gain = self.booster_.feature_importance(importance_type="gain")
        return pd.Series(gain, index=self.booster_.feature_name()).sort_values(ascending=False)
