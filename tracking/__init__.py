"""MLflow tracking: the only package that imports mlflow (runs.py for training runs,
registry.py for promotion, models.py and generator_pyfunc.py for the generator as an
MLflow model, evaluation.py for scores). See tracking.runs for the run layout."""
