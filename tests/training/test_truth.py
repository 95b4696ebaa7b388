"""Training's reader of the ground-truth file, against files the generator and a test write."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.datagen import generate_dataset
from recsys.errors import DataError, NotFoundError
from training.truth import read_truth


def _write(folder: Path, table: pa.Table) -> Path:
    (folder / "ground_truth").mkdir(parents=True)
    pq.write_table(table, folder / "ground_truth" / "truth.parquet")
    return folder


def _table(**overrides) -> pa.Table:
    columns = {
        "decision_id": pa.array(["D1", "D1", "D2"]),
        "offer_id": pa.array(["O1", "O2", "O1"]),
        "p_accept": pa.array([0.1, 0.25, 0.5]),
    }
    columns.update(overrides)
    return pa.table({k: v for k, v in columns.items() if v is not None})


def test_reads_the_file_the_generator_writes(tmp_path):
    generate_dataset(customers=50, days=5, seed=3, out=tmp_path, progress=False)
    truth = read_truth(tmp_path)
    written = pd.read_parquet(tmp_path / "ground_truth" / "truth.parquet")
    assert list(truth.columns) == ["decision_id", "offer_id", "p_accept"]
    assert len(truth) == len(written) > 0
    assert truth["p_accept"].between(0, 1).all()
    # every logged decision has its candidates in the truth
    decisions = pd.read_parquet(tmp_path / "decisions.parquet")
    assert set(decisions["decision_id"]) <= set(truth["decision_id"])


def test_reads_only_the_wanted_decisions_from_either_folder(tmp_path):
    folder = _write(tmp_path, _table())
    part = read_truth(folder / "ground_truth", decision_ids=["D2", "D9"])
    assert part.to_dict("list") == {"decision_id": ["D2"], "offer_id": ["O1"], "p_accept": [0.5]}
    assert len(read_truth(folder)) == 3


def test_names_a_folder_without_the_file(tmp_path):
    with pytest.raises(NotFoundError, match=r"truth\.parquet"):
        read_truth(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"p_accept": None}, "must have column `p_accept`"),
        ({"offer_id": pa.array([1, 2, 1])}, "`offer_id` .* must be string, got int64"),
        ({"p_accept": pa.array(["a", "b", "c"])}, "`p_accept` .* must be double, got string"),
        ({"p_accept": pa.array([0.1, 1.5, 0.2])}, r"must be in \[0, 1\], got 1.5 .*'D1'"),
    ],
)
def test_rejects_a_file_not_in_the_documented_format(tmp_path, overrides, message):
    folder = _write(tmp_path, _table(**overrides))
    with pytest.raises(DataError, match=message):
        read_truth(folder)
