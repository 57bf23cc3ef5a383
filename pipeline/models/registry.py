"""The models of the study by name: generator, critic, loss and default optimiser settings.

Adding a fifth model is one entry in ``MODELS``. Every field of ``OptimDefaults`` can
be overridden by the ``train`` config section (a null there means "model default").
An entry describes its model's defaults (loss kind, whether its critic ends in a Sigmoid,
its regulariser: WGAN-WC's clip, WGAN-GP's penalty); the options (``train.loss``,
``lr_g``/``lr_d``, ``r1_gamma``, ``model.spectral_norm``, ``model.minibatch_std``,
``model.g_upsample``, ``model.d_time_branch``/``g_time_branch``/``d_rhythm_branch``,
per-bin statistics) apply to any entry the same way, with no per-model branch.

    spec = get_model("wgan-gp")
    G = spec.build_generator(config.model, resolution=64)   # z [B, latent_dim] -> [B, 1, 64, 64]
    D = spec.build_critic(config.model, resolution=64)      # [B, 1, 64, 64] -> [B]
    loss = spec.make_loss(config.train)                     # WGANGPLoss(gp_weight=10, n_critic=5)
    opt_g, opt_d = spec.make_optimizers(G, D, config.train)

With options, pass the train section and the per-bin statistics to the builders, so the
critic's last layer agrees with the loss (``build_critic(mc, R, train_cfg, bin_stats)``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import torch
from torch import nn

from pipeline.config import ModelConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.models import losses, networks
from pipeline.models.networks import FIGURES


@dataclass(frozen=True)
class OptimDefaults:
    """Optimiser and loss settings a model trains with unless the config overrides them."""

    optimizer: Literal["adam", "rmsprop"]
    lr: float
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: int = 1
    clip_value: Optional[float] = None
    gp_weight: Optional[float] = None
    loss: Literal["bce", "wasserstein", "hinge"] = "wasserstein"
    lr_g: Optional[float] = None  # settings() fills these with lr unless the config sets them
    lr_d: Optional[float] = None
    r1_gamma: Optional[float] = None
    r1_every: int = 16
    rhythm_match: Optional[float] = None

    def required(self, key: str) -> float:
        """A loss setting its model cannot train without (the spec's defaults always set it)."""
        value = getattr(self, key)
        if value is None:
            raise ValueError(f"{key} is not set for this model")
        return float(value)


BinStats = Mapping[str, Sequence[float]]  # {"mean": [R], "std": [R]} (MelDataset.bin_stats)

# (settings, objective, extra penalties) -> the model's loss with its own regulariser
LossFactory = Callable[[OptimDefaults, losses.Objective, list[losses.Penalty]], losses.GANLoss]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    generator: Callable[[ModelConfig, int], networks.Generator]
    critic: Callable[[ModelConfig, int], networks.Critic]
    loss: LossFactory
    defaults: OptimDefaults
    generator_figure: str
    critic_figure: str
    critic_kind: Literal["discriminator", "critic"] = "critic"  # what plots and tables call it

    def build_generator(self, model_cfg: ModelConfig, resolution: int = 64,
                        bin_stats: BinStats | None = None) -> networks.Generator:
        """z [B, latent_dim] (or [B, latent_dim, 1, 1]) -> [B, 1, R, R] in [-1, 1], DCGAN-initialised,
        its doubling layers resize convolutions when ``model_cfg.g_upsample`` is nearest, with a
        frame-making ``TimeGenerator`` beside the figure's layers when ``model_cfg.g_time_branch``.

        With ``bin_stats`` (per_bin normalisation) the Tanh output y becomes
        clamp(mean + scale * y, -1, 1) per row, scale = ``networks.bin_scale(std)``."""
        g = self.generator(model_cfg, resolution)
        if model_cfg.g_upsample == "nearest":
            networks.use_resize_convolutions(g)
        if model_cfg.g_time_branch:
            networks.add_time_branch(g, 4 * model_cfg.g_width)
        networks.init_weights(g)
        if bin_stats is not None:
            networks.add_bin_normalization(g, bin_stats["mean"], networks.bin_scale(bin_stats["std"]))
        return g

    def critic_has_sigmoid(self, train_cfg: TrainConfig | None = None) -> bool:
        """Whether the critic outputs probabilities: its figure ends in a Sigmoid and the loss is bce
        (a hinge or Wasserstein critic must output raw scores)."""
        return FIGURES[self.critic_figure][-1] == "Sigmoid" and self.settings(train_cfg).loss == "bce"

    def build_critic(self, model_cfg: ModelConfig, resolution: int = 64, train_cfg: TrainConfig | None = None,
                     bin_stats: BinStats | None = None) -> networks.Critic:
        """[B, 1, R, R] -> [B] (probability for a bce-trained DCGAN, score otherwise), DCGAN-initialised,
        with the minibatch spread before its last convolution when ``model_cfg.minibatch_std``,
        a ``TimeCritic`` beside the figure's layers when ``model_cfg.d_time_branch``, a ``RhythmCritic``
        when ``model_cfg.d_rhythm_branch``,
        spectrally normalised when ``model_cfg.spectral_norm``; with ``bin_stats`` its input is
        standardised per row first. Pass the ``train_cfg`` that ``make_loss`` gets: the loss kind
        decides whether a DCGAN critic keeps its Sigmoid."""
        d = self.critic(model_cfg, resolution)
        if isinstance(d.net[-1], nn.Sigmoid) and not self.critic_has_sigmoid(train_cfg):
            d.net = nn.Sequential(*list(d.net)[:-1])
        if model_cfg.minibatch_std:
            networks.add_minibatch_std(d)
        if model_cfg.d_time_branch:
            networks.add_time_branch(d, 4 * model_cfg.d_width, model_cfg.leaky_slope)
        if model_cfg.d_rhythm_branch:
            networks.add_rhythm_branch(d, 4 * model_cfg.d_width, model_cfg.leaky_slope)
        networks.init_weights(d)
        if model_cfg.spectral_norm:
            networks.apply_spectral_norm(d)
        if bin_stats is not None:
            networks.add_bin_normalization(d, bin_stats["mean"], networks.bin_scale(bin_stats["std"]))
        return d

    def settings(self, train_cfg: TrainConfig | None = None) -> OptimDefaults:
        """This model's defaults with the config's non-null overrides applied, the learning rates
        of both networks resolved (everything the loop logs as params)."""
        values = asdict(self.defaults)
        if train_cfg is not None:
            for key in values:
                override = getattr(train_cfg, key)
                if override is not None:
                    values[key] = tuple(override) if key == "betas" else override
        for key in ("lr_g", "lr_d"):
            if values[key] is None:
                values[key] = values["lr"]
        return OptimDefaults(**values)

    def make_loss(self, train_cfg: TrainConfig | None = None) -> losses.GANLoss:
        """The model's loss with ``train.loss`` as its objective (bce becomes bce with logits on a
        critic without Sigmoid), a lazy R1 penalty when ``train.r1_gamma`` is set and the generator's
        rhythm matching when ``train.rhythm_match`` is."""
        s = self.settings(train_cfg)
        objective: losses.Objective = s.loss
        if s.loss == "bce" and not self.critic_has_sigmoid(train_cfg):
            objective = "bce_logits"
        extra: list[losses.Penalty] = [losses.LazyR1(s.r1_gamma, s.r1_every)] if s.r1_gamma else []
        loss = self.loss(s, objective, extra)
        if s.rhythm_match:
            loss.matches.append(losses.RhythmMatch(s.rhythm_match))
        return loss

    def make_optimizers(self, generator: nn.Module, critic: nn.Module,
                        train_cfg: TrainConfig | None = None) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
        """(generator optimiser at lr_g, critic optimiser at lr_d); both lr unless the config sets them."""
        s = self.settings(train_cfg)
        make = OPTIMIZERS[s.optimizer]
        return make(generator.parameters(), s, s.lr_g or s.lr), make(critic.parameters(), s, s.lr_d or s.lr)


OPTIMIZERS: dict[str, Callable[[Any, OptimDefaults, float], torch.optim.Optimizer]] = {
    "adam": lambda params, s, lr: torch.optim.Adam(params, lr=lr, betas=s.betas),
    "rmsprop": lambda params, s, lr: torch.optim.RMSprop(params, lr=lr),
}


MODELS: dict[str, ModelSpec] = {
    "dcgan1": ModelSpec(
        name="dcgan1",
        description="DCGAN1: discriminator Figure 1, generator Figure 2; BCE, Adam 2e-4",
        generator=networks.dcgan1_generator,
        critic=networks.dcgan1_discriminator,
        loss=lambda s, objective, extra: losses.DCGANLoss(s.n_critic, objective, extra),
        defaults=OptimDefaults("adam", 2e-4, (0.5, 0.999), n_critic=1, loss="bce"),
        generator_figure="figure2",
        critic_figure="figure1",
        critic_kind="discriminator",
    ),
    "dcgan2": ModelSpec(
        name="dcgan2",
        description="DCGAN2: discriminator Figure 3, generator Figure 4; BCE, Adam 2e-4",
        generator=networks.dcgan2_generator,
        critic=networks.dcgan2_discriminator,
        loss=lambda s, objective, extra: losses.DCGANLoss(s.n_critic, objective, extra),
        defaults=OptimDefaults("adam", 2e-4, (0.5, 0.999), n_critic=1, loss="bce"),
        generator_figure="figure4",
        critic_figure="figure3",
        critic_kind="discriminator",
    ),
    "wgan-wc": ModelSpec(
        name="wgan-wc",
        description="WGAN with weight clipping: critic Figure 5, generator Figure 6; RMSprop 5e-5, clip 0.01",
        generator=networks.wgan_generator,
        critic=networks.wgan_critic,
        loss=lambda s, objective, extra: losses.WGANClipLoss(s.required("clip_value"), s.n_critic, objective, extra),
        defaults=OptimDefaults("rmsprop", 5e-5, n_critic=5, clip_value=0.01),
        generator_figure="figure6",
        critic_figure="figure5",
    ),
    "wgan-gp": ModelSpec(
        name="wgan-gp",
        description="WGAN with gradient penalty: critic Figure 5, generator Figure 6; Adam 1e-4, lambda 10",
        generator=networks.wgan_generator,
        critic=networks.wgan_critic,
        loss=lambda s, objective, extra: losses.WGANGPLoss(s.required("gp_weight"), s.n_critic, objective, extra),
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
