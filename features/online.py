"""Online feature store: the latest vector of every customer, by id, for serving.

Two stores behind one small protocol (Feast-style): SQLite (embedded default) and Redis (the
scale path). A vector is a JSON object: the customer features and ``attr_*`` of
``features.pipeline`` as of ``__as_of``, the per-key statistics behind the crosses
(``__stats``: ``{table: {"keys": [...], "values": [[...], ...]}}``, values aligned with keys) and
``__spec_version``. Readers refuse entries of another feature spec; unknown customers get the
cold-start vector.

:func:`materialize` fills a store from the warehouse (all customers, or some);
:func:`refresh` re-materialises only the customers whose features may have changed since the
last run (new events, or events leaving a window).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import duckdb
import ibis
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from features import definitions as d
from features.engines import ibis_backend
from features.matrix import AS_OF_KEY, SPEC_KEY, STATS_KEY
from features.pipeline import (
    POINT_KEYS,
    STAT_TABLES,
    Sources,
    customer_tables,
    naive_utc,
    sources,
)
from features.spec import FEATURE_SPEC_VERSION
from features.training_set import cold_start_vector, in_background, with_cached_offer_log
from recsys.errors import ConfigError, SpecMismatchError

log = logging.getLogger(__name__)

Vector = dict[str, Any]
BATCH = 20_000
# Customers per id range of a full materialisation: the store writes one range while the
# engine computes the next (4 ranges at 1M customers: 3 s faster than 8, whose boundaries
# each leave a core idle for a moment; 1 GB less memory than one pass).
RANGE_CUSTOMERS = 250_000
PAGE_SIZE = 16_384  # bytes, for new SQLite stores
VECTORS_TABLE = (
    "CREATE TABLE vectors (customer_id TEXT PRIMARY KEY, spec_version TEXT NOT NULL, "
    "vector BLOB NOT NULL)"
)


def cold_start(spec_version: str = FEATURE_SPEC_VERSION) -> Vector:
    """The vector served for a customer the store does not know."""
    return {**cold_start_vector(), AS_OF_KEY: None, SPEC_KEY: spec_version, STATS_KEY: {}}


def _mismatch(found: str | None, expected: str) -> SpecMismatchError:
    return SpecMismatchError(
        f"the online store holds vectors of feature spec {found}, this code expects spec "
        f"{expected}; run `recsys features materialize` to rebuild the store"
    )


@runtime_checkable
class OnlineStore(Protocol):
    """What serving needs from an online store."""

    def write(
        self,
        vectors: Iterable[tuple[str, bytes | Vector]],
        spec_version: str,
        *,
        replace: bool = False,
        as_of: datetime | None = None,
        layout: Layout | None = None,
    ) -> int: ...

    def get_many(self, customer_ids: Iterable[str]) -> dict[str, Vector]: ...

    def get_block(self, customer_ids: Iterable[str]) -> VectorBlock | None: ...

    def spec_version(self) -> str | None: ...

    def layout(self) -> Layout | None: ...

    def last_as_of(self) -> datetime | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Layout:
    """Names of the values of a compact vector (``__n`` numbers, ``__s`` texts).

    Materialised vectors store their values as two lists instead of repeating ~120 names in
    every entry; the store keeps the names once, in its metadata.
    """

    numeric: tuple[str, ...]
    text: tuple[str, ...]

    def to_json(self) -> str:
        return orjson.dumps({"numeric": self.numeric, "text": self.text}).decode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Layout:
        data = orjson.loads(raw)
        return cls(tuple(data["numeric"]), tuple(data["text"]))


def _encode(vector: bytes | Vector) -> bytes:
    return vector if isinstance(vector, bytes) else orjson.dumps(vector)


def _decode(raw: bytes | str, expected: str, layout: Callable[[], Layout | None]) -> Vector:
    vector = orjson.loads(raw)
    found = vector.get(SPEC_KEY)
    if found != expected:
        raise _mismatch(found, expected)
    if "__n" in vector:
        names = layout()
        numbers, texts = vector.pop("__n"), vector.pop("__s")
        if names is None or len(names.numeric) != len(numbers) or len(names.text) != len(texts):
            raise SpecMismatchError(
                "the online store's vector layout does not match its entries; "
                "run `recsys features materialize` to rebuild it"
            )
        values = dict(zip(names.numeric, numbers, strict=True))
        values.update(zip(names.text, texts, strict=True))
        vector = {**values, **vector}  # features first, then __as_of, __spec_version, __stats
    return vector


def resolve_names(vector: Vector, sources: Mapping[str, tuple[str, ...]]) -> Vector:
    """Add each ``name`` of ``sources`` the vector lacks, as the value of its first source
    present (e.g. ``email_opt_in`` read from ``consent_email``); ``vector`` is changed."""
    for name, candidates in sources.items():
        if name in vector:
            continue
        for source in candidates:
            if source in vector:
                vector[name] = vector[source]
                break
    return vector


def _stats_type() -> pa.DataType:
    table = pa.struct(
        [("keys", pa.list_(pa.string())), ("values", pa.list_(pa.list_(pa.float64())))]
    )
    return pa.struct([(name, table) for name in STAT_TABLES])


_COMPACT_SCHEMA = pa.schema(
    [
        ("__n", pa.list_(pa.float64())),
        ("__s", pa.list_(pa.string())),
        (AS_OF_KEY, pa.string()),
        (SPEC_KEY, pa.string()),
        (STATS_KEY, _stats_type()),
    ]
)
_PARSE = pajson.ParseOptions(explicit_schema=_COMPACT_SCHEMA, unexpected_field_behavior="ignore")


class VectorBlock:
    """The vectors of many customers as columns: what ``get_many`` gives, without a dict per
    customer (batch scoring reads a million).

    A sequence of vectors in ``ids`` order: ``block[i]`` is the dict ``get_many`` gives
    ``ids[i]`` (decoded on demand), :meth:`column` the values of one name for every customer,
    :meth:`numbers` and :meth:`key_stats` numpy / Arrow columns for the decision matrix.
    Unknown customers have the cold-start vector. :meth:`with_names` adds derived names
    (aliases, a cold-start flag) the way the serving adapter adds them to dicts.

    Built by :func:`_block` from the stored compact JSON (all rows parsed at once by Arrow).
    """

    def __init__(
        self,
        ids: list[str],
        raws: list[bytes | None],
        rows: np.ndarray,
        table: pa.Table | None,
        layout: Layout,
        expected_version: str,
        sources: Mapping[str, tuple[str, ...]] | None = None,
        flag: str | None = None,
    ):
        self.ids = ids
        self._raws = raws
        self._rows = rows  # (n,) row of each customer in ``table``; -1 = cold start
        self._table = table
        self.layout = layout
        self.expected_version = expected_version
        self._sources = dict(sources or {})
        self._flag = flag
        self._numeric_index = {name: j for j, name in enumerate(layout.numeric)}
        self._text_index = {name: j for j, name in enumerate(layout.text)}
        self._cache: dict[str, list[Any]] = {}
        self._matrix: np.ndarray | None = None
        self._cold = self._cold_vector()

    def _cold_vector(self) -> Vector:
        cold = cold_start(self.expected_version)
        if self._flag is not None:
            cold[self._flag] = True
        return resolve_names(cold, self._sources)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Vector:
        raw = self._raws[i]
        if raw is None:
            return self._cold_vector()
        vector = _decode(raw, self.expected_version, lambda: self.layout)
        if self._flag is not None:
            vector[self._flag] = vector.get(AS_OF_KEY) is None
        return resolve_names(vector, self._sources)

    def __iter__(self) -> Iterator[Vector]:
        return (self[i] for i in range(len(self)))

    def with_names(self, sources: Mapping[str, tuple[str, ...]], flag: str | None) -> VectorBlock:
        """This block with ``resolve_names(vector, sources)`` and ``vector[flag] = <cold
        start>`` applied to every vector."""
        block = VectorBlock(
            self.ids, self._raws, self._rows, self._table, self.layout,
            self.expected_version, sources, flag,
        )  # fmt: skip
        block._cache = self._cache  # values by table row, whatever the names
        block._matrix = self._matrix
        return block

    def take(self, positions: Sequence[int] | np.ndarray) -> VectorBlock:
        """The vectors at ``positions``, as a block (shares the parsed columns)."""
        idx = np.asarray(positions, dtype=np.intp).tolist()
        block = VectorBlock(
            [self.ids[i] for i in idx],
            [self._raws[i] for i in idx],
            self._rows[idx],
            self._table,
            self.layout,
            self.expected_version,
            self._sources,
            self._flag,
        )
        block._cache = self._cache  # values by table row: the same for both
        block._matrix = self._matrix
        return block

    @property
    def cold_start(self) -> np.ndarray:
        """(n,) bool: the vector has no as-of time (unknown customer)."""
        as_of = self.column(AS_OF_KEY)
        return np.fromiter((a is None for a in as_of), dtype=bool, count=len(as_of))

    def _key(self, name: str) -> str | None:
        """The key a stored (known) vector holds ``name`` under, or None."""
        if self._has(name):
            return name
        for source in self._sources.get(name, ()):
            if self._has(source):
                return source
        return None

    def _has(self, key: str) -> bool:
        return (
            key in self._numeric_index
            or key in self._text_index
            or key in (AS_OF_KEY, SPEC_KEY, STATS_KEY)
            or key == self._flag
        )

    def column(self, name: str, default: Any = None) -> list[Any]:
        """``[vector.get(name, default) for vector in block]``."""
        key = self._key(name)
        if key == STATS_KEY:  # nested: decoded vector by vector (not on the batch path)
            return [vector.get(name, default) for vector in self]
        cold = self._cold.get(name, default)
        rows = self._rows
        if self._table is None:
            return [cold] * len(rows)
        known = self._stored(key) if key is not None else [default] * self._table.num_rows
        if len(rows) == len(known) and (rows == np.arange(len(rows))).all():
            return list(known)
        return [known[r] if r >= 0 else cold for r in rows.tolist()]

    def _stored(self, key: str) -> list[Any]:
        """Values of ``key`` of every parsed row (row order of the table)."""
        got = self._cache.get(key)
        if got is not None:
            return got
        table = self._table
        assert table is not None
        if key in self._numeric_index:
            values = self.numeric_matrix()[:, self._numeric_index[key]]
            got = values.tolist()
            if np.isnan(values).any():  # JSON null
                got = [None if v != v else v for v in got]
        elif key in self._text_index:
            k = len(self.layout.text)
            flat = pc.list_flatten(table.column("__s"))
            got = flat.take(pa.array(np.arange(self._text_index[key], len(flat), k))).to_pylist()
        elif key == self._flag:
            got = [a is None for a in self._stored(AS_OF_KEY)]
        else:
            got = table.column(key).to_pylist()
        self._cache[key] = got
        return got

    def numeric_matrix(self) -> np.ndarray:
        """Every numeric value of every parsed row, shape (rows, len(layout.numeric)); NaN =
        null."""
        if self._matrix is None:  # computed once by _block, shared by derived blocks
            assert self._table is not None
            flat = pc.list_flatten(self._table.column("__n")).to_numpy(zero_copy_only=False)
            self._matrix = np.asarray(flat, dtype=np.float64).reshape(
                self._table.num_rows, len(self.layout.numeric)
            )
        return self._matrix

    def numbers(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """Numeric features ``names`` of every customer: ``(values, known)``, shapes (n, k)
        float64 (NaN = null; cold-start rows NaN) and (n,) bool; None if a name is not a
        number of the stored layout."""
        if self._table is None or not all(name in self._numeric_index for name in names):
            return None
        columns = [self._numeric_index[name] for name in names]
        known = self._rows >= 0
        values = np.full((len(self._rows), len(columns)), np.nan)
        values[known] = self.numeric_matrix()[self._rows[known]][:, columns]
        return values, known

    def key_stats(self, table: str) -> tuple[np.ndarray, pa.Array, np.ndarray] | None:
        """Per-key statistics of ``table`` of every customer, flattened.

        Returns ``(counts, keys, values)``: counts shape (n,) (keys of each customer, 0 for
        the cold start), keys (sum(counts),) text, values (sum(counts), width) float64, in
        customer order; None when a customer's values are not one row of equal width per key.
        """
        n = len(self._rows)
        if self._table is None:
            return np.zeros(n, np.intp), pa.array([], pa.string()), np.zeros((0, 0))
        known = np.flatnonzero(self._rows >= 0)
        stats = self._table.column(STATS_KEY).combine_chunks().field(table)
        stats = stats.take(pa.array(self._rows[known]))
        keys, values = stats.field("keys"), stats.field("values")
        key_counts = pc.fill_null(pc.list_value_length(keys), 0).to_numpy(zero_copy_only=False)
        row_counts = pc.fill_null(pc.list_value_length(values), 0).to_numpy(zero_copy_only=False)
        if not np.array_equal(key_counts, row_counts):
            return None
        flat_keys = pc.list_flatten(keys)
        rows = pc.list_flatten(values)
        widths = pc.list_value_length(rows).to_numpy(zero_copy_only=False)
        width = int(widths[0]) if len(widths) else 0
        if rows.null_count or (len(widths) and (widths != width).any()):
            return None
        flat = pc.list_flatten(rows).to_numpy(zero_copy_only=False)
        counts = np.zeros(n, np.intp)
        counts[known] = key_counts
        return counts, flat_keys, np.asarray(flat, dtype=np.float64).reshape(len(widths), width)


def _block(
    ids: list[str], raws: Sequence[bytes | None], expected: str, layout: Layout | None
) -> VectorBlock | None:
    """A :class:`VectorBlock` of ``ids`` and their stored JSON (None = unknown), or None when
    the store's entries are not compact vectors of ``layout``.

    Raises
    ------
    SpecMismatchError
        An entry of another feature spec, or of another layout (as :func:`_decode`).
    """
    found = [i for i, raw in enumerate(raws) if raw is not None]
    raw_list = list(raws)
    rows = np.full(len(ids), -1, dtype=np.intp)
    rows[found] = np.arange(len(found))
    if not found:
        return VectorBlock(ids, raw_list, rows, None, layout or Layout((), ()), expected)
    # one JSON document per line: a stored vector never holds a raw newline (compact JSON)
    if layout is None or any(b"\n" in raw_list[i] for i in found):
        return None
    lines = [raw_list[i] for i in found]
    # blocks of ~1 MB are parsed in parallel; a block must hold the longest line
    block_size = max(1 << 20, 2 * max(map(len, lines)))  # type: ignore[arg-type]
    table = pajson.read_json(
        pa.BufferReader(b"\n".join(lines)),  # type: ignore[arg-type]
        read_options=pajson.ReadOptions(block_size=block_size),
        parse_options=_PARSE,
    )
    versions = table.column(SPEC_KEY).unique().to_pylist()
    wrong = [v for v in versions if v != expected]
    if wrong:
        raise _mismatch(wrong[0], expected)
    numbers, texts = table.column("__n"), table.column("__s")
    if numbers.null_count or texts.null_count:
        return None  # vectors stored as plain JSON objects: get_many reads them
    n_lengths = pc.list_value_length(numbers).to_numpy(zero_copy_only=False)
    s_lengths = pc.list_value_length(texts).to_numpy(zero_copy_only=False)
    if (n_lengths != len(layout.numeric)).any() or (s_lengths != len(layout.text)).any():
        raise SpecMismatchError(
            "the online store's vector layout does not match its entries; "
            "run `recsys features materialize` to rebuild it"
        )
    block = VectorBlock(ids, raw_list, rows, table, layout, expected)
    block.numeric_matrix()  # once, shared by the blocks with_names() and take() make
    return block


class SQLiteOnlineStore:
    """Vectors in one SQLite file (WAL), keyed by customer id."""

    def __init__(self, path: str | Path, expected_version: str = FEATURE_SPEC_VERSION):
        self.path = Path(path)
        self.expected_version = expected_version
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(str(path), check_same_thread=False)
        # Larger pages for a new file: a vector is ~2 KB, a 4 KB page holds only one or two.
        self._con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(VECTORS_TABLE.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
        self._con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._con.commit()
        self._layout: Layout | None = None

    def write(
        self,
        vectors: Iterable[tuple[str, bytes | Vector]],
        spec_version: str,
        *,
        replace: bool = False,
        as_of: datetime | None = None,
        layout: Layout | None = None,
    ) -> int:
        """Store ``(customer_id, vector)`` pairs; ``replace`` drops every other entry.

        ``vectors`` are dicts, or compact JSON bytes described by ``layout``. One transaction:
        readers see the old or the new entries, never a mix.
        """
        count = 0
        if not replace:
            _check_append(self, spec_version, layout)
        with self._con:
            if not self._con.in_transaction:
                self._con.execute("BEGIN")
            if replace:
                # A new table is much cheaper than deleting every row (and upgrades an old
                # WITHOUT ROWID table, slow to fill with ~2 KB rows).
                self._con.execute("DROP TABLE IF EXISTS vectors")
                self._con.execute(VECTORS_TABLE)
            if layout is not None:
                self._set_meta("layout", layout.to_json())
            for chunk in _chunks(vectors, BATCH):
                self._con.executemany(
                    "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                    [(cid, spec_version, _encode(v)) for cid, v in chunk],
                )
                count += len(chunk)
            self._set_meta("spec_version", spec_version)
            if as_of is not None:
                self._set_meta("as_of", as_of.isoformat())
        if layout is not None:
            self._layout = layout
        return count

    def get_many(self, customer_ids: Iterable[str]) -> dict[str, Vector]:
        ids = list(dict.fromkeys(customer_ids))
        found = {
            cid: _decode(raw, self.expected_version, self.layout)
            for cid, raw in self._raw(ids).items()
        }
        return {cid: found.get(cid) or cold_start(self.expected_version) for cid in ids}

    def get_block(self, customer_ids: Iterable[str]) -> VectorBlock | None:
        """The vectors of ``customer_ids`` as columns (:class:`VectorBlock`), or None when the
        store holds no compact vectors (then read :meth:`get_many`)."""
        ids = list(dict.fromkeys(customer_ids))
        raw = self._raw(ids)
        return _block(ids, [raw.get(c) for c in ids], self.expected_version, self.layout())

    def _raw(self, ids: list[str]) -> dict[str, bytes]:
        """Stored JSON of the known customers among ``ids`` (distinct)."""
        found: dict[str, bytes] = {}
        for chunk in _chunks(ids, 900):  # SQLite's bound-parameter limit
            marks = ",".join("?" * len(chunk))
            found.update(
                self._con.execute(
                    f"SELECT customer_id, vector FROM vectors WHERE customer_id IN ({marks})",
                    chunk,
                ).fetchall()
            )
        return found

    def spec_version(self) -> str | None:
        return self._meta("spec_version")

    def layout(self) -> Layout | None:
        if self._layout is None:
            raw = self._meta("layout")
            self._layout = Layout.from_json(raw) if raw else None
        return self._layout

    def last_as_of(self) -> datetime | None:
        value = self._meta("as_of")
        return datetime.fromisoformat(value) if value else None

    def count(self) -> int:
        return self._con.execute("SELECT count(*) FROM vectors").fetchone()[0]

    def close(self) -> None:
        self._con.close()

    def _meta(self, key: str) -> str | None:
        row = self._con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])


class RedisOnlineStore:
    """Vectors as Redis strings ``<prefix>:v:<customer_id>``; metadata in ``<prefix>:meta``."""

    def __init__(
        self,
        url: str,
        prefix: str = "recsys:features",
        expected_version: str = FEATURE_SPEC_VERSION,
        client: Any = None,
    ):
        import redis

        self.prefix = prefix
        self.expected_version = expected_version
        self._redis = client if client is not None else redis.Redis.from_url(url)
        self._layout: Layout | None = None

    def _key(self, customer_id: str) -> str:
        return f"{self.prefix}:v:{customer_id}"

    def write(
        self,
        vectors: Iterable[tuple[str, bytes | Vector]],
        spec_version: str,
        *,
        replace: bool = False,
        as_of: datetime | None = None,
        layout: Layout | None = None,
    ) -> int:
        if replace:
            self.clear()
        else:
            _check_append(self, spec_version, layout)
        if layout is not None:
            self._redis.hset(f"{self.prefix}:meta", "layout", layout.to_json())
            self._layout = layout
        count = 0
        for chunk in _chunks(vectors, BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for cid, vector in chunk:
                pipe.set(self._key(cid), _encode(vector))
            pipe.execute()
            count += len(chunk)
        meta = {"spec_version": spec_version}
        if as_of is not None:
            meta["as_of"] = as_of.isoformat()
        self._redis.hset(f"{self.prefix}:meta", mapping=meta)
        return count

    def get_many(self, customer_ids: Iterable[str]) -> dict[str, Vector]:
        ids = list(dict.fromkeys(customer_ids))
        raws = self._redis.mget([self._key(c) for c in ids]) if ids else []
        return {
            cid: _decode(raw, self.expected_version, self.layout)
            if raw is not None
            else cold_start(self.expected_version)
            for cid, raw in zip(ids, raws, strict=True)
        }

    def get_block(self, customer_ids: Iterable[str]) -> VectorBlock | None:
        """:meth:`get_many` as columns (see :meth:`SQLiteOnlineStore.get_block`)."""
        ids = list(dict.fromkeys(customer_ids))
        raws = self._redis.mget([self._key(c) for c in ids]) if ids else []
        return _block(ids, raws, self.expected_version, self.layout())

    def spec_version(self) -> str | None:
        value = self._redis.hget(f"{self.prefix}:meta", "spec_version")
        return value.decode() if value is not None else None

    def layout(self) -> Layout | None:
        if self._layout is None:
            raw = self._redis.hget(f"{self.prefix}:meta", "layout")
            self._layout = Layout.from_json(raw) if raw is not None else None
        return self._layout

    def last_as_of(self) -> datetime | None:
        value = self._redis.hget(f"{self.prefix}:meta", "as_of")
        return datetime.fromisoformat(value.decode()) if value is not None else None

    def clear(self) -> int:
        """Delete every key of this store's prefix (and only those)."""
        deleted = 0
        keys = list(self._redis.scan_iter(match=f"{self.prefix}:*", count=10_000))
        for chunk in _chunks(keys, 10_000):
            deleted += self._redis.delete(*chunk)
        return deleted

    def close(self) -> None:
        self._redis.close()


