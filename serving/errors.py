"""HTTP status mapping, in one place: every client mistake is a 4xx naming the field.

Body: ``{"detail": "...", "errors": [{"field", "expected", "received", "message"}]}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from recsys.errors import ConfigError, ContractError, DataError, NotFoundError, SpecMismatchError

logger = logging.getLogger(__name__)

MAX_RECEIVED_CHARS = 200


class ApiError(Exception):
    """A client error with the field, what was expected and what came."""

    def __init__(self, status: int, field: str, expected: str, received: Any, message: str):
        super().__init__(message)
        self.status = status
        self.field = field
        self.expected = expected
        self.received = received
        self.message = message


def _received(value: Any) -> Any:
    """The received value, made JSON-safe and short (never echo a megabyte back)."""
    if value is None or isinstance(value, bool | int | str):
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
        received = _received(err.get("input")) if kind != "missing" else None
        if kind == "json_invalid":
            message = f"request body must be valid JSON: {ctx.get('error', err.get('msg', ''))}"
        elif kind == "missing":
            message = f"`{field}` is required"
        elif kind == "extra_forbidden":
            message = f"`{field}` is not a field of this request (see the schema at /docs)"
        else:
            message = f"`{field}` must be {expected}, got {received!r}"
        items.append(
            {"field": field, "expected": expected, "received": received, "message": message}
        )
    return items


def _expected(err: dict[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    describe = _EXPECTED.get(err.get("type", ""))
    return describe(ctx) if describe is not None else str(err.get("msg", ""))


def error_body(detail: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"detail": detail, "errors": items}


def install_error_handlers(app: FastAPI) -> None:
    """Map validation errors, ApiError and domain exceptions to 4xx/503 JSON bodies."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        items = validation_items(errors)
        malformed = any(e.get("type") == "json_invalid" for e in errors)
        status = 400 if malformed else 422
        detail = items[0]["message"] if len(items) == 1 else f"{len(items)} invalid fields"
        return JSONResponse(error_body(detail, items), status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        item = {
            "field": exc.field,
            "expected": exc.expected,
            "received": _received(exc.received),
            "message": exc.message,
        }
        return JSONResponse(error_body(exc.message, [item]), status_code=exc.status)

    @app.exception_handler(NotFoundError)
    async def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        item = {
            "field": "",
            "expected": "an existing resource",
            "received": None,
            "message": str(exc),
        }
        return JSONResponse(error_body(str(exc), [item]), status_code=404)

    @app.exception_handler(SpecMismatchError)
    async def _spec(request: Request, exc: SpecMismatchError) -> JSONResponse:
        logger.error("feature spec mismatch: %s", exc)
        return JSONResponse(error_body(str(exc), []), status_code=503)

    for domain_error in (ConfigError, ContractError):

        @app.exception_handler(domain_error)
        async def _domain(request: Request, exc: Exception) -> JSONResponse:
            item = {"field": "", "expected": "", "received": None, "message": str(exc)}
            return JSONResponse(error_body(str(exc), [item]), status_code=422)

    @app.exception_handler(DataError)
    async def _data(request: Request, exc: DataError) -> JSONResponse:
        # A model or feature pipeline that returns the wrong shape is the service's fault.
        logger.error("decision failed: %s", exc)
        return JSONResponse(error_body("the service cannot decide right now", []), status_code=503)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        item = {"field": "", "expected": "", "received": None, "message": str(exc.detail)}
        return JSONResponse(
            error_body(str(exc.detail), [item]),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )
