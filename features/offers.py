"""Candidate offers as column arrays: what the request matrix reads of the offers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.errors import ConfigError

#: Offer feature -> the offers column it reads.
OFFER_COLUMNS = {
    "offer_id": "offer_id",
    "offer_type": "offer_type",
    "offer_category": "category",
    "offer_value": "value",
}


@dataclass(frozen=True)
class OfferArrays:
    """Candidate offers as column arrays, shape (m,) each."""

    offer_id: np.ndarray
    offer_type: np.ndarray
    category: np.ndarray
    value: np.ndarray  # float64, missing -> 1.0

    def __len__(self) -> int:
        return len(self.offer_id)

    def feature(self, name: str) -> np.ndarray:
        """The column of offer feature ``name`` (``offer_id``, ``offer_type``,
        ``offer_category``, ``offer_value``)."""
        columns = {
            "offer_id": self.offer_id,
            "offer_type": self.offer_type,
            "offer_category": self.category,
            "offer_value": self.value,
        }
        return columns[name]


def offer_arrays(offers: pd.DataFrame | pa.Table | Sequence[Mapping[str, Any]]) -> OfferArrays:
    """Offers (pandas / Arrow table, or dicts with the contract's offer columns) as arrays."""
    if isinstance(offers, pd.DataFrame):
        table = pa.Table.from_pandas(
            offers[[c for c in OFFER_COLUMNS.values() if c in offers.columns]],
            preserve_index=False,
        )
    elif isinstance(offers, pa.Table):
        table = offers
    elif isinstance(offers, Sequence):
        present = [c for c in OFFER_COLUMNS.values() if any(c in o for o in offers[:1])]
        table = pa.table({c: [o.get(c) for o in offers] for c in present})
    else:
        raise ConfigError(
            "`offers` must be a pandas DataFrame, a pyarrow Table or a list of offer dicts, "
            f"got {type(offers).__name__}"
        )
    n = table.num_rows
    if n and "offer_id" not in table.column_names:
        raise ConfigError(f"`offers` must have an 'offer_id' column, got {table.column_names}")

    def col(name: str, default: Any) -> np.ndarray:
        if name not in table.column_names:
            return np.full(n, default, dtype=object)
        return np.asarray(table.column(name).to_pylist(), dtype=object)

    value = col("value", 1.0)
    value = np.where(pd.isna(value), 1.0, value).astype(np.float64) if n else np.zeros(0)
    return OfferArrays(col("offer_id", None), col("offer_type", None), col("category", None), value)


__all__ = ["OFFER_COLUMNS", "OfferArrays", "offer_arrays"]
