"""The event log's sums per arm, unit, segment and peek: one SQL text for DuckDB and
PostgreSQL (only the parameter markers differ), read by :func:`experiments.analysis.analyse`.

The query reads the exposures — decisions of the experiment with ``shadow = 0``, one row per
offer served — joins their events within the attribution window (per offer, then per
decision), aggregates to one row per (arm, unit) (and per peek, touchpoint and offer), where
the unit is ``unit_id`` or else ``customer_id``, and returns the sums that
:class:`experiments.stats.Moments` needs. Running sums over the peeks are exact: a unit's
contribution to ``sum(y^2)`` at a peek is the increment of its cumulative value squared, so one
pass gives every peek of the cumulative readout.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from experiments.metrics import METRICS, QUANTITIES, Metric
from experiments.stats import (
    Moments,
)
from recsys.errors import ConfigError

if TYPE_CHECKING:  # the screening's types only: analysis needs no model nor replay
    pass
from experiments.plan import AnalysisPlan

_QUANTITY_NAMES = tuple(QUANTITIES)
_SUMS = ("q", "qq", "qn", "x", "xx", "xq", "xn")


def epoch_us(ts: datetime) -> int:
    """``ts`` in microseconds since the epoch (the event log's ``ts_us``)."""
    return int(ts.timestamp() * 1_000_000)


class SQLSource:
    """The event log's ``decisions`` and ``events`` tables behind a DB-API connection.

    Parameters
    ----------
    connection : a DuckDB or psycopg connection
    dialect : ``duckdb`` (``$name`` parameters) or ``postgres`` (``%(name)s``)
    decisions, events : the tables, as SQL (e.g. ``"my_schema"."decisions"``)
    """

    def __init__(
        self,
        connection: Any,
        dialect: Literal["duckdb", "postgres"],
        decisions: str = "decisions",
        events: str = "events",
    ):
        if dialect not in ("duckdb", "postgres"):
            raise ValueError(f"`dialect` must be 'duckdb' or 'postgres', got {dialect!r}")
        self.connection = connection
        self.dialect = dialect
        self.decisions = decisions
        self.events = events

    @classmethod
    def postgres(cls, connection: Any, schema: str = "public") -> SQLSource:
        quoted = '"' + schema.replace('"', '""') + '"'
        return cls(connection, "postgres", f"{quoted}.decisions", f"{quoted}.events")

    def marker(self, name: str) -> str:
        return f"${name}" if self.dialect == "duckdb" else f"%({name})s"

    def rows(self, query: str, params: Mapping[str, Any]) -> list[tuple]:
        cursor = self.connection.cursor()
        try:
            # only the parameters the query names (DuckDB refuses unused ones)
            used = {k: v for k, v in params.items() if self.marker(k) in query}
            cursor.execute(query, used)
            return list(cursor.fetchall())
        finally:
            cursor.close()


def any_event_of(types: Iterable[str]) -> str:
    """SQL: 1 when one of the joined events ``e`` has a type in ``types``, else 0."""
    listed = ", ".join("'" + t.replace("'", "''") + "'" for t in types)
    return f"MAX(CASE WHEN e.type IN ({listed}) THEN 1 ELSE 0 END)"


def _event_columns() -> list[str]:
    """Per (decision, offer), from its events: a flag per counted type, the revenue summed."""
    return [
        f"SUM(COALESCE(e.revenue, 0)) AS {q}" if types is None else f"{any_event_of(types)} AS {q}"
        for q, types in QUANTITIES.items()
        if q != "offers"
    ]


def _event_quantities() -> list[str]:
    return [q for q in QUANTITIES if q != "offers"]


def _hits(base: str, src: SQLSource, keys: Sequence[str]) -> str:
    """Per (decision, offer) of ``base`` with events in the attribution window: the flags and
    revenue of :func:`_event_columns`, and ``keys`` (columns of ``base``, the same on every
    row of a decision)."""
    carried = "".join(f", MIN(b.{k}) AS {k}" for k in keys)
    return (
        f"SELECT b.decision_id, b.offer_id{carried}, {', '.join(_event_columns())} "
        f"FROM {base} b JOIN {src.events} e "
        "ON e.decision_id = b.decision_id AND e.offer_id = b.offer_id "
        f"WHERE e.ts_us <= b.ts_us + {src.marker('attribution_us')} "
        f"AND e.ts_us < {src.marker('as_of_us')} "
        "GROUP BY b.decision_id, b.offer_id"
    )


def _per_decision(hits: str, keys: Sequence[str]) -> str:
    """Per decision with events: a flag counts once, revenue adds up over its offers."""
    carried = "".join(f", MIN({k}) AS {k}" for k in keys)
    cols = ", ".join(
        f"SUM({q}) AS {q}" if QUANTITIES[q] is None else f"MAX({q}) AS {q}"
        for q in _event_quantities()
    )
    return f"SELECT decision_id{carried}, {cols} FROM {hits} GROUP BY decision_id"


def _unit_rows(
    kind: str,
    segment: str,
    peek: str,
    key: str | None,
    quantities: Sequence[str],
    decisions: str,
    hits: str,
) -> str:
    """One kind of unit rows, per (arm, unit[, ``key``]): the counts from ``base`` (``n``
    decisions by ``decisions``, ``offers``) added to the event quantities from ``hits``; the
    quantities not in ``quantities`` are 0."""
    keys = "arm, unit" + (f", {key}" if key else "")
    events = ", ".join(
        (f"SUM({q})" if q in quantities else "0") + f" AS {q}" for q in _event_quantities()
    )
    zeros = ", ".join(f"0 AS {q}" for q in _event_quantities())
    offers = "COUNT(*)" if "offers" in quantities else "0"
    merged = ", ".join(f"SUM({q}) AS {q}" for q in _QUANTITY_NAMES)
    return (
        f"SELECT '{kind}' AS kind, {segment} AS segment, arm, unit, {peek} AS peek, "
        f"SUM(n) AS n, {merged} FROM (\n"
        f"        SELECT {keys}, {decisions} AS n, {offers} AS offers, {zeros} "
        f"FROM base GROUP BY {keys}\n"
        f"        UNION ALL\n"
        f"        SELECT {keys}, 0, 0, {events} FROM {hits} GROUP BY {keys}\n"
        f"    ) {kind}_parts GROUP BY {keys}"
    )


def moments_query(src: SQLSource, peeks: int, timeline_quantity: str) -> str:
    """The SQL returning, per (kind, arm, segment, peek), ``units``, ``s_n``, ``s_nn`` and for
    each quantity ``q`` the sums ``{q}_q, {q}_qq, {q}_qn, {q}_x, {q}_xx, {q}_xq, {q}_xn``.

    ``kind`` is ``total`` (every quantity, segment ``all``), ``timeline`` (``peeks`` peeks of
    ``timeline_quantity`` only, the others 0: increments of the units' cumulative values, the
    caller takes running sums), ``touchpoint`` or ``offer`` (totals per segment; within an
    offer, a "decision" is a showing of the offer).

    A decision is counted by its first-ranked offer (``position = 1``, which every logged
    decision has), its offers by its rows: no grouping by decision over all exposures, only
    over the decisions that have events.
    """
    m = src.marker
    unit = "COALESCE(d.unit_id, d.customer_id)"
    if peeks > 1:
        cases = " ".join(f"WHEN d.ts_us < {m(f'cut{i}')} THEN {i}" for i in range(peeks - 1))
        peek = f"CASE {cases} ELSE {peeks - 1} END"
    else:
        peek = "0"
    qs = _QUANTITY_NAMES
    first_rank = "SUM(first_rank)"
    parts = [
        _unit_rows("timeline", "'all'", "peek", "peek", [timeline_quantity],
                    first_rank, "decision_hits"),
        _unit_rows("total", "'all'", "0", None, qs, first_rank, "decision_hits"),
        _unit_rows("touchpoint", "touchpoint_id", "0", "touchpoint_id", qs,
                    first_rank, "decision_hits"),
        _unit_rows("offer", "offer_id", "0", "offer_id", qs, "COUNT(*)",
                    "offer_hits"),
    ]  # fmt: skip
    unit_sums = ", ".join(f"SUM({q}) AS {q}" for q in qs)
    event_sums = ", ".join(f"SUM({q}) AS {q}" for q in _event_quantities())
    zeros = ", ".join(f"0 AS {q}" for q in _event_quantities())
    # the running sums (a window) only for the timeline's quantity: windows are the costly part
    running = ", ".join(
        f"u.{q}, SUM(u.{q}) OVER w AS c_{q}, COALESCE(p.{q}, 0) AS x_{q}"
        if q == timeline_quantity
        else f"0 AS {q}, 0 AS c_{q}, 0 AS x_{q}"
        for q in qs
    )
    single = ", ".join(f"u.{q}, u.{q} AS c_{q}, COALESCE(p.{q}, 0) AS x_{q}" for q in qs)
    no_covariate = ", ".join(f"u.{q}, u.{q} AS c_{q}, 0 AS x_{q}" for q in qs)
    first = "CASE WHEN c_n = n THEN 1 ELSE 0 END"

    def dbl(expr: str) -> str:
        return f"CAST(SUM({expr}) AS DOUBLE PRECISION)"

    sums = [
        f"{dbl(first)} AS units",
        f"{dbl('n')} AS s_n",
        f"{dbl('c_n * c_n - (c_n - n) * (c_n - n)')} AS s_nn",
    ]
    for q in qs:
        sums += [
            f"{dbl(q)} AS {q}_q",
            f"{dbl(f'c_{q} * c_{q} - (c_{q} - {q}) * (c_{q} - {q})')} AS {q}_qq",
            f"{dbl(f'c_{q} * c_n - (c_{q} - {q}) * (c_n - n)')} AS {q}_qn",
            f"{dbl(f'{first} * x_{q}')} AS {q}_x",
            f"{dbl(f'{first} * x_{q} * x_{q}')} AS {q}_xx",
            f"{dbl(f'x_{q} * {q}')} AS {q}_xq",
            f"{dbl(f'x_{q} * n')} AS {q}_xn",
        ]
    keys = ("arm", "unit", "touchpoint_id", "peek")
    # base is read five times: scanning the table again is cheaper than materialising 10M
    # exposures (which spills to disk); NOT MATERIALIZED is PostgreSQL's syntax as well
    return f"""
WITH base AS NOT MATERIALIZED (
    SELECT d.decision_id, d.offer_id, d.ts_us, d.arm, {unit} AS unit, d.touchpoint_id,
           {peek} AS peek, CASE WHEN d.position = 1 THEN 1 ELSE 0 END AS first_rank
    FROM {src.decisions} d
    WHERE d.experiment_id = {m("experiment")} AND d.shadow = 0
      AND d.ts_us >= {m("start_us")} AND d.ts_us < {m("end_us")}
      AND {unit} IS NOT NULL AND d.arm IS NOT NULL
),
offer_hits AS ({_hits("base", src, keys)}),
decision_hits AS ({_per_decision("offer_hits", keys)}),
timeline_rows AS ({parts[0]}),
total_rows AS ({parts[1]}),
segment_rows AS (
    {parts[2]}
    UNION ALL
    {parts[3]}
),
pre_base AS (
    SELECT d.decision_id, d.offer_id, d.ts_us, {unit} AS unit,
           CASE WHEN d.position = 1 THEN 1 ELSE 0 END AS first_rank
    FROM {src.decisions} d
    WHERE d.shadow = 0 AND d.ts_us >= {m("pre_start_us")} AND d.ts_us < {m("start_us")}
      AND {unit} IS NOT NULL
),
pre_offer_hits AS ({_hits("pre_base", src, ("unit",))}),
pre_decision_hits AS ({_per_decision("pre_offer_hits", ("unit",))}),
pre AS (
    SELECT unit, SUM(n) AS n, {unit_sums} FROM (
        SELECT unit, SUM(first_rank) AS n, COUNT(*) AS offers, {zeros}
        FROM pre_base GROUP BY unit
        UNION ALL
        SELECT unit, 0, 0, {event_sums} FROM pre_decision_hits GROUP BY unit
    ) pre_parts GROUP BY unit
),
cumulative AS (
    -- each kind of unit rows is read once (none is materialised); only the timeline and the
    -- totals need the pre-period covariate (CUPED), only the timeline the running sums
    SELECT u.kind, u.segment, u.arm, u.peek, u.n, SUM(u.n) OVER w AS c_n, {running}
    FROM timeline_rows u LEFT JOIN pre p ON p.unit = u.unit
    WINDOW w AS (PARTITION BY u.arm, u.unit ORDER BY u.peek
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
    UNION ALL
    SELECT u.kind, u.segment, u.arm, u.peek, u.n, u.n AS c_n, {single}
    FROM total_rows u LEFT JOIN pre p ON p.unit = u.unit
    UNION ALL
    SELECT u.kind, u.segment, u.arm, u.peek, u.n, u.n AS c_n, {no_covariate}
    FROM segment_rows u
)
SELECT kind, arm, segment, peek, {", ".join(sums)}
FROM cumulative GROUP BY kind, arm, segment, peek ORDER BY kind, arm, segment, peek
"""


@dataclass(frozen=True)
class SegmentMoments:
    """Running sums per peek of one (arm, segment): ``units``/``n`` and per quantity."""

    arm: str
    segment: str
    units: list[float]
    n: list[float]
    nn: list[float]
    quantity: dict[str, dict[str, list[float]]]

    def moments(self, metric_: Metric, peek: int = -1) -> Moments:
        s = self.quantity[metric_.quantity]
        if metric_.per == "unit":
            # n = 1 per unit: sum(n) = sum(n^2) = units, products with n are plain sums
            u = self.units[peek]
            return Moments(
                u,
                u,
                u,
                s["q"][peek],
                s["qq"][peek],
                s["q"][peek],
                s["x"][peek],
                s["xx"][peek],
                s["xq"][peek],
                s["x"][peek],
            )
        return Moments(
            self.units[peek], self.n[peek], self.nn[peek],
            s["q"][peek], s["qq"][peek], s["qn"][peek],
            s["x"][peek], s["xx"][peek], s["xq"][peek], s["xn"][peek],
        )  # fmt: skip


def _params(plan: AnalysisPlan, as_of: datetime, cutoffs: Sequence[datetime]) -> dict[str, Any]:
    end = min(plan.end, as_of) if plan.end else as_of
    params: dict[str, Any] = {
        "experiment": plan.experiment,
        "start_us": epoch_us(plan.start),
        "end_us": epoch_us(end),
        "pre_start_us": epoch_us(plan.start - timedelta(days=plan.pre_period_days)),
        "attribution_us": int(plan.attribution_days * 86_400 * 1_000_000),
        "as_of_us": epoch_us(as_of),
    }
    for i, cut in enumerate(cutoffs):
        params[f"cut{i}"] = epoch_us(cut)
    return params


def read_moments(
    src: SQLSource, plan: AnalysisPlan, as_of: datetime, peeks: int = 1
) -> tuple[list[datetime], dict[tuple[str, str, str], SegmentMoments]]:
    """Cumulative sums at ``peeks`` equally spaced times up to ``as_of``, in one query.

    Returns the peek end times and, per (kind, arm, segment) — kinds of :func:`moments_query`
    — :class:`SegmentMoments` with one value per peek (a peek without decisions repeats the
    previous one; all kinds but ``timeline`` have only the total, repeated).
    """
    end = min(plan.end, as_of) if plan.end else as_of
    step = (end - plan.start) / peeks
    cutoffs = [plan.start + step * (i + 1) for i in range(peeks)]
    query = moments_query(src, peeks, METRICS[plan.primary_metric].quantity)
    rows = src.rows(query, _params(plan, as_of, cutoffs[:-1]))
    width = 3 + len(_SUMS) * len(_QUANTITY_NAMES)
    by_key: dict[tuple[str, str, str], list[list[float]]] = {}
    for row in rows:
        key = (str(row[0]), str(row[1]), str(row[2]))
        table = by_key.setdefault(key, [[0.0] * width for _ in range(peeks)])
        table[int(row[3])] = [float(v or 0.0) for v in row[4:]]
    out: dict[tuple[str, str, str], SegmentMoments] = {}
    for (kind, arm, seg), table in by_key.items():
        running = np.cumsum(np.asarray(table), axis=0).T.tolist()
        quantity = {
            q: {s: running[3 + j * len(_SUMS) + k] for k, s in enumerate(_SUMS)}
            for j, q in enumerate(_QUANTITY_NAMES)
        }
        out[(kind, arm, seg)] = SegmentMoments(
            arm, seg, running[0], running[1], running[2], quantity
        )
    return cutoffs, out


def arm_summaries(src: SQLSource, plan: AnalysisPlan, as_of: datetime) -> list[tuple]:
    m = src.marker
    unit = "COALESCE(unit_id, customer_id)"
    query = f"""
SELECT arm, COALESCE(model_name, '') || ':' || COALESCE(model_version, '') AS model,
       SUM(CASE WHEN position = 1 THEN 1 ELSE 0 END) AS decisions, COUNT(*) AS offers
FROM {src.decisions}
WHERE experiment_id = {m("experiment")} AND shadow = 0
  AND ts_us >= {m("start_us")} AND ts_us < {m("end_us")} AND {unit} IS NOT NULL
  AND arm IS NOT NULL
GROUP BY arm, COALESCE(model_name, '') || ':' || COALESCE(model_version, '')
ORDER BY arm, model
"""
    return src.rows(query, _params(plan, as_of, []))


@contextmanager
def open_event_log(url: str) -> Iterator[SQLSource]:
    """The event log at ``url`` (settings ``event_log_url``) as a source for :func:`analyse`.

    ``postgresql://...?schema=S``: queried in place. ``sqlite:///PATH``: its two tables are
    copied into an in-memory DuckDB (the embedded warehouse engine) and queried there.

    Raises
    ------
    ConfigError
        If the URL is neither, or the SQLite file does not exist.
    """
    if url.startswith(("postgresql://", "postgresql+psycopg://")):
        import psycopg

        from recsys.eventlog_postgres import parse_url

        conninfo, schema = parse_url(url)
        pg = psycopg.connect(conninfo, autocommit=True)
        try:
            yield SQLSource.postgres(pg, schema)
        finally:
            pg.close()
        return
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ConfigError(
            f"`event_log_url` must start with sqlite:/// or postgresql://, got {url!r}"
        )
    path = url.removeprefix(prefix)
    if not Path(path).is_file():
        raise ConfigError(f"`event_log_url` names no event log file: {path!r} does not exist")
    import sqlite3

    import duckdb
    import pandas as pd

    lite = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con = duckdb.connect()
    try:
        for table in ("decisions", "events"):
            frame = pd.read_sql_query(f"SELECT * FROM {table}", lite)
            con.register(f"_{table}", frame)
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM _{table}")
            con.unregister(f"_{table}")
        lite.close()
        yield SQLSource(con, "duckdb")
    finally:
        con.close()
