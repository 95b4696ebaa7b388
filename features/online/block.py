"""Stored compact vectors -> :class:`~recsys.decision.ports.FeatureBlock`: the one read path.

All the stored JSON of a read is parsed at once by Arrow (in parallel, outside the GIL) into
columns; unknown customers' rows hold the cold-start values.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

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


def _schema() -> pa.Schema:
    table = pa.struct(
        [("keys", pa.list_(pa.string())), ("values", pa.list_(pa.list_(pa.float64())))]
    )
    return pa.schema(
        [
            (NUMBERS_KEY, pa.list_(pa.float64())),
            (TEXTS_KEY, pa.list_(pa.string())),
            (AS_OF_KEY, pa.string()),
            (SPEC_KEY, pa.string()),
            (STATS_KEY, pa.struct([(name, table) for name in STAT_TABLES])),
        ]
    )


_PARSE = pajson.ParseOptions(explicit_schema=_schema(), unexpected_field_behavior="ignore")
_DEFAULTS = {f.name: f for f in d.customer_feature_defs()}


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
    layout = layout or Layout((), ())
    known = np.fromiter((raw is not None for raw in raws), dtype=bool, count=n)
    rows = np.flatnonzero(known)
    table = _parse([raws[i] for i in rows.tolist()], expected_version, layout)  # type: ignore[misc]
    numeric_names, cold_numbers, cold_texts = _columns(layout)
    numeric = np.empty((n, len(numeric_names)), dtype=np.float64)
    numeric[:] = cold_numbers
    text = {name: np.full(n, value, dtype=object) for name, value in cold_texts.items()}
    as_of = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
    stats = {name: _no_stats(n, name) for name in STAT_TABLES}
    if table is not None:
        numeric[rows, : len(layout.numeric)] = _flat(table.column(NUMBERS_KEY), len(layout.numeric))
        texts = _flat(table.column(TEXTS_KEY), len(layout.text))
        for j, name in enumerate(layout.text):
            text[name][rows] = texts[:, j]
        as_of[rows] = _times(table.column(AS_OF_KEY))
        stats = _all_key_stats(table.column(STATS_KEY).combine_chunks(), n, rows)
    return FeatureBlock(
        ids=tuple(ids),
        numeric_names=numeric_names,
        numeric=numeric,
        text=MappingProxyType(text),
        stats=MappingProxyType(stats),
        as_of=as_of,
        cold_start=~known,
        spec_version=expected_version,
    )


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


def _parse(lines: list[bytes], expected: str, layout: Layout) -> pa.Table | None:
    if not lines:
        return None
    # one JSON document per line: a compact vector never holds a raw newline
    if any(b"\n" in line for line in lines):
        raise layout_mismatch()
    data = b"\n".join(lines)
    # One thread: the least CPU per read (the Arrow thread pool's hand-off costs more than a
    # small read); reads run in parallel across workers and ahead of batch scoring's chunks
    # (``ReadAhead``). A block must hold the longest line.
    table = pajson.read_json(
        pa.BufferReader(data),
        read_options=pajson.ReadOptions(
            block_size=max(2 * max(map(len, lines)), min(1 << 20, len(data))), use_threads=False
        ),
        parse_options=_PARSE,
    )
    wrong = [v for v in table.column(SPEC_KEY).unique().to_pylist() if v != expected]
    if wrong:
        raise mismatch(wrong[0], expected)
    numbers, texts = table.column(NUMBERS_KEY), table.column(TEXTS_KEY)
    if numbers.null_count or texts.null_count:
        raise layout_mismatch()  # entries of an older format (JSON objects)
    for column, width in ((numbers, len(layout.numeric)), (texts, len(layout.text))):
        for chunk in column.chunks:
            if (np.diff(chunk.offsets.to_numpy()) != width).any():
                raise layout_mismatch()
    return table


def _flat(column: pa.ChunkedArray, width: int) -> np.ndarray:
    """A list column of ``width`` values a row as an array, shape (rows, width); nulls are
    NaN (numbers) or None (texts)."""
    flat = pc.list_flatten(column)
    values = flat.to_numpy(zero_copy_only=False)
    if pa.types.is_floating(flat.type):
        values = np.asarray(values, dtype=np.float64)
    return values.reshape(len(column), width)


def _times(column: pa.ChunkedArray) -> np.ndarray:
    """ISO texts as datetime64[us], shape (rows,); null = NaT."""
    return column.cast(pa.timestamp("us")).to_numpy()


def _all_key_stats(column: pa.StructArray, n: int, rows: np.ndarray) -> dict[str, KeyStats]:
    """Every table's statistics of every customer (``rows``: the known ones, in order)."""
    tables = [column.field(name) for name in STAT_TABLES]
    keys = [table.field("keys") for table in tables]
    # every table's keys at once; each distinct key one Python str, shared by its holders
    flat_keys = [k.flatten() for k in keys]
    encoded = pa.concat_arrays(flat_keys).dictionary_encode()
    distinct = np.asarray(encoded.dictionary.to_pylist() or [None], dtype=object)
    all_keys = distinct[encoded.indices.to_numpy(zero_copy_only=False)]
    out, start = {}, 0
    for name, table, table_keys, flat in zip(STAT_TABLES, tables, keys, flat_keys, strict=True):
        width = len(STAT_TABLES[name].stats)
        rows_of_keys = table.field("values").flatten()  # one row of ``width`` values per key
        values = rows_of_keys.flatten().to_numpy(zero_copy_only=False)
        if (
            len(rows_of_keys) != len(flat)
            or rows_of_keys.null_count
            or len(values) != width * len(flat)
        ):
            raise layout_mismatch()
        counts = np.zeros(n, dtype=np.intp)
        counts[rows] = np.diff(table_keys.offsets.to_numpy())  # null lists: no keys
        end = start + len(flat)
        out[name] = KeyStats(
            counts, all_keys[start:end], np.asarray(values, dtype=np.float64).reshape(-1, width)
        )
        start = end
    return out


def _no_stats(n: int, name: str) -> KeyStats:
    width = len(STAT_TABLES[name].stats)
    return KeyStats(np.zeros(n, np.intp), np.zeros(0, dtype=object), np.zeros((0, width)))


@functools.lru_cache(maxsize=16)
def _columns(layout: Layout) -> tuple[tuple[str, ...], np.ndarray, dict[str, Any]]:
    """The numeric names of a block of ``layout``, their cold-start values, and the text
    names with theirs: the layout's names, then the customer features it lacks."""
    numeric = layout.numeric + tuple(
        f for f, spec in _DEFAULTS.items() if spec.kind == "numeric" and f not in layout.numeric
    )
    text = layout.text + tuple(
        f for f, spec in _DEFAULTS.items() if spec.kind != "numeric" and f not in layout.text
    )
    cold = {name: spec.default for name, spec in _DEFAULTS.items()}
    numbers = np.array([cold.get(name) for name in numeric], dtype=np.float64)  # None -> NaN
    return numeric, numbers, {name: cold.get(name) for name in text}
