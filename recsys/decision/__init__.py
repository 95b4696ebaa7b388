"""The decision pipeline: one batch path from requests to recorded decisions.

- :mod:`recsys.decision.types`: requests, decisions, traces, :class:`DecisionBatch`;
- :mod:`recsys.decision.ports`: what the pipeline reads and writes, as types;
- :mod:`recsys.decision.pipeline`: :class:`DecisionPipeline`, the stages.
"""

from recsys.decision.pipeline import DEFAULT_MAX_LIMIT, MAX_CAP_RETRIES, DecisionPipeline
from recsys.decision.ports import (
    Arm,
    ArmResolver,
    Clock,
    ContactHistorySource,
    DecisionSink,
    FeatureBlock,
    FeatureSource,
    KeyStats,
    MatrixBuilder,
    MatrixScorer,
    PairScorer,
    Scores,
    ScoringRows,
    ServedModel,
    SingleArm,
)
from recsys.decision.types import (
    Decision,
    DecisionBatch,
    DecisionRequest,
    DecisionTrace,
    ModelInfo,
    ScorePart,
    ServedOffer,
    SlatePosition,
    concat,
    new_decision_ids,
)

__all__ = [
    "DEFAULT_MAX_LIMIT",
    "MAX_CAP_RETRIES",
    "Arm",
    "ArmResolver",
    "Clock",
    "ContactHistorySource",
    "Decision",
    "DecisionBatch",
    "DecisionPipeline",
    "DecisionRequest",
    "DecisionSink",
    "DecisionTrace",
    "FeatureBlock",
    "FeatureSource",
    "KeyStats",
    "MatrixBuilder",
    "MatrixScorer",
    "ModelInfo",
    "PairScorer",
    "ScorePart",
    "Scores",
    "ScoringRows",
    "ServedModel",
    "ServedOffer",
    "SingleArm",
    "SlatePosition",
    "concat",
    "new_decision_ids",
]
