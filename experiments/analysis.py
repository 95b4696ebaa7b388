"""Analyse an experiment on the event log: SQL down to sums per arm, statistics in numpy/scipy.

The warehouse does the heavy part. One SQL query (the same text on DuckDB and on PostgreSQL,
only the parameter markers differ) reads the exposures — decisions of the experiment with
``shadow = 0``, one row per offer served — joins their events within the attribution window
(per offer, then per decision, for the decisions that have events), aggregates to one row per
(arm, unit) (and per (arm, unit, peek), (arm, unit, touchpoint), (arm, unit, offer)), where
the unit is ``unit_id`` or else ``customer_id``, and returns for each (arm, segment, peek) the
sums that :class:`experiments.stats.Moments` needs. A decision is counted by its first-ranked
offer (``position = 1``). Running sums over the peeks are exact: a
unit's contribution to ``sum(y^2)`` at a peek is the increment of its cumulative value squared,
so one pass gives every peek of the cumulative readout.

The pre-period covariate of CUPED is the same quantity for the same unit from the event log
in the ``pre_period_days`` before the start (0 for a unit with no decision then).

Nothing loops over units in Python; everything after the query works on a few dozen rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from experiments.definition import Guardrail
from experiments.metrics import METRICS, QUANTITIES, Metric, metric
from experiments.stats import (
    Interval,
    Lift,
    Moments,
    SampleRatio,
    adjust_p_values,
    estimate_arms,
    lift,
    sample_ratio_mismatch,
    units_needed,
)
from experiments.store import StoredExperiment
from recsys.errors import ConfigError

if TYPE_CHECKING:  # the screening's types only: analysis needs no model nor replay
    from experiments.screening import ArmScreening

_QUANTITY_NAMES = tuple(QUANTITIES)
_SUMS = ("q", "qq", "qn", "x", "xx", "xq", "xn")


class ArmPlan(BaseModel):
    """A served arm: its name, planned share and kind (the recipe is the experiment's)."""

    # model, policy and levers belong to the experiment definition; the readout reads none
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1)
    share: float = Field(gt=0, description="planned share of the units (any scale)")
    kind: str = "treatment"


#: A guardrail of the plan: the definition's (one model for both).
GuardrailPlan = Guardrail


