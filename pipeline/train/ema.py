"""An exponential moving average of the generator's weights (``train.ema_decay``).

Averaging the weights over the last ~1/(1 - decay) generator steps smooths out the
oscillation of adversarial training (Yazıcı et al. 2019; Karras et al. 2018), so samples,
evaluation, checkpoints and serving use the average, while training updates the raw
weights. Buffers (BatchNorm running statistics, per-bin normalisation) are copied, not
averaged: they are statistics of the raw network, not weights.

Warm-up: at generator step t (0-based, counted by the caller) the decay is

    decay_t = decay * min(1, t / warmup_steps)        (decay when warmup_steps is 0)

so the first update copies the raw weights outright and the random initial weights are
forgotten quickly; after ``warmup_steps`` steps the full decay holds.

Ramp-up (``rampup``, StyleGAN2-ADA's ``ema_rampup``; it replaces the warm-up): the
average's half-life grows with the run, ``rampup`` times the steps done, up to the
half-life of ``decay``:

    half_t  = min(rampup * t, ln 0.5 / ln decay)
    decay_t = 0.5 ** (1 / half_t)

A fixed decay must choose between following the fast early progress (a short average)
and smoothing the late oscillation around a plateau (a long one); the ramp-up does the
first early and the second late, whatever the run's length, so one setting serves a
20-minute CPU run and a long GPU run alike.

    ema = EMA(generator, decay=0.999, warmup_steps=100)
    ...after each opt_g.step():  ema.update(generator, step)   # the unwrapped generator under DDP
    ema.module(z)                                              # eval mode, no gradients
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class EMA:
    """A deep copy of a generator whose parameters follow the raw ones' moving average."""

    def __init__(self, generator: nn.Module, decay: float, warmup_steps: int = 0, rampup: float | None = None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if warmup_steps < 0:
            raise ValueError(f"EMA warmup_steps must be >= 0, got {warmup_steps}")
        if rampup is not None and not rampup > 0.0:
            raise ValueError(f"EMA rampup must be > 0, got {rampup}")
        self.decay, self.warmup_steps, self.rampup = float(decay), int(warmup_steps), rampup
        self.module = copy.deepcopy(getattr(generator, "module", generator)).eval()
        self.module.requires_grad_(False)
        self.updates = 0  # how many updates the average has seen (for the record)

    def decay_at(self, step: int) -> float:
        """The decay used at generator step ``step`` (0-based)."""
        if self.rampup is not None:
            half_life = min(self.rampup * max(step, 0), math.log(0.5) / math.log(self.decay))
            return 0.5 ** (1.0 / half_life) if half_life > 0 else 0.0
        if self.warmup_steps == 0:
            return self.decay
        return self.decay * min(1.0, max(step, 0) / self.warmup_steps)

    @torch.no_grad()
    def update(self, generator: nn.Module, step: int) -> None:
        """Move the average towards ``generator``'s weights (pass the unwrapped module under DDP)."""
        raw = getattr(generator, "module", generator)
        d = self.decay_at(step)
        avg_params = dict(self.module.named_parameters())
        for name, p in raw.named_parameters():
            avg = avg_params[name]
            # lerp_: avg + (1 - d) * (p - avg) = d * avg + (1 - d) * p
            avg.lerp_(p.detach().to(avg.dtype), 1.0 - d)
        avg_buffers = dict(self.module.named_buffers())
        for name, b in raw.named_buffers():
            avg_buffers[name].copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
                "decay": self.decay, "warmup_steps": self.warmup_steps,
                "rampup": self.rampup, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
