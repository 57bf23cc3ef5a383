"""Audio-safe augmentation of the critic's inputs, real and generated alike (``train.augment``).

A critic that sees every real clip many times memorises them; augmenting what it sees
(DiffAugment, Zhao et al. 2020; ADA, Karras et al. 2020) keeps it from doing so. The
same random transforms go on real and generated batches, and they are differentiable, so
the generator learns through them and never learns to produce them as long as each is
applied with probability p < 1 (hence ``p_max``).

Only transforms that keep a mel a plausible mel of the same music, with rows (mel bins,
frequency) in place; never a shift along frequency, which would change pitch and timbre:

* ``shift``: circular time shift, a per-sample roll along the last (time) axis;
* ``time_mask``: a random span of frames (up to ``mask_fraction`` of them) set to -1,
  the dataset's floor (silence);
* ``freq_mask``: a random band of rows (up to ``mask_fraction``) set to -1;
* ``gain``: a random offset of g dB, g ~ U[-max_gain_db, max_gain_db]; the stored mels are
  dB scaled to [-1, 1] over ``top_db``, so g dB adds g * 2 / top_db, then clamped to [-1, 1].

Each transform is applied to each sample independently with probability p. Every call
draws the same amount of randomness whatever p is, from the object's own generator on
the device (explicit seed), so a run is reproducible and resumable from ``state_dict()``.

Adaptive mode (``"adaptive"``, for small sets of a few thousand clips or fewer, where the
critic overfits within minutes): ``observe(real_scores)`` after each critic step
accumulates the overfitting heuristic r = E[sign(D(x_real))] (sign(D - 0.5) for a critic
that outputs probabilities). Every ``interval`` observations p moves by
``images / speed`` up when r > ``target`` (the critic is too sure of the real clips) and
down otherwise, where ``images`` is the number of real clips observed since the last
update: with the heuristic staying on one side, p moves by 1.0 every ``speed`` real clips.
p stays in [0, p_max]. p lives on the device as a tensor, so nothing here waits for the GPU.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch
from torch import nn

# applied in this order: masks last, so a masked span is exactly the floor whatever the gain
TRANSFORMS = ("shift", "gain", "time_mask", "freq_mask")


class Augment:
    """x [B, 1, R, T] in [-1, 1] -> augmented x, differentiable with respect to x."""

    def __init__(self, transforms: Sequence[str] = TRANSFORMS, p: float = 0.2,
                 mode: Literal["fixed", "adaptive"] = "fixed", target: float = 0.6, speed: int = 20000,
                 interval: int = 4, p_max: float = 0.8, max_gain_db: float = 6.0, top_db: float = 80.0,
                 mask_fraction: float = 0.125, probabilities: bool = False,
                 device: torch.device | str = "cpu", seed: int = 0):
        unknown = set(transforms) - set(TRANSFORMS)
        if unknown:
            raise ValueError(f"unknown transforms {sorted(unknown)}; known: {', '.join(TRANSFORMS)}")
        if mode not in ("fixed", "adaptive"):
            raise ValueError(f"mode must be fixed or adaptive, got {mode!r}")
        if not 0.0 <= p <= 1.0 or not 0.0 < p_max <= 1.0:
            raise ValueError(f"p must be in [0, 1] and p_max in (0, 1], got {p}, {p_max}")
        self.transforms = [t for t in TRANSFORMS if t in transforms]  # in TRANSFORMS order
        self.mode, self.target, self.speed, self.interval = mode, float(target), int(speed), int(interval)
        self.p_max = float(p_max)
        self.gain_scale = 2.0 / float(top_db)  # one dB in the stored [-1, 1] units
        self.max_gain_db, self.mask_fraction = float(max_gain_db), float(mask_fraction)
        self.probabilities = probabilities  # the critic outputs probabilities: the sign is taken of D - 0.5
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed))
        self.p = torch.tensor(float(min(p, p_max) if mode == "adaptive" else p), device=self.device)
        self._sign_sum = torch.zeros((), device=self.device)  # sum of sign(D(x_real)) since the last update
        self._images = 0
        self._observations = 0

    # ------------------------------------------------------------------ the transforms

    def _uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator, device=self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The batch with each transform applied to each sample with probability p."""
        if not self.transforms:
            return x
        b, _, rows, frames = x.shape
        out = x
        for name in self.transforms:
            apply = self._uniform(b) < self.p  # [B]
            u = self._uniform(b, 2)  # [B, 2]: the transform's own draws (amount, position)
            if name == "shift":
                out = _roll_time(out, (u[:, 0] * frames).long().clamp_(max=frames - 1) * apply)
            elif name == "gain":
                offset = (2 * u[:, 0] - 1) * self.max_gain_db * self.gain_scale * apply  # [B]
                out = (out + offset.to(out.dtype).reshape(b, 1, 1, 1)).clamp(-1.0, 1.0)
            else:
                size = frames if name == "time_mask" else rows
                mask = _span(u, size, self.mask_fraction) & apply[:, None]  # [B, size]
                mask = mask[:, None, None, :] if name == "time_mask" else mask[:, None, :, None]
                out = out.masked_fill(mask, -1.0)
        return out

    # ------------------------------------------------------------------ adaptive p

    def observe(self, real_scores: torch.Tensor) -> None:
        """Count one critic step's outputs on real clips [B] towards the heuristic (adaptive only)."""
        s = real_scores.detach().float()
        self.observe_sign(torch.sign(s - 0.5 if self.probabilities else s).sum(), s.numel())

    def observe_sign(self, sign_sum: torch.Tensor, n: int) -> None:
        """As ``observe``, from the sum of sign(D(x_real)) over ``n`` real clips (the loss objects
        report the mean as the named number ``d_real_sign``, and ``gan_step`` its mean over the
        critic steps: pass ``d_real_sign * n, n`` for the n real clips of those steps)."""
        if self.mode != "adaptive":
            return
        self._sign_sum += sign_sum.detach().to(self.device, torch.float32)
        self._images += int(n)
        self._observations += 1
        if self._observations % self.interval == 0:
            heuristic = self._sign_sum / max(self._images, 1)
            step = torch.sign(heuristic - self.target) * (self._images / self.speed)
            self.p = (self.p + step).clamp(0.0, self.p_max)
            self._sign_sum.zero_()
            self._images = 0

    # ------------------------------------------------------------------ resume

    def state_dict(self) -> dict[str, Any]:
        return {"p": float(self.p), "rng": self.generator.get_state(), "sign_sum": float(self._sign_sum),
                "images": self._images, "observations": self._observations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = torch.tensor(float(state["p"]), device=self.device)
        self.generator.set_state(state["rng"].cpu() if isinstance(state["rng"], torch.Tensor) else state["rng"])
        self._sign_sum = torch.tensor(float(state["sign_sum"]), device=self.device)
        self._images, self._observations = int(state["images"]), int(state["observations"])


class AugmentedCritic(nn.Module):
    """``critic`` that augments every input first: hand it to the loss object in place of the
    critic, and real, generated (and penalty) batches are all augmented, each call with its own
    draws. Its parameters are the critic's (``after_critic_step`` clips the same weights)."""

    def __init__(self, critic: nn.Module, augment: Augment):
        super().__init__()
        self.critic = critic
        self.augment = augment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(self.augment(x))


def _roll_time(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Roll each sample of x [B, C, R, T] by its own shifts [B] along time (circularly)."""
    frames = x.shape[-1]
    t = torch.arange(frames, device=x.device)
    index = (t[None, :] - shifts[:, None].to(x.device)) % frames  # [B, T]: out[..., t] = x[..., t - k]
    return x.gather(-1, index[:, None, None, :].expand_as(x))


def _span(u: torch.Tensor, size: int, fraction: float) -> torch.Tensor:
    """[B, size] masks of one span each: width 1..max(1, fraction * size), start uniform."""
    widest = max(1, int(fraction * size))
    width = 1 + (u[:, 0] * widest).long().clamp_(max=widest - 1)  # [B]
    start = (u[:, 1] * (size - width + 1)).long()  # [B]
    pos = torch.arange(size, device=u.device)[None, :]
    return (pos >= start[:, None]) & (pos < (start + width)[:, None])


def from_config(train_cfg: Any, top_db: float, probabilities: bool, device: torch.device | str,
                seed: int) -> Augment | None:
    """The ``Augment`` a TrainConfig asks for (None when ``augment`` is off). ``probabilities``:
    the critic ends in a Sigmoid (``ModelSpec.critic_has_sigmoid``)."""
    tc = train_cfg
    if tc.augment == "off":
        return None
    p = tc.augment_p if tc.augment_p is not None else (0.2 if tc.augment == "fixed" else 0.0)
    return Augment(tc.augment_transforms, p=p, mode=tc.augment, target=tc.augment_target, speed=tc.augment_speed,
                   interval=tc.augment_interval, p_max=tc.augment_p_max, max_gain_db=tc.augment_gain_db,
                   top_db=top_db, probabilities=probabilities, device=device, seed=seed)
