"""Experiment definitions for tests (mappings as the YAML gives them)."""

from __future__ import annotations

from typing import Any

from experiments.definition import Experiment, parse_experiment


def definition(**overrides: Any) -> dict[str, Any]:
    """A valid two-arm experiment on web_home, as parsed YAML."""
    data: dict[str, Any] = {
        "name": "exp-home",
        "hypothesis": "the treatment raises acceptance",
        "touchpoints": ["web_home"],
        "arms": [
            {"name": "control", "kind": "control", "share": 0.5},
            {"name": "treatment", "kind": "treatment", "share": 0.5},
        ],
    }
    data.update(overrides)
    return data


def experiment(**overrides: Any) -> Experiment:
    return parse_experiment(definition(**overrides))
