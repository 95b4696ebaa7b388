"""The scorer interface every model implements, and the one of models serving can load."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from recsys.errors import RecsysError
from recsys.scoring import ModelScorer
from training.examples import Examples


class NotFittedError(RecsysError, RuntimeError):
    """``predict`` was called before ``fit``."""


class Scorer(ABC):
    """Scores (customer, offer, touchpoint) rows; higher = more likely to be accepted.

    Like scikit-learn estimators: ``__init__`` only stores parameters, ``fit`` returns self,
    fitted attributes end in ``_``, ``predict`` checks it is fitted.
    """

    name: ClassVar[str]
    #: True if ``predict`` returns calibrated-ish probabilities (log loss and ECE make sense).
    probabilistic: ClassVar[bool] = True

    @abstractmethod
    def fit(self, train: Examples, valid: Examples | None = None) -> Scorer:
        """Learn from ``train``; ``valid`` may drive early stopping."""

    @abstractmethod
    def _predict(self, X: np.ndarray, meta: pd.DataFrame) -> np.ndarray: ...

    def predict(self, X: np.ndarray, meta: pd.DataFrame) -> np.ndarray:
        """Scores of the rows.

        Parameters
        ----------
        X : ndarray, shape (n_rows, n_columns)
        meta : DataFrame with at least ``decision_id``, ``touchpoint_id``, ``offer_id``

        Returns
        -------
        ndarray, shape (n_rows,), float64
        """
        if not self._is_fitted():
            raise NotFittedError(f"{type(self).__name__} must be fitted before predict")
        if len(meta) != X.shape[0]:
            raise ValueError(f"`meta` must have {X.shape[0]} rows, got {len(meta)}")
        return np.asarray(self._predict(X, meta), dtype=np.float64)

    def _is_fitted(self) -> bool:
        return any(k.endswith("_") and not k.startswith("_") for k in vars(self))


class ServableScorer(Scorer):
    """A scorer ``recsys train`` can register and serving can load.

    It predicts through the :mod:`recsys.scoring` scorer of its flavour (the one serving
    uses) and saves the file that scorer loads.
    """

    #: The :mod:`recsys.scoring` flavour of the file :meth:`save_model` writes.
    flavour: ClassVar[str]
    #: That file's name in the model directory.
    model_file: ClassVar[str]
    #: After ``fit``: the :mod:`recsys.scoring` scorer the model predicts through.
    scorer_: ModelScorer

    def flavour_scorer(self) -> ModelScorer:
        """The fitted model as serving scores it (decision matrix -> P(accept)): what the
        decision pipeline calls when training replays the served policy."""
        if not self._is_fitted():
            raise NotFittedError(f"{type(self).__name__} must be fitted before flavour_scorer")
        return self.scorer_

    def save_model(self, folder: Path) -> Path:
        """Write the fitted model to ``folder / model_file``; returns that path."""
        if not self._is_fitted():
            raise NotFittedError(f"{type(self).__name__} must be fitted before save_model")
        return self._save_model(folder / self.model_file)

    @abstractmethod
    def _save_model(self, path: Path) -> Path: ...

    def fit_summary(self) -> dict[str, float]:
        """Numbers about the fit, logged as metrics (e.g. ``best_iteration``); none by default."""
        return {}

    @abstractmethod
    def degenerate(self) -> str | None:
        """Why the fitted model cannot rank anything (e.g. "no split"), or None if it can."""

    @abstractmethod
    def refit(self, examples: Examples) -> ServableScorer:
        """A new model of the same kind and parameters fitted on ``examples`` alone, with what
        this fit learnt about its size (LightGBM: the number of trees early stopping chose)."""

    def feature_importance(self) -> pd.Series | None:
        """Importance per input column, largest first; None if the model has none per column."""
        return None
