"""MLflow: one run per training (params, metrics, artifacts, model) and the model registry.

The registered model (``settings.model_name``, default ``offer-ranker``) is the
``model.kind`` model, logged as a pyfunc whose directory holds::

    artifacts/model.txt           LightGBM text model (best iteration), flavour ``lightgbm``
      or artifacts/model.skops    scikit-learn pipeline (skops file), flavour ``sklearn``
    artifacts/feature_spec.json   spec version, column order, categorical indexes, encoding,
                                  ``flavour`` and ``model_file``

``mlflow.artifacts.download_artifacts("models:/offer-ranker@champion")`` returns that
directory; serving loads the model file with the scorer its flavour names
(:data:`recsys.scoring.SCORERS`), and the pyfunc does the same.
"""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import tempfile
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

import recsys
from recsys.errors import ConfigError, NotFoundError
from recsys.scoring.digest import MODEL_DIGEST_TAG, model_digest
from recsys.settings import Settings
from training import plots
from training.encoding import feature_spec
from training.gate import GateVerdict, quality_gate
from training.models import LightGBMScorer
from training.pipeline import TrainingResult
from training.policy_eval import OBJECTIVES, TrueValue

logger = logging.getLogger(__name__)

SPEC_FILE = "feature_spec.json"
#: Paths inside the registered model's directory (what serving reads); the model file is
#: ``model.txt`` for LightGBM.
MODEL_PATH_IN_ARTIFACT = f"artifacts/{LightGBMScorer.model_file}"
SPEC_PATH_IN_ARTIFACT = f"artifacts/{SPEC_FILE}"
ALIASES = ("champion", "challenger")
_PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    experiment_id: str
    model_uri: str
    model_version: str | None
    gate: GateVerdict


@dataclass(frozen=True)
class ModelVersionInfo:
    version: str
    aliases: tuple[str, ...]
    run_id: str
    created_at: pd.Timestamp
    auc: float | None
    snips_value: float | None


def default_artifact_location(tracking_uri: str) -> str | None:
    """``mlruns/`` next to a SQLite tracking database (``sqlite:///mlflow.db`` -> ``./mlruns``,
    as MLflow's own default); None (the server decides) for other stores."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    database = Path(tracking_uri.removeprefix(prefix))
    return str((database.parent / "mlruns").resolve())


def setup(settings: Settings, artifact_location: str | None = None) -> str:
    """Point MLflow at ``settings.mlflow_tracking_uri``; create the experiment if needed.

    Returns the experiment id. ``artifact_location`` (default: ``mlruns/`` next to a SQLite
    tracking database) applies only when the experiment is new.
    """
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = artifact_location or default_artifact_location(settings.mlflow_tracking_uri)
    return client.create_experiment(settings.mlflow_experiment, artifact_location=location)


def code_version() -> str:
    """The git commit of the working tree, or ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def log_training(
    result: TrainingResult,
    settings: Settings,
    *,
    artifact_location: str | None = None,
    run_name: str | None = None,
    force: bool = False,
) -> LoggedRun:
    """Log ``result`` as one MLflow run and register its model (``result.registered``) if
    ``mlflow.register_model`` is set and the quality gate (:func:`training.gate.quality_gate`)
    lets it through; ``force`` registers a model the gate refuses (tag ``quality_gate=forced``).

    Tags: ``quality_gate`` (passed, refused, forced or disabled) and ``quality_gate.reasons``;
    ``ope_warnings`` (one line per estimate resting on too little) when there are any.
    """
    experiment_id = setup(settings, artifact_location)
    config = result.config
    registered = result.registered
    verdict = quality_gate(result, force=force)
    logger.log(logging.WARNING if verdict.reasons else logging.INFO, "%s", verdict.message())
    params = {
        **config.flat(),
        "data.fingerprint": result.fingerprint,
        "data.source": result.source or "unknown",
        "feature_spec_version": registered.encoder.spec_version,
        "code_version": code_version(),
        "split.valid_start": str(result.split.valid_start),
        "split.test_start": str(result.split.test_start),
        "columns": str(len(registered.encoder.columns)),
        # What the registered model was fitted on (the metrics are the held-out model's).
        "refit_on_all_data": str(registered.refit).lower(),
    }
    tags = {"quality_gate": verdict.status}
    if verdict.reasons:
        tags["quality_gate.reasons"] = "; ".join(verdict.reasons)
    if verdict.notes:
        tags["quality_gate.not_checked"] = "; ".join(verdict.notes)
    if result.ope_warnings:
        tags["ope_warnings"] = "\n".join(result.ope_warnings)
    model = registered.scorer
    active = mlflow.active_run()  # the run of the whole training (``training_run``)
    with (
        (
            contextlib.nullcontext(active)
            if active is not None
            else mlflow.start_run(
                experiment_id=experiment_id, run_name=run_name or run_title(result)
            )
        ) as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        if active is not None:
            MlflowClient().update_run(run.info.run_id, name=run_name or run_title(result))
        mlflow.log_params(params)
        mlflow.set_tags(tags)
        mlflow.log_metrics({k: v for k, v in result.metrics.items() if np.isfinite(v)})
        tmpdir = Path(tmp)
        model_file = model.save_model(tmpdir)
        spec = {
            **feature_spec(registered.encoder, model_file=model_file.name),
            "flavour": model.flavour,
        }
        spec_file = tmpdir / SPEC_FILE
        spec_file.write_text(json.dumps(spec, indent=2, default=str))
        mlflow.log_artifact(str(model_file), artifact_path="model_native")
        mlflow.log_artifact(str(spec_file), artifact_path="model_native")
        if result.offers is not None:
            catalogue = tmpdir / "offers.json"
            result.offers.to_json(catalogue, orient="records", date_format="iso", indent=1)
            mlflow.log_artifact(str(catalogue), artifact_path="catalogue")
        mlflow.log_text(_policy_table(result), "evaluation/policy_values.md")
        mlflow.log_text(
            json.dumps(result.offline, indent=1, default=float), "evaluation/offline_metrics.json"
        )
        if config.mlflow.log_plots:
            _log_plots(result, tmpdir)
        input_frame = pd.DataFrame(registered.example, columns=list(registered.encoder.columns))
        signature = infer_signature(input_frame, model.flavour_scorer().score(registered.example))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(_PYFUNC_CODE),
            artifacts={"model": str(model_file), "feature_spec": str(spec_file)},
            # The pyfunc scores through recsys.scoring, as serving does.
            code_paths=[str(Path(recsys.__file__).parent)],
            signature=signature,
            input_example=input_frame,
            pip_requirements=[
                f"mlflow=={mlflow.__version__}",
                *map(_requirement, PYFUNC_PACKAGES),
            ],
            registered_model_name=settings.model_name
            if config.mlflow.register_model and verdict.allows_registration
            else None,
        )
        version = info.registered_model_version
        if version is not None:  # serving refuses a download whose checksum differs
            MlflowClient().set_model_version_tag(
                settings.model_name,
                str(version),
                MODEL_DIGEST_TAG,
                model_digest(spec_file, model_file),
            )
        logger.info("logged run %s (model version %s)", run.info.run_id, version)
        return LoggedRun(
            run.info.run_id,
            experiment_id,
            info.model_uri,
            None if version is None else str(version),
            verdict,
        )


