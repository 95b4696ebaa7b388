"""How the tests wire the hardened app (what serving.main does in production)."""

from __future__ import annotations

from fastapi import FastAPI

from recsys.settings import Settings
from serving.main import install_hardening
from serving.observability import ServiceMetrics


def harden(app: FastAPI, settings: Settings, metrics: ServiceMetrics) -> None:
    """The production layers (serving.main.install_hardening)."""
    install_hardening(app, settings, metrics=metrics)
