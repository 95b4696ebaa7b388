"""GET /v1/reports/offers: admin keys only; the numbers of the hand-counted event log."""

from __future__ import annotations

import pytest

from tests.experiments.offer_log import COUNTS, EXPECTED, T0, UNTIL, record

WINDOW = {"since": T0.isoformat(), "until": UNTIL.isoformat()}


def test_the_offer_report_requires_an_admin_key(stack, keys):
    client = stack.client
    assert client.get("/v1/reports/offers", params=WINDOW).status_code == 401
    for scope in ("publishable", "secret"):
        response = client.get("/v1/reports/offers", params=WINDOW, headers=keys.headers(scope))
        assert response.status_code == 403, (scope, response.text)


def test_an_admin_reads_the_offer_report(stack, keys):
    record(stack.log)
    response = stack.client.get("/v1/reports/offers", params=WINDOW, headers=keys.headers("admin"))
    assert response.status_code == 200, response.text
    body = response.json()
    got = {("all", "all"): tuple(body["total"][c] for c in COUNTS)}
    for dimension in ("offer", "touchpoint", "channel", "stage", "day"):
        for segment in body[dimension]:
            got[(dimension, segment["segment"])] = tuple(segment[c] for c in COUNTS)
    assert got == EXPECTED
    assert body["total"]["accept_rate"]["value"] == pytest.approx(4 / 7)
    assert body["total"]["accept_rate"]["lower"] < 4 / 7 < body["total"]["accept_rate"]["upper"]


def test_a_bad_window_is_a_422_naming_the_field(stack, keys):
    admin = keys.headers("admin")
    backwards = {"since": UNTIL.isoformat(), "until": T0.isoformat()}
    response = stack.client.get("/v1/reports/offers", params=backwards, headers=admin)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "until"
    response = stack.client.get("/v1/reports/offers", params={"since": "soon"}, headers=admin)
    assert response.status_code == 422 and "since" in response.text
