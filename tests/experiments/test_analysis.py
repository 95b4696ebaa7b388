"""The analysis on an event log: SQL sums checked against pandas, verdicts, DuckDB = PostgreSQL."""

from __future__ import annotations

import math
import uuid
from dataclasses import replace
from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd
import psycopg
import pytest
from statsmodels.stats.multitest import multipletests

from experiments.analysis import analyse
from experiments.metrics import METRICS
from experiments.moments import SQLSource, read_moments
from experiments.plan import load_plan
from experiments.stats import Moments
from experiments.synthetic import DECISIONS_DDL, EVENTS_DDL, generate
from recsys.errors import ConfigError
from tests.experiments.conftest import SPEC, plan_for

PG = "postgresql://127.0.0.1:5432/test"


def _per_unit(duck, since_us: int, until_us: int, quantity: str) -> pd.DataFrame:
    """Per unit of arm B (pandas, independently of the SQL): decisions, y and pre-period x."""
    d = duck.execute("SELECT * FROM decisions").df()
    e = duck.execute("SELECT * FROM events").df()
    week = 7 * 86_400 * 1_000_000
    joined = e.merge(d[["decision_id", "offer_id", "ts_us"]], on=["decision_id", "offer_id"])
    joined = joined[joined.ts_us_x <= joined.ts_us_y + week]
    accepted = set(joined[joined.type.isin(["accept", "convert"])].decision_id)
    d["accept"] = d.decision_id.isin(accepted).astype(float)
    d["unit"] = d.unit_id.fillna(d.customer_id)
    start_us = int(SPEC.start.timestamp() * 1e6)
    pre = d[(d.ts_us < start_us) & (d.ts_us >= start_us - 28 * 86_400 * 1_000_000)]
    x = pre.groupby("unit")[quantity].sum()
    during = d[(d.arm == "B") & (d.shadow == 0) & (d.ts_us >= since_us) & (d.ts_us < until_us)]
    units = during.groupby("unit").agg(n=("decision_id", "nunique"), y=(quantity, "sum"))
    units["x"] = x.reindex(units.index).fillna(0.0)
    return units


