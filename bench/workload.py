"""The bench data and load the serving benches share.

``bench_serving.py`` builds the data (demo customers, the catalogue extended to 200 offers,
features in a SQLite online store, the demo model as champion); ``bench_decision_stages.py``
and ``bench_score.py`` reuse it. This module holds what they agree on: where the checkout
is, the realtime touchpoints the load mixes, the catalogue extension and the environment
that points ``recsys`` at the data.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REALTIME = (
    "web_home",
    "web_product",
    "web_cart",
    "web_checkout",
    "app_home",
    "chat_widget",
    "call_center",
    "store_pos",
    "web_help",
    "app_order_status",
)


def data_env(work: Path, event_log: Path, registry: Path | None = None) -> dict[str, str]:
    """The settings that point recsys at the bench data under ``work``, the event log
    ``event_log`` and the MLflow registry ``registry`` (default ``work/mlflow.db``)."""
    registry_uri = f"sqlite:///{registry or work / 'mlflow.db'}"
    return {
        "RECSYS_WAREHOUSE_PATH": str(work / "warehouse.duckdb"),
        "RECSYS_ONLINE_STORE": "sqlite",
        "RECSYS_ONLINE_SQLITE_PATH": str(work / "online.sqlite"),
        "RECSYS_MLFLOW_TRACKING_URI": registry_uri,
        "MLFLOW_TRACKING_URI": registry_uri,
        "RECSYS_EVENT_LOG_URL": f"sqlite:///{event_log}",
        "PYTHONUNBUFFERED": "1",
    }


def extend_catalogue(path: Path, total: int, seed: int) -> None:
    """Clone the generated offers (new ids, jittered values) up to ``total`` offers."""
    offers = yaml.safe_load(path.read_text())
    base = [o for o in offers if not o.get("fallback")]
    rng = random.Random(seed)
    k = 0
    while len(offers) < total:
        source = base[k % len(base)]
        clone = dict(source)
        clone["offer_id"] = f"{source['offer_id']}-X{k // len(base) + 1}"
        clone["name"] = f"{source['name']} (variant {k // len(base) + 1})"
        clone["value"] = round(float(source.get("value") or 1.0) * rng.uniform(0.5, 1.5), 2)
        offers.append(clone)
        k += 1
    path.write_text(yaml.safe_dump(offers, sort_keys=False))


def forget_event_log(path: Path) -> None:
    """Delete an SQLite event log and its side files: the next run starts with no contacts."""
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def model_cache_env(work: Path, side: str) -> dict[str, str]:
    """Where a side (``old``, ``new``) keeps its compiled model and last good model copies:
    under ``work``, apart from the other side's and from the checkout's ``data/``."""
    return {"RECSYS_SERVING_MODEL_CACHE_DIR": str(work / "model_cache" / side)}


def policy_env(epsilon: float | None) -> dict[str, str]:
    """The settings that choose the slate policy: none (the service's default
    ``serving.policy``) without ``epsilon``, else epsilon-greedy with that exploration share
    (0 = greedy). ``serving.epsilon`` is refused with any other policy, so both are set."""
    if epsilon is None:
        return {}
    return {"RECSYS_SERVING__POLICY": "epsilon_greedy", "RECSYS_SERVING__EPSILON": str(epsilon)}
