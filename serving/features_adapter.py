"""Glue between the online feature store / model encoding and the decision core.

- :class:`StoreFeatureSource` wraps the online store: it marks cold-start vectors and makes
  the names the catalogue uses (eligibility rule features, touchpoint consent columns —
  contract column names such as ``loyalty_tier`` or ``email_opt_in``) readable on the
  feature vector, whose keys are the feature spec's (``attr_loyalty_tier``,
  ``consent_email``).
- :class:`EncodedMatrixBuilder` adapts ``features.matrix.decision_matrix`` to the core's
  ``MatrixBuilder`` protocol, with the candidate offers' column arrays built once per
  touchpoint (a decision only slices them).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

import numpy as np

from features.definitions import ATTRIBUTE_PREFIX, CONSENT_COLUMNS
from features.matrix import (
    AS_OF_KEY,
    Encoding,
    PreparedOffers,
    decision_matrix,
    decision_matrix_many,
    offer_arrays,
)
from features.online import VectorBlock, resolve_names
from features.spec import FEATURE_SPEC_VERSION
from recsys.catalog import Catalog, Offer, Touchpoint
from recsys.decision import COLD_START_KEYS
from recsys.errors import SpecMismatchError

logger = logging.getLogger(__name__)

#: Catalogue names with no feature of the same name -> the feature that measures them.
#: The feature vector has no all-time purchase count/spend; 365 days is the longest window.
DEFAULT_ALIASES: dict[str, str] = {
    **{column: feature for feature, column in CONSENT_COLUMNS.items()},
    "order_count": "purch_count_365d",
    "total_spend": "purch_amount_365d",
}


class StoreFeatureSource:
    """The online store as the decision core's ``FeatureSource``.

    Parameters
    ----------
    store : features.online store (``get_many``, ``spec_version``)
    catalog : Catalog
        Its rule features and consent columns are resolved on every vector.
    aliases : mapping of catalogue name -> feature name
    """

    def __init__(self, store: Any, catalog: Catalog, aliases: Mapping[str, str] = DEFAULT_ALIASES):
        self.store = store
        needed = {r.feature for o in catalog.offers.values() for r in o.eligibility}
        needed |= {t.consent_column for t in catalog.touchpoints.values() if t.consent_column}
        self._sources: dict[str, tuple[str, ...]] = {
            name: tuple(
                s for s in (aliases.get(name), f"{ATTRIBUTE_PREFIX}{name}") if s is not None
            )
            for name in sorted(needed)
        }
        self._reader: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[list[str], Future[VectorBlock | None]]] = deque()

    def get_many(self, customer_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        vectors = self.store.get_many(list(customer_ids))
        for vector in vectors.values():
            # The store's cold-start vector has no as-of time: nothing is known yet.
            vector[COLD_START_KEYS[0]] = vector.get(AS_OF_KEY) is None
            resolve_names(vector, self._sources)
        return vectors

    def get_block(self, customer_ids: Sequence[str]) -> VectorBlock | None:
        """:meth:`get_many` as a :class:`features.online.VectorBlock` in ``customer_ids``
        order (distinct ids), with the same names resolved; None if the store cannot.

        Returns the block :meth:`prefetch` read for the same ids, if one was asked for
        (prefetched blocks asked for before it, never collected, are dropped).
        """
        ids = list(customer_ids)
        while self._pending:
            prefetched_ids, future = self._pending.popleft()
            if prefetched_ids == ids:
                return future.result()  # waits; re-raises what the read raised
            future.cancel()
        return self._read_block(ids)

    def prefetch(self, customer_ids: Sequence[str]) -> None:
        """Start reading the block of ``customer_ids`` in a background thread, for a later
        :meth:`get_block` of the same ids (batch scoring reads chunk k + 1 while chunk k is
        decided: the store read and the Arrow parse release the GIL). Reads run one at a
        time, in order."""
        if self._reader is None:
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="feature-prefetch")
        ids = list(customer_ids)
        self._pending.append((ids, self._reader.submit(self._read_block, ids)))

    def _read_block(self, ids: list[str]) -> VectorBlock | None:
        get_block = getattr(self.store, "get_block", None)
        block = get_block(ids) if get_block is not None else None
        return block.with_names(self._sources, COLD_START_KEYS[0]) if block is not None else None

    def spec_version(self) -> str:
        """The store's feature-spec version; refuses a store this code cannot read."""
        version = self.store.spec_version()
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
        if self._reader is not None:
            self._reader.shutdown(wait=True, cancel_futures=True)
        self.store.close()


