"""Validation of one contract table held in a pandas frame, with pandera.

Two pandera passes per chunk of rows:

1. on the raw values (strings from CSV, native values from Parquet/YAML): required columns
   present, every value parseable as its contract type (timestamps, numbers, booleans,
   lists, JSON);
2. on the typed values: nullability, enums, ranges, uniqueness inside the chunk.

Each failure becomes a :class:`~recsys.contract.Problem` naming file, row, column and
reason. Cross-chunk uniqueness and references between tables need all rows and are checked
by :mod:`recsys.loading` inside the load transaction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from decimal import Decimal

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandas.api.typing import NaTType
from pandera.errors import SchemaErrors

from recsys.contract import ELIGIBILITY_OPS, Column, ColumnType, Problem, TableSpec

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}

EXPECTED = {
    ColumnType.STRING: "a string",
    ColumnType.INT: "an integer",
    ColumnType.FLOAT: "a number",
    ColumnType.BOOL: "a boolean (true/false)",
    ColumnType.TIMESTAMP: "an ISO 8601 timestamp",
    ColumnType.STRING_LIST: "a list of strings (JSON list or a|b|c)",
    ColumnType.JSON_OBJECT: "a JSON object",
    ColumnType.JSON_LIST: "a JSON list",
}


def _is_missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if isinstance(value, str) and value.strip() == "":
        return True
    if value is pd.NaT or value is pd.NA:
        return True
    if isinstance(value, Decimal):
        return value.is_nan()
    # numpy scalars that are not Python floats: float32/float16 NaN, datetime64/timedelta64 NaT
    return isinstance(value, (np.floating, np.datetime64, np.timedelta64)) and bool(pd.isna(value))


def _map_distinct(raw: pd.Series, one: Callable[[object], object]) -> pd.Series:
    """``raw.map(one)`` for missing-aware values, computed once per distinct value.

    Event logs repeat the same JSON contexts and flags millions of times; parsing each distinct
    value once keeps validation linear in the number of distinct values, not rows.
    """
    try:
        codes, uniques = pd.factorize(raw, use_na_sentinel=True)
    except TypeError:  # unhashable native values (lists/dicts from YAML or Parquet)
        return raw.map(one, na_action="ignore")
    converted = np.empty(len(uniques) + 1, dtype=object)
    converted[:-1] = [one(value) for value in uniques]
    converted[-1] = None  # code -1 = missing
    return pd.Series(converted[codes], index=raw.index, dtype=object)


# ---------------------------------------------------------------- converters (raw -> typed)
# Each takes a raw series and returns the typed series; unparseable values become missing.


def to_timestamp(raw: pd.Series) -> pd.Series:
    """ISO 8601 text or datetimes -> naive UTC ``datetime64[us]``; naive input is UTC."""
    if pd.api.types.is_datetime64_any_dtype(raw):
        parsed = raw
    else:
        text = raw.astype("string").str.strip()
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        # Element-wise fallback for mixed inputs the vectorised path rejects (e.g. mixed offsets).
        bad = parsed.isna() & text.notna() & (text != "")
        if bad.any():
            parsed = parsed.astype("datetime64[us, UTC]")
            fixed = pd.Series(
                [_parse_one_timestamp(v) for v in text[bad]],
                index=text.index[bad],
                dtype="datetime64[us, UTC]",
            )
            parsed = parsed.where(~bad, fixed)
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
    return parsed.astype("datetime64[us]")


def _parse_one_timestamp(value: str) -> pd.Timestamp | NaTType:
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return pd.NaT
    if ts is pd.NaT:
        return pd.NaT
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def to_float(raw: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(raw):
        return pd.Series(np.nan, index=raw.index)  # a boolean is not a number here
    values = pd.to_numeric(raw, errors="coerce").astype("float64")
    return values.where(np.isfinite(values))


def to_int(raw: pd.Series) -> pd.Series:
    as_float = to_float(raw)
    whole = as_float.notna() & (as_float == np.floor(as_float.fillna(0)))
    return as_float.where(whole).astype("Int64")


def to_bool(raw: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(raw):
        return raw.astype("boolean")

    def one(value: object) -> object:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
        if isinstance(value, (int, np.integer)) and value in (0, 1):
            return bool(value)
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        return pd.NA

    return _map_distinct(raw, one).astype("boolean")


def to_string(raw: pd.Series) -> pd.Series:
    if pd.api.types.is_string_dtype(raw) and raw.dtype != object:
        return raw.astype("string")  # already text (CSV read as str, Parquet strings)

    def one(value: object) -> object:
        if isinstance(value, (list, dict, tuple, np.ndarray)):
            return pd.NA
        return str(value)

    return _map_distinct(raw, one).astype("string")


def _parse_json(value: object) -> object:
    if isinstance(value, (list, dict)):
        return value
    if isinstance(value, (tuple, np.ndarray)):
        return list(value)
    try:
        return json.loads(str(value))
    except (json.JSONDecodeError, TypeError):
        return _INVALID


class _Invalid:
    """Marker for a value that does not parse (distinct from a missing value)."""


_INVALID = _Invalid()


def to_string_list(raw: pd.Series) -> pd.Series:
    def one(value: object) -> object:
        if isinstance(value, (list, tuple, np.ndarray)):
            items = list(value)
        else:
            text = str(value).strip()
            if text.startswith("["):
                parsed = _parse_json(text)
                if not isinstance(parsed, list):
                    return None
                items = parsed
            else:
                items = [part.strip() for part in text.split("|") if part.strip()]
        if not all(isinstance(item, str) for item in items):
            return None
        return items

    return _map_distinct(raw, one)


def _json_of(kind: type) -> Callable[[pd.Series], pd.Series]:
    def convert(raw: pd.Series) -> pd.Series:
        def one(value: object) -> object:
            parsed = _parse_json(value)
            if parsed is _INVALID or not isinstance(parsed, kind):
                return None
            return json.dumps(parsed, sort_keys=True, separators=(",", ":"))

        return _map_distinct(raw, one)

    return convert


CONVERTERS: dict[ColumnType, Callable[[pd.Series], pd.Series]] = {
    ColumnType.STRING: to_string,
    ColumnType.INT: to_int,
    ColumnType.FLOAT: to_float,
    ColumnType.BOOL: to_bool,
    ColumnType.TIMESTAMP: to_timestamp,
    ColumnType.STRING_LIST: to_string_list,
    ColumnType.JSON_OBJECT: _json_of(dict),
    ColumnType.JSON_LIST: _json_of(list),
}


def _present(raw: pd.Series) -> pd.Series:
    """True where a raw value is given (not null, not blank)."""
    if pd.api.types.is_string_dtype(raw) and raw.dtype != object:
        return (raw.notna() & (raw.str.strip() != "")).fillna(False).astype(bool)
    if raw.dtype == object:
        return raw.map(lambda v: not _is_missing(v)).astype(bool)
    return raw.notna()


# ---------------------------------------------------------------- schemas


def _parse_check(col: Column) -> pa.Check:
    convert = CONVERTERS[col.type]

    def parseable(raw: pd.Series) -> pd.Series:
        return ~_present(raw) | convert(raw).notna()

    return pa.Check(parseable, error=f"expected {EXPECTED[col.type]}")


def raw_schema(spec: TableSpec) -> pa.DataFrameSchema:
    """Pass 1: required columns exist and every given value parses as its type."""
    return pa.DataFrameSchema(
        {
            col.name: pa.Column(
                checks=[_parse_check(col)],
                nullable=True,
                required=col.required,
                coerce=False,
            )
            for col in spec.columns
        },
        strict=False,
        name=spec.name,
    )


def _value_checks(col: Column) -> list[pa.Check]:
    checks: list[pa.Check] = []
    if col.enum is not None:
        checks.append(pa.Check.isin(col.enum, error=f"expected one of {', '.join(col.enum)}"))
    if col.ge is not None:
        checks.append(pa.Check.ge(col.ge, error=f"expected a value >= {col.ge:g}"))
    if col.gt is not None:
        checks.append(pa.Check.gt(col.gt, error=f"expected a value > {col.gt:g}"))
    if col.le is not None:
        checks.append(pa.Check.le(col.le, error=f"expected a value <= {col.le:g}"))
    if col.type == ColumnType.JSON_LIST and col.name == "eligibility":
        checks.append(
            pa.Check(
                _eligibility_rules_valid,
                element_wise=True,
                error="expected a list of {feature, op, value} with op in "
                + " ".join(ELIGIBILITY_OPS),
            )
        )
    return checks


def _eligibility_rules_valid(text: object) -> bool:
    if text is None:
        return True
    rules = json.loads(str(text))
    for rule in rules:
        if not isinstance(rule, dict) or set(rule) != {"feature", "op", "value"}:
            return False
        if rule["op"] not in ELIGIBILITY_OPS or not isinstance(rule["feature"], str):
            return False
        if rule["op"] in ("in", "not_in") and not isinstance(rule["value"], list):
            return False
    return True


def typed_schema(spec: TableSpec, *, check_unique: bool = True) -> pa.DataFrameSchema:
    """Pass 2 on converted values: nulls, enums, ranges, key uniqueness within the frame."""
    columns = {
        col.name: pa.Column(
            checks=_value_checks(col),
            nullable=col.nullable,
            required=col.required,
            coerce=False,
        )
        for col in spec.columns
    }
    unique = list(spec.key) if (check_unique and spec.unique_key and spec.key) else None
    return pa.DataFrameSchema(
        columns, strict=False, unique=unique, name=spec.name, report_duplicates="all"
    )


# ---------------------------------------------------------------- entry point


def _problems_from(errors: SchemaErrors, file: str, first_row: int) -> list[Problem]:
    problems: list[Problem] = []
    cases = errors.failure_cases
    for case in cases.itertuples(index=False):
        index = case.index
        row = None if index is None or pd.isna(index) else int(index) + first_row
        check = str(case.check)
        failure = case.failure_case
        column = None if case.column is None or pd.isna(case.column) else str(case.column)
        if check == "column_in_dataframe":
            problems.append(Problem(file, None, str(failure), "required column is missing"))
        elif check == "not_nullable":
            problems.append(Problem(file, row, column, "a value is required, got nothing"))
        elif check in ("field_uniqueness", "multiple_fields_uniqueness"):
            what = column or "key"
            problems.append(
                Problem(file, row, column, f"duplicate {what} {failure!r}; each must be unique")
            )
        elif check.startswith("dtype("):
            problems.append(Problem(file, row, column, f"wrong type: {failure}"))
        else:
            problems.append(Problem(file, row, column, f"{check}, got {failure!r}"))
    problems.sort(key=lambda p: (p.row is not None, p.row or 0, p.column or ""))
    return problems


def _default_value(col: Column) -> object:
    if col.type in (ColumnType.JSON_LIST, ColumnType.JSON_OBJECT):
        return json.dumps(list(col.default) if isinstance(col.default, tuple) else col.default)
    return col.default


def convert_frame(raw: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Raw values -> contract types (call after :func:`validate_frame` found no problem).

    Missing optional values take the contract default (e.g. offers.value = 1).
    """
    typed = raw.copy()
    for col in spec.columns:
        if col.name in typed.columns:
            values = CONVERTERS[col.type](typed[col.name])
        else:
            values = pd.Series([None] * len(typed), index=typed.index, dtype=object)
        if col.default is not None:
            missing = values.isna()
            if missing.any():
                default = _default_value(col)
                values = values.astype(object)
                values[missing] = pd.Series(
                    [list(default) if isinstance(default, tuple) else default] * int(missing.sum()),
                    index=values.index[missing],
                    dtype=object,
                )
        typed[col.name] = values
    if spec.extra_columns:
        # Extra attribute columns keep numeric/bool types; anything object-like becomes text.
        for name in typed.columns:
            if name not in spec.column_names and typed[name].dtype == object:
                typed[name] = to_string(typed[name])
    return typed


def validate_frame(
    raw: pd.DataFrame,
    spec: TableSpec,
    file: str,
    *,
    first_row: int = 1,
    check_unique: bool = True,
) -> tuple[pd.DataFrame | None, list[Problem]]:
    """Validate one chunk; return (typed frame, []) or (None, problems).

    ``first_row`` is the 1-based data-row number of the frame's first row (its index must be
    a RangeIndex from 0).
    """
    try:
        raw_schema(spec).validate(raw, lazy=True)
    except SchemaErrors as errors:
        return None, _problems_from(errors, file, first_row)
    typed = convert_frame(raw, spec)
    try:
        typed_schema(spec, check_unique=check_unique).validate(typed, lazy=True)
    except SchemaErrors as errors:
        return None, _problems_from(errors, file, first_row)
    return typed, []
