"""``recsys data summary``: counts, date ranges and basic health of the warehouse."""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from recsys.contract import TABLES
from recsys.warehouse import one_row

_TIME_COLUMNS = {
    "customers": "created_at",
    "transactions": "ts",
    "interactions": "ts",
    "decisions": "ts",
    "outcomes": "ts",
}


@dataclass(frozen=True)
class TableStats:
    table: str
    rows: int
    first: object = None
    last: object = None


@dataclass
class WarehouseSummary:
    tables: list[TableStats] = field(default_factory=list)
    health: dict[str, int] = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"{'table':<14}{'rows':>12}  {'from':<20}{'to':<20}"]
        for t in self.tables:
            first = "" if t.first is None else str(t.first)[:19]
            last = "" if t.last is None else str(t.last)[:19]
            lines.append(f"{t.table:<14}{t.rows:>12,}  {first:<20}{last:<20}")
        lines.append("")
        lines.append("health:")
        for name, value in self.health.items():
            lines.append(f"  {name:<44}{value:>10,}")
        return "\n".join(lines)


def summarize(con: duckdb.DuckDBPyConnection) -> WarehouseSummary:
    summary = WarehouseSummary()
    for name in TABLES:
        rows = one_row(con, f'SELECT count(*) FROM "{name}"')[0]
        first = last = None
        if name in _TIME_COLUMNS:
            col = _TIME_COLUMNS[name]
            first, last = one_row(con, f'SELECT min("{col}"), max("{col}") FROM "{name}"')
        summary.tables.append(TableStats(name, rows, first, last))
    one = lambda sql: int(one_row(con, sql)[0])  # noqa: E731
    summary.health = {
        "offers with no impressions": one(
            "SELECT count(*) FROM offers o WHERE NOT EXISTS "
            "(SELECT 1 FROM decisions d WHERE d.offer_id = o.offer_id)"
        ),
        "active offers (no end or end in the future)": one(
            "SELECT count(*) FROM offers WHERE end_at IS NULL OR end_at > now()::TIMESTAMP"
        ),
        "touchpoints without a fallback offer": one(
            "SELECT count(*) FROM touchpoints t WHERE NOT EXISTS (SELECT 1 FROM offers o "
            "WHERE o.fallback AND (len(o.touchpoints) = 0 OR list_contains(o.touchpoints, "
            "t.touchpoint_id)))"
        ),
        "customers with no history": one(
            "SELECT count(*) FROM customers c WHERE NOT EXISTS (SELECT 1 FROM transactions t "
            "WHERE t.customer_id = c.customer_id) AND NOT EXISTS (SELECT 1 FROM interactions i "
            "WHERE i.customer_id = c.customer_id)"
        ),
        "anonymous decisions (no customer_id)": one(
            "SELECT count(*) FROM decisions WHERE customer_id IS NULL"
        ),
        "decisions without any outcome": one(
            "SELECT count(DISTINCT decision_id) FROM decisions d WHERE NOT EXISTS "
            "(SELECT 1 FROM outcomes o WHERE o.decision_id = d.decision_id)"
        ),
        "decisions without a propensity": one(
            "SELECT count(*) FROM decisions WHERE propensity IS NULL"
        ),
    }
    return summary
