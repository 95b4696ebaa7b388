"""How offers perform, from the event log: what a marketer reads before changing the catalogue.

Per offer, touchpoint, channel, journey stage and day (UTC), and in total: impressions, the
impressions a page reported as seen, clicks, accepts, conversions, dismissals, complaints,
revenue, and each response as a rate per impression with its Wilson interval
(:class:`experiments.proportions.Rate`).

What counts (docs/reports.md says the same to marketers):

- an **impression** is an offer served in a decision (a row of ``decisions``, shadow arms
  excluded): the event log's convention, as the contact caps count them. ``reported_impressions``
  are the impressions with an ``impression`` event (a page said it was seen; e-mail cannot);
- a **click**, **accept**, **conversion**, **dismissal** or **complaint** is an impression with at
  least one event of that kind (an accept is ``accept`` or ``convert``, as in the experiment
  readout, :data:`experiments.metrics.QUANTITIES`) within ``attribution_days`` after the
  decision and before ``until``; **revenue** is the sum of those events' revenue;
- the **channel** is the one logged with the decision; the **journey stage** is not logged: it is
  the stage the catalogue gives the decision's touchpoint (``touchpoints.stage``) when the report
  runs, ``unknown`` for a touchpoint without one. A stage's counts are the sums of its
  touchpoints' counts.

The warehouse does the heavy part: one SQL text (DuckDB and PostgreSQL alike, through
:class:`experiments.moments.SQLSource`) joins the served offers of the window to their events
and returns the sums per offer, touchpoint, channel and day and in total (``GROUPING SETS``);
everything after it works on a few hundred rows. No I/O here beyond the given connection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from experiments.metrics import QUANTITIES
from experiments.moments import SQLSource, any_event_of, epoch_us
from experiments.proportions import Rate
from recsys.catalog import Catalog
from recsys.errors import InvalidRequestError

Dimension = Literal["all", "offer", "touchpoint", "channel", "stage", "day"]
#: The breakdowns of the report, in the order it shows them.
DIMENSIONS: tuple[Dimension, ...] = ("all", "offer", "touchpoint", "channel", "stage", "day")

#: Count -> the event types that make an impression count (once, however many events it has).
RESPONSES: dict[str, tuple[str, ...]] = {
    "reported_impressions": ("impression",),
    "clicks": QUANTITIES["click"] or (),
    "accepts": QUANTITIES["accept"] or (),
    "conversions": QUANTITIES["convert"] or (),
    "dismissals": QUANTITIES["dismiss"] or (),
    "complaints": QUANTITIES["complaint"] or (),
}
#: Rate per impression -> the count it divides.
RATES: dict[str, str] = {
    "click_rate": "clicks",
    "accept_rate": "accepts",
    "conversion_rate": "conversions",
    "dismiss_rate": "dismissals",
    "complaint_rate": "complaints",
}
UNKNOWN = "unknown"
#: The longest attribution window read (ten years).
MAX_ATTRIBUTION_DAYS = 3650.0
_DAY_US = 86_400 * 1_000_000


def _utc(ts: datetime, field: str) -> datetime:
    try:
        return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00
        raise InvalidRequestError(field, "a time after year 1 in UTC", ts.isoformat()) from None


def parse_time(value: str | None, field: str) -> datetime | None:
    """A window bound as given on the command line or in a query (ISO 8601, naive = UTC).

    Raises
    ------
    InvalidRequestError
        If ``value`` is not an ISO 8601 time (the message names ``field``).
    """
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(
            field,
            "an ISO 8601 time",
            value,
            f"`{field}` must be an ISO 8601 time such as 2026-11-01 or 2026-11-01T08:00 "
            f"(UTC unless it names a zone), got {value!r}",
        ) from None
    return _utc(ts, field)


@dataclass(frozen=True)
class Segment:
    """The counts of one offer, touchpoint, channel, stage or day (or of everything)."""

    dimension: Dimension
    segment: str
    name: str  # the offer's name in the catalogue ("" for other dimensions or a removed offer)
    impressions: int
    reported_impressions: int
    clicks: int
    accepts: int
    conversions: int
    dismissals: int
    complaints: int
    revenue: float
    confidence: float = 0.95

    def rate(self, name: str) -> Rate | None:
        """The rate ``name`` (a key of :data:`RATES`) per impression with its Wilson interval;
        None without impressions."""
        if self.impressions == 0:
            return None
        return Rate.of(getattr(self, RATES[name]), self.impressions, self.confidence)

    @property
    def revenue_per_impression(self) -> float:
        return self.revenue / self.impressions if self.impressions else math.nan

    def to_dict(self) -> dict[str, Any]:
        """The counts, each rate as ``{value, lower, upper}`` (None without impressions)."""
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        del out["dimension"], out["confidence"]
        for name in RATES:
            r = self.rate(name)
            out[name] = (
                None if r is None else {"value": r.value, "lower": r.lower, "upper": r.upper}
            )
        rpi = self.revenue_per_impression
        out["revenue_per_impression"] = rpi if math.isfinite(rpi) else None
        return out

    def csv_row(self) -> dict[str, Any]:
        """One flat row: dimension, segment, name, the counts, each rate with its interval."""
        row: dict[str, Any] = {"dimension": self.dimension}
        row |= {f.name: getattr(self, f.name) for f in fields(self)[1:-1]}
        for name in RATES:
            r = self.rate(name)
            row[name] = None if r is None else r.value
            row[f"{name}_lower"] = None if r is None else r.lower
            row[f"{name}_upper"] = None if r is None else r.upper
        rpi = self.revenue_per_impression
        row["revenue_per_impression"] = rpi if math.isfinite(rpi) else None
        return row


@dataclass(frozen=True)
class OfferPerformance:
    """The report: the window read, its settings, and the segments of every dimension."""

    since: datetime | None  # None: from the first decision of the log
    until: datetime
    attribution_days: float
    confidence: float
    segments: tuple[Segment, ...] = field(default=())

    @property
    def total(self) -> Segment:
        return next(s for s in self.segments if s.dimension == "all")

    def of(self, dimension: Dimension) -> list[Segment]:
        """The segments of ``dimension``: days in time order, the others most shown first."""
        return [s for s in self.segments if s.dimension == dimension]

    def to_dict(self) -> dict[str, Any]:
        """The window, then ``total`` and one list per dimension (``offer``, ``touchpoint``,
        ``channel``, ``stage``, ``day``), each segment as :meth:`Segment.to_dict`."""
        out: dict[str, Any] = {
            "since": None if self.since is None else self.since.isoformat(),
            "until": self.until.isoformat(),
            "attribution_days": self.attribution_days,
            "confidence": self.confidence,
            "total": self.total.to_dict(),
        }
        for dimension in DIMENSIONS[1:]:
            out[dimension] = [s.to_dict() for s in self.of(dimension)]
        return out

    def csv_rows(self) -> list[dict[str, Any]]:
        return [s.csv_row() for s in self.segments]


def performance_query(src: SQLSource) -> str:
    """The SQL: per offer, touchpoint, channel and day (UTC day number) and in total, the
    impressions (``COUNT(*)``), the counts of :data:`RESPONSES` and the revenue.

    Parameters ``since_us``, ``until_us`` (decisions in [since, until)) and ``attribution_us``.
    """
    m = src.marker
    flags = ", ".join(f"{any_event_of(types)} AS {name}" for name, types in RESPONSES.items())
    carried = ", ".join(f"COALESCE(r.{name}, 0) AS {name}" for name in RESPONSES)
    sums = ", ".join(f"SUM({name}) AS {name}" for name in RESPONSES)
    keys = ("offer_id", "touchpoint_id", "channel", "day")
    groupings = ", ".join(f"GROUPING({k}) AS g_{k}" for k in keys)
    return f"""
