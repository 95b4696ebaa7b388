"""A synthetic experiment in an event log, generated with DuckDB SQL (tests and benches).

Customers have their own acceptance propensity (so the pre-period predicts the experiment
period and CUPED has something to remove); the treatment arm multiplies it by ``1 + lift``.
Randomness is a hash of (row, seed), so the same arguments give the same log on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb

#: The event log's tables with the experiment columns (the layout of recsys.eventlog).
DECISIONS_DDL = """CREATE TABLE IF NOT EXISTS {decisions} (
    decision_id TEXT NOT NULL, offer_id TEXT NOT NULL, ts_us BIGINT NOT NULL,
    touchpoint_id TEXT NOT NULL, channel TEXT, customer_id TEXT, position INTEGER NOT NULL,
    propensity DOUBLE PRECISION NOT NULL, policy TEXT, score DOUBLE PRECISION,
    explored INTEGER NOT NULL, fallback INTEGER NOT NULL, model_name TEXT, model_version TEXT,
    context TEXT, experiment_id TEXT NULL, arm TEXT NULL, unit_id TEXT NULL,
    shadow INTEGER NOT NULL DEFAULT 0)"""
EVENTS_DDL = """CREATE TABLE IF NOT EXISTS {events} (
    event_id TEXT NOT NULL, decision_id TEXT NOT NULL, offer_id TEXT NOT NULL,
    customer_id TEXT, type TEXT NOT NULL, ts_us BIGINT NOT NULL, revenue DOUBLE PRECISION,
    received_us BIGINT NOT NULL)"""


@dataclass(frozen=True)
class SyntheticExperiment:
    """What to generate: ``decisions`` in the experiment (``pre_decisions`` before it)."""

    customers: int = 10_000
    decisions: int = 50_000
    pre_decisions: int = 20_000
    base_rate: float = 0.1
    lift: float = 0.10  # relative, on the treatment arm's acceptance
    treatment_share: float = 0.5
    days: int = 14
    seed: int = 7
    start: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    experiment_id: str = "exp"

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


def _u(*parts: str) -> str:
    """A uniform number in [0, 1) from a hash of ``parts`` (SQL)."""
    return f"((hash({', '.join(parts)}) % 1000003) / 1000003.0)"


def generate(con: duckdb.DuckDBPyConnection, spec: SyntheticExperiment) -> None:
    """Create ``decisions`` and ``events`` in ``con`` (if missing) and append the experiment."""
    con.execute(DECISIONS_DDL.format(decisions="decisions"))
    con.execute(EVENTS_DDL.format(events="events"))
    start_us = int(spec.start.timestamp() * 1_000_000)
    span_us = spec.days * 86_400 * 1_000_000
    # microseconds between two decisions (as a float: row x span overflows 64-bit integers)
    step_us = span_us / max(spec.decisions, 1)
    pre_step_us = span_us / max(spec.pre_decisions, 1)
    s = spec.seed
    total = spec.decisions + spec.pre_decisions
    con.execute(
        f"""
CREATE OR REPLACE TEMP TABLE _rows AS
SELECT i,
       'c' || CAST(hash(i, {s}, 1) % {spec.customers} AS VARCHAR) AS customer_id,
       i >= {spec.pre_decisions} AS in_experiment
FROM range({total}) t(i)
"""
    )
    con.execute(
        f"""
CREATE OR REPLACE TEMP TABLE _decided AS
SELECT 'd' || CAST(i AS VARCHAR) AS decision_id,
       'o' || CAST(hash(i, {s}, 4) % 10 AS VARCHAR) AS offer_id,
       CASE WHEN in_experiment
            THEN {start_us} + CAST((i - {spec.pre_decisions}) * {step_us} AS BIGINT)
            ELSE {start_us} - 1 - CAST(i * {pre_step_us} AS BIGINT)
       END AS ts_us,
       CASE hash(i, {s}, 5) % 3 WHEN 0 THEN 'web_home' WHEN 1 THEN 'email' ELSE 'app_cart' END
           AS touchpoint_id,
       customer_id,
       CASE WHEN in_experiment THEN '{spec.experiment_id}' END AS experiment_id,
       CASE WHEN NOT in_experiment THEN NULL
            WHEN {_u("customer_id", str(s), "2")} < {spec.treatment_share} THEN 'B'
            ELSE 'A' END AS arm,
       -- each customer's own propensity: between 0.2 and 1.8 times the base rate
       {spec.base_rate} * (0.2 + 1.6 * {_u("customer_id", str(s), "3")}) AS p,
       {_u("i", str(s), "6")} AS u
FROM _rows
"""
    )
    con.execute(
        """
INSERT INTO decisions
SELECT decision_id, offer_id, ts_us, touchpoint_id, 'web', customer_id, 1, 1.0, 'greedy', p,
       0, 0, 'offer-ranker', CASE arm WHEN 'B' THEN '2' ELSE '1' END, NULL,
       experiment_id, arm, NULL, 0
FROM _decided
"""
    )
    con.execute(
        f"""
INSERT INTO events
SELECT decision_id || '-' || type, decision_id, offer_id, customer_id, type, ts_us + 60000000,
       CASE WHEN type = 'accept' THEN 10 + 40 * {_u("decision_id", str(s), "7")} END, ts_us
FROM (
    SELECT decision_id, offer_id, customer_id, ts_us, u,
           p * CASE WHEN arm = 'B' THEN {1 + spec.lift} ELSE 1 END AS p_accept
    FROM _decided
) d, (VALUES ('accept'), ('click'), ('dismiss')) kinds(type)
WHERE (type = 'accept' AND u < p_accept)
   OR (type = 'click' AND u < 2 * p_accept)
   OR (type = 'dismiss' AND u > 0.9)
"""
    )
    con.execute("DROP TABLE _rows")
    con.execute("DROP TABLE _decided")
