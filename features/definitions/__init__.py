"""The feature definitions: each feature once, as an Ibis expression plus its metadata.

Every customer feature is computed for a *point* ``(customer_id, as_of)`` from events with
``as_of - HORIZON_DAYS <= ts < as_of``
(the lifetime purchase features: ``as_of - LIFETIME_DAYS``) (strictly before ``as_of``). The pipeline
(``features.pipeline``) joins points to each event source and hands the joined table to the
aggregate definitions below; derived features are then computed from the aggregates. The same
expressions run on DuckDB and on Spark (Ibis compiles them), for one point per customer (serving,
``as_of = now``) or for one point per logged decision (training sets).

The horizons, windows and event vocabulary come from the process's features config
(:mod:`features.config`), which is part of the feature spec version.

Modules: ``base`` (the definition types, the config's constants and the event vocabulary),
``exprs`` (expression helpers), ``purchases`` (purchase, lifetime and RFM features),
``interactions`` (interaction features), ``customer`` (offer history, static attributes,
journey stage, rollups, and the order of the customer features), ``stats`` (the per-key
statistics behind the crosses), ``decision`` (customer x offer / touchpoint crosses, and the
offer, touchpoint and request inputs). Everything is read through this package, as
``features.definitions.NAME``.
"""

from __future__ import annotations

from features.definitions.base import (
    CART_EVENTS,
    CLICK_EVENTS,
    COMPLAINT_EVENTS,
    CONFIG,
    CONTACT_EVENTS,
    DAY_SECONDS,
    DECISION_STAGE,
    EMAIL_OPEN_EVENTS,
    HORIZON_DAYS,
    LIFETIME_DAYS,
    NPS_EVENTS,
    POSITIVE_RESPONSES,
    PRIOR_IMPRESSIONS,
    PRIOR_POSITIVES,
    PURCHASE_CHANNELS,
    REVIEW_EVENTS,
    TICKET_EVENTS,
    VIEW_EVENTS,
    VISIT_EVENTS,
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
    JOURNEY_STAGE,
    OFFER_HISTORY_AGGREGATES,
    ROLLUPS,
    STATIC_FEATURES,
    customer_feature_defs,
)
from features.definitions.decision import (
    CONTEXT_CATEGORY_MATCH,
    CONTEXT_PREFIX,
    CROSS_CUSTOMER_INPUTS,
    CROSSES,
    IBIS_OPS,
    NUMPY_OPS,
    OFFER_FEATURES,
    REQUEST_FEATURES,
    TOUCHPOINT_FEATURES,
    CrossDef,
    Ops,
)
from features.definitions.interactions import INTERACTION_AGGREGATES
from features.definitions.purchases import (
    LIFETIME_AGGREGATES,
    PURCHASE_AGGREGATES,
    TOP_CATEGORY,
    TOP_CATEGORY_SHARE,
)
from features.definitions.stats import (
    AGING_STATS,
    CATEGORY_STATS,
    OFFER_STATS,
    OFFER_TYPE_STATS,
    STAT_DEFAULTS,
    STAT_TABLES,
    StatDef,
    StatTable,
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
        CONTEXT_CATEGORY_MATCH,
        *REQUEST_FEATURES,
    )


__all__ = [
    "AGING_STATS",
    "ATTRIBUTE_PREFIX",
    "CART_EVENTS",
    "CATEGORY_STATS",
    "CLICK_EVENTS",
    "COMPLAINT_EVENTS",
    "CONFIG",
    "CONSENT_COLUMNS",
    "CONTACT_EVENTS",
    "CONTEXT_CATEGORY_MATCH",
    "CONTEXT_PREFIX",
    "CROSSES",
    "CROSS_CUSTOMER_INPUTS",
    "DAY_SECONDS",
    "DECISION_STAGE",
    "DERIVED",
    "EMAIL_OPEN_EVENTS",
    "HORIZON_DAYS",
    "IBIS_OPS",
    "INTERACTION_AGGREGATES",
    "JOURNEY_STAGE",
    "LIFETIME_AGGREGATES",
    "LIFETIME_DAYS",
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
    "STAT_TABLES",
    "TICKET_EVENTS",
    "TOP_CATEGORY",
    "TOP_CATEGORY_SHARE",
    "TOUCHPOINT_FEATURES",
    "VIEW_EVENTS",
    "VISIT_EVENTS",
    "WINDOWS",
    "AggregateDef",
    "CrossDef",
    "DerivedDef",
    "FeatureDef",
    "Group",
    "Kind",
    "Ops",
    "RollupDef",
    "StatDef",
    "StatTable",
    "all_feature_defs",
    "customer_feature_defs",
    "response_rate",
]
