"""Who is calling: API keys (hashed, with scopes) and signed customer tokens.

Three key scopes, each including the ones before it:

- ``publishable``: from a browser, and only with a customer token (``X-Customer-Token``):
  ``POST /v1/decisions`` for the token's ``sub`` and ``POST /v1/events`` (impressions,
  clicks, dismissals) about that customer's decisions;
- ``secret``: every ``/v1`` endpoint for any customer (batch, events, catalogue);
- ``admin``: also ``/admin`` (model reload, alias to follow).

Keys are random strings (``rk_pub_...``, ``rk_sec_...``, ``rk_adm_...``, 256 bits); only
their SHA-256 hashes are configured (``security.api_keys`` or ``security.api_keys_file``),
compared in constant time. Customer tokens are JWTs (HS256) with ``sub`` = customer id and
``exp``, issued by the site's server with the shared ``security.token_secret`` (see
docs/operations.md). Where these are checked on a request: :mod:`serving.security`.

The example page (``/demo``, ``security.demo_enabled``, refused in production) needs what
a site's server would give it: :class:`DemoIssuer` mints tokens for any customer and holds
a publishable key derived from the token secret (the same in every worker process).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

import jwt
from jwt.types import Options
from pydantic import ValidationError

from recsys.errors import AuthenticationError, ConfigError, PermissionDeniedError
from recsys.settings import ApiKeyRecord, SecuritySettings, Settings, hash_key

logger = logging.getLogger(__name__)

KEY_HEADER = "x-api-key"
TOKEN_HEADER = "x-customer-token"
KEY_PREFIXES = {"publishable": "rk_pub_", "secret": "rk_sec_", "admin": "rk_adm_"}
MIN_TOKEN_SECRET_BYTES = 32

__all__ = ["ApiKeyRecord", "hash_key"]


class KeyScope(IntEnum):
    """Key scopes, ordered: a scope may do everything the lower ones may."""

    publishable = 1
    secret = 2
    admin = 3


ScopeName = Literal["publishable", "secret", "admin"]


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
        """The ``sub`` of a valid token; :class:`AuthenticationError` (401) otherwise."""
        options: Options = {"require": ["exp", "sub"], "verify_aud": self.audience is not None}
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


def _token_error(message: str) -> AuthenticationError:
    return AuthenticationError(
        "X-Customer-Token", "a customer token signed by your server, not expired", None, message
    )


class Authenticator:
    """Turns request headers into a :class:`Principal`, and customer tokens into customer ids.

    Parameters
    ----------
    keys : KeyStore or None
        None = authentication disabled (development only): every call is allowed.
    tokens : TokenVerifier or None
        Needed when publishable keys exist.
    """

    def __init__(
        self,
        keys: KeyStore | None,
        tokens: TokenVerifier | None,
        *,
        open_without_key: bool = False,
        demo: DemoIssuer | None = None,
    ):
        self.keys = keys
        self.tokens = tokens
        #: development with only the demo's key: calls without a key stay open (as without
        #: keys), calls with a key are checked like in production
        self.open_without_key = open_without_key
        self.demo = demo

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def principal(self, headers: Mapping[str, str], needed: KeyScope, action: str) -> Principal:
        """The caller of ``action`` (e.g. ``POST /v1/events``), whose key has scope ``needed``.

        Raises
        ------
        AuthenticationError
            No key, or an unknown one (401).
        PermissionDeniedError
            The key's scope is below ``needed`` (403).
        """
        if self.keys is None:
            return ANONYMOUS
        key = headers.get(KEY_HEADER)
        if not key:
            auth = headers.get("authorization", "")
            if auth[:7].lower() == "bearer " and auth[7:].startswith("rk_"):
                key = auth[7:].strip()
        if not key and self.open_without_key:
            return ANONYMOUS
        if not key:
            raise AuthenticationError(
                "X-API-Key", "an API key", None, "an API key is required (header X-API-Key)"
            )
        record = self.keys.authenticate(key)
        if record is None:
            raise AuthenticationError(
                "X-API-Key", "a valid API key", None, "the API key is not valid"
            )
        scope = KeyScope[record.scope]
        if scope < needed:
            raise PermissionDeniedError(
                "X-API-Key",
                f"a key of scope {needed.name} or higher",
                None,
                f"a {scope.name} key may not call {action}",
            )
        return Principal(record.id, scope, None, record.rate_per_second, record.burst)

    def customer_id(self, token: str | None) -> str:
        """The customer a publishable call's token vouches for (401 without a valid one)."""
        if not token:
            raise AuthenticationError(
                "X-Customer-Token",
                "a customer token signed by your server",
                None,
                "a publishable key needs a customer token (header X-Customer-Token)",
            )
        if self.tokens is None:  # refused at start; kept as a guard
            raise AuthenticationError(
                "X-Customer-Token", "a configured token secret", None, "no secret"
            )
        return self.tokens.customer_id(token)


