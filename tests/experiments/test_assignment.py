"""Assignment: sticky across processes, uniform, layers mutually exclusive."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from scipy.stats import chisquare

from experiments.assignment import Assigner, Placement, allocate_range, bucket
from experiments.definition import BUCKETS
from recsys.errors import ConfigError
from tests.experiments.factories import experiment

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]
UNITS = [f"c{i:06d}" for i in range(20_000)]


def test_buckets_are_the_same_in_another_process():
    # A new interpreter has another hash() seed (PYTHONHASHSEED random): a bucket that
    # depended on it would differ.
    units = UNITS[:500]
    code = (
        "import sys; from experiments.assignment import bucket; "
        "print(','.join(str(bucket('exp-home', u)) for u in sys.stdin.read().split()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input="\n".join(units),
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "random"},
    ).stdout
    assert [int(b) for b in out.strip().split(",")] == [bucket("exp-home", u) for u in units]


def test_buckets_are_uniform():
    counts = Counter(bucket("exp-home", u) * 20 // BUCKETS for u in UNITS)  # 20 equal ranges
    assert sorted(counts) == list(range(20))
    assert chisquare([counts[k] for k in range(20)]).pvalue > 0.001


def test_arms_get_their_shares_and_units_stay_in_their_arm():
    exp = experiment(
        arms=[
            {"name": "control", "kind": "control", "share": 0.5},
            {"name": "treatment", "share": 0.3},
            {"name": "random", "kind": "holdout_random", "share": 0.2},
        ]
    )
    assigner = Assigner([Placement(exp, (0, BUCKETS))])
    arms = [assigner.assign("web_home", u, NOW).arm.name for u in UNITS]
    counts = Counter(arms)
    n = len(UNITS)
    assert (
        chisquare(
            [counts["control"], counts["treatment"], counts["random"]], [0.5 * n, 0.3 * n, 0.2 * n]
        ).pvalue
        > 0.001
    )
    again = Assigner([Placement(exp, (0, BUCKETS))])
    assert [again.assign("web_home", u, NOW).arm.name for u in UNITS[:2000]] == arms[:2000]
    assert assigner.assign("app_home", "c000001", NOW) is None  # not its touchpoint


def test_experiments_of_one_layer_share_no_unit():
    a = experiment(name="exp-a", traffic=0.5)
    b = experiment(name="exp-b", traffic=0.3)
    range_a = allocate_range(a.traffic, [])
    range_b = allocate_range(b.traffic, [range_a])
    assert range_a == (0, 5000) and range_b == (5000, 8000)
    assigner = Assigner([Placement(a, range_a), Placement(b, range_b)])
    hits = [assigner.assign("web_home", u, NOW) for u in UNITS]
    by_experiment = Counter(h.experiment if h is not None else None for h in hits)
    n = len(UNITS)
    # each unit in at most one experiment; 50% / 30% / 20% outside
    assert (
        chisquare(
            [by_experiment[0], by_experiment[1], by_experiment[None]], [0.5 * n, 0.3 * n, 0.2 * n]
        ).pvalue
        > 0.001
    )
    # the arms within each experiment are split independently of the layer ranges
    arms_in_b = Counter(h.arm.name for h in hits if h is not None and h.experiment == 1)
    assert chisquare([arms_in_b["control"], arms_in_b["treatment"]]).pvalue > 0.001


def test_a_full_layer_refuses_another_experiment():
    with pytest.raises(ConfigError, match=r"`traffic` must fit in the layer's free buckets "
                                          r"\(2000 of 10000 free"):  # fmt: skip
        allocate_range(0.5, [(0, 8000)])
    assert allocate_range(0.2, [(0, 3000), (5000, 10000)]) == (3000, 5000)


def test_experiments_sharing_a_touchpoint_must_share_a_layer():
    a = experiment(name="exp-a", traffic=0.5)
    b = experiment(name="exp-b", traffic=0.5, layer="other")
    with pytest.raises(ConfigError, match=r"`layer` of experiment exp-b must be 'default'"):
        Assigner([Placement(a, (0, 5000)), Placement(b, (0, 5000))])


def test_outside_its_dates_an_experiment_decides_nothing():
    exp = experiment(start="2026-06-02T00:00:00Z", end="2026-06-10T00:00:00Z")
    assigner = Assigner([Placement(exp, (0, BUCKETS))])
    assert assigner.assign("web_home", "c1", NOW) is None
    assert assigner.assign("web_home", "c1", datetime(2026, 6, 3, tzinfo=UTC)) is not None
    assert assigner.assign("web_home", "c1", datetime(2026, 6, 10, tzinfo=UTC)) is None
