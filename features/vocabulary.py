"""The event vocabulary against the data: which interaction event types no feature reads.

Every interaction counts in the overall interaction features, but the features by kind (views,
clicks, cart adds, tickets, NPS, ...) read only the event types the features config maps to
their role (:mod:`features.config`). A type mapped to no role is reported, with its rows, so
that ``survey`` answers never leave the NPS features blank without a word.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from features.config import FeatureConfig


@dataclass(frozen=True)
class UnusedEventTypes:
    """Event types of the interactions no feature role reads, most rows first."""

    counts: tuple[tuple[str, int], ...]  # (event type, rows)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def format(self) -> str:
        """One line naming every unused type with its rows ("" when there is none)."""
        if not self.counts:
            return ""
        listed = ", ".join(
            f"{name} ({rows:,} row{'' if rows == 1 else 's'})" for name, rows in self.counts
        )
        return (
            f"interactions: event types no feature uses: {listed}; "
            "map them in features config `event_types`"
        )


def unused_event_types(con: duckdb.DuckDBPyConnection, config: FeatureConfig) -> UnusedEventTypes:
    """The event types of the warehouse's ``interactions`` that ``config`` maps to no role."""
    rows = con.execute(
        "SELECT event_type, count(*) AS n FROM interactions GROUP BY event_type "
        "ORDER BY n DESC, event_type"
    ).fetchall()
    used = config.used_event_types
    return UnusedEventTypes(tuple((str(t), int(n)) for t, n in rows if t not in used))
