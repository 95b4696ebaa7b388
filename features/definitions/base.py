"""The vocabulary of feature definitions: ``FeatureDef`` and the aggregate, derived and rollup
definitions built from it, the time constants every feature shares, and ``response_rate``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import ibis.expr.types as ir

from features.config import active_config

# The process's features config (features.config): horizons, windows, event vocabulary.
CONFIG = active_config()
HORIZON_DAYS = CONFIG.horizon_days  # history older than this is not looked at (a Feast ttl)
LIFETIME_DAYS = CONFIG.lifetime_days  # how far back the lifetime purchase features look
DAY_SECONDS = 86_400
WINDOWS = CONFIG.windows
# Response rates are smoothed towards a prior of 0.1 with the weight of 5 impressions.
PRIOR_POSITIVES = 0.5
PRIOR_IMPRESSIONS = 5.0
POSITIVE_RESPONSES = ("accept", "convert")  # what counts as an accepted offer in the history
PURCHASE_CHANNELS = ("store", "web", "app")
# The event vocabulary: the interaction event types each feature role reads.
VIEW_EVENTS = CONFIG.events("view")
CLICK_EVENTS = CONFIG.events("click")
CART_EVENTS = CONFIG.events("cart")
VISIT_EVENTS = CONFIG.events("visit")
CONTACT_EVENTS = CONFIG.events("contact")
EMAIL_OPEN_EVENTS = CONFIG.events("email_open")
COMPLAINT_EVENTS = CONFIG.events("complaint")
TICKET_EVENTS = CONFIG.events("ticket", "complaint")
REVIEW_EVENTS = CONFIG.events("review")
NPS_EVENTS = CONFIG.events("nps")
DECISION_STAGE = "decision"

Kind = Literal["numeric", "categorical"]
Group = Literal["customer", "offer", "touchpoint", "cross", "request"]


@dataclass(frozen=True)
class FeatureDef:
    """One model input: its name, kind, meaning and where it comes from.

    ``default`` is the value of a customer without any history (the cold-start vector);
    ``ages`` marks "days since ..." features, which grow with elapsed time (serving adds the
    days elapsed since the vector was materialised, capped at ``HORIZON_DAYS``).
    """

    name: str
    kind: Kind
    description: str
    source: str
    group: Group = "customer"
    default: float | str | None = None
    ages: bool = False


@dataclass(frozen=True)
class AggregateDef:
    """An aggregate over one source joined to points; ``build(events) -> scalar expression``."""

    feature: FeatureDef
    build: Callable[[ir.Table], ir.Value]


@dataclass(frozen=True)
class DerivedDef:
    """A feature computed from the aggregates of a point; ``build(table) -> column``."""

    feature: FeatureDef
    build: Callable[[ir.Table], ir.Value]


@dataclass(frozen=True)
class RollupDef:
    """A customer feature aggregated from a per-(point, key) statistics table.

    ``table``: "category" (per-category spend) or "accepted_offers" (offers with a positive
    response); ``build(stats) -> aggregate``.
    (Cheaper than a COUNT DISTINCT over the joined events.)
    """

    feature: FeatureDef
    table: str
    build: Callable[[ir.Table], ir.Value]


def response_rate(positives: Any, impressions: Any) -> Any:
    """Smoothed response rate; works on Ibis columns and numpy arrays alike."""
    return (positives + PRIOR_POSITIVES) / (impressions + PRIOR_IMPRESSIONS)
