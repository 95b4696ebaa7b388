"""A log written before experiments (no arm columns) is migrated in place when opened."""

from __future__ import annotations

import sqlite3
import uuid

import psycopg
import pytest

from recsys.eventlog import SQLiteEventLog
from recsys.eventlog_postgres import PostgresEventLog

OLD_DECISIONS = """CREATE TABLE {table} (
    decision_id TEXT NOT NULL, offer_id TEXT NOT NULL, ts_us BIGINT NOT NULL,
    touchpoint_id TEXT NOT NULL, channel TEXT, customer_id TEXT, position INTEGER NOT NULL,
    propensity DOUBLE PRECISION NOT NULL, policy TEXT, score DOUBLE PRECISION,
    explored {boolean} NOT NULL, fallback {boolean} NOT NULL, model_name TEXT,
    model_version TEXT, context TEXT, PRIMARY KEY (decision_id, offer_id))"""
OLD_ROW = ("d1", "o_tv", 1_780_000_000_000_000, "web_home", "web", "c1", 1, 1.0, "greedy",
           0.2, False, False, "offer-ranker", "3", None)  # fmt: skip
NEW = {"experiment_id": None, "arm": None, "unit_id": None, "shadow": False}


def test_sqlite_log_gets_the_experiment_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.execute(OLD_DECISIONS.format(table="decisions", boolean="INTEGER"))
    con.execute(f"INSERT INTO decisions VALUES ({', '.join('?' * len(OLD_ROW))})", OLD_ROW)
    con.commit()
    con.close()
    log = SQLiteEventLog(path)
    try:
        [row] = log.decision_rows()
        assert {k: row[k] for k in NEW} == NEW
        assert log.contact_history(["c1"], row["ts"])["c1"].contacts.keys() == {"o_tv"}
    finally:
        log.close()
    SQLiteEventLog(path).close()  # opening again changes nothing


def test_postgres_log_gets_the_experiment_columns():
    schema = f"recsys_mig_{uuid.uuid4().hex[:10]}"
    url = "postgresql://127.0.0.1:5432/test"
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{schema}"')
        con.execute(OLD_DECISIONS.format(table=f'"{schema}".decisions', boolean="BOOLEAN"))
        con.execute(
            f'INSERT INTO "{schema}".decisions VALUES ({", ".join(["%s"] * len(OLD_ROW))})',
            OLD_ROW,
        )
    try:
        log = PostgresEventLog.from_url(f"{url}?schema={schema}")
        try:
            [row] = log.decision_rows()
            assert {k: row[k] for k in NEW} == NEW
        finally:
            log.close()
        PostgresEventLog.from_url(f"{url}?schema={schema}").close()
    finally:
        with psycopg.connect(url, autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.mark.parametrize("shadow", [0, 1])
def test_shadow_rows_are_not_contacts(tmp_path, shadow):
    log = SQLiteEventLog(tmp_path / "log.sqlite")
    try:
        with sqlite3.connect(tmp_path / "log.sqlite") as con:
            con.execute(
                "INSERT INTO decisions (decision_id, offer_id, ts_us, touchpoint_id, customer_id, "
                "position, propensity, explored, fallback, shadow) "
                "VALUES ('d1', 'o_tv', 1780000000000000, 'web_home', 'c1', 1, 1.0, 0, 0, ?)",
                (shadow,),
            )
        [row] = log.decision_rows()
        history = log.contact_history(["c1"], row["ts"])
        assert ("c1" in history) == (not shadow)
    finally:
        log.close()
