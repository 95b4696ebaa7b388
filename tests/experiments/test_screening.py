"""``recsys experiments screen``: arms valued on the demo's logged decisions before rollout,
as the service would decide them, and the estimate beside the online result in the report."""

from __future__ import annotations

import csv
import json
import re

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from experiments.definition import ModelRef, parse_experiment
from experiments.recipes import Service, arm_recipe
from experiments.screening import parse_screening
from experiments.store import open_experiment_store
from recsys import warehouse
from recsys.arbitration import EpsilonGreedy
from recsys.catalog import load_catalog
from recsys.cli import app
from recsys.cli.experiments import _registry_models
from recsys.errors import ConfigError
from tests.experiments.conftest import SPEC
from tests.experiments.factories import definition
from tests.experiments.test_report import _sqlite_log
from tests.serving.reliability.test_lifecycle import Registry
from training.config import build_config
from training.policy_eval import first_shown
from training.served import served_rounds
from training.warehouse_data import build_inputs

TRAINING = {"evaluation": {"bootstrap_samples": 60, "max_ope_rounds": 1500}}


@pytest.fixture(scope="module")
def screened(demo_env, tmp_path_factory):
    """The demo's model registered as champion; a stored experiment whose treatment excludes
    the two offers the champion serves most; the command's output and JSON."""
    root = tmp_path_factory.mktemp("screen")
    registry = Registry(root)
    registry.promote(registry.register(demo_env["model_dir"]))
    # the session's demo (tests/conftest.py) is shared read-only: the experiment goes to a log
    # of this module's own
    settings = demo_env["settings"].model_copy(
        update={
            "mlflow_tracking_uri": registry.uri,
            "event_log_url": f"sqlite:///{root / 'events.sqlite'}",
        }
    )
    db = demo_env["db"]
    config = build_config(TRAINING)
    con = warehouse.connect(db, read_only=True)
    try:
        inputs = build_inputs(con, config, db)
        logged = inputs.frame[first_shown(inputs.frame)].reset_index(drop=True)
        champion = _registry_models(settings, root / "models")(ModelRef(alias="champion"))
        served = served_rounds(
            logged,
            inputs.replay(logged, champion.encoder),
            champion.scorer,
            champion.info,
            EpsilonGreedy(0.0),
        )
        touchpoints = sorted(set(logged["touchpoint_id"]))
    finally:
        con.close()
    chosen = pd.Series(served.target.offer_id[served.target.prob > 0.5])
    top = list(chosen.value_counts().index[:2])
    arms = [
        {"name": "control", "kind": "control", "share": 0.4},
        {"name": "no_top", "share": 0.4, "levers": {"excluded_offers": top}},
        {"name": "random", "kind": "holdout_random", "share": 0.1},
        {"name": "popular", "kind": "holdout_popularity", "share": 0.1},
    ]
    experiment = parse_experiment(definition(name="exp-screen", touchpoints=touchpoints, arms=arms))
    store = open_experiment_store(settings.event_log_url)
    try:
        store.create(experiment, "test", replace=True)
    finally:
        store.close()
    config_file = root / "training.yaml"
    config_file.write_text(yaml.safe_dump(TRAINING))
    out = root / "exp-screen.screening.json"
    result = CliRunner().invoke(
        app,
        ["experiments", "screen", "exp-screen", "--config", str(config_file), "--out", str(out),
         "--db", str(db), "--tracking-uri", registry.uri,
         "--event-log-url", settings.event_log_url],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"output": result.output, "json": json.loads(out.read_text()), "top": top,
            "settings": settings, "root": root, "config": config_file}  # fmt: skip


def test_an_arm_without_the_champion_s_top_offers_screens_lower_on_revenue(screened):
    arms = screened["json"]["arms"]
    assert set(arms) == {"control", "no_top", "random"}
    # on generated data the truth is known: excluding what the champion serves most costs
    assert arms["no_top"]["true_revenue"] < arms["control"]["true_revenue"]
    assert arms["random"]["true_value"] < arms["control"]["true_value"]
    control = arms["control"]
    assert control["estimator"] == "snips"
    assert control["lower"] <= control["value"] <= control["upper"]
    assert control["lift_lower"] <= control["lift"] <= control["lift_upper"]
    assert control["matched_rounds"] > 0 and control["effective_sample_size"] > 0
    assert screened["json"]["rounds"] > 0
    # the popularity holdout is named, with why, not silently dropped
    assert "popular" in screened["json"]["not_screened"]


def test_the_command_prints_each_arm_with_interval_diagnostics_and_truth(screened):
    out = screened["output"]
    for arm in ("control", "no_top", "random"):
        line = next(x for x in out.splitlines() if x.strip().startswith(f"{arm}:"))
        assert "lift over logging" in line and "ESS" in line and "true value" in line
    assert "popular: not screened" in out
    # thin support is said per arm; the JSON carries the same warnings
    for arm, s in screened["json"]["arms"].items():
        for warning in s["warnings"]:
            assert warning in out, arm


