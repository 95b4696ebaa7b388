"""POST /v1/decisions and POST /v1/decisions/batch — one decision path for both."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Coroutine, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from recsys.decision import Decision, DecisionRequest
from serving.deps import (
    CatalogDep,
    ComponentsDep,
    EngineDep,
    ServingSettingsDep,
    get_components,
    require_touchpoint,
)
from serving.errors import ApiError
from serving.observability import TOUCHPOINT_LABEL
from serving.schemas import (
    BatchDecisionOut,
    BatchDecisionRequestBody,
    DecisionOut,
    DecisionRequestBody,
    ErrorOut,
)

router = APIRouter(prefix="/v1/decisions", tags=["decisions"])

_ERRORS = {
    400: {"model": ErrorOut, "description": "Malformed JSON"},
    404: {"model": ErrorOut, "description": "Unknown touchpoint"},
    422: {"model": ErrorOut, "description": "Invalid field (named, with expected and received)"},
}


def decision_dict(decision: Decision) -> dict[str, Any]:
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
        "experiment": None,
        "fallback": decision.fallback,
        "cold_start": decision.cold_start,
        "policy": decision.policy,
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


def json_response(body: dict[str, Any]) -> Response:
    return Response(
        content=orjson.dumps(body, option=orjson.OPT_UTC_Z | orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
    )


def _check_limit(limit: int | None, max_limit: int, field: str = "limit") -> None:
    if limit is not None and limit > max_limit:
        raise ApiError(
            422, field, f"<= {max_limit}", limit, f"`{field}` must be <= {max_limit}, got {limit}"
        )


Model = TypeVar("Model", bound=BaseModel)
_FLAG = TypeAdapter(bool)


async def json_body(request: Request, model: type[Model]) -> Model:
    """``model`` from the request body, validated by pydantic-core straight from the bytes.

    Refuses what FastAPI's own body parameter refuses, with the same error items: an empty
    body is a missing ``body``, a body without a JSON content type is not a JSON object,
    malformed JSON is ``json_invalid`` (400).
    """
    raw = await request.body()
    if not raw:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        if _is_json(request.headers.get("content-type")):
            return model.model_validate_json(raw)
        return model.model_validate(raw)  # refused: bytes are not an object
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or (
        kind.startswith("application/") and kind.endswith("+json")
    )


def query_flag(request: Request, name: str) -> bool:
    """A boolean query parameter (``true``/``false``/``1``/``0``/...), default False."""
    if not request.scope.get("query_string"):
        return False  # most requests: no query string to parse
    value = request.query_params.get(name)
    if value is None:
        return False
    try:
        return _FLAG.validate_python(value)
    except ValidationError as exc:
        errors = [{**e, "loc": ("query", name)} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


class DecisionRoute(APIRoute):
    """``POST /v1/decisions``, the hot path, without FastAPI's per-request machinery.

    The route is declared and documented like any other (the endpoint's signature gives
    the OpenAPI body and query), but each request is served by :func:`_serve_decision`:
    the body is validated from bytes in one pydantic-core call (not parsed to Python
    objects first) and the one dependency is read directly; no dependency graph is solved.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return _serve_decision


async def _serve_decision(request: Request) -> Response:
    components = await get_components(request)
    body = await json_body(request, DecisionRequestBody)
    if body.touchpoint in components.catalog.touchpoints:
        # The metrics label, so the observability layer need not parse the body again.
        request.scope[TOUCHPOINT_LABEL] = body.touchpoint
    return await decide(body, components, trace=query_flag(request, "trace"))


