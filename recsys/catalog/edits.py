"""Editing one offer of the warehouse (what ``PUT /admin/offers/{id}`` does).

The edit is a load of a one-row ``offers.yaml`` through :func:`recsys.loading.load_directory`:
the same contract validation (problems name the column), the same references (touchpoints),
the same checks before the commit (rule features against the feature spec), the same
upsert and the same atomicity as ``recsys data load``. There is no second implementation of
any of them; what training and ``recsys score`` read is what the service then serves.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from recsys import warehouse
from recsys.loading import LoadCheck, TableLoad, load_directory


def _plain(value: Any) -> Any:
    """A value as YAML writes it and the contract reader reads it back (ISO timestamps)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def store_offer(
    path: str | Path,
    record: Mapping[str, Any],
    checks: Sequence[LoadCheck] = (),
    wait_seconds: float = 10.0,
) -> TableLoad:
    """Validate ``record`` (one contract row of ``offers``) and upsert it into the
    warehouse at ``path`` in one transaction; returns what the load did (new or updated).

    Raises
    ------
    ContractError
        The row breaks the contract or a check; each problem names its column. Nothing is
        written.
    duckdb.IOException
        Another process holds the warehouse for longer than ``wait_seconds``.
    """
    with tempfile.TemporaryDirectory(prefix="recsys-offer-") as folder:
        file = Path(folder) / "offers.yaml"
        file.write_text(yaml.safe_dump([_plain(dict(record))], sort_keys=False), encoding="utf-8")
        con = warehouse.connect_when_free(path, wait_seconds)
        try:
            summary = load_directory(folder, con, checks=checks)
        finally:
            con.close()
    return summary.tables[0]
