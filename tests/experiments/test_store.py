"""The experiment store in the event log's database (SQLite and PostgreSQL)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from experiments.definition import Levers, Status
from experiments.store import open_experiment_store
from recsys.errors import ConfigError, NotFoundError
from tests.experiments.factories import experiment

PG = "postgresql://127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.sqlite'}"
        return
    schema = f"recsys_exp_{uuid.uuid4().hex[:10]}"
    yield f"{PG}?schema={schema}"
    with psycopg.connect(PG, autocommit=True) as con:
        con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def store(url):
    opened = open_experiment_store(url)
    yield opened
    opened.close()


def test_lifecycle_is_recorded_and_seen_by_another_process_s_store(store, url):
    store.create(experiment(traffic=0.4), "cli:ana")
    other = open_experiment_store(url)  # another worker or the command line
    try:
        assert other.snapshot().placements == ()
        started = other.transition("exp-home", "start", "key:ops")
        assert (started.status, started.buckets) == (Status.RUNNING, (0, 4000))
        snapshot = store.snapshot()
        assert [(p.experiment.name, p.buckets) for p in snapshot.placements] == [
            ("exp-home", (0, 4000))
        ]
        store.transition("exp-home", "stop", "cli:ana")
        assert other.snapshot().placements == ()
        assert other.snapshot().version != snapshot.version
        archived = other.transition("exp-home", "archive", "cli:ana")
    finally:
        other.close()
    assert archived.status == Status.ARCHIVED
    assert [(h["action"], h["by"]) for h in archived.history] == [
        ("create", "cli:ana"),
        ("start", "key:ops"),
        ("stop", "cli:ana"),
        ("archive", "cli:ana"),
    ]
    assert archived.history[1]["buckets"] == [0, 4000]


def test_changes_the_status_does_not_allow_are_refused(store):
    store.create(experiment(), "t")
    with pytest.raises(ConfigError, match="experiment exp-home must be running to stop, got draft"):
        store.transition("exp-home", "stop", "t")
    with pytest.raises(ConfigError, match=r"`name` must be new .*got 'exp-home'"):
        store.create(experiment(), "t")
    store.create(experiment(hypothesis="revised"), "t", replace=True)  # a draft may be replaced
    store.transition("exp-home", "start", "t")
    with pytest.raises(ConfigError, match="must be new"):
        store.create(experiment(), "t", replace=True)  # a running one may not
    with pytest.raises(NotFoundError, match="got 'nope'"):
        store.transition("nope", "start", "t")


def test_experiments_of_one_layer_get_disjoint_buckets(store):
    store.create(experiment(name="exp-a", traffic=0.6), "t")
    store.create(experiment(name="exp-b", traffic=0.6), "t")
    store.create(experiment(name="exp-c", traffic=0.4), "t")
    store.transition("exp-a", "start", "t")
    with pytest.raises(ConfigError, match="`traffic` must fit in the layer's free buckets"):
        store.transition("exp-b", "start", "t")
    assert store.transition("exp-c", "start", "t").buckets == (6000, 10000)
    assert store.get("exp-b").status == Status.DRAFT  # a refused start changes nothing


def test_promote_sets_default_levers_and_stops_the_experiment(store):
    store.create(
        experiment(
            arms=[
                {"name": "control", "kind": "control", "share": 0.5},
                {"name": "treatment", "share": 0.5,
                 "levers": {"offer_weights": {"o_tv": 2.0}, "excluded_offers": ["o_sofa"]}},
            ]
        ),
        "t",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="must be running or stopped to promote, got draft"):
        store.promotable("exp-home", "treatment")
    store.transition("exp-home", "start", "t")
    with pytest.raises(ConfigError, match=r"`arm` must be one of control, treatment .*got 'x'"):
        store.promote("exp-home", "x", "t", None)
    levers = store.promote("exp-home", "treatment", "cli:ana", "7")
    assert (
        store.default_levers()
        == levers
        == Levers(offer_weights={"o_tv": 2.0}, excluded_offers=("o_sofa",))
    )
    stored = store.get("exp-home")
    assert stored.status == Status.STOPPED
    promoted = stored.history[-2]
    assert (promoted["action"], promoted["arm"], promoted["by"], promoted["model_version"]) == (
        "promote", "treatment", "cli:ana", "7",
    )  # fmt: skip
    assert store.snapshot().default_levers == levers


def test_a_dropped_postgres_connection_is_opened_again():
    schema = f"recsys_exp_{uuid.uuid4().hex[:10]}"
    store = open_experiment_store(f"{PG}?schema={schema}")
    try:
        store.create(experiment(), "t")
        with store._read() as cur:  # the store's own session
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        with psycopg.connect(PG, autocommit=True) as admin:  # a server restart, for it
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):
            store.snapshot()  # this poll fails (the worker keeps its last set) ...
        assert store.get("exp-home").status == Status.DRAFT  # ... the next one reads again
    finally:
        store.close()
        with psycopg.connect(PG, autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
