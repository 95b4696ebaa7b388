"""``recsys train``: build the training set, train, evaluate, log to MLflow."""

from __future__ import annotations


def register(app) -> None:
    """Add the top-level ``train`` command to ``app`` (filled in by the training work)."""
