"""POST /v1/decisions and POST /v1/decisions/batch — one decision path for both."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request, Response

from recsys.decision import Decision, DecisionRequest
from recsys.errors import InvalidRequestError
from serving.deps import (
    CatalogDep,
    ComponentsDep,
    ServingSettingsDep,
    require_touchpoint,
)
from serving.observability import label_touchpoint
from serving.schemas import BatchDecisionOut, BatchDecisionRequestBody, DecisionOut, ErrorOut
from serving.security import PREVIEW_HELP, CustomerCheckedBody, browser_principal

router = APIRouter(prefix="/v1/decisions", tags=["decisions"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Malformed JSON"},
    404: {"model": ErrorOut, "description": "Unknown touchpoint"},
    422: {"model": ErrorOut, "description": "Invalid field (named, with expected and received)"},
}


def decision_dict(decision: Decision, preview: bool = False) -> dict[str, Any]:
    """The JSON body of a decision (the shape of :class:`DecisionOut`), built directly.

    The hot path skips pydantic serialisation: the values come from typed domain objects,
    and the response schema test keeps this function and ``DecisionOut`` in agreement.
    """
    body: dict[str, Any] = {
        "decision_id": decision.decision_id,
        "customer_id": decision.customer_id,
        "touchpoint": decision.touchpoint_id,
        "ts": decision.ts,
        "offers": [
            {
                "offer_id": o.offer_id,
                "name": o.name,
                "rank": o.rank,
                "score": o.score,
                "priority": o.priority,
                "propensity": o.propensity,
                "explored": o.explored,
                "reasons": list(o.reasons),
            }
            for o in decision.offers
        ],
        "model": {"name": decision.model.name, "version": decision.model.version},
        "experiment": (
            {"id": decision.experiment_id, "arm": decision.arm}
            if decision.experiment_id is not None
            else None
        ),
        "fallback": decision.fallback,
        "cold_start": decision.cold_start,
        "policy": decision.policy,
        "preview": preview,
        "trace": None,
    }
    t = decision.trace
    if t is not None:
        body["trace"] = {
            "candidates": t.candidates,
            "eligible": t.eligible,
            "consent": t.consent,
            "removed": [
                {"check": str(r.check), "offer_ids": list(r.offer_ids), "detail": r.detail}
                for r in t.removals
            ],
            "caps_hit": [dataclasses.asdict(c) for c in t.caps_hit],
            "scores": [dataclasses.asdict(s) for s in t.scores],
            "slate": [dataclasses.asdict(s) for s in t.slate],
            "policy": t.policy,
            "epsilon": t.epsilon,
            "cold_start": t.cold_start,
            "feature_spec_version": t.feature_spec_version,
            "notes": list(t.notes),
        }
    return body


def browser_decision_dict(decision: Decision) -> dict[str, Any]:
    """What a page needs (the shape of :class:`BrowserDecisionOut`): the ids to report
    events with and the offers in order; no scores, priorities or reasoning."""
    return {
        "decision_id": decision.decision_id,
        "customer_id": decision.customer_id,
        "touchpoint": decision.touchpoint_id,
        "ts": decision.ts,
        "offers": [
            {"offer_id": o.offer_id, "name": o.name, "rank": o.rank} for o in decision.offers
        ],
    }


def json_response(body: dict[str, Any]) -> Response:
    return Response(
        content=orjson.dumps(body, option=orjson.OPT_UTC_Z | orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
    )


def _check_limit(limit: int | None, max_limit: int, field: str = "limit") -> None:
    if limit is not None and limit > max_limit:
        raise InvalidRequestError(field, f"<= {max_limit}", limit)


@router.post(
    "",
    response_model=DecisionOut,
    responses={
        **_ERRORS,
        401: {"model": ErrorOut, "description": "No or unknown API key, or no customer token"},
        403: {
            "model": ErrorOut,
            "description": "Another customer than the token's, or a trace or preview",
        },
    },
    summary="Decide offers for one customer",
)
async def decide(
    body: CustomerCheckedBody,
    components: ComponentsDep,
    request: Request,
    trace: bool = Query(
        False, description="Include the decision trace (why each offer is in or out)."
    ),
    preview: bool = Query(False, description=PREVIEW_HELP),
) -> Response:
    """The offers to show one customer at one touchpoint now, best first.

    Unknown customers get cold-start offers; when nothing is eligible the touchpoint's
    fallback offer comes back with ``fallback: true``. The decision is logged before the
    response is sent (its offers count toward contact caps on every channel from then on),
    unless it is a preview (``?preview=true``, secret or admin keys): decided alike, not
    logged, no contact.
    Concurrent requests are decided together (one pipeline run, see ``serving.batching``).
    A publishable (browser) key gets only what a page needs (``BrowserDecisionOut``: ids,
    names, ranks) unless ``security.browser_full_response`` is on.
    """
    require_touchpoint(components.catalog, body.touchpoint)
    label_touchpoint(request, body.touchpoint)
    _check_limit(body.limit, components.serving.max_limit)
    decision_request = DecisionRequest(
        customer_id=body.customer_id,
        touchpoint_id=body.touchpoint,
        context=MappingProxyType(dict(body.context or {})),
        limit=body.limit,
        exclude_offers=tuple(body.exclude_offers),
        unit_id=body.unit_id,
    )
    decision = await components.batcher.decide(decision_request, trace=trace, record=not preview)
    if browser_principal(request) is not None and not request.app.state.browser_full_response:
        return json_response(browser_decision_dict(decision))
    return json_response(decision_dict(decision, preview))


@router.post(
    "/batch",
    response_model=BatchDecisionOut,
    responses=_ERRORS,
    summary="Decide offers for many customers at one touchpoint (email and other batches)",
)
def decide_batch(
    body: BatchDecisionRequestBody,
    request: Request,
    components: ComponentsDep,
    catalog: CatalogDep,
    settings: ServingSettingsDep,
    trace: bool = Query(False, description="Include each decision's trace."),
    preview: bool = Query(False, description=PREVIEW_HELP),
) -> Response:
    """The same decision path as ``POST /v1/decisions``, scored in one model call."""
    require_touchpoint(catalog, body.touchpoint)
    label_touchpoint(request, body.touchpoint)
    _check_limit(body.limit, settings.max_limit)
    n = len(body.customer_ids)
    if n > settings.max_batch_customers:
        raise InvalidRequestError(
            "customer_ids",
            f"at most {settings.max_batch_customers} items",
            f"{n} items",
            f"`customer_ids` must have at most {settings.max_batch_customers} items, got {n}",
        )
    seen: dict[str, int] = {}
    for i, cid in enumerate(body.customer_ids):
        if cid in seen:
            raise InvalidRequestError(
                f"customer_ids[{i}]",
                "each customer id once per batch",
                cid,
                f"`customer_ids[{i}]` repeats customer_ids[{seen[cid]}]",
            )
        seen[cid] = i
    context = MappingProxyType(dict(body.context or {}))
    requests = [
        DecisionRequest(
            customer_id=cid,
            touchpoint_id=body.touchpoint,
            context=context,
            limit=body.limit,
            exclude_offers=tuple(body.exclude_offers),
        )
        for cid in body.customer_ids
    ]
    decisions = components.decide(requests, trace=trace, record=not preview)
    return json_response(
        {"touchpoint": body.touchpoint, "decisions": [decision_dict(d, preview) for d in decisions]}
    )
