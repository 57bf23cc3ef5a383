"""The four GANs: layer sequences as the study's figures, shapes, losses, registry, checkpoints."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from pipeline import checkpoint as ckpt
from pipeline.config import MelConfig, ModelConfig, TrainConfig
from pipeline.errors import UserError
from pipeline.models import losses
from pipeline.models.networks import FIGURES, layer_types
from pipeline.models.registry import MODELS, ModelSpec, OptimDefaults, get_model
from pipeline.models.summary import layer_table, summarize
from pipeline.train.step import gan_step

SMALL = ModelConfig(g_width=4, d_width=4, latent_dim=8)

# the figures of the study, transcribed independently of pipeline.models.networks.FIGURES
EXPECTED = {
    "dcgan1": (  # (critic: Figure 1, generator: Figure 2)
        "Conv2d LeakyReLU Conv2d BatchNorm2d LeakyReLU Dropout Conv2d BatchNorm2d LeakyReLU Conv2d BatchNorm2d "
        "LeakyReLU Conv2d Sigmoid",
        "ConvTranspose2d BatchNorm2d ReLU ConvTranspose2d BatchNorm2d ReLU ConvTranspose2d BatchNorm2d ReLU "
        "ConvTranspose2d BatchNorm2d ReLU ConvTranspose2d Tanh"),
    "dcgan2": (  # Figures 3 and 4
        "Conv2d LeakyReLU Conv2d BatchNorm2d LeakyReLU Dropout Conv2d BatchNorm2d LeakyReLU Dropout Conv2d Sigmoid",
        "ConvTranspose2d BatchNorm2d ReLU ConvTranspose2d BatchNorm2d ReLU Dropout ConvTranspose2d BatchNorm2d ReLU "
        "ConvTranspose2d Tanh"),
    "wgan-wc": (  # Figures 5 and 6
        "Conv2d LeakyReLU Conv2d InstanceNorm2d LeakyReLU Dropout Conv2d InstanceNorm2d LeakyReLU Dropout Conv2d",
        "ConvTranspose2d BatchNorm2d ReLU ConvTranspose2d BatchNorm2d ReLU Dropout ConvTranspose2d BatchNorm2d ReLU "
        "ConvTranspose2d Tanh"),
}
EXPECTED["wgan-gp"] = EXPECTED["wgan-wc"]


def test_the_registry_has_the_four_models_of_the_study():
    assert list(MODELS) == ["dcgan1", "dcgan2", "wgan-wc", "wgan-gp"]


@pytest.mark.parametrize("name", list(EXPECTED))
@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_layer_sequences_are_the_figures_at_every_resolution(name, resolution):
    spec = get_model(name)
    critic_fig, gen_fig = EXPECTED[name]
    assert layer_types(spec.build_critic(SMALL, resolution)) == critic_fig.split()
    assert layer_types(spec.build_generator(SMALL, resolution)) == gen_fig.split()
    assert FIGURES[spec.critic_figure] == critic_fig.split()
    assert FIGURES[spec.generator_figure] == gen_fig.split()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_output_shapes(name, resolution):
    spec = get_model(name)
    g, d = spec.build_generator(SMALL, resolution), spec.build_critic(SMALL, resolution)
    z = torch.randn(3, SMALL.latent_dim)
    x = g(z)
    assert x.shape == (3, 1, resolution, resolution)
    assert x.abs().max() <= 1.0  # Tanh
    assert torch.equal(g.eval()(z), g(z[:, :, None, None]))  # both latent shapes are accepted
    y = d(x)
    assert y.shape == (3,)
    if name.startswith("dcgan"):
        assert ((y >= 0) & (y <= 1)).all()  # Sigmoid probabilities


@pytest.mark.parametrize("name", list(MODELS))
def test_resolution_changes_only_the_first_generator_and_last_critic_kernels(name):
    spec = get_model(name)

    def convs(module):
        return [(m.kernel_size, m.stride, m.in_channels, m.out_channels) for m in module.modules()
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]

    g32, g128 = convs(spec.build_generator(SMALL, 32)), convs(spec.build_generator(SMALL, 128))
    d32, d128 = convs(spec.build_critic(SMALL, 32)), convs(spec.build_critic(SMALL, 128))
    assert g32[1:] == g128[1:] and g32[0] != g128[0]
    assert d32[:-1] == d128[:-1] and d32[-1] != d128[-1]
    assert g32[0][0] == d32[-1][0]  # both cover the same bottleneck map


@pytest.mark.parametrize("resolution", [16, 48, 512])
def test_unsupported_resolutions_are_user_errors(resolution):
    with pytest.raises(UserError, match="power of two"):
        get_model("dcgan1").build_generator(SMALL, resolution)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UserError) as e:
        get_model("stylegan")
    for name in MODELS:
        assert name in str(e.value)


def test_a_fifth_model_is_one_registry_entry(monkeypatch):
    base = MODELS["wgan-gp"]
    fifth = ModelSpec("wgan-gp-rms", "WGAN-GP with RMSprop", base.generator, base.critic, base.loss,
                      OptimDefaults("rmsprop", 1e-4, n_critic=2, gp_weight=5.0), "figure6", "figure5")
    monkeypatch.setitem(MODELS, "wgan-gp-rms", fifth)
    spec = get_model("wgan-gp-rms")
    loss = spec.make_loss(TrainConfig())
    assert isinstance(loss, losses.WGANGPLoss) and loss.n_critic == 2 and loss.gp_weight == 5.0
    opt_g, _ = spec.make_optimizers(spec.build_generator(SMALL, 32), spec.build_critic(SMALL, 32))
    assert isinstance(opt_g, torch.optim.RMSprop)


def test_defaults_of_the_study_and_config_overrides():
    s = get_model("dcgan1").settings()
    assert (s.optimizer, s.lr, s.betas, s.n_critic) == ("adam", 2e-4, (0.5, 0.999), 1)
    s = get_model("wgan-wc").settings()
    assert (s.optimizer, s.lr, s.n_critic, s.clip_value) == ("rmsprop", 5e-5, 5, 0.01)
    s = get_model("wgan-gp").settings()
    assert (s.optimizer, s.lr, s.betas, s.n_critic, s.gp_weight) == ("adam", 1e-4, (0.5, 0.9), 5, 10.0)
    s = get_model("wgan-gp").settings(TrainConfig(lr=3e-4, n_critic=2, gp_weight=1.0, betas=(0.0, 0.9)))
    assert (s.lr, s.n_critic, s.gp_weight, s.betas) == (3e-4, 2, 1.0, (0.0, 0.9))
    opt_g, opt_d = get_model("wgan-wc").make_optimizers(nn.Linear(2, 2), nn.Linear(2, 2), TrainConfig(lr=1e-3))
    assert isinstance(opt_d, torch.optim.RMSprop) and opt_d.param_groups[0]["lr"] == 1e-3


def _one_step(name: str, seed: int = 0):
    torch.manual_seed(seed)
    spec = get_model(name)
    g, d = spec.build_generator(SMALL, 32), spec.build_critic(SMALL, 32)
    loss = spec.make_loss(TrainConfig())
    opt_g, opt_d = spec.make_optimizers(g, d, TrainConfig(lr=1e-2))
    reals = [torch.rand(4, 1, 32, 32) * 2 - 1 for _ in range(loss.n_critic)]
    before = ({k: v.clone() for k, v in g.state_dict().items()}, {k: v.clone() for k, v in d.state_dict().items()})
    numbers = gan_step(g, d, loss, opt_g, opt_d, reals, SMALL.latent_dim, torch.Generator().manual_seed(seed))
    return g, d, loss, before, numbers


@pytest.mark.parametrize("name", list(MODELS))
def test_one_training_step_changes_both_networks(name):
    g, d, _, (g0, d0), numbers = _one_step(name)
    for net, before in ((g, g0), (d, d0)):
        changed = [k for k, p in net.named_parameters() if not torch.equal(p.detach(), before[k])]
        assert len(changed) == len(list(net.parameters())), f"{name}: unchanged {set(before) - set(changed)}"
    assert {"d_loss", "g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm"} <= set(numbers)
    assert all(torch.isfinite(v) for v in numbers.values())
    if name.startswith("wgan"):
        assert "wasserstein" in numbers
    assert ("gradient_penalty" in numbers) == (name == "wgan-gp")


@pytest.mark.parametrize("name", ["wgan-gp", "wgan-wc"])
def test_a_step_reports_the_critics_numbers_averaged_over_its_critic_steps(name):
    torch.manual_seed(0)
    spec = get_model(name)
    g, d = spec.build_generator(SMALL, 32), spec.build_critic(SMALL, 32)
    loss = spec.make_loss(TrainConfig())
    opt_g, opt_d = spec.make_optimizers(g, d, TrainConfig(lr=1e-2))
    seen, critic_loss = [], loss.critic_loss

    def recording(*args):
        out = critic_loss(*args)
        seen.append({k: float(v) for k, v in out[1].items()})
        return out

    loss.critic_loss = recording
    reals = [torch.rand(4, 1, 32, 32) * 2 - 1 for _ in range(loss.n_critic)]
    numbers = gan_step(g, d, loss, opt_g, opt_d, reals, SMALL.latent_dim, torch.Generator().manual_seed(0))
    assert len(seen) == loss.n_critic == 5
    for key in seen[0]:
        steps = [s[key] for s in seen]
        assert float(numbers[key]) == pytest.approx(sum(steps) / len(steps), rel=1e-5), key
    # the steps differ, so the last one alone would not pass the check above
    assert len({round(s["d_loss"], 6) for s in seen}) > 1


def test_weight_clipping_holds_after_a_step():
    _, d, loss, _, _ = _one_step("wgan-wc")
    assert loss.clip_value == 0.01
    bound = max(p.detach().abs().max().item() for p in d.parameters())
    assert bound <= 0.01 + 1e-12
    # with lr 1e-2 the unclipped step would leave many weights outside the bound
    assert bound == pytest.approx(0.01)


class _Linear(nn.Module):
    """f(x) = <w, x>: its input gradient is w for every sample."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


