"""Log lines without secrets or personal data, with the request id of their request.

- :class:`JsonLogFormatter`: one JSON object per line (``ts``, ``level``, ``logger``, ``msg``,
  ``request_id`` and extra fields); :class:`RedactingFormatter`: the same as text. Anything
  shaped like an API key or a JWT is masked in every line, whoever logged it.
- :class:`AccessLog`: one access line per request, written in batches off the request path.
- :class:`CustomerHasher`: a keyed hash of customer ids (never the id in a log line).
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import itertools
import logging
import os
import re
import secrets
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any

import orjson

from recsys.settings import ObservabilitySettings

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("serving.access")

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "recsys_request_id", default=None
)
#: Shapes of secrets that must never reach a log line, whoever logs them.
_SECRET_PATTERNS = (
    re.compile(r"rk_(?:pub|sec|adm)_[A-Za-z0-9_-]{8,}"),
    re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"),
)


def redact(text: str) -> str:
    """``text`` with API keys and JWTs masked."""
    # Every secret shape starts with one of these: most lines skip the regular expressions.
    if "rk_" not in text and "eyJ" not in text:
        return text
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[redacted]", text)
    return text


class _RequestIds:
    """Request ids: a random 64-bit prefix per process and a counter, as 32 hex digits.

    Unique across processes and restarts (the prefix) without a system call per request,
    which ``uuid4`` makes. Ids only correlate log lines; they are not secrets.
    """

    def __init__(self) -> None:
        self.reset()
        # A forked child draws its own prefix (uvicorn spawns, other servers may fork).
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


new_request_id = _RequestIds()


class CustomerHasher:
    """Keyed hash of customer ids for logs: stable per key, not reversible without it."""

    def __init__(self, key: bytes | None = None):
        self._key = key or secrets.token_bytes(32)

    def __call__(self, customer_id: str) -> str:
        return hmac.new(
            self._key, customer_id.encode("utf-8", "surrogateescape"), hashlib.sha256
        ).hexdigest()[:16]


_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime"}
)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; secrets masked; the request id of the current request."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        request_id = record.__dict__.get("request_id") or request_id_var.get()
        if request_id:
            entry["request_id"] = redact(str(request_id))
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key != "request_id" and not key.startswith("_"):
                entry[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


class RedactingFormatter(logging.Formatter):
    """Plain text lines (development), secrets masked, request id appended."""

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        request_id = record.__dict__.get("request_id") or request_id_var.get()
        return f"{line} [request_id={redact(str(request_id))}]" if request_id else line


class StartupFailureFilter(logging.Filter):
    """Drops the traceback uvicorn logs when the app's start fails: the app has logged one
    line saying why ("the decision service cannot start: ..."), which is what an operator
    needs; the traceback of a configuration error is noise (and may quote settings)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "uvicorn.error":
            return True
        message = record.getMessage()
        return not (
            message.startswith("Traceback (most recent call last)")
            or message.startswith("Exception in 'lifespan' protocol")
        )


def configure_logging(settings: ObservabilitySettings, environment: str = "development") -> None:
    """Root logging for a service process (call at the entry point only)."""
    fmt = settings.log_format
    if fmt == "auto":
        fmt = "json" if environment == "production" else "text"
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonLogFormatter()
        if fmt == "json"
        else RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "recsys", "serving", "features"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True


class AccessLog:
    """One access line per request, written in batches by a thread, off the request path.

    A request only appends a tuple; every ``flush_s`` a thread turns the queued lines into
    log records (the time, request id and fields of the request, not of the write) and
    hands them to the ``serving.access`` logger, so handlers, formats and levels apply as
    usual. Made one by one in a busy worker, with the decision work in between, a record
    cost ~55 us of event-loop CPU; in a batch it costs a fraction of that. Lines at
    WARNING (5xx) are written at once. :meth:`close` writes what is queued; a crash loses
    at most ``flush_s`` of access lines, never a decision or an event.

    Parameters
    ----------
    flush_s : float
        Seconds between writes; 0 writes every line at once (no thread).
    max_queued : int
        Lines kept while the writer is behind; past that, the oldest is dropped and the
        drop is counted and reported on the next write.
    """

    def __init__(self, flush_s: float = 0.2, max_queued: int = 100_000):
        if flush_s < 0:
            raise ValueError(f"`flush_s` must be >= 0, got {flush_s}")
        self.flush_s = flush_s
        self._queued: deque[tuple] = deque(maxlen=max_queued)
        self._dropped = 0
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, level: int, created: float, args: tuple, extra: dict[str, Any]) -> None:
        """Queue (or, at WARNING and above or without batching, write) one access line."""
        if not access_logger.isEnabledFor(level):
            return
        if level >= logging.WARNING or not self.flush_s:
            _write_access_line(level, created, args, extra)
            return
        if len(self._queued) == self._queued.maxlen:
            self._dropped += 1  # the deque drops the oldest line
        self._queued.append((level, created, args, extra))
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._flush_lock:
            if self._thread is not None or self._stop.is_set():
                return  # started meanwhile, or closing (close writes the queue)
            self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()

    def flush(self) -> None:
        """Write every queued line now, in the order the requests finished."""
        with self._flush_lock:
            dropped, self._dropped = self._dropped, 0
            if dropped:
                logger.warning("access log: %d lines dropped (the writer fell behind)", dropped)
            while True:
                try:
                    line = self._queued.popleft()
                except IndexError:
                    return
                _write_access_line(*line)

    def close(self) -> None:
        """Stop the thread and write what is queued (a later line starts a new thread)."""
        with self._flush_lock:
            self._stop.set()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        self.flush()
        self._stop.clear()


def _write_access_line(level: int, created: float, args: tuple, extra: dict[str, Any]) -> None:
    # The record is made here, not by ``Logger.log``: that walks the stack for the caller's
    # file and line, which an access line does not need.
    record = access_logger.makeRecord(
        access_logger.name, level, __file__, 0, "%s %s %d %.1fms", args, None, "access", extra
    )
    record.created = created
    record.msecs = (created - int(created)) * 1000
    access_logger.handle(record)
