"""A running 2-worker service follows offers edited by ``recsys data load`` and by
``PUT /admin/offers/{id}``: every worker serves the new version within seconds, no restart."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import yaml

from tests.serving.services import call, running_service

#: How long every worker may take to serve a change (the poll is 0.5 s here).
WITHIN_SECONDS = 20.0


def every_worker_serves(base: str, offer_id: str, name: str) -> float:
    """Seconds until both workers serve ``name`` for ``offer_id`` (each worker says its pid
    on /admin/catalog) and 20 offer reads and 20 decisions in a row show no other name."""
    started = time.monotonic()
    versions: dict[int, str] = {}
    while time.monotonic() - started < WITHIN_SECONDS:
        offer = json.loads(call("GET", f"{base}/v1/offers/{offer_id}")[1])
        status = json.loads(call("GET", f"{base}/admin/catalog")[1])
        versions[status["worker"]] = status["version"]
        if (
            offer["name"] == name
            and len(versions) == 2
            and set(versions.values()) == {offer["catalog_version"]}
        ):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"not every worker serves {name!r} within {WITHIN_SECONDS} s")
    seconds = time.monotonic() - started
    for _ in range(20):
        assert json.loads(call("GET", f"{base}/v1/offers/{offer_id}")[1])["name"] == name
    return seconds


def test_offers_edited_by_data_load_and_put_reach_every_worker(demo_env, tmp_path):
    warehouse = tmp_path / "warehouse.duckdb"
    shutil.copy(demo_env["db"], warehouse)  # the session's warehouse stays as it was
    offers = yaml.safe_load((demo_env["root"] / "demo" / "offers.yaml").read_text())
    edited, same = dict(offers[0]), offers[1]
    offer_id = edited["offer_id"]
    with running_service(
        demo_env,
        tmp_path,
        workers=2,
        RECSYS_WAREHOUSE_PATH=str(warehouse),
        RECSYS_SERVING__CATALOG_POLL_SECONDS="0.5",
    ) as service:
        base, env = service.base, service.env
        assert json.loads(call("GET", f"{base}/v1/offers/{offer_id}")[1])["name"] == edited["name"]

        # 1. recsys data load of an edited offer, an unchanged one and a new one
        edited["name"] = "Loaded v2"
        new = {**same, "offer_id": "OF_NEW", "name": "Brand new"}
        folder = tmp_path / "batch"
        folder.mkdir()
        (folder / "offers.yaml").write_text(yaml.safe_dump([edited, same, new]))
        loaded = subprocess.run(
            [sys.executable, "-m", "recsys", "data", "load", str(folder), "--db", str(warehouse)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        row = next(line for line in loaded.stdout.splitlines() if line.startswith("offers"))
        assert row.split()[1:6] == ["3", "1", "1", "1", "0"], loaded.stdout  # read new upd unch dup
        every_worker_serves(base, offer_id, "Loaded v2")
        assert json.loads(call("GET", f"{base}/v1/offers/OF_NEW")[1])["name"] == "Brand new"

        # 2. PUT /admin/offers/{id}: stored in the warehouse, served by every worker
        body = {**edited, "name": "Put v3", "headline": "Now 12% off"}
        status, answer = call("PUT", f"{base}/admin/offers/{offer_id}", body)
        assert status == 200, answer
        stored = json.loads(answer)
        assert stored["result"] == "updated" and stored["offer"]["name"] == "Put v3"
        assert stored["offer"]["attributes"]["headline"] == "Now 12% off"
        every_worker_serves(base, offer_id, "Put v3")
        decided = call("POST", f"{base}/v1/decisions",
                       {"customer_id": sorted(demo_env["customers"])[0], "touchpoint": "web_home"})  # fmt: skip
        assert decided[0] == 200 and "Loaded v2" not in decided[1].decode()

        # 3. refused edits name their field and change nothing
        version = stored["catalog"]["version"]
        for change, field in [
            ({"offer_type": "coupon"}, "offer_type"),
            ({"touchpoints": ["nowhere"]}, "touchpoints"),
            ({"value": -1}, "value"),
            ({"eligibility": [{"feature": "loyalty_teir", "op": "==", "value": "gold"}]},
             "eligibility"),
            ({"name": None}, "name"),
        ]:  # fmt: skip
            status, answer = call("PUT", f"{base}/admin/offers/{offer_id}", {**body, **change})
            assert status == 422, (change, answer)
            assert field in [e["field"].split(".")[-1] for e in json.loads(answer)["errors"]], (
                answer
            )
        status, answer = call("GET", f"{base}/admin/catalog")
        assert json.loads(answer)["version"] == version
        missing = call("GET", f"{base}/v1/offers/NO_SUCH")
        assert missing[0] == 404 and "NO_SUCH" in json.loads(missing[1])["detail"]
    assert "Traceback" not in service.output, service.output[-3000:]
