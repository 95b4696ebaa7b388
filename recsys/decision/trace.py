"""A decision's trace, read from what the decision computed (masks, scores, the slate)."""

from __future__ import annotations

import numpy as np

from recsys.arbitration import Policy, greedy_order
from recsys.catalog import TouchpointOffers
from recsys.decision.types import DecisionTrace, ModelInfo, ScorePart, SlatePosition
from recsys.eligibility import Eligibility


def explain(
    offers: TouchpointOffers,
    eligibility: Eligibility,
    i: int,
    priority: np.ndarray,
    p_accept: np.ndarray,
    served_ids: np.ndarray,
    explored: np.ndarray,
    propensity: np.ndarray,
    fallback: bool,
    cold_start: bool,
    policy: Policy,
    model: ModelInfo,
) -> DecisionTrace:
    """Request ``i``'s trace: ``priority`` and ``p_accept`` have shape (n, m), the slate's
    ``explored`` and ``propensity`` shape (k_max,), ``served_ids`` the offers served."""
    mask = eligibility.mask[i]
    consent = bool(eligibility.allows_fallback[i])
    order = greedy_order(priority[i : i + 1], mask[None, :])[0][: int(mask.sum())].tolist()
    ids = offers.offer_ids
    scores = tuple(
        ScorePart(str(ids[j]), float(p_accept[i, j]), float(offers.value[j]),
                  float(offers.weight[j]), float(priority[i, j]))
        for j in order
    )  # fmt: skip
    notes: list[str] = []
    slate: list[SlatePosition] = []
    if fallback:
        notes.append("no eligible offer: served the touchpoint's fallback")
        slate = [SlatePosition(k, o, False, 1.0, o) for k, o in enumerate(served_ids, 1)]
    elif not mask.any():
        notes.append(
            "no consent for this channel: nothing is shown"
            if not consent
            else "no eligible offer and the touchpoint has no fallback offer"
        )
    else:
        remaining = [str(ids[j]) for j in order]  # greedy order of what is left
        for k, offer_id in enumerate(served_ids.tolist(), start=1):
            slate.append(SlatePosition(k, offer_id, bool(explored[k - 1]),
                                       float(propensity[k - 1]), remaining[0]))  # fmt: skip
            remaining.remove(offer_id)
    return DecisionTrace(
        candidates=len(offers.offers),
        eligible=int(mask.sum()),
        consent=consent,
        removals=eligibility.removals(i),
        caps_hit=eligibility.caps_hit(i),
        scores=scores,
        slate=tuple(slate),
        policy=policy.name,
        epsilon=policy.exploration_rate,
        cold_start=cold_start,
        feature_spec_version=model.feature_spec_version,
        notes=tuple(notes),
    )
