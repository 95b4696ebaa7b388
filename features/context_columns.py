"""The request context (``decisions.context``, a JSON object) as typed ``ctx_<key>`` columns.

The keys and their types are read from the data (a key is numeric when all its values are
JSON numbers or booleans); one SQL pass flattens them, on DuckDB, for any engine's result.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import duckdb
import pandas as pd
import pyarrow as pa

from features import definitions as d


def context_keys(con: duckdb.DuckDBPyConnection, source: str) -> list[tuple[str, bool]]:
    """(key, is_numeric) of every context key in ``source`` (a table or a subquery).

    A key is numeric when all its non-null values are JSON numbers or booleans.
    """
    rows = con.execute(
        f"""
        WITH kv AS (
            SELECT unnest(json_keys(c)) AS k, c FROM (SELECT CAST(context AS JSON) AS c
            FROM {source} WHERE context IS NOT NULL AND json_type(CAST(context AS JSON))
            = 'OBJECT')
        )
        SELECT k, bool_and(json_type(c, '$."' || replace(k, '"', '\\"') || '"') IN
                           ('BIGINT', 'UBIGINT', 'DOUBLE', 'BOOLEAN', 'NULL'))
        FROM kv GROUP BY k ORDER BY k
        """
    ).fetchall()
    return [(k, bool(numeric)) for k, numeric in rows]


def _json_path(key: str) -> str:
    return '$."' + key.replace('"', '\\"') + '"'


def context_sql(keys: Sequence[tuple[str, bool]], column: str = "context") -> list[str]:
    """SQL select expressions turning JSON ``column`` into ``ctx_<key>`` columns."""
    out = []
    for key, numeric in keys:
        path = _json_path(key).replace("'", "''")
        alias = (d.CONTEXT_PREFIX + key).replace('"', '""')
        if numeric:
            expr = f"TRY_CAST(json_extract_string(CAST({column} AS JSON), '{path}') AS DOUBLE)"
            # JSON booleans -> 1.0 / 0.0
            expr = (
                f"COALESCE({expr}, CASE json_extract_string(CAST({column} AS JSON), "
                f"'{path}') WHEN 'true' THEN 1.0 WHEN 'false' THEN 0.0 END)"
            )
        else:
            expr = f"json_extract_string(CAST({column} AS JSON), '{path}')"
        out.append(f'{expr} AS "{alias}"')
    return out


def context_match_sql(column: str = "context") -> str:
    """SQL select expression of ``x_context_category_match``: 1.0 when a value of the JSON
    object ``column`` equals ``offer_category``, else 0.0 (no context, no category: 0.0)."""
    values = f"json_extract_string(CAST({column} AS JSON), '$.*')"
    match = f"COALESCE(list_contains({values}, offer_category), false)"
    return f'CAST({match} AS DOUBLE) AS "{d.CONTEXT_CATEGORY_MATCH.name}"'


def flattened_sql(source: str, keys: Sequence[tuple[str, bool]]) -> str:
    """Flatten the context of ``source`` (table or subquery), add the context x offer
    category cross, and sort the rows."""
    select = ", ".join(["* EXCLUDE (context)", *context_sql(keys), context_match_sql()])
    return f"SELECT {select} FROM {source} ORDER BY ts, decision_id, offer_id"


def flatten_and_sort(table: pa.Table) -> pd.DataFrame:
    """Flatten the context and sort; runs on the collected result of any engine."""
    local = duckdb.connect()
    try:
        local.register("ts_result", table)
        keys = context_keys(local, "ts_result")
        result = local.sql(flattened_sql("ts_result", keys)).to_arrow_table()
    finally:
        local.close()
    frame = result.to_pandas()
    frame.attrs["context_keys"] = json.dumps(keys)
    return frame
