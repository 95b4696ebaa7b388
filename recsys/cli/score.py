"""``recsys score``: the offers of a batch touchpoint (an email campaign) for every customer.

Two layouts of the output file (``--layout``), each a small class in :data:`LAYOUTS`:

- ``recipients`` (default): one row per recipient, ready to import into an email tool:
  ``customer_id, decision_id, offer_1_id, offer_1_name, offer_1_type, offer_1_category,
  offer_1_<attribute>, ..., offer_k_*`` for k = ``--limit`` (default: the touchpoint's slots);
  slots a customer has no offer for are empty; customers without any offer (no consent,
  nothing eligible) are not recipients;
- ``offers``: one row per served offer with its rank, score, priority and propensity (what
  the decision log holds; for analysis).

Content fields are the offer's type and category and every attribute column of the offers
shown at the touchpoint (the contract keeps columns it does not name, e.g. ``subject``,
``image_url``, ``landing_url``), as text.
"""

from __future__ import annotations

import difflib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import typer

from recsys.cli.as_of import AS_OF_HELP, resolve_as_of

if TYPE_CHECKING:
    import pyarrow as pa

    from recsys.catalog import Catalog
    from recsys.decision import DecisionBatch

logger = logging.getLogger(__name__)

#: Customers per pipeline run of ``recsys score``.
SCORE_CHUNK = 5_000
#: Chunks ``recsys score`` decides at once, in threads (the model's predict releases the GIL).
IN_FLIGHT = 2
#: A scoring of one chunk slower than this counts as failed for the circuit breaker.
BATCH_SLOW_SCORING_MS = 600_000.0
#: ``recsys score`` runs Python's cyclic garbage collector once per this many chunks.
GC_EVERY_CHUNKS = 20

SCORE_EXAMPLE = (
    "Example: recsys score --touchpoint email_newsletter --out newsletter.csv --limit 3 --dry-run"
)


class ScoreLayout(Protocol):
    """How decided batches become rows of the output file."""

    def schema(self) -> pa.Schema: ...

    def to_arrow(self, batch: DecisionBatch) -> pa.Table: ...


class OffersLayout:
    """One row per served offer (rank, score, priority, propensity): the decision log's view."""

    def __init__(self, catalog: Catalog, touchpoint_id: str, slots: int):
        self._schema = score_schema()

    def schema(self) -> pa.Schema:
        return self._schema

    def to_arrow(self, batch: DecisionBatch) -> pa.Table:
        return decision_table_to_arrow(batch, self._schema)


#: Content fields every offer has (besides id and name), as ``offer_<k>_<field>``.
OFFER_CONTENT_FIELDS = ("type", "category")


class RecipientsLayout:
    """One row per recipient: ``customer_id, decision_id, offer_1_id, offer_1_name,
    offer_1_<content fields>, ..., offer_<slots>_*`` (import-ready for email tools).

    Parameters
    ----------
    catalog : Catalog
    touchpoint_id : str
        The content fields are those of the offers shown there.
    slots : int
        Offer columns per row (``--limit``); a customer with fewer offers has empty slots.
    """

    def __init__(self, catalog: Catalog, touchpoint_id: str, slots: int):
        import pyarrow as pa

        offers = catalog.offers_at(touchpoint_id)
        attributes = sorted({name for o in offers for name in o.attributes})
        self.content_fields = (*OFFER_CONTENT_FIELDS, *attributes)
        self.slots = slots
        self._offer_ids = pa.array([o.offer_id for o in offers], type=pa.string())
        content = {
            "name": [o.name for o in offers],
            "type": [o.offer_type for o in offers],
            "category": [o.category for o in offers],
        }
        for name in attributes:
            content[name] = [_text(o.attributes.get(name)) for o in offers]
        self._content = {k: pa.array(v, type=pa.string()) for k, v in content.items()}
        fields = [("customer_id", pa.string()), ("decision_id", pa.string())]
        for k in range(1, slots + 1):
            fields += [
                (f"offer_{k}_{f}", pa.string()) for f in ("id", "name", *self.content_fields)
            ]
        self._schema = pa.schema(fields)

    def schema(self) -> pa.Schema:
        return self._schema

    def to_arrow(self, batch: DecisionBatch) -> pa.Table:
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        starts, ends = batch.row_start[:-1], batch.row_start[1:]
        recipients = np.flatnonzero(ends > starts)
        first, count = starts[recipients], (ends - starts)[recipients]
        rows_offer = pa.array(batch.offer_id, type=pa.string())
        # Every served offer's position in the content columns (offers of this touchpoint).
        rows_content = pc.index_in(rows_offer, value_set=self._offer_ids)
        take = pa.array(recipients, type=pa.int64())
        columns = [
            pa.array(batch.customer_id, type=pa.string()).take(take),
            pa.array(batch.decision_id, type=pa.string()).take(take),
        ]
        for k in range(self.slots):
            empty = count <= k
            row = pa.array(np.where(empty, 0, first + k), type=pa.int64(), mask=empty)
            columns.append(rows_offer.take(row))
            position = rows_content.take(row)
            columns.append(self._content["name"].take(position))
            columns += [self._content[f].take(position) for f in self.content_fields]
        return pa.Table.from_arrays(columns, schema=self._schema)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


