"""The features config and the event vocabulary: validation, defaults that cover common
names and the demo data, unknown event types named at load and at build, ``--config``."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta as td
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.config import (
    DEFAULT_EVENT_TYPES,
    FeatureConfig,
    build_feature_config,
    load_feature_config,
)
from features.spec import FEATURE_SPEC_VERSION
from features.vocabulary import unused_event_types
from recsys.cli import app
from recsys.datagen.params import EVENT_TYPES as DEMO_EVENT_TYPES
from recsys.errors import ConfigError
from tests.features.conftest import T0, Warehouse, build_story
from tests.recsys.conftest import VALID_FILES, write_folder

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
HINT = "map them in features config `event_types`"


BAD_CONFIGS = [
    ({"horizon": 400}, "unknown features config key `horizon`"),
    ({"event_types": {"purchase": ["buy"]}}, "`event_types` roles must be among"),
    ({"event_types": {"view": []}}, "`event_types.view` must be a non-empty list"),
    ({"windows": [7, 90, 365]}, "`windows` must include [30, 90, 365], got [7, 90, 365]"),
    ({"windows": [30, 90, 365, 400]}, "`windows` must be <= horizon_days (365), got 400"),
    ({"horizon_days": 100}, "`horizon_days` Input should be greater than or equal to 365"),
    ({"lifetime_days": 365, "horizon_days": 730}, "`lifetime_days` must be >= horizon_days"),
    ({"rfm": {"monetary": [10, 5, 20, 30]}}, "`rfm.monetary` must be strictly increasing"),
]


@pytest.mark.parametrize(("tree", "message"), BAD_CONFIGS)
def test_bad_configs_name_the_key(tree, message):
    with pytest.raises(ConfigError) as err:
        build_feature_config(tree)
    assert message in str(err.value)


def test_a_role_given_replaces_its_defaults_and_the_others_keep_theirs(tmp_path):
    path = tmp_path / "features.yaml"
    path.write_text("event_types:\n  view: [page_view, my_custom_view]\n")
    config = load_feature_config(path)
    assert config.events("view") == ("page_view", "my_custom_view")
    assert config.events("nps") == DEFAULT_EVENT_TYPES["nps"]
    assert "product_view" not in config.used_event_types
    assert load_feature_config(None) == FeatureConfig()


def test_the_defaults_cover_common_names_and_every_demo_event_type():
    used = FeatureConfig().used_event_types
    common = {"page_view", "view", "product_view", "click", "add_to_cart", "cart_add", "survey",
              "nps", "support_ticket", "ticket", "complaint", "review"}  # fmt: skip
    assert common <= used
    assert set(DEMO_EVENT_TYPES) <= used


def test_unused_event_types_are_counted_most_rows_first():
    w = build_story(Warehouse())
    for days in (1, 2):
        w.interaction("c1", T0 - td(days=days), "web_home", "foo")
    w.interaction("c2", T0 - td(days=1), "web_home", "bar")
    unused = unused_event_types(w.con, FeatureConfig())
    assert unused.format() == (
        f"interactions: event types no feature uses: foo (2 rows), bar (1 row); {HINT}"
    )
    mapped = build_feature_config({"event_types": {"visit": ["foo", "bar"]}})
    assert (
        not unused_event_types(w.con, mapped) and unused_event_types(w.con, mapped).format() == ""
    )
    w.con.close()


def test_data_load_names_event_types_no_feature_uses(tmp_path):
    files = dict(VALID_FILES)
    files["interactions.csv"] += (
        "C1,2025-02-14T10:00:00Z,web_home,foo,\n"
        "C1,2025-02-15T10:00:00Z,web_home,foo,\n"
        "C2,2025-02-15T10:00:00Z,web_home,bar,\n"
    )
    folder = write_folder(tmp_path / "batch", files)
    result = runner.invoke(app, ["data", "load", str(folder), "--db", str(tmp_path / "w.duckdb")])
    assert result.exit_code == 0, result.output
    line = f"interactions: event types no feature uses: foo (2 rows), bar (1 row); {HINT}"
    assert line in result.output.splitlines()


def test_data_load_of_known_event_types_says_nothing_of_them(tmp_path):
    folder = write_folder(tmp_path / "batch", dict(VALID_FILES))
    result = runner.invoke(app, ["data", "load", str(folder), "--db", str(tmp_path / "w.duckdb")])
    assert result.exit_code == 0, result.output
    assert "no feature uses" not in result.output


def test_features_build_names_event_types_no_feature_uses(tmp_path):
    db = tmp_path / "w.duckdb"
    w = build_story(Warehouse(str(db)))
    w.interaction("c1", T0 - td(days=1), "web_home", "wishlist_add")
    w.con.close()
    out = tmp_path / "cf.parquet"
    result = runner.invoke(
        app, ["features", "build", "--db", str(db), "--as-of", T0.isoformat(), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert f"event types no feature uses: wishlist_add (1 row); {HINT}" in result.output


def _python(code: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_features_build_with_a_config_reads_its_vocabulary_and_windows(tmp_path):
    """``--config`` (a fresh process: the features are defined once a process): a custom view
    type counts as a view, a 7-day window appears, a longer horizon reaches older events but
    not into the 365-day features, the spec version is another."""
    db = tmp_path / "w.duckdb"
    w = build_story(Warehouse(str(db)))
    w.interaction("c1", T0 - td(days=2), "web_home", "my_view", category="shoes")
    w.con.close()
    config = tmp_path / "features.yaml"
    config.write_text(
        "horizon_days: 730\nwindows: [7, 30, 90, 365]\nevent_types:\n  view: [my_view]\n"
    )
    out = tmp_path / "cf.parquet"
    args = ["features", "build", "--db", str(db), "--as-of", T0.isoformat(), "--out", str(out),
            "--config", str(config)]  # fmt: skip
    printed = _python(f"from recsys.cli import app; app({args!r})", {})
    assert "no feature uses: page_view (1 row)" in printed  # the cart visit: no longer a view
    frame = pd.read_parquet(out).set_index("customer_id")
    c1 = frame.loc["c1"]
    assert (c1.int_views_7d, c1.int_views_30d, c1.int_count_7d) == (1.0, 1.0, 4.0)
    # a 730-day horizon sees c3's purchase of 400 days ago; the 365-day features do not
    c3 = frame.loc["c3"]
    assert (c3.purch_days_since_last, c3.int_days_since_view) == (400.0, 730.0)
    assert (c3.purch_count_365d, c3.purch_amount_365d, c3.purch_categories_365d) == (0, 0, 0)
    version = _python(
        "from features.spec import FEATURE_SPEC_VERSION; print(FEATURE_SPEC_VERSION)",
        {"RECSYS_FEATURES_CONFIG": str(config)},
    ).strip()
    assert version != FEATURE_SPEC_VERSION


def test_a_config_after_the_features_are_defined_is_refused(tmp_path):
    config = tmp_path / "features.yaml"
    config.write_text("lifetime_days: 1000\n")
    db = tmp_path / "w.duckdb"
    Warehouse(str(db)).con.close()
    result = runner.invoke(app, ["features", "build", "--db", str(db), "--config", str(config)])
    assert result.exit_code == 2
    said = " ".join(result.output.replace("│", " ").split())
    assert "must be chosen before the features are defined" in said