def run_title(result: TrainingResult) -> str:
    """What a training did, as its MLflow run name: model kind, data window and size, e.g.
    ``lightgbm 2026-01-01..2026-03-31 (49,944 rows)``."""
    window = ""
    if result.data_start is not None and result.data_end is not None:
        window = f" {result.data_start:%Y-%m-%d}..{result.data_end:%Y-%m-%d}"
    rows = sum(result.sizes.values())
    return f"{result.config.model.kind}{window} ({rows:,} rows)"


@contextlib.contextmanager
def training_run(settings: Settings, kind: str, artifact_location: str | None = None) -> Iterator:
    """One MLflow run around a whole training, from data preparation to registration.

    Named ``<kind> (preparing data)`` until :func:`log_training` names it after what it did
    (:func:`run_title`). A training that fails leaves the run FAILED, with the error as tag
    ``error`` (one line) and artifact ``error.txt`` (the traceback).
    """
    experiment_id = setup(settings, artifact_location)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{kind} (preparing data)") as run:
        try:
            yield run
        except BaseException as exc:
            line = " ".join(f"{type(exc).__name__}: {exc}".split())[:5000]
            mlflow.set_tag("error", line)
            mlflow.log_text("".join(traceback.format_exception(exc)), "error.txt")
            raise  # MLflow ends the run as FAILED


#: What ``recsys.scoring`` needs besides mlflow (every flavour's library).
PYFUNC_PACKAGES = (
    "lightgbm",
    "lleaves",
    "llvmlite",
    "scikit-learn",
    "skops",
    "pandas",
    "numpy",
)


def _requirement(package: str) -> str:
    from importlib.metadata import version

    return f"{package}=={version(package)}"


def _log_plots(result: TrainingResult, tmpdir: Path) -> None:
    paths = [
        plots.lift(
            result.test.meta["touchpoint_id"].to_numpy(),
            result.test.y,
            result.test_scores[result.main],
            tmpdir / "lift_per_touchpoint.png",
        ),
    ]
    importance = result.model.feature_importance()
    if importance is not None:
        paths.append(plots.feature_importance(importance, tmpdir / "feature_importance.png"))
    if result.calibration:
        paths.append(plots.calibration(result.calibration, tmpdir / "calibration.png"))
    for path in paths:
        mlflow.log_artifact(str(path), artifact_path="plots")


