"""Training options any of the four models can use: spectral norm, loss kinds, two
learning rates, lazy R1. Each test would fail if its option were silently ignored."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.config import ConfigError, ModelConfig, TrainConfig, load_config
from pipeline.models import losses
from pipeline.models.networks import FIGURES, layer_types
from pipeline.models.registry import MODELS, get_model
from pipeline.models.summary import layer_table, summarize
from tests.pipeline.test_models import Square  # f(x) = a * sum(x^2) / 2: input gradient a * x
from pipeline.train.step import gan_step

SMALL = ModelConfig(g_width=4, d_width=4, latent_dim=8)
SN = ModelConfig(g_width=4, d_width=4, latent_dim=8, spectral_norm=True)


class Const(nn.Module):
    """A critic whose output for sample i is scores[i] (whatever the input)."""

    def __init__(self, scores):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(scores, dtype=torch.float32))

    def forward(self, x):
        return self.s[: x.shape[0]]


# ----------------------------------------------------------------------------- spectral norm


@pytest.mark.parametrize("name", list(MODELS))
def test_spectral_norm_parametrizes_every_critic_conv_and_keeps_the_figure(name):
    spec = get_model(name)
    plain, d = spec.build_critic(SMALL, 32), spec.build_critic(SN, 32)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in plain.modules())
    assert layer_types(d) == FIGURES[spec.critic_figure] == layer_types(plain)
    # the generator is not touched
    assert not any(torch.nn.utils.parametrize.is_parametrized(m) for m in spec.build_generator(SN, 32).modules())
    # the summary table still counts each conv's weights once
    x = torch.zeros(2, 1, 32, 32)
    assert [r[2] for r in layer_table(d, x)] == [r[2] for r in layer_table(plain, x)]


def test_spectral_norm_bounds_the_largest_singular_value():
    torch.manual_seed(0)
    d = get_model("wgan-gp").build_critic(SN, 32)
    d.train()
    x = torch.randn(4, 1, 32, 32)
    for _ in range(30):  # power iterations run on training-mode forwards
        d(x)
    for m in d.modules():
        if isinstance(m, nn.Conv2d):
            sigma = torch.linalg.matrix_norm(m.weight.detach().reshape(m.weight.shape[0], -1), ord=2)
            assert sigma.item() == pytest.approx(1.0, abs=0.05)
    raw = get_model("wgan-gp").build_critic(SMALL, 32)
    sig = [torch.linalg.matrix_norm(m.weight.reshape(m.weight.shape[0], -1), ord=2).item()
           for m in raw.modules() if isinstance(m, nn.Conv2d)]
    assert max(sig) < 0.9  # N(0, 0.02) weights: normalisation changed them


# ----------------------------------------------------------------------------- loss kinds


def test_hinge_loss_on_hand_made_scores():
    loss = losses.GANLoss("hinge")
    x = torch.zeros(3, 1, 4, 4)
    real, fake = Const([2.0, 0.5, -1.0]), Const([-3.0, 0.0, 0.5])
    # D: mean relu(1 - real) + mean relu(1 + fake) = (0 + .5 + 2)/3 + (0 + 1 + 1.5)/3
    d_loss, numbers = loss.critic_loss(_Split(real, fake), x, x + 1)
    assert d_loss.item() == pytest.approx(2.5 / 3 + 2.5 / 3)
    assert numbers["d_real"].item() == pytest.approx(0.5) and numbers["d_fake"].item() == pytest.approx(-2.5 / 3)
    g_loss, _ = loss.generator_loss(fake, x)
    assert g_loss.item() == pytest.approx(2.5 / 3)  # -E D(G(z))


class _Split(nn.Module):
    """Scores real inputs (all zeros) with one critic and anything else with another."""

    def __init__(self, on_real, on_fake):
        super().__init__()
        self.on_real, self.on_fake = on_real, on_fake

    def forward(self, x):
        return self.on_real(x) if bool((x == 0).all()) else self.on_fake(x)


def test_bce_with_logits_on_hand_made_scores():
    loss = losses.GANLoss("bce_logits")
    x = torch.zeros(2, 1, 4, 4)
    d_loss, numbers = loss.critic_loss(_Split(Const([0.0, 2.0]), Const([-1.0, 1.0])), x, x + 1)
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731  softplus
    hand = (sp(-0.0) + sp(-2.0)) / 2 + (sp(-1.0) + sp(1.0)) / 2
    assert d_loss.item() == pytest.approx(hand, rel=1e-6)
    assert numbers["d_real"].item() == pytest.approx((0.5 + 1 / (1 + math.exp(-2))) / 2)  # a probability
    g_loss, _ = loss.generator_loss(Const([-1.0, 1.0]), x)
    assert g_loss.item() == pytest.approx((sp(1.0) + sp(-1.0)) / 2, rel=1e-6)


@pytest.mark.parametrize("name", ["dcgan1", "dcgan2"])
def test_a_dcgan_critic_loses_its_sigmoid_for_score_losses(name):
    spec = get_model(name)
    for kind in ("hinge", "wasserstein"):
        tc = TrainConfig(loss=kind)
        d = spec.build_critic(SMALL, 32, tc)
        assert layer_types(d) == FIGURES[spec.critic_figure][:-1]  # the figure less its Sigmoid
        loss = spec.make_loss(tc)
        assert loss.objective == kind and loss.clip_value is None
        assert isinstance(loss, losses.DCGANLoss)
        torch.manual_seed(0)
        assert (d(torch.randn(16, 1, 32, 32)) < 0).any()  # raw scores: a probability is never negative
    assert layer_types(spec.build_critic(SMALL, 32, TrainConfig(loss="bce")))[-1] == "Sigmoid"
    assert spec.make_loss(TrainConfig()).objective == "bce"


def test_the_wgans_keep_their_regulariser_whatever_the_loss():
    wc = get_model("wgan-wc").make_loss(TrainConfig(loss="hinge"))
    assert wc.objective == "hinge" and wc.clip_value == 0.01
    gp = get_model("wgan-gp").make_loss(TrainConfig(loss="bce"))
    assert gp.objective == "bce_logits"  # no Sigmoid on a WGAN critic
    assert isinstance(gp, losses.WGANGPLoss) and any(isinstance(p, losses.GradientPenalty) for p in gp.penalties)
    critic = get_model("wgan-gp").build_critic(SMALL, 32, TrainConfig(loss="bce"))
    assert layer_types(critic)[-1] == "Conv2d"
    _, numbers = gp.critic_loss(critic, torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32))
    assert "gradient_penalty" in numbers and 0 < numbers["d_real"].item() < 1


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("kind", ["bce", "wasserstein", "hinge"])
def test_every_model_trains_a_step_with_every_loss_and_options(name, kind):
    torch.manual_seed(0)
    spec = get_model(name)
    tc = TrainConfig(loss=kind, n_critic=2, r1_gamma=1.0, r1_every=1, lr_g=1e-3, lr_d=3e-3)
    g, d = spec.build_generator(SN, 32), spec.build_critic(SN, 32, tc)
    loss = spec.make_loss(tc)
    opt_g, opt_d = spec.make_optimizers(g, d, tc)
    reals = [torch.rand(4, 1, 32, 32) * 2 - 1 for _ in range(loss.n_critic)]
    numbers = gan_step(g, d, loss, opt_g, opt_d, reals, SN.latent_dim, torch.Generator().manual_seed(0))
    assert {"d_loss", "g_loss", "d_real", "d_fake", "r1"} <= set(numbers)
    assert all(torch.isfinite(v) for v in numbers.values())


# ----------------------------------------------------------------------------- minibatch standard deviation


def test_minibatch_std_appends_the_spread_of_each_group():
    from pipeline.models.networks import MinibatchStd

    x = torch.zeros(8, 3, 2, 2)
    x[1] = 1.0  # group {1, 5} (clips i and i + 4): values 1 and 0, spread 0.5; the other groups are constant
    y = MinibatchStd(group=2)(x)
    assert y.shape == (8, 4, 2, 2) and torch.equal(y[:, :3], x)
    spread = y[:, 3, 0, 0]
    assert spread[1] == pytest.approx(0.5, abs=1e-3) and spread[5] == pytest.approx(0.5, abs=1e-3)
    assert torch.all(spread[[0, 2, 3, 4, 6, 7]] < 1e-3)
    # a batch that does not divide into groups uses the whole batch as one group
    assert MinibatchStd(group=4)(torch.randn(6, 2, 3, 3)).shape == (6, 3, 3, 3)


@pytest.mark.parametrize("name", list(MODELS))
def test_minibatch_std_lets_the_critic_see_the_rest_of_the_batch(name):
    torch.manual_seed(0)
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    changed = x.clone()
    changed[1:] = changed[1:] * 0.1  # clip 0 is the same; its batch is far less varied
    for on in (False, True):
        mc = ModelConfig(g_width=4, d_width=4, latent_dim=8, minibatch_std=on)
        d = get_model(name).build_critic(mc, 32, TrainConfig(loss="hinge"))  # raw scores: no saturated Sigmoid
        d.eval()  # BatchNorm on running statistics: no other path from one clip to another
        with torch.no_grad():
            a, b = d(x)[0], d(changed)[0]
        assert (a != b) == on, f"minibatch_std={on}: clip 0's score {'did not change' if on else 'changed'}"
        assert ("MinibatchStd" in layer_types(d)) == on


# ----------------------------------------------------------------------------- resize convolutions


@pytest.mark.parametrize("name", list(MODELS))
def test_nearest_upsampling_replaces_every_doubling_layer_and_keeps_the_shapes(name):
    spec = get_model(name)
    z = torch.randn(3, SMALL.latent_dim)
    plain = spec.build_generator(SMALL, 32)
    resized = spec.build_generator(SMALL.model_copy(update={"g_upsample": "nearest"}), 32)
    doublings = sum(isinstance(m, nn.ConvTranspose2d) and m.stride == (2, 2) for m in plain.modules())
    assert doublings == (4 if name == "dcgan1" else 3)
    assert not any(isinstance(m, nn.ConvTranspose2d) and m.stride == (2, 2) for m in resized.modules())
    assert layer_types(resized).count("Upsample") == doublings
    assert layer_types(resized)[0] == "ConvTranspose2d"  # the latent-to-map layer stays
    assert resized(z).shape == plain(z).shape == (3, 1, 32, 32)
    assert all(m.weight.std() < 0.05 for m in resized.modules() if isinstance(m, nn.Conv2d))  # DCGAN init


def test_a_resize_convolution_has_no_checkerboard():
    """A constant map in gives a constant map out (away from the zero-padded border); the
    transposed convolution's four output phases use different taps, hence a period-2 pattern."""
    from pipeline.models.networks import ResizeConv

    torch.manual_seed(0)
    x = torch.ones(1, 4, 8, 8)
    with torch.no_grad():
        resized = ResizeConv(4, 2)(x)[..., 2:-2, 2:-2]
        transposed = nn.ConvTranspose2d(4, 2, 4, 2, 1, bias=False)(x)[..., 2:-2, 2:-2]
    assert resized.shape == transposed.shape == (1, 2, 12, 12)
    assert resized.std(dim=(-1, -2)).max() < 1e-6
    assert transposed.std(dim=(-1, -2)).min() > 1e-3
    assert torch.allclose(transposed[..., ::2, ::2], transposed[..., 2::2, 2::2][..., :1, :1].expand(1, 2, 6, 6))


