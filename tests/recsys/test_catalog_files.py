"""A catalogue folder (``serving.catalog_source``) is read as ``data load`` reads its files."""

from __future__ import annotations

import pytest

from recsys.catalog import load_catalog
from recsys.errors import ContractError, NotFoundError

TOUCHPOINTS = "- {touchpoint_id: web_home, channel: web, stage: awareness, slots: 2}\n"
OFFERS_CSV = (
    "offer_id,name,offer_type,category,value,touchpoints\n"
    "O1,Ten off shoes,discount,shoes,10,web_home\n"
    "O2,Book club,loyalty_reward,books,3,web_home\n"
)


def test_a_csv_saved_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    (tmp_path / "touchpoints.yaml").write_text(TOUCHPOINTS, encoding="utf-8")
    (tmp_path / "offers.csv").write_text(OFFERS_CSV, encoding="utf-8-sig")  # Excel's "CSV UTF-8"
    catalog = load_catalog(tmp_path)
    assert sorted(catalog.offers) == ["O1", "O2"]
    assert catalog.offers["O1"].value == 10.0 and catalog.offers["O1"].touchpoints == ("web_home",)


def test_a_table_given_in_two_files_is_refused_naming_both(tmp_path):
    (tmp_path / "touchpoints.yaml").write_text(TOUCHPOINTS, encoding="utf-8")
    (tmp_path / "offers.csv").write_text(OFFERS_CSV, encoding="utf-8")
    (tmp_path / "offers.yaml").write_text("[]\n", encoding="utf-8")
    with pytest.raises(
        ContractError, match=r"table 'offers' given twice \(offers.csv, offers.yaml\)"
    ):
        load_catalog(tmp_path)


def test_a_missing_table_is_named(tmp_path):
    (tmp_path / "touchpoints.yaml").write_text(TOUCHPOINTS, encoding="utf-8")
    with pytest.raises(NotFoundError, match=r"offers.\{yaml,yml,parquet,csv\} must exist"):
        load_catalog(tmp_path)
