"""Learning-rate decay over the run's budget: its steps or its minutes, whichever runs out first.

A run with a wall-clock budget (``train.max_minutes``) does not know how many steps it
will get, so the schedule follows the share of the budget spent: the larger of the
steps done over the step cap and the training seconds over the minutes allowed. At a
fixed budget, decaying to the end lets the last steps settle instead of wandering
(Li et al. 2020, "Budgeted training", found linear decay to the budget's end best).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch


def lr_factor(kind: str, progress: float, start: float, final: float) -> float:
    """The learning rate's multiplier at ``progress`` (0..1 of the budget): 1 until ``start``,
    then down to ``final`` at the end, along a line or a half cosine."""
    if kind == "off" or progress <= start:
        return 1.0
    t = min(1.0, (progress - start) / max(1.0 - start, 1e-12))
    if kind == "linear":
        return 1.0 - (1.0 - final) * t
    if kind == "cosine":
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown learning-rate decay {kind!r}")


def budget_progress(step: int, total_steps: int, seconds: float, budget_s: Optional[float]) -> float:
    """Share of the budget spent (0..1): steps over the step cap, or seconds over the time budget."""
    by_steps = step / total_steps if total_steps > 0 else 0.0
    by_time = seconds / budget_s if budget_s else 0.0
    return min(1.0, max(by_steps, by_time))


class LRDecay:
    """Scales every parameter group of the optimisers from the rate it was built with."""

    def __init__(self, kind: str, start: float, final: float, optimizers: Sequence[torch.optim.Optimizer]):
        self.kind, self.start, self.final = kind, start, final
        self.optimizers = list(optimizers)
        self.base = [float(g["lr"]) for g in self._groups()]

    def _groups(self) -> list[dict]:
        # looked up each time: an optimiser's load_state_dict (a resume) replaces its group dicts
        return [g for opt in self.optimizers for g in opt.param_groups]

    def apply(self, progress: float) -> float:
        """Set the rates for ``progress``; returns the multiplier."""
        f = lr_factor(self.kind, progress, self.start, self.final)
        for g, lr in zip(self._groups(), self.base, strict=True):
            g["lr"] = lr * f
        return f
