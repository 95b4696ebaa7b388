"""``--as-of`` of the commands that compute features or decide at a point in time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import typer

AS_OF_HELP = (
    "Point in time, ISO 8601 (naive = UTC), or 'latest' (just after the warehouse's last "
    "event). Default: now, or 'latest' when the warehouse's last event is more than a day old."
)


def resolve_as_of(value: str | None, con) -> datetime:
    """The time ``--as-of`` names (naive UTC); without it, now or the end of an old history.

    When the default follows the data, one line says so.
    """
    from recsys.warehouse import default_as_of, latest_event_time

    if value is None:
        as_of = default_as_of(con, datetime.now(UTC).replace(tzinfo=None))
        if as_of.note:
            typer.echo(as_of.note, err=True)
        return as_of.ts
    if value == "latest":
        latest = latest_event_time(con)
        if latest is None:
            raise typer.BadParameter(
                "must name a time when the warehouse holds no event, got 'latest'",
                param_hint="--as-of",
            )
        return latest + timedelta(seconds=1)
    return parse_time(value, "--as-of")


def parse_time(value: str, option: str) -> datetime:
    """An ISO 8601 time as naive UTC; a bad one is a usage error naming ``option``."""
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"must be an ISO 8601 timestamp, got {value!r}", param_hint=option
        ) from None
    return ts.astimezone(UTC).replace(tzinfo=None) if ts.tzinfo else ts
