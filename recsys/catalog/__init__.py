"""The offer catalogue: frozen ``Offer`` / ``Touchpoint`` domain types and their loading.

A :class:`Catalog` is read once (from the warehouse tables ``offers`` / ``touchpoints`` or
from contract files: CSV, Parquet or YAML) and then only read.

- ``recsys.catalog.domain``: the types (``EligibilityRule``, ``Offer``, ``Touchpoint``,
  ``TouchpointOffers``, ``Catalog``) and the UTC helpers;
- ``recsys.catalog.readers``: building them from contract rows, files or the warehouse.
"""

from recsys.catalog.domain import (
    Catalog,
    EligibilityRule,
    Offer,
    OfferSlice,
    Touchpoint,
    TouchpointOffers,
    now_utc,
    to_utc,
)
from recsys.catalog.readers import (
    catalog_from_records,
    load_catalog,
    load_catalog_from_files,
    load_catalog_from_warehouse,
    offer_from_record,
    touchpoint_from_record,
)

__all__ = [
    "Catalog",
    "EligibilityRule",
    "Offer",
    "OfferSlice",
    "Touchpoint",
    "TouchpointOffers",
    "catalog_from_records",
    "load_catalog",
    "load_catalog_from_files",
    "load_catalog_from_warehouse",
    "now_utc",
    "offer_from_record",
    "to_utc",
    "touchpoint_from_record",
]
