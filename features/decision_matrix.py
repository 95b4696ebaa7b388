"""The serving request matrix: (customer, candidate offer) pairs -> model rows.

One builder for one request or a million customers: every column is computed as a numpy
column over the :class:`~recsys.decision.ports.FeatureBlock` (customers) or the prepared
offers, then the rows of the pairs are gathered. A row equals, as float32, ``encode`` of the
training-set row of the same (customer features, offer, touchpoint, context, time)
(:mod:`features.matrix`): the same columns, vocabularies and missing values, with

- days-since features aged by the time elapsed since the features were computed
  (``as_of``; the cold start does not age);
- the crosses computed from the customer's per-key statistics looked up at the offer's key
  (offer, offer type, category) or the touchpoint's (touchpoint, channel), as the training
  set computes them.

:class:`MatrixColumns` is the recipe of one encoding (which column comes from where);
:class:`DecisionMatrixBuilder` the pipeline's ``MatrixBuilder``, with each touchpoint's
candidate offers prepared once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from typing import Any

import numpy as np

from features import definitions as d
from features.matrix import ColumnEncoding, Encoding
from features.offers import OFFER_COLUMNS, OfferArrays
from features.pipeline import STAT_TABLES
from features.spec import FEATURE_SPEC_VERSION
from recsys.catalog import Catalog, TouchpointOffers
from recsys.decision.ports import FeatureBlock, KeyStats
from recsys.errors import SpecMismatchError

#: Rows of the matrix filled at a time (~1-2 MB: they stay in the CPU cache while their
#: offer and cross columns are written).
ROW_BLOCK = 2048
_SCALARS = frozenset({"touchpoint_id", "tp_channel", "tp_stage", "req_hour", "req_dow"})
_AGING = {f.name: f for f in d.customer_feature_defs() if f.ages}
_CROSSES = {x.feature.name: x for x in d.CROSSES}
#: Statistics keyed by the request's touchpoint: offer_key -> the touchpoint's field.
_TOUCHPOINT_KEYS = {"touchpoint_id": "touchpoint_id", "tp_channel": "channel"}
_FLOAT_MAX = np.finfo(np.float64).max
#: Each statistics table's defaults (a customer without statistics for a key), shape (width,)
_STAT_DEFAULTS = {
    name: np.array([d.STAT_DEFAULTS[s] for s in spec.stats], dtype=np.float64)
    for name, spec in STAT_TABLES.items()
}


@dataclass(frozen=True)
class PreparedOffers:
    """One touchpoint's candidate offers, worked out once for an encoding.

    Attributes
    ----------
    scalars : tuple of (column position, float32 value)
        The touchpoint's columns.
    row : ndarray of float32, shape (n_columns,)
        The columns every row at the touchpoint starts with: the touchpoint's, and the
        always-missing ones.
    codes : tuple of (column position, ndarray of float32, shape (m,))
        The offer columns of each offer.
    keys : mapping of statistics table -> (distinct keys, ndarray of intp, shape (m,))
        Each offer's key of the table (offer id, type, category, touchpoint) as a position
        among the distinct keys; -1 = no key (the statistics' defaults).
    """

    touchpoint: Mapping[str, Any]
    size: int
    scalars: tuple[tuple[int, np.float32], ...]
    row: np.ndarray
    codes: tuple[tuple[int, np.ndarray], ...]
    keys: Mapping[str, tuple[Mapping[str, int], np.ndarray]]

    def __len__(self) -> int:
        return self.size


@dataclass(frozen=True)
class _Numbers:
    """The numeric customer columns of an encoding in blocks of some numeric names."""

    index: Mapping[str, int]  # numeric name -> column of the block
    positions: np.ndarray  # (k,) encoding columns of the numeric features the block has
    columns: np.ndarray  # (k,) their block columns
    aging: np.ndarray  # positions among the k of the days-since features
    defaults: np.ndarray  # their defaults (they do not age)
    capped: np.ndarray  # defaults > 0 are their caps (the horizon, the lifetime)
    others: tuple[tuple[int, ColumnEncoding], ...]  # the other customer columns


class MatrixColumns:
    """Where each column of an encoding comes from: the request (touchpoint, time,
    context), the customer's features, the offer, or a cross of both.

    Parameters
    ----------
    encoding : Encoding
        The model's encoding.

    Raises
    ------
    SpecMismatchError
        The encoding was fitted for another feature spec than this code computes.
    """

    def __init__(self, encoding: Encoding):
        if encoding.spec_version != FEATURE_SPEC_VERSION:
            raise SpecMismatchError(
                f"the model's encoding is for feature spec {encoding.spec_version}, this code "
                f"computes spec {FEATURE_SPEC_VERSION}; retrain the model"
            )
        self.encoding = encoding
        columns = encoding.columns
        self.template = np.full(len(columns), np.nan, dtype=np.float32)
        self.customer: list[tuple[int, ColumnEncoding]] = []
        self.context: list[tuple[int, ColumnEncoding, str]] = []
        self.offer = [(j, c) for j, c in enumerate(columns) if c.name in OFFER_COLUMNS]
        self.scalar = [(j, c) for j, c in enumerate(columns) if c.name in _SCALARS]
        #: the request time's columns: (position, the codes of each hour or weekday, hourly)
        self.clock = tuple(
            (j, _encoded(c, [float(v) for v in range(24 if c.name == "req_hour" else 7)]),
             c.name == "req_hour")
            for j, c in self.scalar
            if c.name in ("req_hour", "req_dow")
        )  # fmt: skip
        crosses = [(j, c.name) for j, c in enumerate(columns) if c.name in _CROSSES]
        self.cross_index = np.array([j for j, _ in crosses], dtype=np.intp)
        self.cross_names = tuple(name for _, name in crosses)
        #: the column of the request context x offer category cross (None: not a model input)
        self.context_match = next(
            (j for j, c in enumerate(columns) if c.name == d.CONTEXT_CATEGORY_MATCH.name), None
        )
        for j, col in enumerate(columns):
            if col.name in OFFER_COLUMNS or col.name in _SCALARS or col.name in _CROSSES:
                continue
            if j == self.context_match:
                continue
            if col.name.startswith(d.CONTEXT_PREFIX):
                self.context.append((j, col, col.name[len(d.CONTEXT_PREFIX) :]))
            elif col.name.startswith("__"):  # no feature has such a name: always missing
                self.template[j] = _encoded(col, [None])[0]
            else:
                self.customer.append((j, col))
        self._by_names: dict[tuple[str, ...], _Numbers] = {}

    def prepare(self, offers: OfferArrays, touchpoint: Mapping[str, Any]) -> PreparedOffers:
        """The offer and touchpoint columns of ``offers`` at ``touchpoint`` (a mapping with
        ``touchpoint_id``, ``channel``, ``stage``)."""
        scalars = {
            "touchpoint_id": touchpoint.get("touchpoint_id"),
            "tp_channel": touchpoint.get("channel"),
            "tp_stage": touchpoint.get("stage"),
        }
        codes = tuple(
            (j, _encoded(col, offers.feature(col.name)).astype(np.float32)) for j, col in self.offer
        )
        m = len(offers)
        keys = {}
        for name, spec in STAT_TABLES.items():
            if spec.offer_key in _TOUCHPOINT_KEYS:
                side = np.full(m, touchpoint.get(_TOUCHPOINT_KEYS[spec.offer_key]), dtype=object)
            else:
                side = offers.feature(spec.offer_key)
            texts = [None if _missing(v) else str(v) for v in side.tolist()]
            distinct = {
                t: i for i, t in enumerate(dict.fromkeys(t for t in texts if t is not None))
            }
            key_of = np.array([-1 if t is None else distinct[t] for t in texts], dtype=np.intp)
            keys[name] = (distinct, key_of)
        at_touchpoint = tuple(
            (j, np.float32(_encoded(col, [scalars.get(col.name)])[0]))
            for j, col in self.scalar
            if col.name in scalars
        )
        row = self.template.copy()
        for j, code in at_touchpoint:
            row[j] = code
        return PreparedOffers(
            touchpoint=dict(touchpoint),
            size=m,
            scalars=at_touchpoint,
            row=row,
            codes=codes,
            keys=keys,
        )

    def rows(
        self,
        features: FeatureBlock,
        offers: PreparedOffers,
        contexts: Sequence[Mapping[str, Any] | None],
        now: datetime,
        pair_customer: np.ndarray,
        pair_offer: np.ndarray,
        dtype: Any = np.float32,
    ) -> np.ndarray:
        """Rows of the pairs: customer ``pair_customer[r]`` of ``features`` (with context
        ``contexts[pair_customer[r]]``) x offer ``pair_offer[r]`` of ``offers``, at ``now``
        (naive = UTC).

        Returns
        -------
        ndarray, shape (p, n_columns), ``dtype`` (float32 or float64, float32 values).

        Raises
        ------
        SpecMismatchError
            The features were computed with another spec than the encoding's.
        ValueError
            Shapes or indexes that do not fit.
        """
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"`dtype` must be float32 or float64, got {dtype}")
        if features.spec_version != self.encoding.spec_version:
            raise SpecMismatchError(
                f"the customer features were materialised with feature spec "
                f"{features.spec_version}, the model expects {self.encoding.spec_version}; "
                "run `recsys features materialize`"
            )
        n, m = len(features), len(offers)
        if len(contexts) != n:
            raise ValueError(
                f"`contexts` must have one entry per customer ({n}), got {len(contexts)}"
            )
        pair_customer = np.asarray(pair_customer, dtype=np.intp)
        pair_offer = np.asarray(pair_offer, dtype=np.intp)
        if pair_customer.shape != pair_offer.shape or pair_customer.ndim != 1:
            raise ValueError(
                f"`pair_customer` and `pair_offer` must have one shape (p,), got "
                f"{pair_customer.shape} and {pair_offer.shape}"
            )
        for name, index, size in (
            ("pair_customer", pair_customer, n),
            ("pair_offer", pair_offer, m),
        ):
            if index.size and not (index.min() >= 0 and index.max() < size):
                raise ValueError(
                    f"`{name}` must be in 0..{size - 1}, got {index.min()}..{index.max()}"
                )
        if now.tzinfo is not None:
            now = now.astimezone(UTC).replace(tzinfo=None)
        elapsed = _elapsed_days(features.as_of, now)
        shared = self._shared(features, offers, contexts, now, elapsed)
        crossed = None
        if len(self.cross_index):
            crossed = self._crosses(features, offers, elapsed, pair_customer, pair_offer)
        X = _fill_rows(
            shared.astype(dtype, copy=False), offers.codes, self.cross_index, crossed,
            pair_customer, pair_offer,
        )  # fmt: skip
        if self.context_match is not None:
            X[:, self.context_match] = _context_matches(
                contexts, offers.keys["category"], pair_customer, pair_offer
            )
        return X

    def _shared(
        self,
        features: FeatureBlock,
        offers: PreparedOffers,
        contexts: Sequence[Mapping[str, Any] | None],
        now: datetime,
        elapsed: np.ndarray,
    ) -> np.ndarray:
        """The columns every offer of a customer shares, shape (n, n_columns) float32."""
        n = len(features)
        rows = np.empty((n, len(self.template)), dtype=np.float32)
        rows[:] = offers.row
        for j, codes, hourly in self.clock:
            rows[:, j] = codes[now.hour if hourly else now.weekday()]
        for j, col, key in self.context:
            rows[:, j] = _encoded(col, [c.get(key) if c else None for c in contexts])
        numbers = self._numbers(features.numeric_names)
        if len(numbers.positions):  # every numeric feature at once, aged
            values = features.numeric[:, numbers.columns]
            aging = values[:, numbers.aging]
            grown = aging + elapsed[:, None]
            grown = np.where(numbers.capped, np.minimum(grown, numbers.defaults), grown)
            grow = (aging != numbers.defaults) & (elapsed[:, None] > 0)
            values[:, numbers.aging] = np.where(grow, grown, aging)
            rows[:, numbers.positions] = values
        for j, col in numbers.others:  # categorical, text or absent features
            text = features.text.get(col.name)
            at = numbers.index.get(col.name)
            if text is not None:
                rows[:, j] = _encoded(col, text)
            else:
                rows[:, j] = _encoded(
                    col, features.numeric[:, at] if at is not None else [None] * n
                )
        return rows

    def _numbers(self, names: tuple[str, ...]) -> _Numbers:
        """Where the numeric customer columns are in a block of these numeric names
        (cached: every block of a store has the same names)."""
        found = self._by_names.get(names)
        if found is None:
            index = {name: j for j, name in enumerate(names)}
            numeric = [(j, c) for j, c in self.customer if c.kind == "numeric" and c.name in index]
            aging = [k for k, (_, c) in enumerate(numeric) if c.name in _AGING]
            defaults = [_AGING[numeric[k][1].name].default for k in aging]
            found = _Numbers(
                index=index,
                positions=np.array([j for j, _ in numeric], dtype=np.intp),
                columns=np.array([index[c.name] for _, c in numeric], dtype=np.intp),
                aging=np.array(aging, dtype=np.intp),
                defaults=np.array(defaults, dtype=np.float64),
                capped=np.array([x > 0 for x in defaults], dtype=bool),
                others=tuple(
                    (j, c)
                    for j, c in self.customer
                    if not (c.kind == "numeric" and c.name in index)
                ),
            )
            self._by_names[names] = found
        return found

    def _crosses(
        self,
        features: FeatureBlock,
        offers: PreparedOffers,
        elapsed: np.ndarray,
        pair_customer: np.ndarray,
        pair_offer: np.ndarray,
    ) -> np.ndarray:
        """The cross columns of every pair, shape (p, n_crosses) float32."""
        stats: dict[str, np.ndarray] = {}
        for name, spec in STAT_TABLES.items():
            found = _stat_rows(
                features.stats[name], offers.keys[name], _STAT_DEFAULTS[name], pair_customer,
                pair_offer,
            )  # fmt: skip
            stats.update({s: found[:, i] for i, s in enumerate(spec.stats)})
        pair_elapsed = elapsed[pair_customer] * d.DAY_SECONDS
        for s in d.AGING_STATS:
            stats[s] = np.where(stats[s] < d.STAT_DEFAULTS[s], stats[s] + pair_elapsed, stats[s])
        index = self._numbers(features.numeric_names).index
        for name in d.CROSS_CUSTOMER_INPUTS:
            at = index.get(name)
            value = (
                features.numeric[pair_customer, at]
                if at is not None
                else np.zeros(len(pair_customer))
            )
            # as np.nan_to_num(value, nan=0.0) (infinities to the largest floats), by ufuncs:
            # a tenth of its cost
            finite = np.minimum(np.maximum(value, -_FLOAT_MAX), _FLOAT_MAX)
            stats[name] = np.where(np.isnan(value), 0.0, finite)
        built = [_CROSSES[name].build(stats, d.NUMPY_OPS) for name in self.cross_names]
        return np.array(built, dtype=np.float32).reshape(len(built), len(pair_customer)).T


def _stat_rows(
    stats: KeyStats,
    keys: tuple[Mapping[str, int], np.ndarray],
    defaults: np.ndarray,
    pair_customer: np.ndarray,
    pair_offer: np.ndarray,
) -> np.ndarray:
    """The statistics of each pair's (customer, offer key), shape (p, width) float64;
    ``defaults`` (width,) where the customer has no statistics for the key.

    Each customer key is looked up once among the offers' distinct keys, into a table of
    (customer, key) -> entry, shape (n, distinct keys): no larger than customers x candidate
    offers, and no sort nor search (a single customer's build pays ~10 numpy calls). A repeated
    key (the writers keep one) gives its first entry: the entries are assigned last to
    first.
    """
    distinct, key_of = keys
    out = np.empty((pair_customer.shape[0], len(defaults)), dtype=np.float64)
    out[:] = defaults
    # (entries,): each customer key's position among the offers' keys; -1 = no offer has it
    position = np.fromiter(
        map(distinct.get, stats.keys.tolist(), repeat(-1)), dtype=np.intp, count=len(stats.keys)
    )
    matched = np.flatnonzero(position >= 0)[::-1]
    if not matched.size:
        return out
    owner = np.repeat(np.arange(len(stats.counts), dtype=np.intp), stats.counts)
    entry_of = np.full((len(stats.counts), len(distinct)), -1, dtype=np.intp)
    entry_of[owner[matched], position[matched]] = matched
    pair_key = key_of[pair_offer]
    entry = entry_of[pair_customer, pair_key]  # pair_key -1: any cell, masked below
    hit = (entry >= 0) & (pair_key >= 0)
    out[hit] = stats.values[entry[hit], : len(defaults)]
    return out


def _elapsed_days(as_of: np.ndarray, now: datetime) -> np.ndarray:
    """Days from each ``as_of`` (datetime64[us]) to ``now``, >= 0; 0 for NaT."""
    micros = (np.datetime64(now, "us") - as_of).astype(np.int64)
    days = micros / 1e6 / d.DAY_SECONDS
    return np.where(np.isnat(as_of), 0.0, np.maximum(days, 0.0))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _encoded(col: ColumnEncoding, values: np.ndarray | Sequence[Any]) -> np.ndarray:
    """A column's model values, shape (n,) -> (n,) float: the codes of a categorical column
    (as :func:`features.matrix.encode`: the text of the value, JSON for other values), the
    number of a numeric one (NaN when it is not a number, as ``pandas.to_numeric``)."""
    if col.kind == "categorical":
        return col.codes(values)
    if isinstance(values, np.ndarray) and values.dtype == np.float64:
        return values
    items = values.tolist() if isinstance(values, np.ndarray) else values
    return np.array([_number(v) for v in items], dtype=np.float64)


def _number(value: Any) -> float:
    if isinstance(value, bool | int | float | np.number | np.bool_):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return np.nan
    return np.nan


def _context_matches(
    contexts: Sequence[Mapping[str, Any] | None],
    categories: tuple[Mapping[str, int], np.ndarray],
    pair_customer: np.ndarray,
    pair_offer: np.ndarray,
) -> np.ndarray:
    """``x_context_category_match`` of each pair, shape (p,) float: 1.0 when a value of the
    customer's request context is the offer's category (compared as text, as the training
    set's SQL compares JSON values)."""
    distinct, key_of = categories
    named = np.zeros((len(contexts), len(distinct) + 1), dtype=bool)  # last: no category
    for i, context in enumerate(contexts):
        if not context:
            continue
        for value in context.values():
            at = distinct.get(_as_json_text(value))
            if at is not None:
                named[i, at] = True
    return named[pair_customer, np.where(key_of < 0, len(distinct), key_of)[pair_offer]]


def _as_json_text(value: Any) -> str | None:
    """A context value as DuckDB's ``json_extract_string`` gives it (None for null)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _fill_rows(
    shared: np.ndarray,
    offer_codes: tuple[tuple[int, np.ndarray], ...],
    cross_index: np.ndarray,
    crossed: np.ndarray | None,
    pair_customer: np.ndarray,
    pair_offer: np.ndarray,
) -> np.ndarray:
    """Customer row ``shared[pair_customer[r]]`` with the offer columns of
    ``pair_offer[r]`` and the crosses ``crossed[r]``, shape (p, n_columns); ``ROW_BLOCK``
    rows at a time (a column written across ~10^5 rows would stream the matrix through
    memory once per column)."""
    p = pair_customer.shape[0]
    X = np.empty((p, shared.shape[1]), dtype=shared.dtype)
    for start in range(0, p, ROW_BLOCK):
        end = min(start + ROW_BLOCK, p)
        rows = X[start:end]
        # mode="clip" (indexes checked by the caller): numpy buffers ``out`` in "raise" mode
        np.take(shared, pair_customer[start:end], axis=0, out=rows, mode="clip")
        at = pair_offer[start:end]
        for j, codes in offer_codes:
            rows[:, j] = codes[at]
        if crossed is not None:
            rows[:, cross_index] = crossed[start:end]
    return X


class DecisionMatrixBuilder:
    """The decision pipeline's ``MatrixBuilder``: each touchpoint's candidates prepared
    once (:class:`PreparedOffers`), then one :meth:`MatrixColumns.rows` per call.

    Parameters
    ----------
    catalog : Catalog
    encoding : Encoding
        The model's encoding (logged with the model in ``feature_spec.json``).
    dtype : numpy.float64 (default) or numpy.float32
        dtype of the matrices; the values are float32 either way. float64 because LightGBM
        and lleaves read float64: a float32 matrix would be converted whole on every call.
    """

    def __init__(self, catalog: Catalog, encoding: Encoding, dtype: Any = np.float64):
        self.encoding = encoding
        self.dtype = np.dtype(dtype)
        self.columns = MatrixColumns(encoding)
        self._prepared: dict[str, tuple[TouchpointOffers, PreparedOffers]] = {}
        for tp_id in catalog.touchpoints:
            self._prepare(catalog.for_touchpoint(tp_id))

    def _prepare(self, offers: TouchpointOffers) -> PreparedOffers:
        tp = offers.touchpoint
        arrays = OfferArrays(
            offer_id=np.array([o.offer_id for o in offers.offers], dtype=object),
            offer_type=np.array([o.offer_type for o in offers.offers], dtype=object),
            category=np.array([o.category for o in offers.offers], dtype=object),
            value=np.array([o.value for o in offers.offers], dtype=np.float64),
        )
        touchpoint = {"touchpoint_id": tp.touchpoint_id, "channel": tp.channel, "stage": tp.stage}
        prepared = self.columns.prepare(arrays, touchpoint)
        self._prepared[tp.touchpoint_id] = (offers, prepared)
        return prepared

    def build(
        self,
        features: FeatureBlock,
        offers: TouchpointOffers,
        contexts: Sequence[Mapping[str, Any]],
        now: datetime,
        pair_customer: np.ndarray,
        pair_offer: np.ndarray,
    ) -> np.ndarray:
        """Rows of the pairs (see :class:`recsys.decision.ports.MatrixBuilder`), shape
        (p, n_columns)."""
        known = self._prepared.get(offers.touchpoint.touchpoint_id)
        prepared = known[1] if known is not None and known[0] is offers else self._prepare(offers)
        return self.columns.rows(
            features, prepared, contexts, now, pair_customer, pair_offer, self.dtype
        )
