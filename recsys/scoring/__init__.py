"""Scorers by model flavour, behind one port and one registry (name -> class).

``SCORERS`` holds every flavour; :func:`scorer_class` picks the one for a model directory's
recorded flavour (the compiled scorer when serving asks for compiled scoring and the flavour
has one). This package imports no web framework and no MLflow.
"""

from recsys.errors import SpecMismatchError
from recsys.scoring.base import LoadOptions, ModelFiles, ModelScorer, Scorer
from recsys.scoring.lightgbm import LightGBMScorer
from recsys.scoring.lleaves import LleavesScorer
from recsys.scoring.sklearn import SklearnScorer

SCORERS: dict[str, type[ModelScorer]] = {
    cls.name: cls for cls in (LightGBMScorer, LleavesScorer, SklearnScorer)
}


def scorer_class(flavour: str, *, compiled: bool = False) -> type[ModelScorer]:
    """The scorer that loads model files of ``flavour``.

    With ``compiled`` the flavour's compiled scorer if it has one (``lightgbm`` ->
    ``lleaves``), else its plain one.

    Raises
    ------
    SpecMismatchError
        No registered scorer reads ``flavour``.
    """
    by_kind = {(cls.reads, cls.compiled): cls for cls in SCORERS.values()}
    found = by_kind.get((flavour, compiled)) or by_kind.get((flavour, False))
    if found is None:
        known = sorted({cls.reads for cls in SCORERS.values()})
        raise SpecMismatchError(f"model `flavour` must be one of {known}, got {flavour!r}")
    return found


def load_scorer(flavour: str, files: ModelFiles, options: LoadOptions) -> ModelScorer:
    """The scorer of ``files``, a model of ``flavour``, run as ``options`` asks."""
    return scorer_class(flavour, compiled=options.compiled).load(files, options)


__all__ = [
    "SCORERS",
    "LightGBMScorer",
    "LleavesScorer",
    "LoadOptions",
    "ModelFiles",
    "ModelScorer",
    "Scorer",
    "SklearnScorer",
    "load_scorer",
    "scorer_class",
]
