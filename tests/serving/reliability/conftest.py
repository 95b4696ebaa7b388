"""The hardened service on small real parts: keys, tokens, limits, metrics, model holder.

:func:`build_stack` assembles the app the way ``serving.main`` does in production
(security, limits, CORS, observability, model lifecycle and admin routes) around the
factories' catalogue, in-memory feature source and a tiny LightGBM served from a model
folder or a temporary MLflow registry.

Every secret and customer id a test uses is registered in :data:`SEEN`; the log lines of
the whole reliability run (in-process JSON logs and the server processes' logs) go to
:data:`LOG_DIR`, which the last test scans for them.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from experiments.store import open_experiment_store
from recsys.eventlog import EventLog, SQLiteEventLog
from recsys.settings import (
    ApiKeyRecord,
    LifecycleSettings,
    LimitSettings,
    ObservabilitySettings,
    SecuritySettings,
    ServingSettings,
    Settings,
    hash_key,
)
from serving.credentials import new_key
from serving.lifecycle import ModelHolder
from serving.main import create_app
from serving.model_sources import LocalDirSource, ModelSource
from serving.observability import JsonLogFormatter, MeteredEventLog, ServiceMetrics
from tests.serving.factories import (
    DictFeatureSource,
    FixedClock,
    make_components,
    model_loader,
    write_model_dir,
)
from tests.serving.reliability.wiring import harden

#: Secrets and customer ids used by the suite: none may appear in any log line.
SEEN: set[str] = set()
LOG_DIR = Path(tempfile.mkdtemp(prefix="recsys-reliability-logs-"))


@dataclass(frozen=True)
class Keys:
    publishable: str = field(repr=False)
    secret: str = field(repr=False)
    admin: str = field(repr=False)
    token_secret: str = field(repr=False)

    def records(self) -> list[ApiKeyRecord]:
        return [
            ApiKeyRecord(id="web-shop", scope="publishable", hash=hash_key(self.publishable)),
            ApiKeyRecord(id="crm-backend", scope="secret", hash=hash_key(self.secret)),
            ApiKeyRecord(id="ops", scope="admin", hash=hash_key(self.admin)),
        ]

    def token(self, customer_id: str, ttl: int = 600, secret: str | None = None, **claims) -> str:
        payload = {"sub": customer_id, "exp": int(time.time()) + ttl, **claims}
        token = jwt.encode(payload, secret or self.token_secret, algorithm="HS256")
        SEEN.add(token)
        SEEN.add(customer_id)
        return token

    def headers(self, scope: str, customer_id: str | None = None) -> dict[str, str]:
        out = {"X-API-Key": getattr(self, scope)}
        if customer_id is not None:
            out["X-Customer-Token"] = self.token(customer_id)
        return out


@pytest.fixture(scope="session")
def keys() -> Keys:
    made = Keys(
        publishable=new_key("publishable"),
        secret=new_key("secret"),
        admin=new_key("admin"),
        token_secret=secrets.token_urlsafe(48),
    )
    SEEN.update({made.publishable, made.secret, made.admin, made.token_secret})
    return made


@pytest.fixture(scope="session", autouse=True)
def json_log_file():
    """Every log record of the reliability run, as the service would write it (JSON)."""
    handler = logging.FileHandler(LOG_DIR / "in-process.jsonl", encoding="utf-8")
    handler.setFormatter(JsonLogFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield LOG_DIR
    root.removeHandler(handler)
    root.setLevel(previous)
    handler.close()
    shutil.rmtree(LOG_DIR, ignore_errors=True)


@dataclass
class Stack:
    app: FastAPI
    client: TestClient
    holder: ModelHolder
    log: EventLog
    metrics: ServiceMetrics
    keys: Keys
    features: Any = None
    closers: list[Callable[[], None]] = field(default_factory=list)


def build_stack(
    tmp_path: Path,
    keys: Keys,
    *,
    source: ModelSource | str | None = "local",
    lifecycle: LifecycleSettings | None = None,
    security: SecuritySettings | None = None,
    limits: LimitSettings | None = None,
    environment: str = "test",
    features: Any = None,
    log: EventLog | None = None,
    epsilon: float = 0.0,
    clock=None,
    scorer_wrapper=None,
    serving: ServingSettings | None = None,
    start: bool = True,
    rates: dict | None = None,
    experiment_store: Any = None,
) -> Stack:
    metrics = ServiceMetrics()
    raw_log = log if log is not None else SQLiteEventLog(tmp_path / "events.sqlite")
    event_log = MeteredEventLog(raw_log, metrics)
    store = features if features is not None else DictFeatureSource()
    if source == "local":
        source = LocalDirSource(write_model_dir(tmp_path / "model"))
    assert not isinstance(source, str)
    lifecycle = lifecycle or LifecycleSettings(
        model_cache_dir=tmp_path / "cache", model_poll_seconds=0, compiled_scorer=False
    )
    components = make_components(
        event_log,
        settings=Settings(
            serving=serving or ServingSettings(policy="epsilon_greedy", epsilon=epsilon),
            lifecycle=lifecycle,
            event_log_url=f"sqlite:///{tmp_path / 'events.sqlite'}",
        ),
        features=store,
        source=source,
        observer=metrics,
        clock=clock or FixedClock(),
        load_model=model_loader(scorer_wrapper),
        start=start,
        rates=rates,
        # as in production: experiments live beside the decisions
        experiment_store=experiment_store
        or open_experiment_store(f"sqlite:///{tmp_path / 'events.sqlite'}"),
    )
    holder = components.holder
    app = create_app(components=components, hardened=False)
    settings = Settings(
        environment=environment,
        security=security
        or SecuritySettings(
            api_keys=keys.records(),
            token_secret=keys.token_secret,
            cors_origins=["https://shop.example.com"],
        ),
        limits=limits or LimitSettings(),
        observability=ObservabilitySettings(log_format="json"),
    )
    harden(app, settings, metrics)
    client = TestClient(app, raise_server_exceptions=False)
    client.__enter__()
    return Stack(app, client, holder, event_log, metrics, keys, store)


@pytest.fixture
def stack_factory(tmp_path, keys):
    stacks: list[Stack] = []

    def factory(**kwargs) -> Stack:
        sub = Path(tempfile.mkdtemp(prefix="stack", dir=tmp_path))
        made = build_stack(sub, keys, **kwargs)
        stacks.append(made)
        return made

    yield factory
    for made in stacks:
        made.app.state.components.arms.stop()  # its store poller
        made.holder.stop()
        made.client.__exit__(None, None, None)
        made.log.close()


@pytest.fixture
def stack(stack_factory) -> Stack:
    return stack_factory()


def unreachable_registry_env(monkeypatch) -> None:
    """MLflow gives up on an unreachable tracking server at once (no minutes of retries)."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")


os.environ.setdefault("RECSYS_RELIABILITY_LOG_DIR", str(LOG_DIR))