def _check_append(store: Any, spec_version: str, layout: Layout | None) -> None:
    """An incremental write must match the store's spec and vector layout."""
    current = store.spec_version()
    if current not in (None, spec_version):
        raise _mismatch(current, spec_version)
    stored = store.layout()
    if layout is not None and stored is not None and stored != layout:
        raise SpecMismatchError(
            "the vectors to write have another layout (customer attributes changed?) than "
            "the online store; run a full `recsys features materialize`"
        )


def open_online_store(settings: Any) -> OnlineStore:
    """The store the settings name (``online_store``: sqlite | redis)."""
    kind = settings.online_store
    factories = {
        "sqlite": lambda: SQLiteOnlineStore(settings.online_sqlite_path),
        "redis": lambda: RedisOnlineStore(settings.redis_url),
    }
    if kind not in factories:
        raise ConfigError(f"`online_store` must be one of {sorted(factories)}, got {kind!r}")
    return factories[kind]()


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# --- materialisation ---------------------------------------------------------------------------

EMPTY_STATS = '{"keys":[],"values":[]}'


Pair = tuple[str, bytes]


def vectors_as_of(
    con: Any,
    as_of: datetime,
    customer_ids: Iterable[str] | None = None,
    engine: str = "duckdb",
    *,
    range_customers: int = RANGE_CUSTOMERS,
) -> tuple[Layout, Iterator[Pair]]:
    """The layout and ``(customer_id, compact vector JSON)`` of customers as of ``as_of``.

    The vectors are computed lazily, when the iterator is first read, and come sorted by
    customer id. On DuckDB everything runs in the warehouse connection (temporary tables,
    dropped at the end), a full run in customer-id ranges of about ``range_customers``
    customers; on Spark the features are collected and the vectors assembled in a local
    DuckDB.
    """
    layout, parts = vector_parts(con, as_of, customer_ids, engine, range_customers=range_customers)
    return layout, _flatten(_batches(parts))


