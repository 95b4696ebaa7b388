"""``recsys serve`` (the HTTP decision service) and ``recsys export-events``."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

logger = logging.getLogger(__name__)


def register(app: typer.Typer) -> None:
    """Add the top-level ``serve`` and ``export-events`` commands to ``app``."""
    app.command("serve", epilog="Example: recsys serve --port 8000 --workers 2")(serve)
    app.command("export-events", epilog="Example: recsys export-events data/feedback")(
        export_events
    )


def export_events(
    out_dir: Path = typer.Argument(..., help="Folder for decisions.parquet and outcomes.parquet."),
    db: Path = typer.Option(None, help="Warehouse (for the known customer ids); default settings."),
) -> None:
    """Write the event log as contract files; then `recsys data load OUT_DIR` (closed loop)."""
    import duckdb

    from recsys.cli.stores import check_event_log
    from recsys.eventlog import export_contract, open_event_log
    from recsys.settings import load_settings

    settings = load_settings()
    check_event_log(settings)
    warehouse_path = db or settings.warehouse_path
    known = None
    if Path(warehouse_path).exists():
        con = duckdb.connect(str(warehouse_path), read_only=True)
        known = {r[0] for r in con.execute("SELECT customer_id FROM customers").fetchall()}
        con.close()
    log = open_event_log(settings.event_log_url)
    try:
        summary = export_contract(log, out_dir, known_customers=known)
    finally:
        log.close()
    typer.echo(
        f"{summary.decision_rows:,} decision rows -> {summary.decisions_path}\n"
        f"{summary.outcome_rows:,} outcomes -> {summary.outcomes_path}\n"
        f"{summary.anonymised_customers:,} customers unknown to the warehouse exported as "
        f"anonymous\nnext: recsys data load {out_dir}"
    )


def serve(
    host: str = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    port: int = typer.Option(None, min=1, max=65535, help="Port (default 8000)."),
    workers: int = typer.Option(None, min=1, help="uvicorn worker processes (default 1)."),
    epsilon: float = typer.Option(
        None,
        min=0.0,
        max=1.0,
        help="Serve epsilon-greedy with this exploration share (0 = greedy). Default: the "
        "settings serving.policy (softmax) and serving.policy_params.",
    ),
    model_dir: Path = typer.Option(
        None, help="Serve this local model folder instead of the registry's champion."
    ),
    catalog: Path = typer.Option(
        None, help="Warehouse file or folder of offers/touchpoints (default: the warehouse)."
    ),
) -> None:
    """Start the decision service (FastAPI on uvicorn) on the champion model.

    --workers N runs N uvicorn worker processes on one socket; beyond one host, run
    replicas behind a load balancer (docs/operations.md).
    """
    from recsys.settings import load_settings
    from serving.main import run_server

    # Worker processes build the app from the environment: pass the flags through it.
    for name, value in (
        ("HOST", host),
        ("PORT", port),
        ("WORKERS", workers),
        ("EPSILON", epsilon),
        ("POLICY", None if epsilon is None else "epsilon_greedy"),
        ("MODEL_DIR", model_dir),
        ("CATALOG_SOURCE", catalog),
    ):
        if value is not None:
            os.environ[f"RECSYS_SERVING__{name}"] = str(value)
    settings = load_settings()
    ensure_port_free(settings.serving.host, settings.serving.port)
    base = f"http://{settings.serving.host}:{settings.serving.port}"
    typer.echo(
        f"recsys decision service on {base}  (docs: {base}/docs)\n"
        "try:\n"
        f"  curl -s -X POST {base}/v1/decisions -H 'content-type: application/json' "
        '-d \'{"customer_id": "C0000001", "touchpoint": "web_home", "limit": 3}\'\n'
        f"  curl -s '{base}/v1/offers?touchpoint=web_home'"
    )
    if settings.security.demo_enabled:
        typer.echo(f"  the browser client's example page: {base}/demo")
    run_server(settings)


def ensure_port_free(host: str, port: int) -> None:
    """Refuse to start on an address another process listens on, in one line, before the
    banner and the model load (uvicorn would fail after both, with a page of logs)."""
    import socket

    from recsys.errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"`--port` must be free on {host}, got {port}, which is in use "
                f"({exc.strerror}); stop the other server or choose another --port"
            ) from None
