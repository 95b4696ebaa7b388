"""Who may call what: API keys with scopes, signed customer tokens, CORS.

Three key scopes, each including the ones before it:

- ``publishable``: ``POST /v1/decisions`` only, from a browser, and only with a customer
  token (``X-Customer-Token``) whose ``sub`` is the requested ``customer_id``;
- ``secret``: every ``/v1`` endpoint for any customer (batch, events, catalogue);
- ``admin``: also ``/admin`` (model reload, alias to follow).

Keys are random strings (``rk_pub_...``, ``rk_sec_...``, ``rk_adm_...``, 256 bits); only
their SHA-256 hashes are configured (a file or ``RECSYS_SERVING_API_KEYS``), compared in
constant time. Customer tokens are JWTs (HS256) with ``sub`` = customer id and ``exp``,
issued by the site's server with the shared ``RECSYS_SERVING_TOKEN_SECRET`` (see
docs/operations.md). In production a service without keys, or with publishable keys but no
token secret, refuses to start; in development without keys every call is allowed and a
warning says so.

``python -m serving.security new-key --id shop-web --scope publishable`` prints a new key
(give it to the client once) and the record to configure (its hash).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import jwt
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.errors import ConfigError
from recsys.settings import Settings

logger = logging.getLogger(__name__)

KEY_HEADER = "x-api-key"
TOKEN_HEADER = "x-customer-token"
KEY_PREFIXES = {"publishable": "rk_pub_", "secret": "rk_sec_", "admin": "rk_adm_"}
MIN_TOKEN_SECRET_BYTES = 32
#: Paths anyone may call (probes, metrics scraped from the private network, docs).
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


class KeyScope(IntEnum):
    """Key scopes, ordered: a scope may do everything the lower ones may."""

    publishable = 1
    secret = 2
    admin = 3


ScopeName = Literal["publishable", "secret", "admin"]


class ApiKeyRecord(BaseModel):
    """One configured key: an id (safe to log), a scope and the SHA-256 of the key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    scope: ScopeName
    hash: str = Field(description="sha256:<64 hex digits> of the key")
    rate_per_second: float | None = Field(default=None, gt=0, description="default: by scope")
    burst: int | None = Field(default=None, ge=1, description="default: by scope")

    @field_validator("hash")
    @classmethod
    def _hash_format(cls, value: str) -> str:
        if not _HASH.match(value):
            # Never echo the value: it may be a raw key pasted by mistake.
            raise ValueError(
                f"`hash` must look like sha256:<64 hex digits>, got {len(value)} characters "
                "of something else (configure the hash, never the key)"
            )
        return value


class SecuritySettings(BaseSettings):
    """Keys, customer tokens and CORS (``RECSYS_SERVING_*``)."""

    model_config = SettingsConfigDict(env_prefix="RECSYS_SERVING_", env_file=".env", extra="ignore")

    api_keys: list[ApiKeyRecord] = Field(
        default_factory=list, description="JSON list of {id, scope, hash} records"
    )
    api_keys_file: Path | None = Field(
        default=None, description='JSON file {"keys": [{id, scope, hash}, ...]}'
    )
    token_secret: SecretStr | None = Field(
        default=None, description="HMAC secret of customer tokens (>= 32 bytes)"
    )
    token_secret_previous: SecretStr | None = Field(
        default=None, description="the secret before a rotation, still accepted"
    )
    token_audience: str | None = Field(default=None, description="required `aud` claim, if set")
    token_leeway_seconds: int = Field(default=30, ge=0, le=600)
    token_max_ttl_seconds: int = Field(
        default=86_400, ge=60, description="tokens living longer than this are refused"
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="site origins allowed to call from a browser"
    )
    cors_allow_credentials: bool = False


def load_security_settings(**overrides: Any) -> SecuritySettings:
    return SecuritySettings(**{k: v for k, v in overrides.items() if v is not None})


# ------------------------------------------------------------------------- keys


def hash_key(key: str) -> str:
    """The configured form of a key: ``sha256:<hex>`` (keys are 256-bit random strings)."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(scope: ScopeName) -> str:
    """A new random key of ``scope`` (256 bits, URL-safe)."""
    if scope not in KEY_PREFIXES:
        raise ConfigError(f"`scope` must be one of {sorted(KEY_PREFIXES)}, got {scope!r}")
    return KEY_PREFIXES[scope] + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id and scope, and the customer a token vouches for."""

    key_id: str
    scope: KeyScope
    customer_id: str | None = None
    rate_per_second: float | None = None
    burst: int | None = None