def close(a, b) -> bool:
    """Equal up to the order of floating-point sums (parallel aggregation)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@pytest.mark.parametrize("peek", [1, 3])
def test_sql_sums_equal_per_unit_sums_computed_in_pandas(duck, source, peek):
    plan = plan_for(SPEC, peeks=4)
    cutoffs, moments = read_moments(source, plan, SPEC.end, plan.peeks)
    start_us = int(SPEC.start.timestamp() * 1e6)
    until_us = int(cutoffs[peek].timestamp() * 1e6)
    units = _per_unit(duck, start_us, until_us, "accept")
    expected = Moments.of_units(units.y.to_numpy(), units.n.to_numpy(), units.x.to_numpy())
    got = moments[("timeline", "B", "all")].moments(METRICS["acceptance_rate"], peek)
    assert got == pytest.approx(expected)
    assert got.x > 0  # the pre-period is read


def test_known_lift_is_found_inside_its_intervals(source):
    result = analyse(source, plan_for(SPEC), as_of=SPEC.end)
    primary = result.primary("B")
    assert primary.lift.sequence_relative.contains(SPEC.lift)
    assert primary.lift.fixed_relative.contains(SPEC.lift)
    assert result.verdicts["B"].startswith("B beats A on acceptance rate per decision by +")
    assert result.verdicts["B"].endswith("safe to roll out.")
    assert not result.srm.alarm
    assert [a.models for a in result.arms] == [("offer-ranker:1",), ("offer-ranker:2",)]
    assert primary.variance_reduction > 0  # customers' own propensity carries over


def test_timeline_is_cumulative_and_ends_at_the_overall_result(source):
    result = analyse(source, plan_for(SPEC, peeks=5), as_of=SPEC.end)
    points = [p for p in result.timeline if p.arm == "B"]
    assert len(points) == 5 and points[-1].ts == SPEC.end
    assert [p.units for p in points] == sorted(p.units for p in points)
    assert points[-1].relative_lift == pytest.approx(result.primary("B").lift.relative)
    widths = [p.sequence_upper - p.sequence_lower for p in points]
    assert widths == sorted(widths, reverse=True)


def test_secondary_metrics_are_holm_adjusted(source):
    result = analyse(source, plan_for(SPEC), as_of=SPEC.end)
    secondary = [m for m in result.metrics if m.role == "secondary"]
    _, expected, _, _ = multipletests([m.lift.p_value for m in secondary], method="holm")
    assert [m.adjusted_p_value for m in secondary] == pytest.approx(list(expected))


def test_segments_split_the_decisions(source):
    result = analyse(source, plan_for(SPEC), as_of=SPEC.end)
    touchpoints = [s for s in result.segments if s.kind == "touchpoint"]
    assert {s.segment for s in touchpoints} == {"web_home", "email", "app_cart"}
    for arm in result.arms:
        assert sum(s.decisions for s in touchpoints if s.arm == arm.arm) == arm.decisions
    offers = [s for s in result.segments if s.kind == "offer" and s.arm == "B"]
    assert len(offers) == 10 and all(s.relative_lift is not None for s in offers)


def test_skewed_split_raises_the_sample_ratio_alarm_and_blocks_the_verdict():
    con = duckdb.connect()
    skewed = replace(SPEC, treatment_share=0.56, decisions=10_000, pre_decisions=0)
    generate(con, skewed)
    result = analyse(SQLSource(con, "duckdb"), plan_for(skewed, arms=[
        {"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}]), as_of=skewed.end)  # fmt: skip
    assert result.srm.alarm and result.srm.p_value < 0.001
    assert result.verdicts["B"].startswith("Do not read the results: the split of customers")


def test_shadow_decisions_are_not_exposures():
    con = duckdb.connect()
    small = replace(SPEC, decisions=8_000, pre_decisions=0)
    generate(con, small)
    before = analyse(SQLSource(con, "duckdb"), plan_for(small), as_of=small.end)
    con.execute(
        "INSERT INTO decisions SELECT decision_id || '-shadow', offer_id, ts_us, touchpoint_id, "
        "channel, customer_id, position, propensity, policy, score, explored, fallback, "
        "model_name, '9', context, experiment_id, 'B', unit_id, 1 FROM decisions"
    )
    after = analyse(SQLSource(con, "duckdb"), plan_for(small), as_of=small.end)
    assert close(after.to_dict()["metrics"], before.to_dict()["metrics"])
    assert after.arms == before.arms


def test_guardrail_breach_is_flagged_and_stops_the_rollout():
    con = duckdb.connect()
    small = replace(SPEC, decisions=20_000, pre_decisions=0, lift=0.5)
    generate(con, small)
    # the treatment annoys: a third of its decisions are dismissed on top of the usual 10%
    con.execute(
        "INSERT INTO events SELECT decision_id || '-d2', decision_id, offer_id, customer_id, "
        "'dismiss', ts_us + 1, NULL, ts_us FROM decisions "
        "WHERE arm = 'B' AND hash(decision_id) % 3 = 0"
    )
    result = analyse(SQLSource(con, "duckdb"), plan_for(small), as_of=small.end)
    dismiss = next(m for m in result.metrics if m.metric == "dismiss_rate")
    assert dismiss.status == "breach" and dismiss.lift.relative > 1.0
    contacts = next(m for m in result.metrics if m.metric == "contacts_per_customer")
    assert contacts.status == "ok"
    assert "guardrails are breached (dismiss_rate); do not roll out." in result.verdicts["B"]


def test_no_difference_asks_to_keep_running_with_the_decisions_needed():
    con = duckdb.connect()
    aa = replace(SPEC, decisions=6_000, pre_decisions=0, lift=0.0)
    generate(con, aa)
    result = analyse(SQLSource(con, "duckdb"), plan_for(aa), as_of=aa.end)
    assert result.verdicts["B"].startswith("Keep running: no difference yet")
    needed = result.decisions_needed["B"]
    assert needed > 10_000 and f"about {needed:,.0f} more decisions" in result.verdicts["B"]


def test_an_arm_without_units_is_refused(source):
    plan = plan_for(SPEC, arms=[{"name": "A", "share": 1}, {"name": "Z", "share": 1}])
    with pytest.raises(
        ValueError, match=r"`arms` \['Z'\] of experiment 'exp' must have at least 2"
    ):
        analyse(source, plan, as_of=SPEC.end)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"control": "C"}, "`control` must be one of the arms"),
        ({"primary_metric": "ctr"}, "`metric` must be one of acceptance_rate, click_rate"),
        ({"arms": [{"name": "A", "share": 1}]}, "`arms`: Tuple should have at least 2 items"),
        ({"arms": [{"name": "A", "share": 0}, {"name": "B", "share": 1}]},
         r"`arms.0.share`: Input should be greater than 0 \(got 0\)"),
        ({"end": "2025-01-01"}, "`end` must be after `start`"),
        ({"peeks": 0}, "`peeks`: Input should be greater than or equal to 1"),
    ],
)  # fmt: skip
def test_plan_errors_name_the_field(options, message):
    base = {
        "arms": [{"name": "A", "share": 1}, {"name": "B", "share": 1}],
        "control": "A",
        "start": "2026-01-01",
    }
    with pytest.raises(ConfigError, match=message):
        load_plan(None, name="exp", **(base | options))


@pytest.fixture
def pg_source(duck):
    schema = f"exp_analysis_{uuid.uuid4().hex[:8]}"
    con = psycopg.connect(PG, autocommit=True)
    con.execute(f'CREATE SCHEMA "{schema}"')
    try:
        con.execute(DECISIONS_DDL.format(decisions=f'"{schema}".decisions'))
        con.execute(EVENTS_DDL.format(events=f'"{schema}".events'))
        for table in ("decisions", "events"):
            frame = duck.execute(f"SELECT * FROM {table}").fetchall()
            with con.cursor().copy(f'COPY "{schema}".{table} FROM STDIN') as copy:
                for row in frame:
                    copy.write_row(row)
            # as autovacuum would: without statistics PostgreSQL plans nested loops
            con.execute(f'ANALYZE "{schema}".{table}')
        yield SQLSource.postgres(con, schema)
    finally:
        con.execute(f'DROP SCHEMA "{schema}" CASCADE')
        con.close()


@pytest.mark.services
def test_postgresql_event_log_gives_the_duckdb_result(source, pg_source):
    plan = plan_for(SPEC, peeks=6)
    on_duck = analyse(source, plan, as_of=SPEC.end).to_dict()
    on_pg = analyse(pg_source, plan, as_of=SPEC.end).to_dict()

    assert close(on_duck, on_pg)
    assert on_pg["metrics"][0]["lift"]["relative"] > 0


def test_as_of_cuts_decisions_and_events(source):
    half = SPEC.start + timedelta(days=SPEC.days / 2)
    early = analyse(source, plan_for(SPEC), as_of=half)
    full = analyse(source, plan_for(SPEC), as_of=SPEC.end)
    assert sum(a.decisions for a in early.arms) == pytest.approx(
        sum(a.decisions for a in full.arms) / 2, rel=0.01
    )
    assert np.isfinite(early.primary("B").lift.relative)


def test_an_experiment_definition_file_reads_as_a_plan(tmp_path, source):
    definition = tmp_path / "exp.yaml"
    definition.write_text(
        f"""name: exp
