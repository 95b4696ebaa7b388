"""The one settings object: typed, from environment variables, a ``.env`` file and an optional
TOML file; built on demand with :func:`load_settings` and passed down (nothing reads settings
at import).

Core settings are top-level fields (``RECSYS_WAREHOUSE_PATH``, ...). The service's settings are
nested sections, each set by ``RECSYS_<SECTION>__<FIELD>`` (two underscores)::

    RECSYS_SERVING__WORKERS=2  RECSYS_SECURITY__TOKEN_SECRET=...  RECSYS_LIMITS__MAX_BODY_BYTES=...

The names from before the sections, ``RECSYS_SERVING_<FIELD>`` (one underscore, any section's
field), still work; a sectioned name wins over an old one. A TOML file named by
``RECSYS_SETTINGS_FILE`` gives defaults under the environment (tables ``[serving]``,
``[security]``, ...). Every field is listed in docs/operations.md ("Settings").

No secret has a default: without keys a production service refuses to start
(``serving.security``), customer tokens need ``security.token_secret``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from recsys.arbitration import (
    DEFAULT_POLICY,
    POLICIES,
    EpsilonGreedy,
    Policy,
    configured_parameters,
    configured_policy,
)
from recsys.errors import ConfigError
from recsys.settings_sources import LegacySectionNames, MlflowTrackingUri

logger = logging.getLogger(__name__)

#: DuckDB's memory cap of warehouse connections (DuckDB's own default is 80% of the RAM).
DEFAULT_DUCKDB_MEMORY_LIMIT = "4GB"
#: The environment variable naming the optional TOML settings file.
SETTINGS_FILE_VAR = "RECSYS_SETTINGS_FILE"
#: Prefix of the service's settings before they had sections (``RECSYS_SERVING_<FIELD>``).
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServingSettings(_Section):
    """The HTTP service: address, workers, decision defaults, request sizes (``serving``)."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(
        default=1,
        ge=1,
        description="uvicorn worker processes (uvicorn's own `workers`; for more, run replicas)",
    )
    policy: str = Field(
        default=DEFAULT_POLICY,
        description="the slate policy, a kind of recsys.arbitration.POLICIES: softmax "
        "(parameters in `policy_params`) or epsilon_greedy (with `epsilon`); docs/serving.md, "
        "Exploration",
    )
    epsilon: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="epsilon-greedy's exploration share (0 = greedy): with `policy` "
        "epsilon_greedy, and for experiment arms naming epsilon_greedy",
    )
    policy_params: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="parameters by policy kind beside `epsilon`, e.g. "
        '{"softmax": {"temperature": 0.05, "floor": 0.01}} (softmax\'s defaults: '
        "temperature 0.02, floor 0.01); `policy`'s decide the service's traffic, an experiment "
        "arm naming another kind takes that kind's",
    )
    experiments_poll_seconds: float = Field(
        default=5.0,
        ge=0,
        description="how often each worker reads the running experiments from the store (the "
        "event log's database); 0 = only at start",
    )
    catalog_poll_seconds: float = Field(
        default=2.0,
        ge=0,
        description="how often each worker looks whether the catalogue's source (warehouse "
        "file, or catalogue folder) changed, and then reads and swaps in a changed catalogue; "
        "0 = only at start and after PUT /admin/offers/{id}",
    )
    max_limit: int = Field(default=50, ge=1, description="largest `limit` a request may ask for")
    decision_batch_max: int = Field(
        default=32,
        ge=1,
        description="most concurrent POST /v1/decisions decided in one pipeline run "
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
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="a connection must send a complete request head within this long of "
        "being opened (or of its last response); else it is closed",
    )
    max_header_bytes: int = Field(
        default=16_384,
        ge=1_024,
        description="largest request head (request line and headers); beyond it 431",
    )
    max_connections: int = Field(
        default=2_048,
        ge=1,
        description="open connections per worker; a new one beyond it closes the oldest "
        "connection still waiting for its request head (else it gets 503)",
    )
    keep_alive_seconds: int = Field(
        default=5, ge=1, description="an idle keep-alive connection is closed after this long"
    )

    @model_validator(mode="after")
    def _check_policy(self) -> ServingSettings:
        # an unknown kind or parameters fail at start, naming them
        for kind in {self.policy, *self.policy_params}:
            configured_policy(kind, self.epsilon, self.policy_params.get(kind, {}))
        if "epsilon" in self.model_fields_set and self.policy != EpsilonGreedy.kind:
            # still read by experiment arms naming epsilon-greedy; said once at start, as a
            # deployment that set it before softmax became the default explores differently
            logger.warning(
                "serving.epsilon %s is epsilon-greedy's (serving.policy=%s, and experiment "
                "arms naming %s); this service's traffic explores with %s",
                self.epsilon,
                EpsilonGreedy.kind,
                EpsilonGreedy.kind,
                self.policy,
            )
        return self

    def slate_policy(self) -> Policy:
        """The configured policy: ``policy`` with its ``policy_params`` (and ``epsilon``,
        which only epsilon-greedy takes)."""
        return configured_policy(self.policy, self.epsilon, self.policy_params.get(self.policy, {}))

    def policy_parameters(self) -> dict[str, dict[str, float]]:
        """The parameters this service gives each registered kind (``policy_params``, and
        ``epsilon`` to epsilon-greedy): what an experiment's arm naming a kind takes for the
        parameters it leaves out."""
        return {
            kind: configured_parameters(kind, self.epsilon, self.policy_params.get(kind, {}))
            for kind in POLICIES
        }


