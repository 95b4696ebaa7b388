"""``recsys data ...``: generate demo data, import the Open Bandit Dataset, load, summarise."""

from __future__ import annotations

from pathlib import Path

import typer

from recsys.settings import load_settings

app = typer.Typer(no_args_is_help=True)


@app.command()
def generate(
    customers: int = typer.Option(10_000, min=1, help="Number of customers."),
    days: int = typer.Option(90, min=1, help="Days of history to simulate."),
    seed: int = typer.Option(7, help="Random seed; same seed, same files."),
    out: Path = typer.Option(Path("data/demo"), help="Output directory."),
    file_format: str = typer.Option("parquet", "--format", help="parquet or csv (event tables)."),
) -> None:
    """Write the seven contract tables of a believable omnichannel business, plus ground truth."""
    from recsys.datagen import generate_dataset

    summary = generate_dataset(
        customers=customers, days=days, seed=seed, out=out, file_format=file_format, progress=True
    )
    typer.echo(summary.format())


@app.command("import-obd")
def import_obd(
    path: Path = typer.Argument(..., help="Open Bandit Dataset folder (with random/ and bts/)."),
    out_dir: Path = typer.Argument(..., help="Where to write the contract tables."),
) -> None:
    """Convert the Open Bandit Dataset (ZOZOTOWN, CC BY 4.0) into the data contract."""
    from recsys.obd import import_obd as run_import

    summary = run_import(path, out_dir)
    typer.echo(summary.format())
