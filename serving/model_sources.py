"""Where served models come from: a registry alias (MLflow) or a fixed local folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

from recsys.errors import NotFoundError
from recsys.scoring.digest import MODEL_DIGEST_TAG
from recsys.settings import LifecycleSettings


class NoChampion(NotFoundError):
    """The registry answers, and the followed alias names no model version."""


def compiled_model_dir(settings: LifecycleSettings) -> Path | None:
    """Where compiled models are cached, or None when compiled scoring is off."""
    return Path(settings.model_cache_dir) / "compiled" if settings.compiled_scorer else None


class ModelSource(Protocol):
    """Where models come from: the version an alias names, its files and their checksum.

    ``cache_key`` names the source's folder in the local model cache, so that version 1 of
    one registry is never taken for version 1 of another."""

    alias: str
    cache_key: str

    def resolve(self, alias: str | None = None) -> str:
        """The version ``alias`` names now (None: the followed alias)."""
        ...

    def download(self, version: str, dst: Path) -> Path: ...

    def expected_digest(self, version: str) -> str | None:
        """The checksum recorded for ``version`` (:data:`MODEL_DIGEST_TAG`), None if none."""
        ...

    def follow(self, alias: str) -> None:
        """Follow another alias (raises NotFoundError where that is impossible)."""
        ...


class RegistrySource:
    """An MLflow registered model followed by alias (``models:/NAME@ALIAS``)."""

    def __init__(self, tracking_uri: str, name: str, alias: str):
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        digest = hashlib.sha256(tracking_uri.encode("utf-8")).hexdigest()[:12]
        self.cache_key = f"{name}-{digest}"

    def resolve(self, alias: str | None = None) -> str:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        alias = self.alias if alias is None else alias
        try:
            version = MlflowClient(tracking_uri=self.tracking_uri).get_model_version_by_alias(
                self.name, alias
            )
        except Exception as exc:
            missing = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")
            if isinstance(exc, MlflowException) and exc.error_code in missing:
                raise NoChampion(
                    f"registered model {self.name!r} must have a version under alias "
                    f"{alias!r} (train and promote a model first)"
                ) from exc
            raise NotFoundError(
                f"registered model {self.name!r} alias {alias!r} not resolvable: "
                f"{type(exc).__name__}"
            ) from exc
        return str(version.version)

    def follow(self, alias: str) -> None:
        self.alias = alias

    def expected_digest(self, version: str) -> str | None:
        from mlflow import MlflowClient

        found = MlflowClient(tracking_uri=self.tracking_uri).get_model_version(self.name, version)
        return (found.tags or {}).get(MODEL_DIGEST_TAG)

    def download(self, version: str, dst: Path) -> Path:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{self.name}/{version}", dst_path=str(dst)
            )
        )


class LocalDirSource:
    """A fixed local model folder (``model_dir``): nothing to follow."""

    alias = "local"

    def __init__(self, path: Path):
        self.path = Path(path)
        self.cache_key = "local"

    def resolve(self, alias: str | None = None) -> str:
        if alias is not None and alias != self.alias:
            self.follow(alias)
        return "local"

    def download(self, version: str, dst: Path) -> Path:
        return self.path

    def expected_digest(self, version: str) -> str | None:
        return None

    def follow(self, alias: str) -> None:
        raise NotFoundError("`alias` can only be followed with a registry model source")
