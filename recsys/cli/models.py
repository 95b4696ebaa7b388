"""``recsys models ...``: list registered model versions and promote one to an alias."""

from __future__ import annotations

import typer

from recsys.errors import RecsysError
from recsys.settings import load_settings

app = typer.Typer(no_args_is_help=True)


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=1)


@app.command("list", epilog="Example: MLFLOW_TRACKING_URI=http://mlflow:5000 recsys models list")
def list_models(
    tracking_uri: str = typer.Option(
        None,
        help="MLflow tracking URI (default: RECSYS_MLFLOW_TRACKING_URI, else MLFLOW_TRACKING_URI, "
        "else sqlite:///mlflow.db in the project root).",
    ),
) -> None:
    """Every version of the registered model, newest first, with aliases and headline metrics."""
    from recsys.cli.stores import check_tracking_store
    from training.tracking import list_versions

    settings = load_settings(mlflow_tracking_uri=tracking_uri)
    check_tracking_store(settings)
    try:
        versions = list_versions(settings)
    except RecsysError as exc:
        raise _fail(exc) from None
    if not versions:
        typer.echo(f"model {settings.model_name!r} has no registered version yet")
        return
    typer.echo(
        f"{'version':>7}  {'aliases':<20} {'created (UTC)':<19}  {'auc':>7}  {'snips':>8}  run"
    )
    for v in versions:
        auc = f"{v.auc:.4f}" if v.auc is not None else "-"
        snips = f"{v.snips_value:.5f}" if v.snips_value is not None else "-"
        typer.echo(
            f"{v.version:>7}  {','.join(v.aliases) or '-':<20} "
            f"{v.created_at:%Y-%m-%d %H:%M:%S}  {auc:>7}  {snips:>8}  {v.run_id}"
        )


@app.command(epilog="Example: recsys models promote 3 --alias champion")
def promote(
    version: str = typer.Argument(None, help="Model version to promote."),
    alias: str = typer.Option("champion", help="champion or challenger."),
    if_no_champion: bool = typer.Option(
        False,
        "--if-no-champion",
        help="Promote the newest version to champion only if there is no champion yet "
        "(VERSION and --alias are then ignored).",
    ),
    tracking_uri: str = typer.Option(
        None,
        help="MLflow tracking URI (default: RECSYS_MLFLOW_TRACKING_URI, else MLFLOW_TRACKING_URI, "
        "else sqlite:///mlflow.db in the project root).",
    ),
) -> None:
    """Point an alias (champion or challenger) at a model version; serving loads the champion."""
    from recsys.cli.stores import check_tracking_store
    from training.tracking import ensure_champion
    from training.tracking import promote as set_alias

    settings = load_settings(mlflow_tracking_uri=tracking_uri)
    check_tracking_store(settings)
    try:
        if if_no_champion:
            champion = ensure_champion(settings)
            if champion is None:
                raise _fail(RecsysError(f"model {settings.model_name!r} has no version to promote"))
            typer.echo(f"{settings.model_name} champion: version {champion}")
            return
        if version is None:
            raise _fail(RecsysError("`VERSION` is required unless --if-no-champion is given"))
        set_alias(settings, version, alias)
    except RecsysError as exc:
        raise _fail(exc) from None
    typer.echo(f"{settings.model_name} version {version} is now {alias}")
