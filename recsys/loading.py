"""Validated, atomic, idempotent loading of contract files into the DuckDB warehouse.

``load_directory`` reads every contract table found in a folder (CSV, Parquet, and YAML for
offers and touchpoints), validates it chunk by chunk (:mod:`recsys.validation`), stages the
rows in temporary tables, checks keys and references across all rows (the new batch plus
what the warehouse holds), and merges in ONE transaction:

- dimension tables (customers, offers, touchpoints) are upserted by key;
- event tables append only rows whose key is not yet stored, so loading the same files
  twice adds nothing and a newer batch adds only its new rows. Purchases without a
  ``transaction_id`` (interactions without an ``event_id``) are identified by their content
  plus their ordinal among identical rows of the file: two identical purchases stay two.

The summary says, per file, how many rows are new, updated (a catalogue row whose stored
values change, a column the file leaves out included), unchanged (already stored as they
are), and repeats of another row of the file that the table keeps once (and why).

Any problem rolls the whole load back: a refused load keeps nothing of itself.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from recsys import warehouse
from recsys.contract import (
    ARROW_TYPES,
    TABLES,
    ColumnType,
    Problem,
    Report,
    TableSpec,
)
from recsys.errors import ContractError
from recsys.table_files import find_table_files, read_chunks
from recsys.validation import validate_frame

log = logging.getLogger(__name__)

MAX_PROBLEMS = 1_000  # problems kept in detail; the rest are only counted


@dataclass
class TableLoad:
    """What a load did with one file's rows: each row read is new, updated (a catalogue row
    whose key was stored with other values), unchanged (stored as it is), or a repeat of another row of
    the same file that the table keeps once (``duplicates``, said why in ``duplicate_rule``).
    """

    table: str
    file: str
    rows_read: int = 0
    rows_new: int = 0
    rows_updated: int = 0
    duplicates: int = 0
    duplicate_rule: str = ""

    @property
    def rows_unchanged(self) -> int:
        return self.rows_read - self.rows_new - self.rows_updated - self.duplicates


@dataclass
class LoadSummary:
    tables: list[TableLoad] = field(default_factory=list)
    seconds: float = 0.0

    def format(self) -> str:
        lines = [
            f"{'table':<14}{'read':>12}{'new':>12}{'updated':>12}{'unchanged':>16}"
            f"{'duplicates':>12}  file"
        ]
        for t in self.tables:
            lines.append(
                f"{t.table:<14}{t.rows_read:>12,}{t.rows_new:>12,}{t.rows_updated:>12,}"
                f"{t.rows_unchanged:>16,}{t.duplicates:>12,}  {t.file}"
            )
        for t in self.tables:
            if t.duplicates:
                lines.append(f"{t.table}: {t.duplicates:,} rows stored once: {t.duplicate_rule}")
        lines.append(f"loaded in {self.seconds:.1f} s")
        return "\n".join(lines)


class _Problems:
    """Collects problems; keeps the first MAX_PROBLEMS and counts the rest."""

    def __init__(self) -> None:
        self.items: list[Problem] = []
        self.total = 0

    def extend(self, problems: list[Problem]) -> None:
        self.total += len(problems)
        room = MAX_PROBLEMS - len(self.items)
        if room > 0:
            self.items.extend(problems[:room])

    def raise_if_any(self, what: str) -> None:
        if self.total:
            text = Report(self.items, total=self.total).format(limit=20)
            raise ContractError(
                f"{what} refused, {self.total} problem(s):\n{text}",
                problems=self.items,
                total=self.total,
            )


def to_arrow(frame: pd.DataFrame, spec: TableSpec) -> pa.Table:
    """Typed frame -> Arrow table with the contract's types (extra columns inferred)."""
    arrays, names = [], []
    for col in spec.columns:
        values = frame[col.name]
        if col.type == ColumnType.TIMESTAMP:
            values = values.astype("datetime64[us]")
        elif col.type in (ColumnType.INT, ColumnType.BOOL, ColumnType.FLOAT):
            values = values.astype(object).where(values.notna(), None)
        arrays.append(pa.array(values, type=ARROW_TYPES[col.type], from_pandas=True))
        names.append(col.name)
    for name in frame.columns:
        if name not in spec.column_names:
            arrays.append(pa.array(frame[name], from_pandas=True))
            names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