class AnalysisPlan(BaseModel):
    """What to read and how: the experiment's arms, dates, metrics and statistical settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    experiment_id: str | None = Field(
        default=None, description="decisions.experiment_id (default: name)"
    )
    arms: tuple[ArmPlan, ...] = Field(min_length=2)
    control: str = Field(default="", description="default: the arm of kind control")
    start: datetime
    end: datetime | None = None
    primary_metric: str = "acceptance_rate"
    secondary_metrics: tuple[str, ...] = (
        "click_rate",
        "conversion_rate",
        "revenue_per_decision",
        "revenue_per_customer",
    )
    guardrails: tuple[GuardrailPlan, ...] = (
        GuardrailPlan(metric="dismiss_rate", max_relative_change=0.10),
        GuardrailPlan(metric="complaint_rate", max_relative_change=0.10),
        GuardrailPlan(metric="contacts_per_customer", max_relative_change=0.10),
    )
    pre_period_days: float = Field(default=28.0, ge=0)
    attribution_days: float = Field(default=7.0, gt=0)
    peeks: int = Field(default=20, ge=1, le=200)
    planned_units: int | None = Field(
        default=None, gt=0, description="units where the confidence sequence is tightest"
    )
    relative_mde: float = Field(default=0.05, gt=0)
    min_units: int = Field(
        default=100, ge=2, description="units each arm needs before a verdict is given"
    )
    alpha: float = Field(default=0.05, gt=0, lt=1)
    power: float = Field(default=0.8, gt=0, lt=1)
    correction: Literal["holm", "fdr_bh"] = "holm"
    cuped: bool = True

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    @model_validator(mode="after")
    def _check(self) -> AnalysisPlan:
        names = [a.name for a in self.arms]
        if not self.control:
            controls = [a.name for a in self.arms if a.kind == "control"]
            if len(controls) != 1:
                raise ValueError(
                    f"`control` must name the control arm (or exactly one arm must have kind "
                    f"control), got {len(controls)} arms of kind control"
                )
            object.__setattr__(self, "control", controls[0])
        if len(set(names)) != len(names):
            raise ValueError(f"`arms` names must be unique, got {names}")
        if self.control not in names:
            raise ValueError(f"`control` must be one of the arms {names}, got {self.control!r}")
        for name in (self.primary_metric, *self.secondary_metrics):
            metric(name)
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"`end` must be after `start` ({self.start}), got {self.end}")
        return self

    @property
    def experiment(self) -> str:
        return self.experiment_id or self.name


def _us(ts: datetime) -> int:
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


def _flag(types: Sequence[str]) -> str:
    listed = ", ".join("'" + t.replace("'", "''") + "'" for t in types)
    return f"MAX(CASE WHEN e.type IN ({listed}) THEN 1 ELSE 0 END)"


def _event_columns() -> list[str]:
    """Per (decision, offer), from its events: a flag per counted type, the revenue summed."""
    return [
        f"SUM(COALESCE(e.revenue, 0)) AS {q}" if types is None else f"{_flag(types)} AS {q}"
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
        "start_us": _us(plan.start),
        "end_us": _us(end),
        "pre_start_us": _us(plan.start - timedelta(days=plan.pre_period_days)),
        "attribution_us": int(plan.attribution_days * 86_400 * 1_000_000),
        "as_of_us": _us(as_of),
    }
    for i, cut in enumerate(cutoffs):
        params[f"cut{i}"] = _us(cut)
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


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    units: int
    decisions: int
    offers: int
    models: tuple[str, ...]  # "name:version" seen in the arm's decisions


@dataclass(frozen=True)
class MetricResult:
    """One metric of one treatment arm against the control."""

    metric: str
    label: str
    role: Literal["primary", "secondary", "guardrail"]
    arm: str
    control: str
    value: float
    control_value: float
    raw_value: float
    raw_control_value: float
    variance_reduction: float  # CUPED, on the treatment arm's estimate
    lift: Lift
    adjusted_p_value: float | None = None  # secondary metrics: after Holm / BH
    guardrail: GuardrailPlan | None = None
    status: Literal["ok", "warning", "breach"] | None = None


@dataclass(frozen=True)
class SegmentResult:
    """The primary metric of one arm in one touchpoint or offer (no CUPED, fixed interval)."""

    kind: Literal["touchpoint", "offer"]
    segment: str
    arm: str
    units: int
    decisions: int
    value: float
    relative_lift: float | None
    relative_lower: float | None
    relative_upper: float | None


@dataclass(frozen=True)
class TimelinePoint:
    """The primary metric's relative lift of one arm, cumulative up to ``ts``."""

    ts: datetime
    arm: str
    units: int
    relative_lift: float
    sequence_lower: float
    sequence_upper: float
    fixed_lower: float
    fixed_upper: float


