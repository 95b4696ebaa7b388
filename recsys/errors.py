"""Domain exceptions, in one place. HTTP status mapping lives in serving."""

from __future__ import annotations


class RecsysError(Exception):
    """Base class of every error recsys raises on purpose."""


class ConfigError(RecsysError, ValueError):
    """A setting or config key has a value recsys cannot use."""


class ContractError(RecsysError, ValueError):
    """Input data breaks the data contract; carries the problems found."""

    def __init__(self, message: str, problems: list | None = None, total: int | None = None):
        super().__init__(message)
        self.problems = problems or []
        self.total = total if total is not None else len(self.problems)


class NotFoundError(RecsysError, LookupError):
    """A named thing (offer, touchpoint, model, customer table) does not exist."""


class SpecMismatchError(RecsysError):
    """A feature vector or model was built for another feature-spec version."""


class DataError(RecsysError, ValueError):
    """There is not enough (or not the right) data to do what was asked."""
