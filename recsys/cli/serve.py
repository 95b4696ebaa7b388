"""``recsys serve`` (the HTTP decision service) and ``recsys score`` (batch touchpoints)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import typer

from recsys.cli.as_of import AS_OF_HELP, resolve_as_of

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add the top-level ``serve`` and ``score`` commands to ``app``."""
    app.command("serve")(serve)
    app.command("score")(score)
    app.command("export-events")(export_events)


def export_events(
    out_dir: Path = typer.Argument(..., help="Folder for decisions.parquet and outcomes.parquet."),
    db: Path = typer.Option(None, help="Warehouse (for the known customer ids); default settings."),
) -> None:
    """Write the event log as contract files; then `recsys data load OUT_DIR` (closed loop)."""
    import duckdb

    from recsys.eventlog import export_contract, open_event_log
    from recsys.settings import load_settings

    settings = load_settings()
    warehouse_path = db or settings.warehouse_path
    known = None
    if Path(warehouse_path).exists():
        con = duckdb.connect(str(warehouse_path), read_only=True)
        known = {r[0] for r in con.execute("SELECT customer_id FROM customers").fetchall()}
        con.close()
    log = open_event_log(settings.event_log_url)
    try:
        summary = export_contract(log, out_dir, known_customers=known)
    finally:
        log.close()
    typer.echo(
        f"{summary.decision_rows:,} decision rows -> {summary.decisions_path}\n"
        f"{summary.outcome_rows:,} outcomes -> {summary.outcomes_path}\n"
        f"{summary.anonymised_customers:,} customers unknown to the warehouse exported as "
        f"anonymous\nnext: recsys data load {out_dir}"
    )


def serve(
    host: str = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    port: int = typer.Option(None, min=1, max=65535, help="Port (default 8000)."),
    workers: int = typer.Option(None, min=1, help="uvicorn worker processes (default 1)."),
    epsilon: float = typer.Option(
        None, min=0.0, max=1.0, help="Exploration share (default 0.05); 0 = greedy."
    ),
    model_dir: Path = typer.Option(
        None, help="Serve this local model folder instead of the registry's champion."
    ),
    catalog: Path = typer.Option(
        None, help="Warehouse file or folder of offers/touchpoints (default: the warehouse)."
    ),
) -> None:
    """Start the decision service (FastAPI on uvicorn) on the champion model.

    --workers N runs N uvicorn worker processes on one socket; beyond one host, run
    replicas behind a load balancer (docs/operations.md).
    """
    from recsys.settings import load_settings
    from serving.main import run_server

    # Worker processes build the app from the environment: pass the flags through it.
    for name, value in (
        ("HOST", host),
        ("PORT", port),
        ("WORKERS", workers),
        ("EPSILON", epsilon),
        ("MODEL_DIR", model_dir),
        ("CATALOG_SOURCE", catalog),
    ):
        if value is not None:
            os.environ[f"RECSYS_SERVING__{name}"] = str(value)
    settings = load_settings()
    base = f"http://{settings.serving.host}:{settings.serving.port}"
    typer.echo(
        f"recsys decision service on {base}  (docs: {base}/docs)\n"
        "try:\n"
        f"  curl -s -X POST {base}/v1/decisions -H 'content-type: application/json' "
        '-d \'{"customer_id": "C0000001", "touchpoint": "web_home", "limit": 3}\'\n'
        f"  curl -s '{base}/v1/offers?touchpoint=web_home'"
    )
    run_server(settings)


#: Customers per pipeline run of ``recsys score``.
SCORE_CHUNK = 5_000
#: Chunks ``recsys score`` decides at once, in threads (the model's predict releases the GIL).
IN_FLIGHT = 2
#: ``recsys score`` runs Python's cyclic garbage collector once per this many chunks.
GC_EVERY_CHUNKS = 20


