"""Export the event log as contract files that ``recsys data load`` reads back."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from recsys.catalog import to_utc
from recsys.eventlog.base import EventLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportSummary:
    decisions_path: Path
    outcomes_path: Path
    decision_rows: int
    outcome_rows: int
    anonymised_customers: int
    shadow_path: Path | None = None
    shadow_rows: int = 0


def export_contract(
    log: EventLog,
    out_dir: str | Path,
    known_customers: Collection[str] | None = None,
) -> ExportSummary:
    """Write the log as contract files ``decisions.parquet`` and ``outcomes.parquet``.

    ``decisions.parquet`` holds the served offers (exposures) with their ``experiment_id``,
    ``arm`` and ``unit_id``; the decisions of shadow arms, never served, go to
    ``shadow_decisions.parquet`` (same columns), which ``recsys data load`` does not read, so
    they never become training examples.

    ``recsys data load OUT_DIR`` then appends the new rows to the warehouse (loading twice
    adds nothing: both tables are keyed), so the next training sees what was served.

    Parameters
    ----------
    log : EventLog
    out_dir : folder to write into (created)
    known_customers : collection of str, optional
        The warehouse's customer ids. Decisions for other ids (cold-start customers the
        warehouse does not know) are written with ``customer_id`` empty, as anonymous
        decisions, so the reference check of the load passes.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logged = log.decision_rows()
    decisions = [r for r in logged if not r["shadow"]]
    shadows = [r for r in logged if r["shadow"]]
    outcomes = log.outcome_rows()
    anonymised: set[str] = set()
    if known_customers is not None:
        known = set(known_customers)
        for row in logged:
            if row["customer_id"] is not None and row["customer_id"] not in known:
                anonymised.add(row["customer_id"])
                row["customer_id"] = None

    def naive(ts: datetime) -> datetime:
        return to_utc(ts).replace(tzinfo=None)

    def decisions_table(rows: list[dict]) -> pa.Table:
        return pa.table(
            {
                "decision_id": pa.array([r["decision_id"] for r in rows], pa.string()),
                "ts": pa.array([naive(r["ts"]) for r in rows], pa.timestamp("us")),
                "touchpoint_id": pa.array([r["touchpoint_id"] for r in rows], pa.string()),
                "offer_id": pa.array([r["offer_id"] for r in rows], pa.string()),
                "customer_id": pa.array([r["customer_id"] for r in rows], pa.string()),
                "position": pa.array([r["position"] for r in rows], pa.int64()),
                "propensity": pa.array([r["propensity"] for r in rows], pa.float64()),
                "policy": pa.array([r["policy"] for r in rows], pa.string()),
                "context": pa.array([r["context"] for r in rows], pa.string()),
                "experiment_id": pa.array([r["experiment_id"] for r in rows], pa.string()),
                "arm": pa.array([r["arm"] for r in rows], pa.string()),
                "unit_id": pa.array([r["unit_id"] for r in rows], pa.string()),
            }
        )

    outcomes_table = pa.table(
        {
            "decision_id": pa.array([r["decision_id"] for r in outcomes], pa.string()),
            "offer_id": pa.array([r["offer_id"] for r in outcomes], pa.string()),
            "ts": pa.array([naive(r["ts"]) for r in outcomes], pa.timestamp("us")),
            "outcome": pa.array([r["outcome"] for r in outcomes], pa.string()),
            "revenue": pa.array([r["revenue"] for r in outcomes], pa.float64()),
        }
    )
    decisions_path = out / "decisions.parquet"
    outcomes_path = out / "outcomes.parquet"
    pq.write_table(decisions_table(decisions), decisions_path)
    shadow_path = None
    if shadows:
        shadow_path = out / "shadow_decisions.parquet"
        pq.write_table(decisions_table(shadows), shadow_path)
    pq.write_table(outcomes_table, outcomes_path)
    logger.info(
        "event log exported: %d decision rows, %d outcomes -> %s",
        len(decisions),
        len(outcomes),
        out,
    )
    return ExportSummary(
        decisions_path,
        outcomes_path,
        len(decisions),
        len(outcomes),
        len(anonymised),
        shadow_path,
        len(shadows),
    )
