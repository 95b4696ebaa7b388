"""The ``recsys`` command line. Stage packages are imported lazily, inside commands."""

from __future__ import annotations

import logging
import os

import typer

from recsys.cli import (
    data,
    evaluate_logs,
    experiments,
    features,
    keys,
    models,
    report,
    score,
    serve,
    train,
)
from recsys.cli.errors import OneLineErrors

# A model download is one log line; MLflow's per-file progress bar would flood service logs.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

app = typer.Typer(
    help="recsys: next-best-offer engine for every customer touchpoint.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=OneLineErrors,
    epilog="Example: recsys data generate && recsys data load data/demo && recsys train. "
    "Add --debug for tracebacks.",
)
app.add_typer(data.app, name="data", help="Generate, validate, load and summarise data.")
app.add_typer(features.app, name="features", help="Build, materialise and inspect features.")
app.add_typer(models.app, name="models", help="List and promote registered models.")
app.add_typer(
    experiments.app,
    name="experiments",
    help="Define, start, stop, screen, analyse, report and promote experiments.",
)
app.add_typer(keys.app, name="keys", help="Make, hash and list API keys.")
app.add_typer(report.app, name="report", help="Reports for marketers: how offers perform.")
train.register(app)
evaluate_logs.register(app)
serve.register(app)
score.register(app)


@app.callback()
def _configure(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    debug: bool = typer.Option(
        False, "--debug", help="Show the full traceback of an error (default: one line)."
    ),
):
    ctx.meta["recsys.debug"] = debug
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    app()