def vector_batches(
    con: Any,
    as_of: datetime,
    customer_ids: Iterable[str] | None = None,
    engine: str = "duckdb",
    *,
    range_customers: int = RANGE_CUSTOMERS,
) -> tuple[Layout, Iterator[list[Pair]]]:
    """:func:`vectors_as_of` in lists of up to ``BATCH`` vectors."""
    layout, parts = vector_parts(con, as_of, customer_ids, engine, range_customers=range_customers)
    return layout, _batches(parts)


def _flatten(batches: Iterator[list[Pair]]) -> Iterator[Pair]:
    try:
        for batch in batches:
            yield from batch
    finally:  # a consumer that stops early: the producer's clean-up runs now
        _close(batches)


def _close(items: Any) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        close()


def _batches(parts: Iterator[pa.Table]) -> Iterator[list[Pair]]:
    """The ``(customer_id, vector)`` pairs of each part, in lists of up to ``BATCH``."""
    try:
        for part in parts:
            for batch in part.to_batches(BATCH):
                ids = batch.column(0).to_pylist()
                vectors = batch.column(1).cast(pa.binary()).to_pylist()
                yield list(zip(ids, vectors, strict=True))
    finally:
        _close(parts)


def vector_parts(
    con: Any,
    as_of: datetime,
    customer_ids: Iterable[str] | None = None,
    engine: str = "duckdb",
    *,
    range_customers: int = RANGE_CUSTOMERS,
) -> tuple[Layout, Iterator[pa.Table]]:
    """The layout and the vectors as Arrow tables (``customer_id``, ``vector`` JSON text),
    one per customer-id range of a full DuckDB run (in id order, each sorted), so a consumer
    can write one range while the engine computes the next."""
    if not isinstance(range_customers, int) or range_customers < 1:
        raise ConfigError(f"`range_customers` must be an integer >= 1, got {range_customers!r}")
    as_of = naive_utc(as_of)
    backend = ibis_backend(con, engine)
    ids = list(customer_ids) if customer_ids is not None else None
    schema = customer_tables(sources(backend), as_of, ids).customer.schema()
    feature_cols = [c for c in schema.names if c not in POINT_KEYS]
    numeric = tuple(
        c
        for c in feature_cols
        if schema[c].is_floating() or schema[c].is_integer() or schema[c].is_boolean()
    )
    layout = Layout(numeric=numeric, text=tuple(c for c in feature_cols if c not in numeric))
    if engine == "duckdb" and isinstance(con, duckdb.DuckDBPyConnection):
        return layout, _duckdb_vectors(con, backend, as_of, ids, layout, range_customers)
    return layout, _collected_vectors(backend, as_of, ids, layout)


