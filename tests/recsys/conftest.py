"""Factories for small, valid contract folders that tests then break on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest

VALID_FILES: dict[str, str] = {
    "customers.csv": (
        "customer_id,created_at,email_opt_in,sms_opt_in,region\n"
        "C1,2025-01-01,true,false,north\n"
        "C2,2025-02-01T10:00:00+02:00,false,true,south\n"
        "C3,2025-02-03 08:30:00,true,true,north\n"
    ),
    "touchpoints.yaml": (
        "- {touchpoint_id: web_home, channel: web, stage: awareness, slots: 2}\n"
        "- {touchpoint_id: email_weekly, channel: email, stage: consideration, mode: batch,"
        " consent_column: email_opt_in}\n"
    ),
    "offers.yaml": (
        "- offer_id: O1\n"
        "  name: Ten off shoes\n"
        "  offer_type: discount\n"
        "  category: shoes\n"
        "  value: 10\n"
        "  touchpoints: [web_home, email_weekly]\n"
        "  cap_per_customer: 2\n"
        "  cap_window_days: 7\n"
        "  eligibility: [{feature: region, op: in, value: [north]}]\n"
        "- {offer_id: O2, name: Style guide, offer_type: content, fallback: true}\n"
    ),
    "transactions.csv": (
        "transaction_id,customer_id,ts,amount,category,channel\n"
        "T1,C1,2025-02-10T12:00:00Z,49.90,shoes,web\n"
        "T2,C2,2025-02-11T09:00:00Z,15.00,bags,store\n"
    ),
    "interactions.csv": (
        "customer_id,ts,touchpoint_id,event_type,value\n"
        "C1,2025-02-12T10:00:00Z,web_home,page_view,\n"
        "C2,2025-02-13T10:00:00Z,email_weekly,nps,9\n"
    ),
    "decisions.csv": (
        "decision_id,ts,touchpoint_id,offer_id,customer_id,position,propensity,policy,context\n"
        'D1,2025-03-01T10:00:00Z,web_home,O1,C1,1,0.5,rules,"{""device"": ""mobile""}"\n'
        "D1,2025-03-01T10:00:00Z,web_home,O2,C1,2,0.5,rules,\n"
        "D2,2025-03-02T10:00:00Z,web_home,O1,,1,1.0,rules,\n"
    ),
    "outcomes.csv": (
        "decision_id,offer_id,ts,outcome,revenue\nD1,O1,2025-03-01T10:05:00,accept,12.5\n"
    ),
}


def write_folder(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


@pytest.fixture
def valid_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "batch", VALID_FILES)
