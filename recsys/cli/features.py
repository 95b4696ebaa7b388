"""``recsys features ...``: build, materialise, look up and describe features."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from recsys.cli.as_of import AS_OF_HELP, parse_time, resolve_as_of
from recsys.settings import load_settings

app = typer.Typer(no_args_is_help=True)

DB_HELP = "Warehouse DuckDB file (default: settings warehouse_path)."
CONFIG_HELP = (
    "Features config YAML (horizons, windows, event vocabulary; docs/features.md); "
    "default: the setting features_config, else the built-in one."
)


def _open_warehouse(db: Path | None):
    from recsys import warehouse
    from recsys.cli.stores import existing_warehouse

    settings = load_settings()
    path = existing_warehouse(settings, db)
    return warehouse.connect(path, read_only=True, memory_limit=settings.duckdb_memory_limit)


def _use_config(path: Path | None):
    """Choose the features config before the features are defined (``--config``)."""
    from features.config import configure
    from recsys.errors import ConfigError

    try:
        return configure(path)
    except ConfigError as err:
        raise typer.BadParameter(str(err), param_hint="--config") from None


def _report_unused_event_types(con, config) -> None:
    from features.vocabulary import unused_event_types

    line = unused_event_types(con, config).format()
    if line:
        typer.echo(line)


def _write(frame, out: Path) -> None:
    from recsys.cli.stores import writable_out

    if out.suffix not in (".csv", ".parquet"):
        raise typer.BadParameter(f"`--out` must end in .parquet or .csv, got {out.name}")
    writable_out(out)
    if out.suffix == ".csv":
        frame.to_csv(out, index=False)
    elif out.suffix == ".parquet":
        frame.to_parquet(out, index=False)
    else:
        raise typer.BadParameter(f"`--out` must end in .parquet or .csv, got {out.name}")


@app.command(epilog="Example: recsys features build --as-of 2026-03-01 --out features.parquet")
def build(
    as_of: str | None = typer.Option(None, "--as-of", help=AS_OF_HELP),
    db: Path | None = typer.Option(None, "--db", help=DB_HELP),
    out: Path = typer.Option(
        Path("data/features/customer_features.parquet"),
        "--out",
        help="Output file (.parquet or .csv).",
    ),
    engine: str = typer.Option("duckdb", help="duckdb or spark."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Compute every customer's features as of a point in time and write them to a file."""
    from recsys.cli.stores import writable_out

    writable_out(out)  # before the work, not after it
    chosen = _use_config(config)
    from features.pipeline import customer_features

    con = _open_warehouse(db)
    _report_unused_event_types(con, chosen)
    ts = resolve_as_of(as_of, con)
    started = time.perf_counter()
    frame = customer_features(con, ts, engine=engine)
    _write(frame, out)
    typer.echo(
        f"{len(frame):,} customers x {frame.shape[1] - 1} features as of "
        f"{ts.isoformat()} -> {out} ({time.perf_counter() - started:.1f} s)"
    )