# ---------------------------------------------------------------- staging and checks


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


STAGING = "_recsys_staging"


def _stage_name(table: str) -> str:
    """Staging table of ``table``, in the separate staging database of the load."""
    return f"{STAGING}._stage_{table}"


def _stage_file(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, path: Path, problems: _Problems
) -> tuple[int, bool]:
    """Validate ``path`` and copy its rows into a temp staging table; returns rows read and
    whether it was staged (a file with problems is read to its end, not staged)."""
    stage = _stage_name(spec.name)
    rows = 0
    created = False
    refused = False
    for chunk in read_chunks(path, spec):
        typed, found = validate_frame(
            chunk, spec, str(path), first_row=rows + 1, check_unique=False
        )
        if typed is None:
            problems.extend(found)
            refused = True
        elif not refused:
            table = to_arrow(typed, spec)
            row_numbers = pa.array(range(rows + 1, rows + 1 + len(typed)), type=pa.int64())
            table = table.append_column("_row", row_numbers)
            con.register("_chunk", table)
            if not created:
                con.execute(f"CREATE OR REPLACE TABLE {stage} AS SELECT * FROM _chunk")
                created = True
            else:
                con.execute(f"INSERT INTO {stage} BY NAME SELECT * FROM _chunk")
            con.unregister("_chunk")
        rows += len(chunk)
    if not created and not refused:
        # A header-only file: an empty batch of this table.
        cols = ", ".join(f"{_quote(c.name)} {warehouse.DUCKDB_TYPES[c.type]}" for c in spec.columns)
        con.execute(f"CREATE OR REPLACE TABLE {stage} ({cols}, _row BIGINT)")
    return rows, not refused


def _key_condition(spec: TableSpec, left: str, right: str) -> str:
    return " AND ".join(
        f"{left}.{_quote(k)} IS NOT DISTINCT FROM {right}.{_quote(k)}" for k in spec.key
    )


def _check_duplicates(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, file: str, problems: _Problems
) -> None:
    if not (spec.key and spec.unique_key):
        return
    stage = _stage_name(spec.name)
    keys = ", ".join(_quote(k) for k in spec.key)
    nonnull = " AND ".join(f"{_quote(k)} IS NOT NULL" for k in spec.key)
    total = warehouse.one_row(
        con,
        f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM {stage} "
        f"WHERE {nonnull} GROUP BY {keys} HAVING count(*) > 1)",
    )[0]
    if not total:
        return
    rows = con.execute(
        f"SELECT _row, {keys} FROM (SELECT *, count(*) OVER (PARTITION BY {keys}) AS n, "
        f"row_number() OVER (PARTITION BY {keys} ORDER BY _row) AS k FROM {stage} "
        f"WHERE {nonnull}) WHERE n > 1 AND k > 1 ORDER BY _row LIMIT {MAX_PROBLEMS}"
    ).fetchall()
    found = []
    for row, *key in rows:
        shown = key[0] if len(key) == 1 else tuple(key)
        found.append(
            Problem(
                file, int(row), ", ".join(spec.key), f"duplicate key {shown!r}; each must be unique"
            )
        )
    problems.extend(found)
    problems.total += int(total) - len(found)


