"""Model matrices: the training frame and the serving request encoded the same way.

An :class:`Encoding` fixes the model's input columns (order, kind, vocabularies), including the
data-dependent ones: customer attributes (``attr_*``) and request-context keys (``ctx_*``) seen
in the training set. It is a small JSON-able object the model artifact carries; serving builds
its matrix from it, so a request can never reorder or invent columns. Context keys the encoding
does not know are ignored; known keys missing from a request are missing values.

Encoding rules (the same in :func:`encode` and :mod:`features.decision_matrix`, which builds
the serving rows):

- numeric: float32; missing -> NaN (customer features are never missing, see the cold start);
- categorical: the index of the value in the sorted vocabulary seen at fit time, as float32;
  missing or unknown -> ``UNKNOWN_CODE`` (-1; LightGBM reads negative categories as missing).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd

from features import definitions as d
from features.spec import FEATURE_SPEC_VERSION, feature_spec
from features.training_set import ID_COLUMNS, LABEL_COLUMNS
from recsys.errors import ConfigError, SpecMismatchError

UNKNOWN_CODE = -1.0
MAX_VOCABULARY = 10_000  # larger vocabularies keep their most frequent values
NOT_INPUTS = frozenset(ID_COLUMNS) - {"offer_id", "touchpoint_id"} | frozenset(LABEL_COLUMNS)


@dataclass(frozen=True)
class ColumnEncoding:
    """One model column: name, kind and (categorical) sorted vocabulary."""

    name: str
    kind: Literal["numeric", "categorical"]
    vocabulary: tuple[str, ...] = ()

    @cached_property
    def _index(self) -> dict[str, int]:
        return {v: i for i, v in enumerate(self.vocabulary)}

    def code(self, value: Any) -> float:
        """Code of one value: its position in the vocabulary (as text, see ``_as_text``);
        ``UNKNOWN_CODE`` when missing (None, NaN) or unknown."""
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return UNKNOWN_CODE
        return float(self._index.get(_as_text(value), UNKNOWN_CODE))

    def codes(self, values: np.ndarray | Sequence[Any]) -> np.ndarray:
        """:meth:`code` of each value, shape (n,) -> (n,) float32."""
        index, code = self._index, self.code
        items = values.tolist() if isinstance(values, np.ndarray) else values
        return np.array(
            [index.get(v, UNKNOWN_CODE) if type(v) is str else code(v) for v in items],
            dtype=np.float32,
        )


@dataclass(frozen=True)
class Encoding:
    """The model's input columns, in order; JSON-able with :meth:`to_dict` / :meth:`from_dict`."""

    spec_version: str
    columns: tuple[ColumnEncoding, ...]
    unknown_code: float = UNKNOWN_CODE

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def categorical_indexes(self) -> list[int]:
        return [i for i, c in enumerate(self.columns) if c.kind == "categorical"]

    @property
    def context_keys(self) -> list[str]:
        """Request-context keys the model reads (``ctx_<key>`` columns)."""
        n = len(d.CONTEXT_PREFIX)
        return [c.name[n:] for c in self.columns if c.name.startswith(d.CONTEXT_PREFIX)]

    @cached_property
    def _by_name(self) -> dict[str, ColumnEncoding]:
        return {c.name: c for c in self.columns}

    def column(self, name: str) -> ColumnEncoding:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"the encoding has no column {name!r}") from None

    def to_dict(self) -> dict:
        return {
            "spec_version": self.spec_version,
            "unknown_code": self.unknown_code,
            "columns": [
                {"name": c.name, "kind": c.kind, "vocabulary": list(c.vocabulary)}
                for c in self.columns
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Encoding:
        try:
            columns = tuple(
                ColumnEncoding(c["name"], c["kind"], tuple(c.get("vocabulary", ())))
                for c in data["columns"]
            )
            return cls(
                spec_version=data["spec_version"],
                columns=columns,
                unknown_code=float(data.get("unknown_code", UNKNOWN_CODE)),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(
                f"`encoding` must be a dict from Encoding.to_dict(), got {exc!r}"
            ) from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Encoding:
        return cls.from_dict(json.loads(text))


def _as_text(value: Any) -> str:
    """Categorical values as text, JSON-style for non-strings (as the context is flattened)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return str(value)


def model_columns(frame: pd.DataFrame) -> list[str]:
    """The model input columns of a training frame, in model order.

    ``offer_id`` and ``touchpoint_id`` first, then every column after ``revenue`` (customer
    features, ``attr_*``, offer and touchpoint attributes, crosses, ``req_*``, ``ctx_*``).
    """
    missing = [c for c in ("offer_id", "touchpoint_id") if c not in frame.columns]
    if missing:
        raise ConfigError(
            f"`frame` must have columns {missing} (a training set), got "
            f"{list(frame.columns)[:10]}..."
        )
    rest = [
        c for c in frame.columns if c not in NOT_INPUTS and c not in ("offer_id", "touchpoint_id")
    ]
    return ["offer_id", "touchpoint_id", *rest]


def _kind(name: str, series: pd.Series) -> Literal["numeric", "categorical"]:
    spec = feature_spec()
    if name in spec.names:
        return spec.get(name).kind
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return "numeric"
    return "categorical"


def fit_encoding(frame: pd.DataFrame, columns: Sequence[str] | None = None) -> Encoding:
    """Fix the columns and vocabularies of a model from its training frame.

    Parameters
    ----------
    frame : pandas.DataFrame, a training set (``build_training_set``)
    columns : optional subset of :func:`model_columns` (kept in model order)
    """
    names = model_columns(frame)
    if columns is not None:
        unknown = [c for c in columns if c not in names]
        if unknown:
            raise ConfigError(f"`columns` must be model columns of the frame, got {unknown}")
        names = [c for c in names if c in set(columns)]
    out = []
    for name in names:
        kind = _kind(name, frame[name])
        vocab: tuple[str, ...] = ()
        if kind == "categorical":
            counts = frame[name].dropna().map(_as_text).value_counts()
            vocab = tuple(sorted(counts.index[:MAX_VOCABULARY]))
        out.append(ColumnEncoding(name, kind, vocab))
    return Encoding(spec_version=FEATURE_SPEC_VERSION, columns=tuple(out))


def encode(
    frame: pd.DataFrame, encoding: Encoding | None = None
) -> tuple[np.ndarray, list[str], list[int]]:
    """Encode a training frame.

    Parameters
    ----------
    frame : pandas.DataFrame, shape (n_rows, ...)
    encoding : the model's encoding; fitted on ``frame`` when None (keep it with
        ``fit_encoding`` instead if you need to serve the model).

    Returns
    -------
    X : numpy.ndarray, shape (n_rows, n_columns), float32
    names : list of str, the column names (length n_columns)
    categorical : list of int, indexes of the categorical columns
    """
    enc = encoding if encoding is not None else fit_encoding(frame)
    if enc.spec_version != FEATURE_SPEC_VERSION:
        raise SpecMismatchError(
            f"the encoding was fitted for feature spec {enc.spec_version}, this code computes "
            f"spec {FEATURE_SPEC_VERSION}; rebuild the training set and retrain"
        )
    X = np.empty((len(frame), len(enc.columns)), dtype=np.float32)
    for j, col in enumerate(enc.columns):
        if col.name not in frame.columns:
            X[:, j] = UNKNOWN_CODE if col.kind == "categorical" else np.nan
            continue
        series = frame[col.name]
        if col.kind == "categorical":
            values = series.map(_as_text, na_action="ignore")
            X[:, j] = pd.Categorical(values, categories=list(col.vocabulary)).codes
        else:
            X[:, j] = pd.to_numeric(series, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    return X, enc.names, enc.categorical_indexes
