"""App fixtures: the real service app on small real parts (SQLite log, tiny LightGBM)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from recsys.eventlog import SQLiteEventLog
from serving.main import create_app
from tests.serving.factories import FixedClock, make_components


def make_client(
    log_path: Path, epsilon: float | None = 0.0, clock: FixedClock | None = None, **serving
) -> TestClient:
    log = SQLiteEventLog(log_path)
    components = make_components(log, epsilon=epsilon, clock=clock, **serving)
    return TestClient(create_app(components=components), raise_server_exceptions=False)


@pytest.fixture
def client_factory(tmp_path) -> Callable[..., TestClient]:
    clients: list[TestClient] = []

    def factory(name: str = "events.sqlite", **kwargs) -> TestClient:
        client = make_client(tmp_path / name, **kwargs)
        client.__enter__()
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)
        client.app.state.components.event_log.close()


@pytest.fixture
def client(client_factory) -> TestClient:
    return client_factory()


# ---------------------------------------------------------------- the real stack, small
# demo_env (the generated demo, loaded, materialised, a tiny LightGBM): tests/conftest.py


@pytest.fixture
def real_client(demo_env, tmp_path):
    """The service (``create_app`` from settings) on the demo data, its own event log."""
    from recsys.settings import ServingSettings

    settings = demo_env["settings"].model_copy(
        update={"event_log_url": f"sqlite:///{tmp_path / 'events.sqlite'}"}
    )
    serving = ServingSettings(model_dir=demo_env["model_dir"])  # the default policy
    with TestClient(
        create_app(settings.model_copy(update={"serving": serving})), raise_server_exceptions=False
    ) as client:
        yield client
