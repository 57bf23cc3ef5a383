"""The training loop shared by all four GANs.

``train(config)`` trains ``config.model.name`` on a mel dataset and returns a
``TrainResult``. Local files of one run::

    <train out_dir>/<label>/LATEST                      run id of the newest run of this label
    <train out_dir>/<label>/<run_id>/checkpoints/       generator-latest.pt, generator-epoch-N.pt,
                                                        training-state-latest.pt
    <train out_dir>/<label>/<run_id>/samples/, plots/   the images also logged to MLflow

``label`` is the study run name (``--run dcgan2-60k``) or the model name. A step is one
generator update after ``n_critic`` critic updates, each on its own real batch; ``epochs``
count passes over the (rank's share of the) training set. Checkpoints are written every
``train.checkpoint_every`` steps, at each epoch end, at the end and on SIGTERM; a diverged
run writes none (the last good one stays) and ends FAILED with the reason as a tag.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pipeline import checkpoint as ckpt
from pipeline.config import RunConfig
from pipeline.dataset import MelDataset
from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_text, remove_dead_temps
from pipeline.models.networks import check_resolution
from pipeline.models.registry import get_model
from pipeline.train import distributed
from pipeline.train.data import BatchStream
from pipeline.train.monitor import DivergenceGuard, Prometheus
from pipeline.train.plots import loss_plot, sample_grid
from pipeline.train.step import gan_step

log = logging.getLogger(__name__)

LATEST_POINTER = "LATEST"
STATE_FILE = "training-state-latest.pt"
GENERATOR_FILE = "generator-latest.pt"
RESULT_FILE = "result.json"
# MLflow run status per outcome
MLFLOW_STATUS = {"finished": "FINISHED", "preempted": "KILLED", "diverged": "FAILED", "failed": "FAILED"}
SAMPLE_SEED_OFFSET = 7919  # the fixed latent batch of the sample grids is independent of training


@dataclass
class TrainResult:
    model: str
    label: str
    status: str  # finished | preempted | diverged | failed
    step: int
    epoch: int
    run_id: str | None = None
    reason: str | None = None
    run_dir: Path | None = None
    generator_path: Path | None = None
    samples_per_s: float = 0.0  # real samples per second over the run's steps after the first
    step_rates: list[float] = field(default_factory=list)  # samples/s of each step, loop overhead included
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "finished"


def resolve_dataset(config: RunConfig, dataset: str | Path | None = None) -> Path:
    return Path(dataset or config.train.dataset or Path(config.out_dir) / "dataset").resolve()


def resolve_out(config: RunConfig, out_dir: str | Path | None = None) -> Path:
    return Path(out_dir or config.train.out_dir or Path(config.out_dir) / "train").resolve()


def config_hash(config: RunConfig, data_dir: Path) -> str:
    """What a finished run depends on: model, train and data sections and the dataset path."""
    import hashlib

    relevant = {k: config.model_dump(mode="json")[k] for k in ("model", "train", "data")}
    relevant["train"].pop("runs", None)
    relevant["dataset"] = str(data_dir)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def previous_result(config: RunConfig, label: str, dataset: str | Path | None = None,
                    out_dir: str | Path | None = None) -> dict | None:
    """The result of the latest run of ``label`` if it finished with this very config (else None):
    lets `technogan run` skip training it again."""
    run_dir = latest_run_dir(resolve_out(config, out_dir), label)
    path = run_dir / RESULT_FILE if run_dir else None
    if path is None or not path.is_file():
        return None
    result = json.loads(path.read_text())
    if result.get("status") != "finished" or not result.get("run_id") or result.get("config_hash") != config_hash(
            config, resolve_dataset(config, dataset)):
        return None
    return result


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or not d:
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def resume_differences(saved_meta: dict[str, Any], config: RunConfig, data_dir: Path,
                       fingerprint: str) -> list[str]:
    """What differs between the settings a checkpoint was trained with and ``config``
    (``"train.batch_size: 4 -> 8"``), over everything the run logged as params; the
    named runs (train.runs) are a menu, not a setting, and are left out."""
    saved = saved_meta.get("config")
    if not isinstance(saved, dict):
        return ["<settings>: the checkpoint does not record them"]
    now = config.model_dump(mode="json")
    saved, now = dict(saved), dict(now)
    for d in (saved, now):
        d["train"] = {k: v for k, v in (d.get("train") or {}).items() if k != "runs"}
    a, b = _flat(saved), _flat(now)
    a["dataset.path"], b["dataset.path"] = saved_meta.get("dataset"), str(data_dir)
    a["dataset.fingerprint"], b["dataset.fingerprint"] = saved_meta.get("dataset_fingerprint"), fingerprint
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def latest_run_dir(out: Path, label: str) -> Path | None:
    """The local folder of the newest run of ``label`` (its ``LATEST`` pointer), if any."""
    pointer = out / label / LATEST_POINTER
    return out / label / pointer.read_text().strip() if pointer.is_file() else None


def latest_state(out: Path, label: str) -> Path | None:
    """The training state ``--resume`` continues from, if any."""
    run_dir = latest_run_dir(out, label)
    path = run_dir / "checkpoints" / STATE_FILE if run_dir else None
    return path if path is not None and path.is_file() else None


class _SigtermFlag:
    """SIGTERM (a preempted pod) sets a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.set = False
        self._previous: Any = None  # whatever handler was installed before

    def __enter__(self) -> "_SigtermFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if not self.set:
            log.warning("SIGTERM: finishing this step, saving a checkpoint, then exiting")
        self.set = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        # bfloat16 keeps float32's range: no loss scaling, and WGAN scores cannot overflow
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return None


