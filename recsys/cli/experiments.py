"""``recsys experiments analyse | report``: read out an experiment from the event log.

The experiment's arms, start and metrics come from a YAML plan (``--plan``) and/or options;
see docs/experiments.md, "Reading an experiment".
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import typer

from recsys.errors import RecsysError
from recsys.settings import load_settings

app = typer.Typer(no_args_is_help=True)

# --- readout: analyse and report (the rest of the group is defined beside these) ---


def _plan_options(
    name: str,
    plan: Path | None,
    arm: list[str] | None,
    control: str | None,
    start: datetime | None,
    end: datetime | None,
    primary_metric: str | None,
) -> Any:
    from experiments.analysis import load_plan

    arms = None
    if arm:
        arms = []
        for item in arm:
            arm_name, _, share = item.partition("=")
            try:
                arms.append({"name": arm_name, "share": float(share or 1)})
            except ValueError:
                raise typer.BadParameter(
                    f"must be NAME or NAME=SHARE, got {item!r}", param_hint="--arm"
                ) from None
    return load_plan(
        plan,
        name=name,
        arms=arms,
        control=control,
        start=start,
        end=end,
        primary_metric=primary_metric,
    )


_PLAN = typer.Option(None, "--plan", help="YAML file of the experiment (arms, start, metrics).")
_ARM = typer.Option(None, "--arm", help="Arm and planned share, e.g. B=0.5 (repeatable).")
_CONTROL = typer.Option(None, "--control", help="The control arm (default: kind control).")
_START = typer.Option(None, "--start", help="Start of the experiment (UTC).")
_END = typer.Option(None, "--end", help="End of the experiment (UTC; default: now).")
_PRIMARY = typer.Option(None, "--primary-metric", help="e.g. acceptance_rate (default).")
_EVENT_LOG = typer.Option(None, "--event-log", help="Event log URL (default: settings).")
_AS_OF = typer.Option(None, "--as-of", help="Analyse the data up to this time (UTC).")


def _run(
    name: str,
    plan: Path | None,
    arm: list[str] | None,
    control: str | None,
    start: datetime | None,
    end: datetime | None,
    primary_metric: str | None,
    event_log: str | None,
    as_of: datetime | None,
    screening: Path | None = None,
) -> Any:
    from datetime import UTC

    from experiments.analysis import analyse, open_event_log

    settings = load_settings(event_log_url=event_log)
    try:
        readout_plan = _plan_options(name, plan, arm, control, start, end, primary_metric)
        screened = None
        if screening is not None:
            screened = {str(k): float(v) for k, v in json.loads(screening.read_text()).items()}
        when = None if as_of is None else as_of.replace(tzinfo=as_of.tzinfo or UTC)
        with open_event_log(settings.event_log_url) as source:
            return settings, analyse(source, readout_plan, as_of=when, screening=screened)
    except (RecsysError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None


@app.command("analyse")
def analyse_command(
    name: str = typer.Argument(..., help="The experiment's name."),
    plan: Path | None = _PLAN,
    arm: list[str] | None = _ARM,
    control: str | None = _CONTROL,
    start: datetime | None = _START,
    end: datetime | None = _END,
    primary_metric: str | None = _PRIMARY,
    event_log: str | None = _EVENT_LOG,
    as_of: datetime | None = _AS_OF,
) -> None:
    """Print the readout of experiment NAME as JSON (sample-ratio check first)."""
    _, result = _run(name, plan, arm, control, start, end, primary_metric, event_log, as_of)
    data = result.to_dict()
    ordered = {"srm": data.pop("srm"), "verdicts": data.pop("verdicts"), **data}
    typer.echo(json.dumps(ordered, indent=2))


@app.command("report")
def report_command(
    name: str = typer.Argument(..., help="The experiment's name."),
    plan: Path | None = _PLAN,
    arm: list[str] | None = _ARM,
    control: str | None = _CONTROL,
    start: datetime | None = _START,
    end: datetime | None = _END,
    primary_metric: str | None = _PRIMARY,
    event_log: str | None = _EVENT_LOG,
    as_of: datetime | None = _AS_OF,
    out: Path = typer.Option(Path("reports"), "--out", help="Folder of the report files."),
    screening: Path | None = typer.Option(
        None, "--screening", help="JSON {arm: what-if value} from the screening, shown beside."
    ),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the readout to MLflow."),
) -> None:
    """Write NAME.html (self-contained), NAME.json and NAME.csv; log the readout to MLflow."""
    from experiments.report import log_to_mlflow, write_report

    settings, result = _run(
        name, plan, arm, control, start, end, primary_metric, event_log, as_of, screening
    )
    paths = write_report(result, out)
    if result.srm.alarm:
        typer.echo("SAMPLE-RATIO MISMATCH: the split is not the planned one", err=True)
    for text in result.verdicts.values():
        typer.echo(text)
    if mlflow:
        run_id = log_to_mlflow(result, settings, paths)
        typer.echo(f"MLflow run {run_id}")
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")