@dataclass(frozen=True)
class ExperimentAnalysis:
    plan: AnalysisPlan
    as_of: datetime
    srm: SampleRatio
    arms: tuple[ArmSummary, ...]
    metrics: tuple[MetricResult, ...]
    segments: tuple[SegmentResult, ...]
    timeline: tuple[TimelinePoint, ...]
    units_needed: dict[str, float]  # per treatment arm: more units for the MDE (0 = enough)
    decisions_needed: dict[str, float]
    verdicts: dict[str, str]
    #: arm -> its what-if value on logged decisions (``recsys experiments screen``)
    screening: dict[str, ArmScreening] = field(default_factory=dict)

    def primary(self, arm: str) -> MetricResult:
        return next(
            r for r in self.metrics if r.arm == arm and r.metric == self.plan.primary_metric
        )

    def to_dict(self) -> dict[str, Any]:
        """Everything, the sample-ratio check and the verdicts first (read them first)."""
        out = asdict(self)
        out["plan"] = self.plan.model_dump(mode="json")
        out = {"srm": out.pop("srm"), "verdicts": out.pop("verdicts"), **out}
        return _jsonable(out)

    def csv_rows(self) -> list[dict[str, Any]]:
        """One row per (arm, metric) and per (arm, segment): the numbers of the report."""
        rows: list[dict[str, Any]] = []
        for r in self.metrics:
            rows.append(
                {
                    "section": r.role,
                    "segment": "all",
                    "arm": r.arm,
                    "control": r.control,
                    "metric": r.metric,
                    "value": r.value,
                    "control_value": r.control_value,
                    "absolute_lift": r.lift.absolute,
                    "relative_lift": r.lift.relative,
                    "relative_lower": r.lift.sequence_relative.lower,
                    "relative_upper": r.lift.sequence_relative.upper,
                    "fixed_relative_lower": r.lift.fixed_relative.lower,
                    "fixed_relative_upper": r.lift.fixed_relative.upper,
                    "p_value": r.lift.p_value,
                    "adjusted_p_value": r.adjusted_p_value,
                    "status": r.status,
                }
            )
        for s in self.segments:
            rows.append(
                {
                    "section": s.kind,
                    "segment": s.segment,
                    "arm": s.arm,
                    "control": self.plan.control,
                    "metric": self.plan.primary_metric,
                    "value": s.value,
                    "relative_lift": s.relative_lift,
                    "fixed_relative_lower": s.relative_lower,
                    "fixed_relative_upper": s.relative_upper,
                }
            )
        for arm, s in self.screening.items():
            rows.append(
                {
                    "section": "screening",
                    "segment": "all",
                    "arm": arm,
                    "metric": f"what-if acceptance ({s.estimator})",
                    "value": s.value,
                    "relative_lift": None if s.lift is None else s.lift - 1,
                    "fixed_relative_lower": None if s.lift_lower is None else s.lift_lower - 1,
                    "fixed_relative_upper": None if s.lift_upper is None else s.lift_upper - 1,
                }
            )
        return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _arm_summaries(src: SQLSource, plan: AnalysisPlan, as_of: datetime) -> list[tuple]:
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


def _guardrail_status(
    metric_: Metric, result: Lift, value: float, guardrail: GuardrailPlan
) -> Literal["ok", "warning", "breach"]:
    if guardrail.max is not None and value > guardrail.max:
        return "breach"
    if guardrail.min is not None and value < guardrail.min:
        return "breach"
    limit = guardrail.max_relative_change
    if limit is None:
        return "ok"
    # "worse" is up for a lower-is-better metric: breach when the whole confidence sequence
    # is beyond the limit, warning when the point estimate is.
    sign = -1.0 if metric_.higher_is_better else 1.0
    worst_sure = min(sign * result.sequence_relative.lower, sign * result.sequence_relative.upper)
    if math.isfinite(worst_sure) and worst_sure > limit:
        return "breach"
    if math.isfinite(result.relative) and sign * result.relative > limit:
        return "warning"
    return "ok"


def _pct(value: float) -> str:
    return f"{value:+.1%}"