def id_ranges(
    con: duckdb.DuckDBPyConnection, range_customers: int = RANGE_CUSTOMERS
) -> list[tuple[str | None, str | None]]:
    """Consecutive customer-id ranges ``[lo, hi)`` (None = unbounded) covering every id, each
    of about ``range_customers`` customers (quantiles of ``customers.customer_id``)."""
    count = con.execute("SELECT count(*) FROM customers").fetchall()[0][0]
    parts = math.ceil(count / range_customers)
    if parts <= 1:
        return [(None, None)]
    cuts = con.execute(
        "SELECT quantile_disc(customer_id, ?::DOUBLE[]) FROM customers",
        [[i / parts for i in range(1, parts)]],
    ).fetchall()[0][0]
    bounds = sorted({c for c in cuts if c is not None})
    return list(itertools.pairwise([None, *bounds, None]))


def _in_range(src: Sources, lo: str | None, hi: str | None) -> Sources:
    """``src`` holding only the customers (and their events) with ``lo <= id < hi``: every
    feature of a customer depends on its own events only."""

    def keep(table: ibis.Table, column: str) -> ibis.Table:
        conditions = []
        if lo is not None:
            conditions.append(table[column] >= lo)
        if hi is not None:
            conditions.append(table[column] < hi)
        return table.filter(*conditions) if conditions else table

    return dataclasses.replace(
        src,
        customers=keep(src.customers, "customer_id"),
        purchases=keep(src.purchases, "ev_customer_id"),
        touches=keep(src.touches, "ev_customer_id"),
        offer_log=keep(src.offer_log, "ev_customer_id"),
    )