hypothesis: B raises acceptance.
touchpoints: [web_home, email, app_cart]
layer: default
salt: exp-1
start: {SPEC.start.isoformat()}
end: {SPEC.end.isoformat()}
primary_metric: acceptance_rate
secondary_metrics: [click_rate, revenue_per_decision]
guardrails:
  - {{metric: dismiss_rate, max: 0.5}}
  - {{metric: contacts_per_customer, max_relative_change: 0.2}}
arms:
  - {{name: A, kind: control, share: 0.5}}
  - {{name: B, kind: treatment, share: 0.5, model: {{alias: challenger}}}}
  - {{name: B-shadow, kind: shadow, policy: {{epsilon: 0.0}}}}
"""
    )
    plan = load_plan(definition)
    assert plan.control == "A" and [a.name for a in plan.arms] == ["A", "B"]
    result = analyse(source, plan, as_of=SPEC.end)
    guards = {m.metric: m.status for m in result.metrics if m.role == "guardrail"}
    assert guards == {"dismiss_rate": "ok", "contacts_per_customer": "ok"}
    strict = load_plan(definition, guardrails=[{"metric": "dismiss_rate", "max": 0.01}])
    dismiss = next(
        m for m in analyse(source, strict, as_of=SPEC.end).metrics if m.role == "guardrail"
    )
    assert dismiss.status == "breach"  # about 10% of decisions are dismissed


def test_a_guardrail_needs_a_bound():
    with pytest.raises(
        ConfigError,
        match=r"`guardrails\.0`: .*a threshold: `max`, `min` and/or `max_relative_change`",
    ):
        load_plan(
            None,
            name="exp",
            arms=[{"name": "A", "kind": "control", "share": 1}, {"name": "B", "share": 1}],
            start="2026-01-01",
            guardrails=[{"metric": "dismiss_rate"}],
        )
