"""The embedded online store: vectors in one SQLite file (WAL), keyed by customer id."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from features.online.base import BATCH, Layout, Vector, chunks, compact_pairs
from features.online.block import decode_block
from features.spec import FEATURE_SPEC_VERSION
from recsys.decision.ports import FeatureBlock

PAGE_SIZE = 16_384  # bytes, for new files: a vector is ~2 KB, a 4 KB page holds one or two
VECTORS_TABLE = (
    "CREATE TABLE vectors (customer_id TEXT PRIMARY KEY, spec_version TEXT NOT NULL, "
    "vector BLOB NOT NULL)"
)
MAX_PARAMETERS = 900  # SQLite's bound-parameter limit (999 on old builds)


class SQLiteOnlineStore:
    """Vectors in one SQLite file (WAL), keyed by customer id; metadata in table ``meta``."""

    def __init__(self, path: str | Path, expected_version: str = FEATURE_SPEC_VERSION):
        self.path = Path(path)
        self.expected_version = expected_version
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(str(path), check_same_thread=False)
        self._con.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute(VECTORS_TABLE.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS"))
        self._con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._con.commit()
        self._layout: Layout | None = None

    def write(
        self,
        vectors: Iterable[tuple[str, Vector]],
        spec_version: str,
        *,
        replace: bool = False,
        as_of: datetime | None = None,
        layout: Layout | None = None,
    ) -> int:
        """Store ``(customer_id, vector)`` pairs; ``replace`` drops every other entry.

        One transaction: readers see the old or the new entries, never a mix.
        """
        layout, pairs = compact_pairs(self, vectors, spec_version, replace, layout)
        count = 0
        with self._con:
            if not self._con.in_transaction:
                self._con.execute("BEGIN")
            if replace:
                # A new table is much cheaper than deleting every row (and upgrades an old
                # WITHOUT ROWID table, slow to fill with ~2 KB rows).
                self._con.execute("DROP TABLE IF EXISTS vectors")
                self._con.execute(VECTORS_TABLE)
            if layout is not None:
                self._set_meta("layout", layout.to_json())
            for chunk in chunks(pairs, BATCH):
                self._con.executemany(
                    "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                    [(cid, spec_version, raw) for cid, raw in chunk],
                )
                count += len(chunk)
            self._set_meta("spec_version", spec_version)
            if as_of is not None:
                self._set_meta("as_of", as_of.isoformat())
        if layout is not None:
            self._layout = layout
        return count

    def read_block(self, customer_ids: Iterable[str]) -> FeatureBlock:
        ids = list(dict.fromkeys(customer_ids))
        found = self._raw(ids)
        raws = [found.get(c) for c in ids]
        return decode_block(ids, raws, self.expected_version, self.layout())

    def _raw(self, ids: list[str]) -> dict[str, bytes]:
        """Stored JSON of the known customers among ``ids`` (distinct)."""
        found: dict[str, bytes] = {}
        for chunk in chunks(ids, MAX_PARAMETERS):
            marks = ",".join("?" * len(chunk))
            found.update(
                self._con.execute(
                    f"SELECT customer_id, vector FROM vectors WHERE customer_id IN ({marks})",
                    chunk,
                ).fetchall()
            )
        return found

    def spec_version(self) -> str | None:
        return self._meta("spec_version")

    def layout(self) -> Layout | None:
        if self._layout is None:
            raw = self._meta("layout")
            self._layout = Layout.from_json(raw) if raw else None
        return self._layout

    def last_as_of(self) -> datetime | None:
        value = self._meta("as_of")
        return datetime.fromisoformat(value) if value else None

    def count(self) -> int:
        return self._con.execute("SELECT count(*) FROM vectors").fetchone()[0]

    def close(self) -> None:
        self._con.close()

    def _meta(self, key: str) -> str | None:
        row = self._con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])
