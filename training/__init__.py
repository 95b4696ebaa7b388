"""Training sets, models, evaluation (offline and off-policy), MLflow tracking and registry."""
