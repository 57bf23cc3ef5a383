"""Loss objects of the four GANs. Each returns its loss tensor and named numbers.

The training loop is the same for every model; what differs lives here:

* ``critic_loss(critic, real, fake, rng)`` -> (loss, {name: 0-d tensor}) for one critic step,
* ``after_critic_step(critic)`` -> whatever must hold after the optimiser step
  (WGAN-WC's weight clipping),
* ``generator_loss(critic, fake)`` -> (loss, {name: 0-d tensor}),
* ``n_critic``: critic steps per generator step.

Named numbers are detached 0-d tensors (turning them into floats is the caller's
choice: on a GPU that is a synchronisation). Names used across models: ``d_loss``,
``g_loss``, ``d_real`` (mean critic output on real data, D(x)), ``d_fake`` (on
generated data, D(G(z))), ``wasserstein`` (WGANs' estimate E f(x) - E f(G(z))),
``gradient_penalty`` (WGAN-GP).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

Numbers = dict[str, torch.Tensor]


class GANLoss(Protocol):
    n_critic: int

    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                    rng: torch.Generator | None = None) -> tuple[torch.Tensor, Numbers]: ...

    def after_critic_step(self, critic: nn.Module) -> None: ...

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor) -> tuple[torch.Tensor, Numbers]: ...


def _bce(p: torch.Tensor, target: float) -> torch.Tensor:
    # BCE on probabilities is unsafe in half precision (and autocast refuses it), so it
    # always runs in float32; the Sigmoid output is clamped by BCE itself (log >= -100)
    with torch.autocast(device_type=p.device.type, enabled=False):
        p = p.float()
        return F.binary_cross_entropy(p, torch.full_like(p, target))


class DCGANLoss:
    """Binary cross-entropy on the discriminator's probabilities (Radford et al. 2016).

    The generator minimises -log D(G(z)) (the non-saturating loss) rather than
    log(1 - D(G(z))), which has no gradient while D wins easily early on.
    """

    def __init__(self, n_critic: int = 1):
        self.n_critic = n_critic

    def critic_loss(self, critic, real, fake, rng=None):
        p_real = critic(real)  # [B]
        p_fake = critic(fake)  # [B]
        loss = _bce(p_real, 1.0) + _bce(p_fake, 0.0)
        return loss, {"d_loss": loss.detach(), "d_real": p_real.detach().float().mean(),
                      "d_fake": p_fake.detach().float().mean()}

    def after_critic_step(self, critic):
        pass

    def generator_loss(self, critic, fake):
        p_fake = critic(fake)  # [B]
        loss = _bce(p_fake, 1.0)
        return loss, {"g_loss": loss.detach(), "d_fake_g": p_fake.detach().float().mean()}


class WassersteinLoss:
    """The Wasserstein critic loss E f(G(z)) - E f(x) and generator loss -E f(G(z))."""

    def __init__(self, n_critic: int = 5):
        self.n_critic = n_critic

    def critic_loss(self, critic, real, fake, rng=None):
        f_real = critic(real).float().mean()
        f_fake = critic(fake).float().mean()
        w = f_real - f_fake
        loss = -w
        return loss, {"d_loss": loss.detach(), "wasserstein": w.detach(), "d_real": f_real.detach(),
                      "d_fake": f_fake.detach()}

    def after_critic_step(self, critic):
        pass

    def generator_loss(self, critic, fake):
        f_fake = critic(fake).float().mean()
        loss = -f_fake
        return loss, {"g_loss": loss.detach(), "d_fake_g": f_fake.detach()}


class WGANClipLoss(WassersteinLoss):
    """WGAN with weight clipping (Arjovsky et al. 2017): after every critic step each critic
    parameter is clamped to [-clip_value, clip_value], a crude Lipschitz constraint."""

    def __init__(self, clip_value: float = 0.01, n_critic: int = 5):
        super().__init__(n_critic)
        self.clip_value = clip_value

    @torch.no_grad()
    def after_critic_step(self, critic):
        for p in critic.parameters():
            p.clamp_(-self.clip_value, self.clip_value)


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     rng: torch.Generator | None = None) -> torch.Tensor:
    """E[(||grad_x f(x_hat)||_2 - 1)^2] on x_hat = eps x + (1 - eps) G(z), eps ~ U[0, 1] per sample
    (Gulrajani et al. 2017). Differentiable with respect to the critic's parameters."""
    b = real.shape[0]
    eps = torch.rand(b, 1, 1, 1, generator=rng, device=real.device, dtype=real.dtype)  # [B, 1, 1, 1]
    x_hat = (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)  # [B, 1, R, R]
    scores = critic(x_hat)  # [B]
    (grads,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)  # [B, 1, R, R]
    norms = grads.reshape(b, -1).float().norm(2, dim=1)  # [B]
    return ((norms - 1.0) ** 2).mean()


class WGANGPLoss(WassersteinLoss):
    """WGAN with gradient penalty (Gulrajani et al. 2017): the critic loss adds
    ``gp_weight`` times the gradient penalty on interpolates of real and generated data."""

    def __init__(self, gp_weight: float = 10.0, n_critic: int = 5):
        super().__init__(n_critic)
        self.gp_weight = gp_weight

    def critic_loss(self, critic, real, fake, rng=None):
        loss, numbers = super().critic_loss(critic, real, fake, rng)
        gp = gradient_penalty(critic, real, fake, rng)
        loss = loss + self.gp_weight * gp
        numbers["gradient_penalty"] = gp.detach()
        numbers["d_loss"] = loss.detach()
        return loss, numbers