def _duckdb_vectors(
    con: duckdb.DuckDBPyConnection,
    backend: Any,
    as_of: datetime,
    customer_ids: list[str] | None,
    layout: Layout,
    range_customers: int,
) -> Iterator[pa.Table]:
    """Vectors computed in the warehouse's DuckDB: features and per-key statistics go to
    temporary tables, then one query joins them into JSON; a full run does this range of
    customer ids by range (one Arrow table each, the next range computed while the previous
    one is written).

    Only the offer log, read by four of the queries and costly to build, is shared through a
    temporary table (built once, read by every range); the other sources are read by each
    query (at 1M customers / 56M events, copying every event of the window to temporary
    tables first was ~10 s slower and 4 GB larger).
    """
    src = sources(backend)
    if customer_ids is not None:
        yield _range_vectors(con, _feature_sql(src, as_of, customer_ids), as_of, layout)
        return
    started = time.perf_counter()
    # The customer features and three statistics tables read the offer log: built once (the
    # events of [as_of - horizon, as_of), what a point at as_of sees). 1/8 of it per range
    # cost 1.5x the CPU of building it whole; reading a range of it costs next to nothing.
    src, offer_log = with_cached_offer_log(src, as_of, as_of)
    try:
        ranges = id_ranges(con, range_customers)
        log.debug("offer log built in %.1f s", time.perf_counter() - started)
        # The SQL is compiled once per shape, with sentinel bounds (Ibis takes ~0.8 s of
        # Python per compilation; per range that competed with the writer thread).
        compiled: dict[tuple[bool, bool], dict[str, str]] = {}
        for i, (lo, hi) in enumerate(ranges):
            started = time.perf_counter()
            shape = (len(ranges) > 1, hi is not None)
            if shape not in compiled:
                bounded = _in_range(src, _LO if shape[0] else None, _HI if shape[1] else None)
                compiled[shape] = _feature_sql(bounded, as_of, None)
            sql = {
                role: query.replace(_sql_text(_LO), _sql_text(lo or "")).replace(
                    _sql_text(_HI), _sql_text(hi or "")
                )
                for role, query in compiled[shape].items()
            }
            vectors = _range_vectors(con, sql, as_of, layout)
            log.debug("range %d/%d of customer ids computed in %.1f s", i + 1, len(ranges),
                      time.perf_counter() - started)  # fmt: skip
            yield vectors
    finally:
        offer_log.release()


