"""Roll out an experiment's winning arm: its recipe becomes what everyone gets.

``recsys experiments promote NAME ARM``: the registry alias ``champion`` is pointed at the
arm's model version (through MLflow's client, as ``recsys models promote`` does), the arm's
levers become the default levers (applied to every decision outside experiments), and the
experiment records who promoted which arm when (and stops if it was running). Services pick
up the new champion at their next registry poll and the levers at their next experiment poll.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from experiments.definition import ArmKind, ModelRef
from experiments.store import ExperimentStore
from recsys.errors import NotFoundError
from recsys.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Promotion:
    experiment: str
    arm: str
    model_version: str | None  # the champion's version after the promotion
    champion_changed: bool
    levers: dict


def _version_of(settings: Settings, ref: ModelRef) -> str:
    from training.tracking import list_versions

    if ref.version is not None:
        return ref.version
    for info in list_versions(settings):
        if ref.alias in info.aliases:
            return str(info.version)
    raise NotFoundError(
        f"model {settings.model_name!r} must have a version under alias {ref.alias!r} to "
        "promote the arm that runs it, got none"
    )


def promote_arm(
    settings: Settings, store: ExperimentStore, name: str, arm_name: str, by: str
) -> Promotion:
    """Make ``arm_name`` of experiment ``name`` the default recipe (see the module docstring).

    Raises
    ------
    NotFoundError, ConfigError
        Unknown experiment, arm or model version; an experiment not yet run; a holdout that
        has no model recipe (random, popularity).
    """
    from training.tracking import champion_version, promote

    arm = store.promotable(name, arm_name)  # refuse before anything changes
    runs_champion = arm.kind == ArmKind.HOLDOUT_CHAMPION or arm.model.alias == "champion"
    before = champion_version(settings)
    if runs_champion:
        version = before
    else:
        version = _version_of(settings, arm.model)
        promote(settings, version, "champion")
    levers = store.promote(name, arm_name, by, version)
    logger.info("experiment %s: arm %s promoted (champion v%s)", name, arm_name, version)
    return Promotion(name, arm_name, version, version != before, levers.model_dump(mode="json"))
