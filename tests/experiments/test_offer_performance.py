"""Offer performance on a small event log counted by hand, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import psycopg
import pytest
from statsmodels.stats.proportion import proportion_confint

from experiments.moments import open_event_log
from experiments.offer_performance import offer_performance
from recsys.errors import InvalidRequestError
from recsys.eventlog import Event, EventType, SQLiteEventLog
from recsys.eventlog_postgres import PostgresEventLog
from tests.experiments.offer_log import COUNTS, DECISIONS, EXPECTED, T0, UNTIL, record
from tests.recsys.factories import make_catalog

PG = "postgresql://127.0.0.1:5432/test"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def log_url(request, tmp_path_factory):
    """The hand-counted log in a SQLite file or in an own PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('offers') / 'events.sqlite'}"
        log = SQLiteEventLog(url.removeprefix("sqlite:///"))
    else:
        schema = f"recsys_offers_{uuid.uuid4().hex[:10]}"
        url = f"{PG}?schema={schema}"
        log = PostgresEventLog.from_url(url)
    record(log)
    log.close()
    yield url
    if request.param == "postgresql":
        with psycopg.connect(PG, autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _read(url: str, **window):
    with open_event_log(url) as source:
        return offer_performance(source, make_catalog(), **window)


def _numbers(segment) -> tuple:
    return tuple(getattr(segment, c) for c in COUNTS)


def test_counts_and_revenue_per_offer_touchpoint_channel_stage_and_day(log_url):
    report = _read(log_url, since=T0, until=UNTIL)
    got = {(s.dimension, s.segment): _numbers(s) for s in report.segments}
    assert got == EXPECTED  # revenue sums of whole numbers: exact
    assert [s.name for s in report.of("offer")] == ["TV deal", "Dress 10%", "Sofa upsell"]
    assert [s.segment for s in report.of("day")] == ["2026-06-01", "2026-06-02"]


def test_rates_are_per_impression_with_wilson_intervals(log_url):
    report = _read(log_url, since=T0, until=UNTIL)
    accept = report.total.rate("accept_rate")
    assert accept is not None and (accept.positives, accept.rounds) == (4, 7)
    assert (accept.lower, accept.upper) == pytest.approx(proportion_confint(4, 7, method="wilson"))
    tv = report.to_dict()["offer"][0]
    assert tv["segment"] == "o_tv" and tv["click_rate"]["value"] == pytest.approx(2 / 3)
    assert tv["revenue_per_impression"] == pytest.approx(50 / 3)


def test_since_and_until_bound_the_decisions_and_the_responses(log_url):
    late = _read(log_url, since=T0 + timedelta(hours=20), until=UNTIL)
    assert _numbers(late.total) == pytest.approx((2, 0, 0, 1, 1, 0, 1, 30.0))  # d4 alone
    longer = _read(log_url, since=T0, until=UNTIL + timedelta(hours=1))
    assert _numbers(longer.total) == pytest.approx((8, 3, 3, 5, 2, 1, 1, 115.0))  # d6 too
    # d6's accept came 5 minutes after it: a window ending before it does not count it
    cut = _read(log_url, since=T0, until=UNTIL + timedelta(minutes=2))
    assert _numbers(cut.total)[:4] == (8, 3, 3, 4)
    everything = _read(log_url)  # the whole log up to now
    assert everything.since is None and everything.total.impressions == 8


def test_a_response_after_the_attribution_window_does_not_count(log_url):
    # d4's o_tv click came 8 days after the decision
    def tv_clicks(**window) -> int:
        report = _read(log_url, since=T0, until=T0 + timedelta(days=10), **window)
        return next(s.clicks for s in report.of("offer") if s.segment == "o_tv")

    assert tv_clicks() == 2
    assert tv_clicks(attribution_days=9) == 3


def test_until_not_after_since_is_refused_naming_until(log_url):
    with pytest.raises(InvalidRequestError, match="`until` must be a time after `since`"):
        _read(log_url, since=UNTIL, until=T0)


def test_an_empty_window_reports_zeros_without_rates(log_url):
    report = _read(log_url, since=T0 - timedelta(days=10), until=T0)
    assert report.total.impressions == 0 and report.total.rate("accept_rate") is None
    assert report.to_dict()["offer"] == [] and report.to_dict()["total"]["accept_rate"] is None


def test_revenue_is_reported_to_the_cent(tmp_path):
    log = SQLiteEventLog(str(tmp_path / "events.sqlite"))
    decision = next(d for d in DECISIONS if d.decision_id == "d2")
    log.record_decisions([decision])
    events = [
        Event(f"r{n}", "d2", "o_tv", EventType.CONVERT, decision.ts + timedelta(minutes=n), 0.1)
        for n in range(1, 4)
    ]  # 0.1 + 0.1 + 0.1 = 0.30000000000000004 in floats
    assert not log.record_events(events).rejected
    log.close()
    report = _read(f"sqlite:///{tmp_path / 'events.sqlite'}", since=T0, until=UNTIL)
    assert report.total.revenue == 0.3
    assert {s.revenue for s in report.of("stage")} == {0.3}
    assert report.total.csv_row()["revenue"] == 0.3
