"""``recsys serve`` and ``recsys score`` commands."""

from __future__ import annotations


def register(app) -> None:
    """Add the top-level ``serve`` and ``score`` commands to ``app`` (filled in by serving work)."""
