"""Stored compact vectors -> :class:`~recsys.decision.ports.FeatureBlock`: the one read path.

Each stored vector is parsed by orjson; the columns of a read are then assembled with a few
numpy calls over all its customers (the numbers of ``PARSE_ROWS`` vectors at a time in one
call, their texts in another, every statistic of a table at once). Unknown customers' rows
hold the cold-start values, worked out once per layout.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, repeat
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson

from features import definitions as d
from features.online.base import (
    AS_OF_KEY,
    NUMBERS_KEY,
    SPEC_KEY,
    STATS_KEY,
    TEXTS_KEY,
    Layout,
    Vector,
    encode_vector,
    layout_mismatch,
    mismatch,
)
from features.pipeline import STAT_TABLES
from recsys.decision.ports import FeatureBlock, KeyStats

#: Stored vectors parsed at a time. Their Python objects (~40 lists and dicts a vector) are
#: freed before the next ones are parsed: few are alive when the garbage collector's young
#: generation is collected, so they are never promoted to the old generations, whose full
#: collections traverse the whole heap (with 256 a read of 5,000 vectors costs 2x the CPU a
#: vector); the numpy calls of a part cost ~1 us a vector.
PARSE_ROWS = 8
_DEFAULTS = {f.name: f for f in d.customer_feature_defs()}
_NO_LAYOUT = Layout((), ())
_NO_TABLES: dict[str, Any] = {}
_TABLE_NAMES = tuple(STAT_TABLES)
_WIDTHS = tuple(len(table.stats) for table in STAT_TABLES.values())


@dataclass(frozen=True)
class _Columns:
    """The columns of a block of one layout and their cold-start values: the layout's
    names, then the customer features it lacks (an older store)."""

    layout: Layout
    numeric_names: tuple[str, ...]
    text_names: tuple[str, ...]
    cold_numbers: np.ndarray  # (1, numeric), float64; None -> NaN
    cold_texts: np.ndarray  # (text, 1), object

    @property
    def widths(self) -> tuple[int, int]:
        """Numbers and texts of a stored vector."""
        return len(self.layout.numeric), len(self.layout.text)


def decode_block(
    ids: Sequence[str],
    raws: Sequence[bytes | None],
    expected_version: str,
    layout: Layout | None,
) -> FeatureBlock:
    """The block of ``ids`` (distinct) from their stored JSON (None = unknown customer).

    Columns: the layout's names, then the customer features the layout lacks (an older
    store) with their cold-start values for everyone.

    Raises
    ------
    SpecMismatchError
        An entry of another feature spec, or entries that do not fit ``layout``.
    """
    n = len(ids)
    stored = np.array(raws, dtype=object).reshape(n)  # bytes are scalars to numpy
    cold_start = stored == None  # noqa: E711 (elementwise)
    rows = (~cold_start).nonzero()[0]
    lines = stored[rows].tolist()
    read = _Read(_columns(layout or _NO_LAYOUT), n, expected_version)
    for start in range(0, len(lines), PARSE_ROWS):
        read.add(lines[start : start + PARSE_ROWS], rows[start : start + PARSE_ROWS])
    columns = read.columns
    text = np.repeat(columns.cold_texts, n, axis=1)
    text[: columns.widths[1], rows] = read.texts()
    as_of = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
    as_of[rows] = np.array(read.times, dtype="datetime64[us]")
    return FeatureBlock(
        ids=tuple(ids),
        numeric_names=columns.numeric_names,
        numeric=read.numeric,
        text=MappingProxyType(dict(zip(columns.text_names, text, strict=True))),
        stats=MappingProxyType(read.key_stats(rows)),
        as_of=as_of,
        cold_start=cold_start,
        spec_version=expected_version,
    )


class _Read:
    """The columns of one read, filled ``PARSE_ROWS`` stored vectors at a time.

    The numbers and the statistics' values of each part are arrays at once (most of a
    vector's Python objects are freed before the next part is parsed); the texts, as-of
    times and keys (one Python object each, kept by the block anyway) are arrays at the end.
    """

    def __init__(self, columns: _Columns, n: int, expected: str):
        self.columns = columns
        self.expected = expected
        self.numeric = np.repeat(columns.cold_numbers, n, axis=0)
        self.text: list[Any] = []  # every known row's texts, flat
        self.times: list[str | None] = []
        self.counts: list[list[int]] = [[] for _ in STAT_TABLES]  # by table, keys a row
        self.keys: list[list[Any]] = [[] for _ in STAT_TABLES]  # by table, every row's keys
        self.values: list[list[np.ndarray]] = [[] for _ in STAT_TABLES]  # by table, by part

    def add(self, lines: list[bytes], at: np.ndarray) -> None:
        """Parse the stored JSON of the known rows ``at``."""
        try:
            docs = list(map(orjson.loads, lines))
            specs = list(map(dict.get, docs, repeat(SPEC_KEY)))
        except (orjson.JSONDecodeError, TypeError) as exc:  # not a JSON object
            raise layout_mismatch() from exc
        if specs.count(self.expected) != len(specs):
            raise mismatch(next(s for s in specs if s != self.expected), self.expected)
        try:
            self._add(docs, at)
        except (AttributeError, TypeError, ValueError, OverflowError) as exc:
            raise layout_mismatch() from exc  # a value of another type than the format's

    def _add(self, docs: list[dict[str, Any]], at: np.ndarray) -> None:
        numbers_width, text_width = self.columns.widths
        numbers = np.array(list(map(dict.get, docs, repeat(NUMBERS_KEY))), dtype=np.float64)
        if numbers.shape != (len(docs), numbers_width):
            raise ValueError(f"lists of {numbers_width} numbers expected")
        self.numeric[at, :numbers_width] = numbers
        texts = list(map(dict.get, docs, repeat(TEXTS_KEY)))
        if set(map(type, texts)) != {list} or set(map(len, texts)) != {text_width}:
            raise ValueError(f"lists of {text_width} texts expected")
        self.text.extend(chain.from_iterable(texts))
        self.times.extend(map(dict.get, docs, repeat(AS_OF_KEY)))
        rows: list[list[Any]] = [[] for _ in _WIDTHS]  # by table: the part's rows of values
        before = list(map(len, self.keys))
        outs = list(zip(_TABLE_NAMES, self.counts, self.keys, rows, strict=True))
        for stats in map(dict.get, docs, repeat(STATS_KEY)):
            stats = stats or _NO_TABLES
            for name, counts, keys, values in outs:
                table = stats.get(name) or _NO_TABLES
                table_keys = table.get("keys") or ()
                counts.append(len(table_keys))
                keys.extend(table_keys)
                values.extend(table.get("values") or ())
        # one row of the table's width a key (the writers' guarantee), checked by totals
        if list(map(len, rows)) != [len(k) - b for k, b in zip(self.keys, before, strict=True)]:
            raise ValueError("one row of statistics a key expected")
        ends = list(accumulate(map(operator.mul, map(len, rows), _WIDTHS), initial=0))
        flat = np.array(list(chain.from_iterable(chain.from_iterable(rows))), dtype=np.float64)
        if flat.shape != (ends[-1],):  # null -> NaN
            raise ValueError("rows of the table's width expected")
        for values, start, end in zip(self.values, ends, ends[1:], strict=False):
            values.append(flat[start:end])

    def texts(self) -> np.ndarray:
        """The known rows' texts, shape (text width, known rows)."""
        text = np.array(self.text, dtype=object)
        return text.reshape(len(self.times), self.columns.widths[1]).T

    def key_stats(self, rows: np.ndarray) -> dict[str, KeyStats]:
        """Every table's statistics of the read's customers (``rows``: the known ones)."""
        counts = np.zeros((len(_WIDTHS), len(self.numeric)), dtype=np.intp)
        counts[:, rows] = self.counts
        sizes = [len(k) for k in self.keys]
        keys = np.fromiter(chain.from_iterable(self.keys), dtype=object, count=sum(sizes))
        # every table's values at once, table after table
        values = np.concatenate([np.zeros(0), *chain.from_iterable(self.values)])
        key_ends = list(accumulate(sizes, initial=0))
        value_ends = list(accumulate(map(operator.mul, sizes, _WIDTHS), initial=0))
        return {
            name: KeyStats(
                counts[t],
                keys[key_ends[t] : key_ends[t + 1]],
                values[value_ends[t] : value_ends[t + 1]].reshape(-1, _WIDTHS[t]),
            )
            for t, name in enumerate(_TABLE_NAMES)
        }