ANONYMOUS = Principal("anonymous", KeyScope.admin)


class AuthError(Exception):
    """A refused call: status 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, field: str, expected: str, message: str):
        super().__init__(message)
        self.status = status
        self.field = field
        self.expected = expected
        self.message = message


class KeyStore:
    """Configured key hashes; :meth:`authenticate` compares in constant time."""

    def __init__(self, records: Sequence[ApiKeyRecord]):
        ids = [r.id for r in records]
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ConfigError(f"api key ids must be unique, got repeated {repeated}")
        self._records = tuple(records)
        self._digests = tuple(bytes.fromhex(r.hash.split(":", 1)[1]) for r in records)

    def __len__(self) -> int:
        return len(self._records)

    def scopes(self) -> set[str]:
        return {r.scope for r in self._records}

    def authenticate(self, key: str) -> ApiKeyRecord | None:
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found = None
        for record, expected in zip(self._records, self._digests, strict=True):
            # No early exit: the time taken does not tell which record matched.
            if hmac.compare_digest(digest, expected):
                found = record
        return found


def load_key_records(settings: SecuritySettings) -> list[ApiKeyRecord]:
    """Keys from the settings and the keys file (both may be used)."""
    records = list(settings.api_keys)
    if settings.api_keys_file is not None:
        path = settings.api_keys_file
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"`api_keys_file` must exist, got {str(path)!r}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"`api_keys_file` {str(path)!r} must be JSON: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ConfigError(
                f'`api_keys_file` {str(path)!r} must be an object {{"keys": [...]}}, '
                f"got {type(document).__name__}"
            )
        for i, item in enumerate(document["keys"]):
            try:
                records.append(ApiKeyRecord.model_validate(item))
            except ValidationError as exc:
                # Without the input values: a mistyped record may hold a raw key.
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                    for e in exc.errors(include_input=False)
                )
                raise ConfigError(f"`api_keys_file` {str(path)!r} keys[{i}]: {problems}") from None
    return records


# ------------------------------------------------------------------ customer tokens


class TokenVerifier:
    """Checks customer tokens: HS256 signature, ``exp`` not past, ``sub`` present.

    Parameters
    ----------
    secrets_ : sequence of str
        Accepted HMAC secrets, current first (the previous one during a rotation).
    audience : str, optional
        Required ``aud`` claim.
    leeway_seconds : int
        Clock skew tolerated on ``exp`` / ``nbf`` / ``iat``.
    max_ttl_seconds : int
        Tokens whose ``exp`` lies further ahead are refused (a stolen token expires soon).
    clock : callable returning epoch seconds
    """

    def __init__(
        self,
        secrets_: Sequence[str],
        audience: str | None = None,
        leeway_seconds: int = 30,
        max_ttl_seconds: int = 86_400,
        clock: Callable[[], float] = time.time,
    ):
        if not secrets_:
            raise ConfigError("customer tokens need `token_secret`, got none")
        self._secrets = tuple(secrets_)
        self.audience = audience
        self.leeway = leeway_seconds
        self.max_ttl = max_ttl_seconds
        self.clock = clock

    def customer_id(self, token: str) -> str:
        """The ``sub`` of a valid token; :class:`AuthError` (401) otherwise."""
        options = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}
        last: Exception | None = None
        for secret in self._secrets:
            try:
                claims = jwt.decode(
                    token,
                    secret,
                    algorithms=["HS256"],
                    audience=self.audience,
                    leeway=self.leeway,
                    options=options,
                )
                break
            except jwt.InvalidSignatureError as exc:
                last = exc
                continue
            except jwt.ExpiredSignatureError:
                raise _token_error("the customer token has expired; get a new one") from None
            except jwt.PyJWTError as exc:
                raise _token_error(f"the customer token is invalid: {_jwt_reason(exc)}") from None
        else:
            raise _token_error(f"the customer token is invalid: {_jwt_reason(last)}")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _token_error("the customer token's `sub` must be the customer id (a string)")
        if float(claims["exp"]) - self.clock() > self.max_ttl + self.leeway:
            raise _token_error(
                f"the customer token must expire within {self.max_ttl} s of now; issue "
                "short-lived tokens"
            )
        return sub


def _jwt_reason(exc: Exception | None) -> str:
    # PyJWT messages never contain the token; keep them short and generic.
    return type(exc).__name__ if exc is not None else "unknown"


def _token_error(message: str) -> AuthError:
    return AuthError(
        401, "X-Customer-Token", "a customer token signed by your server, not expired", message
    )


# ----------------------------------------------------------------------- policy


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


#: First match wins; anything not listed needs a secret key.
DEFAULT_RULES: tuple[RouteRule, ...] = (
    RouteRule("POST", "/v1/decisions", KeyScope.publishable),
    RouteRule("*", "/admin/", KeyScope.admin, prefix=True),
    RouteRule("*", "/admin", KeyScope.admin),
)

#: Routes a publishable key may call: each must name the customer its token is for.
CUSTOMER_FIELD = {("POST", "/v1/decisions"): "customer_id"}


def required_scope(method: str, path: str, rules: Sequence[RouteRule] = DEFAULT_RULES) -> KeyScope:
    for rule in rules:
        if rule.matches(method, path):
            return rule.minimum
    return KeyScope.secret


class Authenticator:
    """Turns request headers (and, for browser calls, the body) into a :class:`Principal`.

    Parameters
    ----------
    keys : KeyStore or None
        None = authentication disabled (development only): every call is allowed.
    tokens : TokenVerifier or None
        Needed when publishable keys exist.
    """

    def __init__(self, keys: KeyStore | None, tokens: TokenVerifier | None):
        self.keys = keys
        self.tokens = tokens

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def principal(self, method: str, path: str, headers: dict[str, str]) -> Principal:
        """Key check and scope check; a publishable call's token is checked here too."""
        if self.keys is None:
            return ANONYMOUS
        key = headers.get(KEY_HEADER)
        if not key:
            auth = headers.get("authorization", "")
            if auth[:7].lower() == "bearer " and auth[7:].startswith("rk_"):
                key = auth[7:].strip()
        if not key:
            raise AuthError(
                401, "X-API-Key", "an API key", "an API key is required (header X-API-Key)"
            )
        record = self.keys.authenticate(key)
        if record is None:
            raise AuthError(401, "X-API-Key", "a valid API key", "the API key is not valid")
        scope = KeyScope[record.scope]
        needed = required_scope(method, path)
        if scope < needed:
            raise AuthError(
                403,
                "X-API-Key",
                f"a key of scope {needed.name} or higher",
                f"a {scope.name} key may not call {method} {path}",
            )
        customer_id = None
        if scope == KeyScope.publishable:
            token = headers.get(TOKEN_HEADER)
            if not token:
                raise AuthError(
                    401,
                    "X-Customer-Token",
                    "a customer token signed by your server",
                    "a publishable key needs a customer token (header X-Customer-Token)",
                )
            if self.tokens is None:  # refused at start; kept as a guard
                raise AuthError(401, "X-Customer-Token", "a configured token secret", "no secret")
            customer_id = self.tokens.customer_id(token)
        return Principal(record.id, scope, customer_id, record.rate_per_second, record.burst)