_LO = "__recsys_range_lo__"  # sentinels for an id range's bounds, replaced per range
_HI = "__recsys_range_hi__"


def _feature_sql(src: Sources, as_of: datetime, customer_ids: list[str] | None) -> dict[str, str]:
    """The SELECTs of the customer features (``customer``) and of each statistics table's
    JSON (by name)."""
    tables = customer_tables(src, as_of, customer_ids)
    sql = {"customer": ibis.to_sql(tables.customer, dialect="duckdb")}
    for name, table in tables.stats.items():
        sql[name] = _stats_json_sql(name, ibis.to_sql(table, dialect="duckdb"))
    return sql


def _range_vectors(
    con: duckdb.DuckDBPyConnection, sql: Mapping[str, str], as_of: datetime, layout: Layout
) -> pa.Table:
    """The vectors of one set of customers, sorted by id: the feature queries ``sql`` (as
    :func:`_feature_sql`) into temporary tables, joined into JSON."""
    tag = uuid.uuid4().hex[:12]
    names = {role: f"recsys_mat_{tag}_{role}" for role in sql}
    try:
        started = time.perf_counter()
        for role, query in sql.items():
            con.execute(f'CREATE TEMP TABLE "{names[role]}" AS {query}')
            if role == "customer":
                log.debug("customer features computed in %.1f s", time.perf_counter() - started)
        log.debug("features and statistics computed in %.1f s", time.perf_counter() - started)
        started = time.perf_counter()
        vectors = con.sql(_vector_sql(names, as_of, layout)).to_arrow_table()
        log.debug("vectors assembled in %.1f s", time.perf_counter() - started)
        return vectors
    finally:
        for name in names.values():
            con.execute(f'DROP TABLE IF EXISTS temp."{name}"')


