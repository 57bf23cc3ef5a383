"""The same `technogan train` under torchrun: two CPU processes (gloo), only rank 0 logs."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from tracking import runs as tracking


def test_two_process_ddp_run_finishes_and_only_rank_0_logs(tmp_path, small_dataset):
    preset = tmp_path / "tiny.yaml"
    preset.write_text("data: {resolution: 32}\nmodel: {g_width: 4, d_width: 4, latent_dim: 8}\n"
                      "train: {progress: false, n_samples: 4, batch_size: 4, epochs: 2, checkpoint_every: 3,"
                      " artifact_every_s: 0}\n"
                      "tracking: {experiment: ddp}\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "train"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "pipeline.cli", "train", "--config", str(preset), "--model", "wgan-gp", "--dataset",
           str(small_dataset), "--out", str(out), "--epochs", "3"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # rank 0 alone created the run, wrote the checkpoints and printed the summary
    client = tracking.get_client(uri)
    exp = client.get_experiment_by_name("ddp")
    found = client.search_runs([exp.experiment_id])
    assert len(found) == 1
    run = found[0]
    assert run.info.status == "FINISHED" and run.data.params["run.world_size"] == "2"
    # 36 clips, 18 per rank, 4 batches of 4 per rank and epoch; 3 epochs = 12 batches = 2 steps of 5
    assert [m.step for m in client.get_metric_history(run.info.run_id, "d_loss")] == [1, 2]
    assert run.data.metrics["samples_per_s"] > 0
    assert [p.name for p in out.iterdir()] == ["wgan-gp"]
    assert [p.name for p in (out / "wgan-gp").iterdir() if p.is_dir()] == [run.info.run_id]
    assert proc.stdout.count("MLflow run") == 1
    state = torch.load(out / "wgan-gp" / run.info.run_id / "checkpoints" / "training-state-latest.pt",
                       weights_only=True)
    assert state["progress"]["step"] == 2
    # the 2 batches left after the last whole step end epoch 3 all the same: its checkpoint is there
    ck = out / "wgan-gp" / run.info.run_id / "checkpoints"
    assert {f"generator-epoch-{e}.pt" for e in (1, 2, 3)} <= {p.name for p in ck.iterdir()}
    assert not any(k.startswith("module.") for k in state["generator"])  # DDP unwrapped
