"""Eligibility rules must name a feature customers have.

A rule on a feature no customer has (a typo such as ``loyalty_teir``) never holds, so it
silently hides its offer from everyone. :func:`unknown_rule_features` finds such rules, with
the closest names that exist; ``recsys data validate`` / ``data load`` refuse them
(:func:`rule_feature_check`) and the service logs them when it first reads features
(:class:`features.online.source.CatalogNames`).

A rule's feature is known when the customer features hold it by name, through an alias
(``DEFAULT_ALIASES``: ``order_count`` -> ``purch_lifetime_orders``), or as a customers
column (``attr_<name>``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from features.definitions import ATTRIBUTE_PREFIX
from recsys.catalog import Catalog
from recsys.contract import Problem


@dataclass(frozen=True)
class UnknownRuleFeature:
    """A rule of ``offer_id`` naming ``feature``, which customers do not have."""

    offer_id: str
    rule: str
    feature: str
    closest: tuple[str, ...]

    @property
    def message(self) -> str:
        hint = f"closest: {', '.join(self.closest)}" if self.closest else "no close name"
        return (
            f"offer {self.offer_id!r}: eligibility rule `{self.rule}` names feature "
            f"{self.feature!r}, which customers do not have ({hint}); the rule would hide "
            "the offer from everyone"
        )


def unknown_rule_features(
    catalog: Catalog, available: Iterable[str], aliases: Mapping[str, str]
) -> list[UnknownRuleFeature]:
    """The rules of ``catalog`` whose feature is not in ``available`` (feature names) by
    name, by alias or as ``attr_<name>``, in offer order."""
    names = set(available)
    # The names a rule may use: features, their aliases, customers columns without prefix.
    usable = names | {a for a, f in aliases.items() if f in names}
    usable |= {n.removeprefix(ATTRIBUTE_PREFIX) for n in names if n.startswith(ATTRIBUTE_PREFIX)}
    found = []
    for offer in catalog.offers.values():
        for rule in offer.eligibility:
            if rule.feature in usable:
                continue
            closest = difflib.get_close_matches(rule.feature, sorted(usable), n=3, cutoff=0.6)
            found.append(
                UnknownRuleFeature(offer.offer_id, rule.describe(), rule.feature, tuple(closest))
            )
    return found


def rule_feature_check(con) -> list[Problem]:
    """Rules of the warehouse's offers naming no customer feature, as load problems (the
    customer features of the feature spec, and the customers table's own columns)."""
    from features.online.source import DEFAULT_ALIASES
    from features.spec import feature_spec
    from recsys.catalog import load_catalog_from_warehouse
    from recsys.contract import CUSTOMERS

    catalog = load_catalog_from_warehouse(con)
    columns = [
        r[0]
        for r in con.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'customers' "
            "AND table_catalog = current_database()"
        ).fetchall()
    ]
    available = {f.name for f in feature_spec().features if f.group == "customer"}
    available |= {f"{ATTRIBUTE_PREFIX}{c}" for c in columns if c not in CUSTOMERS.column_names}
    available |= set(columns) & set(DEFAULT_ALIASES)
    return [
        Problem("offers", None, "eligibility", u.message)
        for u in unknown_rule_features(catalog, available, DEFAULT_ALIASES)
    ]