def _collected_vectors(
    backend: Any, as_of: datetime, customer_ids: list[str] | None, layout: Layout
) -> Iterator[pa.Table]:
    """Vectors of any engine: features and statistics collected as Arrow, joined locally."""
    tables = customer_tables(sources(backend), as_of, customer_ids, cache=True)
    local = duckdb.connect()
    try:
        names = {"customer": "customer"}
        local.register("customer_arrow", tables.customer.to_pyarrow())
        local.execute('CREATE TABLE "customer" AS SELECT * FROM customer_arrow')
        for name, table in tables.stats.items():
            names[name] = f"stats_{name}"
            local.register(f"{name}_arrow", table.to_pyarrow())
            local.execute(
                f'CREATE TABLE "{names[name]}" AS '
                f"{_stats_json_sql(name, f'SELECT * FROM {name}_arrow')}"
            )
            local.unregister(f"{name}_arrow")
        local.unregister("customer_arrow")
        for table in tables.cached:
            table.release()
        reader = local.sql(_vector_sql(names, as_of, layout)).to_arrow_reader(BATCH)
        for batch in reader:
            yield pa.Table.from_batches([batch])
    finally:
        local.close()


def _stats_json_sql(name: str, source: str) -> str:
    """One row per customer: its statistics of table ``name`` as ``{"keys": [..],
    "values": [[..], ..]}`` JSON text (keys and values aggregated side by side, so they stay
    aligned; readers sort the keys)."""
    spec = STAT_TABLES[name]
    values = ", ".join(f'CAST("{s}" AS DOUBLE)' for s in spec.stats)
    return (
        "SELECT customer_id, concat('{\"keys\":[', "
        f"string_agg(to_json(CAST(\"{spec.key}\" AS VARCHAR)), ','), "
        f"'],\"values\":[', string_agg(to_json([{values}]), ','), ']}}') AS stats "
        f'FROM ({source}) WHERE "{spec.key}" IS NOT NULL GROUP BY customer_id'
    )


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _vector_sql(names: Mapping[str, str], as_of: datetime, layout: Layout) -> str:
    """The compact JSON vector of each customer (sorted by id), from the customer features
    table and the per-table statistics JSON (``names``: role -> table)."""
    numbers = ", ".join(f'CAST(c."{col}" AS DOUBLE)' for col in layout.numeric)
    texts = ", ".join(f'CAST(c."{col}" AS VARCHAR)' for col in layout.text)
    meta = orjson.dumps({AS_OF_KEY: as_of.isoformat(), SPEC_KEY: FEATURE_SPEC_VERSION})
    parts = [
        _sql_text('{"__n":'),
        f"to_json([{numbers}]::DOUBLE[])",
        _sql_text(',"__s":'),
        f"to_json([{texts}]::VARCHAR[])",
        _sql_text("," + meta.decode()[1:-1] + f',"{STATS_KEY}":{{'),
    ]
    joins = []
    for i, name in enumerate(STAT_TABLES):
        parts.append(_sql_text(("," if i else "") + orjson.dumps(name).decode() + ":"))
        parts.append(f"coalesce(s{i}.stats, {_sql_text(EMPTY_STATS)})")
        joins.append(f'LEFT JOIN "{names[name]}" AS s{i} ON s{i}.customer_id = c.customer_id')
    parts.append(_sql_text("}}"))
    return (
        f"SELECT c.customer_id, concat({', '.join(parts)}) AS vector "
        f'FROM "{names["customer"]}" AS c {" ".join(joins)} ORDER BY c.customer_id'
    )