def _check_references(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    file: str,
    staged: set[str],
    problems: _Problems,
    unchecked: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    """Rows naming keys found neither in the warehouse nor in the staged files; references
    to a table in ``unchecked`` (its file was refused) are not checked."""
    stage = _stage_name(spec.name)
    for ref in spec.references:
        if ref.target in unchecked:
            continue
        target_cols = ", ".join(_quote(c) for c in ref.target_columns)
        sources = [f"SELECT {target_cols} FROM {_quote(ref.target)}"]
        if ref.target in staged:
            sources.append(f"SELECT {target_cols} FROM {_stage_name(ref.target)}")
        known = " UNION ALL ".join(sources)
        join = " AND ".join(
            f"s.{_quote(a)} = k.{_quote(b)}"
            for a, b in zip(ref.columns, ref.target_columns, strict=True)
        )
        nonnull = " AND ".join(f"s.{_quote(c)} IS NOT NULL" for c in ref.columns)
        cols = ", ".join(f"s.{_quote(c)}" for c in ref.columns)
        query = (
            f"SELECT s._row, {cols} FROM {stage} s WHERE {nonnull} AND NOT EXISTS "
            f"(SELECT 1 FROM ({known}) k WHERE {join})"
        )
        total = warehouse.one_row(con, f"SELECT count(*) FROM ({query})")[0]
        if not total:
            continue
        rows = con.execute(f"{query} ORDER BY s._row LIMIT {MAX_PROBLEMS}").fetchall()
        target = f"{ref.target}.{', '.join(ref.target_columns)}"
        found = []
        for row, *values in rows:
            shown = values[0] if len(values) == 1 else tuple(values)
            found.append(
                Problem(
                    file,
                    int(row),
                    ", ".join(ref.columns),
                    f"unknown {shown!r}: not found in {target}",
                )
            )
        problems.extend(found)
        problems.total += int(total) - len(found)
    if spec.name == "offers":
        _check_offer_touchpoints(con, file, staged, problems)


def _check_offer_touchpoints(
    con: duckdb.DuckDBPyConnection, file: str, staged: set[str], problems: _Problems
) -> None:
    known = "SELECT touchpoint_id FROM touchpoints"
    if "touchpoints" in staged:
        known += f" UNION ALL SELECT touchpoint_id FROM {_stage_name('touchpoints')}"
    rows = con.execute(
        f"SELECT _row, tp FROM (SELECT _row, unnest(touchpoints) AS tp FROM {_stage_name('offers')}) "
        f"WHERE tp NOT IN ({known}) ORDER BY _row LIMIT {MAX_PROBLEMS}"
    ).fetchall()
    problems.extend(
        [
            Problem(
                file,
                int(row),
                "touchpoints",
                f"unknown touchpoint {tp!r}: not found in touchpoints.touchpoint_id",
            )
            for row, tp in rows
        ]
    )


# ---------------------------------------------------------------- merge


def _add_extra_columns(con: duckdb.DuckDBPyConnection, spec: TableSpec) -> None:
    have = warehouse.existing_columns(con, spec.name)
    staged = con.execute(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_catalog = ? AND table_name = ? AND column_name <> '_row' "
        "ORDER BY ordinal_position",
        [STAGING, f"_stage_{spec.name}"],
    ).fetchall()
    for name, dtype in staged:
        if name not in have:
            con.execute(f"ALTER TABLE {_quote(spec.name)} ADD COLUMN {_quote(name)} {dtype}")


#: Event tables whose rows may come without an id, and the id column they may carry.
ROW_IDS = {"transactions": "transaction_id", "interactions": "event_id"}


def _staged_columns(con: duckdb.DuckDBPyConnection, spec: TableSpec) -> list[str]:
    return [
        name
        for (name,) in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_catalog = ? "
            "AND table_name = ? AND column_name <> '_row' ORDER BY ordinal_position",
            [STAGING, f"_stage_{spec.name}"],
        ).fetchall()
    ]


