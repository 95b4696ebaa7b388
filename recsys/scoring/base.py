"""The scorer port and the base class of every model flavour's scorer.

A *flavour* is how a model is stored and run: ``lightgbm`` (a LightGBM text model),
``lleaves`` (the same file compiled to machine code) and ``sklearn`` (a fitted scikit-learn
estimator). Training records the flavour of the file it writes in the model directory's
``feature_spec.json``; serving looks the flavour up in :data:`recsys.scoring.SCORERS` and
calls its :meth:`ModelScorer.load`. A new flavour is one module beside these and one line in
``recsys/scoring/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from recsys.errors import SpecMismatchError


class Scorer(Protocol):
    """A model: P(accept) for each row of a decision matrix."""

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """matrix shape (n, n_features) -> P(accept), float64 shape (n,)."""
        ...


@dataclass(frozen=True)
class ModelFiles:
    """What a scorer loads: the model file training wrote and the model's column order.

    Attributes
    ----------
    model_file : Path
        The file of the recorded flavour (LightGBM text model, skops file, ...).
    columns : tuple of str
        The decision matrix's columns, in the order the model reads them.
    """

    model_file: Path
    columns: tuple[str, ...]


@dataclass(frozen=True)
class LoadOptions:
    """How serving wants models run.

    Attributes
    ----------
    compiled_dir : Path, optional
        Folder where compiled binaries are cached (one per model hash and CPU), shared by
        processes. With it, a flavour that has a compiled scorer is served compiled.
    """

    compiled_dir: Path | None = None

    @property
    def compiled(self) -> bool:
        return self.compiled_dir is not None


class ModelScorer(ABC):
    """P(accept) from one model flavour; implements :class:`Scorer`.

    ``score`` validates the matrix's shape, ``_score`` computes; the result is float64 of
    shape (n,).
    """

    #: Registry key.
    name: ClassVar[str]
    #: The recorded flavour of model file this scorer loads.
    reads: ClassVar[str]
    #: True for a scorer that runs a compiled copy of the model (picked when serving asks).
    compiled: ClassVar[bool] = False

    columns: tuple[str, ...]

    @classmethod
    @abstractmethod
    def load(cls, files: ModelFiles, options: LoadOptions) -> ModelScorer:
        """The scorer of ``files.model_file``.

        Raises
        ------
        SpecMismatchError
            The model reads another number of columns than ``files.columns`` lists.
        """

    @classmethod
    def load_strict(cls, files: ModelFiles, options: LoadOptions) -> ModelScorer:
        """:meth:`load`, raising where :meth:`load` would fall back to another scorer (what
        the model check runs, to learn why)."""
        return cls.load(files, options)

    @classmethod
    def discard_cache(cls, files: ModelFiles, options: LoadOptions) -> None:
        """Delete what :meth:`load` cached for ``files`` (a compiled binary that failed its
        check); nothing for a flavour that caches nothing."""
        return None

    def check_matrix(self, n: int, seed: int = 0) -> np.ndarray:
        """Rows the model check scores: zeros, ones and random values of either sign.

        Returns
        -------
        ndarray, shape (n, len(self.columns))
        """
        rng = np.random.default_rng(seed)
        rows = rng.normal(0.0, 100.0, size=(n, len(self.columns)))
        rows[0] = 0.0
        rows[min(1, n - 1)] = 1.0
        return rows

    @abstractmethod
    def _score(self, matrix: np.ndarray) -> np.ndarray: ...

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """P(accept) of each row.

        Parameters
        ----------
        matrix : ndarray, shape (n, n_features)
            Columns in the order of ``self.columns``; float32 or float64, NaN = missing.

        Returns
        -------
        ndarray, shape (n,), float64

        Raises
        ------
        SpecMismatchError
            ``matrix`` is not 2-D with ``len(self.columns)`` columns.
        """
        if matrix.ndim != 2 or matrix.shape[1] != len(self.columns):
            raise SpecMismatchError(
                f"decision matrix must have shape (n, {len(self.columns)}), got {matrix.shape}"
            )
        if matrix.shape[0] == 0:  # some libraries refuse an empty matrix
            return np.empty(0, dtype=np.float64)
        return np.asarray(self._score(matrix), dtype=np.float64)


def check_width(flavour: str, n_features: int, columns: tuple[str, ...]) -> None:
    """Refuse a model whose number of inputs differs from its feature spec's columns."""
    if n_features != len(columns):
        raise SpecMismatchError(
            f"{flavour} model reads {n_features} features but its feature spec lists "
            f"{len(columns)} columns"
        )