def _verdict(
    arm: str,
    plan: AnalysisPlan,
    primary: MetricResult,
    guardrails: Sequence[MetricResult],
    srm: SampleRatio,
    decisions_more: float,
    units: Mapping[str, int],
) -> str:
    label = METRICS[plan.primary_metric].label
    if srm.alarm:
        return (
            f"Do not read the results: the split of customers between arms is not the "
            f"planned one (sample-ratio mismatch, p = {srm.p_value:.2g}); fix the assignment "
            "or the logging first."
        )
    few = {a: units.get(a, 0) for a in (arm, plan.control) if units.get(a, 0) < plan.min_units}
    if few:
        counts = ", ".join(f"{a} {n:,}" for a, n in few.items())
        # an interval from a handful of customers (say none accepted) is no evidence
        return (
            f"Keep running: too few customers yet for a verdict on {arm} against "
            f"{plan.control} ({counts}; at least {plan.min_units:,} per arm)."
        )
    cs = primary.lift.sequence_relative
    interval = f"{_pct(primary.lift.relative)} [{_pct(cs.lower)}, {_pct(cs.upper)}]"
    breached = [g.metric for g in guardrails if g.status == "breach"]
    # the interval shown is the relative one, so the verdict reads the same interval
    better = cs.lower > 0
    worse = cs.upper < 0
    if not METRICS[plan.primary_metric].higher_is_better:
        better, worse = worse, better
    if better and not breached:
        return f"{arm} beats {plan.control} on {label} by {interval}; safe to roll out."
    if better:
        return (
            f"{arm} beats {plan.control} on {label} by {interval}, but guardrails are "
            f"breached ({', '.join(breached)}); do not roll out."
        )
    if worse:
        return f"{arm} is worse than {plan.control} on {label}: {interval}; do not roll out."
    if math.isfinite(decisions_more) and decisions_more > 0:
        return (
            f"Keep running: no difference yet between {arm} and {plan.control} on {label} "
            f"({interval}); about "
            f"{decisions_more:,.0f} more decisions needed for the minimum detectable effect "
            f"of {plan.relative_mde:.0%}."
        )
    return (
        f"No difference on {label} ({interval}) with enough data for the minimum detectable "
        f"effect of {plan.relative_mde:.0%}: {arm} and {plan.control} perform alike."
    )