def score(
    touchpoint: str = typer.Option(
        ..., help="Touchpoint id (or a channel with one touchpoint, e.g. email)."
    ),
    out: Path = typer.Option(..., help="Output file: .parquet or .csv."),
    limit: int = typer.Option(None, min=1, help="Offers per customer (default: the slots)."),
    chunk: int = typer.Option(
        SCORE_CHUNK,
        min=1,
        help="Customers decided per pipeline run (memory: ~chunk x candidates x 1 KB).",
    ),
    record: bool = typer.Option(
        True, "--record/--dry-run", help="Log the decisions (contacts count toward caps)."
    ),
    max_customers: int = typer.Option(None, min=1, help="Only the first N customers."),
    as_of: str = typer.Option(None, "--as-of", help=AS_OF_HELP),
    epsilon: float = typer.Option(
        None,
        min=0.0,
        max=1.0,
        help="Exploration share (default: settings serving.epsilon; 0 = greedy).",
    ),
) -> None:
    """Top-k offers for every eligible customer of a batch touchpoint (e.g. an email).

    Uses the same decision pipeline as the HTTP service and logs decisions the same way,
    deciding as of ``--as-of`` (features materialised before then are aged to it).
    """
    import duckdb

    from recsys.settings import load_settings
    from serving.components import build_components

    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise typer.BadParameter(
            f"must end in .parquet or .csv, got {out.name!r}", param_hint="--out"
        )
    settings = load_settings(serving=None if epsilon is None else {"epsilon": epsilon})
    components = build_components(settings)
    try:
        tp_id = _resolve_touchpoint(components.catalog, touchpoint)
        if components.holder.current.is_fallback:
            raise typer.BadParameter(
                f"must name a registered model with a champion, got none "
                f"({components.holder.last_error})",
                param_hint="RECSYS_MODEL_NAME / RECSYS_MODEL_ALIAS",
            )
        con = duckdb.connect(str(settings.warehouse_path), read_only=True)
        query = "SELECT customer_id FROM customers ORDER BY customer_id"
        if max_customers:
            query += f" LIMIT {int(max_customers)}"
        customer_ids = [r[0] for r in con.execute(query).fetchall()]
        now = resolve_as_of(as_of, con).replace(tzinfo=UTC)
        con.close()
        summary = score_customers(
            components.pipeline, customer_ids, tp_id, out, chunk=chunk, record=record,
            limit=limit, now=now,
        )  # fmt: skip
        typer.echo(
            f"{summary.customers_with_offers:,} of {summary.customers:,} customers got offers "
            f"at {tp_id} ({summary.rows:,} rows) in {summary.seconds:.1f} s -> {out}"
            + ("" if record else "  (dry run: decisions not logged)")
        )
    finally:
        components.close()


@dataclass(frozen=True)
class ScoreSummary:
    customers: int
    customers_with_offers: int
    rows: int
    seconds: float


