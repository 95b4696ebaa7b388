"""Encoded examples of one split: the matrix the models see and the row metadata beside it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Row metadata every split carries next to the matrix (from the training set frame).
META_COLUMNS = (
    "decision_id",
    "ts",
    "customer_id",
    "touchpoint_id",
    "offer_id",
    "position",
    "propensity",
    "policy",
    "label",
    "revenue",
)


@dataclass(frozen=True)
class Examples:
    """One split of encoded examples.

    Attributes
    ----------
    X : ndarray, shape (n_rows, n_columns), float32 or float64
        Model input in ``columns`` order; categorical columns hold integer codes (NaN = missing).
    y : ndarray, shape (n_rows,), int8
        Binary label (a positive outcome within the attribution window).
    meta : DataFrame, n_rows rows
        ``META_COLUMNS`` of the same rows, index 0..n_rows-1.
    columns : tuple of str, n_columns
    categorical : tuple of int
        Indexes into ``columns`` of the categorical columns.
    """

    X: np.ndarray
    y: np.ndarray
    meta: pd.DataFrame
    columns: tuple[str, ...]
    categorical: tuple[int, ...]

    def __post_init__(self) -> None:
        n = self.X.shape[0]
        if self.X.ndim != 2 or self.X.shape[1] != len(self.columns):
            raise ValueError(
                f"`X` must have shape (n_rows, {len(self.columns)}), got {self.X.shape}"
            )
        if self.y.shape != (n,) or len(self.meta) != n:
            raise ValueError(
                f"`y` and `meta` must have {n} rows, got {self.y.shape[0]} and {len(self.meta)}"
            )

    def __len__(self) -> int:
        return int(self.X.shape[0])

    def subset(self, mask: np.ndarray) -> Examples:
        """The rows where ``mask`` (bool, shape (n_rows,)) is true."""
        return Examples(
            X=self.X[mask],
            y=self.y[mask],
            meta=self.meta.loc[mask].reset_index(drop=True),
            columns=self.columns,
            categorical=self.categorical,
        )
