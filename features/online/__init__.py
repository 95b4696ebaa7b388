"""Online feature store: the latest features of every customer, by id, for serving.

One backend per module behind one protocol (Feast's ``OnlineStore`` split): SQLite (the
embedded default, :mod:`features.online.sqlite`) and Redis (the scale path,
:mod:`features.online.redis`); both store the compact vectors of
:mod:`features.online.base` and read them through the one decoder of
:mod:`features.online.block`. :mod:`features.online.materialization` fills a store from the
warehouse; :class:`StoreFeatureSource` serves it to the decision pipeline.

A new store: a module with a class implementing :class:`OnlineStore` and one line in
``STORES``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from features.online.base import Layout, OnlineStore
from features.online.block import block_of, decode_block, describe_row
from features.online.materialization import (
    RANGE_CUSTOMERS,
    changed_customers,
    id_ranges,
    materialize,
    refresh,
    vector_parts,
    vectors_as_of,
)
from features.online.redis import RedisOnlineStore
from features.online.source import DEFAULT_ALIASES, CatalogNames, StoreFeatureSource
from features.online.sqlite import SQLiteOnlineStore
from recsys.errors import ConfigError

#: ``online_store`` setting -> the store it opens (from the settings and a read timeout).
STORES: dict[str, Callable[[Any, float | None], OnlineStore]] = {
    "sqlite": lambda settings, timeout_s: SQLiteOnlineStore(settings.online_sqlite_path),
    "redis": lambda settings, timeout_s: RedisOnlineStore(settings.redis_url, timeout_s=timeout_s),
}


def open_online_store(settings: Any, timeout_s: float | None = None) -> OnlineStore:
    """The store the settings name (``online_store``: one of ``STORES``).

    ``timeout_s``: the most one call may wait for a networked store, without retries (the
    service's per-request budget); None: the client's defaults (batch jobs).
    """
    kind = settings.online_store
    if kind not in STORES:
        raise ConfigError(f"`online_store` must be one of {sorted(STORES)}, got {kind!r}")
    return STORES[kind](settings, timeout_s)


__all__ = [
    "DEFAULT_ALIASES",
    "RANGE_CUSTOMERS",
    "STORES",
    "CatalogNames",
    "Layout",
    "OnlineStore",
    "RedisOnlineStore",
    "SQLiteOnlineStore",
    "StoreFeatureSource",
    "block_of",
    "changed_customers",
    "decode_block",
    "describe_row",
    "id_ranges",
    "materialize",
    "open_online_store",
    "refresh",
    "vector_parts",
    "vectors_as_of",
]
