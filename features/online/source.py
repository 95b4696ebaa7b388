"""The online store as the decision pipeline's :class:`~recsys.decision.ports.FeatureSource`."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from features.definitions import ATTRIBUTE_PREFIX, CONSENT_COLUMNS
from features.online.base import OnlineStore
from features.online.block import decode_block
from features.rule_features import unknown_rule_features
from features.spec import FEATURE_SPEC_VERSION
from recsys.catalog import Catalog
from recsys.decision.ports import FeatureBlock, FeatureSource
from recsys.errors import SpecMismatchError

logger = logging.getLogger(__name__)

#: Catalogue names with no feature of the same name -> the feature that measures them.
#: Order count and spend: the customer's purchases over the lifetime lookback
#: (``lifetime_days`` of the features config).
DEFAULT_ALIASES: dict[str, str] = {
    **{column: feature for feature, column in CONSENT_COLUMNS.items()},
    "order_count": "purch_lifetime_orders",
    "total_spend": "purch_lifetime_spend",
}


class CatalogNames:
    """Gives a block the catalogue's names (eligibility rule features, touchpoint consent
    columns) as :attr:`FeatureBlock.aliases`: ``aliases[name]`` if the block has it, else
    ``attr_<name>`` (a customers column).

    Parameters
    ----------
    catalog : Catalog
    aliases : mapping of catalogue name -> feature name
    """

    def __init__(self, catalog: Catalog, aliases: Mapping[str, str] = DEFAULT_ALIASES):
        needed = {r.feature for o in catalog.offers.values() for r in o.eligibility}
        needed |= {t.consent_column for t in catalog.touchpoints.values() if t.consent_column}
        self._sources: dict[str, tuple[str, ...]] = {
            name: tuple(
                s for s in (aliases.get(name), f"{ATTRIBUTE_PREFIX}{name}") if s is not None
            )
            for name in sorted(needed)
        }
        self._aliases: dict[tuple[tuple[str, ...], tuple[str, ...]], Mapping[str, str]] = {}

    def __call__(self, block: FeatureBlock) -> FeatureBlock:
        """``block`` with the catalogue's names it lacks as aliases (worked out once per set
        of column names: a store's blocks all have its layout's)."""
        columns = (block.numeric_names, tuple(block.text))
        aliases = self._aliases.get(columns)
        if aliases is None:
            names = set(block.numeric_names) | set(block.text)
            aliases = MappingProxyType(
                {
                    name: next((s for s in sources if s in names), sources[-1])
                    for name, sources in self._sources.items()
                    if name not in names and sources
                }
            )
            self._aliases[columns] = aliases
        return dataclasses.replace(block, aliases=aliases)


class NamedFeatures:
    """A feature source whose blocks carry one catalogue's names (:class:`CatalogNames`).

    The service builds one per catalogue it serves, over the same (resilient) store, so a
    pipeline swapped in for a new catalogue reads the names of *its* rules and consent
    columns, never those of the catalogue before.

    Parameters
    ----------
    inner : FeatureSource
    catalog : Catalog
    aliases : mapping of catalogue name -> feature name
    """

    def __init__(
        self, inner: FeatureSource, catalog: Catalog, aliases: Mapping[str, str] = DEFAULT_ALIASES
    ):
        self.inner = inner
        self._named = CatalogNames(catalog, aliases)

    def read(self, customer_ids: Sequence[str]) -> FeatureBlock:
        return self._named(self.inner.read(customer_ids))

    def spec_version(self) -> str:
        return self.inner.spec_version()


class StoreFeatureSource:
    """Reads blocks of customers from an online store, with the catalogue's names.

    The names the catalogue uses (eligibility rule features, touchpoint consent columns:
    contract column names such as ``loyalty_tier`` or ``email_opt_in``) are given as
    :attr:`FeatureBlock.aliases` of the feature that holds them: ``aliases[name]`` if the
    store has it, else ``attr_<name>`` (a customers column).

    Parameters
    ----------
    store : OnlineStore
    catalog : Catalog
    aliases : mapping of catalogue name -> feature name
    """

    def __init__(
        self, store: OnlineStore, catalog: Catalog, aliases: Mapping[str, str] = DEFAULT_ALIASES
    ):
        self.store = store
        self._catalog = catalog
        self._aliases = aliases
        self._named = CatalogNames(catalog, aliases)

    def read(self, customer_ids: Sequence[str]) -> FeatureBlock:
        """The block of ``customer_ids`` (distinct), in that order; unknown customers get
        the cold start."""
        return self._named(self.store.read_block(customer_ids))

    def cold_start(self, customer_ids: Sequence[str]) -> FeatureBlock:
        """Every customer as unknown, without reading the store (what serves while the store
        is down): the cold-start values, the catalogue's names resolved as :meth:`read` does."""
        ids = list(customer_ids)
        return self._named(decode_block(ids, [None] * len(ids), FEATURE_SPEC_VERSION, None))

    def spec_version(self) -> str:
        """The store's feature-spec version; refuses a store this code cannot read.

        Logs (as errors) the eligibility rules naming a feature the store's customers do
        not have: such a rule hides its offer from everyone.
        """
        version = self.store.spec_version()
        layout = self.store.layout()
        if layout is not None:
            names = (*layout.numeric, *layout.text)
            for unknown in unknown_rule_features(self._catalog, names, self._aliases):
                logger.error("%s", unknown.message)
        if version is not None and version != FEATURE_SPEC_VERSION:
            raise SpecMismatchError(
                f"the online store holds vectors of feature spec {version}, this code computes "
                f"spec {FEATURE_SPEC_VERSION}; run `recsys features materialize`"
            )
        if version is None:
            logger.warning(
                "the online store is empty: every customer gets the cold start; "
                "run `recsys features materialize`"
            )
            return FEATURE_SPEC_VERSION
        return version

    def close(self) -> None:
        self.store.close()
