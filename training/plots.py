"""Evaluation plots logged with each run (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from training.metrics import Reliability


def feature_importance(importance: pd.Series, path: Path, top: int = 30) -> Path:
    """Horizontal bars of total gain of the ``top`` most important columns."""
    data = importance.head(top)[::-1]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(data) + 1)))
    ax.barh(data.index, data.to_numpy())
    ax.set_xlabel("total gain")
    ax.set_title("LightGBM feature importance")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def calibration(curves: dict[str, Reliability], path: Path) -> Path:
    """Reliability diagram: observed positive rate against mean predicted probability."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    upper = 0.0
    for name, curve in curves.items():
        if len(curve.mean_predicted) == 0:
            continue
        ax.plot(
            curve.mean_predicted,
            curve.observed_rate,
            marker="o",
            label=f"{name} (ECE {curve.ece:.4f})",
        )
        upper = max(upper, float(curve.mean_predicted.max()), float(curve.observed_rate.max()))
    upper = upper or 1.0
    ax.plot([0, upper], [0, upper], linestyle="--", color="grey", label="perfect")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed positive rate")
    ax.set_title("Calibration on the test period")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def lift(
    touchpoint: np.ndarray, y: np.ndarray, score: np.ndarray, path: Path, bins: int = 10
) -> Path:
    """Per touchpoint: positive rate of each score decile divided by the touchpoint's rate."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for tp in sorted(set(touchpoint)):
        mask = touchpoint == tp
        if mask.sum() < bins or y[mask].sum() == 0:
            continue
        ranks = pd.Series(score[mask]).rank(method="first", ascending=False).to_numpy()
        decile = np.minimum(((ranks - 1) * bins / mask.sum()).astype(int), bins - 1)
        rate = pd.Series(y[mask]).groupby(decile).mean()
        ax.plot(rate.index + 1, rate.to_numpy() / y[mask].mean(), marker="o", label=str(tp))
    ax.axhline(1.0, color="grey", linestyle="--")
    ax.set_xlabel("score decile (1 = highest)")
    ax.set_ylabel("lift over the touchpoint's positive rate")
    ax.set_title("Lift per touchpoint (LightGBM, test period)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