def _rng_state(latent_rng: torch.Generator, device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "latent": latent_rng.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], latent_rng: torch.Generator, device: torch.device) -> None:
    # RNG states are CPU byte tensors whatever map_location moved them to
    torch.set_rng_state(state["torch"].cpu())
    latent_rng.set_state(state["latent"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def train(config: RunConfig, *, dataset: str | Path | None = None, resume: bool = False, label: str | None = None,
          out_dir: str | Path | None = None, allow_changed_config: bool = False) -> TrainResult:
    """Train ``config.model.name`` as configured; see the module docstring for the files.

    ``resume`` continues the latest run of ``label`` from its training state, in the same
    MLflow run, and only with the settings that run started with (its params and
    config.resolved.yaml must keep describing it): other settings raise a UserError naming
    the keys, unless ``allow_changed_config``, which continues from the weights and
    optimiser state as a new MLflow run tagged ``technogan.resumed_from``.

    Under torchrun every rank calls this; only rank 0 talks to MLflow and writes files.
    """
    from tracking import runs as tracking

    dist = distributed.setup(config.train.device)
    try:
        return _train(config, dist, tracking, dataset, resume, label, out_dir, allow_changed_config)
    finally:
        distributed.teardown(dist)


def _train(config: RunConfig, dist: distributed.Dist, tracking, dataset, resume, label, out_dir,
           allow_changed_config: bool = False) -> TrainResult:
    tc, mc = config.train, config.model
    spec = get_model(mc.name)
    label = label or spec.name
    resolution = config.data.resolution
    check_resolution(resolution)
    device = dist.device
    data_dir = resolve_dataset(config, dataset)
    out = resolve_out(config, out_dir)

    # ---------------------------------------------------------------- data
    if not (data_dir / "index.jsonl").is_file():
        raise UserError(f"{data_dir}: no mel dataset here (make one with `technogan segment`, or pass --dataset)")
    ds = MelDataset(data_dir, resolution=resolution, max_samples=config.data.max_samples, seed=config.data.seed)
    mel_config = ds.mel_config
    fingerprint = ds.fingerprint()  # hashes the whole index: once
    stream = BatchStream(ds, tc.batch_size, seed=tc.seed, rank=dist.rank, world=dist.world,
                         cache=tc.cache_in_memory, workers=tc.workers, pin_memory=device.type == "cuda",
                         progress=tc.progress)
    nb = stream.batches_per_epoch

    # ---------------------------------------------------------------- model, loss, optimisers
    torch.manual_seed(tc.seed + dist.rank)  # initial weights (DDP then copies rank 0's) and dropout
    generator = spec.build_generator(mc, resolution).to(device)
    critic = spec.build_critic(mc, resolution).to(device)
    settings = spec.settings(tc)
    loss = spec.make_loss(tc)
    opt_g, opt_d = spec.make_optimizers(generator, critic, tc)
    latent_rng = torch.Generator(device=device)
    latent_rng.manual_seed(tc.seed * 1_000_003 + dist.rank + 1)
    step = epoch = batch = samples_seen = 0
    history: dict[str, list[float]] = {}
    run_id: str | None = None
    resumed_from: str | None = None  # set when a resume with other settings starts a new MLflow run

    if resume:
        state_path = latest_state(out, label)
        if state_path is None:
            raise UserError(f"--resume: no checkpoint of {label!r} under {out} (train without --resume first)")
        state = ckpt.load_training_state(state_path, map_location=device)
        if state["meta"].get("model") != spec.name:
            raise UserError(f"{state_path}: a {state['meta'].get('model')} checkpoint, not {spec.name}")
        changed = resume_differences(state["meta"], config, data_dir, fingerprint)
        if changed and not allow_changed_config:
            raise UserError(
                f"--resume: the checkpoint {state_path} was trained with other settings; they differ in:\n  "
                + "\n  ".join(changed) + "\nresume with the settings the run started with, or pass "
                "--allow-changed-config to continue from its weights as a new MLflow run")
        generator.load_state_dict(state["generator"])
        critic.load_state_dict(state["critic"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        p = state["progress"]
        step, epoch, batch, samples_seen = p["step"], p["epoch"], p["batch_in_epoch"], p["samples_seen"]
        history = {k: list(v) for k, v in state["history"].items()}
        if dist.rank == 0:
            _set_rng_state(state["rng"], latent_rng, device)
        else:  # only rank 0's state is saved; other ranks continue on a seed of their own
            torch.manual_seed(tc.seed + dist.rank + 7 * step)
            latent_rng.manual_seed(tc.seed * 1_000_003 + dist.rank + 1 + 7 * step)
        run_id = state["meta"].get("run_id")
        if changed:
            log.warning("resuming %s with other settings (%s): continuing as a new MLflow run",
                        label, "; ".join(changed))
            resumed_from, run_id = run_id or str(state_path.parent.parent.name), None
        elif run_id is None:  # the run it continues never reached the tracking server
            resumed_from = state_path.parent.parent.name
        log.info("resuming %s from %s: step %d, epoch %d, batch %d", label, state_path, step, epoch + 1, batch)

    g_model = distributed.wrap(generator, dist)
    d_model = distributed.wrap(critic, dist)

    steps_per_run = (tc.epochs * nb) // settings.n_critic
    total_steps = min(steps_per_run, tc.max_steps) if tc.max_steps else steps_per_run
    step_samples = settings.n_critic * tc.batch_size * dist.world

    # ---------------------------------------------------------------- tracking (rank 0)
    run = None
    run_dir = None
    if dist.is_main:
        tr = config.tracking
        run = tracking.TrackedRun.start(
            tr.experiment, run_name=label, uri=tr.uri, run_id=run_id, spool_dir=tr.spool_dir,
            request_timeout_s=tr.request_timeout_s, max_backoff_s=tr.max_backoff_s,
            start_timeout_s=tr.start_timeout_s, flush_timeout_s=tr.flush_timeout_s,
            tags={tracking.MODEL_TAG: spec.name, tracking.STATUS_TAG: "running",
                  **({tracking.GIT_TAG: c} if (c := tracking.git_commit(Path(__file__).parent)) else {})})
        run_id = run.run_id  # None while the tracking server has not answered yet (created later)
        run_dir = out / label / run.key
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        remove_dead_temps(run_dir)
        atomic_write_text(out / label / LATEST_POINTER, run.key + "\n")
        run.set_tags({tracking.LOCAL_DIR_TAG: str(run_dir / "checkpoints"), "technogan.label": label})
        config.save(run_dir / "config.resolved.yaml")
        if not resume or resumed_from:
            params = config.model_dump(mode="json")
            params["train"].pop("runs", None)
            params["mel"] = mel_config.to_dict()  # the dataset's: what the model really saw
            run.log_params(params)
            run.log_params({
                "optim": {k: v for k, v in vars(settings).items()},
                "dataset": {"path": str(data_dir), "fingerprint": fingerprint, "clips": len(ds),
                            "clips_available": ds.available},
                "params": {"generator": _count(generator), "critic": _count(critic)},
                "run": {"label": label, "world_size": dist.world, "device": device.type,
                        "steps_per_epoch": nb // settings.n_critic, "total_steps": total_steps},
            })
            run.log_artifact(run_dir / "config.resolved.yaml", "config")
        if resumed_from:
            run.set_tags({"technogan.resumed_from": resumed_from, "technogan.resumed_at_step": step})
        elif resume:
            run.set_tags({"technogan.resumed_at_step": step})

    meta = {"model": spec.name, "model_config": mc.model_dump(mode="json"), "resolution": resolution,
            "latent_dim": mc.latent_dim, "mel_config": mel_config.to_dict(), "run_id": run_id, "label": label,
            "dataset": str(data_dir), "dataset_fingerprint": fingerprint}

    # the sample grids' fixed latent batch and real examples
    z_fixed = torch.randn(tc.n_samples, mc.latent_dim,
                          generator=torch.Generator().manual_seed(tc.seed + SAMPLE_SEED_OFFSET)).to(device)
    real_examples = torch.stack([ds[i] for i in range(min(4, len(ds)))])  # [4, 1, R, R]

    def save_checkpoint(epoch_done: int | None = None) -> Path:
        ck = run_dir / "checkpoints"
        gmeta = {**meta, "run_id": run.run_id, "step": step,
                 "epoch": epoch if epoch_done is None else epoch_done}  # epochs done
        gpath = ckpt.save_generator(ck / GENERATOR_FILE, generator, gmeta)
        ckpt.save_training_state(
            ck / STATE_FILE, generator=generator, critic=critic, opt_g=opt_g, opt_d=opt_d,
            progress={"step": step, "epoch": epoch, "batch_in_epoch": batch, "samples_seen": samples_seen},
            rng=_rng_state(latent_rng, device), history=history,
            meta={**gmeta, "config": config.model_dump(mode="json")})
        run.log_artifact(gpath, tracking.CHECKPOINT_DIR)
        run.log_artifact(ck / STATE_FILE, tracking.CHECKPOINT_DIR)
        if epoch_done is not None:
            epath = ckpt.save_generator(ck / f"generator-epoch-{epoch_done}.pt", generator, gmeta)
            run.log_artifact(epath, tracking.CHECKPOINT_DIR)
        return gpath

    def draw_samples(name: str, title: str) -> None:
        generator.eval()  # BatchNorm running statistics, no dropout; consumes no random numbers
        with torch.no_grad():
            fake = generator(z_fixed)  # [N, 1, R, R]
        generator.train()
        path = sample_grid(fake, real_examples, mel_config, run_dir / "samples" / f"{name}.png", title)
        run.log_artifact(path, "samples")

    def draw_losses() -> None:
        path = loss_plot(history, run_dir / "plots" / "losses.png",
                         f"{label}: generator and {spec.critic_kind} loss")
        run.log_artifact(path, "plots")

    # ---------------------------------------------------------------- the loop
    guard = DivergenceGuard(tc.max_abs_loss, tc.divergence_patience)
    prom = Prometheus(spec.name, tc.prometheus_port, tc.pushgateway) if dist.is_main and (
        tc.prometheus_port is not None or tc.pushgateway) else None
    autocast = _autocast(device, tc.amp)
    status, reason = "finished", None
    saved_step = step if resume else -1
    last_epoch_saved = epoch  # epochs before the current one were saved by the run that did them
    rates: list[float] = []
    bar = tqdm(total=total_steps, initial=step, desc=label, unit="step", dynamic_ncols=True,
               disable=not (tc.progress and dist.is_main))
    if dist.is_main:
        log.info("training %s: %d clips, %d batches of %d per epoch, %d critic step(s) per generator step, "
                 "%d steps, device %s, world %d; MLflow run %s at %s", label, len(ds), nb, tc.batch_size,
                 settings.n_critic, total_steps, device, dist.world, run_id or f"{run.key} (not created yet)", run.uri)

    stream_it = stream.iterate(epoch, batch, tc.epochs)
    try:
        with _SigtermFlag() as sigterm:
            t_last = time.perf_counter()
            while step < total_steps:
                reals, ended = [], []
                for _ in range(settings.n_critic):
                    item = next(stream_it, None)
                    if item is None:
                        break
                    e, b, real = item
                    reals.append(real.to(device, non_blocking=True))
                    epoch, batch = (e, b + 1) if b + 1 < nb else (e + 1, 0)
                    if b + 1 == nb:
                        ended.append(e + 1)
                if len(reals) < settings.n_critic:
                    break  # cannot happen while step < total_steps; kept as a guard
                numbers = gan_step(g_model, d_model, loss, opt_g, opt_d, reals, mc.latent_dim, latent_rng,
                                   autocast)
                step += 1
                samples_seen += step_samples
                values = {k: float(v) for k, v in numbers.items()}
                why = guard.check(values, step, epoch)
                stop, diverged = distributed.any_rank([sigterm.set, why is not None], dist)
                if diverged:
                    status, reason = "diverged", why or "diverged on another rank"
                    if dist.is_main:
                        run.log_metrics(values, step)  # the NaN/exploded values, visible in the UI
                    break
                now = time.perf_counter()
                rate = step_samples / max(now - t_last, 1e-9)
                t_last = now
                rates.append(rate)
                values["samples_per_s"] = rate
                values["epoch"] = epoch + batch / nb
                history.setdefault("step", []).append(step)
                for k in ("d_loss", "g_loss", "wasserstein", "gradient_penalty"):
                    if k in values:
                        history.setdefault(k, []).append(values[k])
                if dist.is_main:
                    run.log_metrics(values, step)
                    if prom:
                        prom.update(step, epoch, values, rate)
                    bar.update(1)
                    bar.set_postfix({"d": f"{values['d_loss']:.3f}", "g": f"{values['g_loss']:.3f}",
                                     "ep": f"{epoch + batch / nb:.2f}", "samples/s": f"{rate:.0f}"},
                                    refresh=False)
                    if step % tc.checkpoint_every == 0:
                        save_checkpoint()
                        saved_step = step
                    if step % tc.sample_every == 0:
                        draw_samples(f"step-{step:07d}", f"{label}: generated at step {step} (fixed latents)")
                    for e_done in ended:
                        save_checkpoint(epoch_done=e_done)
                        saved_step, last_epoch_saved = step, e_done
                        draw_samples(f"epoch-{e_done}", f"{label}: generated after epoch {e_done}, step {step}")
                        draw_losses()
                if stop:
                    status = "preempted"
                    break
            if status == "finished" and step >= steps_per_run:
                # the data is used up; the last few batches (fewer than n_critic) make no
                # whole step, so the last epoch ends here, with its checkpoint and grid
                epoch, batch = tc.epochs, 0
                if dist.is_main and last_epoch_saved < tc.epochs:
                    save_checkpoint(epoch_done=tc.epochs)
                    saved_step, last_epoch_saved = step, tc.epochs
                    draw_samples(f"epoch-{tc.epochs}", f"{label}: generated after epoch {tc.epochs}, step {step}")
        bar.close()
        if dist.is_main:
            if status == "diverged":
                log.error("%s stopped: %s; the last good checkpoint stays in %s", label, reason,
                          run_dir / "checkpoints")
            elif saved_step != step:
                save_checkpoint()
            if history:
                draw_losses()
    except BaseException as e:
        bar.close()
        status, reason = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        if prom:
            prom.close()
        if run is not None:
            tags = {tracking.STATUS_TAG: status}
            if reason:
                tags[tracking.REASON_TAG] = reason[:5000]
            run.set_tags(tags)
            run.finish(MLFLOW_STATUS[status])
            run_id = run.run_id  # a run created late, once the server answered

    steady = rates[1:] or rates
    mean_rate = len(steady) / sum(1.0 / r for r in steady) if steady else 0.0  # samples / total time
    if dist.is_main:
        log.info("%s %s at step %d (epoch %.2f), %.0f samples/s; checkpoints in %s", label, status, step,
                 epoch + batch / nb, mean_rate, run_dir / "checkpoints")
    gpath = run_dir / "checkpoints" / GENERATOR_FILE if run_dir else None
    if dist.is_main:
        atomic_write_text(run_dir / RESULT_FILE, json.dumps({
            "status": status, "reason": reason, "step": step, "epoch": epoch, "run_id": run_id,
            "samples_per_s": mean_rate, "config_hash": config_hash(config, data_dir)}, indent=2) + "\n")
    return TrainResult(model=spec.name, label=label, status=status, step=step, epoch=epoch, run_id=run_id,
                       reason=reason, run_dir=run_dir, generator_path=gpath if gpath and gpath.is_file() else None,
                       samples_per_s=mean_rate, step_rates=rates, history=history)
