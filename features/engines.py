"""Where feature expressions run: DuckDB (embedded default) or Spark, both through Ibis.

The one engine-specific part of the pipelines is here: binding the warehouse tables to an Ibis
backend. Everything downstream is the same Ibis expression on either engine.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import duckdb
import ibis
from ibis.backends import BaseBackend

from recsys.contract import TABLES
from recsys.errors import ConfigError

log = logging.getLogger(__name__)

ENGINES = ("duckdb", "spark")


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"`engine` must be one of {', '.join(ENGINES)}, got {engine!r}")
    return engine


def spark_session(master: str = "local[2]", shuffle_partitions: int = 4) -> Any:
    """A (shared) SparkSession with UTC timestamps, as the contract's naive timestamps need."""
    from pyspark.sql import SparkSession

    # Python workers must be this interpreter (it has pyarrow and our packages).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (
        SparkSession.builder.master(master)
        .appName("recsys-features")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.driver.memory", os.environ.get("RECSYS_SPARK_DRIVER_MEMORY", "2g"))
        .getOrCreate()
    )


def _is_spark_session(obj: Any) -> bool:
    return type(obj).__name__ == "SparkSession"


def ibis_backend(con: Any, engine: str = "duckdb", spark: Any = None) -> BaseBackend:
    """An Ibis backend on which the contract tables of ``con`` can be read by name.

    Parameters
    ----------
    con : duckdb connection, SparkSession or Ibis backend
        The warehouse. A DuckDB warehouse with ``engine="spark"`` is exported to Parquet and
        registered as temporary views of ``spark`` (or of :func:`spark_session`).
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
    session = spark if spark is not None else spark_session()
    register_duckdb_tables_in_spark(con, session)
    return ibis.pyspark.connect(session)


def register_duckdb_tables_in_spark(
    con: duckdb.DuckDBPyConnection, session: Any, directory: str | Path | None = None
) -> Path:
    """Copy the contract tables of a DuckDB warehouse to Parquet and register them in Spark."""
    out = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="recsys-spark-"))
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        path = out / f"{name}.parquet"
        con.execute(f"COPY (SELECT * FROM \"{name}\") TO '{path}' (FORMAT parquet)")
        session.read.parquet(str(path)).createOrReplaceTempView(name)
    log.info("registered the warehouse tables in Spark from %s", out)
    return out
