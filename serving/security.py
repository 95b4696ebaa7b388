"""Who may call what, checked on each request: API keys with scopes, customer tokens, CORS.

- :class:`SecurityMiddleware` authenticates the API key from the headers (401), checks its
  scope against the route (:data:`DEFAULT_RULES`, 403) and applies the key's rate limit
  (429) before the app reads anything; it never reads the body. Keys, scopes and tokens
  themselves are in :mod:`serving.credentials`.
- :data:`CustomerCheckedBody`, a FastAPI dependency of ``POST /v1/decisions``: a publishable
  key's call must carry a valid customer token (401) and ask for no trace or preview (403),
  and once
  FastAPI has parsed and validated the body, its ``customer_id`` must be the token's ``sub``
  (403). :data:`BrowserCustomer` is the token's customer for ``POST /v1/events`` (whose
  route checks the events against it).
- A publishable key's token is checked in the middleware already: its rate limit counts per
  customer token (``serving.limits``).
- :func:`install_cors`: browser calls from the configured site origins only.

In production a service without keys, or with publishable keys but no token secret, refuses
to start; in development without keys every call is allowed and a warning says so.

``python -m serving.security new-key --id shop-web --scope publishable`` prints a new key
(give it to the client once) and the record to configure (its hash).
"""

from __future__ import annotations

import argparse
import hmac
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from recsys.errors import ConfigError, PermissionDeniedError, RateLimitedError, RecsysError
from recsys.settings import ApiKeyRecord, SecuritySettings, Settings, hash_key
from serving.credentials import (
    KEY_PREFIXES,
    TOKEN_HEADER,
    Authenticator,
    KeyScope,
    Principal,
    build_authenticator,
    new_key,
)
from serving.errors import error_response
from serving.limits import RateRefusal
from serving.schemas import DecisionRequestBody

logger = logging.getLogger(__name__)

#: Paths anyone may call (probes, metrics scraped from the private network, docs, the
#: browser client and the demo page, whose routes answer 404 unless the demo is on).
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/client/recsys.js",
        "/client/recsys.d.ts",
        "/demo",
        "/demo/token",
    }
)
#: Where the docs pages' own files are served (serving.api_docs): public like the pages.
DOCS_ASSETS_PATH = "/docs-assets"


@dataclass(frozen=True)
class RouteRule:
    method: str
    path: str
    minimum: KeyScope
    prefix: bool = False

    def matches(self, method: str, path: str) -> bool:
        if self.method != "*" and method != self.method:
            return False
        return path.startswith(self.path) if self.prefix else path == self.path


#: First match wins; anything not listed needs a secret key. A route a publishable key may
#: call must check the customer of the token (:data:`CustomerCheckedBody`).
DEFAULT_RULES: tuple[RouteRule, ...] = (
    RouteRule("POST", "/v1/decisions", KeyScope.publishable),
    RouteRule("POST", "/v1/events", KeyScope.publishable),
    RouteRule("*", "/admin/", KeyScope.admin, prefix=True),
    RouteRule("*", "/v1/experiments/", KeyScope.admin, prefix=True),
    RouteRule("*", "/v1/reports/", KeyScope.admin, prefix=True),
    RouteRule("*", "/admin", KeyScope.admin),
)


def required_scope(method: str, path: str, rules: Sequence[RouteRule] = DEFAULT_RULES) -> KeyScope:
    for rule in rules:
        if rule.matches(method, path):
            return rule.minimum
    return KeyScope.secret


RateCheck = Callable[[Principal, Scope], Awaitable[RateRefusal | None]]


class SecurityMiddleware:
    """ASGI middleware: authenticate the key, check its scope, rate-limit, then call the app.

    Headers only (the body is the route's). The principal is stored in
    ``scope["state"]["principal"]`` (``request.state.principal``).
    """

    def __init__(self, app: ASGIApp, authenticator: Authenticator, rate_check: RateCheck | None):
        self.app = app
        self.authenticator = authenticator
        self.rate_check = rate_check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if path in PUBLIC_PATHS or path.startswith(f"{DOCS_ASSETS_PATH}/") or method == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            principal = self.authenticator.principal(
                headers, required_scope(method, path), f"{method} {path}"
            )
            token = headers.get(TOKEN_HEADER)
            if principal.scope == KeyScope.publishable and token:
                # Checked here (401 if bad) so the rate limit counts per customer.
                customer_id = self.authenticator.customer_id(token)
                principal = replace(principal, customer_id=customer_id)
            scope.setdefault("state", {})["principal"] = principal
            if self.rate_check is not None:
                refusal = await self.rate_check(principal, scope)
                if refusal is not None:
                    field = "X-Customer-Token" if principal.customer_id else "X-API-Key"
                    raise RateLimitedError(
                        field,
                        f"fewer requests per second ({refusal.limit})",
                        f"rate limit {refusal.limit} exceeded; "
                        f"retry in {max(1, int(refusal.retry_after + 0.999))} s",
                        refusal.retry_after,
                    )
        except RecsysError as exc:
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)


#: What ``?preview=true`` does (the decision routes' documentation of the flag).
PREVIEW_HELP = (
    "Decide (and trace) without logging: a preview is no contact (it counts toward no cap, "
    "is in no training data or experiment readout, and takes no events). Secret or admin keys."
)