WITH served AS (
    SELECT d.decision_id, d.offer_id, d.ts_us, d.touchpoint_id,
           COALESCE(d.channel, '{UNKNOWN}') AS channel,
           CAST(FLOOR(d.ts_us / {float(_DAY_US)}) AS BIGINT) AS day
    FROM {src.decisions} d
    WHERE d.shadow = 0 AND d.ts_us >= {m("since_us")} AND d.ts_us < {m("until_us")}
),
responses AS (
    SELECT s.decision_id, s.offer_id, {flags}, SUM(COALESCE(e.revenue, 0)) AS revenue
    FROM served s JOIN {src.events} e
      ON e.decision_id = s.decision_id AND e.offer_id = s.offer_id
    WHERE e.ts_us <= s.ts_us + {m("attribution_us")} AND e.ts_us < {m("until_us")}
    GROUP BY s.decision_id, s.offer_id
),
served_responses AS (
    SELECT s.offer_id, s.touchpoint_id, s.channel, s.day, {carried},
           COALESCE(r.revenue, 0) AS revenue
    FROM served s LEFT JOIN responses r
      ON r.decision_id = s.decision_id AND r.offer_id = s.offer_id
)
SELECT {groupings}, {", ".join(keys)}, COUNT(*) AS impressions, {sums},
       CAST(SUM(revenue) AS DOUBLE PRECISION) AS revenue
