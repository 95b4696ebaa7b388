"""The champion model: loaded from the MLflow registry, scored by its flavour's scorer.

``models:/offer-ranker@champion`` is a folder with ``feature_spec.json`` (columns,
feature-spec version, ``flavour``, ``model_file``) and the model file training wrote: a
LightGBM text model (flavour ``lightgbm``) or a scikit-learn estimator in a skops file
(``sklearn``). Serving reads them with mlflow (download) and the flavour's scorer from
:data:`recsys.scoring.SCORERS`: no training code, no pyfunc wrapper and no pandas on the hot
path. With a compile folder, a LightGBM model is served compiled by lleaves (checked against
LightGBM at load, LightGBM if that fails; see :mod:`recsys.scoring.lleaves`). Every model is
loaded and test-scored in a child process before this process loads it
(:mod:`recsys.scoring.check`): a file that crashes the library is refused, not served.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.decision import ModelInfo
from recsys.errors import NotFoundError, SpecMismatchError
from recsys.scoring import LightGBMScorer, LoadOptions, ModelFiles, ModelScorer, load_scorer
from recsys.scoring.check import check_model_files
from recsys.scoring.digest import model_digest

logger = logging.getLogger(__name__)

SPEC_FILE = "feature_spec.json"
#: The flavour of a model folder whose feature spec records none (written before flavours
#: were recorded, when every registered model was LightGBM).
UNRECORDED_FLAVOUR = "lightgbm"
#: Seconds the child process may take to check a model (compiling a large one takes tens).
CHECK_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class LoadedModel:
    scorer: ModelScorer
    info: ModelInfo
    spec: dict[str, Any]
    path: Path


@dataclass(frozen=True)
class ModelFolder:
    """A model folder as read (not loaded): its feature spec and the model file it names."""

    spec_file: Path
    spec: dict[str, Any]
    flavour: str
    files: ModelFiles

    def digest(self) -> str:
        """The model's checksum (:func:`recsys.scoring.digest.model_digest`)."""
        return model_digest(self.spec_file, self.files.model_file)


def read_model_dir(path: str | Path) -> ModelFolder:
    """Read the feature spec of a model folder and find its model file (nothing is loaded).

    Raises
    ------
    NotFoundError
        No ``feature_spec.json``, or no model file where it says.
    SpecMismatchError
        The spec is not JSON or lacks ``columns``.
    """
    root = Path(path)
    spec_files = sorted(root.rglob(SPEC_FILE))
    if not spec_files:
        raise NotFoundError(f"model folder must contain {SPEC_FILE}, got none under {root}")
    spec_path = spec_files[0]
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SpecMismatchError(f"{SPEC_FILE} must be a JSON object, got: {exc}") from None
    if not isinstance(spec, dict):
        raise SpecMismatchError(f"{SPEC_FILE} must be a JSON object, got {type(spec).__name__}")
    columns = spec.get("columns")
    if not columns:
        raise SpecMismatchError(f"{SPEC_FILE} must list the model's `columns`, got {columns!r}")
    flavour = str(spec.get("flavour", UNRECORDED_FLAVOUR))
    files = ModelFiles(_model_file(spec_path.parent, spec.get("model_file")), tuple(columns))
    return ModelFolder(spec_path, spec, flavour, files)


def load_model_dir(
    path: str | Path,
    name: str = "offer-ranker",
    version: str = "local",
    compiled_dir: Path | None = None,
    check_timeout: float = CHECK_TIMEOUT_SECONDS,
) -> LoadedModel:
    """Check a downloaded model folder in a child process, then load it here.

    The model file is loaded and test-scored in a child process first
    (:func:`recsys.scoring.check.check_model_files`): a file that crashes LightGBM or LLVM
    there is refused and never loaded by this process. With ``compiled_dir`` a flavour with
    a compiled scorer is served compiled (binaries cached there) if its compiled copy passes
    the check too, else by its plain scorer.

    Raises
    ------
    NotFoundError
        No ``feature_spec.json``, or no model file where it says.
    SpecMismatchError
        The spec lacks ``columns``, records an unknown ``flavour``, or the model reads
        another number of columns than it lists.
    ModelRefused
        The model crashed, failed or hung (``check_timeout`` seconds) in the child process.
    """
    folder = read_model_dir(path)
    options = LoadOptions(compiled_dir=None if compiled_dir is None else Path(compiled_dir))
    report = check_model_files(folder.flavour, folder.files, options, check_timeout)
    if report.compiled_failed is not None:
        logger.warning("model %s v%s: compiled copy refused (%s): scored by %s", name, version,
                       report.compiled_failed, report.scorer)  # fmt: skip
    scorer = load_scorer(folder.flavour, folder.files, report.options)
    info = ModelInfo(
        name=name,
        version=str(version),
        feature_spec_version=folder.spec.get("feature_spec_version"),
    )
    logger.info(
        "model %s v%s loaded from %s (%s, %d columns, scored by %s; checked in %.1f s)",
        name,
        version,
        folder.files.model_file,
        folder.flavour,
        len(folder.files.columns),
        scorer.name,
        report.seconds,
    )
    return LoadedModel(scorer, info, folder.spec, Path(path))


def _model_file(folder: Path, named: str | None) -> Path:
    if not named:
        raise NotFoundError(f"{SPEC_FILE} must name the `model_file`, got {named!r}")
    for candidate in (folder / named, *folder.rglob(Path(named).name)):
        if candidate.is_file():
            return candidate
    raise NotFoundError(f"{SPEC_FILE} names model_file {named!r}, not found under {folder}")


def load_registered_model(
    tracking_uri: str,
    model_name: str,
    alias: str,
    dst: str | Path | None = None,
    compiled_dir: Path | None = None,
) -> LoadedModel:
    """Download ``models:/NAME@ALIAS`` from the MLflow registry and load it."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, alias)
    except Exception as exc:  # mlflow raises its own exception types for "no such alias"
        raise NotFoundError(
            f"registered model {model_name!r} must have alias {alias!r} "
            f"(train and promote a model first): {exc}"
        ) from exc
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{model_name}@{alias}", dst_path=None if dst is None else str(dst)
    )
    return load_model_dir(
        local, name=model_name, version=str(version.version), compiled_dir=compiled_dir
    )


__all__ = [
    "SPEC_FILE",
    "LightGBMScorer",
    "LoadedModel",
    "ModelFolder",
    "load_model_dir",
    "load_registered_model",
    "read_model_dir",
]
