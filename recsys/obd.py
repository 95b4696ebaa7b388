"""Import one campaign of the Open Bandit Dataset (OBD) into the data contract.

OBD (Saito, Aihara, Matsutani, Narita: "Open Bandit Dataset and Pipeline: Towards Realistic
and Reproducible Off-Policy Evaluation", NeurIPS 2021 Datasets and Benchmarks; CC BY 4.0) is
logged bandit feedback from ZOZOTOWN's fashion recommendation widget: each row is one item
shown in one of 3 positions, with its click and the logging policy's probability of showing
that item in that position. The dataset root holds ``random/<campaign>/`` (uniform random
policy) and ``bts/<campaign>/`` (Bernoulli Thompson Sampling) for the campaigns ``all``,
``men`` and ``women``, each folder with ``<campaign>.csv`` and ``item_context.csv``.

Item ids are per campaign (each campaign folder has its own ``item_context.csv``: 80 items in
``all``, 34 in ``men``, 46 in ``women``), so one import reads ONE campaign, from both policies
when given the root (or a policy folder), or from one ``random/<campaign>`` or
``bts/<campaign>`` folder. Its offers and touchpoint are named after the campaign, so
campaigns imported one after the other into the same warehouse never share an offer.

Mapping (pure data conversion, no model code):

- each row -> one ``decisions`` row: ``decision_id`` = ``<policy>-<campaign>-<row>``, anonymous
  (no customer), touchpoint ``zozotown_<campaign>`` (web), ``position``, ``propensity`` =
  ``propensity_score``, ``policy`` = ``random`` / ``bts``, ``context`` = the four hashed user
  features plus the non-zero ``user-item_affinity_<item>`` values (as
  ``user_item_affinity_<item>``; absent = 0);
- ``click == 1`` -> one ``outcomes`` row, outcome ``click``, one second after the decision
  (OBD has clicks only: train with ``positive_outcomes: [click]``);
- the campaign's ``item_context.csv`` -> ``offers`` (``<campaign>-<item_id>``, e.g. ``men-12``;
  offer_type ``cross_sell``, category = ``item_feature_1``, value 1, shown only at the
  campaign's touchpoint; item features kept as attributes). With both policies, the random
  folder's file is used: the bts folder hashes item categories differently;
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
CAMPAIGNS = ("all", "men", "women")
TOUCHPOINT_PREFIX = "zozotown_"
SLOTS = 3
USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))
AFFINITY_PREFIX = "user-item_affinity_"
REQUIRED_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score")
OUTCOME_DELAY = pd.Timedelta(seconds=1)
_EXPECTED_LAYOUT = (
    "expected the Open Bandit Dataset root (random/ and/or bts/, each holding "
    "<campaign>/<campaign>.csv), a policy folder (random/ or bts/) or one campaign folder "
    "such as random/men with men.csv"
)


def touchpoint_id(campaign: str) -> str:
    """The touchpoint a campaign's decisions are logged at, e.g. ``zozotown_men``."""
    return f"{TOUCHPOINT_PREFIX}{campaign}"


def offer_id(campaign: str, item_id: int) -> str:
    """The offer id of a campaign's item, e.g. ``men-12``."""
    return f"{campaign}-{item_id}"


@dataclass(frozen=True)
class CampaignLog:
    """One logging policy's log of one campaign: ``<policy>/<campaign>/<campaign>.csv``."""

    policy: str
    campaign: str
    folder: Path

    @property
    def log_file(self) -> Path:
        return self.folder / f"{self.campaign}.csv"

    @property
    def item_context(self) -> Path:
        return self.folder / "item_context.csv"


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
    campaign: str
    offers: int
    decisions: int
    outcomes: int
    per_policy: tuple[PolicyCounts, ...] = field(default_factory=tuple)

    @property
    def touchpoint_id(self) -> str:
        return touchpoint_id(self.campaign)

    def format(self) -> str:
        lines = [
            f"Open Bandit Dataset, campaign '{self.campaign}', imported into {self.out_dir}",
            f"  touchpoint {self.touchpoint_id}; offers: {self.offers} "
            f"({offer_id(self.campaign, 0)} ...), decisions: {self.decisions}, "
            f"outcomes (clicks): {self.outcomes}",
        ]
        for c in self.per_policy:
            lines.append(
                f"  {c.policy}/{c.campaign}: {c.decisions} decisions, {c.clicks} clicks "
                f"(CTR {c.ctr:.4%})"
            )
        lines.append("  train on it with `data.positive_outcomes: [click]` in the config")
        return "\n".join(lines)


def _campaign_folders(policy_dir: Path) -> dict[str, Path]:
    """Campaign name -> folder, for the ``<campaign>/<campaign>.csv`` folders of a policy."""
    return {
        p.name: p
        for p in sorted(policy_dir.iterdir())
        if p.is_dir() and (p / f"{p.name}.csv").is_file()
    }


def _found(path: Path) -> str:
    if not path.is_dir():
        return "no such folder" if not path.exists() else "a file"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    if not entries:
        return "an empty folder"
    more = f" and {len(entries) - 6} more" if len(entries) > 6 else ""
    return ", ".join(entries[:6]) + more


