"""``recsys serve --workers 2``: uvicorn's own worker processes serve the decision service."""

from __future__ import annotations

import json
import re

from tests.serving.services import call, running_service


def test_recsys_serve_with_two_workers_serves_decisions(demo_env, tmp_path):
    with running_service(demo_env, tmp_path, workers=2) as service:
        base = service.base
        customers = sorted(demo_env["customers"])[:20]
        for customer in customers:
            status, body = call(
                "POST", f"{base}/v1/decisions", {"customer_id": customer, "touchpoint": "web_home"}
            )
            assert status == 200, body
            assert json.loads(body)["customer_id"] == customer
        status, body = call("POST", f"{base}/v1/decisions", {"customer_id": 7})
        assert status == 422 and json.loads(body)["errors"][0]["field"] == "customer_id"
        metrics = call("GET", f"{base}/metrics")[1].decode()
        assert "recsys_http_request_duration_seconds" in metrics  # summed over the workers
    workers = set(re.findall(r"Started server process \[(\d+)\]", service.output))
    assert len(workers) == 2, service.output[-3000:]
