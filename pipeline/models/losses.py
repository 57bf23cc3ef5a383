"""Loss objects of the GANs. Each returns its loss tensor and named numbers.

The training loop is the same for every model; what differs lives here:

* ``critic_loss(critic, real, fake, rng)`` -> (loss, {name: 0-d tensor}) for one critic step,
* ``after_critic_step(critic)`` -> whatever must hold after the optimiser step
  (WGAN-WC's weight clipping),
* ``generator_loss(critic, fake)`` -> (loss, {name: 0-d tensor}),
* ``n_critic``: critic steps per generator step,
* ``state_dict()`` / ``load_state_dict(d)``: what a resume needs (the lazy R1 schedule's
  critic-step counter; ``{}`` for a loss without state).

A loss is an adversarial objective (``OBJECTIVES``: bce on probabilities, bce on logits,
wasserstein, hinge) plus composable penalties (WGAN-GP's gradient penalty, R1) and an
optional weight clip; the study's models are fixed combinations of those
(``DCGANLoss``, ``WGANClipLoss``, ``WGANGPLoss``) whose objective the config may swap.

Named numbers are detached 0-d tensors (turning them into floats is the caller's
choice: on a GPU that is a synchronisation). Names used across models: ``d_loss``,
``g_loss``, ``d_real`` (mean critic output on real data, D(x): a probability for the bce
objectives), ``d_fake`` (on generated data, D(G(z))), ``wasserstein`` (the Wasserstein
objective's estimate E f(x) - E f(G(z))), ``gradient_penalty`` (WGAN-GP), ``r1`` (the
unweighted E||grad D(x)||^2, only on the critic steps that compute it).
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.networks import rhythm_description

Numbers = dict[str, torch.Tensor]
Objective = Literal["bce", "bce_logits", "wasserstein", "hinge"]


def _bce(p: torch.Tensor, target: float) -> torch.Tensor:
    # BCE on probabilities is unsafe in half precision (and autocast refuses it), so it
    # always runs in float32; the Sigmoid output is clamped by BCE itself (log >= -100)
    with torch.autocast(device_type=p.device.type, enabled=False):
        p = p.float()
        return F.binary_cross_entropy(p, torch.full_like(p, target))


def _bce_logits(s: torch.Tensor, target: float) -> torch.Tensor:
    s = s.float()
    return F.binary_cross_entropy_with_logits(s, torch.full_like(s, target))


# --------------------------------------------------------------------------- objectives
# each: critic outputs on real and fake [B] -> (critic loss, numbers); fake outputs -> generator loss


def _critic_bce(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, Numbers]:
    loss = _bce(real, 1.0) + _bce(fake, 0.0)
    return loss, {"d_real": real.detach().float().mean(), "d_fake": fake.detach().float().mean()}


def _critic_bce_logits(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, Numbers]:
    loss = _bce_logits(real, 1.0) + _bce_logits(fake, 0.0)
    # reported as probabilities, as with a Sigmoid critic, so the curves compare
    return loss, {"d_real": torch.sigmoid(real.detach().float()).mean(),
                  "d_fake": torch.sigmoid(fake.detach().float()).mean()}


def _critic_wasserstein(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, Numbers]:
    f_real, f_fake = real.float().mean(), fake.float().mean()
    w = f_real - f_fake
    return -w, {"wasserstein": w.detach(), "d_real": f_real.detach(), "d_fake": f_fake.detach()}


def _critic_hinge(real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, Numbers]:
    # Lim & Ye 2017, Miyato et al. 2018: E relu(1 - D(x)) + E relu(1 + D(G(z)))
    real, fake = real.float(), fake.float()
    loss = F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    return loss, {"d_real": real.detach().mean(), "d_fake": fake.detach().mean()}


def _generator_bce(fake: torch.Tensor) -> torch.Tensor:
    # the non-saturating loss -log D(G(z)), not log(1 - D(G(z))), which has no gradient
    # while the discriminator wins easily early on
    return _bce(fake, 1.0)


def _generator_score(fake: torch.Tensor) -> torch.Tensor:
    return -fake.float().mean()  # Wasserstein and hinge: -E D(G(z))


OBJECTIVES: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Numbers]],
                            Callable[[torch.Tensor], torch.Tensor]]] = {
    "bce": (_critic_bce, _generator_bce),
    "bce_logits": (_critic_bce_logits, lambda fake: _bce_logits(fake, 1.0)),
    "wasserstein": (_critic_wasserstein, _generator_score),
    "hinge": (_critic_hinge, _generator_score),
}


# --------------------------------------------------------------------------- penalties


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


def r1_penalty(critic: nn.Module, real: torch.Tensor) -> torch.Tensor:
    """E||grad_x D(x)||^2 on real data (Mescheder et al. 2018), differentiable with respect
    to the critic's parameters. D is the critic's output as built (a probability for a
    Sigmoid critic, whose gradients are smaller by p(1 - p) than the logits')."""
    x = real.detach().requires_grad_(True)  # [B, 1, R, R]
    (grads,) = torch.autograd.grad(critic(x).float().sum(), x, create_graph=True)  # [B, 1, R, R]
    return grads.reshape(x.shape[0], -1).float().pow(2).sum(1).mean()


class Penalty(Protocol):
    """A term added to the critic loss: (weighted term or None when not due this step, numbers)."""

    name: str  # its key in the loss's state_dict

    def __call__(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                 rng: torch.Generator | None) -> tuple[torch.Tensor | None, Numbers]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class GradientPenalty:
    """WGAN-GP's ``weight * gradient_penalty`` on every critic step."""

    name = "gradient_penalty"

    def __init__(self, weight: float):
        self.weight = weight

    def __call__(self, critic, real, fake, rng):
        gp = gradient_penalty(critic, real, fake, rng)
        return self.weight * gp, {"gradient_penalty": gp.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class LazyR1:
    """(gamma / 2) * E||grad D(x_real)||^2 * every, on critic steps 0, every, 2*every, ...
    (StyleGAN2's lazy regularisation: the same expected penalty at 1/every of the cost).
    The critic-step counter is state, so a resumed run keeps the schedule."""

    name = "r1"

    def __init__(self, gamma: float, every: int = 16):
        if every < 1:
            raise ValueError(f"r1_every must be >= 1, got {every}")
        self.gamma, self.every = gamma, every
        self.critic_steps = 0

    def __call__(self, critic, real, fake, rng):
        due = self.critic_steps % self.every == 0
        self.critic_steps += 1
        if not due:
            return None, {}
        r1 = r1_penalty(critic, real)
        return (self.gamma / 2.0) * self.every * r1, {"r1": r1.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"critic_steps": self.critic_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic_steps = int(state["critic_steps"])


class RhythmMatch:
    """Feature matching (Salimans et al. 2016) on the rhythm, added to the generator loss:
    ``weight`` times the squared relative gap, averaged over bands, between the generated and
    the last real batch's periodicity, the mean square of the onsets' autocorrelation over
    lags and clips (``rhythm_description``; a second moment: the mean autocorrelation over
    clips of many tempi is near zero for both). The critic's rhythm branch scores each
    clip's rhythm; this asks the batch's onsets to be, per band, as periodic as real ones."""

    def __init__(self, weight: float, bands: int = 4):
        self.weight, self.bands = weight, bands
        # the last critic step's real batch, described only when the generator steps: a
        # WGAN's earlier critic steps would be described for nothing
        self.real: torch.Tensor | None = None

    def periodicity(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, M, T] -> [K]: per band, the mean over clips and lags of the squared autocorrelation."""
        return rhythm_description(x, self.bands)[..., 1:].square().mean((0, 2))

    def observe_real(self, real: torch.Tensor) -> None:
        self.real = real

    def __call__(self, fake: torch.Tensor) -> tuple[torch.Tensor | None, Numbers]:
        if self.real is None:
            return None, {}
        with torch.no_grad():
            target = self.periodicity(self.real)  # [K]
        gap = ((self.periodicity(fake) - target) / (target + 1e-3)).square().mean()
        return self.weight * gap, {"rhythm_match": gap.detach()}


# --------------------------------------------------------------------------- the loss


class GANLoss:
    """An adversarial objective, penalties added to the critic loss, an optional weight clip."""

    def __init__(self, objective: Objective = "bce", n_critic: int = 1, penalties: Sequence[Penalty] = (),
                 clip_value: float | None = None):
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
        self.objective = objective
        self.n_critic = n_critic
        self.penalties = list(penalties)
        self.clip_value = clip_value
        self.matches: list[RhythmMatch] = []  # terms of the generator loss that need the real batches

    def critic_loss(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                    rng: torch.Generator | None = None) -> tuple[torch.Tensor, Numbers]:
        critic_terms, _ = OBJECTIVES[self.objective]
        out_real = critic(real)  # [B]
        loss, numbers = critic_terms(out_real, critic(fake))
        # ADA's overfitting heuristic E[sign(D(x))], the logit's sign for a probability
        middle = 0.5 if self.objective == "bce" else 0.0
        numbers["d_real_sign"] = torch.sign(out_real.detach().float() - middle).mean()
        for penalty in self.penalties:
            term, extra = penalty(critic, real, fake, rng)
            if term is not None:
                loss = loss + term
            numbers.update(extra)
        for match in self.matches:
            match.observe_real(real)
        numbers["d_loss"] = loss.detach()
        return loss, numbers

    @torch.no_grad()
    def after_critic_step(self, critic: nn.Module) -> None:
        if self.clip_value is not None:
            for p in critic.parameters():
                p.clamp_(-self.clip_value, self.clip_value)

    def generator_loss(self, critic: nn.Module, fake: torch.Tensor) -> tuple[torch.Tensor, Numbers]:
        _, generator_term = OBJECTIVES[self.objective]
        out = critic(fake)  # [B]
        loss = generator_term(out)
        d_fake = torch.sigmoid(out.detach().float()) if self.objective == "bce_logits" else out.detach().float()
        numbers = {"g_loss": loss.detach(), "d_fake_g": d_fake.mean()}  # the adversarial term alone
        for match in self.matches:
            term, extra = match(fake)
            if term is not None:
                loss = loss + term
            numbers.update(extra)
        return loss, numbers

    def state_dict(self) -> dict[str, Any]:
        """Each penalty's state by its name, e.g. {"r1": {"critic_steps": 5}} ({} when none has any)."""
        return {p.name: s for p in self.penalties if (s := p.state_dict())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p in self.penalties:
            if p.name in state:
                p.load_state_dict(state[p.name])


class DCGANLoss(GANLoss):
    """Binary cross-entropy on the discriminator's probabilities (Radford et al. 2016),
    with the non-saturating generator loss -log D(G(z))."""

    def __init__(self, n_critic: int = 1, objective: Objective = "bce", penalties: Sequence[Penalty] = ()):
        super().__init__(objective, n_critic, penalties)


class WassersteinLoss(GANLoss):
    """The Wasserstein critic loss E f(G(z)) - E f(x) and generator loss -E f(G(z))."""

    def __init__(self, n_critic: int = 5, objective: Objective = "wasserstein", penalties: Sequence[Penalty] = (),
                 clip_value: float | None = None):
        super().__init__(objective, n_critic, penalties, clip_value)


class WGANClipLoss(WassersteinLoss):
    """WGAN with weight clipping (Arjovsky et al. 2017): after every critic step each critic
    parameter is clamped to [-clip_value, clip_value], a crude Lipschitz constraint."""

    def __init__(self, clip_value: float = 0.01, n_critic: int = 5, objective: Objective = "wasserstein",
                 penalties: Sequence[Penalty] = ()):
        super().__init__(n_critic, objective, penalties, clip_value)


class WGANGPLoss(WassersteinLoss):
    """WGAN with gradient penalty (Gulrajani et al. 2017): the critic loss adds
    ``gp_weight`` times the gradient penalty on interpolates of real and generated data."""

    def __init__(self, gp_weight: float = 10.0, n_critic: int = 5, objective: Objective = "wasserstein",
                 penalties: Sequence[Penalty] = ()):
        super().__init__(n_critic, objective, [GradientPenalty(gp_weight), *penalties])
        self.gp_weight = gp_weight