# ----------------------------------------------------------------------------- time branches

TIME = ModelConfig(g_width=4, d_width=4, latent_dim=8, d_time_branch=True, g_time_branch=True)


def _last(module: nn.Module, kind: type) -> nn.Module:
    return [m for m in module.modules() if isinstance(m, kind)][-1]


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("name", list(MODELS))
def test_time_branches_add_their_output_to_the_figures_and_keep_them(name, resolution):
    """With the figures' weights copied over, the option's networks differ from the plain ones
    exactly by their branch: zero its last layer and the outputs agree again."""
    spec = get_model(name)
    tc = TrainConfig(loss="hinge")  # raw scores: a difference is not squashed by a Sigmoid
    torch.manual_seed(0)
    plain_g, plain_d = spec.build_generator(SMALL, resolution), spec.build_critic(SMALL, resolution, tc)
    g, d = spec.build_generator(TIME, resolution), spec.build_critic(TIME, resolution, tc)
    assert layer_types(g) == layer_types(plain_g) and layer_types(d) == layer_types(plain_d)  # the figures hold
    g.net.load_state_dict(plain_g.net.state_dict())
    d.net.load_state_dict(plain_d.net.state_dict())
    for m in (plain_g, plain_d, g, d):
        m.eval()
    z, x = torch.randn(3, 8), torch.rand(3, 1, resolution, resolution) * 2 - 1
    with torch.no_grad():
        assert g(z).shape == (3, 1, resolution, resolution) and d(x).shape == (3,)
        assert not torch.allclose(g(z), plain_g(z)) and not torch.allclose(d(x), plain_d(x))
        # the critic's branch reads whole frames: its score is the figure's plus the branch's
        assert torch.allclose(d(x), plain_d(x) + d.time_branch(x), atol=1e-6)
        _last(g.time_branch, nn.Conv1d).weight.zero_()
        _last(d.time_branch, nn.Conv1d).weight.zero_()
        assert torch.allclose(g(z), plain_g(z), atol=1e-6) and torch.allclose(d(x), plain_d(x), atol=1e-6)


