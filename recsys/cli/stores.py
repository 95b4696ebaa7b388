"""The project's stores as commands read them: a store that does not exist is an error.

Commands that only read a store (``models list``, ``features get``, ``score``, ...) must not
create an empty one where they looked (an empty ``mlflow.db`` in the current folder, a new
online store answering cold starts): they say where they looked and how to point them at
the right place, and the command exits non-zero. Relative store paths in the settings are
relative to the project root (``recsys.settings``), not to the current folder.
"""

from __future__ import annotations

from pathlib import Path

from recsys.errors import FieldError, NotFoundError
from recsys.settings import Settings, sqlite_path_of

WHERE = "(settings are read relative to the project root {root}; set RECSYS_PROJECT_ROOT)"


def _missing(what: str, path: Path, settings: Settings, fix: str) -> NotFoundError:
    return NotFoundError(f"no {what} at {path}: {fix} {WHERE.format(root=settings.project_root)}")


def existing_warehouse(settings: Settings, db: Path | None = None) -> Path:
    """The warehouse file ``db`` (default: ``settings.warehouse_path``); it must exist."""
    path = Path(db) if db is not None else settings.warehouse_path
    if not path.exists():
        raise _missing(
            "warehouse", path, settings, f"load data with `recsys data load DIR --db {path}`, "
            "or name it with --db / RECSYS_WAREHOUSE_PATH"
        )  # fmt: skip
    return path


def check_online_store(settings: Settings) -> None:
    """A SQLite online store must exist (Redis is a server: its errors speak for it)."""
    if settings.online_store != "sqlite":
        return
    path = settings.online_sqlite_path
    if not path.exists():
        raise _missing(
            "online feature store", path, settings, "run `recsys features materialize`, "
            "or name it with RECSYS_ONLINE_SQLITE_PATH"
        )  # fmt: skip


def check_tracking_store(settings: Settings) -> None:
    """A SQLite MLflow tracking database must exist (a server's errors speak for it)."""
    path = sqlite_path_of(settings.mlflow_tracking_uri)
    if path is not None and not path.exists():
        raise _missing(
            "MLflow tracking database", path, settings, "train a model with `recsys train`, "
            "or name the tracking store with MLFLOW_TRACKING_URI, RECSYS_MLFLOW_TRACKING_URI "
            "or --tracking-uri"
        )  # fmt: skip


def check_event_log(settings: Settings) -> None:
    """A SQLite event log must exist."""
    path = sqlite_path_of(settings.event_log_url)
    if path is not None and not path.exists():
        raise _missing(
            "event log", path, settings, "serve or score decisions first, "
            "or name it with RECSYS_EVENT_LOG_URL"
        )  # fmt: skip


def writable_out(path: Path, option: str = "--out") -> Path:
    """``path`` with its folder created; a place that cannot be written is a one-line
    error naming ``option`` (before any work is done)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with path.open("ab"):
            pass
        if not existed:
            path.unlink()
    except OSError as exc:
        raise FieldError(
            option,
            "a writable file",
            str(path),
            f"`{option}` must be a writable file, got {path} ({exc.strerror or exc})",
        ) from None
    return path
