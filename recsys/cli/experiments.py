"""``recsys experiments ...``: define, run and roll out experiments.

Experiments live in the event log's database (``event_log_url``), so a change made here
reaches every running service worker at its next poll (``serving.experiments_poll_seconds``).
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from recsys.errors import RecsysError
from recsys.settings import load_settings

if TYPE_CHECKING:
    from experiments.store import ExperimentStore

app = typer.Typer(no_args_is_help=True)


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=1)


def _who() -> str:
    return f"cli:{getpass.getuser()}"


def _store(event_log_url: str | None) -> ExperimentStore:
    from experiments.store import open_experiment_store

    return open_experiment_store(load_settings(event_log_url=event_log_url).event_log_url)


URL = typer.Option(None, "--event-log-url", help="Database of the store (default: settings).")


@app.command()
def create(
    path: Path = typer.Argument(..., help="Experiment YAML file (docs/experiments.md)."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite a draft of that name."),
    event_log_url: str = URL,
) -> None:
    """Validate a YAML definition against the catalogue and store it as a draft."""
    from experiments.definition import load_experiment
    from recsys.catalog import load_catalog

    settings = load_settings(event_log_url=event_log_url)
    try:
        experiment = load_experiment(path)
        catalog = load_catalog(settings.serving.catalog_source or settings.warehouse_path)
        experiment.check_catalog(set(catalog.offers), set(catalog.touchpoints))
        store = _store(event_log_url)
        try:
            stored = store.create(experiment, _who(), replace=replace)
        finally:
            store.close()
    except RecsysError as exc:
        raise _fail(exc) from None
    typer.echo(f"experiment {stored.name}: {stored.status} (start it with "
               f"`recsys experiments start {stored.name}`)")  # fmt: skip


@app.command("list")
def list_experiments(event_log_url: str = URL) -> None:
    """Every experiment with its status, layer and arms."""
    store = _store(event_log_url)
    try:
        stored = store.experiments()
    finally:
        store.close()
    if not stored:
        typer.echo("no experiments yet (recsys experiments create FILE.yaml)")
        return
    typer.echo(f"{'name':<28} {'status':<9} {'layer':<12} {'buckets':<11} arms")
    for s in stored:
        buckets = f"{s.buckets[0]}-{s.buckets[1]}" if s.buckets else "-"
        arms = ", ".join(
            f"{a.name} ({a.kind}{f' {a.share:g}' if a.served else ''})" for a in s.experiment.arms
        )
        typer.echo(f"{s.name:<28} {s.status:<9} {s.experiment.layer:<12} {buckets:<11} {arms}")


@app.command()
def show(name: str = typer.Argument(...), event_log_url: str = URL) -> None:
    """An experiment's definition, status and history, as JSON."""
    store = _store(event_log_url)
    try:
        stored = store.get(name)
    except RecsysError as exc:
        raise _fail(exc) from None
    finally:
        store.close()
    typer.echo(json.dumps(stored.to_dict(), indent=2))


def _transition(name: str, action: str, event_log_url: str | None) -> None:
    store = _store(event_log_url)
    try:
        stored = store.transition(name, action, _who())
    except RecsysError as exc:
        raise _fail(exc) from None
    finally:
        store.close()
    where = f" (layer buckets {stored.buckets[0]}-{stored.buckets[1]})" if stored.buckets else ""
    typer.echo(f"experiment {name}: {stored.status}{where}")


@app.command()
def start(name: str = typer.Argument(...), event_log_url: str = URL) -> None:
    """Start serving a draft: running services apply it at their next poll."""
    _transition(name, "start", event_log_url)


@app.command()
def stop(name: str = typer.Argument(...), event_log_url: str = URL) -> None:
    """Stop a running experiment: its traffic goes back to the default."""
    _transition(name, "stop", event_log_url)


@app.command()
def archive(name: str = typer.Argument(...), event_log_url: str = URL) -> None:
    """Archive a draft or stopped experiment (kept, never started again)."""
    _transition(name, "archive", event_log_url)


@app.command()
def promote(
    name: str = typer.Argument(...),
    arm: str = typer.Argument(..., help="The winning arm."),
    event_log_url: str = URL,
    tracking_uri: str = typer.Option(None, help="MLflow tracking URI (default: settings)."),
) -> None:
    """Roll out ARM: champion alias -> its model version, its levers -> the default levers.

    Recorded with the experiment (who, when, what), which stops if it was running.
    """
    from experiments.rollout import promote_arm

    settings = load_settings(event_log_url=event_log_url, mlflow_tracking_uri=tracking_uri)
    store = _store(event_log_url)
    try:
        done = promote_arm(settings, store, name, arm, _who())
    except RecsysError as exc:
        raise _fail(exc) from None
    finally:
        store.close()
    model = (f"champion is now version {done.model_version}" if done.champion_changed
             else f"champion stays version {done.model_version}")  # fmt: skip
    typer.echo(f"experiment {name}: arm {arm} promoted; {model}; default levers "
               f"{json.dumps(done.levers)}")  # fmt: skip