def test_the_time_critic_sees_every_band_of_a_frame_and_its_score_is_inside_the_sigmoid():
    spec = get_model("dcgan2")
    torch.manual_seed(0)
    d = spec.build_critic(TIME, 32).eval()  # bce: the figure's Sigmoid stays
    branch = d.time_branch.net
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    y = x.clone()
    y[:, :, 31, 10] += 1.0  # the top band of frame 10 only
    with torch.no_grad():
        moved = (branch[1](branch[0](y[:, 0])) != branch[1](branch[0](x[:, 0]))).any(dim=0)  # [C, T]
        scores = d(x)
    # every feature of frames 9-11 felt that one band (a 2D critic's first layer: only the 4x4
    # patches around it), and no other frame did
    assert moved[:, 9:12].all() and not moved[:, :9].any() and not moved[:, 12:].any()
    assert torch.all((scores > 0) & (scores < 1))  # a probability: the branch's score went in before the Sigmoid
    sn = spec.build_critic(TIME.model_copy(update={"spectral_norm": True}), 32, TrainConfig(loss="hinge"))
    convs = [m for m in sn.time_branch.modules() if isinstance(m, nn.Conv1d)]
    assert len(convs) == 4 and all(torch.nn.utils.parametrize.is_parametrized(m) for m in convs)


