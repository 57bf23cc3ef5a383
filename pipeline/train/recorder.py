"""Everything rank 0 does beside training: MLflow, Prometheus, the progress bar, sample
grids, checkpoints on a cadence and the best-checkpoint score.

The loop calls the same four methods on every rank (``open``, ``step``, ``end``,
``close``); on other ranks the recorder is a ``NullRecorder`` whose methods do nothing,
so the loop has no ``if rank == 0`` branches.

Cadence, so per-epoch work never dominates short epochs:

* ``generator-latest.pt`` + training state every ``train.checkpoint_every`` steps, at
  the end of the run and on SIGTERM;
* a sample grid every ``train.sample_every`` steps;
* at an epoch's end a ``generator-epoch-N.pt``, a grid and the loss plot, but no more
  often than every ``train.artifact_every_s`` seconds (the last epoch always);
* every ``train.score_every`` steps a learned Fréchet distance of the sampling
  generator on ``train.score_clips`` clips; the lowest so far is ``generator-best.pt``,
  logged as metric ``best.fd_learned`` at its step and tagged with the step.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

from pipeline import checkpoint as ckpt
from pipeline.config import MelConfig, RunConfig
from pipeline.fsutil import atomic_write_text, remove_dead_temps
from pipeline.train.monitor import Prometheus
from pipeline.train.plots import loss_plot, sample_grid
from pipeline.train.state import TrainingState

log = logging.getLogger(__name__)

LATEST_POINTER = "LATEST"
STATE_FILE = "training-state-latest.pt"
GENERATOR_FILE = "generator-latest.pt"
BEST_FILE = "generator-best.pt"
RESULT_FILE = "result.json"
# MLflow run status per outcome
MLFLOW_STATUS = {"finished": "FINISHED", "preempted": "KILLED", "diverged": "FAILED", "failed": "FAILED"}
SAMPLE_SEED_OFFSET = 7919  # the fixed latent batch of the sample grids is independent of training
BEST_METRIC = "best.fd_learned"
BEST_STEP_TAG = "technogan.best_step"
END_REASON_TAG = "technogan.end_reason"


@dataclass
class RunInfo:
    """What the recorder needs to know about the run beyond the training state."""

    config: RunConfig
    label: str
    model: str  # registry name
    critic_kind: str  # what plots call the critic
    out: Path  # <train out_dir>
    data_dir: Path
    fingerprint: str
    meta: dict[str, Any]  # the generator checkpoints' meta (without step/epoch/run_id)
    params: dict[str, Any]  # logged once when the MLflow run starts
    total_steps: int
    batches_per_epoch: int
    real_examples: torch.Tensor  # [M, 1, R, R] for the grids' real row
    mel_config: MelConfig  # the dataset's
    config_hash: str  # lets `technogan run` skip a finished run with this very config
    run_id: Optional[str] = None  # the MLflow run a resume continues
    resume: bool = False
    resumed_from: Optional[str] = None


class NullRecorder:
    """What ranks other than 0 record: nothing."""

    run_id: Optional[str] = None
    run_dir: Optional[Path] = None

    def open(self, state: TrainingState, deadline: Optional[float] = None) -> None:
        pass

    def step(self, state: TrainingState, values: dict[str, float], rate: float, ended: list[int]) -> None:
        pass

    def diverged(self, values: dict[str, float], step: int) -> None:
        pass

    def epoch_ended(self, state: TrainingState, epoch_done: int) -> None:
        pass

    def end(self, state: TrainingState, status: str, reason: Optional[str]) -> None:
        pass

    def close(self, state: TrainingState, status: str, reason: Optional[str], samples_per_s: float) -> None:
        pass


class Recorder(NullRecorder):
    """Rank 0's side work; see the module docstring for the cadence."""

    def __init__(self, info: RunInfo, tracking: Any, scorer: Any = None):
        self.info = info
        self.tracking = tracking
        self.scorer = scorer  # callable generator -> learned FD, or None
        tc = info.config.train
        self.tc = tc
        self.run: Any = None
        self.saved_step = -1
        self.last_artifacts = -float("inf")  # perf_counter of the last epoch-end artifacts
        self.last_epoch_saved = 0
        # a time-budgeted run's step count is unknown: the bar counts steps and shows the time left
        self.bar = tqdm(total=None if tc.max_minutes else info.total_steps, desc=info.label, unit="step",
                        dynamic_ncols=True, disable=not tc.progress)
        self.deadline: Optional[float] = None  # the loop's time budget (time.monotonic()), for the bar
        self.prom = Prometheus(info.model, tc.prometheus_port, tc.pushgateway) if (
            tc.prometheus_port is not None or tc.pushgateway) else None
        self.z_fixed: Optional[torch.Tensor] = None
        self.folder = info.out  # the run's own folder once open() knows the run's key

    # ------------------------------------------------------------------ start

    def open(self, state: TrainingState, deadline: Optional[float] = None) -> None:
        """Start (or continue) the MLflow run and the local run folder; ``deadline`` is when the
        loop's time budget ends (``time.monotonic()``), shown as the time left."""
        self.deadline = deadline
        info, tr, tracking = self.info, self.info.config.tracking, self.tracking
        self.run = tracking.TrackedRun.start(
            tr.experiment, run_name=info.label, uri=tr.uri, run_id=info.run_id, spool_dir=tr.spool_dir,
            request_timeout_s=tr.request_timeout_s, max_backoff_s=tr.max_backoff_s,
            start_timeout_s=tr.start_timeout_s, flush_timeout_s=tr.flush_timeout_s,
            tags={tracking.MODEL_TAG: info.model, tracking.STATUS_TAG: "running",
                  **({tracking.GIT_TAG: c} if (c := tracking.git_commit(Path(__file__).parent)) else {})})
        run = self.run
        self.folder = self.run_dir = info.out / info.label / run.key
        (self.folder / "checkpoints").mkdir(parents=True, exist_ok=True)
        remove_dead_temps(self.folder)
        atomic_write_text(info.out / info.label / LATEST_POINTER, run.key + "\n")
        run.set_tags({tracking.LOCAL_DIR_TAG: str(self.folder / "checkpoints"), "technogan.label": info.label})
        info.config.save(self.folder / "config.resolved.yaml")
        if not info.resume or info.resumed_from:
            run.log_params(info.params)
            run.log_artifact(self.folder / "config.resolved.yaml", "config")
            run.log_dataset(self.dataset_entity())
        if info.resumed_from:
            run.set_tags({"technogan.resumed_from": info.resumed_from, "technogan.resumed_at_step": state.step})
        elif info.resume:
            run.set_tags({"technogan.resumed_at_step": state.step})
        self.saved_step = state.step if info.resume else -1
        self.last_epoch_saved = state.epoch  # epochs before the current one were saved by the run that did them
        self.bar.update(state.step)
        tc = self.tc
        self.z_fixed = torch.randn(tc.n_samples, info.config.model.latent_dim,
                                   generator=torch.Generator().manual_seed(tc.seed + SAMPLE_SEED_OFFSET)
                                   ).to(state.device)
        budget = f" (or {tc.max_minutes:g} minutes, whichever comes first)" if tc.max_minutes else ""
        log.info("training %s: %d steps%s of %d batch(es) of %d, %d batches per epoch, device %s; MLflow run %s at %s",
                 info.label, info.total_steps, budget, info.params["optim"]["n_critic"], tc.batch_size,
                 info.batches_per_epoch, state.device, run.run_id or f"{run.key} (not created yet)", run.uri)

    def dataset_entity(self) -> dict[str, Any]:
        """The training set as the run's MLflow dataset input: digest = its fingerprint."""
        info, d = self.info, self.info.params["dataset"]
        profile = {"clips": d["clips"], "clips_available": d["clips_available"], "tracks": d.get("tracks"),
                   "resolution": info.config.data.resolution, "mel_config": info.mel_config.to_dict()}
        return self.tracking.dataset_entity(info.data_dir, info.fingerprint, profile,
                                            mel_shape=info.mel_config.shape)

    @property
    def run_id(self) -> Optional[str]:  # type: ignore[override]
        return self.run.run_id if self.run is not None else self.info.run_id

    # ------------------------------------------------------------------ each step

    def step(self, state: TrainingState, values: dict[str, float], rate: float, ended: list[int]) -> None:
        """Log this step's numbers, then whatever the cadence says is due."""
        tc, s = self.tc, state.step
        self.run.log_metrics(values, s)
        if self.prom:
            self.prom.update(s, state.epoch, values, rate)
        self.bar.update(1)
        postfix = {"d": f"{values['d_loss']:.3f}", "g": f"{values['g_loss']:.3f}", "ep": f"{values['epoch']:.2f}",
                   "samples/s": f"{rate:.0f}"}
        if self.deadline is not None:
            left = max(0, int(self.deadline - time.monotonic()))
            postfix["left"] = f"{left // 60}:{left % 60:02d}"
        self.bar.set_postfix(postfix, refresh=False)
        if s % tc.checkpoint_every == 0:
            self.checkpoint(state)
        if s % tc.sample_every == 0:
            self.samples(state, f"step-{s:07d}", f"generated at step {s} (fixed latents)")
        if self.scorer is not None and tc.score_every and s % tc.score_every == 0:
            self.score(state)
        for e_done in ended:
            self.epoch_ended(state, e_done)

    def diverged(self, values: dict[str, float], step: int) -> None:
        self.run.log_metrics(values, step)  # the NaN/exploded values, visible in the UI

    def epoch_ended(self, state: TrainingState, epoch_done: int) -> None:
        """generator-epoch-N.pt, a grid and the loss plot, throttled by ``artifact_every_s``."""
        last = epoch_done >= self.tc.epochs
        now = time.perf_counter()
        if epoch_done <= self.last_epoch_saved or not (last or now - self.last_artifacts >= self.tc.artifact_every_s):
            return
        self.last_artifacts = now
        self.last_epoch_saved = epoch_done
        self.checkpoint(state, epoch_done=epoch_done)
        self.samples(state, f"epoch-{epoch_done}", f"generated after epoch {epoch_done}, step {state.step}")
        self.losses(state)

    # ------------------------------------------------------------------ files

    def _meta(self, state: TrainingState, epoch_done: Optional[int] = None) -> dict[str, Any]:
        return {**self.info.meta, "run_id": self.run.run_id, "step": state.step,
                "epoch": state.epoch if epoch_done is None else epoch_done}  # epochs done

    def checkpoint(self, state: TrainingState, epoch_done: Optional[int] = None) -> Path:
        """generator-latest.pt (the sampling generator) and the training state; with
        ``epoch_done`` also generator-epoch-N.pt."""
        ck = self.folder / "checkpoints"
        gmeta = self._meta(state, epoch_done)
        gpath = ckpt.save_generator(ck / GENERATOR_FILE, state.sample_generator, gmeta)
        ckpt.save_training_state(ck / STATE_FILE, state.state_dict(),
                                 meta={**gmeta, "config": self.info.config.model_dump(mode="json")})
        self.run.log_artifact(gpath, self.tracking.CHECKPOINT_DIR)
        self.run.log_artifact(ck / STATE_FILE, self.tracking.CHECKPOINT_DIR)
        if epoch_done is not None:
            epath = ckpt.save_generator(ck / f"generator-epoch-{epoch_done}.pt", state.sample_generator, gmeta)
            self.run.log_artifact(epath, self.tracking.CHECKPOINT_DIR)
        self.saved_step = state.step
        return gpath

    def samples(self, state: TrainingState, name: str, title: str) -> None:
        g = state.sample_generator
        was_training = g.training
        g.eval()  # BatchNorm running statistics, no dropout; consumes no random numbers
        with torch.no_grad():
            fake = g(self.z_fixed)  # [N, 1, R, R]
        g.train(was_training)
        path = sample_grid(fake, self.info.real_examples, self.info.mel_config,
                           self.folder / "samples" / f"{name}.png", f"{self.info.label}: {title}")
        self.run.log_artifact(path, "samples")

    def losses(self, state: TrainingState) -> None:
        if not state.history:
            return
        path = loss_plot(state.history, self.folder / "plots" / "losses.png",
                         f"{self.info.label}: generator and {self.info.critic_kind} loss")
        self.run.log_artifact(path, "plots")

    def score(self, state: TrainingState) -> None:
        """Score the sampling generator; keep it as generator-best.pt when it is the best so far."""
        t0 = time.perf_counter()
        value = float(self.scorer(state.sample_generator))
        self.run.log_metrics({"score.fd_learned": value, "score.seconds": time.perf_counter() - t0}, state.step)
        best = state.best.get("score")
        if best is None or value < best:
            state.best = {"score": value, "step": state.step}
            path = ckpt.save_generator(self.folder / "checkpoints" / BEST_FILE, state.sample_generator,
                                       {**self._meta(state), "score": {"fd_learned": value}})
            self.run.log_artifact(path, self.tracking.CHECKPOINT_DIR)
            self.run.log_metrics({BEST_METRIC: value}, state.step)
            self.run.set_tags({BEST_STEP_TAG: state.step})

    # ------------------------------------------------------------------ the end

    def end(self, state: TrainingState, status: str, reason: Optional[str]) -> None:
        """The run stopped (finished, preempted or diverged): last checkpoint and plots."""
        self.bar.close()
        if status == "diverged":
            log.error("%s stopped: %s; the last good checkpoint stays in %s", self.info.label, reason,
                      self.folder / "checkpoints")
        else:
            if self.scorer is not None and self.tc.score_every and state.best.get("step") != state.step:
                self.score(state)  # the last weights compete for best too
            if self.saved_step != state.step:
                self.checkpoint(state)
            if status == "finished":  # the run's MLflow model: the Models column, the registry's source
                self.run.log_generator_model(self.folder / "checkpoints" / GENERATOR_FILE, "latest")
        self.losses(state)

    def close(self, state: TrainingState, status: str, reason: Optional[str], samples_per_s: float) -> None:
        """Always runs (also on an exception): status tags, the MLflow run's end, result.json."""
        self.bar.close()
        if self.prom:
            self.prom.close()
        if self.run is None:
            return
        tags = {self.tracking.STATUS_TAG: status}
        if reason:  # a finished run's reason is why it ended early (its time budget), not a failure
            tags[self.tracking.REASON_TAG if status != "finished" else END_REASON_TAG] = reason[:5000]
        self.run.set_tags(tags)
        self.run.finish(MLFLOW_STATUS[status])
        atomic_write_text(self.folder / RESULT_FILE, json.dumps({
            "status": status, "reason": reason, "step": state.step, "epoch": state.epoch, "run_id": self.run.run_id,
            "samples_per_s": samples_per_s, "best": state.best,
            "config_hash": self.info.config_hash}, indent=2) + "\n")
