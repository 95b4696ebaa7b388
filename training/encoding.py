"""How a training-set frame becomes the model matrix, and the feature spec serving reads."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pandas as pd


class Encoder(Protocol):
    """Turns training-set frames (or candidate rows) into the float model matrix.

    ``columns`` is the model's column order, ``categorical`` the indexes of integer-coded
    categorical columns, ``metadata()`` whatever serving needs to encode a request the same
    way (JSON-serialisable).
    """

    spec_version: str
    columns: tuple[str, ...]
    categorical: tuple[int, ...]

    def transform(self, frame: pd.DataFrame) -> np.ndarray: ...

    def metadata(self) -> dict[str, Any]: ...


def feature_spec(encoder: Encoder, *, model_file: str) -> dict[str, Any]:
    """The ``feature_spec.json`` logged next to the model (read by serving)."""
    return {
        "feature_spec_version": encoder.spec_version,
        "columns": list(encoder.columns),
        "categorical": list(encoder.categorical),
        "categorical_columns": [encoder.columns[i] for i in encoder.categorical],
        "encoding": encoder.metadata(),
        "model_file": model_file,
        "score": "P(positive outcome | customer, offer, touchpoint, context)",
    }