def test_a_generator_with_a_time_branch_round_trips_through_its_checkpoint(tmp_path):
    from pipeline import checkpoint as ckpt
    from pipeline.config import MelConfig

    g = get_model("dcgan2").build_generator(TIME, 32)
    meta = {"model": "dcgan2", "model_config": TIME.model_dump(), "resolution": 32,
            "latent_dim": TIME.latent_dim, "mel_config": MelConfig().to_dict()}
    loaded, _ = ckpt.load_generator(ckpt.save_generator(tmp_path / "g.pt", g, meta))
    assert loaded.time_branch is not None
    z = torch.randn(2, TIME.latent_dim)
    assert torch.equal(loaded(z), g.eval()(z))
    table = summarize("dcgan2", TIME, 32)
    assert "Critic time branch" in table and "Generator time branch" in table


# ----------------------------------------------------------------------------- the critic's rhythm branch

RHYTHM = ModelConfig(g_width=4, d_width=4, latent_dim=8, d_rhythm_branch=True)


def pulse(period: int, start: int = 0, resolution: int = 64, level: float = 1.0) -> torch.Tensor:
    """[1, 1, R, R]: silence (-1) with an onset across every band every ``period`` frames from ``start``."""
    x = torch.full((1, 1, resolution, resolution), -1.0)
    x[..., start::period] = -1.0 + level
    return x


