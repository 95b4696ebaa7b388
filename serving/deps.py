"""Typed dependencies of the routes (the components live on ``app.state``).

The dependency functions are ``async`` on purpose: they only read attributes, and FastAPI
would run a plain ``def`` dependency in the thread pool (one thread hop each, per request).
The route functions themselves are plain ``def``: their CPU work runs off the event loop.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from recsys.catalog import Catalog
from recsys.errors import NotReadyError, UnknownNameError
from recsys.eventlog import EventLog
from recsys.settings import ServingSettings
from serving.components import Components


async def get_components(request: Request) -> Components:
    components: Components | None = request.app.state.components  # None while starting
    if components is None:
        raise NotReadyError("the service is not ready yet")
    return components


ComponentsDep = Annotated[Components, Depends(get_components)]


async def get_event_log(components: ComponentsDep) -> EventLog:
    return components.event_log


async def get_catalog(components: ComponentsDep) -> Catalog:
    return components.catalog


async def get_serving_settings(components: ComponentsDep) -> ServingSettings:
    return components.serving


EventLogDep = Annotated[EventLog, Depends(get_event_log)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
ServingSettingsDep = Annotated[ServingSettings, Depends(get_serving_settings)]


def require_touchpoint(catalog: Catalog, touchpoint: str, field: str = "touchpoint") -> None:
    """404 naming the field and the known touchpoints when ``touchpoint`` is unknown."""
    if touchpoint not in catalog.touchpoints:
        known = sorted(catalog.touchpoints)
        raise UnknownNameError(
            field,
            "one of " + ", ".join(known[:30]) + (" ..." if len(known) > 30 else ""),
            touchpoint,
            f"unknown touchpoint {touchpoint!r}",
        )
