"""Analyse an experiment on the event log: SQL down to sums per arm (:mod:`experiments.moments`),
statistics in numpy/scipy (:mod:`experiments.stats`), verdicts in plain language.

A decision is counted by its first-ranked offer (``position = 1``). The pre-period covariate
of CUPED is the same quantity for the same unit from the event log in the ``pre_period_days``
before the start (0 for a unit with no decision then).

Nothing loops over units in Python; everything after the query works on a few dozen rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

from experiments.metrics import METRICS, Metric
from experiments.stats import (
    Interval,
    Lift,
    SampleRatio,
    adjust_p_values,
    estimate_arms,
    lift,
    sample_ratio_mismatch,
    units_needed,
)

if TYPE_CHECKING:  # the screening's types only: analysis needs no model nor replay
    from experiments.screening import ArmScreening
from experiments.moments import SegmentMoments, SQLSource, arm_summaries, read_moments
from experiments.plan import AnalysisPlan, GuardrailPlan


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
    for arm, model, n_decisions, n_offers in arm_summaries(src, plan, as_of):
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