def materialize(
    con: Any,
    store: OnlineStore,
    as_of: datetime | None = None,
    customer_ids: Iterable[str] | None = None,
    engine: str = "duckdb",
    *,
    range_customers: int = RANGE_CUSTOMERS,
) -> int:
    """Write the vectors of all customers (or of ``customer_ids``) as of ``as_of`` (now).

    A full run replaces the store's contents in one go; a run for some customers updates
    only theirs. Returns the number of vectors written. On DuckDB a full run computes the
    vectors in customer-id ranges of about ``range_customers`` customers (the same vectors
    as one pass), and the store writes each range while the engine computes the next.
    """
    as_of = naive_utc(as_of) if as_of is not None else datetime.now(UTC).replace(tzinfo=None)
    started = time.perf_counter()
    ids = list(customer_ids) if customer_ids is not None else None
    layout, parts = vector_parts(con, as_of, ids, engine, range_customers=range_customers)
    if ids is not None and store.layout() not in (None, layout):
        log.info("the vector layout changed: materialising every customer")
        return materialize(con, store, as_of=as_of, engine=engine, range_customers=range_customers)
    # The engine computes the next range of vectors while the store writes the previous one
    # (and, before the first, prepares: dropping an old table takes seconds at 1M vectors).
    # Whole ranges cross the threads (a hand-over per vector cost more than the writes); the
    # store's thread turns them into Python values while the engine works.
    ahead = in_background(parts, depth=1)
    try:
        written = store.write(
            _flatten(_batches(ahead)),
            FEATURE_SPEC_VERSION,
            replace=ids is None,
            as_of=as_of,
            layout=layout,
        )
    finally:
        ahead.close()  # also when the store refused the write before reading any vector
    log.info(
        "materialised %d vectors as of %s in %.1f s",
        written,
        as_of.isoformat(),
        time.perf_counter() - started,
    )
    return written


def changed_customers(
    con: duckdb.DuckDBPyConnection, since: datetime, as_of: datetime
) -> list[str]:
    """Customers whose features may differ between ``since`` and ``as_of``.

    New events in ``[since, as_of)`` (purchases, interactions, decisions, outcomes), or events
    that left a feature window (``WINDOWS``, 7 days and the horizon) in that time.
    """
    spans = sorted({7, *d.WINDOWS, d.HORIZON_DAYS})
    windows = " OR ".join(
        f"(ts >= $since - INTERVAL {w} DAY AND ts < $as_of - INTERVAL {w} DAY)" for w in spans
    )
    cond = f"(ts >= $since AND ts < $as_of) OR {windows}"
    sql = f"""
        SELECT customer_id FROM transactions WHERE {cond}
        UNION SELECT customer_id FROM interactions WHERE {cond}
        UNION SELECT customer_id FROM decisions WHERE customer_id IS NOT NULL AND ({cond})
        UNION SELECT d.customer_id FROM outcomes o JOIN decisions d
            USING (decision_id, offer_id) WHERE d.customer_id IS NOT NULL AND
            ((o.ts >= $since AND o.ts < $as_of) OR {windows.replace("ts", "o.ts")})
    """
    rows = con.execute(sql, {"since": since, "as_of": as_of}).fetchall()
    return sorted(r[0] for r in rows)


def refresh(
    con: duckdb.DuckDBPyConnection, store: OnlineStore, as_of: datetime | None = None
) -> int:
    """Incremental materialisation: only customers changed since the store's last ``as_of``.

    Falls back to a full :func:`materialize` when the store is empty or of another spec.
    """
    as_of = naive_utc(as_of) if as_of is not None else datetime.now(UTC).replace(tzinfo=None)
    since = store.last_as_of()
    if since is None or store.spec_version() != FEATURE_SPEC_VERSION:
        return materialize(con, store, as_of=as_of)
    if as_of < since:
        raise ConfigError(f"`as_of` must be >= the store's last as_of {since}, got {as_of}")
    ids = changed_customers(con, since, as_of)
    if not ids:
        store.write([], FEATURE_SPEC_VERSION, as_of=as_of)
        return 0
    return materialize(con, store, as_of=as_of, customer_ids=ids)