def check_customer(
    principal: Principal, method: str, path: str, body: bytes, query: bytes = b""
) -> None:
    """A publishable call must ask for exactly the customer its token names (else 403).

    The body is parsed with the same JSON parser FastAPI uses, so what is checked here is
    what the route will read (a repeated key resolves to its last value in both). The
    decision trace (rules, scores) is for server-side keys only.
    """
    if principal.customer_id is None:
        return
    field = CUSTOMER_FIELD.get((method, path))
    if field is None:
        raise AuthError(403, "X-API-Key", "a secret key", f"a publishable key may not call {path}")
    if any(
        name == "trace" and value.lower() not in ("false", "0", "")
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    ):
        raise AuthError(
            403,
            "trace",
            "false (a publishable key gets no trace)",
            "the decision trace needs a secret key",
        )
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise AuthError(
            400, "body", "a valid JSON document", "request body must be valid JSON"
        ) from None
    requested = document.get(field) if isinstance(document, dict) else None
    if not isinstance(requested, str) or not hmac.compare_digest(
        requested.encode("utf-8", "surrogateescape"),
        principal.customer_id.encode("utf-8", "surrogateescape"),
    ):
        raise AuthError(
            403,
            field,
            "the customer id the customer token was issued for",
            f"`{field}` must be the customer of the customer token",
        )


# ------------------------------------------------------------------- middleware


