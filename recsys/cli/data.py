"""``recsys data ...``: generate demo data, import the Open Bandit Dataset, load, summarise."""

from __future__ import annotations

from pathlib import Path

import typer

from recsys.settings import load_settings

app = typer.Typer(no_args_is_help=True)


@app.command(epilog="Example: recsys data generate --customers 10000 --days 90 --out data/demo")
def generate(
    customers: int = typer.Option(10_000, min=1, help="Number of customers."),
    days: int = typer.Option(90, min=1, help="Days of history to simulate."),
    seed: int = typer.Option(7, help="Random seed; same seed, same files."),
    out: Path = typer.Option(Path("data/demo"), help="Output directory."),
    file_format: str = typer.Option("parquet", "--format", help="parquet or csv (event tables)."),
    start: str | None = typer.Option(
        None,
        help="First simulated day, ISO date (default 2026-01-01, so the same seed gives the "
        "same files); `make run` starts DAYS before today so the demo is current.",
    ),
) -> None:
    """Write the seven contract tables of a believable omnichannel business, plus ground truth."""
    from datetime import datetime

    from recsys.datagen import generate_dataset

    start_at = None
    if start is not None:
        try:
            start_at = datetime.fromisoformat(start)
        except ValueError as err:
            raise typer.BadParameter(
                f"expected an ISO date like 2026-01-01, got {start!r}"
            ) from err
    summary = generate_dataset(
        customers=customers,
        days=days,
        seed=seed,
        out=out,
        file_format=file_format,
        progress=True,
        start=start_at,
    )
    typer.echo(summary.format())


@app.command(
    "import-obd", epilog="Example: recsys data import-obd data/obd/random/men data/obd_men"
)
def import_obd(
    path: Path = typer.Argument(
        ...,
        help="Open Bandit Dataset root (random/ and bts/, each with all/ men/ women/), a "
        "policy folder (random/ or bts/) or one campaign folder (e.g. random/men).",
    ),
    out_dir: Path = typer.Argument(..., help="Where to write the contract tables."),
    campaign: str | None = typer.Option(
        None,
        help="all, men or women: the campaign to import (item ids are per campaign, so one "
        "at a time); may be omitted when PATH holds only one.",
    ),
) -> None:
    """Convert one campaign of the Open Bandit Dataset (ZOZOTOWN, CC BY 4.0) to the contract.

    Offers are named <campaign>-<item_id> (e.g. men-12) at touchpoint zozotown_<campaign>, so
    campaigns loaded one after another into one warehouse keep their own catalogues.
    """
    from recsys.errors import ContractError
    from recsys.obd import import_obd as run_import

    try:
        summary = run_import(path, out_dir, campaign)
    except ContractError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(code=1) from err
    typer.echo(summary.format())


def _warehouse_path(db: Path | None) -> Path:
    return db.absolute() if db is not None else load_settings().warehouse_path


@app.command(epilog="Example: recsys data load data/demo")
def load(
    directory: Path = typer.Argument(..., help="Folder with contract files (CSV/Parquet/YAML)."),
    db: Path | None = typer.Option(
        None, help="DuckDB warehouse file [default: settings warehouse_path]."
    ),
) -> None:
    """Validate every contract table in DIRECTORY and load it into the warehouse, atomically.

    Loading the same files again adds nothing; a newer batch adds only its new rows. Every
    problem is reported at once, and nothing of a refused load is kept; eligibility rules
    must name a feature customers have.
    """
    from features.config import active_config
    from features.rule_features import rule_feature_check
    from features.vocabulary import unused_event_types
    from recsys import warehouse
    from recsys.errors import ContractError, RecsysError
    from recsys.loading import load_directory

    # a running service's workers read the warehouse for a moment after it changes: wait
    con = warehouse.connect_when_free(
        _warehouse_path(db), memory_limit=load_settings().duckdb_memory_limit
    )
    unused = None
    try:
        summary = load_directory(directory, con, checks=[rule_feature_check])
        try:
            unused = unused_event_types(con, active_config())
        except RecsysError as err:  # the data is loaded; only the vocabulary check is off
            typer.echo(f"event types not checked: {err}", err=True)
    except ContractError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(code=1) from err
    finally:
        con.close()
    typer.echo(summary.format())
    if unused:
        typer.echo(unused.format())


@app.command(epilog="Example: recsys data validate data/new_batch")
def validate(
    directory: Path = typer.Argument(..., help="Folder with contract files (CSV/Parquet/YAML)."),
    db: Path | None = typer.Option(
        None, help="Validate against this warehouse [default: settings warehouse_path]."
    ),
) -> None:
    """Validate the contract files in DIRECTORY against the warehouse, keeping nothing.

    Runs the whole load (references to what the warehouse holds, eligibility rules against
    the features) and rolls it back; reports every problem at once and what a load would
    add. Without a warehouse the files are checked on their own.
    """
    from features.rule_features import rule_feature_check
    from recsys import warehouse
    from recsys.errors import ContractError
    from recsys.loading import load_directory

    path = _warehouse_path(db)
    if path.exists():
        con = warehouse.connect(path, memory_limit=load_settings().duckdb_memory_limit)
    else:
        typer.echo(f"no warehouse at {path}: checking the files on their own", err=True)
        con = warehouse.connect(":memory:")
    try:
        summary = load_directory(directory, con, dry_run=True, checks=[rule_feature_check])
    except ContractError as err:
        typer.echo(str(err), err=True)
        raise typer.Exit(code=1) from err
    finally:
        con.close()
    typer.echo(summary.format().replace("loaded in", "validated in"))
    typer.echo(f"valid: a load would add the rows counted as new (nothing written to {path})")


@app.command(epilog="Example: recsys data summary")
def summary(
    db: Path | None = typer.Option(
        None, help="DuckDB warehouse file [default: data/warehouse.duckdb]."
    ),
) -> None:
    """Print row counts, date ranges and basic health of the warehouse."""
    from recsys import warehouse
    from recsys.summary import summarize

    path = _warehouse_path(db)
    if not path.exists():
        typer.echo(
            f"no warehouse at {path}; run `recsys data load DIR --db {path}` first", err=True
        )
        raise typer.Exit(code=1)
    con = warehouse.connect(path, read_only=True, memory_limit=load_settings().duckdb_memory_limit)
    try:
        typer.echo(summarize(con).format())
    finally:
        con.close()