FROM served_responses
GROUP BY GROUPING SETS ((offer_id), (touchpoint_id), (channel), (day), ())
"""


def offer_performance(
    src: SQLSource,
    catalog: Catalog | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    attribution_days: float = 7.0,
    confidence: float = 0.95,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> OfferPerformance:
    """The performance of the offers served in [``since``, ``until``) (naive = UTC).

    Parameters
    ----------
    src : the event log (:func:`experiments.moments.open_event_log`)
    catalog : gives offer names and each touchpoint's journey stage (None: names empty,
        stages ``unknown``)
    since : first decision time read (default: the log's first decision)
    until : end of the window, also of the events read (default: now)
    attribution_days : how long after its decision an event counts
    confidence : of the rates' Wilson intervals

    Raises
    ------
    InvalidRequestError
        If ``until`` is not after ``since``, or ``attribution_days`` or ``confidence`` is out of
        range (the message names the parameter).
    """
    until = _utc(until, "until") if until is not None else clock().astimezone(UTC)
    since = None if since is None else _utc(since, "since")
    if since is not None and until <= since:
        raise InvalidRequestError(
            "until", f"a time after `since` ({since.isoformat()})", until.isoformat()
        )
    if not 0 < attribution_days <= MAX_ATTRIBUTION_DAYS:
        raise InvalidRequestError(
            "attribution_days", f"in (0, {MAX_ATTRIBUTION_DAYS}]", attribution_days
        )
    if not 0 < confidence < 1:
        raise InvalidRequestError("confidence", "in (0, 1)", confidence)
    params = {
        "since_us": -(2**62) if since is None else epoch_us(since),
        "until_us": epoch_us(until),
        "attribution_us": int(attribution_days * _DAY_US),
    }
    segments = _segments(src.rows(performance_query(src), params), catalog, confidence)
    return OfferPerformance(since, until, attribution_days, confidence, tuple(segments))


def _segments(rows: list[tuple], catalog: Catalog | None, confidence: float) -> list[Segment]:
    """Segments from the query's rows, plus the stages summed from the touchpoints."""
    names = {} if catalog is None else {o.offer_id: o.name for o in catalog.offers.values()}
    stages = (
        {}
        if catalog is None
        else {t.touchpoint_id: t.stage for t in catalog.touchpoints.values() if t.stage}
    )
    counts = ("impressions", *RESPONSES)
    by_dimension: dict[Dimension, list[Segment]] = {d: [] for d in DIMENSIONS}
    for row in rows:
        g_offer, g_tp, g_channel, g_day, offer, tp, channel, day, *values = row
        dimension: Dimension
        if not g_offer:
            dimension, key = "offer", str(offer)
        elif not g_tp:
            dimension, key = "touchpoint", str(tp)
        elif not g_channel:
            dimension, key = "channel", str(channel)
        elif not g_day:
            dimension = "day"
            key = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=int(day))).date().isoformat()
        else:
            dimension, key = "all", "all"
        numbers = {c: int(v or 0) for c, v in zip(counts, values[:-1], strict=True)}
        segment = Segment(
            dimension,
            key,
            names.get(key, "") if dimension == "offer" else "",
            revenue=_cents(values[-1]),
            confidence=confidence,
            **numbers,
        )
        by_dimension[dimension].append(segment)
    if not by_dimension["all"]:  # an engine that returns no total row for no input
        zeros = dict.fromkeys(counts, 0)
        by_dimension["all"] = [
            Segment("all", "all", "", revenue=0.0, confidence=confidence, **zeros)
        ]
    by_dimension["stage"] = _stages(by_dimension["touchpoint"], stages)
    for dimension, segments in by_dimension.items():
        if dimension == "day":
            segments.sort(key=lambda s: s.segment)
        else:
            segments.sort(key=lambda s: (-s.impressions, s.segment))
    return [s for d in DIMENSIONS for s in by_dimension[d]]


def _stages(touchpoints: list[Segment], stages: Mapping[str, str]) -> list[Segment]:
    """Each journey stage as the sum of its touchpoints (``unknown``: touchpoints the
    catalogue does not place in a stage)."""
    out: dict[str, Segment] = {}
    summed = ("impressions", *RESPONSES, "revenue")
    for tp in touchpoints:
        stage = stages.get(tp.segment, UNKNOWN)
        seen = out.get(stage)
        base = replace(tp, dimension="stage", segment=stage, name="")
        if seen is None:
            out[stage] = base
        else:
            out[stage] = replace(seen, **{k: getattr(seen, k) + getattr(base, k) for k in summed})
    return [replace(s, revenue=_cents(s.revenue)) for s in out.values()]


def _cents(amount: float | None) -> float:
    """Money to the cent: a sum of floats carries binary noise (0.1 + 0.2 = 0.30000000000000004)."""
    return round(float(amount or 0.0), 2)
