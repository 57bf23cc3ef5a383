"""The generator's exponential moving average (pipeline/train/ema.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.config import ModelConfig, TrainConfig
from pipeline.models.registry import get_model
from pipeline.train.ema import EMA
from pipeline.train.step import gan_step

SMALL = ModelConfig(g_width=4, d_width=4, latent_dim=8)


def test_the_average_is_the_hand_computed_one_with_the_warm_up():
    net = nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(0.0)
    ema = EMA(net, decay=0.9, warmup_steps=2)
    assert [ema.decay_at(t) for t in (0, 1, 2, 5)] == [0.0, 0.45, 0.9, 0.9]
    hand = torch.ones(1, 2)
    for step, w in enumerate([3.0, 5.0, 7.0, 9.0]):
        with torch.no_grad():
            net.weight.fill_(w)
        ema.update(net, step)
        d = ema.decay_at(step)
        hand = d * hand + (1 - d) * w
        assert torch.allclose(ema.module.weight, hand)
    assert not torch.equal(ema.module.weight, net.weight)  # the average lags the raw weights
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_the_ramp_up_makes_the_half_life_a_share_of_the_steps_done_up_to_the_decays():
    ema = EMA(nn.Linear(2, 1), decay=0.999, warmup_steps=100, rampup=0.1)
    assert ema.decay_at(0) == 0.0  # the first update copies the raw weights
    for step in (10, 500, 4000):  # half-life 1, 50, 400 steps: the weight of step t halves every 0.1 t
        assert math.isclose(ema.decay_at(step) ** (0.1 * step), 0.5, rel_tol=1e-9)
    # past 6,931 steps the half-life is the decay's own (693 steps): the cap holds
    assert math.isclose(ema.decay_at(7000), 0.999, rel_tol=1e-12) and ema.decay_at(10**6) == ema.decay_at(7000)
    assert ema.decay_at(4000) != EMA(nn.Linear(2, 1), decay=0.999, warmup_steps=100).decay_at(4000)  # not ignored
    with pytest.raises(ValueError, match="rampup"):
        EMA(nn.Linear(2, 1), decay=0.9, rampup=0.0)


def test_ema_weights_differ_from_raw_after_training_and_buffers_are_copied():
    torch.manual_seed(0)
    spec = get_model("dcgan2")
    g, d = spec.build_generator(SMALL, 32), spec.build_critic(SMALL, 32)
    loss = spec.make_loss(TrainConfig())
    opt_g, opt_d = spec.make_optimizers(g, d, TrainConfig(lr=1e-2))
    ema = EMA(g, decay=0.99, warmup_steps=0)
    rng = torch.Generator().manual_seed(0)
    for step in range(3):
        gan_step(g, d, loss, opt_g, opt_d, [torch.rand(4, 1, 32, 32) * 2 - 1], SMALL.latent_dim, rng)
        ema.update(g, step)
    raw, avg = dict(g.named_parameters()), dict(ema.module.named_parameters())
    assert all(not torch.equal(raw[k], avg[k]) for k in raw)
    raw_b, avg_b = dict(g.named_buffers()), dict(ema.module.named_buffers())
    bn = [k for k in raw_b if k.endswith("running_mean")]
    assert bn and all(torch.equal(raw_b[k], avg_b[k]) for k in raw_b)  # copied, not averaged
    assert not torch.equal(raw_b[bn[0]], torch.zeros_like(raw_b[bn[0]]))  # and they did move
    z = torch.randn(3, SMALL.latent_dim)
    assert not torch.equal(ema.module(z), g.eval()(z))


def test_state_dict_round_trip_and_the_ddp_wrapped_generator():
    class Wrapped(nn.Module):  # what DistributedDataParallel looks like from here: .module
        def __init__(self, m):
            super().__init__()
            self.module = m

    net = nn.Linear(3, 3)
    ema = EMA(Wrapped(net), decay=0.5)
    assert set(dict(ema.module.named_parameters())) == {"weight", "bias"}  # unwrapped copy
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(Wrapped(net), 10)
    other = EMA(nn.Linear(3, 3), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.module.weight, ema.module.weight) and other.updates == 1
    with pytest.raises(ValueError, match="decay"):
        EMA(net, decay=1.0)
