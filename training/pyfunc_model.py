"""MLflow pyfunc wrapper of the offer ranker, logged as "model from code".

MLflow copies this file into the model directory, and ``recsys`` beside it (code paths), so
``mlflow.pyfunc.load_model`` works without the training package: the model file is scored by
the :mod:`recsys.scoring` scorer of the flavour recorded in ``feature_spec.json``, the one
serving uses. The input is a DataFrame with the encoded columns of ``feature_spec.json`` (any
order; extra columns are ignored); the output is P(positive outcome) per row, as a list of
floats.
"""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from recsys.scoring import LoadOptions, ModelFiles, load_scorer


class OfferRanker(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        with open(context.artifacts["feature_spec"]) as handle:
            self.spec = json.load(handle)
        self.columns = list(self.spec["columns"])
        files = ModelFiles(Path(context.artifacts["model"]), tuple(self.columns))
        self.scorer = load_scorer(self.spec["flavour"], files, LoadOptions())

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[float]:
        frame = pd.DataFrame(model_input)
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"model input lacks the columns {missing}")
        matrix = frame[self.columns].to_numpy(dtype=np.float64)
        return self.scorer.score(matrix).tolist()


mlflow.models.set_model(OfferRanker())
