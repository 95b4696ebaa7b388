"""Settings sources beside pydantic-settings' own: MLflow's ``MLFLOW_TRACKING_URI`` and the
flat ``RECSYS_SERVING_<FIELD>`` names from before the settings had sections."""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
)

from recsys.errors import ConfigError

LEGACY_SECTION_PREFIX = "RECSYS_SERVING_"


#: The standard MLflow variable, read when ``RECSYS_MLFLOW_TRACKING_URI`` is not set.
MLFLOW_TRACKING_VAR = "MLFLOW_TRACKING_URI"


class MlflowTrackingUri(PydanticBaseSettingsSource):
    """``MLFLOW_TRACKING_URI`` (what every MLflow tool reads) as ``mlflow_tracking_uri``,
    under every ``RECSYS_`` source: the recsys setting wins when both are set."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # read in __call__

    def __call__(self) -> dict[str, Any]:
        value = os.environ.get(MLFLOW_TRACKING_VAR)
        return {"mlflow_tracking_uri": value} if value else {}


class LegacySectionNames(PydanticBaseSettingsSource):
    """``RECSYS_SERVING_<FIELD>`` (the names before the sections) into the section of FIELD.

    Read from the environment and the ``.env`` file; list values are JSON, as for every
    other settings source.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        sections: Mapping[str, type[BaseModel]],
        env: EnvSettingsSource,
        dotenv: DotEnvSettingsSource | None,
    ):
        super().__init__(settings_cls)
        self.sections = sections
        self.env = env
        self.dotenv = dotenv

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is read in __call__

    def __call__(self) -> dict[str, Any]:
        found: dict[str, str | None] = {}
        if self.dotenv is not None:
            found.update(self.dotenv.env_vars)
        found.update(self.env.env_vars)  # the environment wins over the file
        prefix = LEGACY_SECTION_PREFIX.lower()
        out: dict[str, dict[str, Any]] = {}
        for section, model in self.sections.items():
            for name, info in model.model_fields.items():
                raw = found.get(prefix + name)
                if raw is None:
                    continue
                out.setdefault(section, {})[name] = _decode(name, info, raw)
        return out


def _decode(name: str, info: FieldInfo, raw: str) -> Any:
    if typing.get_origin(info.annotation) not in (list, dict):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        # Without the value: it may hold a secret.
        raise ConfigError(
            f"`{LEGACY_SECTION_PREFIX}{name.upper()}` must be JSON, got {len(raw)} characters "
            f"that are not ({exc.msg})"
        ) from None
