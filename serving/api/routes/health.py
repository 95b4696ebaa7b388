"""/healthz (the process answers) and /readyz (it can decide: model, catalogue, log)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

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
        logger.warning("event log not reachable: %s", exc)
        problems.append(f"event log not reachable: {type(exc).__name__}")
    body = {
        "status": "not ready" if problems else "ready",
        "problems": problems,
        "model": {"name": components.model.name, "version": components.model.version},
        "feature_spec_version": components.model.feature_spec_version,
        "catalogue": {
            "offers": len(components.catalog.offers),
            "touchpoints": len(components.catalog.touchpoints),
        },
        "policy": components.policy_name,
    }
    return JSONResponse(body, status_code=503 if problems else 200)
