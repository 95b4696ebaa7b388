"""Limits that keep one client from hurting the others.

- request body size: 413, checked on ``Content-Length`` and on the bytes actually received
  (a chunked or lying client is cut off at the limit, never buffered whole);
- slow uploads: 408 when the body does not arrive within the request timeout;
- request timeout: 503 with ``Retry-After`` when the response is not ready in time (the
  work already started finishes in the background; a decision it logged still counts);
- rate limits (token buckets, per process): per secret/admin key; for publishable keys per
  customer token (or client address) plus a site-wide ceiling per key; 429 with ``Retry-After``;
- batch sizes (``max_batch_customers``, ``max_events``: 422) are checked by the routes.

All limits come from the settings' ``limits`` section (:class:`recsys.settings.LimitSettings`).
Refusals are sent with the service's one error body (:func:`serving.errors.error_response`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recsys.errors import PayloadTooLargeError, RecsysError, RequestTimeoutError, UnavailableError
from recsys.settings import LimitSettings
from serving.credentials import KeyScope, Principal
from serving.errors import error_response

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ rate limits


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class RateRefusal:
    """A refused call: which limit (for the 429 message) and when a token is back."""

    limit: str
    retry_after: float


@dataclass(frozen=True)
class _Limit:
    bucket: str
    rate: float
    burst: int
    label: str


class TokenBucketLimiter:
    """Token buckets: ``rate`` tokens per second, at most ``burst`` saved up.

    Secret and admin keys have one bucket per key. A publishable key is shared by every
    visitor's browser, so its calls are counted per customer token (per client address for
    calls without a token) and, separately, against a site-wide ceiling per key: one busy
    visitor is slowed down, the site as a whole is not (docs/serving.md has the numbers).

    Parameters
    ----------
    settings : LimitSettings
        Default rate and burst per scope; a key record may set its own (for a publishable
        key: its site-wide ceiling).
    clock : callable returning monotonic seconds
    max_buckets : int, optional
        Buckets kept (least recently used dropped); bounds memory for many visitors.
        Default ``settings.rate_buckets``.
    """

    def __init__(
        self,
        settings: LimitSettings,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int | None = None,
    ):
        self.settings = settings
        self.clock = clock
        self.max_buckets = max_buckets or settings.rate_buckets
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def _limits(self, principal: Principal, client: str) -> tuple[_Limit, ...]:
        s = self.settings
        key = principal.key_id
        if key == "anonymous":
            return (
                _Limit(
                    f"anonymous:{client}",
                    s.rate_anonymous_per_second,
                    s.rate_anonymous_burst,
                    "per client address",
                ),
            )
        if principal.scope == KeyScope.publishable:
            if principal.customer_id is not None:
                own = _Limit(
                    f"{key}:customer:{principal.customer_id}",
                    s.rate_publishable_per_second,
                    s.rate_publishable_burst,
                    "per customer token",
                )
            else:
                own = _Limit(
                    f"{key}:address:{client}",
                    s.rate_publishable_address_per_second,
                    s.rate_publishable_address_burst,
                    "per client address",
                )
            site = _Limit(
                f"{key}:site",
                principal.rate_per_second or s.rate_publishable_site_per_second,
                principal.burst or s.rate_publishable_site_burst,
                f"site-wide for key {key!r}",
            )
            return (own, site)
        rate, burst = {
            KeyScope.secret: (s.rate_secret_per_second, s.rate_secret_burst),
            KeyScope.admin: (s.rate_admin_per_second, s.rate_admin_burst),
        }[principal.scope]
        return (
            _Limit(
                key, principal.rate_per_second or rate, principal.burst or burst, f"of key {key!r}"
            ),
        )

    def acquire(self, principal: Principal, client: str = "") -> RateRefusal | None:
        """Take one token from each of the caller's buckets; None if allowed.

        A refusal names the limit that was hit; the buckets checked before it keep the
        token they gave (a refused caller still spends its own allowance).
        """
        now = self.clock()
        with self._lock:
            for limit in self._limits(principal, client):
                bucket = self._buckets.get(limit.bucket)
                if bucket is None:
                    bucket = _Bucket(float(limit.burst), now)
                    self._buckets[limit.bucket] = bucket
                    if len(self._buckets) > self.max_buckets:
                        self._buckets.popitem(last=False)
                else:
                    self._buckets.move_to_end(limit.bucket)
                    bucket.tokens = min(
                        float(limit.burst), bucket.tokens + (now - bucket.updated) * limit.rate
                    )
                    bucket.updated = now
                if bucket.tokens < 1.0:
                    return RateRefusal(limit.label, (1.0 - bucket.tokens) / limit.rate)
                bucket.tokens -= 1.0
        return None

    async def __call__(self, principal: Principal, scope: Scope) -> RateRefusal | None:
        client = scope.get("client") or ("", 0)
        return self.acquire(principal, str(client[0]))


# ------------------------------------------------------------ body and timeouts


class LimitsMiddleware:
    """Reads the body up to ``max_body_bytes`` (413 beyond), then runs the app with a deadline.

    The body is read before the app runs, so the app never sees a partial body and a slow
    upload cannot hold a worker thread. The app runs as its own task: when the deadline
    passes before the response has started, the client gets a 503 JSON at once and
    whatever the task sends later is dropped.
    """

    def __init__(self, app: ASGIApp, settings: LimitSettings):
        self.app = app
        self.max_body = settings.max_body_bytes
        self.timeout = settings.request_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await error_response(_too_large(self.max_body, declared))(scope, receive, send)
            return
        if scope["method"] in ("POST", "PUT", "PATCH") or declared:
            try:
                async with asyncio.timeout_at(deadline):
                    messages = await self._read(receive)
            except TimeoutError:
                refusal: RecsysError = RequestTimeoutError(
                    "body",
                    f"the whole body within {self.timeout:g} s",
                    None,
                    f"the request body did not arrive within {self.timeout:g} s",
                )
                await error_response(refusal)(scope, receive, send)
                return
            except PayloadTooLargeError as exc:
                await error_response(exc)(scope, receive, send)
                return
            pending = list(messages)

            async def receive_buffered() -> Message:
                if pending:
                    return pending.pop(0)
                return await receive()

            downstream_receive: Receive = receive_buffered
        else:
            downstream_receive = receive
        await self._run(scope, downstream_receive, send, deadline)

    async def _read(self, receive: Receive) -> list[Message]:
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                return messages
            size += len(message.get("body", b""))
            if size > self.max_body:
                raise _too_large(self.max_body, None)
            messages.append(message)
            if not message.get("more_body", False):
                # One message with the whole body: what the app reads in one go.
                if len(messages) > 1:
                    body = b"".join(m.get("body", b"") for m in messages)
                    messages = [{"type": "http.request", "body": body, "more_body": False}]
                return messages

    async def _run(self, scope: Scope, receive: Receive, send: Send, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        state = {"started": False, "abandoned": False}
        pending_error: list[asyncio.Task] = []

        async def guarded_send(message: Message) -> None:
            if state["abandoned"]:
                return  # the client already got the 503
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        def on_deadline() -> None:
            if state["started"]:
                return  # streaming already began: let it finish
            state["abandoned"] = True
            logger.warning(
                "request timed out after %.3g s: %s %s",
                self.timeout,
                scope["method"],
                scope["path"],
            )
            late = UnavailableError(
                f"the service did not answer within {self.timeout:g} s; retry later",
                expected=f"a response within {self.timeout:g} s",
            )
            pending_error.append(loop.create_task(error_response(late)(scope, receive, send)))

        # A timer, not a task per request: the app runs inline (cheap); when the deadline
        # passes first, the 503 goes out at once and the app's late response is dropped
        # (it still finishes, like a background task).
        timer = loop.call_at(deadline, on_deadline)
        try:
            await self.app(scope, receive, guarded_send)
        except Exception:
            if not state["abandoned"]:
                raise
            logger.warning(
                "a timed-out request failed later: %s %s", scope["method"], scope["path"]
            )
        finally:
            timer.cancel()
            if pending_error:
                await pending_error[0]


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int, declared: int | None) -> PayloadTooLargeError:
    got = f"{declared} bytes" if declared is not None else f"more than {limit} bytes"
    return PayloadTooLargeError(
        "body",
        f"at most {limit} bytes",
        None,
        f"request body must be at most {limit} bytes, got {got}",
    )


def install_limits(app: FastAPI, settings: LimitSettings) -> None:
    """Add the body-size and timeout layer (after ``install_security``, see there)."""
    app.add_middleware(LimitsMiddleware, settings=settings)
    app.state.limit_settings = settings


def rate_limiter(settings: LimitSettings) -> TokenBucketLimiter | None:
    """The per-key limiter to pass to ``install_security`` (None when disabled)."""
    return TokenBucketLimiter(settings) if settings.rate_limit_enabled else None


__all__ = [
    "LimitsMiddleware",
    "RateRefusal",
    "TokenBucketLimiter",
    "install_limits",
    "rate_limiter",
]