class Square(nn.Module):
    """f(x) = a * sum(x^2) / 2: its input gradient is a * x."""

    def __init__(self, a: float):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a))

    def forward(self, x):
        return self.a * (x**2).flatten(1).sum(1) / 2


def test_gradient_penalty_equals_a_hand_computation():
    w = torch.full((1, 2, 2), 0.3)  # ||w|| = 0.6
    critic = _Linear(w)
    real, fake = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    assert losses.gradient_penalty(critic, real, fake).item() == pytest.approx((0.6 - 1.0) ** 2)

    # a critic whose gradient depends on the interpolate: ||a x_hat|| per sample
    critic = Square(2.0)
    gp = losses.gradient_penalty(critic, real, fake, torch.Generator().manual_seed(3))
    eps = torch.rand(5, 1, 1, 1, generator=torch.Generator().manual_seed(3))
    x_hat = eps * real + (1 - eps) * fake
    hand = ((2.0 * x_hat.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
    assert gp.item() == pytest.approx(hand.item(), rel=1e-5)
    gp.backward()  # differentiable with respect to the critic's parameters
    assert critic.a.grad is not None and critic.a.grad != 0

    # the WGAN-GP loss adds lambda * penalty to the Wasserstein critic loss
    loss = losses.WGANGPLoss(gp_weight=10.0)
    critic = _Linear(w)
    total, numbers = loss.critic_loss(critic, real, fake)
    w_est = critic(real).mean() - critic(fake).mean()
    assert total.item() == pytest.approx((-w_est + 10 * (0.6 - 1.0) ** 2).item(), rel=1e-5)
    assert numbers["wasserstein"].item() == pytest.approx(w_est.item(), rel=1e-5)


def test_dcgan_loss_is_bce_with_the_non_saturating_generator_loss():
    class Const(nn.Module):
        def __init__(self, p):
            super().__init__()
            self.p = nn.Parameter(torch.tensor(p))

        def forward(self, x):
            return self.p.expand(x.shape[0])

    loss = losses.DCGANLoss()
    x = torch.zeros(3, 1, 4, 4)
    d_loss, numbers = loss.critic_loss(Const(0.8), x, x)
    assert d_loss.item() == pytest.approx(-math.log(0.8) - math.log(1 - 0.8), rel=1e-5)  # fake scored 0.8 too
    assert numbers["d_real"].item() == pytest.approx(0.8)
    g_loss, _ = loss.generator_loss(Const(0.25), x)
    assert g_loss.item() == pytest.approx(-math.log(0.25), rel=1e-5)  # -log D(G(z)), not log(1 - D(G(z)))


def test_summary_prints_the_figures_format(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "models", "--model", "dcgan2", "--resolution", "128"],
                         capture_output=True, text=True, check=True).stdout
    for _i, t in enumerate(EXPECTED["dcgan2"][0].split() + EXPECTED["dcgan2"][1].split()):
        assert f"{t}-" in out
    assert "Conv2d-1 " in out and "Sigmoid-12 " in out and "Tanh-12 " in out
    assert "[-1, 1, 128, 128]" in out  # generator output at the chosen resolution
    rows = layer_table(get_model("dcgan1").build_critic(ModelConfig(), 64), torch.zeros(2, 1, 64, 64))
    assert rows[0] == ("Conv2d-1", [-1, 64, 32, 32], 64 * 1 * 4 * 4 + 64)
    assert rows[-1][0] == "Sigmoid-14" and rows[-1][1] == [-1, 1, 1, 1]
    assert "Figure 5" in summarize("wgan-gp", SMALL, 32)
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "models", "--model", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "dcgan1" in bad.stderr


def test_generator_checkpoint_round_trip(tmp_path):
    spec = get_model("dcgan2")
    g = spec.build_generator(SMALL, 32)
    meta = {"model": "dcgan2", "model_config": SMALL.model_dump(), "resolution": 32,
            "latent_dim": SMALL.latent_dim, "mel_config": MelConfig().to_dict(), "run_id": "abc", "step": 7}
    path = ckpt.save_generator(tmp_path / "g.pt", g, meta)
    raw = torch.load(path, weights_only=True)  # plain types and tensors only
    assert raw["format"] == "technogan-generator/1" and set(raw) == {"format", "state_dict", "meta"}
    assert json.loads(raw["meta"])["run_id"] == "abc"
    loaded, meta2 = ckpt.load_generator(path)
    assert not loaded.training
    z = torch.randn(2, SMALL.latent_dim)
    assert torch.equal(loaded(z), g.eval()(z))
    assert meta2["mel_config"] == MelConfig().to_dict() and meta2["step"] == 7
    assert ckpt.read_meta(path)["model"] == "dcgan2"
    assert not list(tmp_path.glob(".tmp-*"))  # atomic: no temp file left behind
    with pytest.raises(ValueError, match="mel_config"):
        ckpt.save_generator(tmp_path / "bad.pt", g, {"model": "dcgan2"})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pt"):
        ckpt.load_generator(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="junk.pt: not a readable checkpoint"):
        ckpt.read_meta(tmp_path / "junk.pt")
