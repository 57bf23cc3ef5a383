"""One generator step of any GAN: ``n_critic`` critic steps, then one generator step.

The same function runs in ``technogan train`` and in the benchmark's bare loop, so
the two measure the same arithmetic. Everything model-specific is in the loss object.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from pipeline.models.losses import GANLoss


def grad_norm(module: nn.Module) -> torch.Tensor:
    """L2 norm of all parameter gradients (0 when there are none)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.nn.utils.get_total_norm(grads, 2.0)


def gan_step(generator: nn.Module, critic: nn.Module, loss: GANLoss, opt_g: torch.optim.Optimizer,
             opt_d: torch.optim.Optimizer, reals: Sequence[torch.Tensor], latent_dim: int,
             rng: torch.Generator, autocast: contextlib.AbstractContextManager | None = None,
             with_norms: bool = True) -> dict[str, torch.Tensor]:
    """Train on ``reals`` (``loss.n_critic`` batches [B, 1, R, R]); returns named 0-d tensors:
    the critic's numbers averaged over its steps (a WGAN's five critic steps differ, and
    the last alone is a noisy reading), the critic's gradient norm of its last step.

    The fake batch of the last critic step is kept (with its graph) for the generator
    step, as in the DCGAN reference: one generator forward fewer per step.
    """
    amp = autocast or contextlib.nullcontext()
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}  # a lazy penalty reports on some critic steps only
    fake = None
    d_grad_norm = None
    for i, real in enumerate(reals):
        last = i == len(reals) - 1
        z = torch.randn(real.shape[0], latent_dim, generator=rng, device=real.device)  # [B, Z]
        with amp, (contextlib.nullcontext() if last else torch.no_grad()):
            fake = generator(z)  # [B, 1, R, R]
        opt_d.zero_grad(set_to_none=True)
        with amp:
            d_loss, numbers_d = loss.critic_loss(critic, real, fake.detach(), rng)
        d_loss.backward()
        if last and with_norms:
            d_grad_norm = grad_norm(critic).detach()
        opt_d.step()
        loss.after_critic_step(critic)
        for k, v in numbers_d.items():  # summed on the device: no sync per critic step
            sums[k] = sums[k] + v if k in sums else v
            counts[k] = counts.get(k, 0) + 1
    numbers = {k: v / counts[k] for k, v in sums.items()}
    if d_grad_norm is not None:
        numbers["d_grad_norm"] = d_grad_norm
    opt_g.zero_grad(set_to_none=True)
    assert fake is not None, "gan_step needs at least one real batch"
    with amp:
        g_loss, numbers_g = loss.generator_loss(critic, fake)
    g_loss.backward()
    if with_norms:
        numbers_g["g_grad_norm"] = grad_norm(generator).detach()
    opt_g.step()
    numbers.update(numbers_g)
    return numbers
