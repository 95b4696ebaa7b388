"""Ground truth of a generated dataset: the true value of any policy, and the oracle's.

``ground_truth/truth.parquet`` holds, for every logged decision and every candidate offer
of it, ``p_accept`` = the true probability that the customer accepts the offer shown at
position 1 (no position bias), in the customer's state at decision time. The file's format
is documented in docs/demo-data.md ("Ground truth file"); training reads it with its own
reader, ``training.truth.read_truth``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.errors import DataError, NotFoundError

TRUTH_FILE = "truth.parquet"
TRUTH_COLUMNS = ("decision_id", "offer_id", "p_accept")


def load_truth(directory: Path | str, decision_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Read ``truth.parquet`` from ``directory`` (the ``ground_truth`` folder or its parent).

    Parameters
    ----------
    directory : path
    decision_ids : iterable of str, optional
        Read only these decisions (e.g. a test split); the full truth of a large dataset
        (about 140 candidate rows per customer over 90 days) may not fit in memory.

    Returns
    -------
    DataFrame with columns decision_id, offer_id, p_accept.
    """
    directory = Path(directory)
    path = directory / TRUTH_FILE
    if not path.exists():
        path = directory / "ground_truth" / TRUTH_FILE
    if not path.exists():
        raise NotFoundError(
            f"`directory` must contain {TRUTH_FILE} or ground_truth/{TRUTH_FILE}, got {directory}"
        )
    if decision_ids is None:
        return pd.read_parquet(path, columns=list(TRUTH_COLUMNS))
    wanted = pa.array(sorted(set(decision_ids)), pa.string())
    table = pq.read_table(
        path, columns=list(TRUTH_COLUMNS), filters=pc.field("decision_id").isin(wanted)
    )
    return table.to_pandas()


def policy_value(truth: pd.DataFrame, chosen: pd.DataFrame) -> float:
    """Mean true P(accept) of the offer a policy chooses, over the decisions it chose for.

    Parameters
    ----------
    truth : DataFrame with decision_id, offer_id, p_accept (from :func:`load_truth`)
    chosen : DataFrame with decision_id, offer_id; one row per decision

    Raises
    ------
    DataError
        If ``chosen`` lacks a column, has a decision twice, or picks an offer that is not a
        candidate of its decision (the message names the first such pair).
    """
    _require(chosen, ("decision_id", "offer_id"), "chosen")
    if chosen.empty:
        raise DataError("`chosen` must have at least one row, got 0")
    dup = chosen["decision_id"].duplicated()
    if dup.any():
        raise DataError(
            "`chosen` must have one offer per decision, got decision "
            f"{chosen.loc[dup, 'decision_id'].iloc[0]!r} twice"
        )
    merged = chosen[["decision_id", "offer_id"]].merge(
        truth[list(TRUTH_COLUMNS)], on=["decision_id", "offer_id"], how="left"
    )
    missing = merged["p_accept"].isna()
    if missing.any():
        row = merged.loc[missing].iloc[0]
        raise DataError(
            f"offer {row['offer_id']!r} chosen for decision {row['decision_id']!r} is not a "
            f"candidate of that decision ({int(missing.sum())} such rows)"
        )
    return float(merged["p_accept"].mean())


def oracle_value(truth: pd.DataFrame) -> float:
    """Mean over decisions of the best candidate's true P(accept)."""
    _require(truth, TRUTH_COLUMNS, "truth")
    return float(truth.groupby("decision_id", sort=False)["p_accept"].max().mean())


def oracle_choice(truth: pd.DataFrame) -> pd.DataFrame:
    """The oracle's offer per decision: DataFrame with decision_id, offer_id."""
    _require(truth, TRUTH_COLUMNS, "truth")
    best = truth.loc[truth.groupby("decision_id", sort=False)["p_accept"].idxmax()]
    return best[["decision_id", "offer_id"]].reset_index(drop=True)


def _require(frame: pd.DataFrame, columns: tuple[str, ...], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"`{name}` must have columns {list(columns)}, got {list(frame.columns)}")
