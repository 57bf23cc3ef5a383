"""Audio-safe augmentation (pipeline/train/augment.py)."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ModelConfig, TrainConfig
from pipeline.models.registry import get_model
from pipeline.train import augment as aug
from pipeline.train.augment import Augment, AugmentedCritic
from pipeline.train.step import gan_step

R, T = 16, 32


def rows_mel(b: int = 8) -> torch.Tensor:
    """[B, 1, R, T]: row r holds the constant -0.9 + 0.1 r, distinct per row and above the floor."""
    base = -0.9 + 0.1 * torch.arange(R, dtype=torch.float32)
    return base[None, None, :, None].expand(b, 1, R, T).clone()


def test_no_transform_moves_a_row():
    x = rows_mel(64)
    a = Augment(p=1.0, max_gain_db=6.0, top_db=80.0, seed=1)
    y = a(x)
    base = x[0, 0, :, 0]
    changed = 0
    for i in range(64):
        v = y[i, 0]  # [R, T]
        kept = v != -1.0  # not masked
        # one gain offset per sample, the same in every row: no row took another row's values
        offsets = (v - base[:, None])[kept]
        assert offsets.numel() > 0
        assert offsets.max() - offsets.min() < 1e-5
        assert offsets.abs().max() <= 6.0 * 2 / 80.0 + 1e-6
        changed += int(offsets.abs().max() > 1e-4) + int((~kept).any())
    assert changed > 64  # gains and masks did happen


def test_shift_is_a_circular_roll_along_time_only():
    t = torch.arange(T, dtype=torch.float32)
    x = (torch.sin(t * 0.7)[None, :] + 0.01 * torch.arange(R)[:, None])[None, None].expand(16, 1, R, T).clone()
    y = Augment(["shift"], p=1.0, seed=3)(x)
    shifts = set()
    for i in range(16):
        k = next(k for k in range(T) if torch.allclose(torch.roll(x[i], k, dims=-1), y[i]))
        shifts.add(k)
    assert len(shifts) > 3  # per-sample amounts


def test_masks_set_a_span_of_frames_or_rows_to_the_floor():
    x = rows_mel(32)
    y = Augment(["time_mask"], p=1.0, seed=0)(x)
    masked = (y == -1.0)[:, 0]  # [B, R, T]
    assert masked.any(dim=(1, 2)).all()
    assert torch.equal(masked, masked[:, :1, :].expand_as(masked))  # whole frames (columns)
    assert (masked[:, 0, :].sum(1) <= T // 8).all()
    y = Augment(["freq_mask"], p=1.0, seed=0)(x)
    masked = (y == -1.0)[:, 0]
    assert torch.equal(masked, masked[:, :, :1].expand_as(masked))  # whole rows
    assert masked.any(dim=(1, 2)).all()


def test_gain_is_in_db_units_and_clamped():
    x = torch.full((200, 1, 4, 4), 0.99)
    y = Augment(["gain"], p=1.0, max_gain_db=8.0, top_db=80.0, seed=0)(x)
    off = y[:, 0, 0, 0] - 0.99
    assert y.max() <= 1.0 and (y == 1.0).any()  # clamped at the top
    assert off.min() == pytest.approx(-0.2, abs=0.01)  # -8 dB = -8 * 2 / 80
    assert torch.equal(y, y[:, :, :1, :1].expand_as(y))  # one offset per clip


def test_p_is_the_per_sample_probability_and_zero_is_identity():
    x = rows_mel(400)
    assert torch.equal(Augment(p=0.0)(x), x)
    y = Augment(["gain"], p=0.3, seed=0)(x)
    share = (y != x).flatten(1).any(1).float().mean().item()
    assert 0.2 < share < 0.4


def test_differentiable_and_deterministic_for_a_seed():
    x = (torch.rand(8, 1, R, T) * 2 - 1).requires_grad_(True)
    a, b = Augment(p=0.5, seed=7), Augment(p=0.5, seed=7)
    ya = a(x)
    assert torch.equal(ya, b(x))
    assert not torch.equal(ya, Augment(p=0.5, seed=8)(x))
    ya.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the state (generator and p) resumes the same stream
    c = Augment(p=0.5, seed=0)
    c.load_state_dict(a.state_dict())
    assert torch.equal(c(x), a(x))


def test_adaptive_p_rises_when_real_scores_are_positive_and_falls_when_negative():
    a = Augment(mode="adaptive", p=0.0, target=0.6, speed=100, interval=2, p_max=0.8)
    for _ in range(4):
        a.observe(torch.ones(10))  # E sign = 1 > 0.6: the critic is overfitting
    # two updates, each after 20 images: 2 * 20 / 100
    assert float(a.p) == pytest.approx(0.4)
    for _ in range(20):
        a.observe(torch.ones(10))
    assert float(a.p) == pytest.approx(0.8)  # p_max
    for _ in range(6):
        a.observe(-torch.ones(10))
    assert float(a.p) == pytest.approx(0.2)
    for _ in range(20):
        a.observe(-torch.ones(10))
    assert float(a.p) == 0.0
    # a sigmoid critic: sign(p - 0.5)
    s = Augment(mode="adaptive", p=0.0, speed=100, interval=1, probabilities=True)
    s.observe(torch.full((10,), 0.7))
    assert float(s.p) == pytest.approx(0.1)
    s.observe_sign(torch.tensor(-10.0), 10)
    assert float(s.p) == pytest.approx(0.0)
    # fixed p never moves
    f = Augment(mode="fixed", p=0.3)
    f.observe(torch.ones(100))
    assert float(f.p) == pytest.approx(0.3)
    # state round trip
    t = Augment(mode="adaptive", p=0.0, speed=100, interval=3)
    t.observe(torch.ones(10))
    u = Augment(mode="adaptive", p=0.5, speed=100, interval=3)
    u.load_state_dict(t.state_dict())
    assert u.state_dict()["p"] == 0.0 and u.state_dict()["images"] == 10


def test_from_config_and_the_augmented_critic_in_a_training_step():
    assert aug.from_config(TrainConfig(), 80.0, False, "cpu", 0) is None
    a = aug.from_config(TrainConfig(augment="adaptive", augment_transforms=["gain", "shift"]), 80.0, True, "cpu", 0)
    assert a is not None and a.mode == "adaptive" and float(a.p) == 0.0 and a.transforms == ["shift", "gain"]
    assert float(aug.from_config(TrainConfig(augment="fixed"), 80.0, False, "cpu", 0).p) == pytest.approx(0.2)

    torch.manual_seed(0)
    mc = ModelConfig(g_width=4, d_width=4, latent_dim=8)
    spec = get_model("dcgan2")
    g, d = spec.build_generator(mc, 32), spec.build_critic(mc, 32)
    loss = spec.make_loss(TrainConfig())
    opt_g, opt_d = spec.make_optimizers(g, d, TrainConfig())
    seen = []
    augment = Augment(p=1.0, seed=0)
    wrapped = AugmentedCritic(d, augment)
    d.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    real = torch.rand(4, 1, 32, 32) * 2 - 1
    numbers = gan_step(g, wrapped, loss, opt_g, opt_d, [real], mc.latent_dim, torch.Generator().manual_seed(0))
    assert not torch.equal(seen[0], real)  # the critic saw the real batch augmented
    assert g.net[0].weight.grad is not None and g.net[0].weight.grad.abs().sum() > 0  # through the augmentation
    assert -1.0 <= numbers["d_real_sign"].item() <= 1.0
    assert list(wrapped.parameters()) == list(d.parameters())
