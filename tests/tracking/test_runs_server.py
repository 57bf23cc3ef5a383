"""Training against a real `mlflow server` on loopback that goes away mid-run and comes back.

The server is started as `mlflow server --backend-store-uri sqlite:///... --artifacts-destination DIR
--host 127.0.0.1 --port P` (its default --allowed-hosts admits localhost; a server behind another
name needs `--allowed-hosts NAME`, see DESIGN.md) and stopped with SIGTERM to its process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tracking import runs as tracking

MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on a free loopback port over ``backend`` (default: a new ``root/server.db``)."""

    def __init__(self, root: Path, backend: str | None = None):
        self.root = root
        self.backend = backend or f"sqlite:///{root / 'server.db'}"
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> None:
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(
            [MLFLOW, "server", "--backend-store-uri", self.backend,
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200:
                    return
            except OSError:
                pass
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not come up"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its uvicorn worker
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the module (it takes seconds to start); each test leaves it running."""
    s = MlflowServer(tmp_path_factory.mktemp("server"))
    s.start()
    yield s
    s.stop()


def start_training(tmp_path, dataset, server, epochs: int, tracking_yaml: str):
    """`technogan train` of a tiny dcgan2 in a subprocess against ``server``; returns (process,
    out folder) once the run's LATEST pointer exists, i.e. once training has begun."""
    preset = tmp_path / "tiny.yaml"
    preset.write_text(
        "data: {resolution: 32}\nmodel: {g_width: 4, d_width: 4, latent_dim: 8}\n"
        f"train: {{progress: false, n_samples: 4, batch_size: 2, epochs: {epochs}, checkpoint_every: 10,"
        " artifact_every_s: 0}\n"
        f"tracking: {tracking_yaml}\n")
    out = tmp_path / "train"
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri}
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--config", str(preset), "--model", "dcgan2",
           "--dataset", str(dataset), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pointer, deadline = out / "dcgan2" / "LATEST", time.monotonic() + 180
    while not pointer.is_file():
        if proc.poll() is not None or time.monotonic() >= deadline:
            proc.kill()
            raise AssertionError(f"training did not begin:\n{proc.communicate()[0][-4000:]}")
        time.sleep(0.1)
    return proc, out


def test_training_survives_the_tracking_server_going_away(tmp_path, small_dataset, server):
    proc, out = start_training(tmp_path, small_dataset, server, 6,
                               "{experiment: outage, max_backoff_s: 1.0, flush_timeout_s: 240, request_timeout_s: 3}")
    try:
        pointer = out / "dcgan2" / "LATEST"  # the run exists on the server and training has begun
        server.stop()
        time.sleep(4.0)  # training goes on meanwhile, its records queue up
        assert proc.poll() is None or proc.returncode == 0
        server.start()
        output, _ = proc.communicate(timeout=400)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-4000:]
    assert "unreachable" in output and "reachable again" in output
    run_id = pointer.read_text().strip()
    client = tracking.get_client(server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.STATUS_TAG] == "finished"
    total = 6 * 18  # 6 epochs of 18 batches of 2
    steps = sorted(m.step for m in client.get_metric_history(run_id, "g_loss"))
    assert steps == list(range(1, total + 1))  # nothing lost in the outage
    names = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert {f"checkpoints/generator-epoch-{e}.pt" for e in range(1, 7)} <= names
    assert "checkpoints/generator-latest.pt" in names
    # every checkpoint also stayed on local disk
    local = out / "dcgan2" / run_id / "checkpoints"
    assert {f"generator-epoch-{e}.pt" for e in range(1, 7)} <= {p.name for p in local.iterdir()}
    got = tracking.download_checkpoint(run_id, uri=server.uri, dst=tmp_path / "dl")
    assert got.stat().st_size == (local / "generator-latest.pt").stat().st_size


