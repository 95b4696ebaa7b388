"""Where feature expressions run: DuckDB (embedded default) or Spark, both through Ibis.

The one engine-specific part of the pipelines is here: binding the warehouse tables to an Ibis
backend. Everything downstream is the same Ibis expression on either engine.

A DuckDB warehouse run on Spark is exported to a temporary Parquet directory first. That
directory belongs to the returned backend: it is deleted by :func:`release_backend` (or on
leaving :func:`spark_backend`), when the backend is garbage collected, or at interpreter exit,
whichever comes first.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import ibis
from ibis.backends import BaseBackend

from recsys.contract import TABLES
from recsys.errors import ConfigError

log = logging.getLogger(__name__)

ENGINES = ("duckdb", "spark")
EXPORT_PREFIX = "recsys-spark-"

# Live exports: id(backend) -> the finalizer that deletes its Parquet directory.
_EXPORTS: dict[int, weakref.finalize] = {}


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"`engine` must be one of {', '.join(ENGINES)}, got {engine!r}")
    return engine


def spark_session(
    master: str = "local[2]",
    shuffle_partitions: int = 32,
    driver_memory: str | None = None,
) -> Any:
    """A (shared) SparkSession tuned for the feature pipelines on one small machine.

    Parameters
    ----------
    master : Spark master URL; ``local[N]`` runs everything in one JVM with N task threads.
    shuffle_partitions : initial partitions of every shuffle (AQE coalesces small ones).
    driver_memory : JVM heap, e.g. ``"6g"``; default ``$RECSYS_SPARK_DRIVER_MEMORY`` or ``4g``.
        Only takes effect when this call starts the JVM (the first session of the process).
    """
    from pyspark.sql import SparkSession

    if shuffle_partitions < 1:
        raise ConfigError(f"`shuffle_partitions` must be >= 1, got {shuffle_partitions}")
    memory = driver_memory or os.environ.get("RECSYS_SPARK_DRIVER_MEMORY", "4g")
    # Python workers must be this interpreter (it has pyarrow and our packages).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master)
        .appName("recsys-features")
        # The contract's timestamps are naive UTC.
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        # local[N]: the executor runs inside the driver JVM, so the driver heap is all the
        # memory Spark has (execution + storage: 60% of it beyond 300 MB). At 10M events
        # (bench/bench_features_spark.py, 2 cores / 24 GB) 4 GB runs the training-set join with
        # a 5.0 GB JVM and 9.3 GB for the whole step; 6 GB spills less and is ~10% faster but
        # takes the step to 11.5 GB, too close to a 12 GB share of the machine.
        .config("spark.driver.memory", memory)
        # Results come back to the driver (toPandas) and count against this cap (checked: a
        # 20 MB cap fails the 118k-row training set); 1 GB, the default, fails training sets
        # of a few million rows x 126 columns. 0 = no cap; the heap is the real limit.
        .config("spark.driver.maxResultSize", "0")
        # Arrow instead of pickled rows for toPandas (what Ibis' to_pyarrow calls): the 118k x
        # 125 training set comes back in 3-4.5 s instead of 10-18 s.
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # Shuffles start with 32 partitions and AQE (explicit; on by default since 3.2) merges
        # the small ones after each stage, so the dimension-sized shuffles end up as 1-3 tasks
        # while the 10M-event range joins (30-46M joined rows) keep small enough partitions:
        # against 8, 32 halved the spill (34 -> 18 GB) of the training-set join and was ~3%
        # faster; at 300k events it costs ~10% more CPU (tests pass 1).
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.adaptive.coalescePartitions.enabled", "true")
        .config("spark.sql.adaptive.skewJoin.enabled", "true")
        # Not set, measured without effect on the 10M-event build: -XX:-DontCompileHugeMethods
        # and spark.sql.codegen.hugeMethodLimit=8000 (slower).
        .getOrCreate()
    )


def _is_spark_session(obj: Any) -> bool:
    return type(obj).__name__ == "SparkSession"


def ibis_backend(con: Any, engine: str = "duckdb", spark: Any = None) -> BaseBackend:
    """An Ibis backend on which the contract tables of ``con`` can be read by name.

    Parameters
    ----------
    con : duckdb connection, SparkSession or Ibis backend
        The warehouse. A DuckDB warehouse with ``engine="spark"`` is exported to a temporary
        Parquet directory and registered as temporary views of a new session (own views, shared
        SparkContext and SQL settings) of ``spark`` (or of :func:`spark_session`), so two
        exports never see each other's tables. The directory lives as long as the backend:
        see :func:`release_backend` and :func:`spark_backend`.
    engine : {"duckdb", "spark"}
    """
    check_engine(engine)
    if isinstance(con, BaseBackend):
        return con
    if engine == "duckdb":
        if not isinstance(con, duckdb.DuckDBPyConnection):
            raise ConfigError(
                f"`con` must be a DuckDB connection for engine 'duckdb', got {type(con).__name__}"
            )
        return ibis.duckdb.from_connection(con)
    if _is_spark_session(con):
        return ibis.pyspark.connect(con)
    if not isinstance(con, duckdb.DuckDBPyConnection):
        raise ConfigError(
            "`con` must be a DuckDB connection or a SparkSession for engine 'spark', "
            f"got {type(con).__name__}"
        )
    parent = spark if spark is not None else spark_session()
    session = _child_session(parent)
    directory = Path(tempfile.mkdtemp(prefix=EXPORT_PREFIX))
    try:
        register_duckdb_tables_in_spark(con, session, directory)
        backend = ibis.pyspark.connect(session)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    key = id(backend)
    _EXPORTS[key] = weakref.finalize(backend, _remove_export, key, directory)
    return backend


def release_backend(backend: BaseBackend) -> None:
    """Delete the Parquet export behind ``backend`` now (no-op for other backends).

    The backend cannot read its tables afterwards; its Spark session is left running.
    """
    finalizer = _EXPORTS.get(id(backend))
    if finalizer is not None and finalizer.alive:
        finalizer()


@contextmanager
def spark_backend(con: Any, spark: Any = None) -> Iterator[BaseBackend]:
    """``ibis_backend(con, "spark", spark=spark)`` whose export is deleted on leaving the block.

    Examples
    --------
    >>> with spark_backend(warehouse_con, spark=session) as backend:  # doctest: +SKIP
    ...     frame = customer_features(backend, as_of, engine="spark")
    """
    backend = ibis_backend(con, "spark", spark=spark)
    try:
        yield backend
    finally:
        release_backend(backend)


def _remove_export(key: int, directory: Path) -> None:
    _EXPORTS.pop(key, None)
    shutil.rmtree(directory, ignore_errors=True)
    log.debug("removed the Spark export %s", directory)


def _child_session(parent: Any) -> Any:
    """A session with its own temporary views, sharing ``parent``'s context and SQL settings."""
    child = parent.newSession()
    for key, value in parent.conf.getAll.items():
        if child.conf.isModifiable(key):
            child.conf.set(key, value)
    return child


def register_duckdb_tables_in_spark(
    con: duckdb.DuckDBPyConnection, session: Any, directory: str | Path | None = None
) -> Path:
    """Copy the contract tables of a DuckDB warehouse to Parquet and register them in Spark.

    The views read the files lazily, so ``directory`` must outlive their use. Without
    ``directory`` a new temporary one is made; the caller owns it and deletes it (prefer
    :func:`ibis_backend` or :func:`spark_backend`, which do).
    """
    out = Path(directory) if directory else Path(tempfile.mkdtemp(prefix=EXPORT_PREFIX))
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        path = out / f"{name}.parquet"
        con.execute(f"COPY (SELECT * FROM \"{name}\") TO '{path}' (FORMAT parquet)")
        session.read.parquet(str(path)).createOrReplaceTempView(name)
    log.info("registered the warehouse tables in Spark from %s", out)
    return out
