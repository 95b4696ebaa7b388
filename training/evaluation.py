"""Offline metrics of one scorer on the test period, overall and per touchpoint."""

from __future__ import annotations

import numpy as np

from training.examples import Examples
from training.metrics import auc, auc_interval, logloss, ranking_metrics, reliability


def metric_key(name: str) -> str:
    """MLflow-safe metric name: ``hit@3`` -> ``hit_at_3``."""
    return name.replace("@", "_at_")


def offline_metrics(
    test: Examples,
    score: np.ndarray,
    *,
    probabilistic: bool,
    ks: tuple[int, ...],
    bins: int = 10,
    bootstrap_samples: int = 300,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """``{"auc": ..., "auc.lower": ..., "auc.web_cart": ..., "hit_at_3": ..., ...}``.

    ``auc.lower`` / ``auc.upper``: the overall AUC's seeded percentile bootstrap interval.

    Parameters
    ----------
    test : Examples, n_rows
    score : ndarray, shape (n_rows,)
    probabilistic : bool
        Log loss and ECE only for scorers whose scores are probabilities.
    """
    out: dict[str, float] = {}
    touchpoints = test.meta["touchpoint_id"].to_numpy()
    decisions = test.meta["decision_id"].to_numpy()
    subsets = [("", np.ones(len(test), dtype=bool))]
    subsets += [(f".{tp}", touchpoints == tp) for tp in sorted(set(touchpoints))]
    for suffix, mask in subsets:
        y, s = test.y[mask], score[mask]
        values = {"examples": float(mask.sum()), "positive_rate": float(y.mean()), "auc": auc(y, s)}
        if probabilistic:
            values["logloss"] = logloss(y, s)
            values["ece"] = reliability(y, s, bins).ece
            values["mean_score"] = float(s.mean())
        for key, value in ranking_metrics(decisions[mask], y, s, ks).items():
            values[metric_key(key)] = value
        for key, value in values.items():
            out[f"{key}{suffix}"] = value
    out["auc.lower"], out["auc.upper"] = auc_interval(
        test.y, score, bootstrap_samples=bootstrap_samples, confidence=confidence, seed=seed
    )
    return out