def analyse(
    src: SQLSource,
    plan: AnalysisPlan,
    as_of: datetime | None = None,
    screening: Mapping[str, ArmScreening] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ExperimentAnalysis:
    """Read the experiment ``plan`` from the event log ``src`` and analyse it up to ``as_of``.

    Raises
    ------
    ValueError
        If an arm has fewer than 2 exposed units (nothing to compare yet).
    """
    as_of = (as_of or clock()).astimezone(UTC)
    arm_names = [a.name for a in plan.arms]
    treatments = [a for a in arm_names if a != plan.control]
    cutoffs, moments = read_moments(src, plan, as_of, plan.peeks)
    totals = {arm: moments.get(("total", arm, "all")) for arm in arm_names}
    missing = [arm for arm, mo in totals.items() if mo is None or mo.units[-1] < 2]
    if missing:
        raise ValueError(
            f"`arms` {missing} of experiment {plan.experiment!r} must have at least 2 exposed "
            f"units between {plan.start.isoformat()} and {as_of.isoformat()}, got fewer"
        )
    final = {arm: mo for arm, mo in totals.items() if mo is not None}

    srm = sample_ratio_mismatch(
        [int(final[a].units[-1]) for a in arm_names], [a.share for a in plan.arms]
    )
    planned = plan.planned_units or max(int(sum(mo.units[-1] for mo in final.values())), 2)

    results: list[MetricResult] = []
    roles: list[tuple[str, str, GuardrailPlan | None]] = [(plan.primary_metric, "primary", None)]
    roles += [(name, "secondary", None) for name in plan.secondary_metrics]
    roles += [(g.metric, "guardrail", g) for g in plan.guardrails]
    for name, role, guardrail in roles:
        metric_ = METRICS[name]
        control_m = final[plan.control].moments(metric_)
        for arm in treatments:
            arm_m = final[arm].moments(metric_)
            if control_m.n <= 0 or arm_m.n <= 0:
                continue
            est_c, est_t = estimate_arms([control_m, arm_m], cuped=plan.cuped)
            lifted = lift(est_t, est_c, plan.alpha, planned)
            results.append(
                MetricResult(
                    metric=name,
                    label=metric_.label,
                    role=role,  # type: ignore[arg-type]
                    arm=arm,
                    control=plan.control,
                    value=est_t.value,
                    control_value=est_c.value,
                    raw_value=est_t.raw_value,
                    raw_control_value=est_c.raw_value,
                    variance_reduction=est_t.variance_reduction,
                    lift=lifted,
                    guardrail=guardrail,
                    status=None
                    if guardrail is None
                    else _guardrail_status(metric_, lifted, est_t.value, guardrail),
                )
            )
    for arm in treatments:
        secondary = [r for r in results if r.arm == arm and r.role == "secondary"]
        adjusted = adjust_p_values([r.lift.p_value for r in secondary], plan.correction)
        for r, p in zip(secondary, adjusted, strict=True):
            results[results.index(r)] = replace(r, adjusted_p_value=p)

    timeline: list[TimelinePoint] = []
    primary_metric = METRICS[plan.primary_metric]
    for i, ts in enumerate(cutoffs):
        c = moments[("timeline", plan.control, "all")].moments(primary_metric, i)
        for arm in treatments:
            t = moments[("timeline", arm, "all")].moments(primary_metric, i)
            if c.units < 2 or t.units < 2 or c.n <= 0 or t.n <= 0 or c.y <= 0:
                continue
            est_c, est_t = estimate_arms([c, t], cuped=plan.cuped)
            lifted = lift(est_t, est_c, plan.alpha, planned)
            timeline.append(
                TimelinePoint(
                    ts,
                    arm,
                    int(c.units + t.units),
                    lifted.relative,
                    lifted.sequence_relative.lower,
                    lifted.sequence_relative.upper,
                    lifted.fixed_relative.lower,
                    lifted.fixed_relative.upper,
                )
            )

    segments = _segments(moments, plan, treatments, primary_metric)
    summaries = _summaries(src, plan, as_of, final)

    more_units: dict[str, float] = {}
    more_decisions: dict[str, float] = {}
    verdicts: dict[str, str] = {}
    control_est = estimate_arms(
        [final[plan.control].moments(primary_metric), final[treatments[0]].moments(primary_metric)],
        cuped=plan.cuped,
    )[0]
    decisions_per_unit = final[plan.control].n[-1] / final[plan.control].units[-1]
    for arm in treatments:
        ratio = final[arm].units[-1] / final[plan.control].units[-1]
        needed = units_needed(control_est, plan.relative_mde, plan.alpha, plan.power, ratio)
        have = final[plan.control].units[-1]
        more = max(needed - have, 0.0) if math.isfinite(needed) else math.nan
        more_units[arm] = more * (1 + ratio)
        more_decisions[arm] = more * (1 + ratio) * decisions_per_unit
        primary = next(r for r in results if r.arm == arm and r.role == "primary")
        guards = [r for r in results if r.arm == arm and r.role == "guardrail"]
        units = {s.arm: s.units for s in summaries}
        verdicts[arm] = _verdict(arm, plan, primary, guards, srm, more_decisions[arm], units)
    return ExperimentAnalysis(
        plan=plan,
        as_of=as_of,
        srm=srm,
        arms=tuple(summaries),
        metrics=tuple(results),
        segments=tuple(segments),
        timeline=tuple(timeline),
        units_needed=more_units,
        decisions_needed=more_decisions,
        verdicts=verdicts,
        screening=dict(screening or {}),
    )


def _summaries(
    src: SQLSource, plan: AnalysisPlan, as_of: datetime, final: Mapping[str, SegmentMoments]
) -> list[ArmSummary]:
    models: dict[str, list[str]] = {}
    decisions: dict[str, int] = {}
    offers: dict[str, int] = {}
    for arm, model, n_decisions, n_offers in _arm_summaries(src, plan, as_of):
        models.setdefault(arm, []).append(model)
        decisions[arm] = decisions.get(arm, 0) + int(n_decisions)
        offers[arm] = offers.get(arm, 0) + int(n_offers)
    return [
        ArmSummary(
            a.name,
            int(final[a.name].units[-1]),
            int(final[a.name].n[-1]),
            offers.get(a.name, 0),
            tuple(models.get(a.name, ())),
        )
        for a in plan.arms
    ]


def _segments(
    all_moments: Mapping[tuple[str, str, str], SegmentMoments],
    plan: AnalysisPlan,
    treatments: Sequence[str],
    primary_metric: Metric,
) -> list[SegmentResult]:
    out: list[SegmentResult] = []
    for kind in ("touchpoint", "offer"):
        moments = {(arm, seg): mo for (k, arm, seg), mo in all_moments.items() if k == kind}
        for segment in sorted({seg for _, seg in moments}):
            control = moments.get((plan.control, segment))
            for arm in [plan.control, *treatments]:
                mo = moments.get((arm, segment))
                if mo is None:
                    continue
                m = mo.moments(primary_metric)
                rel: Interval | None = None
                value = m.ratio
                rel_value: float | None = None
                if (
                    arm != plan.control
                    and control is not None
                    and m.units >= 2
                    and control.units[-1] >= 2
                ):
                    c = control.moments(primary_metric)
                    if c.y > 0:
                        est_c, est_t = estimate_arms([c, m], cuped=False)
                        lifted = lift(est_t, est_c, plan.alpha)
                        rel, rel_value = lifted.fixed_relative, lifted.relative
                out.append(
                    SegmentResult(
                        kind,  # type: ignore[arg-type]
                        segment,
                        arm,
                        int(m.units),
                        int(mo.n[-1]),
                        value,
                        rel_value,
                        rel.lower if rel else None,
                        rel.upper if rel else None,
                    )
                )
    return out


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


#: Fields of an experiment definition (docs/experiments.md) that the readout does not use.
_DEFINITION_ONLY = ("hypothesis", "touchpoints", "layer", "traffic", "salt", "status")


def stored_plan(stored: StoredExperiment, **options: Any) -> AnalysisPlan:
    """The plan of an experiment from the store: its definition, starting when it was started
    unless it names its own start; ``options`` (not None) override its fields."""
    definition = stored.experiment.model_dump(mode="json")
    if definition.get("start") is None:
        started = [h["at"] for h in stored.history if h.get("action") == "start"]
        definition["start"] = started[0] if started else None
    return load_plan(None, definition, **options)


def load_plan(
    path: str | Path | None = None,
    definition: Mapping[str, Any] | None = None,
    **options: Any,
) -> AnalysisPlan:
    """The analysis plan from a YAML file or a stored experiment's ``definition``, with
    ``options`` (not None) overriding its fields.

    Raises
    ------
    ConfigError
        If the file is missing or a field is invalid (the message names the field).
    """
    import yaml
    from pydantic import ValidationError

    data: dict[str, Any] = dict(definition or {})
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"`plan` must name a YAML file, got {str(path)!r}")
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"`plan` {path} must hold a mapping, got {type(loaded).__name__}")
        data.update(loaded)
    data.update({k: v for k, v in options.items() if v is not None})
    # an experiment definition file works as a plan: what only decides is not read here, and
    # shadow arms are never served (no exposure to analyse)
    for key in _DEFINITION_ONLY:
        data.pop(key, None)
    if isinstance(data.get("arms"), list):
        data["arms"] = [
            a for a in data["arms"] if not (isinstance(a, dict) and a.get("kind") == "shadow")
        ]
    try:
        return AnalysisPlan(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"`{'.'.join(str(p) for p in e['loc']) or 'plan'}`: {e['msg']} (got {e.get('input')!r})"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid experiment plan: {problems}") from None