def test_the_rhythm_critic_reads_the_period_of_the_onsets_not_where_they_fall_or_how_loud():
    branch = get_model("dcgan2").build_critic(RHYTHM, 64, TrainConfig(loss="hinge")).rhythm_branch
    six, six_later, six_soft, eleven = (branch.describe(x) for x in (
        pulse(6), pulse(6, start=3), pulse(6, level=0.5), pulse(11)))  # [1, 4, 33]: log energy, lags 1..32
    assert six.shape == (1, 4, 33)
    # a pulse every 6 frames correlates with itself at lags 6 and 12 and not between
    assert (six[0, :, 6] > 0.7).all() and (six[0, :, 12] > 0.5).all() and (six[0, :, 1:6].abs() < 0.3).all()
    assert (eleven[0, :, 11] > 0.7).all() and (eleven[0, :, 6].abs() < 0.3).all()
    # where the bar starts and how loud it is move the autocorrelation little; only the energy column sees loudness
    assert torch.allclose(six[..., 1:], six_later[..., 1:], atol=0.1)
    assert torch.allclose(six[..., 1:], six_soft[..., 1:], atol=0.05)
    assert (six[..., 0] - six_soft[..., 0] > 1.0).all()  # log energy: a quarter of the rise's square
    # the bands are separate: onsets in the lowest rows only leave the top band's description flat
    low = pulse(6)
    low[:, :, 16:] = -1.0
    d = branch.describe(low)
    assert (d[0, 0, 6] > 0.7).all() and d[0, 3, 1:].abs().max() < 1e-6


@pytest.mark.parametrize("name", list(MODELS))
def test_the_rhythm_branch_adds_its_score_and_passes_the_generator_a_gradient(name):
    spec = get_model(name)
    tc = TrainConfig(loss="hinge")
    torch.manual_seed(0)
    plain, d = spec.build_critic(SMALL, 64, tc), spec.build_critic(RHYTHM, 64, tc)
    assert layer_types(d) == layer_types(plain) and d.time_branch is None  # the figure holds
    d.net.load_state_dict(plain.net.state_dict())
    plain.eval()
    d.eval()
    x = torch.rand(3, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(d(x), plain(x) + d.rhythm_branch(x), atol=1e-6)
        assert not torch.allclose(d(x), plain(x))
    # the generator is told about its rhythm through the branch alone
    g = spec.build_generator(SMALL, 64)
    d.rhythm_branch(g(torch.randn(4, 8))).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.net[0].parameters())
    # spectral norm covers its layers; the summary lists it apart from the figure
    sn = spec.build_critic(RHYTHM.model_copy(update={"spectral_norm": True}), 64, tc)
    convs = [m for m in sn.rhythm_branch.modules() if isinstance(m, nn.Conv1d)]
    assert len(convs) == 3 and all(torch.nn.utils.parametrize.is_parametrized(m) for m in convs)
    assert "Critic rhythm branch" in summarize(name, RHYTHM, 64)


# ----------------------------------------------------------------------------- rhythm matching for the generator


