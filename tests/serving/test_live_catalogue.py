"""The live catalogue in one process: a changed source is swapped in whole, a faulty one is
refused, and decisions never mix two catalogues (real components, a catalogue folder)."""

from __future__ import annotations

import threading
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from recsys.eventlog import SQLiteEventLog
from serving.catalogue import CatalogRefused, source_signal
from serving.main import create_app
from tests.serving.factories import OFFERS, TOUCHPOINTS, make_catalog, make_components


class Swaps:
    def __init__(self) -> None:
        self.results: list[str] = []

    def catalog_swap(self, result: str) -> None:
        self.results.append(result)


def write_catalogue(folder: Path, offers: list[dict], touchpoints: list[dict] = TOUCHPOINTS):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "offers.yaml").write_text(yaml.safe_dump(offers), encoding="utf-8")
    (folder / "touchpoints.yaml").write_text(yaml.safe_dump(list(touchpoints)), encoding="utf-8")


def renamed(suffix: str, ids: set[str] | None = None) -> list[dict]:
    """The factories' offers renamed ``name-suffix``; only ``ids`` shown (others: app only)."""
    out = []
    for offer in OFFERS:
        o = {**offer, "name": f"{offer['name']}-{suffix}"}
        if ids is not None and o["offer_id"] not in ids and not o.get("fallback"):
            o["touchpoints"] = ["app_home"]
        out.append(o)
    return out


def live_components(tmp_path: Path, offers: list[dict], observer: Swaps | None = None):
    folder = tmp_path / "catalogue"
    write_catalogue(folder, offers)
    seen = source_signal(folder)
    from recsys.catalog import load_catalog

    return make_components(
        SQLiteEventLog(tmp_path / "events.sqlite"),
        catalog=load_catalog(folder),
        catalog_source=(folder, seen),
        catalog_observer=observer,
    ), folder


def test_a_changed_catalogue_is_served_by_the_next_decision(tmp_path):
    swaps = Swaps()
    components, folder = live_components(tmp_path, renamed("v1"), swaps)
    client = TestClient(create_app(components=components))
    with client:
        before = client.get("/v1/offers/o_tv").json()
        write_catalogue(folder, renamed("v2"))
        swap = components.catalogue.refresh()
        after = client.get("/v1/offers/o_tv").json()
        decision = client.post(
            "/v1/decisions", json={"customer_id": "c1", "touchpoint": "web_home"}
        )
        again = components.catalogue.refresh()  # the source did not change since
    components.close()

    assert before["name"] == "TV deal-v1"
    assert swap.result == "swapped" and swap.previous == before["catalog_version"]
    assert after["name"] == "TV deal-v2" and after["catalog_version"] == swap.current
    names = [o["name"] for o in decision.json()["offers"]]
    assert names and all(n.endswith("-v2") for n in names)
    assert again.result == "unchanged"
    assert swaps.results == ["swapped"]


def test_a_faulty_catalogue_is_refused_and_the_old_one_kept(tmp_path):
    swaps = Swaps()
    components, folder = live_components(tmp_path, renamed("v1"), swaps)
    served = components.catalog
    broken = renamed("v2")
    broken[0]["touchpoints"] = ["web_hme"]  # no such touchpoint
    write_catalogue(folder, broken)

    swap = components.catalogue.refresh()
    retried = components.catalogue.refresh()  # not tried again until the source changes
    status = components.catalogue.status()
    components.close()

    assert swap.result == "refused" and "web_hme" in swap.detail
    assert components.catalog is served
    assert retried.result == "unchanged"
    assert status["version"] == served.version and "web_hme" in status["last_error"]
    assert swaps.results == ["refused"]


def test_a_catalogue_the_checks_refuse_is_never_half_applied(tmp_path):
    components, folder = live_components(tmp_path, renamed("v1"))
    pipeline, arms_catalog = components.pipeline, components.arms.catalog

    def refuse(new, old):
        raise CatalogRefused("offer 'o_tv': rule names feature 'loyalty_teir'")

    components.check_catalog = refuse
    write_catalogue(folder, renamed("v2"))
    swap = components.catalogue.refresh()
    components.close()

    assert swap.result == "refused" and "loyalty_teir" in swap.detail
    assert components.pipeline is pipeline and components.arms.catalog is arms_catalog


def test_decisions_during_swaps_see_one_catalogue_or_the_other(tmp_path):
    """Two catalogues with different names and candidates swapped back and forth while
    decisions run: every decision's offers are all of one version."""
    shown = {"a": {"o_tv", "o_dress"}, "b": {"o_sofa"}}
    versions = {k: make_catalog(renamed(k, ids)) for k, ids in shown.items()}
    components, _ = live_components(tmp_path, renamed("a", shown["a"]))
    stop = threading.Event()
    failures: list[str] = []

    def swapper() -> None:
        k = 0
        while not stop.is_set():
            components.use_catalog(versions["ab"[k % 2]])
            k += 1

    thread = threading.Thread(target=swapper)
    thread.start()
    seen: set[str] = set()
    try:
        for i in range(300):
            decision = components.decide([_request(f"c{i % 3 + 1}")])[0]
            suffixes = {o.name.rsplit("-", 1)[1] for o in decision.offers}
            ids = {o.offer_id for o in decision.offers}
            if len(suffixes) != 1 or not ids <= shown[next(iter(suffixes))] | _fallbacks():
                failures.append(f"{ids} named {suffixes}")
            seen |= suffixes
    finally:
        stop.set()
        thread.join()
        components.close()

    assert not failures, failures[:5]
    assert seen == {"a", "b"}  # both versions served while swapping


def _request(customer: str):
    from recsys.decision import DecisionRequest

    return DecisionRequest(customer, "web_home", limit=2)


def _fallbacks() -> set[str]:
    return {o["offer_id"] for o in OFFERS if o.get("fallback")}


def test_get_offer_names_an_unknown_id(client):
    response = client.get("/v1/offers/o_nope")

    assert response.status_code == 404
    body = response.json()
    assert body["errors"][0]["field"] == "offer_id"
    assert body["errors"][0]["received"] == "o_nope" and "o_nope" in body["detail"]


def test_put_offer_on_a_service_without_a_catalogue_source_is_refused(client):
    response = client.put("/admin/offers/o_tv", json={"name": "x", "offer_type": "discount"})

    # not a passing fault to retry: this service's catalogue cannot change
    assert response.status_code == 404
    assert "does not follow a catalogue source" in response.json()["detail"]
