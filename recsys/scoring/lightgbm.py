"""LightGBM flavour: a booster read from LightGBM's text model file.

The one LightGBM scorer: training scores its validation, test and candidate rows with it and
serving scores decision matrices with it (and checks the compiled copy against it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from recsys.scoring.base import LoadOptions, ModelFiles, ModelScorer, check_width

#: LightGBM's ``kZeroThreshold`` (the float 1e-35): when it predicts, LightGBM reads any
#: |x| <= this as 0, and it puts a split "at zero" at -this or +this.
LIGHTGBM_ZERO = float(np.float32(1e-35))


@dataclass
class LightGBMScorer(ModelScorer):
    """P(accept) from a LightGBM booster.

    Parameters
    ----------
    booster : lightgbm.Booster
    columns : tuple of str
        The model's column order (its feature spec).
    num_threads : int
        Threads per ``score`` call; 1 in the service (it runs many calls at once), <= 0 for
        LightGBM's default (all cores), as in training.

    Examples
    --------
    >>> files = ModelFiles(Path("model.txt"), ("spend_90d", "offer_value"))
    >>> scorer = LightGBMScorer.load(files, LoadOptions())
    >>> scorer.score(np.array([[120.0, 3.0], [0.0, 1.5]])).shape
    (2,)
    """

    name = "lightgbm"
    reads = "lightgbm"

    booster: lgb.Booster
    columns: tuple[str, ...]
    num_threads: int = 1

    def __post_init__(self) -> None:
        self.columns = tuple(self.columns)
        check_width(self.name, self.booster.num_feature(), self.columns)

    @classmethod
    def load(cls, files: ModelFiles, options: LoadOptions) -> LightGBMScorer:
        return cls(lgb.Booster(model_file=str(files.model_file)), files.columns)

    def _score(self, matrix: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(matrix, num_threads=self.num_threads))

    def save(self, path: Path) -> Path:
        """Write the booster in LightGBM's text format (what :meth:`load` reads)."""
        self.booster.save_model(str(path))
        return path

    def check_matrix(self, n: int, seed: int = 0) -> np.ndarray:
        """Rows that cross every split of the model (:func:`check_rows`)."""
        return check_rows(self.booster, n, seed)


def check_rows(booster: lgb.Booster, n: int, seed: int = 0) -> np.ndarray:
    """Rows that exercise the model: every cell is a split value of its feature (just
    below, at or above a numeric threshold; in or out of a category set) or missing.

    Returns
    -------
    ndarray, shape (n, booster.num_feature())
    """
    values: list[set[float]] = [set() for _ in range(booster.num_feature())]

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" not in node:
            return
        feature = node["split_feature"]
        threshold = node["threshold"]
        if isinstance(threshold, str):  # categorical: "1||4||7"
            cats = [float(c) for c in threshold.split("||") if c]
            values[feature].update(cats)
            values[feature].update(c + 1 for c in cats)
        else:
            values[feature].update((threshold, np.nextafter(threshold, np.inf), threshold - 1))
        walk(node["left_child"])
        walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    rng = np.random.default_rng(seed)
    rows = np.empty((n, len(values)))
    for j, seen in enumerate(values):
        # A split at zero (threshold -1e-35 or 1e-35) is checked at 0 and on either side, not
        # at 1e-35 itself: LightGBM reads that as 0 and lleaves does not, so the two differ
        # there, and only there: on values within 1e-35 of zero, which the features here
        # (counts, days, amounts, rates) do not take.
        seen = {0.0 if abs(v) <= LIGHTGBM_ZERO else v for v in seen}
        pool = np.array(sorted(seen) or [0.0])
        rows[:, j] = rng.choice(pool, size=n)
    rows[rng.random(rows.shape) < 0.05] = np.nan
    return rows