def test_rhythm_matching_is_zero_on_the_real_periodicity_and_pulls_a_flat_batch_towards_it():
    match = losses.RhythmMatch(weight=2.0)
    beats = torch.cat([pulse(6), pulse(8, start=2), pulse(11, start=5)])  # [3, 1, 64, 64]: periodic onsets
    flat = (torch.rand(3, 1, 64, 64) * 0.1 - 1.0).requires_grad_()  # faint noise: no period
    assert match(flat) == (None, {})  # before a critic step has shown it real clips
    match.observe_real(beats)
    assert (match.periodicity(beats) > 0.05).all()  # each band's onsets correlate with themselves at their period
    same, numbers = match(beats)
    assert same is not None and float(same) == pytest.approx(0.0, abs=1e-10) and float(numbers["rhythm_match"]) == 0.0
    term, numbers = match(flat)
    assert term is not None and term.item() == pytest.approx(2.0 * numbers["rhythm_match"].item())
    assert float(numbers["rhythm_match"]) > 0.5  # the flat batch's periodicity is far below the target's
    # a step down the gradient makes the flat batch more periodic: the gap shrinks
    term.backward()
    with torch.no_grad():
        stepped = flat - 0.05 * flat.grad / flat.grad.abs().max()
    assert float(match(stepped)[1]["rhythm_match"]) < float(numbers["rhythm_match"])


def test_rhythm_matching_reaches_the_loss_of_every_model_and_its_generator_numbers():
    for name in MODELS:
        spec = get_model(name)
        assert spec.make_loss(TrainConfig()).matches == []
        loss = spec.make_loss(TrainConfig(rhythm_match=3.0))
        assert [(type(m).__name__, m.weight) for m in loss.matches] == [("RhythmMatch", 3.0)], name
    spec, tc = get_model("dcgan2"), TrainConfig(loss="hinge", rhythm_match=1.0)
    g, d = spec.build_generator(SMALL, 64), spec.build_critic(SMALL, 64, tc)
    opt_g, opt_d = spec.make_optimizers(g, d, tc)
    loss, reals = spec.make_loss(tc), [torch.rand(4, 1, 64, 64) * 2 - 1 for _ in range(2)]
    numbers = gan_step(g, d, loss, opt_g, opt_d, reals, 8, torch.Generator().manual_seed(0))
    assert float(numbers["rhythm_match"]) > 0
    assert loss.matches[0].real is reals[-1]  # the target is the last critic step's real batch


# ----------------------------------------------------------------------------- two time-scale learning rates


def test_lr_g_and_lr_d_reach_the_two_optimisers_and_the_settings():
    spec = get_model("dcgan2")
    g, d = spec.build_generator(SMALL, 32), spec.build_critic(SMALL, 32)
    opt_g, opt_d = spec.make_optimizers(g, d, TrainConfig(lr_g=1e-4, lr_d=4e-4))
    assert opt_g.param_groups[0]["lr"] == 1e-4 and opt_d.param_groups[0]["lr"] == 4e-4
    s = spec.settings(TrainConfig(lr_g=1e-4, lr_d=4e-4))
    assert (s.lr, s.lr_g, s.lr_d) == (2e-4, 1e-4, 4e-4)
    # null means lr (the model's, or the config's)
    s = spec.settings(TrainConfig(lr=5e-4, lr_d=1e-3))
    assert (s.lr_g, s.lr_d) == (5e-4, 1e-3)
    opt_g, opt_d = spec.make_optimizers(g, d, TrainConfig(lr=5e-4, lr_d=1e-3))
    assert opt_g.param_groups[0]["lr"] == 5e-4 and opt_d.param_groups[0]["lr"] == 1e-3
    s = get_model("wgan-gp").settings()
    assert (s.lr_g, s.lr_d, s.loss, s.r1_gamma) == (1e-4, 1e-4, "wasserstein", None)
    assert get_model("dcgan1").settings().loss == "bce"
    assert get_model("wgan-gp").settings(TrainConfig(loss="hinge", r1_gamma=2.0)).loss == "hinge"


# ----------------------------------------------------------------------------- lazy R1


