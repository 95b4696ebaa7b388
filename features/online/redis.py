"""The scale-out online store: vectors as Redis strings ``<prefix>:v:<customer_id>``."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from features.online.base import BATCH, Layout, Vector, chunks, compact_pairs
from features.online.block import decode_block
from features.spec import FEATURE_SPEC_VERSION
from recsys.decision.ports import FeatureBlock


class RedisOnlineStore:
    """Vectors as Redis strings ``<prefix>:v:<customer_id>``; metadata in ``<prefix>:meta``."""

    def __init__(
        self,
        url: str,
        prefix: str = "recsys:features",
        expected_version: str = FEATURE_SPEC_VERSION,
        client: Any = None,
        timeout_s: float | None = None,
    ):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.prefix = prefix
        self.expected_version = expected_version
        # timeout_s (serving): one bounded wait per call; redis-py would otherwise retry a
        # timed-out call (10 times by default), multiplying the wait of a hung server.
        bounded: dict[str, Any] = (
            {}
            if timeout_s is None
            else {
                "socket_timeout": timeout_s,
                "socket_connect_timeout": timeout_s,
                "retry": Retry(NoBackoff(), 0),
            }
        )
        # Any: redis-py types its replies str | bytes (decode_responses); this client: bytes
        self._redis: Any = client if client is not None else redis.Redis.from_url(url, **bounded)
        self._layout: Layout | None = None

    def _key(self, customer_id: str) -> str:
        return f"{self.prefix}:v:{customer_id}"

    def write(
        self,
        vectors: Iterable[tuple[str, Vector]],
        spec_version: str,
        *,
        replace: bool = False,
        as_of: datetime | None = None,
        layout: Layout | None = None,
    ) -> int:
        """Store ``(customer_id, vector)`` pairs; ``replace`` deletes this prefix's keys
        first (no transaction: readers may see a mix while a full write runs)."""
        layout, pairs = compact_pairs(self, vectors, spec_version, replace, layout)
        if replace:
            self.clear()
        if layout is not None:
            self._redis.hset(f"{self.prefix}:meta", "layout", layout.to_json())
            self._layout = layout
        count = 0
        for chunk in chunks(pairs, BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for cid, raw in chunk:
                pipe.set(self._key(cid), raw)
            pipe.execute()
            count += len(chunk)
        meta = {"spec_version": spec_version}
        if as_of is not None:
            meta["as_of"] = as_of.isoformat()
        self._redis.hset(f"{self.prefix}:meta", mapping=meta)
        return count

    def read_block(self, customer_ids: Iterable[str]) -> FeatureBlock:
        ids = list(dict.fromkeys(customer_ids))
        raws = self._redis.mget([self._key(c) for c in ids]) if ids else []
        return decode_block(ids, raws, self.expected_version, self.layout())

    def spec_version(self) -> str | None:
        value = self._redis.hget(f"{self.prefix}:meta", "spec_version")
        return value.decode() if value is not None else None

    def layout(self) -> Layout | None:
        if self._layout is None:
            raw = self._redis.hget(f"{self.prefix}:meta", "layout")
            self._layout = Layout.from_json(raw) if raw is not None else None
        return self._layout

    def last_as_of(self) -> datetime | None:
        value = self._redis.hget(f"{self.prefix}:meta", "as_of")
        return datetime.fromisoformat(value.decode()) if value is not None else None

    def clear(self) -> int:
        """Delete every key of this store's prefix (and only those)."""
        deleted = 0
        keys = list(self._redis.scan_iter(match=f"{self.prefix}:*", count=10_000))
        for chunk in chunks(keys, 10_000):
            deleted += self._redis.delete(*chunk)
        self._layout = None
        return deleted

    def close(self) -> None:
        self._redis.close()
