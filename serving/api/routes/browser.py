"""The browser client (``/client/recsys.js`` and its types) and the example page (``/demo``).

The client is served to anyone (it holds no secret). The example page and its token
endpoint answer only when ``security.demo_enabled`` is on (development; refused in
production): ``POST /demo/token`` is the stand-in for a site's server, which normally mints
customer tokens for its signed-in customer only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict

from recsys.errors import UnknownNameError
from serving.credentials import Authenticator, DemoIssuer
from serving.schemas import Id

CLIENT_DIR = Path(__file__).resolve().parents[2] / "client"

router = APIRouter(tags=["browser"], include_in_schema=False)


@router.get("/client/recsys.js")
async def client_module() -> FileResponse:
    """The dependency-free ES module (docs/serving.md, "Browsers")."""
    return FileResponse(CLIENT_DIR / "recsys.js", media_type="text/javascript; charset=utf-8")


@router.get("/client/recsys.d.ts")
async def client_types() -> FileResponse:
    """The module's TypeScript types."""
    return FileResponse(CLIENT_DIR / "recsys.d.ts", media_type="application/typescript")


def demo_issuer(request: Request) -> DemoIssuer:
    """The demo's token issuer; 404 naming the setting when the demo is off."""
    # None when the app runs without key checks (install_security sets it)
    authenticator: Authenticator | None = request.app.state.authenticator
    demo = authenticator.demo if authenticator is not None else None
    if demo is None:
        raise UnknownNameError(
            "path",
            "a route of the service (the demo needs security.demo_enabled, development only)",
            request.url.path,
            "the demo is off; start the service with RECSYS_SECURITY__DEMO_ENABLED=true "
            "(and a RECSYS_SECURITY__TOKEN_SECRET) outside production",
        )
    return demo


@router.get("/demo")
async def demo_page(request: Request) -> FileResponse:
    """The example page: signs a customer in, shows offers, reports what happens."""
    demo_issuer(request)
    return FileResponse(CLIENT_DIR / "demo.html", media_type="text/html; charset=utf-8")


class DemoTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: Id


class DemoTokenOut(BaseModel):
    publishable_key: str
    token: str
    expires_in: int


@router.post("/demo/token")
async def demo_token(body: DemoTokenIn, request: Request) -> DemoTokenOut:
    """What a site's server gives its page: the publishable key and a customer token."""
    demo = demo_issuer(request)
    return DemoTokenOut(
        publishable_key=demo.publishable_key,
        token=demo.token(body.customer_id),
        expires_in=demo.ttl_seconds,
    )
