"""The data contract: the seven input tables every stage shares.

One typed definition per table (columns, types, keys, enums, ranges, references).
Validation (``recsys.validation``) and the warehouse (``recsys.warehouse``) are built
from these definitions, so the contract is written down exactly once.
Timestamps are UTC; a timestamp without an offset is read as UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pyarrow as pa
import yaml


class ColumnType(StrEnum):
    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    TIMESTAMP = "timestamp"  # ISO 8601; naive = UTC; stored as naive UTC
    STRING_LIST = "string_list"  # JSON list of strings, or "a|b|c" in CSV
    JSON_OBJECT = "json_object"
    JSON_LIST = "json_list"


DUCKDB_TYPES: dict[ColumnType, str] = {
    ColumnType.STRING: "VARCHAR",
    ColumnType.INT: "BIGINT",
    ColumnType.FLOAT: "DOUBLE",
    ColumnType.BOOL: "BOOLEAN",
    ColumnType.TIMESTAMP: "TIMESTAMP",
    ColumnType.STRING_LIST: "VARCHAR[]",
    ColumnType.JSON_OBJECT: "VARCHAR",  # canonical JSON text
    ColumnType.JSON_LIST: "VARCHAR",  # canonical JSON text
}

ARROW_TYPES: dict[ColumnType, pa.DataType] = {
    ColumnType.STRING: pa.string(),
    ColumnType.INT: pa.int64(),
    ColumnType.FLOAT: pa.float64(),
    ColumnType.BOOL: pa.bool_(),
    ColumnType.TIMESTAMP: pa.timestamp("us"),
    ColumnType.STRING_LIST: pa.list_(pa.string()),
    ColumnType.JSON_OBJECT: pa.string(),
    ColumnType.JSON_LIST: pa.string(),
}

OFFER_TYPES = ("discount", "cross_sell", "upsell", "loyalty_reward", "service", "content")
CHANNELS = (
    "web",
    "email",
    "app",
    "sms",
    "messenger",
    "chat",
    "call_center",
    "store",
    "social",
    "ads",
    "events",
)
STAGES = ("awareness", "consideration", "decision", "post_purchase", "service")
TOUCHPOINT_MODES = ("realtime", "batch")
OUTCOMES = ("click", "accept", "convert", "dismiss")
POSITIVE_OUTCOMES_DEFAULT = ("accept", "convert")
ELIGIBILITY_OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not_in")


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    required: bool = False
    nullable: bool = True
    enum: tuple[str, ...] | None = None
    ge: float | None = None  # inclusive lower bound
    gt: float | None = None  # exclusive lower bound
    le: float | None = None  # inclusive upper bound
    default: object = None
    description: str = ""


@dataclass(frozen=True)
class Reference:
    """``columns`` of this table must exist as ``target_columns`` of ``target``."""

    columns: tuple[str, ...]
    target: str
    target_columns: tuple[str, ...]
    optional: bool = False  # null values are allowed (e.g. anonymous decisions)


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ()  # unique key; rows with a known key are not loaded twice
    unique_key: bool = True  # the key must be unique within one file
    references: tuple[Reference, ...] = ()
    kind: str = "event"  # "dimension" (upserted by key) or "event" (append-only)
    yaml_allowed: bool = False
    description: str = ""
    extra_columns: bool = True  # columns not named are kept as attributes

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.required)

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)


_S, _I, _F, _B, _T = (
    ColumnType.STRING,
    ColumnType.INT,
    ColumnType.FLOAT,
    ColumnType.BOOL,
    ColumnType.TIMESTAMP,
)

CUSTOMERS = TableSpec(
    name="customers",
    kind="dimension",
    key=("customer_id",),
    description="One row per customer; extra columns are attributes (region, age_band, ...).",
    columns=(
        Column("customer_id", _S, required=True, nullable=False),
        Column("created_at", _T),
        Column("email_opt_in", _B),
        Column("sms_opt_in", _B),
        Column("push_opt_in", _B),
    ),
)

OFFERS = TableSpec(
    name="offers",
    kind="dimension",
    key=("offer_id",),
    yaml_allowed=True,
    description="The offer catalogue marketers edit.",
    columns=(
        Column("offer_id", _S, required=True, nullable=False),
        Column("name", _S, required=True, nullable=False),
        Column("offer_type", _S, required=True, nullable=False, enum=OFFER_TYPES),
        Column("category", _S),
        Column("value", _F, ge=0, default=1.0, nullable=False),
        Column("touchpoints", ColumnType.STRING_LIST, default=(), description="empty = all"),
        Column("start_at", _T),
        Column("end_at", _T),
        Column("cap_per_customer", _I, ge=1),
        Column("cap_window_days", _I, ge=1),
        Column(
            "eligibility",
            ColumnType.JSON_LIST,
            default=(),
            description="list of {feature, op, value}",
        ),
        Column("weight", _F, gt=0, default=1.0, nullable=False),
        Column("fallback", _B, default=False, nullable=False),
        Column(
            "repeatable",
            _B,
            default=False,
            nullable=False,
            description="offered again after the customer accepted it",
        ),
    ),
)

TOUCHPOINTS = TableSpec(
    name="touchpoints",
    kind="dimension",
    key=("touchpoint_id",),
    yaml_allowed=True,
    description="Where offers are shown: web pages, chat, email, store, ...",
    columns=(
        Column("touchpoint_id", _S, required=True, nullable=False),
        Column("channel", _S, required=True, nullable=False, enum=CHANNELS),
        Column("stage", _S, enum=STAGES),
        Column("slots", _I, ge=1, default=1, nullable=False),
        Column("mode", _S, enum=TOUCHPOINT_MODES, default="realtime", nullable=False),
        Column("consent_column", _S),
    ),
)

TRANSACTIONS = TableSpec(
    name="transactions",
    key=("transaction_id",),
    references=(Reference(("customer_id",), "customers", ("customer_id",)),),
    description="Purchases.",
    columns=(
        Column("customer_id", _S, required=True, nullable=False),
        Column("ts", _T, required=True, nullable=False),
        Column("amount", _F, required=True, nullable=False),
        Column("transaction_id", _S),
        Column("category", _S),
        Column("product_id", _S),
        Column("quantity", _I, ge=0),
        Column("channel", _S, enum=CHANNELS),
    ),
)

INTERACTIONS = TableSpec(
    name="interactions",
    key=("customer_id", "ts", "touchpoint_id", "event_type"),
    # Not refused when repeated: without an event_id column, identical rows are kept (a row
    # is its content plus its ordinal among identical rows of the file; recsys.loading).
    unique_key=False,
    references=(
        Reference(("customer_id",), "customers", ("customer_id",)),
        Reference(("touchpoint_id",), "touchpoints", ("touchpoint_id",)),
    ),
    description="Page views, chats, calls, tickets, complaints, NPS answers, reviews, ...",
    columns=(
        Column("customer_id", _S, required=True, nullable=False),
        Column("ts", _T, required=True, nullable=False),
        Column("touchpoint_id", _S, required=True, nullable=False),
        Column("event_type", _S, required=True, nullable=False),
        Column("value", _F),
        Column("category", _S),
    ),
)

DECISIONS = TableSpec(
    name="decisions",
    key=("decision_id", "offer_id"),
    references=(
        Reference(("offer_id",), "offers", ("offer_id",)),
        Reference(("touchpoint_id",), "touchpoints", ("touchpoint_id",)),
        Reference(("customer_id",), "customers", ("customer_id",), optional=True),
    ),
    description="One row per offer shown in a decision (a slate has several rows).",
    columns=(
        Column("decision_id", _S, required=True, nullable=False),
        Column("ts", _T, required=True, nullable=False),
        Column("touchpoint_id", _S, required=True, nullable=False),
        Column("offer_id", _S, required=True, nullable=False),
        Column("customer_id", _S, description="absent = anonymous"),
        Column("position", _I, ge=1),
        Column("propensity", _F, gt=0, le=1),
        Column("policy", _S),
        Column("context", ColumnType.JSON_OBJECT),
    ),
)

OUTCOMES_TABLE = TableSpec(
    name="outcomes",
    key=("decision_id", "offer_id", "outcome", "ts"),
    unique_key=False,  # a repeated feedback event is stored once, not refused
    references=(Reference(("decision_id", "offer_id"), "decisions", ("decision_id", "offer_id")),),
    description="What happened after an offer was shown.",
    columns=(
        Column("decision_id", _S, required=True, nullable=False),
        Column("offer_id", _S, required=True, nullable=False),
        Column("ts", _T, required=True, nullable=False),
        Column("outcome", _S, required=True, nullable=False, enum=OUTCOMES),
        Column("revenue", _F, ge=0),
    ),
)

# Load order: referenced tables first.
TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        CUSTOMERS,
        OFFERS,
        TOUCHPOINTS,
        TRANSACTIONS,
        INTERACTIONS,
        DECISIONS,
        OUTCOMES_TABLE,
    )
}


def arrow_schema(spec: TableSpec, extra: tuple[tuple[str, pa.DataType], ...] = ()) -> pa.Schema:
    """The Arrow schema of a contract table (contract columns first, then ``extra``)."""
    return pa.schema([(c.name, ARROW_TYPES[c.type]) for c in spec.columns] + list(extra))


@dataclass(frozen=True)
class Problem:
    """One reason a file was refused: file, row (1-based data row; None = whole file)."""

    file: str
    row: int | None
    column: str | None
    reason: str

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f", row {self.row}"
        if self.column is not None:
            where += f", column '{self.column}'"
        return f"{where}: {self.reason}"


@dataclass
class Report:
    """The problems found in one load: the first ``limit`` printed, the rest counted."""

    problems: list[Problem] = field(default_factory=list)
    total: int | None = None  # problems found, when more were found than kept

    def format(self, limit: int = 20) -> str:
        total = self.total if self.total is not None else len(self.problems)
        shown = self.problems[:limit]
        lines = [str(p) for p in shown]
        rest = total - len(shown)
        if rest > 0:
            lines.append(f"... and {rest} more problem{'s' if rest > 1 else ''}")
        return "\n".join(lines)


class ContractYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader whose bad dates name the value and where it is.

    A value that looks like a date (``start_at: 2026-13-45``) is a timestamp to YAML; the
    safe loader fails on an impossible one with a bare ``month must be in 1..12``. This one
    raises a :class:`yaml.constructor.ConstructorError` with the value, line and column.
    """

    def construct_checked_timestamp(self, node: yaml.ScalarNode) -> Any:
        try:
            return self.construct_yaml_timestamp(node)
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"{node.value!r} is not a valid ISO 8601 date or time ({exc})",
                node.start_mark,
            ) from None


ContractYamlLoader.add_constructor(
    "tag:yaml.org,2002:timestamp", ContractYamlLoader.construct_checked_timestamp
)
