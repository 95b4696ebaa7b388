"""The experiment report: one self-contained HTML file (plotly, JavaScript embedded), JSON, CSV,
and the analysis logged to MLflow as a run.

The HTML holds, in this order: the sample-ratio check (before any result, as a failed check
means the results cannot be trusted), the verdict per treatment arm in plain language, the
metrics table, the cumulative lift of the primary metric with its confidence sequence over
time, per-touchpoint and per-offer results, guardrails, and the what-if screening estimate
when one was given.
"""

from __future__ import annotations

import csv
import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go

from experiments.analysis import ExperimentAnalysis
from experiments.plan import GuardrailPlan

if TYPE_CHECKING:
    from experiments.screening import ArmScreening
    from recsys.settings import Settings

#: MLflow experiment of the readouts (one run per analysis), beside the training runs'.
MLFLOW_EXPERIMENT_SUFFIX = "-experiments"


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:+.1%}"


def number(value: float | None) -> str:
    """Four significant digits, thousands separated; ``n/a`` for a missing value."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"


def _limit(guardrail: GuardrailPlan | None) -> str:
    if guardrail is None:
        return ""
    parts = []
    if guardrail.max is not None:
        parts.append(f"at most {number(guardrail.max)}")
    if guardrail.min is not None:
        parts.append(f"at least {number(guardrail.min)}")
    if guardrail.max_relative_change is not None:
        parts.append(f"worse by at most {guardrail.max_relative_change:.0%}")
    return "; ".join(parts)


def table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table of already formatted cells (escaped here)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _timeline_figure(analysis: ExperimentAnalysis) -> go.Figure:
    fig = go.Figure()
    for arm in analysis.verdicts:
        points = [p for p in analysis.timeline if p.arm == arm]
        ts = [p.ts for p in points]
        fig.add_trace(
            go.Scatter(
                x=ts + ts[::-1],
                y=[p.sequence_upper for p in points] + [p.sequence_lower for p in points][::-1],
                fill="toself",
                fillcolor="rgba(31,119,180,0.2)",
                line={"width": 0},
                name=f"{arm}: confidence sequence",
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(x=ts, y=[p.relative_lift for p in points], mode="lines+markers", name=arm)
        )
    fig.add_hline(y=0, line_dash="dash", line_color="grey")
    fig.update_layout(
        title=f"Cumulative relative lift on {analysis.plan.primary_metric} vs "
        f"{analysis.plan.control} (always-valid interval)",
        yaxis_tickformat="+.0%",
        xaxis_title="time",
        yaxis_title="relative lift",
        height=420,
    )
    return fig


def _segment_figure(analysis: ExperimentAnalysis, kind: str) -> go.Figure:
    fig = go.Figure()
    rows = [s for s in analysis.segments if s.kind == kind]
    for arm in [a.name for a in analysis.plan.arms]:
        mine = [s for s in rows if s.arm == arm]
        fig.add_trace(go.Bar(x=[s.segment for s in mine], y=[s.value for s in mine], name=arm))
    fig.update_layout(
        barmode="group",
        title=f"{analysis.plan.primary_metric} per {kind}",
        yaxis_title=analysis.plan.primary_metric,
        height=380,
    )
    return fig


def _online_primary(analysis: ExperimentAnalysis) -> dict[str, float]:
    """Each arm's online value of the primary metric (the control's too)."""
    online = {r.arm: r.value for r in analysis.metrics if r.role == "primary"}
    online[analysis.plan.control] = next(
        (r.control_value for r in analysis.metrics if r.role == "primary"), math.nan
    )
    return online


def _screening_figure(analysis: ExperimentAnalysis) -> go.Figure:
    online = _online_primary(analysis)
    arms = list(analysis.screening)
    what_if = [analysis.screening[a] for a in arms]

    def bound(s: ArmScreening, side: str) -> float:
        edge = s.upper if side == "upper" else s.lower
        return 0.0 if edge is None else abs(edge - s.value)

    fig = go.Figure(
        [
            go.Bar(
                x=arms,
                y=[s.value for s in what_if],
                error_y={
                    "type": "data",
                    "array": [bound(s, "upper") for s in what_if],
                    "arrayminus": [bound(s, "lower") for s in what_if],
                },
                name="what-if (OPE)",
            ),
            go.Bar(x=arms, y=[online.get(a, math.nan) for a in arms], name="online"),
        ]
    )
    fig.update_layout(barmode="group", title="Screening estimate against the online result")
    return fig


def _screening_table(analysis: ExperimentAnalysis) -> str:
    """Per arm: the online primary metric beside the what-if value, its lift over the logging
    policy, revenue, what it rests on and its warnings."""
    online = _online_primary(analysis)

    def interval(low: float | None, high: float | None, fmt=number) -> str:
        return "" if low is None or high is None else f"[{fmt(low)}, {fmt(high)}]"

    def relative(ratio: float | None) -> str:
        return _pct(None if ratio is None else ratio - 1)

    rows = [
        [
            arm,
            number(online.get(arm)),
            f"{number(s.value)} {interval(s.lower, s.upper)} ({s.estimator})",
            f"{relative(s.lift)} {interval(s.lift_lower, s.lift_upper, relative)}",
            f"{number(s.revenue)} {interval(s.revenue_lower, s.revenue_upper)}",
            "" if s.matched_rounds is None else f"{s.matched_rounds:,}",
            "" if s.positives is None else f"{s.positives:,}",
            number(s.effective_sample_size),
            number(s.max_weight),
            number(s.true_value),
            "; ".join(s.warnings) or ("" if s.matched_rounds is None else "ok"),
        ]
        for arm, s in analysis.screening.items()
    ]
    return table(
        [
            "arm",
            f"online {analysis.plan.primary_metric}",
            "what-if acceptance per decision",
            "lift over logging",
            "what-if revenue per decision",
            "matched rounds",
            "positives",
            "effective sample size",
            "largest weight",
            "true value (generated data)",
            "support",
        ],
        rows,
    )


def embed_charts(figures: Sequence[go.Figure]) -> list[str]:
    """Each figure as an HTML ``<div>``; the first carries plotly's JavaScript inline (about
    4 MB, once per page), so the page needs no network (no CDN)."""
    return [
        fig.to_html(
            full_html=False,
            include_plotlyjs=(i == 0),
            div_id=f"chart-{i}",
            config={"displaylogo": False},  # the logo links to plotly.com
        )
        for i, fig in enumerate(figures)
    ]


#: The stylesheet of the reports (this one and :mod:`experiments.offer_report`).
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.alarm { background: #fdd; border: 2px solid #c00; padding: 1em; }
.ok { background: #dfd; border: 1px solid #070; padding: 1em; }
.verdict { font-size: 1.2em; font-weight: bold; }
"""


