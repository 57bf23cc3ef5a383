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

import functools
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from pipeline import checkpoint as ckpt
from pipeline.config import RunConfig
from pipeline.dataset import MelDataset
from pipeline.errors import UserError
from pipeline.models.networks import check_resolution, normalization_meta
from pipeline.models.registry import get_model
from pipeline.train import distributed
from pipeline.train.augment import AugmentedCritic
from pipeline.train.augment import from_config as augment_from_config
from pipeline.train.data import BatchStream, RandomWindows
from pipeline.train.ema import EMA
from pipeline.train.monitor import DivergenceGuard
from pipeline.train.schedule import LRDecay, budget_progress
from pipeline.train.recorder import (GENERATOR_FILE, LATEST_POINTER, RESULT_FILE, SAMPLE_SEED_OFFSET, STATE_FILE,
                                     NullRecorder, Recorder, RunInfo)
from pipeline.train.state import TrainingState
from pipeline.train.step import gan_step

log = logging.getLogger(__name__)


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


@functools.cache  # the hardware does not change while we run
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (oneDNN's check: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN, or without the op
        return False


def autocast_for(device: torch.device, amp: bool | str) -> torch.autocast | None:
    """The bfloat16 autocast ``train.amp`` asks for on ``device``, or None (float32).

    bfloat16 keeps float32's range: no loss scaling, and WGAN scores cannot overflow. On
    a CPU without native bfloat16 it would be emulated, slower than float32, so "auto"
    falls back there; on one with it, the laptop recipe's step took 0.6x the time."""
    if amp is False:
        return None
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if amp == "auto" and device.type == "cpu" and cpu_has_native_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return None


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def train_threads(configured: int | None) -> int:
    """Intra-op threads for training: the config's, else half the cores (1 to 4).

    On a shared machine, torch's threads spin-wait on each other: issue 10 reports a
    2-core run falling from 4.4 to 0.5 steps/s with 2 threads while another process was
    busy, and holding 2.5-3 with 1 thread. Half the cores keeps a core for everything else."""
    import os

    if configured is not None:
        return configured
    return max(1, min(4, (os.cpu_count() or 2) // 2))


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
    threads = torch.get_num_threads()
    try:
        if dist.device.type == "cpu":
            torch.set_num_threads(train_threads(config.train.threads))
        return _train(config, dist, tracking, dataset, resume, label, out_dir, allow_changed_config)
    finally:
        torch.set_num_threads(threads)
        distributed.teardown(dist)


def _resume_from(state_path: Path, spec_name: str, config: RunConfig, data_dir: Path, fingerprint: str,
                 allow_changed_config: bool, device: torch.device) -> tuple[dict, list[str]]:
    """The saved training state to continue, and the settings that changed since (refused
    unless ``allow_changed_config``)."""
    saved = ckpt.load_training_state(state_path, map_location=device)
    if saved["meta"].get("model") != spec_name:
        raise UserError(f"{state_path}: a {saved['meta'].get('model')} checkpoint, not {spec_name}")
    changed = resume_differences(saved["meta"], config, data_dir, fingerprint)
    if changed and not allow_changed_config:
        raise UserError(
            f"--resume: the checkpoint {state_path} was trained with other settings; they differ in:\n  "
            + "\n  ".join(changed) + "\nresume with the settings the run started with, or pass "
            "--allow-changed-config to continue from its weights as a new MLflow run")
    return saved, changed


M = TypeVar("M", bound=torch.nn.Module)


def _in_layout(module: M, layout: torch.memory_format) -> M:
    """``module`` with its 4-D weights in ``layout`` (what ``Module.to(memory_format=...)`` does,
    which torch's type stubs do not declare)."""
    to: Any = module.to
    return to(memory_format=layout)


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
    fingerprint = ds.fingerprint()  # hashes the whole index: once
    items = RandomWindows(ds, tc.seed) if config.data.crop == "random" else ds
    stream = BatchStream(items, tc.batch_size, seed=tc.seed, rank=dist.rank, world=dist.world,
                         cache=tc.cache_in_memory, workers=tc.workers, pin_memory=device.type == "cuda",
                         progress=tc.progress)
    nb = stream.batches_per_epoch

    # ---------------------------------------------------------------- networks, loss, optimisers: the state
    bin_stats = ds.bin_stats() if config.data.normalize == "per_bin" else None
    torch.manual_seed(tc.seed + dist.rank)  # initial weights (DDP then copies rank 0's) and dropout
    layout = torch.channels_last if tc.channels_last else torch.contiguous_format
    generator = _in_layout(spec.build_generator(mc, resolution, bin_stats).to(device), layout)
    critic = _in_layout(spec.build_critic(mc, resolution, tc, bin_stats).to(device), layout)
    settings = spec.settings(tc)
    opt_g, opt_d = spec.make_optimizers(generator, critic, tc)
    # before a resume loads the optimisers' saved (decayed) rates: the decay scales the configured ones
    decay = LRDecay(tc.lr_decay, tc.lr_decay_start, tc.lr_decay_final, (opt_g, opt_d)) if tc.lr_decay != "off" else None
    autocast = autocast_for(device, tc.amp)
    state = TrainingState(
        generator, critic, opt_g, opt_d, spec.make_loss(tc), device=device, seed=tc.seed, rank=dist.rank,
        ema=EMA(generator, tc.ema_decay, tc.ema_warmup_steps, tc.ema_rampup) if tc.ema_decay else None,
        augment=augment_from_config(tc, ds.mel_config.top_db, spec.critic_has_sigmoid(tc), device,
                                    tc.seed * 7 + dist.rank))

    # ---------------------------------------------------------------- resume
    run_id: str | None = None
    resumed_from: str | None = None  # set when a resume with other settings starts a new MLflow run
    if resume:
        state_path = latest_state(out, label)
        if state_path is None:
            raise UserError(f"--resume: no checkpoint of {label!r} under {out} (train without --resume first)")
        saved, changed = _resume_from(state_path, spec.name, config, data_dir, fingerprint, allow_changed_config,
                                      device)
        state.load_state_dict(saved)
        run_id = saved["meta"].get("run_id")
        if changed:
            log.warning("resuming %s with other settings (%s): continuing as a new MLflow run",
                        label, "; ".join(changed))
            resumed_from, run_id = run_id or str(state_path.parent.parent.name), None
        elif run_id is None:  # the run it continues never reached the tracking server
            resumed_from = state_path.parent.parent.name
        log.info("resuming %s from %s: step %d, epoch %d, batch %d", label, state_path, state.step,
                 state.epoch + 1, state.batch)

    g_model = distributed.wrap(generator, dist)
    d_model: torch.nn.Module = distributed.wrap(critic, dist)
    if state.augment is not None:  # the loss sees a critic that augments real, fake and penalty batches alike
        d_model = AugmentedCritic(d_model, state.augment)
    steps_per_run = (tc.epochs * nb) // settings.n_critic
    total_steps = min(steps_per_run, tc.max_steps) if tc.max_steps else steps_per_run
    step_samples = settings.n_critic * tc.batch_size * dist.world

    # ---------------------------------------------------------------- the recorder (rank 0)
    recorder: NullRecorder = NullRecorder()
    if dist.is_main:
        params = config.model_dump(mode="json")
        params["train"].pop("runs", None)
        params["mel"] = ds.mel_config.to_dict()  # the dataset's: what the model really saw
        params.update({
            "optim": dict(vars(settings)),
            "dataset": {"path": str(data_dir), "fingerprint": fingerprint, "clips": len(ds),
                        "clips_available": ds.available, "tracks": ds.n_tracks},
            "params": {"generator": _count(generator), "critic": _count(critic)},
            "run": {"label": label, "world_size": dist.world, "device": device.type,
                    "steps_per_epoch": nb // settings.n_critic, "total_steps": total_steps,
                    "threads": torch.get_num_threads(),
                    "precision": "float32" if autocast is None else "bfloat16"},
        })
        # the grids' real row: clips drawn from the whole set, not one track's first ones
        pick = torch.randperm(len(ds), generator=torch.Generator().manual_seed(tc.seed + SAMPLE_SEED_OFFSET))[:4]
        info = RunInfo(
            config=config, label=label, model=spec.name, critic_kind=spec.critic_kind, out=out, data_dir=data_dir,
            fingerprint=fingerprint, params=params, total_steps=total_steps, batches_per_epoch=nb,
            real_examples=torch.stack([ds[int(i)] for i in pick]),  # [4, 1, R, R]
            mel_config=ds.mel_config, config_hash=config_hash(config, data_dir), run_id=run_id, resume=resume,
            resumed_from=resumed_from,
            meta={"model": spec.name, "model_config": mc.model_dump(mode="json"), "resolution": resolution,
                  "latent_dim": mc.latent_dim, "mel_config": ds.mel_config.to_dict(), "label": label,
                  "dataset": str(data_dir), "dataset_fingerprint": fingerprint, "ema": state.ema is not None,
                  "normalization": normalization_meta(generator)})
        recorder = Recorder(info, tracking, scorer=_scorer(config, data_dir, resolution, device))

    # ---------------------------------------------------------------- the loop
    guard = DivergenceGuard(tc.max_abs_loss, tc.divergence_patience)
    status, reason = "finished", None
    rates: list[float] = []
    budget_s = 60.0 * tc.max_minutes if tc.max_minutes else None
    started = time.monotonic() - state.train_seconds  # a resumed run goes on with its budget's clock
    deadline = started + budget_s if budget_s else None
    try:
        recorder.open(state, deadline)
        batches = stream.iterate(state.epoch, state.batch, tc.epochs)
        with _SigtermFlag() as sigterm:
            t_last = time.perf_counter()
            while state.step < total_steps:
                # the critic's batches (n_critic of them), noting the epochs they end
                reals, ended = [], []
                for _, (e, b, real) in zip(range(settings.n_critic), batches):
                    reals.append(real.to(device, non_blocking=True, memory_format=layout))
                    if state.advance(e, b, nb):
                        ended.append(e + 1)
                if len(reals) < settings.n_critic:
                    break  # cannot happen while step < total_steps; kept as a guard

                # the learning rates for the share of the budget spent, then one generator step
                # after n_critic critic steps
                if decay is not None:
                    lr_scale = decay.apply(budget_progress(state.step, total_steps, state.train_seconds, budget_s))
                numbers = gan_step(g_model, d_model, state.loss, opt_g, opt_d, reals, mc.latent_dim,
                                   state.latent_rng, autocast)
                state.step += 1
                state.samples_seen += step_samples
                if state.ema is not None:
                    state.ema.update(generator, state.step - 1)
                if state.augment is not None:  # adaptive strength follows the critic's confidence on reals
                    seen = len(reals) * tc.batch_size  # d_real_sign is the mean over every critic step's reals
                    state.augment.observe_sign(numbers["d_real_sign"] * seen, seen)
                    numbers["augment_p"] = state.augment.p
                values = {k: float(v) for k, v in numbers.items()}
                if decay is not None:
                    values["lr_scale"] = lr_scale

                # stop on divergence, SIGTERM or the time budget, all ranks together
                # (the ranks agree on the clock too: the learning rates they set from it must not differ)
                why = guard.check(values, state.step, state.epoch)
                flags = distributed.rank_max([sigterm.set, why is not None, time.monotonic() - started], dist)
                stop, diverged, state.train_seconds = bool(flags[0]), bool(flags[1]), flags[2]
                timed_out = budget_s is not None and state.train_seconds >= budget_s
                if diverged:
                    status, reason = "diverged", why or "diverged on another rank"
                    recorder.diverged(values, state.step)  # the NaN/exploded values, visible in the UI
                    break

                # record: metrics, history, cadence work (rank 0)
                now = time.perf_counter()
                rate = step_samples / max(now - t_last, 1e-9)
                rates.append(rate)
                values["samples_per_s"] = rate
                values["epoch"] = state.epoch + state.batch / nb
                state.record(values)
                recorder.step(state, values, rate, ended)
                t_last = time.perf_counter()  # cadence work is not the step's
                if stop:
                    status = "preempted"
                    break
                if timed_out:
                    reason = f"time budget of {tc.max_minutes:g} min reached at step {state.step}"
                    log.info("%s: %s", label, reason)
                    break
            if status == "finished" and state.step >= steps_per_run and state.epoch < tc.epochs:
                # the data is used up; the last few batches (fewer than n_critic) make no
                # whole step, so the last epoch ends here, with its checkpoint and grid
                state.epoch, state.batch = tc.epochs, 0
                recorder.epoch_ended(state, tc.epochs)
        recorder.end(state, status, reason)
    except BaseException as e:
        status, reason = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        steady = rates[1:] or rates
        mean_rate = len(steady) / sum(1.0 / r for r in steady) if steady else 0.0  # samples / total time
        recorder.close(state, status, reason, mean_rate)

    run_dir = recorder.run_dir
    if dist.is_main:
        log.info("%s %s at step %d (epoch %.2f), %.0f samples/s; checkpoints in %s", label, status, state.step,
                 state.epoch + state.batch / nb, mean_rate, run_dir / "checkpoints" if run_dir else None)
    gpath = run_dir / "checkpoints" / GENERATOR_FILE if run_dir else None
    return TrainResult(model=spec.name, label=label, status=status, step=state.step, epoch=state.epoch,
                       run_id=recorder.run_id, reason=reason, run_dir=run_dir,
                       generator_path=gpath if gpath and gpath.is_file() else None,
                       samples_per_s=mean_rate, step_rates=rates, history=state.history)


def _scorer(config: RunConfig, data_dir: Path, resolution: int, device: torch.device):
    """The cheap periodic score that picks generator-best.pt, or None when it is off."""
    tc = config.train
    if not tc.score_every:
        return None
    from pipeline.evaluate.quick import QuickScore

    return QuickScore(data_dir, resolution, config.evaluate, n=tc.score_clips, device=device,
                      progress=tc.progress)
