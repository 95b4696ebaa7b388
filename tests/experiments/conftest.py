"""A synthetic experiment in an in-memory DuckDB event log (experiments.synthetic)."""

from __future__ import annotations

import duckdb
import pytest

from experiments.moments import SQLSource
from experiments.plan import AnalysisPlan
from experiments.synthetic import SyntheticExperiment, generate

SPEC = SyntheticExperiment(customers=4_000, decisions=30_000, pre_decisions=12_000, lift=0.3)


def plan_for(spec: SyntheticExperiment, **changes) -> AnalysisPlan:
    fields = {
        "name": spec.experiment_id,
        "arms": [
            {"name": "A", "share": 1 - spec.treatment_share},
            {"name": "B", "share": spec.treatment_share},
        ],
        "control": "A",
        "start": spec.start,
        "end": spec.end,
        "peeks": 5,
    }
    return AnalysisPlan(**(fields | changes))


@pytest.fixture(scope="module")
def duck() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    generate(con, SPEC)
    return con


@pytest.fixture(scope="module")
def source(duck) -> SQLSource:
    return SQLSource(duck, "duckdb")
