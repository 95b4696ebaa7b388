"""``recsys evaluate-logs``: compare two logged policies on the warehouse's decisions."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from recsys.errors import RecsysError
from recsys.settings import load_settings


def evaluate_logs(
    policy: str = typer.Argument(..., help="The policy to evaluate (decisions.policy), e.g. bts."),
    baseline: str = typer.Argument(..., help="The policy to compare it with, e.g. random."),
    db: Path | None = typer.Option(None, "--db", help="Warehouse DuckDB file (default: settings)."),
    outcome: list[str] = typer.Option(
        ["click"], "--outcome", help="Outcome that makes a round positive (repeatable)."
    ),
    attribution_days: float = typer.Option(
        7.0, help="An outcome counts up to this many days after the decision."
    ),
    confidence: float = typer.Option(0.95, help="Level of every interval."),
    bootstrap_samples: int = typer.Option(
        500, min=10, help="Bootstrap resamples of the off-policy intervals."
    ),
    seed: int = typer.Option(0, help="Seed of the bootstrap."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Compare POLICY with BASELINE per touchpoint, on the rounds each of them logged.

    Rates with intervals, difference, lift, and each policy's value on the other's log (OPE).
    """
    from experiments.logged_policies import compare_logged_policies, read_rounds
    from recsys import warehouse

    settings = load_settings(warehouse_path=db)
    path = settings.warehouse_path
    if not path.exists():
        typer.echo(
            f"no warehouse at {path}; run `recsys data load DIR --db {path}` first", err=True
        )
        raise typer.Exit(code=1)
    con = warehouse.connect(path, read_only=True, memory_limit=settings.duckdb_memory_limit)
    try:
        rounds = read_rounds(
            con,
            (policy, baseline),
            positive_outcomes=tuple(outcome),
            attribution_days=attribution_days,
        )
        result = compare_logged_policies(
            rounds,
            policy,
            baseline,
            positive_outcomes=tuple(outcome),
            confidence=confidence,
            bootstrap_samples=bootstrap_samples,
            seed=seed,
        )
    except (RecsysError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    finally:
        con.close()
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.format())


def register(app: typer.Typer) -> None:
    """Add the top-level ``evaluate-logs`` command to ``app``."""
    app.command("evaluate-logs", epilog="Example: recsys evaluate-logs bts random --outcome click")(
        evaluate_logs
    )
