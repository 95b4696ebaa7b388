"""MLflow pyfunc wrapper of the offer ranker, logged as "model from code".

MLflow copies this file into the model directory, so ``mlflow.pyfunc.load_model`` works
without the training package: it needs only mlflow, lightgbm, numpy and pandas. The input is
a DataFrame with the encoded columns of ``feature_spec.json`` (any order; extra columns are
ignored); the output is P(positive outcome) per row, as a list of floats.
"""

import json

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd


class OfferRanker(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.booster = lgb.Booster(model_file=context.artifacts["booster"])
        with open(context.artifacts["feature_spec"]) as handle:
            self.spec = json.load(handle)
        self.columns = list(self.spec["columns"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> list[float]:
        frame = pd.DataFrame(model_input)
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise ValueError(f"model input lacks the columns {missing}")
        matrix = frame[self.columns].to_numpy(dtype=np.float64)
        return self.booster.predict(matrix).tolist()


mlflow.models.set_model(OfferRanker())
