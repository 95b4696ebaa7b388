"""Offline metrics of scores against logged labels: AUC, log loss, calibration, hit@k, NDCG@k."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss, roc_auc_score


def _check(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(
            f"`y` and `score` must be 1-d of equal length, got {y.shape} and {p.shape}"
        )
    return y, p


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y, score = _check(y, score)
    if len(np.unique(y)) < 2:
        return float("nan")
    return float(roc_auc_score(y, score))


def auc_interval(
    y: np.ndarray,
    score: np.ndarray,
    *,
    bootstrap_samples: int = 300,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC (rows resampled, seeded); NaNs with one class.

    Each resample is the Mann-Whitney statistic with the rows' resample counts as weights on
    the scores sorted once (ties count one half), so a resample costs O(n_rows).
    """
    y, score = _check(y, score)
    if bootstrap_samples < 10:
        raise ValueError(f"`bootstrap_samples` must be >= 10, got {bootstrap_samples}")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}")
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan")
    order = np.argsort(score, kind="mergesort")
    y_sorted = y[order]
    # Start of each run of equal scores in the sorted order.
    starts = np.flatnonzero(np.r_[True, np.diff(score[order]) != 0])
    rng = np.random.default_rng(seed)
    n = len(y)
    values = np.empty(bootstrap_samples)
    for b in range(bootstrap_samples):
        counts = np.bincount(rng.integers(0, n, n), minlength=n)[order].astype(np.float64)
        pos = np.add.reduceat(counts * y_sorted, starts)
        neg = np.add.reduceat(counts * (1 - y_sorted), starts)
        below = np.cumsum(neg) - neg
        total = pos.sum() * neg.sum()
        values[b] = np.sum(pos * (below + 0.5 * neg)) / total if total > 0 else np.nan
    alpha = (1 - confidence) / 2
    lower, upper = np.nanquantile(values, [alpha, 1 - alpha])
    return float(lower), float(upper)


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    """Binary log loss of probabilities ``p`` (clipped to [1e-7, 1 - 1e-7])."""
    y, p = _check(y, p)
    if len(y) == 0:
        return float("nan")
    return float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))


@dataclass(frozen=True)
class Reliability:
    """Reliability curve on equal-width bins of predicted probability.

    Attributes
    ----------
    mean_predicted, observed_rate, count : ndarray, shape (n_nonempty_bins,)
    ece : float
        Expected calibration error: sum over bins of count/n * |observed - predicted|.
    """

    mean_predicted: np.ndarray
    observed_rate: np.ndarray
    count: np.ndarray
    ece: float


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> Reliability:
    """Calibration of probabilities ``p`` (shape (n,)) against labels ``y`` (shape (n,))."""
    if bins < 2:
        raise ValueError(f"`bins` must be >= 2, got {bins}")
    y, p = _check(y, p)
    if len(y) == 0:
        empty = np.array([])
        return Reliability(empty, empty, empty, float("nan"))
    index = np.clip((p * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    sum_p = np.bincount(index, weights=p, minlength=bins)
    sum_y = np.bincount(index, weights=y, minlength=bins)
    keep = count > 0
    mean_p = sum_p[keep] / count[keep]
    rate = sum_y[keep] / count[keep]
    ece = float(np.sum(count[keep] / len(y) * np.abs(rate - mean_p)))
    return Reliability(mean_p, rate, count[keep], ece)


def ranking_metrics(
    group: np.ndarray, y: np.ndarray, score: np.ndarray, ks: tuple[int, ...]
) -> dict[str, float]:
    """hit@k and NDCG@k of the rows of each group (decision slate) ranked by score.

    Only groups with at least one positive and at least two rows count (a single shown offer
    cannot be ranked). Returns ``{"hit@1": ..., "ndcg@1": ..., "ranked_groups": n}``; NaN
    metrics when no group qualifies.
    """
    y, score = _check(y, score)
    frame = pd.DataFrame({"g": np.asarray(group), "y": y, "s": score})
    stats = frame.groupby("g", sort=False)["y"].agg(["sum", "size"])
    keep = stats.index[(stats["sum"] > 0) & (stats["size"] > 1)]
    frame = frame[frame["g"].isin(keep)]
    out: dict[str, float] = {"ranked_groups": float(len(keep))}
    if frame.empty:
        for k in ks:
            out[f"hit@{k}"] = float("nan")
            out[f"ndcg@{k}"] = float("nan")
        return out
    # Ties are broken against the positive (pessimistic), so a constant score gains nothing.
    frame = frame.sort_values(["g", "s", "y"], ascending=[True, False, True], kind="mergesort")
    rank = frame.groupby("g", sort=False).cumcount().to_numpy()
    positives = frame.groupby("g", sort=False)["y"].sum()
    gain = frame["y"].to_numpy() / np.log2(rank + 2)
    for k in ks:
        top = rank < k
        hits = frame.loc[top].groupby("g", sort=False)["y"].max()
        out[f"hit@{k}"] = float(hits.reindex(positives.index, fill_value=0).mean())
        dcg = (
            pd.Series(np.where(top, gain, 0.0), index=frame["g"].to_numpy()).groupby(level=0).sum()
        )
        ideal_len = np.minimum(positives.to_numpy(), k).astype(int)
        discounts = np.cumsum(1.0 / np.log2(np.arange(k) + 2))
        idcg = discounts[ideal_len - 1]
        out[f"ndcg@{k}"] = float(np.mean(dcg.reindex(positives.index).to_numpy() / idcg))
    return out
