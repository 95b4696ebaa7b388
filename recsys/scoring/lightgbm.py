"""LightGBM flavour: a booster read from LightGBM's text model file.

The one LightGBM scorer: training scores its validation, test and candidate rows with it and
serving scores decision matrices with it (and checks the compiled copy against it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np

from recsys.scoring.base import LoadOptions, ModelFiles, ModelScorer, check_width


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
