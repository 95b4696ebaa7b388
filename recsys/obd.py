"""Import the Open Bandit Dataset (OBD) into the data contract.

OBD (Saito, Aihara, Matsutani, Narita: "Open Bandit Dataset and Pipeline: Towards Realistic
and Reproducible Off-Policy Evaluation", NeurIPS 2021 Datasets and Benchmarks; CC BY 4.0) is
logged bandit feedback from ZOZOTOWN's fashion recommendation widget: each row is one item
(of 80) shown in one of 3 positions, with its click and the logging policy's probability of
showing that item in that position. The folder holds ``random/<campaign>/`` (uniform random
policy) and ``bts/<campaign>/`` (Bernoulli Thompson Sampling), each with ``<campaign>.csv``
and ``item_context.csv``.

Mapping (pure data conversion, no model code):

- each row -> one ``decisions`` row: ``decision_id`` = ``<policy>-<campaign>-<row>``, anonymous
  (no customer), touchpoint ``zozotown_recommendation`` (web), ``position``, ``propensity`` =
  ``propensity_score``, ``policy`` = ``random`` / ``bts``, ``context`` = the four hashed user
  features plus the non-zero ``user-item_affinity_<item>`` values (as
  ``user_item_affinity_<item>``; absent = 0);
- ``click == 1`` -> one ``outcomes`` row, outcome ``click``, one second after the decision
  (OBD has clicks only: train with ``positive_outcomes: [click]``);
- ``item_context.csv`` of the random policy -> ``offers`` (``item_<id>``, offer_type
  ``cross_sell``, category = ``item_feature_1``, value 1; item features kept as attributes).
  The bts folder hashes item categories differently, so its item_context is not used;
- one ``touchpoints`` row; an empty ``customers`` table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recsys.errors import ContractError

logger = logging.getLogger(__name__)

POLICIES = ("random", "bts")
TOUCHPOINT_ID = "zozotown_recommendation"
USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))
AFFINITY_PREFIX = "user-item_affinity_"
REQUIRED_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score")
OUTCOME_DELAY = pd.Timedelta(seconds=1)


@dataclass(frozen=True)
class PolicyCounts:
    policy: str
    campaign: str
    decisions: int
    clicks: int

    @property
    def ctr(self) -> float:
        return self.clicks / self.decisions if self.decisions else float("nan")


@dataclass(frozen=True)
class ObdImportSummary:
    """What :func:`import_obd` wrote."""

    out_dir: Path
    offers: int
    decisions: int
    outcomes: int
    per_policy: tuple[PolicyCounts, ...] = field(default_factory=tuple)

    def format(self) -> str:
        lines = [
            f"Open Bandit Dataset imported into {self.out_dir}",
            f"  offers: {self.offers}, decisions: {self.decisions}, outcomes (clicks): "
            f"{self.outcomes}",
        ]
        for c in self.per_policy:
            lines.append(
                f"  {c.policy}/{c.campaign}: {c.decisions} decisions, {c.clicks} clicks "
                f"(CTR {c.ctr:.4%})"
            )
        lines.append("  train on it with `data.positive_outcomes: [click]` in the config")
        return "\n".join(lines)


def _campaign_files(root: Path) -> list[tuple[str, str, Path]]:
    found = []
    for policy in POLICIES:
        policy_dir = root / policy
        if not policy_dir.is_dir():
            continue
        for campaign_dir in sorted(p for p in policy_dir.iterdir() if p.is_dir()):
            log_file = campaign_dir / f"{campaign_dir.name}.csv"
            if log_file.is_file():
                found.append((policy, campaign_dir.name, log_file))
    return found


def _read_log(path: Path, policy: str, campaign: str) -> pd.DataFrame:
    frame = pd.read_csv(path, index_col=0)
    missing = [c for c in (*REQUIRED_COLUMNS, *USER_FEATURES) if c not in frame.columns]
    if missing:
        raise ContractError(
            f"{path}: expected OBD columns {missing}, got {list(frame.columns)[:8]}"
        )
    bad = ~((frame["propensity_score"] > 0) & (frame["propensity_score"] <= 1))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 1
        raise ContractError(
            f"{path}, row {row}, column 'propensity_score': must be in (0, 1], got "
            f"{float(frame['propensity_score'][bad].iloc[0])}"
        )
    ts = pd.to_datetime(frame["timestamp"], utc=True).dt.tz_localize(None)
    affinity_cols = [c for c in frame.columns if c.startswith(AFFINITY_PREFIX)]
    affinities = frame[affinity_cols].to_numpy()
    users = frame[list(USER_FEATURES)].astype(str).to_numpy()
    contexts = []
    for i in range(len(frame)):
        context: dict[str, object] = dict(zip(USER_FEATURES, users[i], strict=True))
        for j in np.flatnonzero(affinities[i]):
            key = "user_item_affinity_" + affinity_cols[j].removeprefix(AFFINITY_PREFIX)
            context[key] = float(affinities[i, j])
        contexts.append(json.dumps(context, sort_keys=True, separators=(",", ":")))
    return pd.DataFrame(
        {
            "decision_id": [f"{policy}-{campaign}-{i}" for i in frame.index],
            "ts": ts.to_numpy(),
            "touchpoint_id": TOUCHPOINT_ID,
            "offer_id": ("item_" + frame["item_id"].astype(int).astype(str)).to_numpy(),
            "customer_id": pd.array([None] * len(frame), dtype="string"),
            "position": frame["position"].astype("int64").to_numpy(),
            "propensity": frame["propensity_score"].astype(float).to_numpy(),
            "policy": policy,
            "context": contexts,
            "_click": frame["click"].astype(int).to_numpy(),
        }
    )


def _offers(item_context: Path) -> pd.DataFrame:
    items = pd.read_csv(item_context, index_col=0)
    if "item_id" not in items.columns:
        raise ContractError(f"{item_context}: expected column 'item_id', got {list(items.columns)}")
    offers = pd.DataFrame(
        {
            "offer_id": "item_" + items["item_id"].astype(int).astype(str),
            "name": "ZOZOTOWN item " + items["item_id"].astype(int).astype(str),
            "offer_type": "cross_sell",
            "category": items.get("item_feature_1", pd.Series(dtype=str)).astype("string"),
            "value": 1.0,
        }
    )
    for column in items.columns:
        if column.startswith("item_feature_"):
            offers[column] = items[column].to_numpy()
    return offers


def import_obd(path: Path, out_dir: Path) -> ObdImportSummary:
    """Convert the OBD folder ``path`` into contract Parquet files in ``out_dir``.

    Writes ``offers``, ``touchpoints``, ``customers`` (empty), ``decisions`` and ``outcomes``
    (``<table>.parquet``), ready for ``recsys data load OUT_DIR``.

    Raises
    ------
    ContractError
        If ``path`` has no ``random/<campaign>/<campaign>.csv`` or ``bts/...`` log, or a log
        lacks OBD's columns.
    """
    path, out_dir = Path(path), Path(out_dir)
    files = _campaign_files(path)
    if not files:
        raise ContractError(
            f"{path}: expected the Open Bandit Dataset layout random/<campaign>/<campaign>.csv "
            "and/or bts/<campaign>/<campaign>.csv, found none"
        )
    logs, counts = [], []
    for policy, campaign, log_file in files:
        frame = _read_log(log_file, policy, campaign)
        logs.append(frame)
        counts.append(PolicyCounts(policy, campaign, len(frame), int(frame["_click"].sum())))
        logger.info("read %s/%s: %d rows", policy, campaign, len(frame))
    decisions = pd.concat(logs, ignore_index=True)

    # Item context of the random policy (see module docstring); else whichever exists.
    item_files = [log.parent / "item_context.csv" for _, _, log in files]
    item_files = [f for f in item_files if f.is_file()]
    if not item_files:
        raise ContractError(f"{path}: expected an item_context.csv next to the logs, found none")
    offers = _offers(item_files[0])
    unknown = sorted(set(decisions["offer_id"]) - set(offers["offer_id"]))
    if unknown:
        raise ContractError(f"{item_files[0]}: items {unknown[:5]} are logged but not described")

    clicked = decisions[decisions["_click"] == 1]
    outcomes = pd.DataFrame(
        {
            "decision_id": clicked["decision_id"].to_numpy(),
            "offer_id": clicked["offer_id"].to_numpy(),
            "ts": (clicked["ts"] + OUTCOME_DELAY).to_numpy(),
            "outcome": "click",
            "revenue": np.full(len(clicked), np.nan),
        }
    )
    decisions = decisions.drop(columns="_click")
    touchpoints = pd.DataFrame(
        {
            "touchpoint_id": [TOUCHPOINT_ID],
            "channel": ["web"],
            "stage": ["consideration"],
            "slots": [3],
            "mode": ["realtime"],
        }
    )
    customers = pd.DataFrame({"customer_id": pd.Series([], dtype="string")})

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, table in (
        ("offers", offers),
        ("touchpoints", touchpoints),
        ("customers", customers),
        ("decisions", decisions),
        ("outcomes", outcomes),
    ):
        table.to_parquet(out_dir / f"{name}.parquet", index=False)
    return ObdImportSummary(out_dir, len(offers), len(decisions), len(outcomes), tuple(counts))
