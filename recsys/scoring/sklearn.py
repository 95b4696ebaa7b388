"""scikit-learn flavour: a fitted estimator or pipeline with ``predict_proba``, in a skops file.

skops (``skops.io``) stores the estimator without pickle: loading refuses any type outside
scikit-learn, numpy and :data:`TRUSTED_TYPES`, so a model file cannot run arbitrary code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import skops.io as sio
from sklearn.base import is_classifier
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from recsys.errors import SpecMismatchError
from recsys.scoring.base import LoadOptions, ModelFiles, ModelScorer, check_width

#: Types a model file may hold beyond those skops trusts by default (scikit-learn's own).
TRUSTED_TYPES = ("numpy.dtype",)


@dataclass
class SklearnScorer(ModelScorer):
    """P(accept) from a fitted binary classifier: ``predict_proba(matrix)[:, 1]``.

    Parameters
    ----------
    estimator : fitted scikit-learn classifier or pipeline
        Fitted on the decision matrix's columns, classes ``[0, 1]``.
    columns : tuple of str
        The model's column order (its feature spec).
    """

    name = "sklearn"
    reads = "sklearn"

    estimator: Any
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        self.columns = tuple(self.columns)
        kind = type(self.estimator).__name__
        if not is_classifier(self.estimator):
            raise SpecMismatchError(f"sklearn model must be a binary classifier, got a {kind}")
        try:
            check_is_fitted(self.estimator)
        except NotFittedError:
            raise SpecMismatchError(
                f"sklearn model must be fitted, got an unfitted {kind}"
            ) from None
        classes = [int(c) for c in self.estimator.classes_]
        if classes != [0, 1]:
            raise SpecMismatchError(
                f"sklearn model must be a binary classifier with classes [0, 1], got {classes}"
            )
        check_width(self.name, int(self.estimator.n_features_in_), self.columns)

    @classmethod
    def load(cls, files: ModelFiles, options: LoadOptions) -> SklearnScorer:
        """Read the skops file; refuse one that holds types outside :data:`TRUSTED_TYPES`."""
        untrusted = sorted(set(sio.get_untrusted_types(file=files.model_file)) - set(TRUSTED_TYPES))
        if untrusted:
            raise SpecMismatchError(
                f"sklearn model file {files.model_file.name} must hold only scikit-learn and "
                f"numpy types, got {untrusted}"
            )
        estimator = sio.load(files.model_file, trusted=list(TRUSTED_TYPES))
        return cls(estimator, files.columns)

    def _score(self, matrix: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(matrix)[:, 1]

    def save(self, path: Path) -> Path:
        """Write the estimator as a skops file (what :meth:`load` reads)."""
        sio.dump(self.estimator, path)
        return path
