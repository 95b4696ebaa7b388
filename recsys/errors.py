"""Domain exceptions, in one place. HTTP status mapping lives in serving (``serving.errors``).

An error a caller can fix names the field, what was expected and what came
(:class:`FieldError`); the HTTP layer turns it into one item of its error body.
"""

from __future__ import annotations

from typing import Any


class RecsysError(Exception):
    """Base class of every error recsys raises on purpose."""


class FieldError(RecsysError):
    """An error about one named input: ``field``, what was ``expected`` and what was ``received``.

    ``message`` defaults to "`field` must be expected, got received".
    """

    def __init__(
        self, field: str, expected: str, received: Any = None, message: str | None = None
    ) -> None:
        self.field = field
        self.expected = expected
        self.received = received
        self.message = message or f"`{field}` must be {expected}, got {received!r}"
        super().__init__(self.message)


class ConfigError(RecsysError, ValueError):
    """A setting or config key has a value recsys cannot use."""


class ContractError(RecsysError, ValueError):
    """Input data breaks the data contract; carries the problems found."""

    def __init__(self, message: str, problems: list | None = None, total: int | None = None):
        super().__init__(message)
        self.problems = problems or []
        self.total = total if total is not None else len(self.problems)


class InvalidRequestError(FieldError, ValueError):
    """A request is well-formed but a value is out of what the service takes."""


class NotFoundError(RecsysError, LookupError):
    """A named thing (offer, touchpoint, model, customer table) does not exist."""


class UnknownNameError(FieldError, NotFoundError):
    """A request names something (a touchpoint, ...) that does not exist."""


class AuthenticationError(FieldError):
    """The caller did not prove who it is (no key, unknown key, bad customer token)."""


class PermissionDeniedError(FieldError):
    """The caller is known but may not do this (scope too low, another customer)."""


class RateLimitedError(FieldError):
    """The caller sent more requests than its rate allows; retry after ``retry_after`` s."""

    def __init__(self, field: str, expected: str, message: str, retry_after: float) -> None:
        super().__init__(field, expected, None, message)
        self.retry_after = retry_after


class PayloadTooLargeError(FieldError):
    """A request body is larger than the service reads."""


class RequestTimeoutError(FieldError):
    """A request body did not arrive in time."""


class UnavailableError(RecsysError):
    """The service (or a backend it needs) cannot answer now; retry after ``retry_after`` s."""

    def __init__(self, message: str, *, expected: str = "", retry_after: float | None = 1.0):
        super().__init__(message)
        self.message = message
        self.expected = expected
        self.retry_after = retry_after


class NotReadyError(UnavailableError):
    """The service has not finished starting, or runs without a part the call needs."""

    def __init__(self, message: str, *, expected: str = "a started service"):
        super().__init__(message, expected=expected, retry_after=None)


class ModelUnavailable(UnavailableError):
    """The model failed to score (the request is served by the fallback)."""


class FeaturesUnavailable(UnavailableError):
    """The online feature store failed (the request is served as a cold start)."""


class ModelRefused(RecsysError):
    """A candidate model cannot be served; the previous model stays."""


class SpecMismatchError(RecsysError):
    """A feature vector or model was built for another feature-spec version."""


class DataError(RecsysError, ValueError):
    """There is not enough (or not the right) data to do what was asked."""


class EventLogUnavailable(UnavailableError):
    """The event log cannot store or read now; ``kind`` says why (:data:`EVENT_LOG_FAULTS`).

    Served as 503 with ``Retry-After``; ``/readyz`` is 503 while it lasts. The log heals
    itself where it can (drops its connections, creates missing tables again).
    """

    def __init__(self, kind: str, message: str, retry_after: float = 1.0):
        if kind not in EVENT_LOG_FAULTS:
            raise ValueError(f"`kind` must be one of {EVENT_LOG_FAULTS}, got {kind!r}")
        super().__init__(
            f"the event log is {EVENT_LOG_FAULTS[kind]} ({message}); retry later",
            expected="a writable event log",
            retry_after=retry_after,
        )
        self.kind = kind


#: Kinds of event-log fault -> what the client is told the log is.
EVENT_LOG_FAULTS: dict[str, str] = {
    "unavailable": "unavailable",
    "read_only": "read-only",
    "schema_missing": "missing its tables (being created again)",
    "constraint": "refusing a write (constraint violated)",
}
