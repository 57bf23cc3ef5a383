"""Training end to end on the small synthetic dataset, tracked in a temporary MLflow store."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tracking.eval_runs import artifacts
import torch

from pipeline import checkpoint as ckpt
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.train import train
from pipeline.train.cli import EXIT_CODES, resolve
from pipeline.train.monitor import DivergenceGuard, Prometheus
from tracking import runs as tracking

def flat(config) -> dict:
    """A config as dotted overrides (``{"train.batch_size": 4, ...}``)."""
    return {f"{section}.{k}": v for section, values in config.model_dump(mode="json").items()
            if isinstance(values, dict) for k, v in values.items() if k != "runs"}


def make_config(tmp_path: Path, dataset: Path, **train):
    """A tiny run: 32x32, widths 4, batches of 4 (36 clips -> 9 batches an epoch), its own MLflow store."""
    t = {"batch_size": 4, "epochs": 3, "checkpoint_every": 4, "sample_every": 1000, "progress": False, "n_samples": 4,
         "artifact_every_s": 0,
         "dataset": str(dataset), "out_dir": str(tmp_path / "train"), **train}
    return load_config(None, {
        "model.g_width": 4, "model.d_width": 4, "model.latent_dim": 16, "data.resolution": 32,
        **{f"train.{k}": v for k, v in t.items()},
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "tracking.experiment": "test",
        "tracking.spool_dir": str(tmp_path / "spool"), "tracking.flush_timeout_s": 30,
    })


def test_mlflow_run_has_params_metrics_grids_plot_and_checkpoints(tmp_path, small_dataset):
    config = make_config(tmp_path, small_dataset, epochs=2, sample_every=5, checkpoint_every=3)
    result = train(config.model_copy(update={"model": config.model.model_copy(update={"name": "dcgan1"})}))
    assert result.status == "finished" and result.step == 18  # 2 epochs x 9 batches, one critic step each
    client = tracking.get_client(config.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[tracking.MODEL_TAG] == "dcgan1" and run.data.tags[tracking.STATUS_TAG] == "finished"
    p = run.data.params
    assert p["model.name"] == "dcgan1" and p["train.batch_size"] == "4" and p["model.g_width"] == "4"
    assert p["mel.n_mels"] == "128" and p["dataset.clips"] == "36" and len(p["dataset.fingerprint"]) == 16
    assert p["dataset.path"] == str(small_dataset.resolve()) == tracking.run_dataset(result.run_id, config.tracking.uri)
    assert int(p["params.generator"]) > 0 and int(p["params.critic"]) > 0 and p["optim.lr"] == "0.0002"
    for key in ("d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm", "samples_per_s"):
        steps = [m.step for m in client.get_metric_history(result.run_id, key)]
        assert sorted(steps) == list(range(1, 19)), key
    files = artifacts(client, result.run_id)
    assert {"checkpoints/generator-latest.pt", "checkpoints/training-state-latest.pt",
            "checkpoints/generator-epoch-1.pt", "checkpoints/generator-epoch-2.pt", "samples/epoch-1.png",
            "samples/epoch-2.png", "samples/step-0000005.png", "samples/step-0000015.png", "plots/losses.png",
            "config/config.resolved.yaml"} <= files
    grid = Path(client.download_artifacts(result.run_id, "samples/epoch-2.png", str(tmp_path / "dl")))
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and grid.stat().st_size > 20_000

    # the checkpoint, fetched back through tracking, is self-describing and weights_only-loadable
    path = tracking.download_checkpoint(result.run_id, uri=config.tracking.uri, dst=tmp_path / "ck")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == ckpt.GENERATOR_FORMAT
    g, meta = ckpt.load_generator(path)
    assert meta["run_id"] == result.run_id and meta["step"] == 18 and meta["epoch"] == 2
    assert meta["model"] == "dcgan1" and meta["resolution"] == 32 and meta["mel_config"]["n_mels"] == 128
    assert g(torch.randn(2, 16)).shape == (2, 1, 32, 32)
    state = torch.load(tracking.download_checkpoint(result.run_id, "1", uri=config.tracking.uri), weights_only=True)
    assert ckpt.read_meta(path)["step"] == 18 and state["format"] == ckpt.GENERATOR_FORMAT
    full = torch.load(result.run_dir / "checkpoints" / "training-state-latest.pt", weights_only=True)
    assert full["progress"]["step"] == 18 and set(full) >= {"generator", "critic", "opt_g", "opt_d", "rng"}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "training-state-latest.pt", weights_only=True)
    out = {f"g.{k}": v for k, v in state["generator"].items()}
    out.update({f"d.{k}": v for k, v in state["critic"].items()})
    for name in ("opt_g", "opt_d"):
        for i, s in state[name]["state"].items():
            out.update({f"{name}.{i}.{k}": v for k, v in s.items()})
    if state.get("ema"):
        out.update({f"ema.{k}": v for k, v in state["ema"]["module"].items()})
    if state.get("augment"):
        out.update({"augment.p": torch.tensor(state["augment"]["p"]), "augment.rng": state["augment"]["rng"]})
    def leaves(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                leaves(f"{prefix}.{k}", x)
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                leaves(f"{prefix}.{i}", x)
        else:
            out[prefix] = torch.as_tensor(v)

    leaves("loss", state.get("loss") or {})
    return out


# every option of the recipe at once, so a resume must restore all of their state
RECIPE = {"train.ema_decay": 0.9, "train.ema_warmup_steps": 2, "train.augment": "adaptive", "train.augment_p": 0.3,
          "train.augment_interval": 1, "train.augment_speed": 40, "train.r1_gamma": 1.0, "train.r1_every": 3,
          "train.loss": "hinge", "model.spectral_norm": True, "data.normalize": "per_bin", "train.lr_g": 1e-4,
          "train.lr_d": 4e-4, "model.minibatch_std": True, "model.g_upsample": "nearest",
          "model.d_time_branch": True, "model.g_time_branch": True, "model.d_rhythm_branch": True,
          "train.lr_decay": "linear", "train.lr_decay_start": 0.5, "train.lr_decay_final": 0.1,
          "train.rhythm_match": 1.0, "data.crop": "random", "train.channels_last": True,
          "train.ema_rampup": 0.5}


def preempt_after(monkeypatch, steps: int) -> None:
    """SIGTERM this process right after generator step ``steps``, as a preempted pod gets it."""
    from pipeline.train import loop

    real, calls = loop.gan_step, []

    def step(*args, **kw):
        out = real(*args, **kw)
        calls.append(1)
        if len(calls) == steps:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(loop, "gan_step", step)


@pytest.mark.slow
@pytest.mark.parametrize("model,steps,options", [("dcgan2", 10, {}), ("wgan-gp", 2, {}), ("dcgan2", 6, RECIPE)],
                         ids=["dcgan2", "wgan-gp", "dcgan2-recipe"])
def test_resume_equals_an_uninterrupted_run(tmp_path, small_dataset, model, steps, options, monkeypatch):
    # dcgan2: dropout in both networks (global RNG), 20 steps cross two epoch ends;
    # wgan-gp: 5 critic steps each, interpolation noise from the latent RNG;
    # recipe: EMA, adaptive augmentation (own RNG, p), lazy R1 (counter), SN (power iteration buffers)
    def cfg(sub):
        c = make_config(tmp_path / sub, small_dataset, max_steps=2 * steps, epochs=10)
        return load_config(None, {**flat(c), "model.name": model, **options})

    full = train(cfg("full"))
    with monkeypatch.context() as m:
        preempt_after(m, steps)
        first = train(cfg("split"))
    assert first.status == "preempted" and first.step == steps
    mid = _weights(first.run_dir)  # the state the resume starts from
    second = train(cfg("split"), resume=True)  # the same settings: resumed in place
    assert second.step == 2 * steps and second.run_id == first.run_id  # the same MLflow run goes on
    a, b = _weights(full.run_dir), _weights(second.run_dir)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    # ...and the weights did move between the checkpoint and the end: the resume trained
    moved = [k for k in mid if k.startswith("g.") and mid[k].is_floating_point() and not torch.equal(mid[k], b[k])]
    assert {k for k in mid if k.startswith("g.") and k.endswith(".weight")} <= set(moved)
    client = tracking.get_client(f"sqlite:///{tmp_path / 'split' / 'mlflow.db'}")
    steps_logged = sorted(m.step for m in client.get_metric_history(first.run_id, "g_loss"))
    assert steps_logged == list(range(1, 2 * steps + 1))
    if model == "wgan-gp":
        assert len(client.get_metric_history(first.run_id, "gradient_penalty")) == 2 * steps


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, small_dataset):
    runs = [train(make_config(tmp_path / str(i), small_dataset, max_steps=3, seed=seed))
            for i, seed in enumerate((0, 0, 1))]
    a, b, c = (_weights(r.run_dir) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_exploding_losses_stop_the_run_visibly(tmp_path, small_dataset):
    config = make_config(tmp_path, small_dataset, max_abs_loss=1e-6, divergence_patience=3, checkpoint_every=1)
    result = train(config)
    assert result.status == "diverged" and result.step == 3 and "exploded" in result.reason
    run = tracking.get_client(config.tracking.uri).get_run(result.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[tracking.STATUS_TAG] == "diverged" and "exploded" in run.data.tags[tracking.REASON_TAG]
    # the checkpoint of the last step before the stop stays; the diverged step wrote none
    assert ckpt.read_meta(result.run_dir / "checkpoints" / "generator-latest.pt")["step"] == 2
    assert EXIT_CODES["diverged"] != 0


def test_divergence_guard_reasons():
    guard = DivergenceGuard(max_abs=100.0, patience=2)
    assert guard.check({"d_loss": 1.0, "g_loss": 2.0}, 1, 0) is None
    assert "nan" in guard.check({"d_loss": float("nan"), "g_loss": 2.0}, 5, 3)
    assert guard.check({"d_loss": 1e3, "g_loss": 2.0}, 6, 3) is None  # one step over the bound is tolerated
    assert "exploded" in guard.check({"d_loss": 1e3, "g_loss": 2.0}, 7, 3)
    assert "epoch 4" in DivergenceGuard(1.0, 1).check({"g_loss": float("inf")}, 1, 3)


def test_study_run_caps_samples_with_a_warning(tmp_path, small_dataset, caplog):
    preset = tmp_path / "study.yaml"
    preset.write_text(
        "data: {resolution: 32}\nmodel: {g_width: 4, d_width: 4, latent_dim: 8}\n"
        f"train: {{batch_size: 4, progress: false, max_steps: 2, out_dir: {tmp_path / 'train'},\n"
        "        runs: {wgan-wc-60k-5ep: {model: wgan-wc, epochs: 5, max_samples: 60000}}}\n"
        f"tracking: {{uri: 'sqlite:///{tmp_path / 'mlflow.db'}', experiment: study}}\n")
    args = argparse.Namespace(config=str(preset), study_run="wgan-wc-60k-5ep", model=None, dataset=str(small_dataset),
                              epochs=None, max_samples=None, max_steps=None, batch_size=None, seed=None,
                              device=None, out=None, resume=False, max_minutes=None, threads=None)
    config, label = resolve(args)
    assert (config.model.name, config.train.epochs, config.data.max_samples, label) == \
        ("wgan-wc", 5, 60000, "wgan-wc-60k-5ep")
    with caplog.at_level(logging.WARNING):
        result = train(config, label=label)
    assert "60000 exceeds the 36 clips" in caplog.text
    params = tracking.run_params(result.run_id, config.tracking.uri)
    assert params["dataset.clips"] == "36" and params["data.max_samples"] == "60000"
    assert params["optim.clip_value"] == "0.01" and params["optim.n_critic"] == "5"
    assert (tmp_path / "train" / "wgan-wc-60k-5ep" / "LATEST").is_file()
    args.study_run = "nope"
    with pytest.raises(UserError, match="wgan-wc-60k-5ep"):
        resolve(args)
    with pytest.raises(UserError, match="--resume"):
        train(make_config(tmp_path / "none", small_dataset), resume=True)


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path, small_dataset):
    out = tmp_path / "train"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    preset = tmp_path / "tiny.yaml"
    preset.write_text("data: {resolution: 32}\nmodel: {g_width: 4, d_width: 4, latent_dim: 8}\n"
                      "train: {progress: false, n_samples: 4, sample_every: 100000}\n")
    cmd = [sys.executable, "-m", "pipeline.cli", "train", "--config", str(preset),
           "--model", "wgan-gp", "--dataset", str(small_dataset), "--out", str(out), "--batch-size", "4",
           "--epochs", "1000"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    try:
        pointer = out / "wgan-gp" / "LATEST"
        deadline = time.monotonic() + 120
        while not pointer.is_file():  # training has started once the run folder exists
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.2)
        time.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, output
    run_id = pointer.read_text().strip()
    state = torch.load(out / "wgan-gp" / run_id / "checkpoints" / "training-state-latest.pt", weights_only=True)
    assert state["progress"]["step"] >= 1
    run = tracking.get_client(env["MLFLOW_TRACKING_URI"]).get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags[tracking.STATUS_TAG] == "preempted"


def test_prometheus_serves_and_pushes():
    import http.server
    import threading
    import urllib.request

    pushed = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            pushed.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        do_POST = do_PUT

        def log_message(self, *a):
            pass

    gw = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=gw.serve_forever, daemon=True).start()
    prom = Prometheus("dcgan1", port=0, pushgateway=f"127.0.0.1:{gw.server_port}")
    try:
        prom.update(12, 2, {"d_loss": 0.5, "g_loss": 1.5}, 321.0)
        body = urllib.request.urlopen(f"http://127.0.0.1:{prom.server.server_port}/metrics").read().decode()
        assert 'technogan_train_step{model="dcgan1"} 12.0' in body
        assert 'technogan_train_loss{loss="g_loss",model="dcgan1"} 1.5' in body
        assert 'technogan_train_samples_per_second{model="dcgan1"} 321.0' in body
    finally:
        prom.close()
        gw.shutdown()
    assert pushed and "/job/technogan-train/model/dcgan1" in pushed[0][0]
    assert b"technogan_train_epoch" in pushed[0][1]


# ----------------------------------------------------------------------------- resume with other settings (issue 12, item 7)

def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@pytest.mark.slow
def test_resume_with_other_settings_is_refused_naming_the_keys(tmp_path, small_dataset, monkeypatch):
    import shutil
    import yaml

    base = make_config(tmp_path, small_dataset, max_steps=6, epochs=10)
    with monkeypatch.context() as m:
        preempt_after(m, 2)
        first = train(base)
    assert first.status == "preempted"
    other_data = tmp_path / "copy_of_dataset"
    shutil.copytree(small_dataset, other_data)
    changes = {  # one of each kind of setting a resume might be given by mistake
        "train.batch_size": 8, "train.lr": 1e-3, "train.seed": 1, "train.max_steps": 12, "train.epochs": 11,
        "model.g_width": 8, "model.latent_dim": 8, "model.g_dropout": 0.1, "data.max_samples": 20,
        "data.seed": 3, "train.n_critic": 2, "train.device": "cpu", "mel.top_db": 70.0,
        "tracking.experiment": "another", "train.dataset": str(other_data),
    }
    for key, value in changes.items():
        changed = load_config(None, {**_overrides(base), key: value})
        with pytest.raises(UserError) as e:
            train(changed, resume=True)
        shown = "dataset.path" if key == "train.dataset" else key
        assert shown in str(e.value) and "--allow-changed-config" in str(e.value), (key, str(e.value))
    # nothing was started or changed by the refusals
    client = tracking.get_client(base.tracking.uri)
    assert len(client.search_runs([client.get_experiment_by_name("test").experiment_id])) == 1
    # explicitly allowed: the weights go on, as a new run whose params are its config
    changed = load_config(None, {**_overrides(base), "train.batch_size": 8, "train.max_steps": 4})
    forked = train(changed, resume=True, allow_changed_config=True)
    assert forked.status == "finished" and forked.step == 4 and forked.run_id != first.run_id
    run = client.get_run(forked.run_id)
    assert run.data.tags["technogan.resumed_from"] == first.run_id
    assert run.data.tags["technogan.resumed_at_step"] == "2"
    assert client.get_run(first.run_id).data.params["train.batch_size"] == "4"
    # MLflow params and config.resolved.yaml agree, for both runs
    for r in (first, forked):
        resolved = yaml.safe_load((r.run_dir / "config.resolved.yaml").read_text())
        resolved["train"].pop("runs", None)
        resolved.pop("mel")  # params carry the dataset's mel config (the same here)
        params = client.get_run(r.run_id).data.params
        for key, value in _flat(resolved).items():
            assert params[key] == (value if isinstance(value, str) else json.dumps(value)), key


def _overrides(config):
    """Dotted overrides that rebuild ``config`` from the embedded defaults."""
    d = config.model_dump(mode="json")
    d["train"].pop("runs", None)
    return {k: v for k, v in _flat(d).items() if v is not None}


@pytest.mark.slow
def test_cli_resume_with_another_batch_size_exits_2(tmp_path, small_dataset, capsys, monkeypatch):
    from pipeline.cli import main as cli_main

    preset = tmp_path / "tiny.yaml"
    preset.write_text("data: {resolution: 32}\nmodel: {g_width: 4, d_width: 4, latent_dim: 8}\n"
                      "train: {progress: false, n_samples: 4, sample_every: 100000, max_steps: 2}\n"
                      f"tracking: {{uri: 'sqlite:///{tmp_path / 'mlflow.db'}', experiment: cli}}\n")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--config", str(preset), "--model", "dcgan1", "--dataset", str(small_dataset),
            "--out", str(tmp_path / "train"), "--batch-size", "4"]
    assert cli_main(argv) == 0
    assert cli_main([*argv[:-1], "8", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "train.batch_size: 4 -> 8" in err and "Traceback" not in err
    assert cli_main([*argv, "--resume", "--allow-changed-config"]) == 0  # nothing differs: same run goes on
    client = tracking.get_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cli").experiment_id])
    assert len(runs) == 1 and "technogan.resumed_from" not in runs[0].data.tags


# ----------------------------------------------------------------------------- divergence (issue 12, item 8)

@pytest.mark.slow
def test_a_run_whose_losses_become_nan_or_inf_exits_3(tmp_path, small_dataset, capsys, monkeypatch):
    from pipeline.cli import main as cli_main

    preset = tmp_path / "tiny.yaml"
    # an absurd but finite learning rate: the WGAN-GP scores overflow within a few steps
    preset.write_text("data: {resolution: 32}\nmodel: {g_width: 4, d_width: 4, latent_dim: 8}\n"
                      "train: {progress: false, n_samples: 4, sample_every: 100000, lr: 1.0e+30, max_steps: 50,\n"
                      "        divergence_patience: 1000}\n"
                      f"tracking: {{uri: 'sqlite:///{tmp_path / 'mlflow.db'}', experiment: diverging}}\n")
    monkeypatch.chdir(tmp_path)
    code = cli_main(["train", "--config", str(preset), "--model", "wgan-gp", "--dataset", str(small_dataset),
                     "--out", str(tmp_path / "train"), "--batch-size", "4"])
    out = capsys.readouterr().out
    assert code == 3 and "diverged" in out and re.search(r"\b(nan|inf)\b", out, re.IGNORECASE), out


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", "true"])
def test_a_non_finite_learning_rate_is_refused_before_training(tmp_path, capsys, value):
    from pipeline.cli import main as cli_main

    preset = tmp_path / "bad.yaml"
    preset.write_text(f"train: {{lr: {value}}}\n")
    code = cli_main(["train", "--config", str(preset), "--dataset", str(tmp_path / "dataset"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and f"{preset}: train.lr:" in err and "Traceback" not in err
    assert not (tmp_path / "dcgan1").exists()


def test_resume_differences_name_every_changed_setting_and_nothing_else():
    from pipeline.train.loop import resume_differences

    base = load_config(None)
    meta = {"config": base.model_dump(mode="json"), "dataset": "/data/a", "dataset_fingerprint": "f1"}
    assert resume_differences(meta, base, Path("/data/a"), "f1") == []
    changed = load_config(None, {"train.batch_size": 8, "model.g_width": 8, "train.lr": 1e-3})
    assert resume_differences(meta, changed, Path("/data/a"), "f1") == [
        "model.g_width: 16 -> 8", "train.batch_size: 32 -> 8", "train.lr: None -> 0.001"]
    assert resume_differences(meta, base, Path("/data/b"), "f2") == [
        "dataset.fingerprint: 'f1' -> 'f2'", "dataset.path: '/data/a' -> '/data/b'"]
    menu = load_config(None, {"train.runs": {"x": {"model": "dcgan1", "epochs": 1}}})
    assert resume_differences(meta, menu, Path("/data/a"), "f1") == []  # named runs are a menu, not a setting
    assert resume_differences({"dataset": "/data/a"}, base, Path("/data/a"), "f1")  # unknown settings: refused


def test_a_time_budget_ends_the_run_cleanly_with_a_checkpoint(tmp_path, small_dataset):
    # a budget far below one step's time: the run stops after its first step, finished
    config = make_config(tmp_path, small_dataset, epochs=50, max_minutes=1e-5, checkpoint_every=1000)
    result = train(config)
    assert result.status == "finished" and result.step == 1 and "time budget" in (result.reason or "")
    meta = ckpt.read_meta(result.generator_path)
    assert meta["step"] == 1
    state = ckpt.load_training_state(result.run_dir / "checkpoints" / "training-state-latest.pt")
    assert state["progress"]["step"] == 1
    run = tracking.get_client(config.tracking.uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and tracking.REASON_TAG not in run.data.tags
    assert "time budget" in run.data.tags["technogan.end_reason"]


def test_a_resumed_run_goes_on_with_its_time_budgets_clock(tmp_path, small_dataset):
    first = train(make_config(tmp_path, small_dataset, max_steps=3, epochs=10))
    spent = ckpt.load_training_state(first.run_dir / "checkpoints" / "training-state-latest.pt")
    spent_s = spent["progress"]["train_seconds"]
    assert spent_s > 0
    # a budget the first run has already used up: the resumed run stops after one step, not 3 more
    budget = make_config(tmp_path, small_dataset, max_steps=6, epochs=10, max_minutes=spent_s / 60)
    second = train(budget, resume=True, allow_changed_config=True)
    assert second.status == "finished" and second.step == 4 and "time budget" in (second.reason or "")
    state = ckpt.load_training_state(second.run_dir / "checkpoints" / "training-state-latest.pt")
    assert state["progress"]["train_seconds"] > spent_s  # the clock went on from where it was saved


def test_epoch_artifacts_are_throttled_by_time_but_the_last_epoch_always_has_them(tmp_path, small_dataset):
    # 5 short epochs with an interval far longer than the run: only the first and the last
    config = make_config(tmp_path, small_dataset, epochs=5, artifact_every_s=3600, checkpoint_every=1000)
    result = train(config)
    names = {p.name for p in (result.run_dir / "checkpoints").iterdir()}
    assert {n for n in names if n.startswith("generator-epoch-")} == {"generator-epoch-1.pt", "generator-epoch-5.pt"}
    samples = {p.name for p in (result.run_dir / "samples").iterdir()}
    assert samples == {"epoch-1.png", "epoch-5.png"}


def test_training_threads_follow_the_config_and_are_restored(tmp_path, small_dataset):
    from pipeline.train.loop import train_threads

    before = torch.get_num_threads()
    config = make_config(tmp_path, small_dataset, epochs=1, threads=1, max_steps=2)
    result = train(config)
    client = tracking.get_client(config.tracking.uri)
    assert client.get_run(result.run_id).data.params["run.threads"] == "1"
    assert torch.get_num_threads() == before
    assert train_threads(3) == 3 and 1 <= train_threads(None) <= 4


def test_cli_budget_and_threads_flags_reach_the_config():
    from pipeline.train.cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    config, _ = resolve(p.parse_args(["--max-minutes", "2.5", "--threads", "3"]))
    assert (config.train.max_minutes, config.train.threads) == (2.5, 3)
    with pytest.raises(UserError, match="max_minutes"):
        resolve(p.parse_args(["--max-minutes", "0"]))


def test_the_recipe_options_reach_the_run(tmp_path, small_dataset, monkeypatch):
    """Each option of the recipe leaves a trace that would be missing if it were ignored."""
    from pipeline.train.data import RandomWindows

    windows, cut = [], RandomWindows.batch
    monkeypatch.setattr(RandomWindows, "batch", lambda self, ix, *a: windows.append(len(ix)) or cut(self, ix, *a))
    base = make_config(tmp_path, small_dataset, max_steps=6, epochs=10)
    config = load_config(None, {**flat(base), "model.name": "dcgan2", **RECIPE})
    result = train(config)
    state = torch.load(result.run_dir / "checkpoints" / "training-state-latest.pt", weights_only=True)
    served = torch.load(result.generator_path, weights_only=True)["state_dict"]
    # EMA: the checkpoint that is sampled, scored and served holds the average, not the raw weights
    weights = [k for k in served if k.endswith(".weight")]
    assert all(torch.equal(served[k], state["ema"]["module"][k]) for k in weights)
    assert any(not torch.equal(served[k], state["generator"][k]) for k in weights)
    assert state["ema"]["rampup"] == 0.5  # its half-life grows with the steps (test_ema checks the decays)
    # adaptive augmentation: p is logged every step and moved from its start
    client = tracking.get_client(config.tracking.uri)
    ps = [m.value for m in sorted(client.get_metric_history(result.run_id, "augment_p"), key=lambda m: m.step)]
    assert len(ps) == 6 and ps[-1] != pytest.approx(0.3)
    # lazy R1 every 3rd critic step, hinge loss, two learning rates, spectral norm in the critic
    assert sorted(m.step for m in client.get_metric_history(result.run_id, "r1")) == [1, 4]  # every 3rd critic step, from the first
    params = client.get_run(result.run_id).data.params
    assert (params["optim.loss"], params["optim.lr_g"], params["optim.lr_d"]) == ("hinge", "0.0001", "0.0004")
    # linear decay over the 6 steps' second half, to 0.1: the rates of steps 5 and 6 are 0.7 and 0.4 times
    scales = [m.value for m in sorted(client.get_metric_history(result.run_id, "lr_scale"), key=lambda m: m.step)]
    assert scales == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.7, 0.4])
    assert state["opt_g"]["param_groups"][0]["lr"] == pytest.approx(0.4e-4)
    assert state["opt_d"]["param_groups"][0]["lr"] == pytest.approx(1.6e-4)
    assert any("parametrizations" in k for k in state["critic"])
    # minibatch std: the critic's last convolution has one more input channel than the figure's
    last = [v for k, v in state["critic"].items() if k.startswith("net.") and k.endswith("original")][-1]
    assert last.shape[1] == 4 * config.model.d_width + 1
    # time branches: trained beside the figures' layers, in both networks
    for net in ("critic", "generator"):
        assert any(k.startswith("time_branch.") for k in state[net]), net
    assert any(k.startswith("time_branch.") for k in served)
    assert any(k.startswith("rhythm_branch.") for k in state["critic"])  # the critic's rhythm path trained too
    matched = client.get_metric_history(result.run_id, "rhythm_match")  # the generator's rhythm matching
    assert len(matched) == 6 and all(m.value > 0 for m in matched)
    # per-bin normalisation: saved in the checkpoint, and the generator's output stays a mel in [-1, 1]
    g, meta = ckpt.load_generator(result.generator_path)
    assert meta["normalization"]["kind"] == "per_bin" and len(meta["normalization"]["mean"]) == 32
    with torch.no_grad():
        out = g(torch.randn(8, 16))
    assert out.min() >= -1 and out.max() <= 1
    # channels last: the networks trained in that layout; the served checkpoint is in the standard one
    convs = [v for k, v in state["critic"].items() if v.dim() == 4 and v.shape[1] > 1]
    assert convs and all(v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous() for v in convs)
    assert all(v.is_contiguous() for v in served.values())
    # random windows: every real batch of the run was cut from the stored clips
    assert windows == [base.train.batch_size] * 6


def test_amp_auto_trains_in_bfloat16_on_a_cpu_that_has_it_and_in_float32_on_one_that_has_not(
        tmp_path, small_dataset, monkeypatch):
    from pipeline.train import loop

    cpu = torch.device("cpu")
    assert loop.autocast_for(cpu, True) is None and loop.autocast_for(cpu, False) is None  # true: CUDA only
    runs = {}
    for name, amp, native in (("fp32", True, True), ("auto-no-bf16", "auto", False), ("auto", "auto", True)):
        monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda native=native: native)
        ctx = loop.autocast_for(cpu, amp)
        assert (ctx is not None and ctx.fast_dtype == torch.bfloat16) == (name == "auto")
        result = train(make_config(tmp_path / name, small_dataset, max_steps=3, amp=amp))
        params = tracking.get_client(f"sqlite:///{tmp_path / name / 'mlflow.db'}").get_run(result.run_id).data.params
        assert params["run.precision"] == ("bfloat16" if name == "auto" else "float32")
        runs[name] = _weights(result.run_dir)
    # float32 where the CPU lacks bfloat16: the same weights as amp off; bfloat16 moved them differently
    assert all(torch.equal(runs["fp32"][k], runs["auto-no-bf16"][k]) for k in runs["fp32"])
    assert not all(torch.equal(runs["fp32"][k], runs["auto"][k]) for k in runs["fp32"])


def test_the_best_checkpoint_is_the_one_with_the_lowest_logged_score(tmp_path, small_dataset):
    base = make_config(tmp_path, small_dataset, max_steps=8, epochs=10, score_every=2, score_clips=32)
    config = load_config(None, {**flat(base), "evaluate.encoder_steps": 20, "evaluate.encoder_dir": str(tmp_path / "enc")})
    result = train(config)
    client = tracking.get_client(config.tracking.uri)
    scores = {m.step: m.value for m in client.get_metric_history(result.run_id, "score.fd_learned")}
    assert sorted(scores) == [2, 4, 6, 8]  # every 2 steps; the last step is scored once
    best_step = min(scores, key=lambda s: scores[s])
    meta = ckpt.read_meta(result.run_dir / "checkpoints" / "generator-best.pt")
    assert meta["step"] == best_step and meta["score"]["fd_learned"] == pytest.approx(scores[best_step])
    run = client.get_run(result.run_id)
    assert run.data.tags["technogan.best_step"] == str(best_step)
    assert run.data.metrics["best.fd_learned"] == pytest.approx(scores[best_step])
    assert "checkpoints/generator-best.pt" in artifacts(client, result.run_id)
    # the score draws nothing from training's random streams: the weights equal an unscored run's
    plain = train(make_config(tmp_path / "plain", small_dataset, max_steps=8, epochs=10))
    a, b = _weights(result.run_dir), _weights(plain.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