def error_response_parts(
    status: int, field: str, expected: str, message: str
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, JSON body (the service's error shape) and headers of a refused call."""
    body = json.dumps(
        {
            "detail": message,
            "errors": [
                {"field": field, "expected": expected, "received": None, "message": message}
            ],
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'ApiKey realm="recsys"'))
    return status, body, headers


async def send_error(
    send: Send,
    status: int,
    field: str,
    expected: str,
    message: str,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    status, body, headers = error_response_parts(status, field, expected, message)
    await send(
        {"type": "http.response.start", "status": status, "headers": [*headers, *extra_headers]}
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole request body, and the messages to replay it downstream."""
    chunks: list[bytes] = []
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks), messages


def replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def _receive() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return _receive


RateCheck = Callable[[Principal, Scope], Awaitable[float | None]]


class SecurityMiddleware:
    """ASGI middleware: authenticate, authorise, rate-limit, then call the app.

    The principal is stored in ``scope["state"]["principal"]`` (``request.state.principal``).
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
        if path in PUBLIC_PATHS or method == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            principal = self.authenticator.principal(method, path, headers)
            if principal.customer_id is not None:
                body, messages = await read_body(receive)
                check_customer(principal, method, path, body, scope.get("query_string", b""))
                receive = replay(messages, receive)
        except AuthError as exc:
            await send_error(send, exc.status, exc.field, exc.expected, exc.message)
            return
        scope.setdefault("state", {})["principal"] = principal
        if self.rate_check is not None:
            retry_after = await self.rate_check(principal, scope)
            if retry_after is not None:
                seconds = max(1, int(retry_after + 0.999))
                await send_error(
                    send,
                    429,
                    "X-API-Key",
                    "fewer requests per second for this key",
                    f"rate limit of key {principal.key_id!r} exceeded; retry in {seconds} s",
                    [(b"retry-after", str(seconds).encode())],
                )
                return
        await self.app(scope, receive, send)


def build_authenticator(security: SecuritySettings, core: Settings) -> Authenticator:
    """Keys and token verifier from the settings, refusing unsafe production setups.

    Raises
    ------
    ConfigError
        Production without keys; publishable keys without a token secret; a token secret
        shorter than 32 bytes in production.
    """
    records = load_key_records(security)
    production = core.environment == "production"
    if not records:
        if production:
            raise ConfigError(
                "`api_keys` must name at least one key in production (RECSYS_SERVING_API_KEYS "
                "or RECSYS_SERVING_API_KEYS_FILE), got none; the service does not run open"
            )
        logger.warning(
            "no API keys configured: authentication is OFF (environment %s); "
            "never run like this in production",
            core.environment,
        )
        return Authenticator(None, None)
    keys = KeyStore(records)
    tokens = None
    secrets_ = [
        s.get_secret_value()
        for s in (security.token_secret, security.token_secret_previous)
        if s is not None
    ]
    if secrets_:
        short = [s for s in secrets_ if len(s.encode()) < MIN_TOKEN_SECRET_BYTES]
        if short and production:
            raise ConfigError(
                f"`token_secret` must be at least {MIN_TOKEN_SECRET_BYTES} bytes in production, "
                f"got {len(short[0].encode())}"
            )
        tokens = TokenVerifier(
            secrets_,
            audience=security.token_audience,
            leeway_seconds=security.token_leeway_seconds,
            max_ttl_seconds=security.token_max_ttl_seconds,
        )
    elif "publishable" in keys.scopes():
        raise ConfigError(
            "publishable keys need `token_secret` (RECSYS_SERVING_TOKEN_SECRET) to check "
            "customer tokens, got none"
        )
    logger.info("authentication on: %d keys (%s)", len(keys), ", ".join(sorted(keys.scopes())))
    return Authenticator(keys, tokens)


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
    app: FastAPI,
    security: SecuritySettings,
    core: Settings,
    rate_check: RateCheck | None = None,
) -> Authenticator:
    """Add key/token checks (and the rate limit) to ``app``; call before other layers.

    Install order (the last added runs first): ``install_security``, then
    ``serving.limits.install_limits``, then :func:`install_cors`, then
    ``serving.observability.install_observability``.
    """
    authenticator = build_authenticator(security, core)
    app.add_middleware(SecurityMiddleware, authenticator=authenticator, rate_check=rate_check)
    app.state.authenticator = authenticator
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
