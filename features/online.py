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

import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import duckdb
import ibis
import orjson
import pyarrow as pa

from features import definitions as d
from features.engines import ibis_backend
from features.matrix import AS_OF_KEY, SPEC_KEY, STATS_KEY
from features.pipeline import POINT_KEYS, STAT_TABLES, customer_tables, naive_utc, sources
from features.spec import FEATURE_SPEC_VERSION
from features.training_set import cold_start_vector
from recsys.errors import ConfigError, SpecMismatchError

log = logging.getLogger(__name__)

Vector = dict[str, Any]
BATCH = 20_000
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
        found: dict[str, Vector] = {}
        for chunk in _chunks(ids, 900):  # SQLite's bound-parameter limit
            marks = ",".join("?" * len(chunk))
            rows = self._con.execute(
                f"SELECT customer_id, vector FROM vectors WHERE customer_id IN ({marks})", chunk
            ).fetchall()
            for cid, raw in rows:
                found[cid] = _decode(raw, self.expected_version, self.layout)
        return {cid: found.get(cid) or cold_start(self.expected_version) for cid in ids}

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


def vectors_as_of(
    con: Any, as_of: datetime, customer_ids: Iterable[str] | None = None, engine: str = "duckdb"
) -> tuple[Layout, Iterator[tuple[str, bytes]]]:
    """The layout and ``(customer_id, compact vector JSON)`` of customers as of ``as_of``.

    The vectors are computed lazily, when the iterator is first read, and come sorted by
    customer id. On DuckDB everything runs in the warehouse connection (temporary tables,
    dropped at the end) and streams out; on Spark the features are collected and the vectors
    assembled in a local DuckDB.
    """
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
        return layout, _duckdb_vectors(con, backend, as_of, ids, layout)
    return layout, _collected_vectors(backend, as_of, ids, layout)


def _duckdb_vectors(
    con: duckdb.DuckDBPyConnection,
    backend: Any,
    as_of: datetime,
    customer_ids: list[str] | None,
    layout: Layout,
) -> Iterator[tuple[str, bytes]]:
    """Vectors computed in the warehouse's DuckDB: features and per-key statistics go to
    temporary tables, then one query joins them into JSON, streamed in batches."""
    tag = uuid.uuid4().hex[:12]
    names = {"customer": f"recsys_mat_{tag}_customer"}
    names.update({name: f"recsys_mat_{tag}_{name}" for name in STAT_TABLES})
    tables = customer_tables(sources(backend), as_of, customer_ids, cache=True)
    try:
        started = time.perf_counter()
        con.execute(
            f'CREATE TEMP TABLE "{names["customer"]}" AS '
            f"{ibis.to_sql(tables.customer, dialect='duckdb')}"
        )
        for name, table in tables.stats.items():
            con.execute(
                f'CREATE TEMP TABLE "{names[name]}" AS '
                f"{_stats_json_sql(name, ibis.to_sql(table, dialect='duckdb'))}"
            )
        log.debug("features and statistics computed in %.1f s", time.perf_counter() - started)
        for table in tables.cached:
            table.release()
        yield from _stream(con, _vector_sql(names, as_of, layout))
    finally:
        for table in tables.cached:
            with contextlib.suppress(Exception):
                table.release()
        for name in names.values():
            con.execute(f'DROP TABLE IF EXISTS temp."{name}"')


def _collected_vectors(
    backend: Any, as_of: datetime, customer_ids: list[str] | None, layout: Layout
) -> Iterator[tuple[str, bytes]]:
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
        yield from _stream(local, _vector_sql(names, as_of, layout))
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


def _stream(con: duckdb.DuckDBPyConnection, sql: str) -> Iterator[tuple[str, bytes]]:
    reader = con.sql(sql).to_arrow_reader(BATCH)
    for batch in reader:
        ids = batch.column(0).to_pylist()
        vectors = batch.column(1).cast(pa.binary()).to_pylist()
        yield from zip(ids, vectors, strict=True)


def materialize(
    con: Any,
    store: OnlineStore,
    as_of: datetime | None = None,
    customer_ids: Iterable[str] | None = None,
    engine: str = "duckdb",
) -> int:
    """Write the vectors of all customers (or of ``customer_ids``) as of ``as_of`` (now).

    A full run replaces the store's contents in one go; a run for some customers updates
    only theirs. Returns the number of vectors written.
    """
    as_of = naive_utc(as_of) if as_of is not None else datetime.now(UTC).replace(tzinfo=None)
    started = time.perf_counter()
    ids = list(customer_ids) if customer_ids is not None else None
    layout, vectors = vectors_as_of(con, as_of, ids, engine)
    if ids is not None and store.layout() not in (None, layout):
        log.info("the vector layout changed: materialising every customer")
        return materialize(con, store, as_of=as_of, engine=engine)
    written = store.write(
        vectors, FEATURE_SPEC_VERSION, replace=ids is None, as_of=as_of, layout=layout
    )
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