class ApiKeyRecord(BaseModel):
    """One configured key: an id (safe to log), a scope and the SHA-256 of the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    scope: Literal["publishable", "secret", "admin"]
    hash: str = Field(description="sha256:<64 hex digits> of the key")
    rate_per_second: float | None = Field(default=None, gt=0, description="default: by scope")
    burst: int | None = Field(default=None, ge=1, description="default: by scope")

    @field_validator("hash")
    @classmethod
    def _hash_format(cls, value: str) -> str:
        if not _HASH.match(value):
            # Never echo the value: it may be a raw key pasted by mistake.
            raise ValueError(
                f"`hash` must look like sha256:<64 hex digits>, got {len(value)} characters "
                "of something else (configure the hash, never the key)"
            )
        return value


def hash_key(key: str) -> str:
    """The configured form of a key: ``sha256:<hex>`` (keys are 256-bit random strings)."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


class SecuritySettings(_Section):
    """API keys, customer tokens and CORS (``security``)."""

    api_keys: list[ApiKeyRecord] = Field(
        default_factory=list, description="JSON list of {id, scope, hash} records"
    )
    api_keys_file: Path | None = Field(
        default=None, description='JSON file {"keys": [{id, scope, hash}, ...]}'
    )
    token_secret: SecretStr | None = Field(
        default=None, description="HMAC secret of customer tokens (>= 32 bytes); no default"
    )
    token_secret_previous: SecretStr | None = Field(
        default=None, description="the secret before a rotation, still accepted"
    )
    token_audience: str | None = Field(default=None, description="required `aud` claim, if set")
    token_leeway_seconds: int = Field(default=30, ge=0, le=600)
    token_max_ttl_seconds: int = Field(
        default=86_400, ge=60, description="tokens living longer than this are refused"
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="site origins allowed to call from a browser"
    )
    cors_allow_credentials: bool = False
    browser_full_response: bool = Field(
        default=False,
        description="publishable-key (browser) decisions carry score, priority, propensity and "
        "reasons too; by default only what a page needs (ids, names, ranks)",
    )
    demo_enabled: bool = Field(
        default=False,
        description="serve the example page at /demo and mint customer tokens for anyone "
        "who asks (POST /demo/token): development only, refused in production",
    )


