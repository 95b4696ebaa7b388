"""Arms that run other registry models (by alias or by version) beside the champion."""

from __future__ import annotations

import json

import pytest

from experiments.definition import parse_experiment
from experiments.store import open_experiment_store
from recsys.settings import LifecycleSettings
from serving.model_sources import RegistrySource
from tests.experiments.factories import definition
from tests.serving.factories import train_tiny_model, write_model_dir
from tests.serving.reliability.test_lifecycle import NAME, Registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("arm-registry")
    reg = Registry(root)
    versions = [
        reg.register(write_model_dir(root / f"m{seed}", train_tiny_model(seed=seed)))
        for seed in (0, 1, 2)
    ]
    reg.promote(versions[0])
    reg.promote(versions[1], "challenger")
    return reg, versions


def test_arms_decide_with_the_model_they_name(stack_factory, registry, tmp_path):
    reg, (v1, v2, v3) = registry
    store = open_experiment_store(f"sqlite:///{tmp_path / 'experiments.sqlite'}")
    stack = stack_factory(
        source=RegistrySource(reg.uri, NAME, "champion"),
        lifecycle=LifecycleSettings(
            model_cache_dir=tmp_path / "cache", model_poll_seconds=0, compiled_scorer=False
        ),
        experiment_store=store,
    )
    arms = [
        {"name": "control", "kind": "control", "share": 0.34},
        {"name": "by-alias", "share": 0.33, "model": {"alias": "challenger"}},
        {"name": "by-version", "share": 0.33, "model": {"version": int(v3)}},
    ]
    store.create(parse_experiment(definition(arms=arms)), "test")
    store.transition("exp-home", "start", "test")
    stack.app.state.components.arms.refresh()
    seen: dict[str, set[str]] = {}
    for i in range(60):
        body = stack.client.post(
            "/v1/decisions",
            json={"customer_id": f"v{i}", "touchpoint": "web_home"},
            headers=stack.keys.headers("secret"),
        ).json()
        seen.setdefault(body["experiment"]["arm"], set()).add(body["model"]["version"])
        assert not body["fallback"]
    assert seen == {"control": {v1}, "by-alias": {v2}, "by-version": {v3}}
    # the arms' models never stand in for the champion's last good copy
    pointer = json.loads((tmp_path / "cache" / NAME / "last_good.json").read_text())
    assert pointer["version"] == v1


def test_an_experiment_whose_model_cannot_load_is_not_applied(stack_factory, registry, tmp_path):
    reg, _ = registry
    store = open_experiment_store(f"sqlite:///{tmp_path / 'experiments.sqlite'}")
    stack = stack_factory(
        source=RegistrySource(reg.uri, NAME, "champion"),
        lifecycle=LifecycleSettings(
            model_cache_dir=tmp_path / "cache", model_poll_seconds=0, compiled_scorer=False
        ),
        experiment_store=store,
    )
    arms = [
        {"name": "control", "kind": "control", "share": 0.5},
        {"name": "ghost", "share": 0.5, "model": {"alias": "no-such-alias"}},
    ]
    store.create(parse_experiment(definition(arms=arms)), "test")
    store.transition("exp-home", "start", "test")
    components = stack.app.state.components
    components.arms.refresh()
    assert components.arms.status()["running"] == []
    assert "experiment exp-home not applied" in components.arms.last_error
    body = stack.client.post(
        "/v1/decisions",
        json={"customer_id": "c1", "touchpoint": "web_home"},
        headers=stack.keys.headers("secret"),
    ).json()
    assert body["experiment"] is None
    shown = stack.client.get("/admin/experiments/exp-home", headers=stack.keys.headers("admin"))
    assert shown.json()["status"] == "running"
    assert shown.json()["applied"] is False
    assert "model @no-such-alias" in shown.json()["serving_error"]
    # the alias gets a version: the next poll applies the experiment
    reg.promote(reg.client.get_model_version_by_alias(NAME, "champion").version, "no-such-alias")
    try:
        assert components.arms.refresh()
        assert components.arms.last_error is None
        assert components.arms.status()["running"] == ["exp-home"]
    finally:
        reg.client.delete_registered_model_alias(NAME, "no-such-alias")