@app.command(
    "training-set",
    epilog="Example: recsys features training-set --start 2026-01-01 --out train.parquet",
)
def training_set(
    out: Path = typer.Option(
        Path("data/features/training_set.parquet"), "--out", help="Output file (.parquet or .csv)."
    ),
    db: Path | None = typer.Option(None, "--db", help=DB_HELP),
    start: str | None = typer.Option(None, help="First decision time (inclusive)."),
    end: str | None = typer.Option(None, help="Last decision time (exclusive)."),
    attribution_days: float = typer.Option(7.0, help="Attribution window in days."),
    engine: str = typer.Option("duckdb", help="duckdb or spark."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """One row per logged decision: label, revenue and every model input."""
    from recsys.cli.stores import writable_out

    writable_out(out)
    _use_config(config)
    from features.training_set import build_training_set, write_training_set

    con = _open_warehouse(db)
    started = time.perf_counter()
    first = parse_time(start, "--start") if start else None
    last = parse_time(end, "--end") if end else None
    if out.suffix == ".parquet":  # streamed to the file, never held in memory
        rows = write_training_set(
            con, out, start=first, end=last, attribution_days=attribution_days, engine=engine
        )
    else:
        frame = build_training_set(
            con, start=first, end=last, attribution_days=attribution_days, engine=engine
        )
        _write(frame, out)
        rows = len(frame)
    typer.echo(f"{rows:,} decision rows -> {out} ({time.perf_counter() - started:.1f} s)")


def _store(store: str | None):
    from features.online import open_online_store

    overrides = {"online_store": store} if store else {}
    return open_online_store(load_settings(**overrides))


@app.command(epilog="Example: recsys features materialize --store sqlite")
def materialize(
    store: str | None = typer.Option(None, help="sqlite or redis (default: settings)."),
    db: Path | None = typer.Option(None, "--db", help=DB_HELP),
    as_of: str | None = typer.Option(None, "--as-of", help=AS_OF_HELP),
    incremental: bool = typer.Option(False, help="Only customers changed since the last run."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
) -> None:
    """Write every customer's latest feature vector to the online store."""
    _use_config(config)
    from features.online import materialize as run_materialize
    from features.online import refresh
    from recsys.errors import RecsysError

    con = _open_warehouse(db)
    online = _store(store)
    started = time.perf_counter()
    try:
        ts = resolve_as_of(as_of, con)
        last = online.last_as_of() if incremental and as_of is None else None
        if last is not None and last > ts:
            # A refresh never goes back in time: a history that stopped after the last run
            # (ingestion stalled) refreshes nothing new rather than failing.
            ts = last
        count = (
            refresh(con, online, as_of=ts)
            if incremental
            else run_materialize(con, online, as_of=ts)
        )
    except RecsysError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(code=1) from err
    finally:
        online.close()
    typer.echo(
        f"{count:,} vectors written as of {ts.isoformat()} ({time.perf_counter() - started:.1f} s)"
    )


@app.command(epilog="Example: recsys features get C0000001")
def get(
    customer_id: str = typer.Argument(..., help="Customer id."),
    store: str | None = typer.Option(None, help="sqlite or redis (default: settings)."),
) -> None:
    """Print a customer's features from the online store as JSON.

    A customer the store does not hold prints the cold-start values and says so on stderr;
    a store that does not exist is an error (nothing is created).
    """
    from features.online import describe_row
    from recsys.cli.stores import check_online_store

    overrides = {"online_store": store} if store else {}
    check_online_store(load_settings(**overrides))
    online = _store(store)
    try:
        row = describe_row(online.read_block([customer_id]), 0)
    finally:
        online.close()
    if row["cold_start"]:
        typer.echo(
            f"customer {customer_id!r} is not in the online store: the cold-start values",
            err=True,
        )
    typer.echo(json.dumps(row, indent=2, sort_keys=False, default=str))


@app.command(epilog="Example: recsys features describe --json")
def describe(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    db: Path | None = typer.Option(None, "--db", help="Also list this warehouse's attributes."),
) -> None:
    """Each feature: name, kind, source and meaning."""
    from features.spec import feature_spec

    spec = feature_spec()
    rows: list[tuple[str, str, str, str, str]] = [
        (f.name, f.kind, f.group, f.source, f.description) for f in spec.features
    ]
    if db is not None:
        con = _open_warehouse(db)
        from features.definitions import ATTRIBUTE_PREFIX
        from recsys.contract import CUSTOMERS

        cols = con.execute(
            "SELECT column_name FROM information_schema.columns WHERE "
            "table_name = 'customers' ORDER BY ordinal_position"
        ).fetchall()
        for (col,) in cols:
            if col not in CUSTOMERS.column_names:
                rows.append(
                    (
                        f"{ATTRIBUTE_PREFIX}{col}",
                        "from data",
                        "customer",
                        "customers",
                        f"Customer attribute '{col}' (categorical if text).",
                    )
                )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "version": spec.version,
                    "features": [
                        dict(
                            zip(("name", "kind", "group", "source", "description"), r, strict=True)
                        )
                        for r in rows
                    ],
                },
                indent=2,
            )
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"feature spec {spec.version} ({len(rows)} features; ctx_<key> "
        "columns come from decisions.context)"
    )
    for header in ("name", "kind", "group", "source", "description"):
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)