class LimitSettings(_Section):
    """Body size, time limits and per-key rates (``limits``)."""

    max_body_bytes: int = Field(default=1_048_576, ge=1_024, description="413 above this")
    request_timeout_seconds: float = Field(
        default=10.0, gt=0, description="503 when no response is ready in time"
    )
    rate_limit_enabled: bool = True
    rate_publishable_per_second: float = Field(
        default=5.0, gt=0, description="publishable keys: per customer token"
    )
    rate_publishable_burst: int = Field(default=20, ge=1)
    rate_publishable_address_per_second: float = Field(
        default=20.0,
        gt=0,
        description="publishable keys: per client address, calls without a token",
    )
    rate_publishable_address_burst: int = Field(default=40, ge=1)
    rate_publishable_site_per_second: float = Field(
        default=2_000.0,
        gt=0,
        description="publishable keys: site-wide ceiling per key (a key record's rate sets its own)",
    )
    rate_publishable_site_burst: int = Field(default=4_000, ge=1)
    rate_buckets: int = Field(
        default=100_000,
        ge=100,
        description="buckets kept per process (least recently used dropped)",
    )
    rate_secret_per_second: float = Field(default=2_000.0, gt=0)
    rate_secret_burst: int = Field(default=4_000, ge=1)
    rate_admin_per_second: float = Field(default=5.0, gt=0)
    rate_admin_burst: int = Field(default=20, ge=1)
    rate_anonymous_per_second: float = Field(
        default=2_000.0, gt=0, description="per client address when keys are off (development)"
    )
    rate_anonymous_burst: int = Field(default=4_000, ge=1)


class LifecycleSettings(_Section):
    """Model following, last good copies and the circuit breaker (``lifecycle``)."""

    model_cache_dir: Path = Field(
        default=Path("data/model_cache"), description="last good copies of registry models"
    )
    compiled_scorer: bool = Field(
        default=True,
        description="score with the model compiled to native code (lleaves), checked against "
        "LightGBM at load; binaries cached under model_cache_dir/compiled",
    )
    model_poll_seconds: float = Field(
        default=30.0, ge=0, description="how often to check the registry alias; 0 = never"
    )
    breaker_failures: int = Field(default=5, ge=1, description="consecutive bad scorings to open")
    breaker_slow_ms: float = Field(default=250.0, gt=0, description="a scoring slower is bad")
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    start_without_model: bool = Field(
        default=False,
        description="when the registry has no model under the alias: serve the popularity/"
        "rules fallback until one is promoted (default: refuse to start, it is a setup error)",
    )
    model_check_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        description="a candidate model is loaded and test-scored in a child process first "
        "(a file that crashes there is refused); longer than this: refused too",
    )
    reload_wait_seconds: float = Field(
        default=5.0,
        ge=0,
        description="POST /admin/model/reload and /follow answer with the outcome when the "
        "swap is done within this; else 202 with a status URL (keep below "
        "limits.request_timeout_seconds)",
    )


class ObservabilitySettings(_Section):
    """Logs and metrics (``observability``)."""

    log_format: Literal["auto", "json", "text"] = Field(
        default="auto", description="auto = json in production, text elsewhere"
    )
    log_level: str = "INFO"
    access_log: bool = True
    access_log_flush_ms: float = Field(
        default=200,
        ge=0,
        le=60_000,
        description="access lines are written in batches this often (0 = each at once)",
    )
    log_hash_key: SecretStr | None = Field(
        default=None,
        description="key of the customer-id hash in logs (same on every replica to correlate); "
        "default: a random key per process",
    )
    metrics_enabled: bool = True


#: The sections, by field name of :class:`Settings`.
SECTIONS: dict[str, type[_Section]] = {
    "serving": ServingSettings,
    "security": SecuritySettings,
    "limits": LimitSettings,
    "lifecycle": LifecycleSettings,
    "observability": ObservabilitySettings,
}