def score_schema():
    """Columns of the ``recsys score`` output (one row per served offer)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("customer_id", pa.string()),
            ("decision_id", pa.string()),
            ("touchpoint_id", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("rank", pa.int32()),
            ("offer_id", pa.string()),
            ("offer_name", pa.string()),
            ("score", pa.float64()),
            ("priority", pa.float64()),
            ("propensity", pa.float64()),
            ("explored", pa.bool_()),
            ("fallback", pa.bool_()),
        ]
    )


def score_customers(
    pipeline,
    customer_ids: list[str],
    touchpoint_id: str,
    out: Path,
    *,
    chunk: int = SCORE_CHUNK,
    record: bool = True,
    limit: int | None = None,
    progress: bool = True,
    timings: dict[str, float] | None = None,
    now: datetime | None = None,
) -> ScoreSummary:
    """Decide ``touchpoint_id`` for every customer, ``chunk`` at a time; write ``out``.

    Every chunk is one run of the decision pipeline at ``now`` (default: the pipeline's clock
    when the run started; the decisions the HTTP service gives those customers at that time), written straight from
    the batch's columns to Arrow: no Python object per decision unless they are recorded.

    Python's cyclic garbage collector is paused while chunks are decided (and run every
    ``GC_EVERY_CHUNKS`` chunks): every chunk allocates many short-lived containers that hold
    no cycles, and full collections triggered by them would traverse everything the process
    has loaded.

    ``timings`` (optional) accumulates seconds spent waiting for the next chunk's decisions
    (``decide (waiting)``, incl. the periodic collection) and converting + writing
    (``write``).
    """
    import gc
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    import numpy as np
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from recsys.decision import DecisionBatch, DecisionRequest

    schema = score_schema()
    out.parent.mkdir(parents=True, exist_ok=True)
    parquet = out.suffix.lower() == ".parquet"
    writer = pq.ParquetWriter(out, schema) if parquet else pacsv.CSVWriter(out, schema)
    started = time.perf_counter()
    now = now or pipeline.clock()
    n_customers = n_rows = 0
    spent = timings if timings is not None else {}

    def add(label: str, seconds: float) -> None:
        spent[label] = spent.get(label, 0.0) + seconds

    def write(batch: DecisionBatch) -> None:
        nonlocal n_customers, n_rows
        n_customers += int(np.count_nonzero(np.diff(batch.row_start)))
        n_rows += batch.n_rows
        writer.write_table(decision_table_to_arrow(batch, schema))
        bar.update()

    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()  # what start-up loaded is never collected: keep it out of every collection
    gc.disable()
    bar = tqdm(total=-(-len(customer_ids) // chunk), desc="scoring", unit="chunk",
               disable=not progress)  # fmt: skip

    def decide(first: int) -> DecisionBatch:
        ids = customer_ids[first : first + chunk]
        return pipeline.run([DecisionRequest(c, touchpoint_id, limit=limit) for c in ids], now,
                            record=record)  # fmt: skip

    starts = range(0, len(customer_ids), chunk)
    # Two chunks in flight: while one waits for the model (predict releases the GIL) the other
    # runs its Python stages. Chunks hold distinct customers, so neither's contacts can
    # change the other's caps; the log re-counts caps at write time all the same.
    pool = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="score")
    pending: deque[Future[DecisionBatch]] = deque()

    def write_oldest() -> None:
        t0 = time.perf_counter()
        if bar.n and bar.n % GC_EVERY_CHUNKS == 0:
            gc.collect()
        batch = pending.popleft().result()
        t1 = time.perf_counter()
        write(batch)
        add("decide (waiting)", t1 - t0)
        add("write", time.perf_counter() - t1)

    try:
        for first in starts:
            pending.append(pool.submit(decide, first))
            if len(pending) == IN_FLIGHT:
                write_oldest()
        while pending:
            write_oldest()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
        writer.close()
        gc.unfreeze()
        if gc_was_enabled:
            gc.enable()
    return ScoreSummary(
        customers=len(customer_ids),
        customers_with_offers=n_customers,
        rows=n_rows,
        seconds=time.perf_counter() - started,
    )


def decision_table_to_arrow(table, schema=None):
    """A :class:`recsys.decision.DecisionBatch` as an Arrow table of ``score_schema()``."""
    import numpy as np
    import pyarrow as pa

    schema = schema or score_schema()
    rows = pa.array(table.row_decision, type=pa.int64())
    fallback = table.fallback[table.row_decision]
    ts = pa.array(
        np.full(table.n_rows, np.datetime64(table.ts.replace(tzinfo=None), "us")),
        type=pa.timestamp("us"),
    ).cast(pa.timestamp("us", tz="UTC"))
    return pa.table(
        [
            pa.array(table.customer_id, type=pa.string()).take(rows),
            pa.array(table.decision_id, type=pa.string()).take(rows),
            pa.array(table.touchpoint_id, type=pa.string()).take(rows),
            ts,
            pa.array(table.rank, type=pa.int32()),
            pa.array(table.offer_id, type=pa.string()),
            pa.array(table.offer_name, type=pa.string()),
            # fallback offers have no model score: null, as in the decision log
            pa.array(table.score, type=pa.float64(), mask=fallback & np.isnan(table.score)),
            pa.array(table.priority, type=pa.float64()),
            pa.array(table.propensity, type=pa.float64()),
            pa.array(table.explored, type=pa.bool_()),
            pa.array(fallback, type=pa.bool_()),
        ],
        schema=schema,
    )


def _resolve_touchpoint(catalog, name: str) -> str:
    if name in catalog.touchpoints:
        return name
    by_channel = [t for t in catalog.touchpoints.values() if t.channel == name]
    batch = [t for t in by_channel if t.mode == "batch"] or by_channel
    if len(batch) == 1:
        return batch[0].touchpoint_id
    known = ", ".join(sorted(catalog.touchpoints))
    hint = f" (channel {name!r} has {', '.join(t.touchpoint_id for t in batch)})" if batch else ""
    raise typer.BadParameter(
        f"must be a touchpoint id, one of {known}; got {name!r}{hint}", param_hint="--touchpoint"
    )
