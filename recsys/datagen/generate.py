"""``generate_dataset``: write the seven contract tables plus the ground truth."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from tqdm.auto import tqdm

from recsys.contract import TABLES, arrow_schema
from recsys.datagen.catalog import (
    AGE_BANDS,
    CATEGORIES,
    HABIT_CHANNELS,
    LOYALTY_TIERS,
    REGIONS,
    Catalog,
    build_catalog,
)
from recsys.datagen.params import (
    DEVICES,
    EVENT_TYPES,
    OUTCOME_NAMES,
    PRODUCTS_PER_CATEGORY,
    TRANSACTION_CHANNELS,
    BlockOutput,
    SimParams,
)
from recsys.datagen.policy import POLICY_NAME
from recsys.datagen.population import Population, draw_population
from recsys.datagen.simulate import simulate_block
from recsys.datagen.writer import FILE_FORMATS, TableWriter

logger = logging.getLogger(__name__)

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
BLOCK_SIZE = 25_000
"""Customers simulated together; part of the seed contract (changing it changes the data)."""
TRUTH_DIR = "ground_truth"
TS = pa.timestamp("us")

# The contract's own column types; customers also carry the demo's attribute columns.
SCHEMAS: dict[str, pa.Schema] = {
    "customers": arrow_schema(
        TABLES["customers"],
        extra=(("region", pa.string()), ("age_band", pa.string()), ("loyalty_tier", pa.string())),
    ),
    **{
        name: arrow_schema(TABLES[name])
        for name in ("transactions", "interactions", "decisions", "outcomes")
    },
}
TRUTH_SCHEMA = pa.schema(
    [("decision_id", pa.string()), ("offer_id", pa.string()), ("p_accept", pa.float64())]
)
EVENT_TABLES = ("transactions", "interactions", "decisions", "outcomes")


@dataclass(frozen=True)
class GenerationSummary:
    """What :func:`generate_dataset` wrote."""

    out: Path
    rows: dict[str, int]  # per table, plus "truth"
    files: tuple[Path, ...]
    seconds: float

    @property
    def events(self) -> int:
        return sum(self.rows[t] for t in EVENT_TABLES)

    def format(self) -> str:
        lines = [f"Demo data written to {self.out}"]
        width = max(len(name) for name in self.rows)
        for name, count in self.rows.items():
            lines.append(f"  {name:<{width}}  {count:>13,}")
        rate = self.events / self.seconds if self.seconds > 0 else float("inf")
        lines.append(f"  {self.events:,} events in {self.seconds:.1f} s ({rate:,.0f} events/s)")
        lines.append("  files: " + ", ".join(str(f.relative_to(self.out)) for f in self.files))
        return "\n".join(lines)


def generate_dataset(
    customers: int,
    days: int,
    seed: int,
    out: Path,
    file_format: str = "parquet",
    progress: bool = True,
    start: datetime | None = None,
    params: SimParams | None = None,
) -> GenerationSummary:
    """Simulate an omnichannel business and write its contract tables and ground truth.

    Parameters
    ----------
    customers : int
        Number of customers (>= 1); simulated in blocks of ``BLOCK_SIZE``.
    days : int
        Days of history (>= 1) from ``start``.
    seed : int
        Same seed (and arguments), byte-identical files.
    out : Path
        Output folder; created if missing. Existing files of the same names are replaced.
    file_format : {"parquet", "csv"}
        Format of customers and the event tables; offers/touchpoints are YAML, the ground
        truth is always Parquet.
    progress : bool
        Show a progress bar over customer blocks.
    start : datetime, optional
        First simulated day (UTC; a naive value is read as UTC; truncated to midnight);
        default 2026-01-01.
    params : SimParams, optional
        Simulation knobs; defaults as documented in docs/demo-data.md.

    Raises
    ------
    ValueError
        On a bad argument, naming it.
    """
    if customers < 1:
        raise ValueError(f"`customers` must be >= 1, got {customers}")
    if days < 1:
        raise ValueError(f"`days` must be >= 1, got {days}")
    if file_format not in FILE_FORMATS:
        raise ValueError(f"`file_format` must be one of {FILE_FORMATS}, got {file_format!r}")
    start = DEFAULT_START if start is None else start
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    start = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    params = params or SimParams()
    began = time.perf_counter()

    out = Path(out)
    truth_dir = out / TRUTH_DIR
    truth_dir.mkdir(parents=True, exist_ok=True)
    catalog = build_catalog(start, np.random.default_rng([seed, 0]))
    files = [
        _write_yaml(out / "offers.yaml", [o.to_record(start) for o in catalog.offers]),
        _write_yaml(out / "touchpoints.yaml", [t.to_record() for t in catalog.touchpoints]),
    ]

    ext = "parquet" if file_format == "parquet" else "csv"
    for name in SCHEMAS:  # a table file of the other format would make the folder ambiguous
        stale = out / f"{name}.{'csv' if ext == 'parquet' else 'parquet'}"
        if stale.is_file():
            logger.info("removing %s written by an earlier run in another format", stale.name)
            stale.unlink()
    writers = {
        name: TableWriter(out / f"{name}.{ext}", schema, file_format)
        for name, schema in SCHEMAS.items()
    }
    writers["truth"] = TableWriter(truth_dir / "truth.parquet", TRUTH_SCHEMA, "parquet")
    writers["preferences"] = TableWriter(
        truth_dir / "customer_preferences.parquet", _preferences_schema(), "parquet"
    )
    names = _Names(catalog)
    next_decision, next_transaction = 1, 1
    n_blocks = -(-customers // BLOCK_SIZE)
    # Writing (Arrow/Parquet, releases the GIL) overlaps with simulating the next block;
    # at most two blocks are in memory, and one writer thread keeps the row order fixed.
    pending: Future[None] | None = None
    try:
        with (
            ThreadPoolExecutor(max_workers=1) as pool,
            tqdm(total=customers, unit="customer", disable=not progress, desc="generate") as bar,
        ):
            for block in range(n_blocks):
                first = block * BLOCK_SIZE
                n = min(BLOCK_SIZE, customers - first)
                rng = np.random.default_rng([seed, 1, block])
                pop = draw_population(first + 1, n, catalog.start_s, days, rng)
                sim = simulate_block(catalog, pop, params, days, rng)
                tables = _to_arrow(sim, pop, names, next_decision, next_transaction)
                next_decision += sim.n_decisions
                next_transaction += tables["transactions"].num_rows
                if pending is not None:
                    pending.result()
                pending = pool.submit(_write_all, writers, tables)
                bar.update(n)
            if pending is not None:
                pending.result()
    finally:
        for writer in writers.values():
            writer.close()
    files += [w.path for w in writers.values()]
    files.append(
        _write_params(truth_dir / "params.json", customers, days, seed, start, params, catalog)
    )
    rows = {name: w.rows for name, w in writers.items() if name != "preferences"}
    rows = {"offers": catalog.n_offers, "touchpoints": len(catalog.touchpoints), **rows}
    summary = GenerationSummary(out, rows, tuple(files), time.perf_counter() - began)
    logger.info("generated %d events for %d customers", summary.events, customers)
    return summary


def _write_all(writers: dict[str, TableWriter], tables: dict[str, pa.Table]) -> None:
    for name, table in tables.items():
        writers[name].write(table)


def _write_yaml(path: Path, records: list[dict]) -> Path:
    path.write_text(yaml.safe_dump(records, sort_keys=False, allow_unicode=True), "utf-8")
    return path


def _write_params(path, customers, days, seed, start, params, catalog: Catalog) -> Path:
    doc = {
        "customers": customers,
        "days": days,
        "seed": seed,
        "start": start.strftime("%Y-%m-%dT%H:%M:%S"),
        "block_size": BLOCK_SIZE,
        "policy": POLICY_NAME,
        "categories": list(CATEGORIES),
        "habit_channels": list(HABIT_CHANNELS),
        "offer_base_logit": {
            o.offer_id: round(float(b), 6)
            for o, b in zip(catalog.offers, catalog.base_logit, strict=True)
        },
        "business_score": {
            o.offer_id: float(s) for o, s in zip(catalog.offers, catalog.score, strict=True)
        },
        "simulation": asdict(params),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n", "utf-8")
    return path


def _preferences_schema() -> pa.Schema:
    fields = [pa.field("customer_id", pa.string())]
    fields += [pa.field(f"taste_{c}", pa.float64()) for c in CATEGORIES]
    fields += [pa.field(f"habit_{c}", pa.float64()) for c in HABIT_CHANNELS]
    fields += [
        pa.field(name, pa.float64())
        for name in (
            "price_sensitivity",
            "activity",
            "spend_level",
            "satisfaction",
            "issue_proneness",
            "responsiveness",
        )
    ]
    return pa.schema(fields)


class _Names:
    """String dictionaries that code arrays index into (take is fast in Arrow)."""

    def __init__(self, catalog: Catalog):
        self.touchpoints = pa.array([t.touchpoint_id for t in catalog.touchpoints])
        self.offers = pa.array([o.offer_id for o in catalog.offers])
        self.categories = pa.array(CATEGORIES)
        self.events = pa.array(EVENT_TYPES)
        self.outcomes = pa.array(OUTCOME_NAMES)
        self.tx_channels = pa.array(TRANSACTION_CHANNELS)
        self.products = pa.array(
            [f"P-{c[:3].upper()}-{k:03d}" for c in CATEGORIES for k in range(PRODUCTS_PER_CATEGORY)]
        )
        contexts = []
        for device in (*DEVICES, None):
            for page in (*CATEGORIES, None):
                ctx = {}
                if device is not None:
                    ctx["device"] = device
                if page is not None:
                    ctx["page_category"] = page
                contexts.append(json.dumps(ctx))
        self.contexts = pa.array(contexts)


def _take(names: pa.Array, codes: np.ndarray) -> pa.Array:
    """names[codes], null where the code is negative."""
    codes = np.asarray(codes, dtype=np.int64)
    return names.take(pa.array(codes, mask=codes < 0))


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, pa.int64()), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _ts(seconds: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(seconds, dtype=np.int64) * 1_000_000, TS)


def _floats(values: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.float64), from_pandas=True)  # NaN -> null


def _to_arrow(
    sim: BlockOutput, pop: Population, names: _Names, first_decision: int, first_transaction: int
) -> dict[str, pa.Table]:
    cust_ids = pa.array(pop.customer_ids())
    # every decision id string once; rows take from it (truth has ~10 rows per decision)
    decision_ids = _ids("D", first_decision + np.arange(sim.n_decisions), 10)
    tables: dict[str, pa.Table] = {}
    tables["customers"] = pa.table(
        {
            "customer_id": cust_ids,
            "created_at": _ts(pop.created_s),
            "email_opt_in": pa.array(pop.email),
            "sms_opt_in": pa.array(pop.sms),
            "push_opt_in": pa.array(pop.push),
            "region": _take(pa.array(REGIONS), pop.region),
            "age_band": _take(pa.array(AGE_BANDS), pop.age_band),
            "loyalty_tier": _take(pa.array(LOYALTY_TIERS), pop.loyalty_tier),
        }
    )

    t = sim.transactions
    order = np.lexsort((t["ts"], t["cust"]))
    tables["transactions"] = pa.table(
        {
            "transaction_id": _ids("T", first_transaction + np.arange(len(order)), 10),
            "customer_id": _take(cust_ids, t["cust"][order]),
            "ts": _ts(t["ts"][order]),
            "amount": _floats(t["amount"][order]),
            "category": _take(names.categories, t["category"][order]),
            "product_id": _take(names.products, t["product"][order]),
            "quantity": pa.array(t["quantity"][order].astype(np.int64)),
            "channel": _take(names.tx_channels, t["channel"][order]),
        }
    )

    i = sim.interactions
    order = np.lexsort((i["event"], i["tp"], i["ts"], i["cust"]))
    cols = {k: v[order] for k, v in i.items()}
    # the contract key (customer, ts, touchpoint, event type) must be unique
    dup = np.zeros(len(order), dtype=bool)
    if len(order):
        dup[1:] = (
            (np.diff(cols["cust"]) == 0)
            & (np.diff(cols["ts"]) == 0)
            & (np.diff(cols["tp"]) == 0)
            & (np.diff(cols["event"]) == 0)
        )
    cols = {k: v[~dup] for k, v in cols.items()}
    tables["interactions"] = pa.table(
        {
            "customer_id": _take(cust_ids, cols["cust"]),
            "ts": _ts(cols["ts"]),
            "touchpoint_id": _take(names.touchpoints, cols["tp"]),
            "event_type": _take(names.events, cols["event"]),
            "value": _floats(cols["value"]),
            "category": _take(names.categories, cols["category"]),
        }
    )

    dcs = sim.decisions
    order = np.lexsort((dcs["position"], dcs["decision"]))
    dcs = {k: v[order] for k, v in dcs.items()}
    n_pages = len(CATEGORIES) + 1
    context_code = dcs["device"] * n_pages + np.where(
        dcs["page_category"] < 0, len(CATEGORIES), dcs["page_category"]
    )
    tables["decisions"] = pa.table(
        {
            "decision_id": decision_ids.take(dcs["decision"]),
            "ts": _ts(dcs["ts"]),
            "touchpoint_id": _take(names.touchpoints, dcs["tp"]),
            "offer_id": _take(names.offers, dcs["offer"]),
            "customer_id": _take(cust_ids, dcs["cust"]),
            "position": pa.array(dcs["position"].astype(np.int64)),
            "propensity": _floats(dcs["propensity"]),
            "policy": pa.array(np.full(len(order), POLICY_NAME)),
            "context": _take(names.contexts, context_code),
        }
    )

    o = sim.outcomes
    order = np.lexsort((o["ts"], o["offer"], o["decision"]))
    o = {k: v[order] for k, v in o.items()}
    tables["outcomes"] = pa.table(
        {
            "decision_id": decision_ids.take(o["decision"]),
            "offer_id": _take(names.offers, o["offer"]),
            "ts": _ts(o["ts"]),
            "outcome": _take(names.outcomes, o["outcome"]),
            "revenue": _floats(o["revenue"]),
        }
    )

    tr = sim.truth
    tables["truth"] = pa.table(
        {
            "decision_id": decision_ids.take(tr["decision"]),
            "offer_id": _take(names.offers, tr["offer"]),
            "p_accept": _floats(tr["p_accept"]),
        }
    )

    prefs = {"customer_id": cust_ids}
    for k, c in enumerate(CATEGORIES):
        prefs[f"taste_{c}"] = pa.array(pop.taste[:, k])
    for k, c in enumerate(HABIT_CHANNELS):
        prefs[f"habit_{c}"] = pa.array(pop.channel_habit[:, k])
    for name in (
        "price_sensitivity",
        "activity",
        "spend_level",
        "satisfaction",
        "issue_proneness",
        "responsiveness",
    ):
        prefs[name] = pa.array(np.asarray(getattr(pop, name), dtype=np.float64))
    tables["preferences"] = pa.table(prefs)
    return tables
