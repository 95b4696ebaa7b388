"""Read the ground-truth file of generated data (its format: docs/demo-data.md, "Ground truth file").

Training evaluates policies against the true acceptance probabilities when the data came with
them. The file is the interface: training reads it here and never imports the generator that
writes it (``recsys.datagen``), so any source that writes the same columns can be evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.errors import DataError, NotFoundError

TRUTH_DIR = "ground_truth"
TRUTH_FILE = "truth.parquet"
TRUTH_SCHEMA = pa.schema(
    [("decision_id", pa.string()), ("offer_id", pa.string()), ("p_accept", pa.float64())]
)


def truth_path(directory: Path | str) -> Path | None:
    """``directory/truth.parquet`` or ``directory/ground_truth/truth.parquet``, whichever exists."""
    directory = Path(directory)
    for path in (directory / TRUTH_FILE, directory / TRUTH_DIR / TRUTH_FILE):
        if path.is_file():
            return path
    return None


def read_truth(directory: Path | str, decision_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """The ground truth in ``directory`` (the ``ground_truth`` folder or its parent).

    Parameters
    ----------
    directory : path
    decision_ids : iterable of str, optional
        Read only these decisions (e.g. those of a training set); the whole file of a large
        dataset (about 140 candidate rows per customer over 90 days) may not fit in memory.

    Returns
    -------
    DataFrame with columns decision_id (str), offer_id (str), p_accept (float in [0, 1]),
    one row per candidate offer of each decision.

    Raises
    ------
    NotFoundError
        If neither ``directory/truth.parquet`` nor ``directory/ground_truth/truth.parquet`` exists.
    DataError
        If the file lacks a column, a column has another type, or a ``p_accept`` is outside
        [0, 1] (the message names the column, what was expected and what came).
    """
    path = truth_path(directory)
    if path is None:
        raise NotFoundError(
            f"`directory` must contain {TRUTH_FILE} or {TRUTH_DIR}/{TRUTH_FILE}, got {directory}"
        )
    _check_schema(pq.read_schema(path), path)
    columns = TRUTH_SCHEMA.names
    if decision_ids is None:
        table = pq.read_table(path, columns=columns)
    else:
        wanted = pa.array(sorted(set(decision_ids)), pa.string())
        table = pq.read_table(path, columns=columns, filters=pc.field("decision_id").isin(wanted))
    frame = table.to_pandas()
    outside = ~frame["p_accept"].between(0.0, 1.0)
    if outside.any():
        row = frame.loc[outside].iloc[0]
        raise DataError(
            f"`p_accept` in {path} must be in [0, 1], got {float(row['p_accept'])} for decision "
            f"{row['decision_id']!r}, offer {row['offer_id']!r}"
        )
    return frame


def _check_schema(schema: pa.Schema, path: Path) -> None:
    for field in TRUTH_SCHEMA:
        if field.name not in schema.names:
            raise DataError(
                f"{path} must have column `{field.name}` ({field.type}), got columns {schema.names}"
            )
        found = schema.field(field.name).type
        if not _compatible(found, field.type):
            raise DataError(f"`{field.name}` in {path} must be {field.type}, got {found}")


def _compatible(found: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_string(expected):
        return pa.types.is_string(found) or pa.types.is_large_string(found)
    return pa.types.is_floating(found)
