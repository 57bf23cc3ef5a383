"""The models of the study by name: generator, critic, loss and default optimiser settings.

Adding a fifth model is one entry in ``MODELS``. Every field of ``OptimDefaults`` can
be overridden by the ``train`` config section (a null there means "model default").

    spec = get_model("wgan-gp")
    G = spec.build_generator(config.model, resolution=64)   # z [B, latent_dim] -> [B, 1, 64, 64]
    D = spec.build_critic(config.model, resolution=64)      # [B, 1, 64, 64] -> [B]
    loss = spec.make_loss(config.train)                     # WGANGPLoss(gp_weight=10, n_critic=5)
    opt_g, opt_d = spec.make_optimizers(G, D, config.train)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Optional

import torch
from torch import nn

from pipeline.config import ModelConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.models import losses, networks


@dataclass(frozen=True)
class OptimDefaults:
    """Optimiser and loss settings a model trains with unless the config overrides them."""

    optimizer: Literal["adam", "rmsprop"]
    lr: float
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: int = 1
    clip_value: Optional[float] = None
    gp_weight: Optional[float] = None

    def required(self, key: str) -> float:
        """A loss setting its model cannot train without (the spec's defaults always set it)."""
        value = getattr(self, key)
        if value is None:
            raise ValueError(f"{key} is not set for this model")
        return float(value)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    generator: Callable[[ModelConfig, int], networks.Generator]
    critic: Callable[[ModelConfig, int], networks.Critic]
    loss: Callable[["OptimDefaults"], losses.GANLoss]
    defaults: OptimDefaults
    generator_figure: str
    critic_figure: str
    critic_kind: Literal["discriminator", "critic"] = "critic"  # what plots and tables call it

    def build_generator(self, model_cfg: ModelConfig, resolution: int = 64) -> networks.Generator:
        """z [B, latent_dim] (or [B, latent_dim, 1, 1]) -> [B, 1, R, R] in [-1, 1], DCGAN-initialised."""
        g = self.generator(model_cfg, resolution)
        networks.init_weights(g)
        return g

    def build_critic(self, model_cfg: ModelConfig, resolution: int = 64) -> networks.Critic:
        """[B, 1, R, R] -> [B] (probability for DCGANs, score for WGANs), DCGAN-initialised."""
        d = self.critic(model_cfg, resolution)
        networks.init_weights(d)
        return d

    def settings(self, train_cfg: TrainConfig | None = None) -> OptimDefaults:
        """This model's defaults with the config's non-null overrides applied."""
        values = asdict(self.defaults)
        if train_cfg is not None:
            for key in values:
                override = getattr(train_cfg, key)
                if override is not None:
                    values[key] = tuple(override) if key == "betas" else override
        return OptimDefaults(**values)

    def make_loss(self, train_cfg: TrainConfig | None = None) -> losses.GANLoss:
        return self.loss(self.settings(train_cfg))

    def make_optimizers(self, generator: nn.Module, critic: nn.Module,
                        train_cfg: TrainConfig | None = None) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """(generator optimiser, critic optimiser) with the same settings for both networks."""
        s = self.settings(train_cfg)
        return OPTIMIZERS[s.optimizer](generator.parameters(), s), OPTIMIZERS[s.optimizer](critic.parameters(), s)


OPTIMIZERS: dict[str, Callable[[Any, OptimDefaults], torch.optim.Optimizer]] = {
    "adam": lambda params, s: torch.optim.Adam(params, lr=s.lr, betas=s.betas),
    "rmsprop": lambda params, s: torch.optim.RMSprop(params, lr=s.lr),
}


MODELS: dict[str, ModelSpec] = {
    "dcgan1": ModelSpec(
        name="dcgan1",
        description="DCGAN1: discriminator Figure 1, generator Figure 2; BCE, Adam 2e-4",
        generator=networks.dcgan1_generator,
        critic=networks.dcgan1_discriminator,
        loss=lambda s: losses.DCGANLoss(n_critic=s.n_critic),
        defaults=OptimDefaults("adam", 2e-4, (0.5, 0.999), n_critic=1),
        generator_figure="figure2",
        critic_figure="figure1",
        critic_kind="discriminator",
    ),
    "dcgan2": ModelSpec(
        name="dcgan2",
        description="DCGAN2: discriminator Figure 3, generator Figure 4; BCE, Adam 2e-4",
        generator=networks.dcgan2_generator,
        critic=networks.dcgan2_discriminator,
        loss=lambda s: losses.DCGANLoss(n_critic=s.n_critic),
        defaults=OptimDefaults("adam", 2e-4, (0.5, 0.999), n_critic=1),
        generator_figure="figure4",
        critic_figure="figure3",
        critic_kind="discriminator",
    ),
    "wgan-wc": ModelSpec(
        name="wgan-wc",
        description="WGAN with weight clipping: critic Figure 5, generator Figure 6; RMSprop 5e-5, clip 0.01",
        generator=networks.wgan_generator,
        critic=networks.wgan_critic,
        loss=lambda s: losses.WGANClipLoss(clip_value=s.required("clip_value"), n_critic=s.n_critic),
        defaults=OptimDefaults("rmsprop", 5e-5, n_critic=5, clip_value=0.01),
        generator_figure="figure6",
        critic_figure="figure5",
    ),
    "wgan-gp": ModelSpec(
        name="wgan-gp",
        description="WGAN with gradient penalty: critic Figure 5, generator Figure 6; Adam 1e-4, lambda 10",
        generator=networks.wgan_generator,
        critic=networks.wgan_critic,
        loss=lambda s: losses.WGANGPLoss(gp_weight=s.required("gp_weight"), n_critic=s.n_critic),
        defaults=OptimDefaults("adam", 1e-4, (0.5, 0.9), n_critic=5, gp_weight=10.0),
        generator_figure="figure6",
        critic_figure="figure5",
    ),
}


def get_model(name: str) -> ModelSpec:
    """The spec registered under ``name``; UserError listing the known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