def campaign_logs(path: Path, campaign: str | None = None) -> list[CampaignLog]:
    """The logs of ONE campaign found at ``path`` (dataset root, policy or campaign folder).

    ``campaign`` (``all``, ``men`` or ``women``) may be omitted when ``path`` holds only one.

    Raises
    ------
    ContractError
        If ``path`` has none of the three layouts, ``campaign`` is unknown or not there, or
        it is omitted while ``path`` holds several campaigns.
    """
    path = Path(path)
    if campaign is not None and campaign not in CAMPAIGNS:
        raise ContractError(f"`campaign` must be one of {', '.join(CAMPAIGNS)}, got {campaign!r}")
    if path.is_dir() and (path / f"{path.name}.csv").is_file():  # one campaign folder
        if path.parent.name not in POLICIES:
            raise ContractError(
                f"{path}: expected a campaign folder inside random/ or bts/ (the logging "
                f"policy), found it inside {path.parent.name}/"
            )
        folders = {path.parent.name: {path.name: path}}
    elif path.is_dir() and path.name in POLICIES:  # a policy folder
        folders = {path.name: _campaign_folders(path)}
    elif path.is_dir():  # the dataset root
        folders = {p: _campaign_folders(path / p) for p in POLICIES if (path / p).is_dir()}
    else:
        folders = {}
    found = sorted({c for by_campaign in folders.values() for c in by_campaign})
    if not found:
        raise ContractError(f"{path}: {_EXPECTED_LAYOUT}; found {_found(path)}")
    unknown = [c for c in found if c not in CAMPAIGNS]
    if unknown:
        raise ContractError(
            f"{path}: expected campaigns {', '.join(CAMPAIGNS)}, found {', '.join(unknown)}"
        )
    if campaign is None:
        if len(found) > 1:
            raise ContractError(
                f"{path} holds the campaigns {', '.join(found)} (item ids are per campaign): "
                "choose one with --campaign"
            )
        (campaign,) = found
    elif campaign not in found:
        raise ContractError(
            f"{path}: expected campaign {campaign!r}, found only {', '.join(found)}"
        )
    return [
        CampaignLog(policy, campaign, by_campaign[campaign])
        for policy, by_campaign in folders.items()
        if campaign in by_campaign
    ]


def _read_log(log: CampaignLog) -> pd.DataFrame:
    path, policy, campaign = log.log_file, log.policy, log.campaign
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
    items = frame["item_id"].astype(int)
    return pd.DataFrame(
        {
            "decision_id": [f"{policy}-{campaign}-{i}" for i in frame.index],
            "ts": ts.to_numpy(),
            "touchpoint_id": touchpoint_id(campaign),
            "offer_id": [offer_id(campaign, i) for i in items],
            "customer_id": pd.array([None] * len(frame), dtype="string"),
            "position": frame["position"].astype("int64").to_numpy(),
            "propensity": frame["propensity_score"].astype(float).to_numpy(),
            "policy": policy,
            "context": contexts,
            "_click": frame["click"].astype(int).to_numpy(),
        }
    )


def _offers(item_context: Path, campaign: str) -> pd.DataFrame:
    items = pd.read_csv(item_context, index_col=0)
    if "item_id" not in items.columns:
        raise ContractError(f"{item_context}: expected column 'item_id', got {list(items.columns)}")
    ids = items["item_id"].astype(int)
    offers = pd.DataFrame(
        {
            "offer_id": [offer_id(campaign, i) for i in ids],
            "name": [f"ZOZOTOWN {campaign} item {i}" for i in ids],
            "offer_type": "cross_sell",
            "category": items.get("item_feature_1", pd.Series(dtype=str)).astype("string"),
            "value": 1.0,
            "touchpoints": [[touchpoint_id(campaign)]] * len(items),
        }
    )
    for column in items.columns:
        if column.startswith("item_feature_"):
            offers[column] = items[column].to_numpy()
    return offers


def import_obd(path: Path, out_dir: Path, campaign: str | None = None) -> ObdImportSummary:
    """Convert one OBD campaign found at ``path`` into contract Parquet files in ``out_dir``.

    ``path`` is the dataset root, a policy folder (``random/``, ``bts/``) or one campaign
    folder (``random/men``); ``campaign`` picks one of ``all``, ``men``, ``women`` and may be
    omitted when ``path`` holds only one (see :func:`campaign_logs`). Writes ``offers``,
    ``touchpoints``, ``customers`` (empty), ``decisions`` and ``outcomes``
    (``<table>.parquet``), ready for ``recsys data load OUT_DIR``.

    Raises
    ------
    ContractError
        If ``path`` has none of OBD's layouts, the campaign is not there, a log lacks OBD's
        columns or logs an item its ``item_context.csv`` does not describe.
    """
    path, out_dir = Path(path), Path(out_dir)
    sources = campaign_logs(path, campaign)
    campaign = sources[0].campaign
    logs, counts = [], []
    for source in sources:
        frame = _read_log(source)
        logs.append(frame)
        counts.append(PolicyCounts(source.policy, campaign, len(frame), int(frame["_click"].sum())))
        logger.info("read %s/%s: %d rows", source.policy, campaign, len(frame))
    decisions = pd.concat(logs, ignore_index=True)

    # The random folder's item context (see module docstring); else the one there is.
    item_files = [s.item_context for s in sources if s.item_context.is_file()]
    if not item_files:
        raise ContractError(
            f"{sources[0].folder}: expected item_context.csv next to {campaign}.csv, found none"
        )
    offers = _offers(item_files[0], campaign)
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
            "touchpoint_id": [touchpoint_id(campaign)],
            "channel": ["web"],
            "stage": ["consideration"],
            "slots": [SLOTS],
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
    return ObdImportSummary(
        out_dir, campaign, len(offers), len(decisions), len(outcomes), tuple(counts)
    )
