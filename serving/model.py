"""The champion model: loaded from the MLflow registry, scored with LightGBM directly.

``models:/offer-ranker@champion`` is a folder with ``feature_spec.json`` (columns,
feature-spec version, ``model_file``) and the LightGBM model in its native text format.
Serving reads them with mlflow (download) + lightgbm (predict): no training code, no
pyfunc wrapper and no pandas on the hot path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from recsys.decision import ModelInfo
from recsys.errors import NotFoundError, SpecMismatchError

logger = logging.getLogger(__name__)

SPEC_FILE = "feature_spec.json"
MODEL_FILE_PATTERNS = ("*.txt", "*.lgb", "*.model")


@dataclass
class LightGBMScorer:
    """P(accept) from a LightGBM booster; one thread per call (the service runs many).

    Parameters
    ----------
    booster : lightgbm.Booster
    columns : tuple of str
        The model's column order (its feature spec).
    """

    booster: lgb.Booster
    columns: tuple[str, ...]
    num_threads: int = 1

    def __post_init__(self) -> None:
        n = self.booster.num_feature()
        if n != len(self.columns):
            raise SpecMismatchError(
                f"model has {n} features but its feature spec lists {len(self.columns)} columns"
            )

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """matrix shape (n, n_features) -> P(accept), shape (n,)."""
        if matrix.ndim != 2 or matrix.shape[1] != len(self.columns):
            raise SpecMismatchError(
                f"decision matrix must have {len(self.columns)} columns, got shape {matrix.shape}"
            )
        return self.booster.predict(matrix, num_threads=self.num_threads)


@dataclass(frozen=True)
class LoadedModel:
    scorer: LightGBMScorer
    info: ModelInfo
    spec: dict[str, Any]
    path: Path


def load_model_dir(
    path: str | Path, name: str = "offer-ranker", version: str = "local"
) -> LoadedModel:
    """Load a downloaded model folder (``feature_spec.json`` + the LightGBM model file)."""
    root = Path(path)
    spec_files = sorted(root.rglob(SPEC_FILE))
    if not spec_files:
        raise NotFoundError(f"model folder must contain {SPEC_FILE}, got none under {root}")
    spec_path = spec_files[0]
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    model_file = _model_file(spec_path.parent, spec.get("model_file"))
    booster = lgb.Booster(model_file=str(model_file))
    columns = tuple(spec.get("columns") or booster.feature_name())
    info = ModelInfo(
        name=name, version=str(version), feature_spec_version=spec.get("feature_spec_version")
    )
    logger.info("model %s v%s loaded from %s (%d columns)", name, version, model_file, len(columns))
    return LoadedModel(LightGBMScorer(booster, columns), info, spec, root)


def _model_file(folder: Path, named: str | None) -> Path:
    if named:
        for candidate in (folder / named, *folder.rglob(Path(named).name)):
            if candidate.is_file():
                return candidate
        raise NotFoundError(
            f"feature_spec.json names model_file {named!r}, not found under {folder}"
        )
    for pattern in MODEL_FILE_PATTERNS:
        found = sorted(folder.rglob(pattern))
        if found:
            return found[0]
    raise NotFoundError(f"model folder must contain a LightGBM model file, got none under {folder}")


def load_registered_model(
    tracking_uri: str, model_name: str, alias: str, dst: str | Path | None = None
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
    return load_model_dir(local, name=model_name, version=str(version.version))
