"""MLflow's telemetry stays off: `import mlflow` would start a thread that calls out over
HTTPS, and a process forked during its name lookup hangs (bench_quality's workers did)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# what MLflow reads as "running in CI or under pytest", which turns telemetry off by itself
CI_MARKERS = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "CIRCLECI", "GITLAB_CI", "JENKINS_URL", "TRAVIS",
              "TF_BUILD", "BITBUCKET_BUILD_NUMBER", "CODEBUILD_BUILD_ARN", "BUILDKITE", "TEAMCITY_VERSION",
              "CLOUD_RUN_EXECUTION", "RUNBOT_HOST_URL", "RUNBOT_BUILD_NAME", "RUNBOT_WORKER_ID", "DO_NOT_TRACK",
              "MLFLOW_DISABLE_TELEMETRY")

PROBE = """
import json, os, sys
if sys.argv[1] == "tracking":
    import tracking.runs  # noqa: F401  (the project's way in; it imports mlflow)
import mlflow  # noqa: F401
from mlflow.telemetry.utils import is_telemetry_disabled
print(json.dumps({"disabled": is_telemetry_disabled(), "env": os.environ.get("MLFLOW_DISABLE_TELEMETRY")}))
"""


def probe(first: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in CI_MARKERS} | env
    out = subprocess.run([sys.executable, "-c", PROBE, first], cwd=ROOT, env=clean, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_importing_the_tracking_package_turns_mlflow_telemetry_off():
    assert probe("tracking") == {"disabled": True, "env": "true"}


def test_mlflow_alone_would_have_it_on_and_a_users_choice_is_kept():
    # the control: outside CI, plain mlflow starts telemetry, so the test above can fail
    assert probe("mlflow") == {"disabled": False, "env": None}
    assert probe("tracking", MLFLOW_DISABLE_TELEMETRY="false") == {"disabled": False, "env": "false"}