def test_records_spooled_while_the_server_is_down_are_sent_when_it_is_back(tmp_path, server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    run = tracking.TrackedRun.start("spool", spool_dir=tmp_path / "spool", max_backoff_s=0.5,
                                    request_timeout_s=2)
    run.log_metrics({"d_loss": 1.0}, 1)
    assert run.finish() is True
    run = tracking.TrackedRun.start("spool", run_id=run.run_id, spool_dir=tmp_path / "spool", max_backoff_s=0.5,
                                    request_timeout_s=2)
    server.stop()
    (tmp_path / "ck.pt").write_bytes(b"weights")
    for step in range(2, 6):
        run.log_metrics({"d_loss": float(step)}, step)
    run.log_artifact(tmp_path / "ck.pt", "checkpoints")
    assert run.finish(timeout_s=2.0) is False
    assert (tmp_path / "spool" / f"{run.run_id}.jsonl").is_file()
    server.start()
    assert tracking.flush_spool(tmp_path / "spool") >= 2
    assert not (tmp_path / "spool" / f"{run.run_id}.jsonl").exists()
    client = tracking.get_client(server.uri)
    assert sorted(m.step for m in client.get_metric_history(run.run_id, "d_loss")) == [1, 2, 3, 4, 5]
    assert [a.path for a in client.list_artifacts(run.run_id, "checkpoints")] == ["checkpoints/ck.pt"]
    assert client.get_run(run.run_id).info.status == "FINISHED"


# ----------------------------------------------------------------------------- down at start (issue 12, item 14)

@pytest.mark.slow
def test_training_starts_while_the_server_is_down_and_its_run_appears_when_it_comes_up(tmp_path, small_dataset,
                                                                                        server):
    server.stop()  # down before training starts
    proc, out = start_training(tmp_path, small_dataset, server, 3,
                               "{experiment: down-at-start, start_timeout_s: 1, max_backoff_s: 1.0, "
                               "flush_timeout_s: 300, request_timeout_s: 3}")
    try:
        pointer = out / "dcgan2" / "LATEST"  # training has begun without the server
        key = pointer.read_text().strip()
        assert key.startswith("pending-")
        server.start()
        output, _ = proc.communicate(timeout=400)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-4000:]
    assert "training goes on without it" in output and "created run" in output
    client = tracking.get_client(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("down-at-start").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags[tracking.STATUS_TAG] == "finished"
    assert run.data.params["train.batch_size"] == "2" and run.data.params["model.name"] == "dcgan2"
    assert run.data.tags[tracking.LOCAL_DIR_TAG] == str(out / "dcgan2" / key / "checkpoints")
    total = 3 * 18
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "g_loss")) == list(range(1, total + 1))
    names = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert {f"checkpoints/generator-epoch-{e}.pt" for e in range(1, 4)} <= names
    assert f"MLflow run {run.info.run_id}" in output  # what the command reports is the run created late


@pytest.mark.slow
def test_a_run_the_server_never_saw_is_spooled_and_created_on_replay(tmp_path, server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    server.stop()
    run = tracking.TrackedRun.start("never-saw", run_name="offline", tags={"technogan.model": "dcgan1"},
                                    spool_dir=tmp_path / "spool", max_backoff_s=0.5, request_timeout_s=2,
                                    start_timeout_s=0.5)
    assert run.run_id is None and run.key.startswith("pending-")
    (tmp_path / "ck.pt").write_bytes(b"weights")
    run.log_params({"train": {"batch_size": 4}})
    for step in range(1, 6):
        run.log_metrics({"d_loss": float(step)}, step)
    run.log_artifact(tmp_path / "ck.pt", "checkpoints")
    assert run.finish("FINISHED", timeout_s=1.0) is False
    spooled = tmp_path / "spool" / f"{run.key}.jsonl"
    assert spooled.is_file()
    server.start()
    assert tracking.flush_spool(tmp_path / "spool") >= 4
    assert not spooled.exists()
    client = tracking.get_client(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("never-saw").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "offline" and runs[0].info.status == "FINISHED"
    rid = runs[0].info.run_id
    assert runs[0].data.params["train.batch_size"] == "4" and runs[0].data.tags["technogan.model"] == "dcgan1"
    assert sorted(m.step for m in client.get_metric_history(rid, "d_loss")) == [1, 2, 3, 4, 5]
    assert [a.path for a in client.list_artifacts(rid, "checkpoints")] == ["checkpoints/ck.pt"]