def render_html(analysis: ExperimentAnalysis) -> str:
    """The report as one HTML document with plotly's JavaScript inside (no network needed)."""
    plan = analysis.plan
    srm = analysis.srm
    srm_block = (
        f'<div class="{"alarm" if srm.alarm else "ok"}" id="srm"><b>Sample-ratio check: '
        f"{'MISMATCH — do not trust the results below' if srm.alarm else 'passed'}</b>. "
        f"Customers per arm {list(srm.observed)}, expected {[round(e) for e in srm.expected]} "
        f"(chi-square p = {srm.p_value:.3g}; alarm below 0.001).</div>"
    )
    verdicts = "".join(
        f'<p class="verdict" id="verdict-{html.escape(arm)}">{html.escape(text)}</p>'
        for arm, text in analysis.verdicts.items()
    )
    arms = table(
        ["arm", "customers", "decisions", "offers shown", "models"],
        [
            [a.arm, f"{a.units:,}", f"{a.decisions:,}", f"{a.offers:,}", ", ".join(a.models)]
            for a in analysis.arms
        ],
    )
    metric_rows = [
        [
            f"{r.label} ({r.role})",
            r.arm,
            number(r.control_value),
            number(r.value),
            number(r.lift.absolute),
            _pct(r.lift.relative),
            f"[{_pct(r.lift.sequence_relative.lower)}, {_pct(r.lift.sequence_relative.upper)}]",
            f"[{_pct(r.lift.fixed_relative.lower)}, {_pct(r.lift.fixed_relative.upper)}]",
            f"{r.lift.p_value:.3g}",
            "" if r.adjusted_p_value is None else f"{r.adjusted_p_value:.3g}",
            f"{r.variance_reduction:.1%}",
        ]
        for r in analysis.metrics
        if r.role != "guardrail"
    ]
    metrics = table(
        [
            "metric",
            "arm",
            plan.control,
            "arm value",
            "difference",
            "relative lift",
            "always-valid interval",
            "fixed-horizon interval",
            "p-value",
            f"adjusted p ({plan.correction})",
            "CUPED variance reduction",
        ],
        metric_rows,
    )
    guard_rows = [
        [
            r.label,
            r.arm,
            number(r.control_value),
            number(r.value),
            _pct(r.lift.relative),
            f"[{_pct(r.lift.sequence_relative.lower)}, {_pct(r.lift.sequence_relative.upper)}]",
            _limit(r.guardrail),
            (r.status or "").upper(),
        ]
        for r in analysis.metrics
        if r.role == "guardrail"
    ]
    guardrails = table(
        ["guardrail", "arm", plan.control, "arm value", "change", "interval", "limit", "status"],
        guard_rows,
    )
    segment_tables = ""
    for kind in ("touchpoint", "offer"):
        rows = [
            [
                s.segment,
                s.arm,
                f"{s.units:,}",
                f"{s.decisions:,}",
                number(s.value),
                _pct(s.relative_lift),
                ""
                if s.relative_lower is None
                else f"[{_pct(s.relative_lower)}, {_pct(s.relative_upper)}]",
            ]
            for s in analysis.segments
            if s.kind == kind
        ]
        segment_tables += f"<h3>Per {kind}</h3>" + table(
            [kind, "arm", "customers", "decisions", plan.primary_metric, "lift", "interval"], rows
        )
    figures = [
        _timeline_figure(analysis),
        _segment_figure(analysis, "touchpoint"),
        _segment_figure(analysis, "offer"),
    ]
    if analysis.screening:
        figures.append(_screening_figure(analysis))
        screening = _screening_table(analysis)
    else:
        screening = "<p>No screening estimate was given (<code>--screening FILE</code>).</p>"
    charts = embed_charts(figures)
    title = f"Experiment {plan.name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>As of {analysis.as_of:%Y-%m-%d %H:%M} UTC, since {plan.start:%Y-%m-%d %H:%M} UTC.