class EncodedMatrixBuilder:
    """``features.matrix.decision_matrix`` with offer arrays cached per touchpoint.

    ``build_many`` (``decision_matrix_many``) builds the rows of a whole batch in one call;
    the decision engine uses it for every ``decide_many``.

    Parameters
    ----------
    catalog : Catalog
    encoding : features.matrix.Encoding
        The model's encoding (logged with the model in ``feature_spec.json``).
    dtype : numpy.float64 (default) or numpy.float32
        dtype of the matrices; the values are float32 either way. float64 because LightGBM
        and lleaves read float64: a float32 matrix would be converted whole on every call.
    """

    def __init__(self, catalog: Catalog, encoding: Encoding, dtype: Any = np.float64):
        self.encoding = encoding
        self.dtype = np.dtype(dtype)
        self._touchpoints: dict[
            str, tuple[PreparedOffers | None, Mapping[str, int], dict[str, Any]]
        ] = {}
        for tp_id, tp in catalog.touchpoints.items():
            candidates = catalog.for_touchpoint(tp_id)
            prepared = (
                PreparedOffers(
                    [
                        {
                            "offer_id": o.offer_id,
                            "offer_type": o.offer_type,
                            "category": o.category,
                            "value": o.value,
                        }
                        for o in candidates.offers
                    ],
                    encoding,
                )
                if candidates.offers
                else None
            )
            tp_dict = {"touchpoint_id": tp.touchpoint_id, "channel": tp.channel, "stage": tp.stage}
            self._touchpoints[tp_id] = (prepared, candidates.index, tp_dict)

    def __call__(
        self,
        customer_vector: Mapping[str, Any],
        offers: Sequence[Offer],
        touchpoint: Touchpoint,
        context: Mapping[str, Any],
        now: datetime,
    ) -> np.ndarray:
        """Model rows of ``offers`` (a subset of the touchpoint's candidates); (n, n_cols).

        The rows of all the touchpoint's candidates are built (from its prepared offers)
        and those of ``offers`` taken: the same numbers, and cheaper than working out a
        subset's offer columns and key positions on every call.
        """
        prepared, index, tp_dict = self._touchpoints[touchpoint.touchpoint_id]
        if prepared is None:
            prepared = offer_arrays([])
        matrix = decision_matrix(
            customer_vector, prepared, tp_dict, context, now, encoding=self.encoding
        )
        if len(offers) == matrix.shape[0]:
            return matrix
        idx = getattr(offers, "positions", None)  # an OfferSlice from the engine
        if idx is None:
            idx = np.fromiter(
                (index[o.offer_id] for o in offers), dtype=np.int64, count=len(offers)
            )
        return matrix[idx]

    def build_many(
        self,
        customer_vectors: Sequence[Mapping[str, Any]],
        touchpoint: Touchpoint,
        contexts: Sequence[Mapping[str, Any]],
        now: datetime,
        customer_index: np.ndarray,
        offer_index: np.ndarray,
    ) -> np.ndarray:
        """Rows of (customer, candidate) pairs of one touchpoint; shapes (p,) -> (p, n_cols).

        ``offer_index`` indexes the touchpoint's candidates; row ``r`` equals the row of
        that offer in ``self(customer_vectors[customer_index[r]], ...)``.
        """
        prepared, _, tp_dict = self._touchpoints[touchpoint.touchpoint_id]
        arrays = prepared.arrays if prepared is not None else offer_arrays([])
        return decision_matrix_many(
            customer_vectors,
            arrays,
            tp_dict,
            contexts,
            now,
            encoding=self.encoding,
            customer_index=customer_index,
            offer_index=offer_index,
            dtype=self.dtype,
        )
