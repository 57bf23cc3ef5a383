"""Six training runs logging at once through one `mlflow server` (SQLite behind it) lose nothing.

This is the chart's setup: one tracking server process on the claim, artifacts proxied by
it (`mlflow-artifacts:` URIs, so the training Jobs mount no artifact volume), and one
training Job per entry of the study's `runs`, all logging at the same time. Each run here
is a real `technogan train --run NAME` process; afterwards every run must be finished,
every metric key must hold every step from 1 to the steps the run did, and every
checkpoint must be on the server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import checkpoint as ckpt
from tests.tracking.eval_runs import artifacts
from tests.tracking.test_runs_server import MlflowServer
from tracking import runs as tracking

TECHNOGAN = str(Path(sys.executable).with_name("technogan"))

# the study's six runs (configs/study.yaml) at toy size: 36 clips in batches of 4 = 9 batches an epoch
RUNS = {
    "dcgan1-7ep": ("dcgan1", 2),
    "dcgan2-2ep": ("dcgan2", 1),
    "dcgan2-6ep": ("dcgan2", 2),
    "dcgan2-7ep": ("dcgan2", 1),
    "wgan-wc-5ep": ("wgan-wc", 3),  # 5 critic batches per generator step: 27 batches -> 5 steps
    "wgan-gp-5ep": ("wgan-gp", 3),
}


@pytest.fixture
def server(tmp_path, monkeypatch):
    # MLflow 3's server otherwise starts a job runner and seven huey consumers (GenAI jobs), eight
    # processes importing mlflow that log no metric; the chart's server turns them off the same way
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    s = MlflowServer(tmp_path / "server")
    s.root.mkdir()
    s.start()
    yield s
    s.stop()


@pytest.mark.slow
def test_six_runs_logging_at_once_lose_nothing(tmp_path, small_dataset, server):
    runs = "\n".join(f"    {name}: {{model: {model}, epochs: {epochs}}}" for name, (model, epochs) in RUNS.items())
    preset = tmp_path / "six.yaml"
    preset.write_text(
        "data: {resolution: 32}\nmodel: {g_width: 4, d_width: 4, latent_dim: 8}\n"
        "train:\n  progress: false\n  n_samples: 4\n  batch_size: 4\n  checkpoint_every: 5\n"
        f"  sample_every: 1000\n  artifact_every_s: 0\n  runs:\n{runs}\n"
        "tracking: {experiment: six-at-once, flush_timeout_s: 240, request_timeout_s: 30}\n")
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "OMP_NUM_THREADS": "1"}
    procs = {}
    for name in RUNS:
        work = tmp_path / name
        work.mkdir()  # each Job its own working folder (its spool of unsent records lands there)
        procs[name] = subprocess.Popen(
            [TECHNOGAN, "train", "--config", str(preset), "--run", name, "--dataset", str(small_dataset),
             "--out", str(tmp_path / "train")],
            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = {}
    try:
        for name, proc in procs.items():
            outputs[name] = proc.communicate(timeout=600)[0]
    finally:
        for proc in procs.values():
            proc.kill()
    for name, proc in procs.items():
        assert proc.returncode == 0, f"{name}:\n{outputs[name][-3000:]}"

    client = tracking.get_client(server.uri)
    for name, (model, epochs) in RUNS.items():
        run_id = (tmp_path / "train" / name / "LATEST").read_text().strip()
        assert f"{name}: finished at step" in outputs[name] and run_id in outputs[name]
        local = tmp_path / "train" / name / run_id / "checkpoints"
        steps = ckpt.read_meta(local / "generator-latest.pt")["step"]  # what the run did, from its own disk
        assert steps == (epochs * 9) // (5 if model.startswith("wgan") else 1)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags[tracking.STATUS_TAG] == "finished", name
        assert run.data.tags[tracking.MODEL_TAG] == model
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server
        keys = set(run.data.metrics)
        assert {"d_loss", "g_loss", "samples_per_s", "epoch"} <= keys, (name, keys)
        for key in keys:
            history = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == list(range(1, steps + 1)), (name, key)
        files = artifacts(client, run_id, "checkpoints")
        want = {f"checkpoints/generator-epoch-{e}.pt" for e in range(1, epochs + 1)}
        assert want | {"checkpoints/generator-latest.pt", "checkpoints/training-state-latest.pt"} <= files, name
        # nothing was left unsent in a spool
        spool = tmp_path / name / "mlflow-spool"
        assert not spool.exists() or not any(spool.iterdir()), name
    # six distinct runs in one experiment, and no other
    ids = {(tmp_path / "train" / name / "LATEST").read_text().strip() for name in RUNS}
    experiment = client.get_experiment_by_name("six-at-once")
    assert len(ids) == 6 and {r.info.run_id for r in client.search_runs([experiment.experiment_id])} == ids
