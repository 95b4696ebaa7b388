"""Settings of the HTTP service (``RECSYS_SERVING_*``), next to the core ``Settings``.

Built on demand (never at import) and injected into :func:`serving.main.create_app`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECSYS_SERVING_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes")
    reuse_port: bool = Field(
        default=True,
        description="with several workers, each listens on its own SO_REUSEPORT socket and "
        "the kernel spreads connections over them (Linux); false: one shared socket, "
        "uvicorn's default, where the first worker to wake accepts every waiting connection",
    )
    balance_connections: bool = Field(
        default=True,
        description="with REUSE_PORT, a worker holding more than its share of connections "
        "closes one after its next response, so the client reconnects and lands elsewhere",
    )
    pin_workers: bool = Field(
        default=True,
        description="with REUSE_PORT and as many workers as usable cores, each worker (event "
        "loop and decision thread) runs on a core of its own (Linux CPU affinity)",
    )
    epsilon: float = Field(
        default=0.05, ge=0.0, le=1.0, description="epsilon-greedy exploration share; 0 = greedy"
    )
    max_limit: int = Field(default=50, ge=1, description="largest `limit` a request may ask for")
    decision_batch_max: int = Field(
        default=32,
        ge=1,
        description="most concurrent POST /v1/decisions decided in one engine call "
        "(dynamic batching; 1 = one at a time)",
    )
    decision_batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=50,
        description="how long the decision thread waits for company after a request arrives "
        "before it decides (0 = never waits)",
    )
    switch_interval_ms: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="how long the decision thread may hold the GIL before the event loop gets "
        "it back (sys.setswitchinterval; Python's default is 5 ms, a floor under tail latency)",
    )
    freeze_startup_objects: bool = Field(
        default=True,
        description="gc.freeze() what start-up loaded (model, catalogue, libraries): the "
        "garbage collector then never walks it, so no full collection stalls a request",
    )
    event_log_checkpoint_s: float = Field(
        default=1.0,
        gt=0,
        description="a SQLite event log is checkpointed by a background thread this often "
        "(instead of by the commit that fills the WAL)",
    )
    max_batch_customers: int = Field(default=1_000, ge=1, description="customers per batch call")
    max_events: int = Field(default=1_000, ge=1, description="events per POST /v1/events")
    catalog_source: Path | None = Field(
        default=None,
        description="warehouse DuckDB file or folder of offers/touchpoints files; "
        "default: the core setting warehouse_path",
    )
    model_dir: Path | None = Field(
        default=None,
        description="load this local model folder instead of the registry alias (offline use)",
    )
    event_time_skew_seconds: int = Field(
        default=300, ge=0, description="how far in the future an event ts may be (clock skew)"
    )


def load_serving_settings(**overrides) -> ServingSettings:
    return ServingSettings(**{k: v for k, v in overrides.items() if v is not None})