def test_a_random_holdout_screens_as_the_service_decides_it(screened):
    """The screening's recipe of each kind is the service's (one mapping)."""
    settings = screened["settings"]
    service = Service(EpsilonGreedy(0.05), load_catalog(settings.warehouse_path), {}, "champion")
    spec = parse_experiment(
        definition(arms=[{"name": "r", "kind": "holdout_random", "share": 0.5},
                         {"name": "c", "kind": "control", "share": 0.5,
                          "levers": {"excluded_offers": screened["top"]}}])
    ).arms  # fmt: skip
    random, control = (arm_recipe(s, service) for s in spec)
    assert random.policy.name == EpsilonGreedy(1.0).name and random.catalog is None
    assert random.model == ModelRef(alias="champion")
    assert control.catalog is not None and not set(screened["top"]) & set(control.catalog.offers)


def test_the_report_shows_the_screening_beside_the_online_result(
    screened, duck, tmp_path, monkeypatch
):
    """The online result comes from the synthetic event log of an experiment ``exp`` whose
    arms are A (control) and B: the screening's control and no_top arms stand for them."""
    log = tmp_path / "events.sqlite"
    _sqlite_log(duck, log)
    monkeypatch.setenv("RECSYS_EVENT_LOG_URL", f"sqlite:///{log}")
    written = dict(screened["json"])
    written["arms"] = {"A": written["arms"]["control"], "B": written["arms"]["no_top"]}
    screening = tmp_path / "screening.json"
    screening.write_text(json.dumps(written))
    plan = tmp_path / "exp.yaml"
    plan.write_text(
        "arms: [{name: A, share: 0.5}, {name: B, share: 0.5}]\n"
        f"control: A\nstart: {SPEC.start.isoformat()}\nend: {SPEC.end.isoformat()}\npeeks: 4\n"
    )
    out = tmp_path / "reports"
    result = CliRunner().invoke(
        app,
        ["experiments", "report", "exp", "--plan", str(plan), "--out", str(out),
         "--screening", str(screening), "--no-mlflow"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((out / "exp.json").read_text())
    online = next(m for m in report["metrics"] if m["role"] == "primary")
    assert report["screening"]["B"] == written["arms"]["B"]
    page = (out / "exp.html").read_text()
    table = page[page.index("Screening estimate (before rollout)") :]
    b_row = re.search(r"<tr><td>B</td>(.*?)</tr>", table).group(1)
    cells = re.findall(r"<td>(.*?)</td>", b_row)
    # online primary metric, then the what-if value with its interval, lift, revenue, support
    assert float(cells[0]) == pytest.approx(online["value"], rel=1e-3)
    what_if = written["arms"]["B"]
    assert cells[1].startswith(f"{what_if['value']:,.4g} [{what_if['lower']:,.4g}, ")
    assert cells[4] == f"{what_if['matched_rounds']:,}"
    with (out / "exp.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["section"] == "screening"]
    assert {r["arm"] for r in rows} == {"A", "B"}


def test_the_screening_file_is_refused_naming_the_field(tmp_path):
    with pytest.raises(ConfigError, match=r"`arms.A.value`"):
        parse_screening({"experiment": "e", "estimator": "snips", "rounds": 1,
                         "start": "2026-01-01", "end": "2026-01-02", "logging_value": 0.1,
                         "arms": {"A": {"value": "high"}}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"`A`"):
        parse_screening({"A": "high"})


def test_an_unknown_estimator_is_refused_naming_the_choices(screened):
    settings = screened["settings"]
    result = CliRunner().invoke(
        app,
        ["experiments", "screen", "exp-screen", "--estimator", "magic",
         "--config", str(screened["config"]), "--db", str(settings.warehouse_path),
         "--tracking-uri", settings.mlflow_tracking_uri,
         "--event-log-url", settings.event_log_url, "--out", str(screened["root"] / "x.json")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "`estimator` must be one of ['dr', 'ips', 'ips_clipped', 'snips', 'switch_dr']" in (
        result.output
    )
    assert not (screened["root"] / "x.json").exists()


def test_a_plan_not_stored_yet_is_screened_from_a_date_with_another_estimator(screened):
    settings, root = screened["settings"], screened["root"]
    since = pd.Timestamp(screened["json"]["start"]) + pd.Timedelta(days=10)
    arms = [
        {"name": "greedy", "kind": "control", "share": 0.5, "policy": {"epsilon": 0.0}},
        {"name": "explore", "share": 0.5, "policy": {"epsilon": 0.5}},
    ]
    plan = root / "draft.yaml"
    # one touchpoint of the demo: only its logged decisions are screened
    plan.write_text(yaml.safe_dump(definition(name="draft", touchpoints=["web_home"], arms=arms)))
    out = root / "draft.json"
    result = CliRunner().invoke(
        app,
        ["experiments", "screen", "draft", "--plan", str(plan), "--estimator", "dr",
         "--since", since.strftime("%Y-%m-%d"), "--config", str(screened["config"]),
         "--db", str(settings.warehouse_path), "--tracking-uri", settings.mlflow_tracking_uri,
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["experiment"] == "draft" and data["estimator"] == "dr"
    assert pd.Timestamp(data["start"]) >= since.floor("D")
    assert 0 < data["rounds"] < screened["json"]["rounds"]
    assert data["arms"]["explore"]["true_value"] < data["arms"]["greedy"]["true_value"]
    wrong = CliRunner().invoke(
        app, ["experiments", "screen", "other", "--plan", str(plan), "--out", str(out)]
    )
    assert wrong.exit_code != 0 and "must define experiment 'other', got 'draft'" in wrong.output
