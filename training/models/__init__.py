"""Scorers: LightGBM and the baselines, behind one interface and one registry (name -> class).

The :class:`ServableScorer` ones (LightGBM, logistic regression) can be the registered model.
"""

from training.models.base import Scorer, ServableScorer
from training.models.baselines import LogisticRegressionScorer, PopularityScorer, RandomScorer
from training.models.lightgbm_model import LightGBMScorer

MODELS: dict[str, type[Scorer]] = {
    cls.name: cls
    for cls in (LightGBMScorer, RandomScorer, PopularityScorer, LogisticRegressionScorer)
}


def make_scorer(name: str, **params) -> Scorer:
    """A new, unfitted scorer by registry name (``lightgbm``, ``popularity``, ...)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"`model` must be one of {sorted(MODELS)}, got {name!r}") from None
    return cls(**params)


__all__ = [
    "MODELS",
    "LightGBMScorer",
    "LogisticRegressionScorer",
    "PopularityScorer",
    "RandomScorer",
    "Scorer",
    "ServableScorer",
    "make_scorer",
]