def _policy_table(result: TrainingResult) -> str:
    """Markdown table of every policy's value (estimates with intervals, truth if known)."""
    return (
        format_policy_table(result) if result.policy is not None else "no off-policy evaluation\n"
    )


def format_policy_table(result: TrainingResult) -> str:
    evaluation = result.policy
    if evaluation is None:
        return ""
    oracle, chance = evaluation.oracle, evaluation.random
    has_truth = oracle is not None and chance is not None
    head = "| policy | IPS | SNIPS | DR |"
    if has_truth:
        head += " true acceptance (of oracle) | true revenue (of oracle) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def cell(e) -> str:
        return f"{e.value:.4f} [{e.lower:.4f}, {e.upper:.4f}]"

    def true_cells(true: TrueValue | None) -> str:
        if true is None or not has_truth:
            return ""
        cells = ""
        for objective in OBJECTIVES:
            value, share = true.on(objective), evaluation.of_oracle(true, objective)
            cell = "-" if value is None else f"{value:.4f}"
            cells += f" {cell}{'' if share is None else f' ({share:.2f})'} |"
        return cells

    for name, value in evaluation.policies.items():
        row = (
            f"| {name} | {cell(value.estimates['ips'])} | {cell(value.estimates['snips'])} | "
            f"{cell(value.estimates['dr'])} |"
        )
        lines.append(row + true_cells(value.true))
    lines.append(f"| logging (observed) | {cell(evaluation.logging)} | | |" + true_cells(
        evaluation.logging_true
    ))  # fmt: skip
    if has_truth:
        lines.append("| oracle | | | |" + true_cells(oracle))
    note = ""
    if has_truth:
        note = (
            "\ntrue: from the data's ground truth; (of oracle) = share of the way from a random "
            "candidate (0) to the best one (1)"
        )
        partial = {n: v.true.coverage for n, v in evaluation.policies.items() if v.true}
        partial = {n: c for n, c in partial.items() if c < 1.0}
        for name, coverage in partial.items():
            note += (
                f"\n{name}: {1 - coverage:.1%} of its choices are offers the ground truth does "
                "not list as candidates; they count at the round's known mean"
            )
    return (
        f"Policy value per decision on {evaluation.rounds} test rounds "
        f"(95% bootstrap intervals)\n\n" + "\n".join(lines) + "\n" + note + ("\n" if note else "")
    )


# ---------------------------------------------------------------- registry


def list_versions(settings: Settings) -> list[ModelVersionInfo]:
    """Every registered version of ``settings.model_name``, newest first."""
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{settings.model_name}'")
    except MlflowException as exc:
        raise NotFoundError(f"cannot list model {settings.model_name!r}: {exc}") from None
    aliases: dict[str, list[str]] = {}
    if versions:
        registered = client.get_registered_model(settings.model_name)
        for alias, version in (registered.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
    infos = []
    for mv in versions:
        metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        infos.append(
            ModelVersionInfo(
                version=str(mv.version),
                aliases=tuple(sorted(aliases.get(str(mv.version), []))),
                run_id=mv.run_id or "",
                created_at=pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC"),
                auc=metrics.get("auc"),
                snips_value=metrics.get("snips_value"),
            )
        )
    return sorted(infos, key=lambda i: int(i.version), reverse=True)


def promote(settings: Settings, version: str | int, alias: str) -> None:
    """Point ``alias`` (champion or challenger) at ``version`` of the registered model."""
    if alias not in ALIASES:
        raise ConfigError(f"`alias` must be one of {list(ALIASES)}, got {alias!r}")
    known = {info.version for info in list_versions(settings)}
    if str(version) not in known:
        raise NotFoundError(
            f"model {settings.model_name!r} has no version {version!r}; known versions: "
            f"{sorted(known, key=int) or 'none'}"
        )
    MlflowClient().set_registered_model_alias(settings.model_name, alias, str(version))
    logger.info("model %s version %s is now %s", settings.model_name, version, alias)


def champion_version(settings: Settings) -> str | None:
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    try:
        mv = MlflowClient().get_model_version_by_alias(settings.model_name, "champion")
    except MlflowException:
        return None
    return str(mv.version)


def ensure_champion(settings: Settings) -> str | None:
    """Promote the newest version to champion if no version is champion yet.

    Returns the champion's version (None if the model has no version at all).
    """
    current = champion_version(settings)
    if current is not None:
        return current
    try:
        versions = list_versions(settings)
    except NotFoundError:
        return None
    if not versions:
        return None
    promote(settings, versions[0].version, "champion")
    return versions[0].version
