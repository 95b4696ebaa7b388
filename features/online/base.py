"""The online store's interface and its storage format.

An online store keeps the latest vector of every customer, by id (Feast's ``OnlineStore``).
Every store keeps one format, the compact JSON vector::

    {"__n": [numbers...], "__s": [texts...], "__as_of": "2024-03-01T00:00:00",
     "__spec_version": "...", "__stats": {table: {"keys": [...], "values": [[...], ...]}}}

``__n`` and ``__s`` hold the values of the :class:`Layout`'s names (kept once, in the store's
metadata), ``__stats`` the per-key statistics behind the crosses (one row of the table's
width per key). The dunder names are this format's field names only: readers get a
:class:`recsys.decision.ports.FeatureBlock`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import orjson

from features import definitions as d
from features.pipeline import STAT_TABLES, naive_utc
from features.training_set import cold_start_vector
from recsys.decision.ports import FeatureBlock
from recsys.errors import ConfigError, SpecMismatchError

AS_OF_KEY = "__as_of"
SPEC_KEY = "__spec_version"
STATS_KEY = "__stats"
NUMBERS_KEY = "__n"
TEXTS_KEY = "__s"
BATCH = 20_000  # vectors per write transaction step / pipeline

#: A vector given to :meth:`OnlineStore.write`: compact JSON bytes, or a mapping of feature
#: names to values (plus the optional ``__as_of`` and ``__stats`` of the storage format).
Vector = bytes | Mapping[str, Any]


@dataclass(frozen=True)
class Layout:
    """Names of the values of a compact vector (``__n`` numbers, ``__s`` texts)."""

    numeric: tuple[str, ...]
    text: tuple[str, ...]

    def to_json(self) -> str:
        return orjson.dumps({"numeric": self.numeric, "text": self.text}).decode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> Layout:
        data = orjson.loads(raw)
        return cls(tuple(data["numeric"]), tuple(data["text"]))

    @classmethod
    def of(cls, vector: Mapping[str, Any]) -> Layout:
        """The layout of a vector given as a mapping: features of the spec by their kind,
        other names (customer attributes) text when their value is text, else numeric."""
        kinds = {f.name: f.kind for f in d.customer_feature_defs()}
        numeric: list[str] = []
        text: list[str] = []
        for name, value in vector.items():
            if name.startswith("__"):
                continue
            kind = kinds.get(name)
            is_text = kind == "categorical" if kind is not None else isinstance(value, str)
            (text if is_text else numeric).append(name)
        return cls(tuple(numeric), tuple(text))


class OnlineStore(Protocol):
    """What materialisation and serving need from an online store."""

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
        Returns the number written."""
        ...

    def read_block(self, customer_ids: Iterable[str]) -> FeatureBlock:
        """The features of ``customer_ids`` (repeats read once), unknown ones cold start."""
        ...

    def spec_version(self) -> str | None: ...

    def layout(self) -> Layout | None: ...

    def last_as_of(self) -> datetime | None: ...

    def close(self) -> None: ...


def mismatch(found: str | None, expected: str) -> SpecMismatchError:
    return SpecMismatchError(
        f"the online store holds vectors of feature spec {found}, this code expects spec "
        f"{expected}; run `recsys features materialize` to rebuild the store"
    )


def layout_mismatch() -> SpecMismatchError:
    return SpecMismatchError(
        "the online store's vector layout does not match its entries; "
        "run `recsys features materialize` to rebuild it"
    )


def check_append(store: OnlineStore, spec_version: str, layout: Layout | None) -> None:
    """An incremental write must match the store's spec and vector layout."""
    current = store.spec_version()
    if current not in (None, spec_version):
        raise mismatch(current, spec_version)
    stored = store.layout()
    if layout is not None and stored is not None and stored != layout:
        raise SpecMismatchError(
            "the vectors to write have another layout (customer attributes changed?) than "
            "the online store; run a full `recsys features materialize`"
        )


def compact_pairs(
    store: OnlineStore,
    vectors: Iterable[tuple[str, Vector]],
    spec_version: str,
    replace: bool,
    layout: Layout | None,
) -> tuple[Layout | None, Iterator[tuple[str, bytes]]]:
    """The layout to record and the vectors as compact JSON: what every store writes.

    Mappings are encoded to the layout given, else the store's, else their own
    (:meth:`Layout.of` of the first one). Checks an incremental write first. The vectors
    are read lazily when ``layout`` is given (materialisation computes them meanwhile).
    """
    if not replace:
        check_append(store, spec_version, layout)
        layout = layout or store.layout()
    items = iter(vectors)
    if layout is None:
        first = next(items, None)
        if first is None:
            return None, iter(())
        if isinstance(first[1], bytes):
            raise ConfigError(
                "`layout` must be given with compact vectors (bytes) for a store without "
                "one, got None"
            )
        layout = Layout.of(first[1])
        items = itertools.chain([first], items)
    chosen = layout
    return layout, ((cid, encode_vector(v, chosen, spec_version)) for cid, v in items)


def encode_vector(vector: Vector, layout: Layout, spec_version: str) -> bytes:
    """``vector`` as compact JSON of ``layout``; bytes are taken as already compact.

    A mapping's missing features take their cold-start values (None for other names);
    numbers are stored as float, texts as str.

    Raises
    ------
    ConfigError
        A value of the wrong kind, or statistics not one row of the table's width per key.
    """
    if isinstance(vector, bytes):
        return vector
    cold = cold_start_vector()
    numbers = [_number(name, vector.get(name, cold.get(name))) for name in layout.numeric]
    texts = [_text(name, vector.get(name, cold.get(name))) for name in layout.text]
    as_of = vector.get(AS_OF_KEY)
    if isinstance(as_of, datetime):
        as_of = naive_utc(as_of).isoformat()
    stats = vector.get(STATS_KEY) or {}
    unknown = sorted(set(stats) - set(STAT_TABLES))
    if unknown:
        raise ConfigError(
            f"`{STATS_KEY}` tables must be among {sorted(STAT_TABLES)}, got {unknown}"
        )
    return orjson.dumps(
        {
            NUMBERS_KEY: numbers,
            TEXTS_KEY: texts,
            AS_OF_KEY: as_of,
            SPEC_KEY: spec_version,
            STATS_KEY: {name: _stats(name, stats.get(name)) for name in STAT_TABLES},
        }
    )


def _number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool | int | float | np.integer | np.floating | np.bool_):
        number = float(value)
        return None if number != number else number
    raise ConfigError(f"feature `{name}` must be a number or None, got {value!r}")


def _text(name: str, value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"feature `{name}` must be text or None, got {value!r}")


def _stats(name: str, table: Mapping[str, Any] | None) -> dict[str, list]:
    """One table's statistics, keys as text, the first row of a repeated key kept."""
    width = len(STAT_TABLES[name].stats)
    keys = list((table or {}).get("keys") or ())
    values = list((table or {}).get("values") or ())
    rows = np.asarray(values, dtype=np.float64) if values else np.zeros((0, width))
    if rows.shape != (len(keys), width):
        raise ConfigError(
            f"`{STATS_KEY}.{name}.values` must hold one row of {width} numbers per key "
            f"({len(keys)} keys), got shape {rows.shape}"
        )
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(str(key), i)
    return {"keys": list(first), "values": rows[list(first.values())].tolist()}


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