def build_authenticator(settings: Settings) -> Authenticator:
    """Keys and token verifier from the settings, refusing unsafe production setups.

    Raises
    ------
    ConfigError
        Production without keys; publishable keys without a token secret; a token secret
        shorter than 32 bytes in production.
    """
    security = settings.security
    records = load_key_records(security)
    production = settings.environment == "production"
    if security.demo_enabled:
        return _demo_authenticator(settings, records)
    if not records:
        if production:
            raise ConfigError(
                "`security.api_keys` must name at least one key in production "
                "(RECSYS_SECURITY__API_KEYS or RECSYS_SECURITY__API_KEYS_FILE), got none; "
                "the service does not run open"
            )
        logger.warning(
            "no API keys configured: authentication is OFF (environment %s); "
            "never run like this in production",
            settings.environment,
        )
        return Authenticator(None, None)
    keys = KeyStore(records)
    tokens = _token_verifier(security)
    if tokens is not None:
        short = [s for s in _token_secrets(security) if len(s.encode()) < MIN_TOKEN_SECRET_BYTES]
        if short and production:
            raise ConfigError(
                f"`token_secret` must be at least {MIN_TOKEN_SECRET_BYTES} bytes in production, "
                f"got {len(short[0].encode())}"
            )
    elif "publishable" in keys.scopes():
        raise ConfigError(
            "publishable keys need `security.token_secret` (RECSYS_SECURITY__TOKEN_SECRET) to check "
            "customer tokens, got none"
        )
    logger.info("authentication on: %d keys (%s)", len(keys), ", ".join(sorted(keys.scopes())))
    return Authenticator(keys, tokens)


# ------------------------------------------------------------------------- demo


def mint_token(secret: str, customer_id: str, ttl_seconds: int, audience: str | None = None) -> str:
    """A customer token as a site's server issues it: HS256, ``sub`` and ``exp``."""
    claims: dict[str, object] = {"sub": customer_id, "exp": int(time.time()) + ttl_seconds}
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass(frozen=True)
class DemoIssuer:
    """The example page's stand-in for a site's server: a publishable key and tokens for
    any customer (development only: anyone who asks gets a token)."""

    publishable_key: str
    secret: str
    audience: str | None
    ttl_seconds: int = 900

    def token(self, customer_id: str) -> str:
        return mint_token(self.secret, customer_id, self.ttl_seconds, self.audience)


DEMO_KEY_ID = "demo-web"


def _token_secrets(security: SecuritySettings) -> list[str]:
    """The current token secret and the previous one (kept while tokens signed with it live)."""
    return [
        s.get_secret_value()
        for s in (security.token_secret, security.token_secret_previous)
        if s is not None and s.get_secret_value()  # an empty variable sets no secret
    ]


def _token_verifier(security: SecuritySettings) -> TokenVerifier | None:
    """The customer-token verifier of the settings, or None without a token secret."""
    secrets_ = _token_secrets(security)
    if not secrets_:
        return None
    return TokenVerifier(
        secrets_,
        audience=security.token_audience,
        leeway_seconds=security.token_leeway_seconds,
        max_ttl_seconds=security.token_max_ttl_seconds,
    )


def _demo_authenticator(settings: Settings, records: list[ApiKeyRecord]) -> Authenticator:
    security = settings.security
    if settings.environment == "production":
        raise ConfigError(
            "`security.demo_enabled` must be false in production, got true: the demo mints "
            "customer tokens for anyone who asks"
        )
    if security.token_secret is None:
        raise ConfigError(
            "`security.demo_enabled` needs `security.token_secret` "
            "(RECSYS_SECURITY__TOKEN_SECRET) to sign the demo's customer tokens, got none"
        )
    secret = security.token_secret.get_secret_value()
    # Derived, not random: every worker process has the same demo key.
    digest = hmac.new(secret.encode(), b"recsys demo publishable key", hashlib.sha256)
    key = KEY_PREFIXES["publishable"] + "demo_" + digest.hexdigest()[:40]
    demo = DemoIssuer(key, secret, security.token_audience)
    keys = KeyStore(
        [*records, ApiKeyRecord(id=DEMO_KEY_ID, scope="publishable", hash=hash_key(key))]
    )
    tokens = _token_verifier(security)
    logger.warning(
        "the demo is ON (security.demo_enabled): /demo mints customer tokens for anyone; %s",
        "other calls need no key (no keys configured)" if not records else "keys are checked",
    )
    return Authenticator(keys, tokens, open_without_key=not records, demo=demo)
