"""The feature definitions: each feature once, as an Ibis expression plus its metadata.

Every customer feature is computed for a *point* ``(customer_id, as_of)`` from events with
``as_of - HORIZON_DAYS <= ts < as_of`` (strictly before ``as_of``). The pipeline
(``features.pipeline``) joins points to each event source and hands the joined table to the
aggregate definitions below; derived features are then computed from the aggregates. The same
expressions run on DuckDB and on Spark (Ibis compiles them), for one point per customer (serving,
``as_of = now``) or for one point per logged decision (training sets).

Modules: ``base`` (the definition types and the constants every feature shares),
``customer`` (customer features), ``decision`` (customer x offer / touchpoint crosses, and the
offer, touchpoint and request inputs). Everything is read through this package, as
``features.definitions.NAME``.
"""

from __future__ import annotations

from features.definitions.base import (
    COMPLAINT_EVENTS,
    DAY_SECONDS,
    DECISION_STAGE,
    HORIZON_DAYS,
    NPS_EVENTS,
    POSITIVE_RESPONSES,
    PRIOR_IMPRESSIONS,
    PRIOR_POSITIVES,
    PURCHASE_CHANNELS,
    REVIEW_EVENTS,
    TICKET_EVENTS,
    WINDOWS,
    AggregateDef,
    DerivedDef,
    FeatureDef,
    Group,
    Kind,
    RollupDef,
    response_rate,
)
from features.definitions.customer import (
    ATTRIBUTE_PREFIX,
    CONSENT_COLUMNS,
    DERIVED,
    INTERACTION_AGGREGATES,
    JOURNEY_STAGE,
    OFFER_HISTORY_AGGREGATES,
    PURCHASE_AGGREGATES,
    ROLLUPS,
    STATIC_FEATURES,
    TOP_CATEGORY,
    TOP_CATEGORY_SHARE,
    customer_feature_defs,
)
from features.definitions.decision import (
    CATEGORY_STATS,
    CONTEXT_PREFIX,
    CROSSES,
    IBIS_OPS,
    NUMPY_OPS,
    OFFER_FEATURES,
    OFFER_STATS,
    OFFER_TYPE_STATS,
    REQUEST_FEATURES,
    STAT_DEFAULTS,
    TOUCHPOINT_FEATURES,
    CrossDef,
    Ops,
)


def all_feature_defs() -> tuple[FeatureDef, ...]:
    """Every fixed model input (customer, offer, touchpoint, crosses, request), in order.

    Customer attributes (``attr_*``) and request context keys (``ctx_*``) come from the data
    and are fixed by the encoding a model carries (``features.matrix.Encoding``).
    """
    return (
        *customer_feature_defs(),
        *OFFER_FEATURES,
        *TOUCHPOINT_FEATURES,
        *(c.feature for c in CROSSES),
        *REQUEST_FEATURES,
    )


__all__ = [
    "ATTRIBUTE_PREFIX",
    "CATEGORY_STATS",
    "COMPLAINT_EVENTS",
    "CONSENT_COLUMNS",
    "CONTEXT_PREFIX",
    "CROSSES",
    "DAY_SECONDS",
    "DECISION_STAGE",
    "DERIVED",
    "HORIZON_DAYS",
    "IBIS_OPS",
    "INTERACTION_AGGREGATES",
    "JOURNEY_STAGE",
    "NPS_EVENTS",
    "NUMPY_OPS",
    "OFFER_FEATURES",
    "OFFER_HISTORY_AGGREGATES",
    "OFFER_STATS",
    "OFFER_TYPE_STATS",
    "POSITIVE_RESPONSES",
    "PRIOR_IMPRESSIONS",
    "PRIOR_POSITIVES",
    "PURCHASE_AGGREGATES",
    "PURCHASE_CHANNELS",
    "REQUEST_FEATURES",
    "REVIEW_EVENTS",
    "ROLLUPS",
    "STATIC_FEATURES",
    "STAT_DEFAULTS",
    "TICKET_EVENTS",
    "TOP_CATEGORY",
    "TOP_CATEGORY_SHARE",
    "TOUCHPOINT_FEATURES",
    "WINDOWS",
    "AggregateDef",
    "CrossDef",
    "DerivedDef",
    "FeatureDef",
    "Group",
    "Kind",
    "Ops",
    "RollupDef",
    "all_feature_defs",
    "customer_feature_defs",
    "response_rate",
]
