"""Everything a training run is made of, in one object that saves and restores itself.

``TrainingState`` holds the networks, optimisers, loss (lazy-regulariser counters),
EMA copy of the generator, augmentation pipeline, RNG streams, data position and loss
history. ``state_dict()`` / ``load_state_dict()`` are the checkpoint and the resume:
one call each, so nothing the loop needs can be forgotten by one and not the other,
which is what keeps ``--resume`` bit-exact.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from pipeline.models.losses import GANLoss

HISTORY_KEYS = ("d_loss", "g_loss", "wasserstein", "gradient_penalty", "r1")


def _unwrap(module: nn.Module) -> nn.Module:
    # DistributedDataParallel keeps the network as .module; state dicts never carry its prefix
    return getattr(module, "module", module)


class TrainingState:
    """One run's networks, optimisers and position; ``rank`` seeds the per-rank streams."""

    def __init__(self, generator: nn.Module, critic: nn.Module, opt_g: torch.optim.Optimizer,
                 opt_d: torch.optim.Optimizer, loss: GANLoss, *, device: torch.device, seed: int,
                 rank: int = 0, ema: Any = None, augment: Any = None):
        self.generator = generator
        self.critic = critic
        self.opt_g = opt_g
        self.opt_d = opt_d
        self.loss = loss
        self.ema = ema  # pipeline.train.ema.EMA or None
        self.augment = augment  # pipeline.train.augment.Augment or None
        self.device = device
        self.seed = seed
        self.rank = rank
        # latents come from their own stream: the global one also drives dropout, and
        # keeping them apart lets a sample grid or a score never shift training's draws
        self.latent_rng = torch.Generator(device=device)
        self.latent_rng.manual_seed(seed * 1_000_003 + rank + 1)
        self.step = 0  # generator steps done
        self.epoch = 0  # epochs completed before the current one
        self.batch = 0  # next batch within the current epoch
        self.samples_seen = 0
        self.train_seconds = 0.0  # wall-clock time trained, across resumes: the time budget's clock
        self.history: dict[str, list[float]] = {}
        self.best: dict[str, Optional[float]] = {"score": None, "step": None}

    @property
    def sample_generator(self) -> nn.Module:
        """The generator that samples, scores, checkpoints and serves: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else _unwrap(self.generator)

    def advance(self, epoch: int, batch: int, batches_per_epoch: int) -> bool:
        """Move past batch ``batch`` of ``epoch``; True when that batch ended the epoch."""
        ended = batch + 1 == batches_per_epoch
        self.epoch, self.batch = (epoch + 1, 0) if ended else (epoch, batch + 1)
        return ended

    def record(self, values: dict[str, float]) -> None:
        """Keep the numbers the loss plot draws."""
        self.history.setdefault("step", []).append(self.step)
        for k in HISTORY_KEYS:
            if k in values:
                self.history.setdefault(k, []).append(values[k])

    # ------------------------------------------------------------------ save / restore

    def _rng(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "latent": self.latent_rng.get_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers only (loadable with ``weights_only=True``)."""

        def cpu(module: nn.Module) -> dict[str, torch.Tensor]:
            return {k: v.detach().to("cpu", copy=True) for k, v in _unwrap(module).state_dict().items()}

        return {
            "generator": cpu(self.generator),
            "critic": cpu(self.critic),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "loss": _state_of(self.loss),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "augment": self.augment.state_dict() if self.augment is not None else None,
            "progress": {"step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch,
                         "samples_seen": self.samples_seen, "train_seconds": self.train_seconds},
            "rng": self._rng(),
            "history": self.history,
            "best": dict(self.best),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``. Only rank 0's streams are saved: other ranks restart
        theirs from a seed that depends on the step, so they never repeat rank 0's."""
        _unwrap(self.generator).load_state_dict(state["generator"])
        _unwrap(self.critic).load_state_dict(state["critic"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if state.get("loss") and hasattr(self.loss, "load_state_dict"):
            self.loss.load_state_dict(state["loss"])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:  # a run without EMA continued with it (--allow-changed-config): average from here
                self.ema.load_state_dict({"module": _unwrap(self.generator).state_dict(), "updates": 0})
        if self.augment is not None and state.get("augment") is not None:
            self.augment.load_state_dict(state["augment"])
        p = state["progress"]
        self.step, self.epoch, self.batch, self.samples_seen = (
            int(p["step"]), int(p["epoch"]), int(p["batch_in_epoch"]), int(p["samples_seen"]))
        self.train_seconds = float(p.get("train_seconds", 0.0))  # states saved before it was kept: 0
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.best = dict(state.get("best") or {"score": None, "step": None})
        rng = state["rng"]
        if self.rank == 0:
            # RNG states are CPU byte tensors whatever map_location moved them to
            torch.set_rng_state(rng["torch"].cpu())
            self.latent_rng.set_state(rng["latent"].cpu())
            if self.device.type == "cuda" and "cuda" in rng:
                torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        else:
            torch.manual_seed(self.seed + self.rank + 7 * self.step)
            self.latent_rng.manual_seed(self.seed * 1_000_003 + self.rank + 1 + 7 * self.step)


def _state_of(obj: Any) -> dict[str, Any]:
    fn = getattr(obj, "state_dict", None)
    return fn() if callable(fn) else {}
