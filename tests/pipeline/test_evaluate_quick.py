"""QuickScore, the training loop's cheap periodic score: the evaluation's cached encoder,
no global RNG touched, the generator's mode restored, real clips score better than noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.checkpoint import load_generator
from pipeline.config import EvaluateConfig
from pipeline.dataset import MelDataset
from pipeline.evaluate.evaluate import prepare_real
from pipeline.evaluate.quick import QuickScore
from tests.tracking.eval_runs import make_checkpoint

CFG = dict(encoder_steps=30, batch_size=64, kmeans_k=4, kid_subsets=2, kid_subset_size=16, ceiling=False, seeds=1)


class RealClips(nn.Module):
    """A "generator" whose clips are real ones: latent row i picks a clip from z alone."""

    def __init__(self, mels: np.ndarray, latent_dim: int = 8):
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("mels", torch.from_numpy(mels))  # [N, R, R]
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, z):
        idx = (z[:, 0].abs() * 1e4).long() % len(self.mels)
        return self.mels[idx][:, None] * self.scale  # [B, 1, R, R]


class Noise(nn.Module):
    """Uniform noise in [-1, 1] from z (a private generator seeded by z's values)."""

    def __init__(self, resolution: int, latent_dim: int = 8):
        super().__init__()
        self.latent_dim, self.resolution = latent_dim, resolution
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, z):
        g = torch.Generator().manual_seed(int(z.abs().sum() * 1e4))
        return (torch.rand(len(z), 1, self.resolution, self.resolution, generator=g) * 2 - 1) * self.w


@pytest.fixture(scope="module")
def shared_enc(tmp_path_factory):
    return tmp_path_factory.mktemp("quick-enc")  # the encoder is trained once for these tests


@pytest.fixture(scope="module")
def real32(small_dataset):
    ds = MelDataset(small_dataset, resolution=32)
    return np.stack([ds[i][0].numpy() for i in range(len(ds))])  # [36, 32, 32]


def test_quick_score_leaves_the_global_rng_alone(small_dataset, tmp_path):
    cfg = EvaluateConfig(**CFG, encoder_dir=str(tmp_path / "enc"))
    generator, _ = load_generator(make_checkpoint(tmp_path / "g.pt", "dcgan1", 32))  # (seeds torch itself)
    torch.manual_seed(123)
    np.random.seed(7)
    before, np_before = torch.get_rng_state(), np.random.get_state()[1].copy()
    quick = QuickScore(small_dataset, 32, cfg, n=64)  # trains the encoder: forked RNG
    assert torch.equal(torch.get_rng_state(), before)
    QuickScore(small_dataset, 32, cfg, n=64)  # loads the cached one: building its layers draws nothing either
    assert torch.equal(torch.get_rng_state(), before)
    generator.train()
    bn = [m for m in generator.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bn, "the test generator should have batch norm"
    stats = [m.running_mean.clone() for m in bn]
    first = quick(generator)
    assert torch.equal(torch.get_rng_state(), before)
    assert np.array_equal(np.random.get_state()[1], np_before)
    # eval mode while scoring (batch norm's running statistics untouched), train mode after
    assert generator.training and all(m.training for m in bn)
    assert all(torch.equal(m.running_mean, s) for m, s in zip(bn, stats))
    # fixed latents: the same weights score the same
    assert quick(generator) == first
    generator.eval()
    assert quick(generator) == first and not generator.training


def test_quick_score_uses_evaluates_encoder_and_prefers_real_clips(small_dataset, shared_enc, real32):
    cfg = EvaluateConfig(**CFG, encoder_dir=str(shared_enc))
    quick = QuickScore(small_dataset, 32, cfg, n=48)
    real = prepare_real(small_dataset, 32, cfg, progress=False)
    assert quick.encoder.path == real.encoder.path and quick.encoder.sha256 == real.encoder.sha256
    assert len(list(shared_enc.glob("encoder-*.pt"))) == 1  # trained once, shared
    real_score = quick(RealClips(real32))
    noise_score = quick(Noise(32))
    assert 0 <= real_score < 0.25 * noise_score
    # a postprocess sees the generator's output: real clips turned to noise score as noise
    to_noise = QuickScore(small_dataset, 32, cfg, n=48, postprocess=lambda x: Noise(32)(x[:, 0, 0, :8]))
    assert to_noise(RealClips(real32)) == pytest.approx(noise_score, rel=0.5)
    assert to_noise(RealClips(real32)) > 4 * real_score
    # the score is evaluate's fd_learned against all the real clips
    from pipeline.evaluate.metrics import frechet_distance

    clips = quick.generate(RealClips(real32))
    assert clips.shape == (48, 32, 32)
    embed_real, _ = quick.encoder.encode(real32)
    embed_gen, _ = quick.encoder.encode(clips)
    assert real_score == pytest.approx(frechet_distance(embed_real, embed_gen), rel=1e-6)


def test_quick_score_names_a_generator_it_cannot_drive(small_dataset, shared_enc):
    from pipeline.errors import UserError

    cfg = EvaluateConfig(**CFG, encoder_dir=str(shared_enc))
    quick = QuickScore(small_dataset, 32, cfg, n=8)
    bare = nn.Sequential(nn.Linear(8, 32 * 32), nn.Unflatten(1, (1, 32, 32)))
    with pytest.raises(UserError, match="latent_dim"):
        quick(bare)
    assert np.isfinite(QuickScore(small_dataset, 32, cfg, n=8, latent_dim=8)(bare))
    with pytest.raises(UserError, match="16x16|32x32"):
        quick(Noise(16))
