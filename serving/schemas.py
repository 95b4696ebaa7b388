"""Pydantic models of the HTTP API v1 (requests strict, with examples for the OpenAPI docs).

The examples use ids of ``make run``'s demo data (recsys.datagen: customers C0000001..,
offers OF001..OF045, touchpoints web_home, email_newsletter, ...), so "Try it out" works
against the demo service; a test sends each of them to a service on demo data.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
)

from recsys.eventlog import EventType

# Ids are printable: no control characters (NUL, newlines, ...), which logs and the
# PostgreSQL event log cannot take.
Id = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")]
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
ContextText = Annotated[StrictStr, Field(max_length=256)]
ContextInt = Annotated[StrictInt, Field(ge=-(2**53), le=2**53)]  # exact as a JSON number
ContextValue = ContextText | StrictBool | ContextInt | FiniteFloat | None
Context = Annotated[dict[Annotated[str, Field(max_length=64)], ContextValue], Field(max_length=50)]


class DecisionRequestBody(BaseModel):
    """Which offers for this customer, at this touchpoint, now?"""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "C0000042",
                    "touchpoint": "web_home",
                    "context": {"device": "mobile", "page_category": "apparel"},
                    "limit": 3,
                    "exclude_offers": ["OF041"],
                }
            ]
        },
    )

    customer_id: Id = Field(description="Your customer id; unknown ids get cold-start offers.")
    touchpoint: Id = Field(description="touchpoint_id from the catalogue (GET /v1/offers).")
    context: Context | None = Field(
        default=None, description="Request context (device, page, ...): scalars only."
    )
    limit: StrictInt | None = Field(
        default=None, ge=1, description="How many offers; default the touchpoint's slots."
    )
    exclude_offers: Annotated[list[Id], Field(max_length=200)] = Field(
        default_factory=list, description="Offers not to show (e.g. already on the page)."
    )
    unit_id: Id | None = Field(
        default=None,
        description="Experiment assignment unit (e.g. an anonymous visitor's first-party "
        "cookie id): the same unit always gets the same experiment arm. Default: customer_id.",
    )


class BatchDecisionRequestBody(BaseModel):
    """Decisions for many customers at one touchpoint (email campaigns and other batches)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "touchpoint": "email_newsletter",
                    "customer_ids": ["C0000042", "C0000043"],
                    "limit": 2,
                }
            ]
        },
    )

    touchpoint: Id
    customer_ids: Annotated[list[Id], Field(min_length=1)]
    context: Context | None = None
    limit: StrictInt | None = Field(default=None, ge=1)
    exclude_offers: Annotated[list[Id], Field(max_length=200)] = Field(default_factory=list)


class ModelOut(BaseModel):
    name: str
    version: str


class OfferOut(BaseModel):
    offer_id: str
    name: str
    rank: int
    score: float | None = Field(description="P(accept) from the model; null for fallback offers")
    priority: float = Field(description="P(accept) x value x weight")
    propensity: float = Field(description="probability this offer was chosen at this rank")
    explored: bool
    reasons: list[str]


class RemovalOut(BaseModel):
    check: str
    offer_ids: list[str]
    detail: str


class CapHitOut(BaseModel):
    offer_id: str
    cap_per_customer: int
    cap_window_days: int
    contacts: int


class ScorePartOut(BaseModel):
    offer_id: str
    p_accept: float
    value: float
    weight: float
    priority: float


class SlatePositionOut(BaseModel):
    rank: int
    offer_id: str
    explored: bool
    propensity: float
    greedy_offer_id: str


class TraceOut(BaseModel):
    candidates: int
    eligible: int
    consent: bool
    removed: list[RemovalOut]
    caps_hit: list[CapHitOut]
    scores: list[ScorePartOut]
    slate: list[SlatePositionOut]
    policy: str
    epsilon: float
    cold_start: bool
    feature_spec_version: str | None
    notes: list[str]


class DecisionOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "decision_id": "5f0c3a9e2b7d4c1e9a8b7c6d5e4f3a2b",
                    "customer_id": "C0000042",
                    "touchpoint": "web_home",
                    "ts": "2026-11-22T10:15:00Z",
                    "offers": [
                        {
                            "offer_id": "OF019",
                            "name": "Designer collection preview",
                            "rank": 1,
                            "score": 0.048,
                            "priority": 0.868,
                            "propensity": 0.9625,
                            "explored": False,
                            "reasons": ["P(accept) 0.0482 x value 18 x weight 1 = priority 0.8676"],
                        }
                    ],
                    "model": {"name": "offer-ranker", "version": "3"},
                    "experiment": None,
                    "fallback": False,
                    "cold_start": False,
                    "policy": "softmax(temperature=0.02, floor=0.01)",
                    "preview": False,
                    "trace": None,
                }
            ]
        }
    )

    decision_id: str
    customer_id: str
    touchpoint: str
    ts: datetime
    offers: list[OfferOut]
    model: ModelOut
    experiment: dict[str, Any] | None = None
    fallback: bool
    cold_start: bool
    policy: str
    preview: bool = Field(
        default=False, description="true: decided with ?preview=true, not logged, no contact"
    )
    trace: TraceOut | None = None


class BrowserOfferOut(BaseModel):
    offer_id: str
    name: str
    rank: int


class BrowserDecisionOut(BaseModel):
    """A decision as a publishable (browser) key gets it: what a page shows and reports."""

    decision_id: str
    customer_id: str
    touchpoint: str
    ts: datetime
    offers: list[BrowserOfferOut]


class BatchDecisionOut(BaseModel):
    touchpoint: str
    decisions: list[DecisionOut]


def _in_utc_range(value: datetime) -> datetime:
    """A time that has a UTC value (0001-01-01T00:30+01:00 is in year 0 in UTC: refused)."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("a time between 0001-01-01 and 9999-12-31 in UTC") from None
    return value


#: An ISO 8601 time with a timezone that has a UTC value.
UtcTime = Annotated[AwareDatetime, AfterValidator(_in_utc_range)]


#: An event about the offer of :class:`DecisionOut`'s example; send it with the
#: ``decision_id`` of a decision you got (an unknown one is rejected).
EVENT_EXAMPLE = {
    "event_id": "evt-000001",
    "decision_id": "5f0c3a9e2b7d4c1e9a8b7c6d5e4f3a2b",
    "offer_id": "OF019",
    "type": "click",
    "ts": "2026-11-22T10:15:07Z",
}


class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [EVENT_EXAMPLE]})

    event_id: Id = Field(description="Your unique id of the event; resending it is safe.")
    decision_id: Id = Field(description="The `decision_id` of the decision that served the offer.")
    offer_id: Id = Field(description="An offer that decision served.")
    type: EventType
    ts: UtcTime = Field(description="When it happened, with a timezone; not in the future.")
    revenue: FiniteFloat | None = Field(default=None, ge=0)


class EventsRequestBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"events": [EVENT_EXAMPLE]}]},
    )

    events: Annotated[list[EventIn], Field(min_length=1)]


class EventErrorOut(BaseModel):
    index: int
    event_id: str
    status: int = 422
    field: str
    expected: str
    received: Any
    message: str


class EventsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "received": 3,
                    "new": 1,
                    "duplicates": 1,
                    "rejected": 1,
                    "errors": [
                        {
                            "index": 2,
                            "event_id": "evt-3",
                            "status": 422,
                            "field": "decision_id",
                            "expected": "the decision_id of a decision served by this service",
                            "received": "nope",
                            "message": "unknown decision_id 'nope'",
                        }
                    ],
                }
            ]
        }
    )

    received: int
    new: int
    duplicates: int
    rejected: int
    errors: list[EventErrorOut]


class EligibilityRuleOut(BaseModel):
    feature: str
    op: str
    value: Any


class CatalogOfferOut(BaseModel):
    offer_id: str
    name: str
    offer_type: str
    category: str | None
    value: float
    weight: float
    touchpoints: list[str]
    start_at: datetime | None
    end_at: datetime | None
    cap_per_customer: int | None
    cap_window_days: int | None
    eligibility: list[EligibilityRuleOut]
    fallback: bool
    repeatable: bool = Field(description="offered again after the customer accepted it")


class OffersOut(BaseModel):
    touchpoint: str | None
    count: int
    offers: list[CatalogOfferOut]


class ErrorItem(BaseModel):
    field: str
    expected: str
    received: Any
    message: str


class ErrorOut(BaseModel):
    """Every 4xx: a summary and one item per problem (field, expected, received)."""

    detail: str
    errors: list[ErrorItem]
