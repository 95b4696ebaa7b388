"""``recsys train``: build the training set, train, evaluate, log to MLflow."""

from __future__ import annotations

from pathlib import Path

import typer

from recsys.errors import RecsysError
from recsys.settings import load_settings


def train(
    config: Path = typer.Option(
        None, "--config", help="YAML config; defaults: training/default_config.yaml."
    ),
    db: Path = typer.Option(None, "--db", help="Warehouse DuckDB file (default: settings)."),
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: settings)."),
    promote_if_no_champion: bool = typer.Option(
        False,
        "--promote-if-no-champion",
        help="After registering, make the new version champion if there is none.",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Register the model even when the quality gate refuses it (and say so).",
    ),
) -> None:
    """Train LightGBM and the baselines on a time split, evaluate (offline and off-policy),
    log the run to MLflow and register the model if it passes the quality gate.

    Exits with code 1 when the gate refuses the model (nothing registered; see --force)."""
    from training.config import load_config
    from training.runner import run_training
    from training.tracking import ensure_champion

    settings = load_settings(warehouse_path=db, mlflow_tracking_uri=tracking_uri)
    try:
        cfg = load_config(config)
        outcome = run_training(cfg, settings, force=force)
        typer.echo(outcome.format())
        if not outcome.logged.gate.allows_registration:
            raise typer.Exit(code=1)
        if promote_if_no_champion and outcome.logged.model_version is not None:
            champion = ensure_champion(settings)
            typer.echo(f"{settings.model_name} champion: version {champion}")
    except RecsysError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None


def register(app) -> None:
    """Add the top-level ``train`` command to ``app``."""
    app.command("train", epilog="Example: recsys train --promote-if-no-champion")(train)
