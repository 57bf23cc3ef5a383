"""MLflow tracking: the only package that imports mlflow (runs.py for training runs,
registry.py for promotion, models.py and generator_pyfunc.py for the generator as an
MLflow model, evaluation.py for scores). See tracking.runs for the run layout."""

import os

# `import mlflow` starts a telemetry thread that fetches a config over HTTPS. This tool
# runs offline and on clusters and sends nothing; and bench_quality's three forked
# training workers hung in getpwuid for 20 minutes, most likely on a name-lookup lock
# that thread held at the fork (where they stood; not reproduced). It must be set
# before anything here imports mlflow; MLFLOW_DISABLE_TELEMETRY=false in the
# environment turns it back on.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