class Settings(BaseSettings):
    """Every setting of recsys: core fields, and one section per concern of the service."""

    model_config = SettingsConfigDict(
        env_prefix="RECSYS_", env_file=".env", env_nested_delimiter="__", extra="ignore"
    )

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
    features_config: Path | None = Field(
        default=None,
        description="YAML features config (horizons, windows, event vocabulary; "
        "docs/features.md); default: the built-in one",
    )
    online_store: Literal["sqlite", "redis"] = "sqlite"
    online_sqlite_path: Path = Path("data/online_features.sqlite")
    redis_url: str = "redis://127.0.0.1:6379/0"
    online_store_timeout_ms: int = Field(
        default=250,
        ge=1,
        description="the one deadline a request spends on the online store (Redis: socket "
        "and connect timeout, no retries); past it the request is served cold starts",
    )
    online_store_probe_seconds: float = Field(
        default=1.0,
        gt=0,
        description="while the online store is down, how often it is asked whether it "
        "answers again (requests do not touch it meanwhile)",
    )
    event_log_url: str = Field(
        default="sqlite:///data/events.sqlite", description="sqlite:///PATH or postgresql://..."
    )
    mlflow_tracking_uri: str = "sqlite:///mlflow.db"
    mlflow_experiment: str = "offer-ranker"
    model_name: str = "offer-ranker"
    model_alias: str = "champion"
    seed: int = 7
    project_root: Path | None = Field(
        default=None,
        description="folder that relative store paths (warehouse, online store, event log, "
        "MLflow database, model cache) are relative to; default: the recsys checkout that "
        "is installed, else the current folder",
    )

    serving: ServingSettings = Field(default_factory=ServingSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    lifecycle: LifecycleSettings = Field(default_factory=LifecycleSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, environment, ``.env``, the old flat names, the TOML file, secrets dir."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        if isinstance(env_settings, EnvSettingsSource):
            dotenv = dotenv_settings if isinstance(dotenv_settings, DotEnvSettingsSource) else None
            sources.append(LegacySectionNames(settings_cls, SECTIONS, env_settings, dotenv))
        path = os.environ.get(SETTINGS_FILE_VAR)
        if path:
            if not Path(path).is_file():
                raise ConfigError(f"`{SETTINGS_FILE_VAR}` must name a TOML file, got {path!r}")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
        sources.append(MlflowTrackingUri(settings_cls))
        sources.append(file_secret_settings)
        return tuple(sources)

    @model_validator(mode="after")
    def _stores_under_the_project_root(self) -> Settings:
        """Relative store paths are relative to the project root, not the current folder: a
        command run from another folder reads the project's stores."""
        root = (self.project_root or default_project_root()).absolute()
        self.project_root = root
        for name in ("data_dir", "warehouse_path", "online_sqlite_path", "features_config"):
            setattr(self, name, _under(root, getattr(self, name)))
        self.event_log_url = _sqlite_under(root, self.event_log_url)
        self.mlflow_tracking_uri = _sqlite_under(root, self.mlflow_tracking_uri)
        self.lifecycle.model_cache_dir = root / self.lifecycle.model_cache_dir
        self.serving.catalog_source = _under(root, self.serving.catalog_source)
        self.serving.model_dir = _under(root, self.serving.model_dir)
        self.security.api_keys_file = _under(root, self.security.api_keys_file)
        return self


SQLITE_PREFIX = "sqlite:///"


def default_project_root() -> Path:
    """The recsys checkout this code runs from (it holds ``pyproject.toml``), else the
    current folder (an installed package: set ``RECSYS_PROJECT_ROOT``)."""
    checkout = Path(__file__).resolve().parent.parent
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()


def sqlite_path_of(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (None for other stores, or in memory)."""
    if not url.startswith(SQLITE_PREFIX):
        return None
    path = url.removeprefix(SQLITE_PREFIX).split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def _under(root: Path, path: Path | None) -> Path | None:
    return None if path is None else root / path  # an absolute ``path`` stays as it is


def _sqlite_under(root: Path, url: str) -> str:
    path = sqlite_path_of(url)
    if path is None or path.is_absolute():
        return url
    return SQLITE_PREFIX + str(root / url.removeprefix(SQLITE_PREFIX))


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit overrides (e.g. from CLI flags).

    ``overrides`` set fields (None = not given); a section given as a dict
    (``serving={"workers": 2}``) is merged with what the environment says for it. Paths
    given here (command-line flags) are relative to the current folder; those from the
    environment and files, to the project root.
    """
    given = {k: _from_here(v) for k, v in overrides.items() if v is not None}
    root = given.get("project_root") or os.environ.get("RECSYS_PROJECT_ROOT")
    root = Path(root) if root else default_project_root()
    # The project's .env is read from any folder; one in the current folder wins over it.
    env_files = (root / ".env", Path(".env"))
    arguments: dict[str, Any] = {"_env_file": env_files, **given}
    return Settings(**arguments)


def _from_here(value: Any) -> Any:
    if isinstance(value, Path):
        return value.absolute()
    if isinstance(value, str):
        return _sqlite_under(Path.cwd(), value)
    return value