def _merge(con: duckdb.DuckDBPyConnection, spec: TableSpec, load: TableLoad) -> None:
    """Merge the staged rows of ``spec`` into the warehouse; fill ``load``'s counts."""
    target = _quote(spec.name)
    _add_extra_columns(con, spec)
    columns = _staged_columns(con, spec)
    before = warehouse.one_row(con, f"SELECT count(*) FROM {target}")[0]
    if spec.kind == "dimension":
        _upsert(con, spec, columns, load)
        return
    id_column = ROW_IDS.get(spec.name)
    if id_column is not None:
        # With an id, the id is the row (a transaction_id is unique in its file; an
        # interaction's event_id is stored once). Without one, a row is its content plus
        # its ordinal among identical rows of the file: two identical purchases on one
        # day are two purchases, and loading the same file again adds nothing.
        has_id = id_column in columns
        if has_id:
            load.duplicates += _append_new(
                con, spec, (id_column,), f"{_quote(id_column)} IS NOT NULL", True
            )
        without_id = f"{_quote(id_column)} IS NULL"
        stored_id = id_column in warehouse.existing_columns(con, spec.name)
        _append_by_content(
            con,
            spec,
            [c for c in columns if c != id_column],
            without_id if has_id else "TRUE",
            without_id if stored_id else "TRUE",
        )
        load.duplicate_rule = f"repeated {id_column} in the file"
    else:
        load.duplicates += _append_new(con, spec, spec.key, "TRUE", not spec.unique_key)
        load.duplicate_rule = (
            f"repeated ({', '.join(spec.key)}) in the file: the same {spec.name} row once"
        )
    load.rows_new = warehouse.one_row(con, f"SELECT count(*) FROM {target}")[0] - before


def _upsert(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, columns: list[str], load: TableLoad
) -> None:
    """A newer catalogue replaces the rows it names (last row of a key wins)."""
    stage, target = _stage_name(spec.name), _quote(spec.name)
    keys = ", ".join(map(_quote, spec.key))
    latest = (
        f"(SELECT * EXCLUDE (_k) FROM (SELECT *, row_number() OVER (PARTITION BY {keys} "
        f"ORDER BY _row DESC) AS _k FROM {stage}) WHERE _k = 1)"
    )
    # A stored row is unchanged only if the file gives every one of its columns the same
    # value: a column the warehouse has but the file lacks becomes NULL when the row is
    # replaced, so a stored value there is a change too (e.g. an attribute removed).
    absent = [c for c in warehouse.existing_columns(con, spec.name) if c not in columns]
    same = " AND ".join(
        [f"t.{_quote(c)} IS NOT DISTINCT FROM s.{_quote(c)}" for c in columns]
        + [f"t.{_quote(c)} IS NULL" for c in absent]
    )
    new, updated = warehouse.one_row(
        con,
        f"SELECT count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM {target} t "
        f"WHERE {_key_condition(spec, 't', 's')})), "
        f"count(*) FILTER (WHERE EXISTS (SELECT 1 FROM {target} t "
        f"WHERE {_key_condition(spec, 't', 's')}) AND NOT EXISTS (SELECT 1 FROM {target} t "
        f"WHERE {same})) FROM {latest} s",
    )
    con.execute(
        f"DELETE FROM {target} t WHERE EXISTS "
        f"(SELECT 1 FROM {stage} s WHERE {_key_condition(spec, 't', 's')})"
    )
    con.execute(f"INSERT INTO {target} BY NAME SELECT * EXCLUDE (_row) FROM {latest} ORDER BY _row")
    load.rows_new, load.rows_updated = int(new), int(updated)
    # a key repeated in the file is refused before (unique keys); nothing is collapsed


def _append_new(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    key: tuple[str, ...],
    where: str,
    dedup_batch: bool,
) -> int:
    """Append the rows whose ``key`` is not stored; returns the rows of the file that
    repeat a key of an earlier row of the file (kept once when ``dedup_batch``)."""
    stage, target = _stage_name(spec.name), _quote(spec.name)
    source = f"(SELECT * FROM {stage} WHERE {where})"
    repeated = 0
    if dedup_batch:
        partition = ", ".join(_quote(k) for k in key)
        repeated = warehouse.one_row(
            con,
            f"SELECT count(*) - count(DISTINCT ({partition})) FROM {stage} WHERE {where}",
        )[0]
        source = (
            f"(SELECT * FROM {stage} WHERE {where} "
            f"QUALIFY row_number() OVER (PARTITION BY {partition} ORDER BY _row) = 1)"
        )
    condition = " AND ".join(f"t.{_quote(k)} IS NOT DISTINCT FROM s.{_quote(k)}" for k in key)
    con.execute(
        f"INSERT INTO {target} BY NAME SELECT * EXCLUDE (_row) FROM {source} s "
        f"WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {condition})"
    )
    return int(repeated)