class DecisionLane:
    """ASGI endpoint of ``POST /v1/decisions`` for the service's hot-route split
    (``serving.main.ServiceApp``): the app's own middleware (keys, limits, metrics, access
    log) runs around it, FastAPI's routing layers do not.

    It does what those layers do for this one route: puts the route in the scope (metrics
    and access-log labels) and turns an exception into the app's response for it, found as
    Starlette's exception layer finds it. An exception the app does not map goes up to the
    server-error layer (a bare 500), as before.
    """

    def __init__(self, route: APIRoute, exception_handlers: Mapping[Any, Callable]):
        self.route = route
        self.exception_handlers = exception_handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route
        scope["endpoint"] = self.route.endpoint
        scope["path_params"] = {}
        request = Request(scope, receive, send)
        try:
            response = await _serve_decision(request)  # raises before anything is sent
        except Exception as exc:
            handler = _exception_handler(self.exception_handlers, exc)
            if handler is None:
                raise
            response = handler(request, exc)
            if inspect.isawaitable(response):
                response = await response
        await response(scope, receive, send)


def _exception_handler(handlers: Mapping[Any, Callable], exc: Exception) -> Callable | None:
    """The app's handler of ``exc`` as Starlette's exception layer finds it (by status for an
    ``HTTPException``, else by class); handlers of 500 and ``Exception`` belong to the
    server-error layer."""
    if isinstance(exc, HTTPException) and exc.status_code != 500 and exc.status_code in handlers:
        return handlers[exc.status_code]
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


async def decide(
    body: DecisionRequestBody,
    components: ComponentsDep,
    trace: bool = Query(
        False, description="Include the decision trace (why each offer is in or out)."
    ),
) -> Response:
    """The offers to show one customer at one touchpoint now, best first.

    Unknown customers get cold-start offers; when nothing is eligible the touchpoint's
    fallback offer comes back with ``fallback: true``. The decision is logged before the
    response is sent (its offers count toward contact caps on every channel from then on).
    Concurrent requests are decided together (one engine call, see ``serving.batching``).
    """
    # One dependency on the hot path: catalogue and settings come from the components.
    require_touchpoint(components.catalog, body.touchpoint)
    _check_limit(body.limit, components.serving.max_limit)
    request = DecisionRequest(
        customer_id=body.customer_id,
        touchpoint_id=body.touchpoint,
        context=MappingProxyType(dict(body.context or {})),
        limit=body.limit,
        exclude_offers=tuple(body.exclude_offers),
    )
    decision = await components.batcher.decide(request, trace=trace)
    return json_response(decision_dict(decision))


router.add_api_route(
    "",
    decide,
    methods=["POST"],
    response_model=DecisionOut,
    responses=_ERRORS,
    summary="Decide offers for one customer",
    route_class_override=DecisionRoute,
)


@router.post(
    "/batch",
    response_model=BatchDecisionOut,
    responses=_ERRORS,
    summary="Decide offers for many customers at one touchpoint (email and other batches)",
)
def decide_batch(
    body: BatchDecisionRequestBody,
    engine: EngineDep,
    catalog: CatalogDep,
    settings: ServingSettingsDep,
    trace: bool = Query(False, description="Include each decision's trace."),
) -> Response:
    """The same decision path as ``POST /v1/decisions``, scored in one model call."""
    require_touchpoint(catalog, body.touchpoint)
    _check_limit(body.limit, settings.max_limit)
    n = len(body.customer_ids)
    if n > settings.max_batch_customers:
        raise ApiError(
            422,
            "customer_ids",
            f"at most {settings.max_batch_customers} items",
            f"{n} items",
            f"`customer_ids` must have at most {settings.max_batch_customers} items, got {n}",
        )
    seen: dict[str, int] = {}
    for i, cid in enumerate(body.customer_ids):
        if cid in seen:
            raise ApiError(
                422,
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
    decisions = engine.decide_many(requests, trace=trace)
    return json_response(
        {"touchpoint": body.touchpoint, "decisions": [decision_dict(d) for d in decisions]}
    )


#: The route :class:`DecisionLane` serves (declared above, so OpenAPI documents it as usual).
DECISION_ROUTE = next(r for r in router.routes if isinstance(r, DecisionRoute))
