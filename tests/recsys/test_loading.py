"""Loading contract files into the warehouse: refusals, atomicity, idempotence, appends."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from recsys import warehouse
from recsys.cli import app
from recsys.errors import ContractError
from recsys.loading import load_directory
from tests.recsys.conftest import VALID_FILES, write_folder


def _replace(file: str, old: str, new: str):
    def mutate(files: dict) -> None:
        assert old in files[file], f"test setup: {old!r} not in {file}"
        files[file] = files[file].replace(old, new)

    return mutate


def _set(file: str, content):
    def mutate(files: dict) -> None:
        files[file] = content

    return mutate


BAD_INPUTS = [
    (
        "missing column",
        _replace("transactions.csv", "ts,amount,", "ts,total,"),
        "transactions.csv, column 'amount': required column is missing",
    ),
    (
        "bad enum",
        _replace("offers.yaml", "offer_type: discount", "offer_type: coupon"),
        "offers.yaml, row 1, column 'offer_type': expected one of discount, cross_sell, upsell, "
        "loyalty_reward, service, content, got 'coupon'",
    ),
    (
        "duplicate key",
        _replace("customers.csv", "C3,2025-02-03", "C2,2025-02-03"),
        "customers.csv, row 3, column 'customer_id': duplicate key 'C2'; each must be unique",
    ),
    (
        "duplicate composite key",
        _set(
            "decisions.csv",
            VALID_FILES["decisions.csv"] + "D2,2025-03-02T10:00:00Z,web_home,O1,,1,1.0,rules,\n",
        ),
        "decisions.csv, row 4, column 'decision_id, offer_id': duplicate key ('D2', 'O1'); "
        "each must be unique",
    ),
    (
        "unparseable timestamp",
        _replace("transactions.csv", "2025-02-11T09:00:00Z", "yesterday"),
        "transactions.csv, row 2, column 'ts': expected an ISO 8601 timestamp, got 'yesterday'",
    ),
    (
        "dangling outcome",
        _replace("outcomes.csv", "D1,O1,", "D9,O1,"),
        "outcomes.csv, row 1, column 'decision_id, offer_id': unknown ('D9', 'O1'): "
        "not found in decisions.decision_id, offer_id",
    ),
    (
        "dangling customer",
        _replace("transactions.csv", "T2,C2", "T2,C77"),
        "transactions.csv, row 2, column 'customer_id': unknown 'C77': "
        "not found in customers.customer_id",
    ),
    (
        "dangling touchpoint in offer",
        _replace("offers.yaml", "[web_home, email_weekly]", "[web_home, web_cart]"),
        "offers.yaml, row 1, column 'touchpoints': unknown touchpoint 'web_cart': "
        "not found in touchpoints.touchpoint_id",
    ),
    (
        "negative value",
        _replace("offers.yaml", "value: 10", "value: -5"),
        "offers.yaml, row 1, column 'value': expected a value >= 0, got -5.0",
    ),
    (
        "zero propensity",
        _replace("decisions.csv", "1,1.0,rules", "1,0,rules"),
        "decisions.csv, row 3, column 'propensity': expected a value > 0, got 0.0",
    ),
    (
        "missing required value",
        _replace("transactions.csv", "2025-02-11T09:00:00Z,15.00", "2025-02-11T09:00:00Z,"),
        "transactions.csv, row 2, column 'amount': a value is required, got nothing",
    ),
    (
        "bad boolean",
        _replace("customers.csv", "C1,2025-01-01,true", "C1,2025-01-01,maybe"),
        "customers.csv, row 1, column 'email_opt_in': expected a boolean (true/false), got 'maybe'",
    ),
    (
        "bad JSON",
        _replace("decisions.csv", '"{""device"": ""mobile""}"', "{device}"),
        "decisions.csv, row 1, column 'context': expected a JSON object, got '{device}'",
    ),
    (
        "bad eligibility op",
        _replace("offers.yaml", "op: in", "op: like"),
        "offers.yaml, row 1, column 'eligibility': expected a list of {feature, op, value} with op "
        "in == != < <= > >= in not_in",
    ),
    (
        "empty file",
        _set("customers.csv", ""),
        "customers.csv: file is empty; expected a header row with columns customer_id",
    ),
    (
        "wrong encoding",
        _set(
            "customers.csv", VALID_FILES["customers.csv"].replace("south", "süd").encode("latin-1")
        ),
        "customers.csv, row 2: not UTF-8 text: invalid byte 0xfc on line 3; expected UTF-8",
    ),
    (
        "YAML not a list",
        _set("touchpoints.yaml", "touchpoint_id: web_home\n"),
        "touchpoints.yaml: expected a YAML list of mappings (one per row), got dict",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "message"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_refused_with_file_row_column_and_reason(tmp_path, case, mutate, message):
    files = dict(VALID_FILES)
    mutate(files)
    folder = write_folder(tmp_path / "batch", files)
    con = warehouse.connect(":memory:")

    with pytest.raises(ContractError) as refused:
        load_directory(folder, con)

    assert message in str(refused.value)
    assert all(
        con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 0
        for t in ("customers", "offers", "decisions", "outcomes")
    )


def test_valid_folder_loads_with_types_and_defaults(valid_folder):
    con = warehouse.connect(":memory:")
    summary = load_directory(valid_folder, con)

    assert {t.table: t.rows_new for t in summary.tables} == {
        "customers": 3,
        "offers": 2,
        "touchpoints": 2,
        "transactions": 2,
        "interactions": 2,
        "decisions": 3,
        "outcomes": 1,
    }
    # "+02:00" converted to UTC; naive read as UTC.
    created = dict(con.execute("SELECT customer_id, created_at FROM customers").fetchall())
    assert created["C2"] == pd.Timestamp("2025-02-01 08:00:00")
    assert created["C3"] == pd.Timestamp("2025-02-03 08:30:00")
    fallback = con.execute(
        "SELECT value, weight, touchpoints, eligibility FROM offers WHERE offer_id = 'O2'"
    ).fetchone()
    assert fallback == (1.0, 1.0, [], "[]")  # contract defaults
    region = con.execute("SELECT region FROM customers WHERE customer_id = 'C1'").fetchone()
    assert region == ("north",)  # extra attributes are kept
    anonymous = con.execute("SELECT customer_id FROM decisions WHERE decision_id = 'D2'").fetchone()
    assert anonymous == (None,)


def test_many_problems_report_first_ones_and_count_the_rest(tmp_path):
    rows = "".join(f"T{i},C1,not-a-time,1.0,shoes,web\n" for i in range(50))
    files = dict(VALID_FILES)
    files["transactions.csv"] = "transaction_id,customer_id,ts,amount,category,channel\n" + rows
    folder = write_folder(tmp_path / "batch", files)

    with pytest.raises(ContractError) as refused:
        load_directory(folder, warehouse.connect(":memory:"))

    assert refused.value.total == 50
    assert "refused, 50 problem(s)" in str(refused.value)
    assert "... and 30 more problems" in str(refused.value)


def test_failed_load_leaves_the_warehouse_as_it_was(tmp_path, valid_folder):
    db = tmp_path / "wh.duckdb"
    con = warehouse.connect(db)
    load_directory(valid_folder, con)
    before = {
        t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        for t in ("customers", "offers", "decisions", "outcomes", "transactions")
    }

    files = dict(VALID_FILES)
    # A new valid customer and new transactions, but one dangling outcome: all refused.
    files["customers.csv"] += "C4,2025-03-01,true,true,east\n"
    files["transactions.csv"] += "T3,C4,2025-03-02T10:00:00Z,10.0,bags,app\n"
    files["outcomes.csv"] += "D404,O1,2025-03-01T10:05:00,click,\n"
    with pytest.raises(ContractError):
        load_directory(write_folder(tmp_path / "bad", files), con)

    after = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in before}
    assert after == before
    con.close()
    reopened = warehouse.connect(db, read_only=True)
    assert reopened.execute("SELECT count(*) FROM customers").fetchone()[0] == 3


def test_reloading_the_same_files_adds_nothing(valid_folder):
    con = warehouse.connect(":memory:")
    load_directory(valid_folder, con)
    again = load_directory(valid_folder, con)

    assert all(t.rows_new == 0 for t in again.tables)
    assert con.execute("SELECT count(*) FROM decisions").fetchone()[0] == 3
    assert con.execute("SELECT count(*) FROM interactions").fetchone()[0] == 2


def test_newer_batch_appends_only_new_rows_and_updates_the_catalogue(tmp_path, valid_folder):
    con = warehouse.connect(":memory:")
    load_directory(valid_folder, con)

    newer = {
        # overlaps the first batch by one row each
        "transactions.csv": VALID_FILES["transactions.csv"]
        + "T3,C3,2025-03-05T12:00:00Z,99.00,coats,app\n",
        "decisions.csv": "decision_id,ts,touchpoint_id,offer_id,customer_id,position,propensity\n"
        "D2,2025-03-02T10:00:00Z,web_home,O1,,1,1.0\n"
        "D3,2025-03-06T10:00:00Z,email_weekly,O1,C3,1,0.25\n",
        "outcomes.csv": "decision_id,offer_id,ts,outcome\n"
        "D3,O1,2025-03-06T11:00:00,click\nD1,O1,2025-03-01T10:05:00,accept\n",
        "offers.yaml": "- {offer_id: O2, name: Style guide v2, offer_type: content, fallback: true}\n",
    }
    summary = load_directory(write_folder(tmp_path / "newer", newer), con)

    new_rows = {t.table: t.rows_new for t in summary.tables}
    assert new_rows == {"offers": 0, "transactions": 1, "decisions": 1, "outcomes": 1}
    assert con.execute("SELECT count(*) FROM transactions").fetchone()[0] == 3
    assert con.execute("SELECT count(*) FROM outcomes").fetchone()[0] == 2
    assert con.execute("SELECT name FROM offers WHERE offer_id = 'O2'").fetchone() == (
        "Style guide v2",
    )
    assert con.execute("SELECT count(*) FROM offers").fetchone()[0] == 2


def test_parquet_and_csv_load_the_same_rows(tmp_path, valid_folder):
    as_parquet = tmp_path / "parquet"
    write_folder(as_parquet, {k: v for k, v in VALID_FILES.items() if k.endswith(".yaml")})
    for name in ("customers", "transactions", "interactions", "decisions", "outcomes"):
        frame = pd.read_csv(
            valid_folder / f"{name}.csv", dtype=str, keep_default_na=False, na_values=[""]
        )
        frame.to_parquet(as_parquet / f"{name}.parquet")
    con_csv, con_parquet = warehouse.connect(":memory:"), warehouse.connect(":memory:")
    load_directory(valid_folder, con_csv)
    load_directory(as_parquet, con_parquet)

    query = "SELECT * FROM decisions ORDER BY decision_id, offer_id"
    assert con_csv.execute(query).fetchall() == con_parquet.execute(query).fetchall()


def test_cli_load_refusal_exits_non_zero_with_the_report(tmp_path):
    files = dict(VALID_FILES)
    files["offers.yaml"] = files["offers.yaml"].replace("offer_type: discount", "offer_type: x")
    folder = write_folder(tmp_path / "batch", files)
    db = tmp_path / "wh.duckdb"

    result = CliRunner().invoke(app, ["data", "load", str(folder), "--db", str(db)])

    assert result.exit_code == 1
    assert "column 'offer_type': expected one of discount" in result.output


def test_cli_load_then_summary(tmp_path, valid_folder):
    db = tmp_path / "wh.duckdb"
    runner = CliRunner()
    loaded = runner.invoke(app, ["data", "load", str(valid_folder), "--db", str(db)])
    summary = runner.invoke(app, ["data", "summary", "--db", str(db)])

    assert loaded.exit_code == 0, loaded.output
    assert summary.exit_code == 0, summary.output
    assert "decisions" in summary.output
    assert re.search(r"^decisions\s+3\s", summary.output, re.MULTILINE)
    assert "customers with no history" in summary.output


def test_missing_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ContractError, match="expected a folder of contract files"):
        load_directory(tmp_path / "nope", warehouse.connect(":memory:"))


def test_transactions_without_an_id_are_deduplicated_by_their_columns(tmp_path, valid_folder):
    con = warehouse.connect(":memory:")
    load_directory(valid_folder, con)
    rows = "customer_id,ts,amount,category\nC1,2025-03-01T10:00:00Z,5.0,books\n"
    load_directory(write_folder(tmp_path / "b1", {"transactions.csv": rows}), con)
    again = load_directory(
        write_folder(
            tmp_path / "b2", {"transactions.csv": rows + "C1,2025-03-01T11:00:00Z,5.0,books\n"}
        ),
        con,
    )

    assert again.tables[0].rows_new == 1
    assert con.execute("SELECT count(*) FROM transactions").fetchone()[0] == 4


# ------------------------------------------------- rows without an id: content + ordinal

PURCHASES = (
    "customer_id,ts,amount\n"
    "C1,2025-03-01,4.50\n"
    "C1,2025-03-01,4.50\n"  # the same coffee twice on one day: two purchases
    "C2,2025-03-01,10.00\n"
    "C1,2025-03-01,4.50\n"
)


def test_identical_purchases_without_an_id_are_all_kept_and_a_reload_adds_nothing(
    tmp_path, valid_folder
):
    con = warehouse.connect(":memory:")
    load_directory(valid_folder, con)
    stored = con.execute("SELECT count(*) FROM transactions").fetchone()[0]
    folder = write_folder(tmp_path / "shop", {"transactions.csv": PURCHASES})

    first = load_directory(folder, con).tables[0]
    again = load_directory(folder, con).tables[0]

    assert (first.rows_read, first.rows_new, first.rows_unchanged) == (4, 4, 0)
    assert first.duplicates == 0
    assert (again.rows_new, again.rows_unchanged, again.duplicates) == (0, 4, 0)
    coffees = con.execute(
        "SELECT count(*), sum(amount) FROM transactions WHERE customer_id = 'C1' "
        "AND transaction_id IS NULL"
    ).fetchone()
    assert coffees == (3, 13.5)
    assert con.execute("SELECT count(*) FROM transactions").fetchone()[0] == stored + 4


def test_a_later_file_with_one_more_identical_purchase_adds_one(tmp_path, valid_folder):
    con = warehouse.connect(":memory:")
    load_directory(valid_folder, con)
    load_directory(write_folder(tmp_path / "a", {"transactions.csv": PURCHASES}), con)
    more = PURCHASES + "C1,2025-03-01,4.50\n"
    summary = load_directory(write_folder(tmp_path / "b", {"transactions.csv": more}), con)

    assert (summary.tables[0].rows_new, summary.tables[0].rows_unchanged) == (1, 4)
    assert "1" in summary.format().splitlines()[1]


def test_identical_interactions_without_an_event_id_are_kept(tmp_path, valid_folder):
    con = warehouse.connect(":memory:")
    load_directory(valid_folder, con)
    before = con.execute("SELECT count(*) FROM interactions").fetchone()[0]
    rows = "customer_id,ts,touchpoint_id,event_type,value\n" + (
        "C1,2025-03-01T10:00:00Z,web_home,page_view,1\n" * 2
    )
    folder = write_folder(tmp_path / "i", {"interactions.csv": rows})
    load_directory(folder, con)
    again = load_directory(folder, con)

    assert con.execute("SELECT count(*) FROM interactions").fetchone()[0] == before + 2
    assert again.tables[0].rows_new == 0


def test_an_offer_whose_attribute_is_left_out_is_counted_updated(tmp_path, valid_folder):
    """The stored row loses the attribute: a change, not an unchanged row."""
    con = warehouse.connect(":memory:")
    load_directory(valid_folder, con)
    with_headline = {
        "offers.yaml": "- {offer_id: O2, name: Style guide, offer_type: content, fallback: true, "
        "headline: Read me}\n"
    }
    first = load_directory(write_folder(tmp_path / "a", with_headline), con).tables[0]
    plain = {
        "offers.yaml": "- {offer_id: O2, name: Style guide, offer_type: content, fallback: true}\n"
    }
    second = load_directory(write_folder(tmp_path / "b", plain), con).tables[0]
    again = load_directory(write_folder(tmp_path / "c", plain), con).tables[0]

    assert (first.rows_new, first.rows_updated, first.rows_unchanged) == (0, 1, 0)
    assert (second.rows_new, second.rows_updated, second.rows_unchanged) == (0, 1, 0)
    assert (again.rows_new, again.rows_updated, again.rows_unchanged) == (0, 0, 1)
    assert con.execute("SELECT headline FROM offers WHERE offer_id = 'O2'").fetchone() == (None,)


def test_the_summary_tells_new_updated_unchanged_and_duplicates(tmp_path, valid_folder):
    con = warehouse.connect(":memory:")
    load_directory(valid_folder, con)
    newer = {
        "offers.yaml": VALID_FILES["offers.yaml"].replace("name: Style guide", "name: Style v2"),
        "outcomes.csv": "decision_id,offer_id,ts,outcome\n"  # 1 stored, 1 new twice
        "D1,O1,2025-03-01T10:05:00,accept\n"
        "D1,O1,2025-03-01T10:06:00,click\nD1,O1,2025-03-01T10:06:00,click\n",
    }
    summary = load_directory(write_folder(tmp_path / "newer", newer), con)
    by_table = {t.table: t for t in summary.tables}

    offers = by_table["offers"]
    assert (offers.rows_new, offers.rows_updated, offers.rows_unchanged) == (0, 1, 1)
    outcomes = by_table["outcomes"]
    assert (outcomes.rows_new, outcomes.duplicates, outcomes.rows_unchanged) == (1, 1, 1)
    text = summary.format()
    assert "updated" in text and "duplicates" in text
    assert "outcomes: 1 rows stored once: repeated (decision_id, offer_id, outcome, ts)" in text