def test_r1_is_added_exactly_every_r1_every_critic_steps_with_the_lazy_scale():
    real, fake = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    hand_r1 = (2.0**2 * real.flatten(1).pow(2).sum(1)).mean().item()
    loss = get_model("wgan-gp").make_loss(TrainConfig(r1_gamma=0.5, r1_every=3, gp_weight=0.0))
    plain = losses.WGANGPLoss(gp_weight=0.0)
    seen = []
    for _ in range(7):
        critic = Square(2.0)
        total, numbers = loss.critic_loss(critic, real, fake)
        base, _ = plain.critic_loss(critic, real, fake)
        seen.append("r1" in numbers)
        if "r1" in numbers:
            assert numbers["r1"].item() == pytest.approx(hand_r1, rel=1e-5)
            assert (total - base).item() == pytest.approx(0.5 / 2 * hand_r1 * 3, rel=1e-5)
            total.backward()
            assert critic.a.grad is not None and critic.a.grad.abs() > 0
        else:
            assert total.item() == pytest.approx(base.item())
    assert seen == [True, False, False, True, False, False, True]


def test_the_r1_counter_survives_a_state_dict_round_trip():
    tc = TrainConfig(r1_gamma=1.0, r1_every=4)
    a = get_model("dcgan2").make_loss(tc)
    assert a.state_dict() == {"r1": {"critic_steps": 0}}
    critic = get_model("dcgan2").build_critic(SMALL, 32, tc)
    real = torch.rand(2, 1, 32, 32)
    for _ in range(5):
        a.critic_loss(critic, real, real)
    b = get_model("dcgan2").make_loss(tc)
    b.load_state_dict(a.state_dict())
    # both are at critic step 5: steps 5, 6, 7 skip R1, step 8 computes it, in both
    flags = [("r1" in x.critic_loss(critic, real, real)[1]) for _ in range(4) for x in (a, b)]
    assert flags == [False, False, False, False, False, False, True, True]
    assert get_model("dcgan2").make_loss(TrainConfig()).state_dict() == {}
    assert get_model("wgan-gp").make_loss(TrainConfig()).state_dict() == {}  # the penalty has no state


# ----------------------------------------------------------------------------- config


def test_option_fields_are_validated_naming_the_key(tmp_path):
    for text, key in [("train:\n  loss: lsgan\n", "train.loss"), ("train:\n  ema_decay: 1.0\n", "train.ema_decay"),
                      ("train:\n  r1_every: 0\n", "train.r1_every"), ("train:\n  lr_g: 0\n", "train.lr_g"),
                      ("train:\n  augment_transforms: [pitch]\n", "train.augment_transforms"),
                      ("data:\n  normalize: global\n", "data.normalize"),
                      ("model:\n  spectral_norm: 1\n", "model.spectral_norm")]:
        p = tmp_path / "bad.yaml"
        p.write_text(text)
        with pytest.raises(ConfigError, match=rf"{p}: {key}"):
            load_config(p)
    p = tmp_path / "ok.yaml"
    p.write_text("train: {loss: hinge, lr_g: 1.0e-4, lr_d: 4.0e-4, r1_gamma: 1, ema_decay: 0.999,\n"
                 "        augment: adaptive, augment_transforms: [shift, gain]}\n"
                 "model: {spectral_norm: true}\ndata: {normalize: per_bin}\n")
    c = load_config(p)
    assert (c.train.loss, c.train.lr_d, c.train.r1_gamma, c.model.spectral_norm, c.data.normalize) == (
        "hinge", 4e-4, 1.0, True, "per_bin")
    d = TrainConfig()
    assert (d.loss, d.lr_g, d.lr_d, d.r1_gamma, d.ema_decay, d.augment) == (None, None, None, None, None, "off")
    assert ModelConfig().spectral_norm is False
    p.write_text("train: {augment: off}\n")  # YAML 1.1's false, meant as the word
    assert load_config(p).train.augment == "off"
