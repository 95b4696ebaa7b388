"""``recsys report ...``: reports for marketers, read from the event log (docs/reports.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from recsys.settings import load_settings

app = typer.Typer(no_args_is_help=True)


@app.command("offers")
def offers_command(
    since: str | None = typer.Option(
        None, "--since", help="First decision time read, ISO 8601, UTC (default: the first)."
    ),
    until: str | None = typer.Option(
        None, "--until", help="End of the window, ISO 8601, UTC (default: now)."
    ),
    out: Path = typer.Option(
        Path("reports"), "--out", help="Folder of offers.html and offers.csv."
    ),
    attribution_days: float = typer.Option(
        7.0, "--attribution-days", help="How long after a decision a response counts."
    ),
    event_log_url: str | None = typer.Option(
        None, "--event-log-url", help="Event log URL (default: settings)."
    ),
) -> None:
    """Impressions, clicks, accepts, conversions, their rates with intervals, and revenue per
    offer, touchpoint, channel, journey stage and day: offers.html (self-contained, charts
    included) and offers.csv in --out.

    Example: recsys report offers --since 2026-11-01 --until 2026-12-01 --out data/reports
    """
    from experiments.moments import open_event_log
    from experiments.offer_performance import offer_performance, parse_time
    from experiments.offer_report import write_offer_report
    from recsys.catalog import load_catalog
    from recsys.cli.stores import check_event_log, writable_out

    window = (parse_time(since, "--since"), parse_time(until, "--until"))
    writable_out(out / "offers.html", "--out")
    settings = load_settings(event_log_url=event_log_url)
    check_event_log(settings)
    catalog = load_catalog(settings.serving.catalog_source or settings.warehouse_path)
    with open_event_log(settings.event_log_url) as source:
        result = offer_performance(
            source, catalog, since=window[0], until=window[1], attribution_days=attribution_days
        )
    paths = write_offer_report(result, out)
    total = result.total
    accept = total.rate("accept_rate")
    typer.echo(
        f"{total.impressions:,} impressions, {total.clicks:,} clicks, {total.accepts:,} accepts"
        + ("" if accept is None else f" ({accept.value:.2%})")
        + f", revenue {total.revenue:,.2f}"
    )
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")
