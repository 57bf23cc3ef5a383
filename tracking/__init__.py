"""MLflow tracking: the only package that imports mlflow (runs.py for training runs,
registry.py for promotion). See tracking.runs for the run layout."""
