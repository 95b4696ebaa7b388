"""Model matrices: the training frame and the serving request encoded the same way.

An :class:`Encoding` fixes the model's input columns (order, kind, vocabularies), including the
data-dependent ones: customer attributes (``attr_*``) and request-context keys (``ctx_*``) seen
in the training set. It is a small JSON-able object the model artifact carries; serving builds
its matrix from it, so a request can never reorder or invent columns. Context keys the encoding
does not know are ignored; known keys missing from a request are missing values.

Encoding rules (the same in :func:`encode` and :func:`decision_matrix`):

- numeric: float32; missing -> NaN (customer features are never missing, see the cold start);
- categorical: the index of the value in the sorted vocabulary seen at fit time, as float32;
  missing or unknown -> ``UNKNOWN_CODE`` (-1; LightGBM reads negative categories as missing).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from itertools import chain, pairwise, repeat
from operator import itemgetter
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import definitions as d
from features.pipeline import STAT_TABLES
from features.spec import FEATURE_SPEC_VERSION, feature_spec
from features.training_set import ID_COLUMNS, LABEL_COLUMNS, cold_start_vector
from recsys.errors import ConfigError, SpecMismatchError

UNKNOWN_CODE = -1.0
MAX_VOCABULARY = 10_000  # larger vocabularies keep their most frequent values
NOT_INPUTS = frozenset(ID_COLUMNS) - {"offer_id", "touchpoint_id"} | frozenset(LABEL_COLUMNS)
STATS_KEY = "__stats"
AS_OF_KEY = "__as_of"
SPEC_KEY = "__spec_version"


@dataclass(frozen=True)
class ColumnEncoding:
    """One model column: name, kind and (categorical) sorted vocabulary."""

    name: str
    kind: Literal["numeric", "categorical"]
    vocabulary: tuple[str, ...] = ()

    @cached_property
    def _sorted(self) -> np.ndarray:
        return np.asarray(self.vocabulary, dtype=object).astype(str)

    @cached_property
    def _index(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.vocabulary)}

    def code(self, value: Any) -> float:
        """Code of one value."""
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return UNKNOWN_CODE
        return float(self._index.get(_as_text(value), UNKNOWN_CODE))

    @cached_property
    def _text_index(self) -> dict[str, int] | None:
        """``_index`` when it agrees with :meth:`codes` (text, strictly sorted), else None."""
        vocab = self.vocabulary
        text = all(type(v) is str for v in vocab)
        if text and all(a < b for a, b in pairwise(vocab)):
            return self._index
        return None

    def _text_codes(self, values: np.ndarray) -> np.ndarray:
        """:meth:`codes` of a short sequence, by dict look-ups when every value is text or None.

        ``values`` shape (n,) -> (n,) float32; equal to ``codes(values)``.
        """
        index = self._text_index
        if index is not None:
            codes = [
                index.get(v, UNKNOWN_CODE)
                if type(v) is str
                else (UNKNOWN_CODE if v is None else None)
                for v in values.tolist()
            ]
            if None not in codes:
                return np.array(codes, dtype=np.float32)
        return self.codes(values)

    def codes(self, values: np.ndarray) -> np.ndarray:
        """Codes of an array of values, shape (n,) -> (n,) float32, without a Python loop."""
        text = np.asarray(values, dtype=object)
        missing = pd.isna(text) if text.size else np.zeros(0, bool)
        text = np.where(missing, "", text).astype(str)
        if not len(self._sorted):
            return np.full(len(text), UNKNOWN_CODE, np.float32)
        pos = np.searchsorted(self._sorted, text)
        pos = np.clip(pos, 0, len(self._sorted) - 1)
        hit = (self._sorted[pos] == text) & ~missing
        return np.where(hit, pos, UNKNOWN_CODE).astype(np.float32)


@dataclass(frozen=True)
class _Plan:
    """How :func:`decision_matrix` fills each encoding column, fixed once per encoding.

    Column positions are indexes into the encoding's columns. ``template`` holds the value of
    every column that does not depend on the request (the shared columns no vector, touchpoint
    or context can set), so a call only writes the rest.
    """

    template: np.ndarray  # (n_columns,) float32
    # numeric customer features: positions, names, cold-start defaults
    numeric_index: np.ndarray
    numeric_names: tuple[str, ...]
    numeric_defaults: tuple[Any, ...]
    # the values of all ``numeric_names`` (a tuple) from a vector that has every one, else
    # KeyError; one C call for two or more names
    numeric_getter: Callable[[Mapping[str, Any]], Sequence[Any]]
    # days-since customer features among them: positions in ``numeric_names``, defaults, capped
    aging_positions: np.ndarray
    aging_defaults: np.ndarray
    aging_capped: np.ndarray
    # the other shared columns, one Python step each: (position, column, source, key);
    # source is "customer" (key = feature, default), "scalar" or "context"
    other_shared: tuple[tuple[int, ColumnEncoding, str, str, Any], ...]
    offer_columns: tuple[tuple[int, ColumnEncoding], ...]
    cross_index: np.ndarray
    cross_names: tuple[str, ...]


_SCALAR_NAMES = frozenset({"touchpoint_id", "tp_channel", "tp_stage", "req_hour", "req_dow"})
_OFFER_NAMES = frozenset({"offer_id", "offer_type", "offer_category", "offer_value"})
# Value types whose float64 conversion by numpy equals ``_number`` (None -> NaN).
_PLAIN_NUMBERS = frozenset(
    {float, int, bool, type(None), np.float64, np.float32, np.int64, np.int32, np.bool_}
)


def _build_plan(columns: tuple[ColumnEncoding, ...]) -> _Plan:
    cold = cold_start_vector()
    cross_names = {x.feature.name for x in d.CROSSES}
    template = np.full(len(columns), np.nan, dtype=np.float32)
    numeric: list[tuple[int, str, Any]] = []
    other: list[tuple[int, ColumnEncoding, str, str, Any]] = []
    offer_columns, crosses = [], []
    for j, col in enumerate(columns):
        name = col.name
        if name in _OFFER_NAMES:
            offer_columns.append((j, col))
        elif name in cross_names:
            crosses.append((j, name))
        elif name in _SCALAR_NAMES:
            other.append((j, col, "scalar", name, None))
        elif name.startswith(d.CONTEXT_PREFIX):
            other.append((j, col, "context", name[len(d.CONTEXT_PREFIX) :], None))
        elif name.startswith("__"):
            # never read from a vector (its "__" keys are metadata): always missing
            template[j] = col.code(None) if col.kind == "categorical" else np.nan
        elif col.kind == "numeric":
            numeric.append((j, name, cold.get(name)))
        else:
            other.append((j, col, "customer", name, cold.get(name)))
    names = tuple(name for _, name, _ in numeric)
    aging = [(i, _AGING[name]) for i, name in enumerate(names) if name in _AGING]
    return _Plan(
        template=template,
        numeric_index=np.array([j for j, _, _ in numeric], dtype=np.intp),
        numeric_names=names,
        numeric_defaults=tuple(default for _, _, default in numeric),
        numeric_getter=itemgetter(*names)
        if len(names) > 1
        else lambda vector: tuple(vector[name] for name in names),
        aging_positions=np.array([i for i, _ in aging], dtype=np.intp),
        aging_defaults=np.array([f.default for _, f in aging], dtype=np.float64),
        aging_capped=np.array([f.default == d.HORIZON_DAYS for _, f in aging], dtype=bool),
        other_shared=tuple(other),
        offer_columns=tuple(offer_columns),
        cross_index=np.array([j for j, _ in crosses], dtype=np.intp),
        cross_names=tuple(name for _, name in crosses),
    )


@dataclass(frozen=True)
class Encoding:
    """The model's input columns, in order; JSON-able with :meth:`to_dict` / :meth:`from_dict`."""

    spec_version: str
    columns: tuple[ColumnEncoding, ...]
    unknown_code: float = UNKNOWN_CODE

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def categorical_indexes(self) -> list[int]:
        return [i for i, c in enumerate(self.columns) if c.kind == "categorical"]

    @property
    def context_keys(self) -> list[str]:
        """Request-context keys the model reads (``ctx_<key>`` columns)."""
        n = len(d.CONTEXT_PREFIX)
        return [c.name[n:] for c in self.columns if c.name.startswith(d.CONTEXT_PREFIX)]

    @cached_property
    def _plan(self) -> _Plan:
        return _build_plan(self.columns)

    @cached_property
    def _by_name(self) -> dict[str, ColumnEncoding]:
        return {c.name: c for c in self.columns}

    def column(self, name: str) -> ColumnEncoding:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"the encoding has no column {name!r}") from None

    def to_dict(self) -> dict:
        return {
            "spec_version": self.spec_version,
            "unknown_code": self.unknown_code,
            "columns": [
                {"name": c.name, "kind": c.kind, "vocabulary": list(c.vocabulary)}
                for c in self.columns
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Encoding:
        try:
            columns = tuple(
                ColumnEncoding(c["name"], c["kind"], tuple(c.get("vocabulary", ())))
                for c in data["columns"]
            )
            return cls(
                spec_version=data["spec_version"],
                columns=columns,
                unknown_code=float(data.get("unknown_code", UNKNOWN_CODE)),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(
                f"`encoding` must be a dict from Encoding.to_dict(), got {exc!r}"
            ) from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Encoding:
        return cls.from_dict(json.loads(text))


def _as_text(value: Any) -> str:
    """Categorical values as text, JSON-style for non-strings (as the context is flattened)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return str(value)


def model_columns(frame: pd.DataFrame) -> list[str]:
    """The model input columns of a training frame, in model order.

    ``offer_id`` and ``touchpoint_id`` first, then every column after ``revenue`` (customer
    features, ``attr_*``, offer and touchpoint attributes, crosses, ``req_*``, ``ctx_*``).
    """
    missing = [c for c in ("offer_id", "touchpoint_id") if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"`frame` must have columns {missing} (a training set), got "
            f"{list(frame.columns)[:10]}..."
        )
    rest = [
        c for c in frame.columns if c not in NOT_INPUTS and c not in ("offer_id", "touchpoint_id")
    ]
    return ["offer_id", "touchpoint_id", *rest]


def _kind(name: str, series: pd.Series) -> Literal["numeric", "categorical"]:
    spec = feature_spec()
    if name in spec.names:
        return spec.get(name).kind
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return "numeric"
    return "categorical"


def fit_encoding(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> Encoding:
    """Fix the columns and vocabularies of a model from its training frame.

    Parameters
    ----------
    frame : pandas.DataFrame, a training set (``build_training_set``)
    columns : optional subset of :func:`model_columns` (kept in model order)
    """
    names = model_columns(frame)
    if columns is not None:
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise ConfigError(f"`columns` must be model columns of the frame, got {unknown}")
        names = [c for c in names if c in set(columns)]
    out = []
    for name in names:
        kind = _kind(name, frame[name])
        vocab: tuple[str, ...] = ()
        if kind == "categorical":
            counts = frame[name].dropna().map(_as_text).value_counts()
            vocab = tuple(sorted(counts.index[:MAX_VOCABULARY]))
        out.append(ColumnEncoding(name, kind, vocab))
    return Encoding(spec_version=FEATURE_SPEC_VERSION, columns=tuple(out))


def encode(
    frame: pd.DataFrame, encoding: Encoding | None = None
) -> tuple[np.ndarray, list[str], list[int]]:
    """Encode a training frame.

    Parameters
    ----------
    frame : pandas.DataFrame, shape (n_rows, ...)
    encoding : the model's encoding; fitted on ``frame`` when None (keep it with
        ``fit_encoding`` instead if you need to serve the model).

    Returns
    -------
    X : numpy.ndarray, shape (n_rows, n_columns), float32
    names : list of str, the column names (length n_columns)
    categorical : list of int, indexes of the categorical columns
    """
    enc = encoding if encoding is not None else fit_encoding(frame)
    if enc.spec_version != FEATURE_SPEC_VERSION:
        raise SpecMismatchError(
            f"the encoding was fitted for feature spec {enc.spec_version}, this code computes "
            f"spec {FEATURE_SPEC_VERSION}; rebuild the training set and retrain"
        )
    X = np.empty((len(frame), len(enc.columns)), dtype=np.float32)
    for j, col in enumerate(enc.columns):
        if col.name not in frame.columns:
            X[:, j] = UNKNOWN_CODE if col.kind == "categorical" else np.nan
            continue
        series = frame[col.name]
        if col.kind == "categorical":
            values = series.map(_as_text, na_action="ignore")
            X[:, j] = pd.Categorical(values, categories=list(col.vocabulary)).codes
        else:
            X[:, j] = pd.to_numeric(series, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    return X, enc.names, enc.categorical_indexes


# --- serving -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OfferArrays:
    """Candidate offers as column arrays, shape (n_offers,) each; build once per catalogue."""

    offer_id: np.ndarray
    offer_type: np.ndarray
    category: np.ndarray
    value: np.ndarray  # float64, missing -> 1.0

    def __len__(self) -> int:
        return len(self.offer_id)


_OFFER_COLUMNS = ("offer_id", "offer_type", "category", "value")


def offer_arrays(offers: Any) -> OfferArrays:
    """Offers (pandas / Arrow table, list of dicts with contract columns) as column arrays."""
    if isinstance(offers, OfferArrays):
        return offers
    if isinstance(offers, pd.DataFrame):
        table = pa.Table.from_pandas(
            offers[[c for c in _OFFER_COLUMNS if c in offers.columns]], preserve_index=False
        )
    elif isinstance(offers, pa.Table):
        table = offers
    elif isinstance(offers, Sequence):
        # Input conversion only (serving should build OfferArrays once per catalogue load).
        present = [c for c in _OFFER_COLUMNS if any(c in o for o in offers[:1])]
        table = pa.table({c: [o.get(c) for o in offers] for c in present})
    else:
        raise ConfigError(
            "`offers` must be a pandas DataFrame, a pyarrow Table or a list of "
            f"offer dicts, got {type(offers).__name__}"
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


def _lookup(
    table: Mapping[str, Any] | None, keys: np.ndarray, stats: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per-key statistics for ``keys`` (shape (n,)) from a key map; defaults when absent.

    ``table``: ``{"keys": [k, ...], "values": [[stat, ...], ...]}`` (keys in any order).
    """
    n = len(keys)
    out = {s: np.full(n, d.STAT_DEFAULTS[s], np.float64) for s in stats}
    if not table or not table.get("keys") or not n:
        return out
    map_keys = np.asarray(table["keys"], dtype=str)
    order = np.argsort(map_keys, kind="stable")
    sorted_keys = map_keys[order]
    values = np.asarray(table["values"], dtype=np.float64).reshape(len(map_keys), -1)[order]
    text = np.asarray(keys, dtype=object)
    missing = pd.isna(text)
    text = np.where(missing, "", text).astype(str)
    pos = np.clip(np.searchsorted(sorted_keys, text), 0, len(sorted_keys) - 1)
    hit = (sorted_keys[pos] == text) & ~missing
    for i, s in enumerate(stats):
        out[s] = np.where(hit, values[pos, i], out[s])
    return out


_TEXT_OR_NONE = frozenset({str, type(None)})


def _key_lookup(
    table: Mapping[str, Any] | None, key_array: np.ndarray, stats: Sequence[str]
) -> np.ndarray:
    """:func:`_lookup` as one float64 array, shape (n, len(stats)), for short key lists.

    Dict look-ups instead of sorting when every key is text or None; the first row of a
    repeated map key wins, as in :func:`_lookup`.
    """
    keys = key_array.tolist()
    n = len(keys)
    defaults = [d.STAT_DEFAULTS[s] for s in stats]
    if not table or not table.get("keys") or not n:
        return np.full((n, len(stats)), defaults, dtype=np.float64)
    if not set(map(type, keys)) <= _TEXT_OR_NONE:
        found = _lookup(table, key_array, stats)
        return np.column_stack([found[s] for s in stats])
    map_keys = list(map(str, table["keys"]))
    values = np.asarray(table["values"], dtype=np.float64).reshape(len(map_keys), -1)
    rows = values[:, : len(stats)].tolist()
    # reversed, so that the first row of a repeated key is the one left in the dict
    by_key = dict(zip(reversed(map_keys), reversed(rows), strict=True))
    return np.array(
        [by_key.get(k, defaults) if k is not None else defaults for k in keys], dtype=np.float64
    ).reshape(n, len(stats))


class PreparedOffers:
    """A fixed list of candidate offers with what every decision matrix needs of it worked
    out once for one encoding (serving: once per touchpoint and model).

    Pass it as ``offers`` to :func:`decision_matrix`: the offer columns are copied from
    ``offer_block`` and each customer's statistics are placed by ``rows_of`` (offer key ->
    key text -> rows), instead of being encoded and looked up offer by offer on every call.
    The matrix is the one the plain offers give.

    Parameters
    ----------
    offers : anything :func:`offer_arrays` takes
    encoding : Encoding
    """

    def __init__(self, offers: Any, encoding: Encoding):
        self.arrays = offer_arrays(offers)
        self.encoding = encoding
        plan = encoding._plan
        n = len(self.arrays)
        self.offer_index = np.array([j for j, _ in plan.offer_columns], dtype=np.intp)
        self.offer_block = np.empty((n, len(plan.offer_columns)), dtype=np.float32)
        for k, (_, col) in enumerate(plan.offer_columns):
            values = _OFFER_ARRAY[col.name](self.arrays)
            self.offer_block[:, k] = (
                col._text_codes(values) if col.kind == "categorical" else values
            )
        self.rows_of: dict[str, dict[str, np.ndarray] | None] = {
            key: _rows_by_text(column)
            for key, column in (
                ("offer_id", self.arrays.offer_id),
                ("offer_type", self.arrays.offer_type),
                ("offer_category", self.arrays.category),
            )
        }

    def __len__(self) -> int:
        return len(self.arrays)


def _rows_by_text(column: np.ndarray) -> dict[str, np.ndarray] | None:
    """Text value -> its rows; None when a value is neither text nor None (looked up the
    slow way, as :func:`_key_lookup` does)."""
    values = column.tolist()
    if not set(map(type, values)) <= _TEXT_OR_NONE:
        return None
    rows: dict[str, list[int]] = {}
    for i, value in enumerate(values):
        if value is not None:
            rows.setdefault(value, []).append(i)
    return {value: np.array(at, dtype=np.intp) for value, at in rows.items()}


def _aged(name: str, value: Any, elapsed_days: float) -> Any:
    """Days-since features grow with the time elapsed since the vector was computed."""
    feature = _AGING.get(name)
    if feature is None or elapsed_days <= 0 or value is None or value == feature.default:
        return value
    aged = float(value) + elapsed_days
    return min(aged, float(d.HORIZON_DAYS)) if feature.default == d.HORIZON_DAYS else aged


_AGING = {f.name: f for f in d.customer_feature_defs() if f.ages}


def decision_matrix(
    customer_vector: Mapping[str, Any] | None,
    offers: Any,
    touchpoint: Mapping[str, Any],
    context: Mapping[str, Any] | None,
    now: datetime,
    *,
    encoding: Encoding,
) -> np.ndarray:
    """The model matrix of one customer x N candidate offers at one touchpoint.

    Parameters
    ----------
    customer_vector : dict from the online store (``get_many``), or None (cold start)
    offers : N candidate offers (pandas / Arrow / list of dicts with contract columns,
        :class:`OfferArrays`, or :class:`PreparedOffers` for the same encoding)
    touchpoint : dict with ``touchpoint_id``, ``channel``, ``stage``
    context : request context (the decisions.context object), may be None
    now : decision time (naive = UTC)
    encoding : the model's :class:`Encoding`

    Returns
    -------
    numpy.ndarray, shape (n_offers, len(encoding.columns)), float32 - equal to ``encode`` of
    the training-set rows of the same (customer, offers, touchpoint, context, time).

    Raises
    ------
    SpecMismatchError
        If the vector or the encoding was built for another feature spec.

    Notes
    -----
    Which column comes from where (customer feature, touchpoint, context, offer, cross) is
    worked out once per encoding and cached on it, so a call is a few dict look-ups and
    numpy operations on arrays of n_offers rows.
    """
    if encoding.spec_version != FEATURE_SPEC_VERSION:
        raise SpecMismatchError(
            f"the model's encoding is for feature spec {encoding.spec_version}, this code "
            f"computes spec {FEATURE_SPEC_VERSION}; retrain the model"
        )
    vector: Mapping[str, Any] = customer_vector or {}
    vector_spec = vector.get(SPEC_KEY, FEATURE_SPEC_VERSION)
    if vector_spec != encoding.spec_version:
        raise SpecMismatchError(
            f"the customer vector was materialised with feature spec {vector_spec}, the model "
            f"expects {encoding.spec_version}; run `recsys features materialize`"
        )
    if now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    as_of = vector.get(AS_OF_KEY)
    elapsed = 0.0
    if as_of is not None:
        as_of_ts = datetime.fromisoformat(as_of) if isinstance(as_of, str) else as_of
        elapsed = max(0.0, (now - as_of_ts).total_seconds() / d.DAY_SECONDS)
        # Stats hold "seconds ago" at as_of; crosses age them by the same amount below.

    plan = encoding._plan
    prepared = offers if isinstance(offers, PreparedOffers) else None
    if prepared is not None and prepared.encoding is not encoding:
        prepared = None  # prepared for another model: worked out again below
    arrays = offers.arrays if isinstance(offers, PreparedOffers) else offer_arrays(offers)
    n = len(arrays)
    X = np.empty((n, len(encoding.columns)), dtype=np.float32)
    # One row of the columns every offer shares, then the offer-dependent columns.
    X[:] = _shared_row(plan, vector, touchpoint, context or {}, now, elapsed)

    if prepared is not None:
        X[:, prepared.offer_index] = prepared.offer_block
    else:
        for j, col in plan.offer_columns:
            values = _OFFER_ARRAY[col.name](arrays)
            X[:, j] = col._text_codes(values) if col.kind == "categorical" else values
    if not len(plan.cross_index):
        return X

    tables = vector.get(STATS_KEY) or {}
    touchpoint_id = touchpoint.get("touchpoint_id")
    if prepared is not None and isinstance(touchpoint_id, str):
        stats = _prepared_stats(tables, prepared, touchpoint_id)
    else:
        stats = _looked_up_stats(tables, arrays, touchpoint_id)
    if elapsed:
        for s in ("offer_last_shown_secs_ago", "type_last_shown_secs_ago"):
            secs_ago = stats[s]  # a fresh array: aged in place where the offer was shown
            np.add(
                secs_ago, elapsed * d.DAY_SECONDS, out=secs_ago, where=secs_ago < d.STAT_DEFAULTS[s]
            )
    spend = vector.get("purch_amount_365d", _COLD_SPEND)
    stats["purch_amount_365d"] = np.float64(spend or 0.0)
    X[:, plan.cross_index] = np.column_stack(
        [_CROSSES[name].build(stats, d.NUMPY_OPS) for name in plan.cross_names]
    )
    return X


def _looked_up_stats(
    tables: Mapping[str, Any], arrays: OfferArrays, touchpoint_id: Any
) -> dict[str, np.ndarray]:
    """Every statistic of the customer's key maps for each offer, shape (n,) float64 each."""
    n = len(arrays)
    offer_side = {
        "offer_category": arrays.category,
        "offer_id": arrays.offer_id,
        "offer_type": arrays.offer_type,
        # one touchpoint: looked up once, repeated for every offer
        "touchpoint_id": np.full(min(n, 1), touchpoint_id, dtype=object),
    }
    stats: dict[str, np.ndarray] = {}
    for name, spec in STAT_TABLES.items():
        found = _key_lookup(tables.get(name), offer_side[spec.offer_key], spec.stats)
        if len(found) != n:
            found = np.repeat(found, n, axis=0)
        stats.update({s: found[:, i] for i, s in enumerate(spec.stats)})
    return stats


def _prepared_stats(
    tables: Mapping[str, Any], prepared: PreparedOffers, touchpoint_id: str
) -> dict[str, np.ndarray]:
    """:func:`_looked_up_stats` for prepared offers: one block for every table, filled by
    the rows that carry each of the customer's keys (a step per map key, not per offer)."""
    n = len(prepared)
    block = np.empty((len(_STAT_NAMES), n), dtype=np.float64)  # a row per statistic
    block[:] = _STAT_DEFAULTS_COLUMN
    for name, spec in STAT_TABLES.items():
        table = tables.get(name)
        keys = table.get("keys") if table else None
        if not keys or not n:
            continue
        start, end = _STAT_SPANS[name]
        width = end - start
        if spec.offer_key == "touchpoint_id":  # one key, the same for every offer
            for i, key in enumerate(keys):
                if str(key) == touchpoint_id:  # the first row of a repeated key wins
                    values = np.asarray(table["values"], dtype=np.float64)
                    block[start:end] = values.reshape(len(keys), -1)[i, :width, None]
                    break
            continue
        rows_of = prepared.rows_of.get(spec.offer_key)
        if rows_of is None:  # offer keys that are not text: the slow way
            found = _key_lookup(table, _OFFER_ARRAY[spec.offer_key](prepared.arrays), spec.stats)
            block[start:end] = found.T
            continue
        values = None
        filled: set[str] = set()
        for i, key in enumerate(keys):
            text = str(key)
            rows = rows_of.get(text)
            if rows is not None and text not in filled:
                filled.add(text)
                if values is None:
                    values = np.asarray(table["values"], dtype=np.float64).reshape(len(keys), -1)
                block[start:end, rows] = values[i, :width, None]
    return dict(zip(_STAT_NAMES, block, strict=True))


_OFFER_ARRAY = {
    "offer_id": lambda a: a.offer_id,
    "offer_type": lambda a: a.offer_type,
    "offer_category": lambda a: a.category,
    "offer_value": lambda a: a.value,
}
_COLD_SPEND = cold_start_vector().get("purch_amount_365d")
_CROSSES = {x.feature.name: x for x in d.CROSSES}
_STAT_NAMES = tuple(s for spec in STAT_TABLES.values() for s in spec.stats)
_STAT_DEFAULTS_COLUMN = np.array([[d.STAT_DEFAULTS[s]] for s in _STAT_NAMES], dtype=np.float64)


def _stat_spans() -> dict[str, tuple[int, int]]:
    """Each table's rows in the statistics block (tables in ``_STAT_NAMES`` order)."""
    spans, start = {}, 0
    for name, spec in STAT_TABLES.items():
        spans[name] = (start, start + len(spec.stats))
        start += len(spec.stats)
    return spans


_STAT_SPANS = _stat_spans()


def _request_scalars(touchpoint: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The shared columns that come from the touchpoint and the request time."""
    return {
        "touchpoint_id": touchpoint.get("touchpoint_id"),
        "tp_channel": touchpoint.get("channel"),
        "tp_stage": touchpoint.get("stage"),
        "req_hour": float(now.hour),
        "req_dow": float(now.weekday()),
    }


def _shared_row(
    plan: _Plan,
    vector: Mapping[str, Any],
    touchpoint: Mapping[str, Any],
    ctx: Mapping[str, Any],
    now: datetime,
    elapsed: float,
) -> np.ndarray:
    """The columns every offer shares, shape (n_columns,) float32 (offer columns: NaN)."""
    row = plan.template.copy()
    get = vector.get
    values: Sequence[Any]
    try:
        # A materialised vector has every feature: no name needs its default.
        values = plan.numeric_getter(vector)
    except KeyError:
        values = [
            get(name, default)
            for name, default in zip(plan.numeric_names, plan.numeric_defaults, strict=True)
        ]
    if set(map(type, values)) <= _PLAIN_NUMBERS:
        numbers = np.array(values, dtype=np.float64)
        if elapsed > 0 and len(plan.aging_positions):
            aged = numbers[plan.aging_positions]
            grow = aged != plan.aging_defaults
            grown = aged + elapsed
            grown = np.where(plan.aging_capped, np.minimum(grown, float(d.HORIZON_DAYS)), grown)
            numbers[plan.aging_positions] = np.where(grow, grown, aged)
    else:
        numbers = np.array(
            [
                _number(_aged(name, value, elapsed))
                for name, value in zip(plan.numeric_names, values, strict=True)
            ],
            dtype=np.float64,
        )
    row[plan.numeric_index] = numbers
    scalars = _request_scalars(touchpoint, now)
    for j, col, source, key, default in plan.other_shared:
        if source == "scalar":
            value = scalars[key]
        elif source == "context":
            value = ctx.get(key)
        else:
            value = _aged(key, get(key, default), elapsed)
        row[j] = col.code(value) if col.kind == "categorical" else _number(value)
    return row


def _number(value: Any) -> float:
    if value is None or isinstance(value, str | dict | list):
        try:
            return float(value) if isinstance(value, str) else np.nan
        except ValueError:
            return np.nan
    return float(value)


# --- many customers at once ----------------------------------------------------------------------


def decision_matrix_many(
    customer_vectors: Sequence[Mapping[str, Any] | None],
    offers: Any,
    touchpoint: Mapping[str, Any],
    contexts: Sequence[Mapping[str, Any] | None] | None,
    now: datetime,
    *,
    encoding: Encoding,
    customer_index: np.ndarray | None = None,
    offer_index: np.ndarray | None = None,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Model rows of many (customer, offer) pairs at one touchpoint, in one pass.

    Parameters
    ----------
    customer_vectors : n vectors from the online store (None = cold start), or a block of
        them read as columns (``features.online.VectorBlock``: ``column``, ``numbers``,
        ``key_stats``, ``take``), which gives the same rows without a dict per customer
    offers : the touchpoint's M candidate offers (as for :func:`decision_matrix`)
    touchpoint : dict with ``touchpoint_id``, ``channel``, ``stage``
    contexts : n request contexts (or None: no context for anyone)
    now : decision time (naive = UTC)
    encoding : the model's :class:`Encoding`
    customer_index, offer_index : ndarray of int, shape (p,), optional
        The pairs to build: row ``r`` is customer ``customer_index[r]`` x offer
        ``offer_index[r]``. Default: every customer x every offer, customer-major.
    dtype : numpy.float32 (default) or numpy.float64
        float64 holds the same (float32) values, for scorers that read float64 (LightGBM,
        lleaves): it saves them a conversion of the whole matrix.

    Returns
    -------
    numpy.ndarray, shape (p, len(encoding.columns)), ``dtype`` - row ``r`` equal, bit for bit
    (as float32), to the row of offer ``offer_index[r]`` in
    ``decision_matrix(customer_vectors[i], ...)`` for ``i = customer_index[r]``.

    Raises
    ------
    SpecMismatchError
        If a vector or the encoding was built for another feature spec.

    Notes
    -----
    The columns every offer of a customer shares are built once per customer, as an (n, c)
    block with one numpy conversion for all numeric features; offer columns once per offer;
    the crosses from every customer's key maps gathered into one (customer, key, stat) array.
    Python work is a few dict reads per customer (a few list items from a block). The rows
    are filled ``ROW_BLOCK`` at a time, so each block stays in the CPU cache.
    """
    if encoding.spec_version != FEATURE_SPEC_VERSION:
        raise SpecMismatchError(
            f"the model's encoding is for feature spec {encoding.spec_version}, this code "
            f"computes spec {FEATURE_SPEC_VERSION}; retrain the model"
        )
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"`dtype` must be float32 or float64, got {dtype}")
    # a block of vectors (``features.online.VectorBlock``) is read column by column
    columnar = hasattr(customer_vectors, "column")
    vectors: Any = customer_vectors if columnar else [v or {} for v in customer_vectors]
    n = len(vectors)
    for vector_spec in set(_column(vectors, SPEC_KEY, FEATURE_SPEC_VERSION)):
        if vector_spec != encoding.spec_version:
            raise SpecMismatchError(
                f"the customer vector was materialised with feature spec {vector_spec}, the "
                f"model expects {encoding.spec_version}; run `recsys features materialize`"
            )
    if contexts is not None and len(contexts) != n:
        raise ValueError(f"`contexts` must have one entry per vector ({n}), got {len(contexts)}")
    if now.tzinfo is not None:
        now = now.astimezone(UTC).replace(tzinfo=None)
    arrays = offer_arrays(offers)
    m = len(arrays)
    if (customer_index is None) != (offer_index is None):
        raise ValueError("`customer_index` and `offer_index` must be given together")
    if customer_index is None:
        customer_index = np.repeat(np.arange(n), m)
        offer_index = np.tile(np.arange(m), n)
    customer_index = np.asarray(customer_index, dtype=np.intp)
    offer_index = np.asarray(offer_index, dtype=np.intp)
    if customer_index.shape != offer_index.shape:
        raise ValueError(
            f"`customer_index` and `offer_index` must have one shape, got "
            f"{customer_index.shape} and {offer_index.shape}"
        )

    if n <= SMALL_BATCH:
        return _matrix_by_customer(
            vectors, arrays, touchpoint, contexts, now, encoding, customer_index, offer_index, dtype
        )
    used = (
        np.bincount(customer_index, minlength=n) > 0 if customer_index.size else np.zeros(n, bool)
    )
    if not used.all():  # customers without a pair (nothing eligible) need no rows
        keep = np.flatnonzero(used)
        vectors = vectors.take(keep) if columnar else [vectors[i] for i in keep.tolist()]
        if contexts is not None:
            contexts = [contexts[i] for i in keep.tolist()]
        renumber = np.cumsum(used) - 1
        customer_index = renumber[customer_index]
    plan = encoding._plan
    elapsed = _elapsed_days(vectors, now)
    shared = _shared_rows(plan, vectors, touchpoint, contexts, now, elapsed)
    # Every value goes through float32 (the model's input precision) whatever ``dtype`` is.
    offer_codes = []
    for j, col in plan.offer_columns:
        values = _OFFER_ARRAY[col.name](arrays)
        column = col._text_codes(values) if col.kind == "categorical" else values
        offer_codes.append((j, np.asarray(column, dtype=np.float32)))
    n_pairs = customer_index.shape[0]
    crossed = None
    if len(plan.cross_index) and n_pairs:
        crossed = _crosses(plan, vectors, arrays, touchpoint, elapsed, customer_index, offer_index)
    return _fill_rows(
        shared.astype(dtype, copy=False), offer_codes, plan.cross_index, crossed,
        customer_index, offer_index,
    )  # fmt: skip


#: Rows of the decision matrix filled at a time (~1-2 MB: they stay in the CPU cache while
#: their offer and cross columns are written).
ROW_BLOCK = 2048


def _fill_rows(
    shared: np.ndarray,
    offer_codes: list[tuple[int, np.ndarray]],
    cross_index: np.ndarray,
    crossed: np.ndarray | None,
    customer_index: np.ndarray,
    offer_index: np.ndarray,
) -> np.ndarray:
    """The matrix of (customer, offer) pairs: customer row ``shared[customer_index[r]]`` with
    the offer columns ``codes[offer_index[r]]`` and the crosses ``crossed[r]``; (p, n_cols).

    Filled ``ROW_BLOCK`` rows at a time: a column written across a whole matrix of ~10^5 rows
    would stream it through memory once per column.
    """
    n_pairs = customer_index.shape[0]
    X = np.empty((n_pairs, shared.shape[1]), dtype=shared.dtype)
    if n_pairs and not (customer_index.min() >= 0 and customer_index.max() < len(shared)):
        raise IndexError(
            f"`customer_index` must be in 0..{len(shared) - 1}, got "
            f"{customer_index.min()}..{customer_index.max()}"
        )
    for start in range(0, n_pairs, ROW_BLOCK):
        end = min(start + ROW_BLOCK, n_pairs)
        rows = X[start:end]
        # mode="clip" (the indexes are checked above): numpy buffers ``out`` in "raise" mode
        np.take(shared, customer_index[start:end], axis=0, out=rows, mode="clip")
        at = offer_index[start:end]
        for j, codes in offer_codes:
            rows[:, j] = codes[at]
        if crossed is not None:
            rows[:, cross_index] = crossed[start:end]
    return X


def _crosses(
    plan: _Plan,
    vectors: Any,
    arrays: OfferArrays,
    touchpoint: Mapping[str, Any],
    elapsed: np.ndarray,
    customer_index: np.ndarray,
    offer_index: np.ndarray,
) -> np.ndarray:
    """The cross columns (``plan.cross_names``) of every pair, shape (p, n_crosses) float32."""
    columnar = hasattr(vectors, "column")
    m = len(arrays)
    n_pairs = customer_index.shape[0]

    maps: list[Mapping[str, Any]] | None = None  # key maps, read only if a column cannot be
    offer_side = {
        "offer_category": arrays.category,
        "offer_id": arrays.offer_id,
        "offer_type": arrays.offer_type,
        "touchpoint_id": np.array([touchpoint.get("touchpoint_id")], dtype=object),
    }
    stats: dict[str, Any] = {}
    for name, spec in STAT_TABLES.items():
        side = offer_side[spec.offer_key]
        at = offer_index if len(side) == m else np.zeros(n_pairs, dtype=np.intp)
        flat = vectors.key_stats(name) if columnar else None
        found = (
            _key_lookup_flat(*flat, side, spec.stats, customer_index, at)
            if flat is not None
            else None
        )
        if found is None:
            if maps is None:
                maps = [v.get(STATS_KEY) or {} for v in vectors]
            found = _key_lookup_pairs(
                [t.get(name) for t in maps], side, spec.stats, customer_index, at
            )
        stats.update({s: found[:, i] for i, s in enumerate(spec.stats)})
    pair_elapsed = elapsed[customer_index]
    aging = pair_elapsed != 0
    if aging.any():
        for s in ("offer_last_shown_secs_ago", "type_last_shown_secs_ago"):
            shown = (stats[s] < d.STAT_DEFAULTS[s]) & aging
            stats[s] = np.where(shown, stats[s] + pair_elapsed * d.DAY_SECONDS, stats[s])
    spend = [s or 0.0 for s in _column(vectors, "purch_amount_365d", _COLD_SPEND)]
    try:
        spend_array = np.array(spend, dtype=np.float64)
    except (TypeError, ValueError):
        spend_array = np.array([np.float64(s) for s in spend], dtype=np.float64)
    stats["purch_amount_365d"] = spend_array[customer_index]
    return np.column_stack(
        [_CROSSES[name].build(stats, d.NUMPY_OPS) for name in plan.cross_names]
    ).astype(np.float32)


#: Up to this many customers, :func:`decision_matrix_many` builds customer by customer (the
#: columnar build's fixed numpy overhead is larger than the work).
SMALL_BATCH = 4


def _matrix_by_customer(
    vectors: Sequence[Mapping[str, Any]],
    arrays: OfferArrays,
    touchpoint: Mapping[str, Any],
    contexts: Sequence[Mapping[str, Any] | None] | None,
    now: datetime,
    encoding: Encoding,
    customer_index: np.ndarray,
    offer_index: np.ndarray,
    dtype: np.dtype,
) -> np.ndarray:
    """:func:`decision_matrix_many` of a few customers, by :func:`decision_matrix` calls."""
    X = np.empty((customer_index.shape[0], len(encoding.columns)), dtype=dtype)
    for i in np.unique(customer_index).tolist():
        rows = np.flatnonzero(customer_index == i)
        idx = offer_index[rows]
        offers = OfferArrays(
            arrays.offer_id[idx], arrays.offer_type[idx], arrays.category[idx], arrays.value[idx]
        )
        context = contexts[i] if contexts is not None else None
        X[rows] = decision_matrix(vectors[i], offers, touchpoint, context, now, encoding=encoding)
    return X


def _elapsed_days(vectors: Sequence[Mapping[str, Any]], now: datetime) -> np.ndarray:
    """Days between each vector's ``__as_of`` and ``now`` (0 without as-of), shape (n,)."""
    cache: dict[Any, float] = {None: 0.0}
    out = []
    for as_of in _column(vectors, AS_OF_KEY):
        days = cache.get(as_of)
        if days is None:
            as_of_ts = datetime.fromisoformat(as_of) if isinstance(as_of, str) else as_of
            days = max(0.0, (now - as_of_ts).total_seconds() / d.DAY_SECONDS)
            cache[as_of] = days
        out.append(days)
    return np.array(out, dtype=np.float64)


def _shared_rows(
    plan: _Plan,
    vectors: Sequence[Mapping[str, Any]],
    touchpoint: Mapping[str, Any],
    contexts: Sequence[Mapping[str, Any] | None] | None,
    now: datetime,
    elapsed: np.ndarray,
) -> np.ndarray:
    """:func:`_shared_row` of every vector, shape (n, n_columns) float32."""
    n = len(vectors)
    rows = np.empty((n, len(plan.template)), dtype=np.float32)
    rows[:] = plan.template
    if not n:
        return rows
    if len(plan.numeric_names):
        rows[:, plan.numeric_index] = _numeric_block(plan, vectors, elapsed)
    scalars = _request_scalars(touchpoint, now)
    for j, col, source, key, default in plan.other_shared:
        if source == "scalar":
            value = scalars[key]
            rows[:, j] = col.code(value) if col.kind == "categorical" else _number(value)
            continue
        if source == "context":
            no_context: list[Any] = [None] * n
            values = no_context if contexts is None else [(c or {}).get(key) for c in contexts]
        else:
            values = _column(vectors, key, default)
            if key in _AGING:
                values = [_aged(key, x, e) for x, e in zip(values, elapsed.tolist(), strict=True)]
        rows[:, j] = _column_values(col, values)
    return rows


_STR_OR_NONE = frozenset({str, type(None)})


def _column_values(col: ColumnEncoding, values: list[Any]) -> np.ndarray:
    """``col.code`` (categorical) or ``_number`` of each value, shape (n,) float64."""
    if col.kind != "categorical":
        return np.array([_number(v) for v in values], dtype=np.float64)
    if set(map(type, values)) <= _STR_OR_NONE:  # one code per distinct text
        codes = {v: col.code(v) for v in set(values)}
        return np.array([codes[v] for v in values], dtype=np.float64)
    return np.array([col.code(v) for v in values], dtype=np.float64)


def _numeric_block(
    plan: _Plan, vectors: Sequence[Mapping[str, Any]], elapsed: np.ndarray
) -> np.ndarray:
    """The numeric customer features of every vector, aged; shape (n, k) float64.

    Row ``i`` equals the numbers :func:`_shared_row` computes for vector ``i``: plain
    numbers go through one numpy conversion and vectorised ageing, anything else (text,
    nested values) through the per-value path.
    """
    names, defaults = plan.numeric_names, plan.numeric_defaults
    getter = itemgetter(*names)
    single = len(names) == 1

    def values_of(vector: Mapping[str, Any]) -> tuple:
        try:
            got = getter(vector)
        except KeyError:
            return tuple(vector.get(nm, df) for nm, df in zip(names, defaults, strict=True))
        return (got,) if single else got

    slow: dict[int, tuple] = {}  # rows that take the per-value path
    got = vectors.numbers(names) if hasattr(vectors, "numbers") else None
    if got is not None:  # a block: stored numbers as one array; cold-start rows by value
        numbers, known = got
        slow = {i: values_of(vectors[i]) for i in np.flatnonzero(~known).tolist()}
    else:
        tuples = [values_of(v) for v in vectors]
        block = np.array(tuples)  # float64 (or int64) exactly when every value is a number
        if block.dtype.kind in "fib" and block.shape == (len(tuples), len(names)):
            numbers = block.astype(np.float64)
        else:
            numbers = np.zeros((len(tuples), len(names)), dtype=np.float64)
            for i, values in enumerate(tuples):
                if set(map(type, values)) <= _PLAIN_NUMBERS:
                    numbers[i] = np.array(values, dtype=np.float64)
                else:
                    slow[i] = values
    if len(plan.aging_positions):
        aged = numbers[:, plan.aging_positions]
        step = elapsed[:, None]
        grow = (aged != plan.aging_defaults) & (step > 0)
        grown = aged + step
        grown = np.where(plan.aging_capped, np.minimum(grown, float(d.HORIZON_DAYS)), grown)
        numbers[:, plan.aging_positions] = np.where(grow, grown, aged)
    for i, values in slow.items():
        e = float(elapsed[i])
        numbers[i] = [
            _number(_aged(name, value, e)) for name, value in zip(names, values, strict=True)
        ]
    return numbers


def _key_lookup_pairs(
    maps: Sequence[Mapping[str, Any] | None],
    keys: np.ndarray,
    stats: Sequence[str],
    customer_index: np.ndarray,
    key_index: np.ndarray,
) -> np.ndarray:
    """:func:`_key_lookup` of many customers' key maps, read at (customer, key) pairs.

    Parameters
    ----------
    maps : n key maps (``{"keys": [...], "values": [[...], ...]}``) or None
    keys : ndarray of object, shape (k,), the offer-side keys (text or None)
    stats : the statistics to read (the first ``len(stats)`` values of a row)
    customer_index, key_index : ndarray of int, shape (p,)
        The pairs: customer ``customer_index[r]``'s map read at ``keys[key_index[r]]``.

    Returns
    -------
    ndarray of float64, shape (p, len(stats)): row ``r`` equal to row ``key_index[r]`` of
    ``_key_lookup(maps[customer_index[r]], keys, stats)``; defaults where the map lacks the
    key, the first row of a key a map repeats.
    """
    n_stats = len(stats)
    defaults = np.array([d.STAT_DEFAULTS[s] for s in stats], dtype=np.float64)
    out = np.empty((customer_index.shape[0], n_stats), dtype=np.float64)
    out[:] = defaults
    key_list = keys.tolist()
    odd: list[int] = []  # maps looked up alone, with _key_lookup
    if not set(map(type, key_list)) <= _TEXT_OR_NONE:
        odd = [i for i, t in enumerate(maps) if t and t.get("keys")]
        _fill_alone(out, maps, odd, keys, stats, customer_index, key_index)
        return out
    distinct = {k: i for i, k in enumerate(dict.fromkeys(k for k in key_list if k is not None))}
    if not distinct:
        return out  # every offer-side key is missing: defaults
    missing = len(distinct)
    # comprehensions and C-level map() rather than one Python loop body per customer
    present = [i for i, t in enumerate(maps) if t]
    keys_lists = [maps[i].get("keys") or () for i in present]  # type: ignore[union-attr]
    values_lists = [maps[i].get("values") or () for i in present]  # type: ignore[union-attr]
    counts_all = np.fromiter(map(len, keys_lists), dtype=np.intp, count=len(present))
    rows_all = np.fromiter(map(len, values_lists), dtype=np.intp, count=len(present))
    mismatch = (counts_all != rows_all) & (counts_all > 0)  # not one row per key
    odd.extend(present[i] for i in np.flatnonzero(mismatch).tolist())
    if mismatch.any():
        keep = np.flatnonzero(~mismatch).tolist()
        present = [present[i] for i in keep]
        keys_lists = [keys_lists[i] for i in keep]
        values_lists = [values_lists[i] for i in keep]
        counts_all = counts_all[keep]
    owners = present
    counts = counts_all
    flat_keys: list[Any] = list(chain.from_iterable(keys_lists))
    flat_values: list[Any] = list(chain.from_iterable(values_lists))
    values = None
    if flat_keys:
        try:
            values = np.asarray(flat_values, dtype=np.float64)
        except (TypeError, ValueError):
            values = None
        if values is None or values.ndim != 2 or values.shape[1] < n_stats:
            odd.extend(owners)  # ragged or short rows
            values = None
    if values is not None:
        if not set(map(type, flat_keys)) <= {str}:
            flat_keys = list(map(str, flat_keys))
        position = np.fromiter(
            map(distinct.get, flat_keys, repeat(missing)), dtype=np.intp, count=len(flat_keys)
        )
        owner = np.repeat(np.asarray(owners, dtype=np.intp), counts)
        _fill_found(out, owner, position, values, distinct, key_list, customer_index, key_index)
    _fill_alone(out, maps, odd, keys, stats, customer_index, key_index)
    return out


def _fill_found(
    out: np.ndarray,
    owner: np.ndarray,
    position: np.ndarray,
    values: np.ndarray,
    distinct: Mapping[str, int],
    key_list: list[Any],
    customer_index: np.ndarray,
    key_index: np.ndarray,
) -> None:
    """Rows of ``out`` (pairs ``customer_index``, ``key_index``) found among flattened map
    entries: entry ``e`` is customer ``owner[e]``'s key number ``position[e]`` in
    ``distinct`` (``len(distinct)``: not an offer-side key) with the statistics
    ``values[e]``."""
    missing = len(distinct)
    width = missing + 1
    wanted = position != missing
    entries = (owner * width + position)[wanted]
    # sorted (customer, key) entries; a key repeated in a map keeps its first row
    entries, first = np.unique(entries, return_index=True)
    rows = values[wanted][first, : out.shape[1]]
    key_of = np.array([missing if k is None else distinct[k] for k in key_list], dtype=np.intp)
    wanted_at = customer_index * width + key_of[key_index]
    if not entries.size:
        return
    cells = int(max(entries[-1], wanted_at.max())) + 1
    if cells <= DENSE_CELLS:  # a (customer, key) -> entry table: one gather per pair
        slot = np.full(cells, -1, dtype=np.intp)
        slot[entries] = np.arange(entries.size)
        found = slot[wanted_at]
        hit = found >= 0
    else:
        found = np.minimum(np.searchsorted(entries, wanted_at), entries.size - 1)
        hit = entries[found] == wanted_at
    out[hit] = rows[found[hit]]


#: Largest (customer x key) table :func:`_fill_found` indexes directly (8 bytes a cell);
#: beyond it, a binary search.
DENSE_CELLS = 1 << 21


def _key_lookup_flat(
    counts: np.ndarray,
    flat_keys: pa.Array,
    values: np.ndarray,
    keys: np.ndarray,
    stats: Sequence[str],
    customer_index: np.ndarray,
    key_index: np.ndarray,
) -> np.ndarray | None:
    """:func:`_key_lookup_pairs` of key maps given flattened (a block's ``key_stats``).

    ``counts`` shape (n,): entries of each customer, in customer order; ``flat_keys``
    (sum(counts),) text; ``values`` (sum(counts), width). None when ``keys`` (the offer
    side) are not all text or None, or the values are too short: then read the maps.
    """
    n_stats = len(stats)
    key_list = keys.tolist()
    if not set(map(type, key_list)) <= _TEXT_OR_NONE or (len(values) and values.shape[1] < n_stats):
        return None
    out = np.empty((customer_index.shape[0], n_stats), dtype=np.float64)
    out[:] = [d.STAT_DEFAULTS[s] for s in stats]
    distinct = {k: i for i, k in enumerate(dict.fromkeys(k for k in key_list if k is not None))}
    if not distinct or not len(values):
        return out
    position = pc.fill_null(
        pc.index_in(flat_keys, value_set=pa.array(list(distinct), pa.string())), len(distinct)
    ).to_numpy(zero_copy_only=False)
    owner = np.repeat(np.arange(len(counts), dtype=np.intp), counts)
    _fill_found(
        out, owner, position.astype(np.intp), values, distinct, key_list, customer_index, key_index
    )
    return out


def _column(vectors: Any, key: str, default: Any = None) -> list[Any]:
    """``[v.get(key, default) for v in vectors]``; one call on a block of vectors."""
    column = getattr(vectors, "column", None)
    if column is not None:
        return column(key, default)
    return [v.get(key, default) for v in vectors]


def _fill_alone(
    out: np.ndarray,
    maps: Sequence[Mapping[str, Any] | None],
    customers: list[int],
    keys: np.ndarray,
    stats: Sequence[str],
    customer_index: np.ndarray,
    key_index: np.ndarray,
) -> None:
    """Rows of ``out`` of the pairs of ``customers``, by :func:`_key_lookup` one at a time."""
    if not customers:
        return
    for i in customers:
        rows = np.flatnonzero(customer_index == i)
        if rows.size:
            out[rows] = _key_lookup(maps[i], keys, stats)[key_index[rows]]
