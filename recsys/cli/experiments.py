"""``recsys experiments ...``: define, run, read out and roll out experiments.

Experiments live in the event log's database (``event_log_url``), so a change made here
reaches every running service worker at its next poll (``serving.experiments_poll_seconds``).
The readout (``analyse``, ``report``) reads the experiment from the store, or from a YAML plan
(``--plan``) and options; see docs/experiments.md, "Reading an experiment". ``screen`` values
the arms on logged decisions before rollout ("What-if screening").
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from recsys.errors import RecsysError
from recsys.settings import load_settings

if TYPE_CHECKING:
    from experiments.definition import Experiment, ModelRef
    from experiments.screening import ExperimentScreening, ModelLoader
    from experiments.store import ExperimentStore
    from recsys.settings import Settings

app = typer.Typer(no_args_is_help=True)


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code=1)


def _utc(when: datetime | None) -> datetime | None:
    """A time from the command line: naive means UTC."""
    if when is None:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


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
    start: datetime = typer.Option(None, "--start", help="Replaces the file's start (UTC)."),
    end: datetime = typer.Option(None, "--end", help="Replaces the file's end (UTC)."),
    event_log_url: str = URL,
) -> None:
    """Validate a YAML definition against the catalogue and store it as a draft.

    Example: recsys experiments create examples/experiments/demo-live.yaml --start 2026-12-01
    """
    from experiments.definition import load_experiment
    from recsys.catalog import load_catalog

    settings = load_settings(event_log_url=event_log_url)
    try:
        experiment = load_experiment(path, start=_utc(start), end=_utc(end))
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
    """Every experiment with its status, layer and arms.

    Example: recsys experiments list
    """
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
    """An experiment's definition, status and history, as JSON.

    Example: recsys experiments show demo-live
    """
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
    """Start serving a draft: running services apply it at their next poll.

    Example: recsys experiments start demo-live
    """
    _transition(name, "start", event_log_url)


@app.command()
def stop(name: str = typer.Argument(...), event_log_url: str = URL) -> None:
    """Stop a running experiment: its traffic goes back to the default.

    Example: recsys experiments stop demo-live
    """
    _transition(name, "stop", event_log_url)


@app.command()
def archive(name: str = typer.Argument(...), event_log_url: str = URL) -> None:
    """Archive a draft or stopped experiment (kept, never started again).

    Example: recsys experiments archive demo-live
    """
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

    Example: recsys experiments promote demo-live greedy
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


# --- what-if screening before rollout ---


def _experiment(name: str, plan: Path | None, event_log_url: str | None) -> Experiment:
    """The experiment of ``plan`` (whose name must be NAME), else the stored one."""
    from experiments.definition import load_experiment

    if plan is None:
        store = _store(event_log_url)
        try:
            return store.get(name).experiment
        finally:
            store.close()
    experiment = load_experiment(plan)
    if experiment.name != name:
        raise typer.BadParameter(
            f"must define experiment {name!r}, got {experiment.name!r}", param_hint="--plan"
        )
    return experiment


def _registry_models(settings: Settings, folder: Path) -> ModelLoader:
    """Loads an arm's model from the registry as serving loads it (checked in a child
    process), with its matrix encoding from its ``feature_spec.json``."""
    from experiments.screening import ArmModel
    from features.matrix import Encoding
    from recsys.errors import SpecMismatchError
    from serving.model import load_model_dir
    from serving.model_sources import RegistrySource
    from training.warehouse_data import FeaturesEncoder

    registry = RegistrySource(
        settings.mlflow_tracking_uri, settings.model_name, settings.model_alias
    )

    def load(ref: ModelRef) -> ArmModel:
        version = registry.resolve(ref.alias) if ref.alias is not None else str(ref.version)
        path = registry.download(version, folder / f"v{version}")
        loaded = load_model_dir(path, settings.model_name, version)
        encoding = loaded.spec.get("encoding")
        if not isinstance(encoding, dict):
            raise SpecMismatchError(
                f"model {ref.key} (version {version}): feature_spec.json must have an "
                f"`encoding` object to be screened, got {type(encoding).__name__}"
            )
        return ArmModel(loaded.info, loaded.scorer, FeaturesEncoder(Encoding.from_dict(encoding)))

    return load


def _print_screening(result: ExperimentScreening) -> None:
    def num(value: float | None, fmt: str = ".4f") -> str:
        return "n/a" if value is None else format(value, fmt)

    def lift(value: float | None) -> str:
        return "n/a" if value is None else f"{value - 1:+.1%}"

    typer.echo(
        f"experiment {result.experiment}: {result.rounds:,} logged decisions "
        f"{result.start:%Y-%m-%d} .. {result.end:%Y-%m-%d}; logging policy "
        f"{result.logging_value:.4f} acceptance per decision; estimator {result.estimator}"
    )
    for arm, s in result.arms.items():
        typer.echo(
            f"  {arm}: {num(s.value)} [{num(s.lower)}, {num(s.upper)}]  lift over logging "
            f"{lift(s.lift)} [{lift(s.lift_lower)}, {lift(s.lift_upper)}]  revenue "
            f"{num(s.revenue, '.2f')} [{num(s.revenue_lower, '.2f')}, "
            f"{num(s.revenue_upper, '.2f')}]  matched {s.matched_rounds:,}  positives "
            f"{s.positives:,}  ESS {num(s.effective_sample_size, '.1f')}  max weight "
            f"{num(s.max_weight, '.1f')}  true value {num(s.true_value)}"
            f" (revenue {num(s.true_revenue, '.2f')})"
        )
        for warning in s.warnings:
            typer.echo(f"    WARNING thin support: {warning}")
    for arm, reason in result.not_screened.items():
        typer.echo(f"  {arm}: not screened ({reason})")


@app.command("screen")
def screen_command(
    name: str = typer.Argument(..., help="The experiment's name."),
    plan: Path | None = typer.Option(
        None, "--plan", help="YAML of an experiment not stored yet (default: the stored NAME)."
    ),
    since: datetime | None = typer.Option(
        None, "--since", help="Screen the logged decisions from then on (UTC)."
    ),
    estimator: str = typer.Option(
        "snips", "--estimator", help="ips, snips, dr, ips_clipped or switch_dr."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="JSON for `report --screening` (default: reports/NAME.screening.json)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Training YAML (bootstrap, support limits; default: built-in)."
    ),
    db: Path | None = typer.Option(None, "--db", help="Warehouse DuckDB file (default: settings)."),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI (default: settings)."),
    event_log_url: str | None = URL,
) -> None:
    """Value each arm of NAME on the warehouse's logged decisions before any customer sees it.

    Every arm is decided again as the service would decide it (model, policy, levers) on the
    logged decisions of the experiment's touchpoints, and valued off-policy with the logged
    propensities; prints value, lift over logging, diagnostics and support warnings per arm and
    writes the JSON that `recsys experiments report --screening` shows beside the online result.

    Example: recsys experiments screen demo-live --since 2026-11-01 --out reports/demo.json
    """
    import tempfile

    from experiments.recipes import Service
    from experiments.screening import screen_experiment
    from recsys import warehouse
    from recsys.catalog import load_catalog
    from training.config import load_config
    from training.warehouse_data import build_inputs

    settings = load_settings(
        warehouse_path=db, mlflow_tracking_uri=tracking_uri, event_log_url=event_log_url
    )
    try:
        experiment = _experiment(name, plan, event_log_url)
        training = load_config(config)
        path = settings.warehouse_path
        service = Service(
            settings.serving.slate_policy(),
            load_catalog(settings.serving.catalog_source or path),
            settings.serving.policy_parameters(),
            settings.model_alias,
        )
        con = warehouse.connect(path, read_only=True, memory_limit=settings.duckdb_memory_limit)
        try:
            inputs = build_inputs(con, training, path)
            with tempfile.TemporaryDirectory(prefix="recsys-screen-") as folder:
                result = screen_experiment(
                    experiment,
                    inputs,
                    training,
                    service,
                    _registry_models(settings, Path(folder)),
                    estimator=estimator,
                    since=since,
                )
        finally:
            con.close()
    except RecsysError as exc:
        raise _fail(exc) from None
    _print_screening(result)
    target = out if out is not None else Path("reports") / f"{name}.screening.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    typer.echo(f"json: {target}")


# --- readout: analyse and report ---


def _plan_options(
    name: str,
    plan: Path | None,
    arm: list[str] | None,
    control: str | None,
    start: datetime | None,
    end: datetime | None,
    primary_metric: str | None,
    event_log: str | None,
) -> Any:
    from experiments.plan import load_plan, stored_plan

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
    options: dict[str, Any] = {
        "name": name,
        "arms": arms,
        "control": control,
        "start": start,
        "end": end,
        "primary_metric": primary_metric,
    }
    if plan is not None:
        return load_plan(plan, **options)
    store = _store(event_log)
    try:
        stored = store.get(name)
    except RecsysError:  # not stored: the plan comes from the options alone
        return load_plan(None, **options)
    finally:
        store.close()
    return stored_plan(stored, **options)


_PLAN = typer.Option(
    None, "--plan", help="YAML file of the experiment (default: the stored experiment NAME)."
)
_ARM = typer.Option(None, "--arm", help="Arm and planned share, e.g. B=0.5 (repeatable).")
_CONTROL = typer.Option(None, "--control", help="The control arm (default: kind control).")
_START = typer.Option(None, "--start", help="Start of the experiment (UTC).")
_END = typer.Option(None, "--end", help="End of the experiment (UTC; default: now).")
_PRIMARY = typer.Option(None, "--primary-metric", help="e.g. acceptance_rate (default).")
_EVENT_LOG = typer.Option(None, "--event-log-url", help="Event log URL (default: settings).")
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
    from experiments.analysis import analyse
    from experiments.moments import open_event_log

    settings = load_settings(event_log_url=event_log)
    try:
        readout_plan = _plan_options(
            name, plan, arm, control, start, end, primary_metric, event_log
        )
        screened = None
        if screening is not None:
            from experiments.screening import read_screening

            screened = read_screening(screening)
        when = _utc(as_of)
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
    """Print the readout of experiment NAME as JSON (sample-ratio check first).

    Example: recsys experiments analyse demo-live
    """
    _, result = _run(name, plan, arm, control, start, end, primary_metric, event_log, as_of)
    typer.echo(json.dumps(result.to_dict(), indent=2))


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
        None,
        "--screening",
        help="JSON of `recsys experiments screen` (or {arm: value}), shown beside the result.",
    ),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="Log the readout to MLflow."),
) -> None:
    """Write NAME.html (self-contained), NAME.json and NAME.csv; log the readout to MLflow.

    Example: recsys experiments report demo-live --out data/reports
    """
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


# --- the demo business, live ---


@app.command()
def simulate(
    name: str = typer.Argument(..., help="A running experiment."),
    dataset: Path = typer.Option(
        Path("data/demo"), "--dataset", help="The generated demo data (its ground_truth/)."
    ),
    days: int = typer.Option(7, "--days", min=1, help="Whole days to play, ending today."),
    seed: int = typer.Option(0, "--seed", help="Draws of visits and responses."),
    event_log_url: str = URL,
) -> None:
    """Play the demo's customers for DAYS days through the decision path, then read out NAME.

    Each day the demo customers visit the realtime touchpoints; the service's own pipeline
    decides every visit (the running experiments pick the arms) and logs it; the customers
    answer with the demo's hidden preferences and their clicks, accepts, conversions and
    dismissals go to the event log.

    Example: recsys experiments simulate demo-live --dataset data/demo --days 14
    """
    from recsys.catalog import now_utc
    from recsys.datagen.customers import DemoCustomers
    from serving.components import build_components
    from serving.demo_traffic import drive_demo_traffic

    settings = load_settings(event_log_url=event_log_url)
    store = _store(event_log_url)
    try:
        stored = store.get(name)
    except RecsysError as exc:
        raise _fail(exc) from None
    finally:
        store.close()
    if stored.status != "running":
        raise _fail(
            ValueError(
                f"experiment {name} must be running to get traffic, got {stored.status} "
                f"(recsys experiments start {name})"
            )
        )
    try:
        customers = DemoCustomers.from_dataset(dataset)
        components = build_components(settings)
    except RecsysError as exc:
        raise _fail(exc) from None
    try:
        components.arms.refresh()  # the running experiments now, not at the next poll
        summary = drive_demo_traffic(components, customers, days, now_utc(), seed=seed)
    finally:
        components.close()
    typer.echo(summary.format())
    _, result = _run(name, None, None, None, None, None, None, event_log_url, None)
    for text in result.verdicts.values():
        typer.echo(text)
