"""HTTP status mapping and the error body, in one place: every client mistake is a 4xx
naming the field.

Body: ``{"detail": "...", "errors": [{"field", "expected", "received", "message"}]}``, built by
:func:`error_body` only. Exceptions come from :mod:`recsys.errors`; :data:`STATUS` maps their
classes to statuses, :func:`error_response` turns one into a response (the exception handlers
and the ASGI layers that refuse a request before the app use the same function).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.errors import (
    AuthenticationError,
    ConfigError,
    ContractError,
    DataError,
    FieldError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    RecsysError,
    RequestTimeoutError,
    SpecMismatchError,
    UnavailableError,
    UnknownNameError,
)

logger = logging.getLogger(__name__)

MAX_RECEIVED_CHARS = 200


def _encodable(text: str) -> str:
    """``text`` as valid UTF-8: a lone surrogate (legal in JSON ``\\ud800``, not in UTF-8)
    is shown escaped instead of failing the response."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _received(value: Any) -> Any:
    """The received value, made JSON-safe and short (never echo a megabyte back); a raw
    body as the text it is, not as Python's ``b'...'``."""
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", errors="replace")
    if value is None or isinstance(value, bool | int | str):
        if isinstance(value, str):
            value = _encodable(value)
        if isinstance(value, str) and len(value) > MAX_RECEIVED_CHARS:
            return value[:MAX_RECEIVED_CHARS] + "..."
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
            return str(value)
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    text = repr(value)
    return text if len(text) <= MAX_RECEIVED_CHARS else text[:MAX_RECEIVED_CHARS] + "..."


_EXPECTED = {
    "missing": lambda ctx: "a value (the field is required)",
    "extra_forbidden": lambda ctx: "only the fields of the schema at /docs",
    "string_type": lambda ctx: "a string",
    "int_type": lambda ctx: "an integer",
    "bool_type": lambda ctx: "a boolean",
    "float_type": lambda ctx: "a number",
    "finite_number": lambda ctx: "a finite number",
    "dict_type": lambda ctx: "a JSON object",
    "list_type": lambda ctx: "a JSON array",
    "model_type": lambda ctx: "a JSON object",
    "model_attributes_type": lambda ctx: "a JSON object",
    "greater_than_equal": lambda ctx: f">= {ctx.get('ge')}",
    "greater_than": lambda ctx: f"> {ctx.get('gt')}",
    "less_than_equal": lambda ctx: f"<= {ctx.get('le')}",
    "less_than": lambda ctx: f"< {ctx.get('lt')}",
    "string_too_short": lambda ctx: f"at least {ctx.get('min_length')} characters",
    "string_too_long": lambda ctx: f"at most {ctx.get('max_length')} characters",
    "too_short": lambda ctx: f"at least {ctx.get('min_length')} items",
    "too_long": lambda ctx: f"at most {ctx.get('max_length')} items",
    "enum": lambda ctx: f"one of {ctx.get('expected')}",
    "literal_error": lambda ctx: f"one of {ctx.get('expected')}",
    "timezone_aware": lambda ctx: "an ISO 8601 timestamp with a timezone (e.g. ...Z or +02:00)",
    "datetime_type": lambda ctx: "an ISO 8601 timestamp with a timezone",
    "datetime_parsing": lambda ctx: "an ISO 8601 timestamp with a timezone",
    "datetime_from_date_parsing": lambda ctx: "an ISO 8601 timestamp with a timezone",
    "json_invalid": lambda ctx: "a valid JSON document",
    "string_pattern_mismatch": lambda ctx: "printable text (no control characters)",
    "string_unicode": lambda ctx: "valid Unicode text",
    # a model's own check (e.g. an experiment definition): its message says what is expected
    "value_error": lambda ctx: str(ctx.get("error", "a valid value")),
}


_UNION_BRANCHES = frozenset({"str", "int", "float", "bool", "none", "dict", "list"})


