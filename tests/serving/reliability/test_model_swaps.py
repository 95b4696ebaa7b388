"""Damaged models and admin swaps: checksums, re-downloads, remembered refusals, a follow
that is refused changes nothing, a reload that outlasts the request timeout is not a 503.

The registry is a temporary MLflow store (SQLite) holding tiny real LightGBM models in the
layout training logs them, with the checksum tag training sets at registration.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from recsys.scoring.digest import MODEL_DIGEST_TAG
from recsys.settings import LifecycleSettings, LimitSettings
from serving.model import read_model_dir
from serving.model_sources import RegistrySource
from tests.serving.factories import train_tiny_model, write_model_dir
from tests.serving.reliability.test_lifecycle import NAME, Registry, admin_swap, decide


def truncate(folder: Path, fraction: float = 0.5) -> Path:
    model = folder / "model.txt"
    text = model.read_text()
    model.write_text(text[: int(len(text) * fraction)])
    return folder


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    reg = Registry(root)
    good = write_model_dir(root / "m1")
    versions = {"v1": reg.register(good), "v2": reg.register(write_model_dir(root / "m2",
                train_tiny_model(seed=1)))}  # fmt: skip
    versions["truncated"] = reg.register(truncate(write_model_dir(root / "m3")))
    lying = write_model_dir(root / "m4", train_tiny_model(seed=2))
    versions["wrong_checksum"] = reg.register(lying)
    for name, version in versions.items():
        folder = root / {"v1": "m1", "v2": "m2", "truncated": "m3"}.get(name, "m4")
        digest = read_model_dir(folder).digest()
        if name == "wrong_checksum":
            digest = "0" * 64  # the files in the store are not the ones registered
        reg.client.set_model_version_tag(NAME, version, MODEL_DIGEST_TAG, digest)
    reg.promote(versions["v1"])
    return reg, versions


def lifecycle(cache: Path, **kwargs) -> LifecycleSettings:
    return LifecycleSettings(model_cache_dir=cache, model_poll_seconds=0, **kwargs)


def registry_stack(stack_factory, registry, cache: Path, alias: str = "champion", **kwargs):
    reg, _ = registry
    settings = kwargs.pop("lifecycle", None) or lifecycle(cache)
    return stack_factory(source=RegistrySource(reg.uri, NAME, alias), lifecycle=settings, **kwargs)


def model_status(stack) -> dict:
    return stack.client.get("/admin/model", headers=stack.keys.headers("admin")).json()


def refused_count(stack) -> float:
    found = stack.metrics.registry.get_sample_value(
        "recsys_model_swaps_total", {"result": "refused"}
    )
    return found or 0.0


def test_a_download_that_fails_the_registry_checksum_is_refused(stack_factory, registry, tmp_path):
    reg, versions = registry
    stack = registry_stack(stack_factory, registry, tmp_path / "cache")
    reg.promote(versions["wrong_checksum"])
    try:
        response = admin_swap(stack)
    finally:
        reg.promote(versions["v1"])
    assert response.status_code == 409, response.json()
    assert "checksum mismatch: the registry records 000000" in response.json()["detail"]
    assert decide(stack).json()["model"]["version"] == versions["v1"]
    entry = tmp_path / "cache" / stack.holder.source.cache_key
    assert not (entry / f"v{versions['wrong_checksum']}").exists()  # never cached


@pytest.mark.parametrize("damage", ["checksum_fails", "checksum_matches_but_crashes"])
def test_a_damaged_cache_entry_is_discarded_and_downloaded_again(
    stack_factory, registry, tmp_path, damage, caplog
):
    reg, versions = registry
    cache = tmp_path / "cache"
    first = registry_stack(stack_factory, registry, cache)
    entry = cache / first.holder.source.cache_key / f"v{versions['v1']}"
    truncate(entry / "artifacts", 0.3)
    if damage == "checksum_matches_but_crashes":  # damaged in place, its checksum rewritten
        digest_file = entry.with_name(entry.name + ".sha256")
        digest_file.write_text(read_model_dir(entry).digest())
    again = registry_stack(stack_factory, registry, cache)
    status = model_status(again)
    assert status["version"] == versions["v1"] and status["source"] == "registry"
    assert "discarding it and downloading it again" in caplog.text
    assert read_model_dir(entry).digest() == reg_digest(reg, versions["v1"])
    assert decide(again).json()["fallback"] is False


def reg_digest(reg: Registry, version: str) -> str:
    return reg.client.get_model_version(NAME, version).tags[MODEL_DIGEST_TAG]


def test_a_refused_version_is_remembered_by_every_worker_until_an_admin_reload(
    stack_factory, registry, tmp_path
):
    reg, versions = registry
    cache = tmp_path / "cache"
    worker = registry_stack(stack_factory, registry, cache)
    reg.promote(versions["truncated"])
    try:
        first = worker.holder.refresh()  # what the poller does
        assert first.result == "refused" and "the process crashed" in first.detail
        again = worker.holder.refresh()
        assert again.result == "unchanged" and "refused before" in again.detail
        assert refused_count(worker) == 1.0  # not checked a second time
        # Another worker (same model cache) starting now does not try it: the last good copy.
        other = registry_stack(stack_factory, registry, cache)
        status = model_status(other)
        assert (status["version"], status["source"]) == (versions["v1"], "cache")
        assert refused_count(other) == 0.0
        # An operator's reload tries it again (and it is refused again, nothing changes).
        reload = admin_swap(other)
        assert reload.status_code == 409 and reload.json()["result"] == "refused"
        assert refused_count(other) == 1.0
        assert decide(other).json()["model"]["version"] == versions["v1"]
    finally:
        reg.promote(versions["v2"])
    # A new version is tried at once.
    assert worker.holder.refresh().result == "swapped"
    assert decide(worker).json()["model"]["version"] == versions["v2"]
    reg.promote(versions["v1"])


def test_a_refused_follow_changes_neither_the_alias_nor_the_model(
    stack_factory, registry, tmp_path
):
    reg, versions = registry
    stack = registry_stack(stack_factory, registry, tmp_path / "cache")
    typo = admin_swap(stack, "/admin/model/follow", {"alias": "champoin"})
    assert typo.status_code == 409 and typo.json()["result"] == "missing"
    assert typo.json()["model"]["alias"] == "champion"
    reg.promote(versions["truncated"], alias="challenger")
    try:
        refused = admin_swap(stack, "/admin/model/follow", {"alias": "challenger"})
    finally:
        reg.client.delete_registered_model_alias(NAME, "challenger")
    assert refused.status_code == 409 and refused.json()["result"] == "refused"
    status = model_status(stack)
    assert (status["alias"], status["version"]) == ("champion", versions["v1"])
    # The followed alias is still champion: a newly promoted champion is picked up.
    reg.promote(versions["v2"])
    try:
        assert stack.holder.refresh().result == "swapped"
        assert decide(stack).json()["model"]["version"] == versions["v2"]
    finally:
        reg.promote(versions["v1"])


def test_a_reload_slower_than_the_request_timeout_answers_202_then_swaps(
    stack_factory, registry, tmp_path
):
    """As compiling a large model (~13 s) outlasts the 10 s request timeout."""
    reg, versions = registry
    slow = {"seconds": 0.0}

    def slow_load(scorer):
        time.sleep(slow["seconds"])
        return scorer

    stack = registry_stack(
        stack_factory,
        registry,
        tmp_path / "cache",
        lifecycle=lifecycle(tmp_path / "cache", reload_wait_seconds=0.5),
        limits=LimitSettings(request_timeout_seconds=2.0),
        scorer_wrapper=slow_load,
    )
    slow["seconds"] = 3.0
    reg.promote(versions["v2"])
    headers = stack.keys.headers("admin")
    try:
        response = stack.client.post("/admin/model/reload", headers=headers)
        assert response.status_code == 202, response.text
        body = response.json()
        assert body["result"] == "pending" and body["current"] == versions["v1"]
        deadline = time.monotonic() + 120
        while True:
            job = stack.client.get(body["status_url"], headers=headers)
            assert job.status_code == 200 and time.monotonic() < deadline
            if job.json()["state"] == "done":
                break
            time.sleep(0.2)
    finally:
        reg.promote(versions["v1"])
    assert job.json()["status_code"] == 200 and job.json()["outcome"]["result"] == "swapped"
    assert decide(stack).json()["model"]["version"] == versions["v2"]
    unknown = stack.client.get("/admin/model/swaps/nope", headers=headers)
    assert unknown.status_code == 404 and "no model swap 'nope'" in unknown.text


def test_the_last_good_copy_that_fails_its_checksum_is_not_served(
    stack_factory, registry, tmp_path, monkeypatch
):
    _, versions = registry
    cache = tmp_path / "cache"
    first = registry_stack(stack_factory, registry, cache)
    pointer = json.loads((cache / NAME / "last_good.json").read_text())
    truncate(Path(pointer["path"]) / "artifacts", 0.9)  # loads, with fewer trees
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    down = stack_factory(
        source=RegistrySource("http://127.0.0.1:9", NAME, "champion"),
        lifecycle=lifecycle(cache),
    )
    assert first.holder.current.model.info.version == versions["v1"]
    assert model_status(down)["fallback"] is True
    shutil.rmtree(cache)
