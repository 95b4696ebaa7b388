"""Reading the catalogue: from contract rows, contract files (YAML, Parquet, CSV) or the warehouse."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.catalog.domain import Catalog, EligibilityRule, Offer, Touchpoint, to_utc
from recsys.errors import ContractError, NotFoundError

logger = logging.getLogger(__name__)

_OFFER_FIELDS = (
    "offer_id",
    "name",
    "offer_type",
    "category",
    "value",
    "touchpoints",
    "start_at",
    "end_at",
    "cap_per_customer",
    "cap_window_days",
    "eligibility",
    "weight",
    "fallback",
    "repeatable",
)


def _is_missing(value: Any) -> bool:
    """None, NaN, NaT or pandas NA (not an empty list: that is a value)."""
    if value is None:
        return True
    if isinstance(value, list | tuple | np.ndarray | dict | set | str):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _as_list(value: Any, where: str) -> list:
    if _is_missing(value):
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                return list(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ContractError(
                    f"{where}: expected a JSON list, got {value!r} ({exc})"
                ) from exc
        return [part.strip() for part in text.split("|") if part.strip()]
    if isinstance(value, Iterable):
        return list(value)
    raise ContractError(f"{where}: expected a list, got {value!r}")


def _as_datetime(value: Any, where: str) -> datetime | None:
    if _is_missing(value):
        return None
    if isinstance(value, datetime):
        return to_utc(value)
    try:
        return to_utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError as exc:
        raise ContractError(f"{where}: expected an ISO 8601 timestamp, got {value!r}") from exc


def _as_optional_int(value: Any) -> int | None:
    return None if _is_missing(value) else int(value)


def _as_int(value: Any, default: int) -> int:
    return default if _is_missing(value) else int(value)


def _as_float(value: Any, default: float) -> float:
    return default if _is_missing(value) else float(value)


def _as_bool(value: Any) -> bool:
    if _is_missing(value):
        return False
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "y", "t")
    return bool(value)


def offer_from_record(record: Mapping[str, Any], where: str = "offers") -> Offer:
    """Build an :class:`Offer` from one contract row (warehouse, CSV, Parquet or YAML)."""
    oid = record.get("offer_id")
    where = f"{where}, offer {oid!r}"
    try:
        rules_raw = _as_list(record.get("eligibility"), f"{where}, column 'eligibility'")
        rules = tuple(
            EligibilityRule(feature=r["feature"], op=r["op"], value=r.get("value"))
            for r in rules_raw
        )
        attributes = {k: v for k, v in record.items() if k not in _OFFER_FIELDS}
        return Offer(
            offer_id=str(oid),
            name=str(record.get("name")),
            offer_type=str(record.get("offer_type")),
            category=None if _is_missing(record.get("category")) else str(record["category"]),
            value=_as_float(record.get("value"), 1.0),
            touchpoints=tuple(
                str(t)
                for t in _as_list(record.get("touchpoints"), f"{where}, column 'touchpoints'")
            ),
            start_at=_as_datetime(record.get("start_at"), f"{where}, column 'start_at'"),
            end_at=_as_datetime(record.get("end_at"), f"{where}, column 'end_at'"),
            cap_per_customer=_as_optional_int(record.get("cap_per_customer")),
            cap_window_days=_as_optional_int(record.get("cap_window_days")),
            eligibility=rules,
            weight=_as_float(record.get("weight"), 1.0),
            fallback=_as_bool(record.get("fallback")),
            repeatable=_as_bool(record.get("repeatable")),
            attributes={k: v for k, v in attributes.items() if not _is_missing(v)},
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ContractError):
            raise
        raise ContractError(f"{where}: {exc}") from exc


def touchpoint_from_record(record: Mapping[str, Any], where: str = "touchpoints") -> Touchpoint:
    """Build a :class:`Touchpoint` from one contract row."""
    tid = record.get("touchpoint_id")
    try:
        mode = record.get("mode")
        return Touchpoint(
            touchpoint_id=str(tid),
            channel=str(record.get("channel")),
            stage=None if _is_missing(record.get("stage")) else str(record["stage"]),
            slots=_as_int(record.get("slots"), 1),
            mode="realtime" if _is_missing(mode) else str(mode),
            consent_column=(
                None
                if _is_missing(record.get("consent_column"))
                else str(record["consent_column"]) or None
            ),
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ContractError):
            raise
        raise ContractError(f"{where}, touchpoint {tid!r}: {exc}") from exc


def catalog_from_records(
    offers: Iterable[Mapping[str, Any]], touchpoints: Iterable[Mapping[str, Any]]
) -> Catalog:
    """A :class:`Catalog` from contract rows (mappings of column -> value)."""
    return Catalog(
        [offer_from_record(r) for r in offers], [touchpoint_from_record(r) for r in touchpoints]
    )


def load_catalog_from_warehouse(con_or_path: Any) -> Catalog:
    """Read the catalogue from the warehouse tables ``offers`` and ``touchpoints``.

    Parameters
    ----------
    con_or_path : duckdb connection, or path of the warehouse DuckDB file
    """
    import duckdb

    own = not isinstance(con_or_path, duckdb.DuckDBPyConnection)
    if own and not Path(con_or_path).exists():
        raise NotFoundError(f"warehouse file must exist, got {str(con_or_path)!r}")
    con = duckdb.connect(str(con_or_path), read_only=True) if own else con_or_path
    try:
        tables = {
            r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
        }
        for name in ("offers", "touchpoints"):
            if name not in tables:
                raise NotFoundError(f"warehouse table {name!r} must exist; run `recsys data load`")
        offers = _fetch_records(con, "offers")
        touchpoints = _fetch_records(con, "touchpoints")
    finally:
        if own:
            con.close()
    catalog = catalog_from_records(offers, touchpoints)
    logger.info("catalogue loaded from warehouse: %s", catalog)
    return catalog


def _fetch_records(con: Any, table: str) -> list[dict[str, Any]]:
    cursor = con.execute(f'SELECT * FROM "{table}"')
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _read_table_file(directory: Path, table: str) -> list[dict[str, Any]]:
    """The rows of ``offers`` or ``touchpoints`` in ``directory``, read as ``data load`` reads
    them (:mod:`recsys.table_files`)."""
    from recsys.contract import TABLES
    from recsys.table_files import read_chunks, table_file

    path = table_file(directory, table)
    if path is None:
        raise NotFoundError(
            f"catalogue file {table}.{{yaml,yml,parquet,csv}} must exist in "
            f"{str(directory)!r}, found none"
        )
    frame = pd.concat(list(read_chunks(path, TABLES[table])), ignore_index=True)
    return [
        {str(k): v.tolist() if isinstance(v, np.ndarray) else v for k, v in record.items()}
        for record in frame.to_dict(orient="records")
    ]


def load_catalog_from_files(directory: str | Path) -> Catalog:
    """Read ``offers.*`` and ``touchpoints.*`` (YAML, Parquet or CSV) from ``directory``.

    Raises
    ------
    NotFoundError
        A table has no file.
    ContractError
        A file that cannot be read, or a table given in two files.
    """
    directory = Path(directory)
    catalog = catalog_from_records(
        _read_table_file(directory, "offers"), _read_table_file(directory, "touchpoints")
    )
    logger.info("catalogue loaded from %s: %s", directory, catalog)
    return catalog


def load_catalog(source: str | Path) -> Catalog:
    """A catalogue from a warehouse DuckDB file or a directory of contract files."""
    path = Path(source)
    if path.is_dir():
        return load_catalog_from_files(path)
    return load_catalog_from_warehouse(path)