def _field(loc: tuple | list) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        where, parts = parts[0], parts[1:]
        if where != "body" and not parts:
            return where
    out = ""
    for p in parts:
        if p.isdigit():
            out += f"[{p}]"
        elif p in _UNION_BRANCHES or p.startswith("constrained-") or "[" in p:
            continue  # union branch names pydantic puts in the location
        else:
            out += ("." if out else "") + p
    return out or "body"


def validation_items(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One item per invalid field (pydantic reports a union value once per branch)."""
    by_field: dict[str, list[dict[str, Any]]] = {}
    for err in errors:
        field = "body" if err.get("type") == "json_invalid" else _field(err.get("loc", ()))
        by_field.setdefault(field, []).append(err)
    items = []
    for field, errs in by_field.items():
        # A broken constraint (">= 1") says more than "not a string" from another branch.
        constraint = [e for e in errs if not str(e.get("type", "")).endswith("_type")]
        err = (constraint or errs)[0]
        kind = err.get("type", "")
        ctx = err.get("ctx") or {}
        if constraint:
            expected = _expected(err)
        else:
            expected = " or ".join(dict.fromkeys(_expected(e) for e in errs))
        raw = err.get("input") if kind != "missing" else None
        received = _received(raw)
        if kind == "json_invalid":
            message = f"request body must be valid JSON: {ctx.get('error', err.get('msg', ''))}"
        elif kind == "missing":
            message = f"`{field}` is required"
        elif kind == "extra_forbidden":
            message = f"`{field}` is not a field of this request (see the schema at /docs)"
        else:
            message = f"`{field}` must be {expected}, got {received!r}"
        items.append(error_item(field, expected, raw, message))
    return items


_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:')


def malformed_json_item(err: dict[str, Any], document: Any) -> dict[str, Any]:
    """The error item of a body that is not JSON: where it breaks (line, column) and the
    field it breaks in or after (the last key before that point; ``body`` if none)."""
    loc = err.get("loc", ())
    reason = (err.get("ctx") or {}).get("error", err.get("msg", ""))
    text = document.decode("utf-8", "replace") if isinstance(document, bytes) else document
    if not isinstance(text, str) or len(loc) < 2 or not isinstance(loc[1], int):
        message = f"request body must be valid JSON: {reason}"
        return error_item("body", "a valid JSON document", None, message)
    pos = loc[1]
    line = text.count("\n", 0, pos) + 1
    column = pos - (text.rfind("\n", 0, pos) + 1) + 1
    keys = _KEY.findall(text, 0, pos)
    field = keys[-1] if keys else "body"
    where = f"line {line}, column {column}" + (f", in or after `{field}`" if keys else "")
    message = f"request body must be valid JSON: {reason} at {where}"
    snippet = text[max(0, pos - 30) : pos + 10]
    return error_item(field, "a valid JSON document", snippet, message)


def _expected(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    describe = _EXPECTED.get(err.get("type", ""))
    return describe(ctx) if describe is not None else str(err.get("msg", ""))


def error_item(field: str, expected: str, received: Any, message: str) -> dict[str, Any]:
    """One problem of an error body; ``received`` made JSON-safe and short."""
    return {
        "field": _encodable(field),
        "expected": _encodable(expected),
        "received": _received(received),
        "message": _encodable(message),
    }


def error_body(detail: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON body of every error response: a summary and one item per problem."""
    return {"detail": detail, "errors": items}


#: Status of each exception class (the first class of an exception's MRO found here wins).
STATUS: dict[type[Exception], int] = {
    InvalidRequestError: 422,
    UnknownNameError: 404,
    AuthenticationError: 401,
    PermissionDeniedError: 403,
    RateLimitedError: 429,
    PayloadTooLargeError: 413,
    RequestTimeoutError: 408,
    FieldError: 422,
    NotFoundError: 404,
    ConfigError: 422,
    ContractError: 422,
    UnavailableError: 503,
    SpecMismatchError: 503,
    DataError: 503,
}

BACKEND_UNAVAILABLE = "a backend of the service (event log) is unavailable; retry later"


def status_of(exc: BaseException) -> int:
    """The HTTP status of ``exc``: by :data:`STATUS`, backends down 503, anything else 500."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 503 if isinstance(exc, unavailable_types()) else 500


def error_response(exc: Exception) -> JSONResponse:
    """The response to ``exc``: its status, the error body and the headers the status needs.

    Also an ASGI app: the layers that refuse a request before the app runs (keys, limits)
    send it with ``await error_response(exc)(scope, receive, send)``.
    """
    status = status_of(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, FieldError):
        detail = exc.message
        items = [error_item(exc.field, exc.expected, exc.received, exc.message)]
        if isinstance(exc, AuthenticationError):
            headers["www-authenticate"] = 'ApiKey realm="recsys"'
        if isinstance(exc, RateLimitedError):
            headers["retry-after"] = str(max(1, int(exc.retry_after + 0.999)))
    elif isinstance(exc, UnavailableError):
        detail = exc.message
        items = [error_item("", exc.expected, None, exc.message)]
        if exc.retry_after is not None:
            headers["retry-after"] = str(max(1, int(exc.retry_after + 0.999)))
    elif isinstance(exc, NotFoundError):
        detail = str(exc)
        items = [error_item("", "an existing resource", None, detail)]
    elif isinstance(exc, SpecMismatchError):
        logger.error("feature spec mismatch: %s", exc)
        detail, items = str(exc), []
    elif isinstance(exc, DataError):
        # A model or feature pipeline that returns the wrong shape is the service's fault.
        logger.error("decision failed: %s", exc)
        detail, items = "the service cannot decide right now", []
    elif status == 503:  # a backend (event log, online store) is down, locked or full
        detail = BACKEND_UNAVAILABLE
        items = [error_item("", "", None, detail)]
        headers["retry-after"] = "1"
    else:
        detail = str(exc)
        items = [error_item("", "", None, detail)]
    return JSONResponse(error_body(detail, items), status_code=status, headers=headers or None)


INTERNAL_ERROR = "the service failed on this request; quote its x-request-id to the operator"


def internal_error_response() -> JSONResponse:
    """The 500 of a bug: the error shape, no details (they are in the log, by request id)."""
    return JSONResponse(
        error_body(INTERNAL_ERROR, [error_item("", "", None, INTERNAL_ERROR)]), status_code=500
    )


def unavailable_types() -> tuple[type[Exception], ...]:
    """Exceptions of backends that are down, locked or full (served as 503 + Retry-After)."""
    types: list[type[Exception]] = [sqlite3.OperationalError]
    try:
        import psycopg

        types.append(psycopg.OperationalError)
    except ImportError:  # psycopg is only needed for the PostgreSQL event log
        pass
    try:
        import redis

        types.extend([redis.exceptions.ConnectionError, redis.exceptions.TimeoutError])
    except ImportError:
        pass
    return tuple(types)


def install_error_handlers(app: FastAPI) -> None:
    """Map validation errors, recsys errors and backend faults to the error body."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        malformed = any(e.get("type") == "json_invalid" for e in errors)
        if malformed:
            items = [malformed_json_item(e, exc.body) for e in errors[:1]]
        else:
            items = validation_items(errors)
        status = 400 if malformed else 422
        detail = items[0]["message"] if len(items) == 1 else f"{len(items)} invalid fields"
        return JSONResponse(error_body(detail, items), status_code=status)

    async def _mapped(request: Request, exc: Exception) -> JSONResponse:
        if status_of(exc) == 503 and not isinstance(exc, RecsysError):
            logger.warning(
                "backend unavailable on %s %s: %s",
                request.method,
                request.url.path,
                type(exc).__name__,
            )
        return error_response(exc)

    for exc_type in (*STATUS, *unavailable_types()):
        app.add_exception_handler(exc_type, _mapped)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        return JSONResponse(
            error_body(message, [error_item("", "", None, message)]),
            status_code=exc.status_code,
            headers=exc.headers,
        )