def _append_by_content(
    con: duckdb.DuckDBPyConnection,
    spec: TableSpec,
    content: list[str],
    where: str,
    stored_where: str,
) -> None:
    """Append the k-th of n identical rows of the file unless k identical rows are stored."""
    stage, target = _stage_name(spec.name), _quote(spec.name)
    cols = ", ".join(_quote(c) for c in content)
    match = " AND ".join(f"s.{_quote(c)} IS NOT DISTINCT FROM t.{_quote(c)}" for c in content)
    con.execute(
        f"INSERT INTO {target} BY NAME "
        f"WITH staged AS (SELECT *, row_number() OVER (PARTITION BY {cols} ORDER BY _row) "
        f"AS _k FROM {stage} WHERE {where}), "
        f"stored AS (SELECT {cols}, count(*) AS _n FROM {target} WHERE {stored_where} "
        "GROUP BY ALL) "
        f"SELECT s.* EXCLUDE (_row, _k) FROM staged s LEFT JOIN stored t ON {match} "
        f"WHERE s._k > coalesce(t._n, 0) ORDER BY s._row"
    )


# ---------------------------------------------------------------- entry point


#: A check of the loaded state before it is committed (e.g. rule features against the
#: feature spec): sees the warehouse with the new rows, returns the problems found.
LoadCheck = Callable[[duckdb.DuckDBPyConnection], list[Problem]]


def load_directory(
    directory: str | Path,
    con: duckdb.DuckDBPyConnection,
    *,
    dry_run: bool = False,
    checks: Sequence[LoadCheck] = (),
) -> LoadSummary:
    """Validate and load every contract table in ``directory`` in one transaction.

    Every problem is reported at once: each file is validated, and the duplicate and
    reference checks run on every file that passed (against the warehouse and the other
    files). ``checks`` then see the warehouse with the new rows, before the commit.
    ``dry_run`` does all of it and rolls back: the summary says what a load would add.

    Raises
    ------
    ContractError
        If any file breaks the contract or a check finds a problem; the warehouse is left
        exactly as it was.
    """
    started = time.perf_counter()
    directory = Path(directory)
    files = find_table_files(directory)
    warehouse.create_tables(con)
    problems = _Problems()
    summary = LoadSummary()
    what = f"{'validation' if dry_run else 'load'} of {directory}"
    # Rows are validated and staged in a separate, throw-away database; the warehouse itself
    # changes only in the final merge transaction, so a refused load keeps nothing, and the
    # staging can spill to disk instead of living in one huge open transaction.
    with tempfile.TemporaryDirectory(prefix="recsys-load-") as scratch:
        database = warehouse.one_row(con, "SELECT current_database()")[0]
        staging_file = Path(scratch) / "staging.duckdb"
        con.execute(f"ATTACH '{staging_file}' AS {STAGING}")
        try:
            rows_read: dict[str, int] = {}
            staged: set[str] = set()
            for name, path in files.items():
                rows_read[name], ok = _stage_file(con, TABLES[name], path, problems)
                if ok:
                    staged.add(name)
            refused = set(files) - staged
            for name in staged:
                _check_duplicates(con, TABLES[name], str(files[name]), problems)
            for name in staged:
                _check_references(
                    con, TABLES[name], str(files[name]), staged, problems, unchecked=refused
                )
            problems.raise_if_any(what)
            con.execute("BEGIN TRANSACTION")
            try:
                for name, path in files.items():
                    load = TableLoad(name, path.name, rows_read[name])
                    _merge(con, TABLES[name], load)
                    summary.tables.append(load)
                for check in checks:
                    problems.extend(check(con))
                problems.raise_if_any(what)
                con.execute("ROLLBACK" if dry_run else "COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        finally:
            con.execute(f"USE {_quote(database)}")
            con.execute(f"DETACH {STAGING}")
    summary.seconds = time.perf_counter() - started
    log.info("%s %s tables from %s in %.1f s", "validated" if dry_run else "loaded", len(files),
             directory, summary.seconds)  # fmt: skip
    return summary