def browser_principal(request: Request) -> Principal | None:
    """The caller when it is a browser (a publishable key), else None."""
    # set by SecurityMiddleware when the service checks keys; absent when it does not
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is None or principal.scope != KeyScope.publishable:
        return None
    return principal


async def browser_customer(request: Request) -> str | None:
    """The customer a publishable key's token vouches for; None for other callers.

    Raises
    ------
    AuthenticationError
        A publishable key without a valid customer token (401).
    """
    principal = browser_principal(request)
    if principal is None:
        return None
    if principal.customer_id is not None:  # the middleware checked the token
        return principal.customer_id
    authenticator: Authenticator = request.app.state.authenticator
    customer_id = authenticator.customer_id(request.headers.get(TOKEN_HEADER))
    # The access log hashes the customer of a browser call (never logs the id).
    request.state.principal = replace(principal, customer_id=customer_id)
    return customer_id


#: The customer of a browser call's token (None for secret and admin keys).
BrowserCustomer = Annotated[str | None, Depends(browser_customer)]


async def token_customer(
    token_customer_id: BrowserCustomer,
    trace: bool = Query(
        False, description="Include the decision trace (why each offer is in or out)."
    ),
    preview: bool = Query(False, description=PREVIEW_HELP),
) -> str | None:
    """The customer a publishable key's customer token vouches for; None for other callers.

    A secret or admin key (or a service without keys) may ask for any customer, for the
    trace and for a preview.

    Raises
    ------
    AuthenticationError
        A publishable key without a valid customer token (401).
    PermissionDeniedError
        A publishable key asking for the trace or a preview (403).
    """
    if token_customer_id is not None and trace:
        raise PermissionDeniedError(
            "trace",
            "false (a publishable key gets no trace)",
            None,
            "the decision trace needs a secret key",
        )
    if token_customer_id is not None and preview:
        # A browser's preview would be a free, unlogged probe of what any customer gets.
        raise PermissionDeniedError(
            "preview",
            "false (a publishable key gets no preview)",
            True,
            "a preview decision needs a secret or admin key",
        )
    return token_customer_id


async def customer_checked_body(
    body: DecisionRequestBody,
    token_customer_id: Annotated[str | None, Depends(token_customer)],
) -> DecisionRequestBody:
    """The decision body, once FastAPI has parsed and validated it and its ``customer_id``
    is the customer of a publishable key's token (the token itself is checked first).

    Raises
    ------
    PermissionDeniedError
        The body asks for another customer than the token's (403).
    """
    if token_customer_id is not None and not hmac.compare_digest(
        body.customer_id.encode("utf-8", "surrogateescape"),
        token_customer_id.encode("utf-8", "surrogateescape"),
    ):
        raise PermissionDeniedError(
            "customer_id",
            "the customer id the customer token was issued for",
            None,
            "`customer_id` must be the customer of the customer token",
        )
    return body


#: ``POST /v1/decisions``'s body, validated, its customer checked (a typed dependency).
CustomerCheckedBody = Annotated[DecisionRequestBody, Depends(customer_checked_body)]


def check_cors(security: SecuritySettings) -> None:
    if "*" in security.cors_origins and security.cors_allow_credentials:
        raise ConfigError(
            "`cors_origins` must list the site origins when `cors_allow_credentials` is on, got '*'"
        )
    for origin in security.cors_origins:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ConfigError(
                "`cors_origins` items must be origins like https://shop.example.com "
                f"(scheme and host, no path), got {origin!r}"
            )


def install_security(
    app: FastAPI, settings: Settings, rate_check: RateCheck | None = None
) -> Authenticator:
    """Add key checks (and the rate limit) to ``app``; call before other layers.

    Install order (the last added runs first): ``install_security``, then
    ``serving.limits.install_limits``, then :func:`install_cors`, then
    ``serving.observability.install_observability``.
    """
    authenticator = build_authenticator(settings)
    app.add_middleware(SecurityMiddleware, authenticator=authenticator, rate_check=rate_check)
    app.state.authenticator = authenticator
    app.state.browser_full_response = settings.security.browser_full_response
    return authenticator


def install_cors(app: FastAPI, security: SecuritySettings) -> None:
    """Allow browser calls from the configured site origins only (none by default)."""
    check_cors(security)
    if not security.cors_origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(security.cors_origins),
        allow_credentials=security.cors_allow_credentials,
        allow_methods=["GET", "POST"],
        allow_headers=["content-type", "x-api-key", "x-customer-token", "x-request-id"],
        expose_headers=["x-request-id", "retry-after"],
        max_age=600,
    )


# -------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m serving.security new-key|hash-key``."""
    parser = argparse.ArgumentParser(prog="python -m serving.security")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("new-key", help="print a new key and its configuration record")
    make.add_argument("--id", required=True, help="name of the key (logged, not secret)")
    make.add_argument("--scope", required=True, choices=sorted(KEY_PREFIXES))
    sub.add_parser("hash-key", help="read a key on stdin, print its hash")
    args = parser.parse_args(argv)
    if args.command == "new-key":
        key = new_key(args.scope)
        record = ApiKeyRecord(id=args.id, scope=args.scope, hash=hash_key(key))
        print(f"key (give it to the client, it is not stored): {key}")
        print(f"record (configure it): {record.model_dump_json(exclude_none=True)}")
    else:
        print(hash_key(sys.stdin.readline().strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
