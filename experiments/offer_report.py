"""The offer performance report as files: one self-contained HTML page (plotly, its JavaScript
inside, no CDN) and one CSV, from :func:`experiments.offer_performance.offer_performance`.

The page, in the order a marketer reads it: the window and what counts, the totals, then per
offer (rates with their intervals, revenue), per touchpoint, per channel, per journey stage,
and the daily trend. The CSV holds every segment of every breakdown, one row each.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from experiments.offer_performance import RATES, Dimension, OfferPerformance, Segment
from experiments.report import STYLE, embed_charts, number, table, write_csv

#: The rates drawn per breakdown (the others are in the tables and the CSV).
_CHART_RATES = ("click_rate", "accept_rate", "conversion_rate")
_TITLES: dict[Dimension, str] = {
    "offer": "offer",
    "touchpoint": "touchpoint",
    "channel": "channel",
    "stage": "journey stage",
}


def _label(rate: str) -> str:
    return rate.replace("_", " ")


def _rate(segment: Segment, rate: str) -> str:
    r = segment.rate(rate)
    return "n/a" if r is None else f"{r.value:.2%} [{r.lower:.2%}, {r.upper:.2%}]"


def _money(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:,.2f}"


def _rates_figure(report: OfferPerformance, dimension: Dimension) -> go.Figure:
    """Grouped bars of the rates per segment, each with its Wilson interval."""
    segments = report.of(dimension)
    x = [s.segment if not s.name else f"{s.name} ({s.segment})" for s in segments]
    fig = go.Figure()
    for rate in _CHART_RATES:
        rates = [s.rate(rate) for s in segments]
        fig.add_trace(
            go.Bar(
                x=x,
                y=[r.value if r else None for r in rates],
                error_y={
                    "type": "data",
                    "array": [r.upper - r.value if r else 0 for r in rates],
                    "arrayminus": [r.value - r.lower if r else 0 for r in rates],
                },
                name=_label(rate),
            )
        )
    fig.update_layout(
        barmode="group",
        title=f"Rates per impression, per {_TITLES[dimension]} "
        f"({report.confidence:.0%} Wilson intervals)",
        yaxis_tickformat=".0%",
        height=420,
    )
    return fig


def _revenue_figure(report: OfferPerformance) -> go.Figure:
    segments = sorted(report.of("offer"), key=lambda s: -s.revenue)
    fig = go.Figure(
        go.Bar(
            x=[s.name or s.segment for s in segments],
            y=[s.revenue for s in segments],
            customdata=[s.revenue_per_impression for s in segments],
            hovertemplate="%{x}: %{y:,.2f} (%{customdata:,.3f} per impression)<extra></extra>",
            name="revenue",
        )
    )
    fig.update_layout(title="Revenue per offer", yaxis_title="revenue", height=380)
    return fig


def _daily_figure(report: OfferPerformance) -> go.Figure:
    days = report.of("day")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(
        go.Bar(x=[d.segment for d in days], y=[d.impressions for d in days], name="impressions"),
        secondary_y=False,
    )
    for rate in ("click_rate", "accept_rate"):
        values = [d.rate(rate) for d in days]
        fig.add_trace(
            go.Scatter(
                x=[d.segment for d in days],
                y=[r.value if r else None for r in values],
                mode="lines+markers",
                name=_label(rate),
            ),
            secondary_y=True,
        )
    fig.update_layout(title="Per day (UTC)", height=380)
    fig.update_yaxes(title_text="impressions", secondary_y=False)
    fig.update_yaxes(title_text="rate", tickformat=".0%", secondary_y=True)
    return fig


def _segment_table(report: OfferPerformance, dimension: Dimension) -> str:
    rows = [
        [
            s.segment,
            *([s.name] if dimension == "offer" else []),
            f"{s.impressions:,}",
            f"{s.reported_impressions:,}",
            f"{s.clicks:,}",
            _rate(s, "click_rate"),
            f"{s.accepts:,}",
            _rate(s, "accept_rate"),
            f"{s.conversions:,}",
            _rate(s, "conversion_rate"),
            f"{s.dismissals:,}",
            _money(s.revenue),
            number(s.revenue_per_impression),
        ]
        for s in report.of(dimension)
    ]
    header = [
        _TITLES.get(dimension, ""),
        *(["name"] if dimension == "offer" else []),
        "impressions",
        "reported seen",
        "clicks",
        "click rate [interval]",
        "accepts",
        "accept rate [interval]",
        "conversions",
        "conversion rate [interval]",
        "dismissals",
        "revenue",
        "revenue per impression",
    ]
    return table(header, rows)


def render_html(report: OfferPerformance) -> str:
    """The report as one HTML document with plotly's JavaScript inside (no network needed)."""
    since = (
        "the first logged decision" if report.since is None else f"{report.since:%Y-%m-%d %H:%M}"
    )
    figures = [
        _rates_figure(report, "offer"),
        _revenue_figure(report),
        _rates_figure(report, "touchpoint"),
        _rates_figure(report, "channel"),
        _rates_figure(report, "stage"),
        _daily_figure(report),
    ]
    charts = embed_charts(figures)
    sections = {
        "offer": charts[0] + charts[1],
        "touchpoint": charts[2],
        "channel": charts[3],
        "stage": charts[4],
    }
    body = "".join(
        f'<h2 id="per-{dimension}">Per {_TITLES[dimension]}</h2>'
        f"{_segment_table(report, dimension)}{sections[dimension]}"
        for dimension in _TITLES
    )
    rates = ", ".join(_label(r) for r in RATES)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Offer performance</title>
<style>{STYLE}</style></head><body>
<h1>Offer performance</h1>
<p>Decisions from {html.escape(since)} UTC until {report.until:%Y-%m-%d %H:%M} UTC; responses
within {report.attribution_days:g} days of their decision and before the end of the window.</p>
<p>An <b>impression</b> is an offer served in a decision (the event log's record of a contact);
<b>reported seen</b> counts the impressions a page also reported with an impression event.
A click, accept (accept or convert), conversion or dismissal counts each impression once.
The {html.escape(rates)} are per impression, with {report.confidence:.0%} Wilson intervals:
a wide interval means too few impressions to tell. The <b>journey stage</b> is the stage the
catalogue gives the touchpoint where the offer was shown; the channel is the one logged with
the decision.</p>
<h2 id="total">In total</h2>{_segment_table(report, "all")}
{body}
<h2 id="per-day">Per day</h2>{charts[5]}
</body></html>
"""


def write_offer_report(
    report: OfferPerformance, out_dir: str | Path, stem: str = "offers"
) -> dict[str, Path]:
    """Write ``<stem>.html`` and ``<stem>.csv`` into ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"html": out / f"{stem}.html", "csv": out / f"{stem}.csv"}
    paths["html"].write_text(render_html(report), encoding="utf-8")
    write_csv(report.csv_rows(), paths["csv"])
    return paths