#: ``--layout`` -> how rows are written.
LAYOUTS: dict[str, type[OffersLayout] | type[RecipientsLayout]] = {
    "recipients": RecipientsLayout,
    "offers": OffersLayout,
}


def register(app: typer.Typer) -> None:
    """Add the top-level ``score`` command to ``app``."""
    app.command("score", epilog=SCORE_EXAMPLE)(score)


def score(
    touchpoint: str = typer.Option(
        ...,
        help="Touchpoint id, e.g. email_newsletter (or a channel with one batch touchpoint); "
        "a wrong one lists those that exist.",
    ),
    out: Path = typer.Option(..., help="Output file: .csv or .parquet."),
    limit: int = typer.Option(
        None, min=1, help="Offers per customer (default: the touchpoint's slots)."
    ),
    layout: str = typer.Option(
        "recipients",
        help="recipients: one row per customer with offer_1_* ... offer_k_* columns (for "
        "email tools); offers: one row per offer with rank, score and propensity.",
    ),
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
        help="Decide this run epsilon-greedy with this exploration share (0 = greedy). "
        "Default: the settings serving.policy (softmax) and serving.policy_params, as the "
        "service (docs/serving.md, Exploration).",
    ),
) -> None:
    """Top-k offers for every eligible customer of a batch touchpoint (e.g. an email).

    Uses the same decision pipeline as the HTTP service and logs decisions (contacts) the
    same way unless --dry-run, deciding as of --as-of. Without a champion model it serves
    the rules/popularity fallback and says so. The decision id of each row goes into the
    email's tracking links (events name it).
    """
    import duckdb

    from recsys.cli.stores import (
        check_online_store,
        check_tracking_store,
        existing_warehouse,
        writable_out,
    )
    from recsys.progress import progress_while
    from recsys.settings import load_settings
    from serving.components import build_components

    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise typer.BadParameter(
            f"must end in .parquet or .csv, got {out.name!r}", param_hint="--out"
        )
    if layout not in LAYOUTS:
        raise typer.BadParameter(
            f"must be one of {', '.join(LAYOUTS)}, got {layout!r}", param_hint="--layout"
        )
    settings = load_settings(
        serving=None if epsilon is None else {"epsilon": epsilon, "policy": "epsilon_greedy"},
        # A batch has no caller waiting: a slow scoring of a big chunk is no reason to switch
        # to the fallback (only failures open the circuit breaker).
        lifecycle={"start_without_model": True, "breaker_slow_ms": BATCH_SLOW_SCORING_MS},
    )
    writable_out(out)
    warehouse_path = existing_warehouse(settings)
    check_online_store(settings)
    if settings.serving.model_dir is None:
        check_tracking_store(settings)
    # The first load of a model compiles it to native code: up to a minute with no output.
    with progress_while("loading the model, features and catalogue (a first load compiles)"):
        components = build_components(settings)
    try:
        catalog = components.pipeline.catalog
        tp_id = resolve_touchpoint(catalog, touchpoint)
        served = components.holder.current
        if served.is_fallback:
            typer.echo(
                f"no champion model ({components.holder.last_error or 'none registered'}): "
                f"serving the {served.model.info.version} fallback (rules and popularity); "
                "train one with `recsys train --promote-if-no-champion`",
                err=True,
            )
        slots = limit or catalog.touchpoints[tp_id].slots
        writer_layout = LAYOUTS[layout](catalog, tp_id, slots)
        con = duckdb.connect(str(warehouse_path), read_only=True)
        query = "SELECT customer_id FROM customers ORDER BY customer_id"
        if max_customers:
            query += f" LIMIT {int(max_customers)}"
        customer_ids = [r[0] for r in con.execute(query).fetchall()]
        now = resolve_as_of(as_of, con).replace(tzinfo=UTC)
        con.close()
        summary = score_customers(
            components.pipeline, customer_ids, tp_id, out, chunk=chunk, record=record,
            limit=slots, now=now, layout=writer_layout,
        )  # fmt: skip
        typer.echo(
            f"{summary.customers_with_offers:,} of {summary.customers:,} customers got offers "
            f"at {tp_id} ({summary.rows:,} rows, layout {layout}) in {summary.seconds:.1f} s "
            f"-> {out}" + ("" if record else "  (dry run: decisions not logged)")
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
    """Columns of the ``offers`` layout (one row per served offer)."""
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
    layout: ScoreLayout | None = None,
) -> ScoreSummary:
    """Decide ``touchpoint_id`` for every customer, ``chunk`` at a time; write ``out``.

    Every chunk is one run of the decision pipeline at ``now`` (default: the pipeline's clock
    when the run started; the decisions the HTTP service gives those customers at that
    time), written straight from the batch's columns to Arrow in ``layout`` (default: one
    row per offer): no Python object per decision unless they are recorded.

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

    from recsys.decision import DecisionRequest

    rows_of = layout or OffersLayout(pipeline.catalog, touchpoint_id, limit or 1)
    schema = rows_of.schema()
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
        table = rows_of.to_arrow(batch)
        n_rows += table.num_rows
        writer.write_table(table)
        bar.update(len(batch))

    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()  # what start-up loaded is never collected: keep it out of every collection
    gc.disable()
    bar = tqdm(total=len(customer_ids), desc="scoring", unit="customer", unit_scale=True,
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
    written_chunks = 0

    def write_oldest() -> None:
        nonlocal written_chunks
        t0 = time.perf_counter()
        if written_chunks and written_chunks % GC_EVERY_CHUNKS == 0:
            gc.collect()
        batch = pending.popleft().result()
        t1 = time.perf_counter()
        write(batch)
        written_chunks += 1
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


def resolve_touchpoint(catalog: Catalog, name: str) -> str:
    """The touchpoint id ``name`` names: an id, or a channel with one batch touchpoint.

    A wrong name is a usage error listing the touchpoints that exist (the batch ones first).
    """
    if name in catalog.touchpoints:
        return name
    by_channel = [t for t in catalog.touchpoints.values() if t.channel == name]
    batch = [t for t in by_channel if t.mode == "batch"] or by_channel
    if len(batch) == 1:
        return batch[0].touchpoint_id
    if batch:
        raise typer.BadParameter(
            f"must be one touchpoint id; channel {name!r} has "
            f"{', '.join(sorted(t.touchpoint_id for t in batch))}",
            param_hint="--touchpoint",
        )
    batch_ids = sorted(t.touchpoint_id for t in catalog.touchpoints.values() if t.mode == "batch")
    others = sorted(set(catalog.touchpoints) - set(batch_ids))
    close = difflib.get_close_matches(name, list(catalog.touchpoints), n=3)
    raise typer.BadParameter(
        f"must be a touchpoint id, got {name!r}"
        + (f" (did you mean {', '.join(close)}?)" if close else "")
        + f"; batch touchpoints: {', '.join(batch_ids) or 'none'}; "
        f"others: {', '.join(others) or 'none'}",
        param_hint="--touchpoint",
    )
