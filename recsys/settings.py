"""Typed settings from environment variables (``RECSYS_*``) and an optional ``.env`` file.

Built on demand with :func:`load_settings` and passed down; nothing reads them at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: DuckDB's memory cap of warehouse connections (DuckDB's own default is 80% of the RAM).
DEFAULT_DUCKDB_MEMORY_LIMIT = "4GB"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_", env_file=".env", extra="ignore")

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path("data")
    warehouse_path: Path = Field(
        default=Path("data/warehouse.duckdb"), description="DuckDB file of the embedded warehouse"
    )
    duckdb_memory_limit: str = Field(
        default=DEFAULT_DUCKDB_MEMORY_LIMIT,
        pattern=r"(?i)^[0-9]+(\.[0-9]+)?\s*([KMGT]i?)?B$",
        description="memory cap of warehouse connections, e.g. 4GB or 512MiB; beyond it "
        "large joins spill to <warehouse>.tmp instead of taking the machine's memory",
    )
    online_store: Literal["sqlite", "redis"] = "sqlite"
    online_sqlite_path: Path = Path("data/online_features.sqlite")
    redis_url: str = "redis://127.0.0.1:6379/0"
    event_log_url: str = Field(
        default="sqlite:///data/events.sqlite", description="sqlite:///PATH or postgresql://..."
    )
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    mlflow_experiment: str = "offer-ranker"
    model_name: str = "offer-ranker"
    model_alias: str = "champion"
    seed: int = 7


def load_settings(**overrides) -> Settings:
    """Settings from the environment, with explicit overrides (e.g. from CLI flags)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