Control: <b>{html.escape(plan.control)}</b>. Primary metric: <b>{html.escape(plan.primary_metric)}</b>.</p>
<h2>Is the split healthy?</h2>{srm_block}
<h2>Verdict</h2>{verdicts}
<h2>Arms</h2>{arms}
<h2>Results</h2>{metrics}
{charts[0]}
<h2>Guardrails</h2>{guardrails}
<h2>Where it works</h2>{segment_tables}{charts[1]}{charts[2]}
<h2>Screening estimate (before rollout)</h2>{screening}{"".join(charts[3:])}
</body></html>
"""


def write_report(analysis: ExperimentAnalysis, out_dir: str | Path) -> dict[str, Path]:
    """Write ``<name>.html``, ``<name>.json`` and ``<name>.csv`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = analysis.plan.name
    paths = {
        "html": out / f"{stem}.html",
        "json": out / f"{stem}.json",
        "csv": out / f"{stem}.csv",
    }
    paths["html"].write_text(render_html(analysis), encoding="utf-8")
    paths["json"].write_text(json.dumps(analysis.to_dict(), indent=2), encoding="utf-8")
    write_csv(analysis.csv_rows(), paths["csv"])
    return paths


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """``rows`` as CSV, the columns in order of first appearance (a missing value is empty)."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def log_to_mlflow(
    analysis: ExperimentAnalysis, settings: Settings, artifacts: dict[str, Path] | None = None
) -> str:
    """Log the analysis as an MLflow run; returns its id.

    The run is in the MLflow experiment ``<settings.mlflow_experiment>-experiments`` of the
    project's tracking server. Params: the experiment and, per arm, the model versions seen
    in its decisions (``arm.B.models = offer-ranker:7``); metrics: per treatment arm and
    metric, the lift and both intervals (``B.acceptance_rate.relative_lift``, ...).
    """
    import mlflow

    from training import tracking

    tracking_settings = settings.model_copy(
        update={"mlflow_experiment": settings.mlflow_experiment + MLFLOW_EXPERIMENT_SUFFIX}
    )
    experiment_id = tracking.setup(tracking_settings)
    plan = analysis.plan
    metrics: dict[str, float] = {
        "srm_p_value": analysis.srm.p_value,
    }
    for r in analysis.metrics:
        key = f"{r.arm}.{r.metric}"
        metrics |= {
            f"{key}.value": r.value,
            f"{key}.control_value": r.control_value,
            f"{key}.absolute_lift": r.lift.absolute,
            f"{key}.relative_lift": r.lift.relative,
            f"{key}.relative_lower": r.lift.sequence_relative.lower,
            f"{key}.relative_upper": r.lift.sequence_relative.upper,
            f"{key}.fixed_relative_lower": r.lift.fixed_relative.lower,
            f"{key}.fixed_relative_upper": r.lift.fixed_relative.upper,
            f"{key}.p_value": r.lift.p_value,
        }
    params = {
        "experiment": plan.experiment,
        "control": plan.control,
        "primary_metric": plan.primary_metric,
        "start": plan.start.isoformat(),
        "as_of": analysis.as_of.isoformat(),
        "cuped": plan.cuped,
        "correction": plan.correction,
    }
    for arm in analysis.arms:
        params[f"arm.{arm.arm}.models"] = ", ".join(arm.models) or "none"
        params[f"arm.{arm.arm}.units"] = arm.units
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"readout {plan.name}") as run:
        mlflow.log_params(params)
        mlflow.set_tags({"recsys.experiment": plan.experiment, "recsys.kind": "readout"})
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        for path in (artifacts or {}).values():
            mlflow.log_artifact(str(path), artifact_path="report")
    return run.info.run_id
