# Transitional: the engine is being replaced by recsys.decision.pipeline (issue 26).
from recsys.decision.engine import *  # noqa: F403
from recsys.decision.engine import (  # noqa: F401
    COLD_START_KEYS,
    COLUMNAR_MIN_CUSTOMERS,
    SMALL_BATCH,
    exploration_seed,
    is_cold_start,
)
from recsys.decision.ports import FeatureBlock, KeyStats  # noqa: F401
