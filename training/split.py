"""Time split: consecutive train / validation / test periods by decision time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.errors import DataError


@dataclass(frozen=True)
class TimeSplit:
    """Boundaries: train ts < valid_start <= valid ts < test_start <= test ts."""

    valid_start: pd.Timestamp
    test_start: pd.Timestamp

    def assign(self, ts: pd.Series) -> np.ndarray:
        """``"train"``, ``"valid"`` or ``"test"`` per row, shape (n_rows,)."""
        out = np.full(len(ts), "train", dtype=object)
        out[(ts >= self.valid_start).to_numpy()] = "valid"
        out[(ts >= self.test_start).to_numpy()] = "test"
        return out


def time_split(ts: pd.Series, valid_fraction: float, test_fraction: float) -> TimeSplit:
    """Cut the decisions' time range at quantiles of decision time.

    Rows of one decision share a timestamp, so a decision never straddles two periods.

    Raises
    ------
    DataError
        If a period would be empty (too little data or all decisions at one instant).
    """
    if ts.empty:
        raise DataError("cannot split an empty training set by time")
    values = np.sort(ts.to_numpy())
    valid_start = ts.quantile(1 - valid_fraction - test_fraction, interpolation="lower")
    test_start = ts.quantile(1 - test_fraction, interpolation="lower")
    split = TimeSplit(valid_start, test_start)
    counts = pd.Series(split.assign(ts)).value_counts()
    for period in ("train", "valid", "test"):
        if counts.get(period, 0) == 0:
            raise DataError(
                f"the {period} period of the time split is empty ({len(ts)} rows between "
                f"{values[0]} and {values[-1]}); widen `data.start`/`data.end` or load more data"
            )
    return split
