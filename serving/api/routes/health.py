"""/healthz (the process answers) and /readyz (it can decide: model, catalogue, log).

/readyz is 503 while the service cannot record decisions (no offers, event log unavailable,
read-only or without its tables); 200 ``degraded`` while it decides without the online store
(every customer a cold start), so a load balancer keeps sending it traffic.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from recsys.errors import UnavailableError

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)


@router.get("/healthz", summary="Liveness")
async def healthz() -> dict[str, str]:
    # async: answered on the event loop (no thread-pool hop), so a stuck loop fails it
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: model loaded, catalogue non-empty, event log reachable")
def readyz(request: Request) -> JSONResponse:
    components = request.app.state.components  # None until the lifespan has built them
    if components is None:
        return JSONResponse({"status": "not ready", "reason": "starting"}, status_code=503)
    problems = []
    if not components.catalog.offers:
        problems.append("the catalogue has no offers")
    try:
        components.event_log.ping()
    except Exception as exc:  # any backend failure means not ready
        # EventLogUnavailable says why in words without data; anything else by its type
        reason = exc.message if isinstance(exc, UnavailableError) else type(exc).__name__
        logger.warning("event log not ready: %s", reason)
        problems.append(f"event log not ready: {reason}")
    degraded = []
    features = components.features
    if features is not None and features.down_reason is not None:
        degraded.append(f"online store down ({features.down_reason}): serving cold starts")
    body = {
        "status": "not ready" if problems else "degraded" if degraded else "ready",
        "problems": problems,
        "degraded": degraded,
        "model": {"name": components.model.name, "version": components.model.version},
        "feature_spec_version": components.model.feature_spec_version,
        "catalogue": {
            "offers": len(components.catalog.offers),
            "touchpoints": len(components.catalog.touchpoints),
        },
        "policy": components.policy_name,
    }
    return JSONResponse(body, status_code=503 if problems else 200)