def block_of(
    vectors: Mapping[str, Vector | None], spec_version: str, layout: Layout | None = None
) -> FeatureBlock:
    """The block of vectors given as mappings (None = cold start), by id: each one encoded
    and read as a store would (training's point-in-time vectors, tests)."""
    given = [v for v in vectors.values() if v is not None and not isinstance(v, bytes)]
    if layout is None:
        layout = Layout.of(given[0]) if given else Layout((), ())
    raws = [
        encode_vector(v, layout, spec_version) if v is not None else None for v in vectors.values()
    ]
    return decode_block(list(vectors), raws, spec_version, layout)


def describe_row(block: FeatureBlock, i: int) -> dict[str, Any]:
    """Row ``i`` of a block as a readable dict (for display, e.g. ``recsys features get``)."""
    as_of = block.as_of[i]
    out: dict[str, Any] = {
        "customer_id": block.ids[i],
        "cold_start": bool(block.cold_start[i]),
        "as_of": None
        if np.isnat(as_of)
        else str(as_of.astype("datetime64[us]").item().isoformat()),
        "spec_version": block.spec_version,
    }
    for j, name in enumerate(block.numeric_names):
        value = float(block.numeric[i, j])
        out[name] = None if value != value else value
    out.update({name: column[i] for name, column in block.text.items()})
    one = block.take([i])
    out["stats"] = {
        name: dict(zip(s.keys.tolist(), s.values.tolist(), strict=True))
        for name, s in one.stats.items()
    }
    return out


@functools.lru_cache(maxsize=16)
def _columns(layout: Layout) -> _Columns:
    """The columns of a block of ``layout`` and their cold-start values."""
    numeric = layout.numeric + tuple(
        f for f, spec in _DEFAULTS.items() if spec.kind == "numeric" and f not in layout.numeric
    )
    text = layout.text + tuple(
        f for f, spec in _DEFAULTS.items() if spec.kind != "numeric" and f not in layout.text
    )
    cold = {name: spec.default for name, spec in _DEFAULTS.items()}
    numbers = np.array([[cold.get(name) for name in numeric]], dtype=np.float64)  # None -> NaN
    texts = np.empty((len(text), 1), dtype=object)
    texts[:, 0] = [cold.get(name) for name in text]
    return _Columns(layout, numeric, text, numbers.reshape(1, len(numeric)), texts)
