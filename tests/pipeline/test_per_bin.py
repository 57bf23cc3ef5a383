"""Per-mel-bin normalisation (data.normalize: per_bin): dataset statistics, the fixed affine
layers around the figures' networks, and generator checkpoints that rebuild them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline import checkpoint as ckpt
from pipeline.config import MelConfig, ModelConfig, TrainConfig
from pipeline.dataset import MelDataset
from pipeline.errors import UserError
from pipeline.models import networks
from pipeline.models.networks import FIGURES, layer_types, normalization_meta
from pipeline.models.registry import MODELS, get_model
from pipeline.segment import STORE_DTYPE

SMALL = ModelConfig(g_width=4, d_width=4, latent_dim=8)
R = 32


def _stats(seed: int = 0) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(seed)
    return {"mean": (torch.rand(R, generator=g) * 1.2 - 0.9).tolist(),
            "std": (torch.rand(R, generator=g) * 0.2 + 0.01).tolist()}


def _tiny_dataset(root, clips: int = 12) -> MelDataset:
    """A hand-written dataset: row r of every clip is mean_r + noise, at the stored resolution."""
    mel = MelConfig(sample_rate=8000, clip_seconds=1.0, n_fft=256, hop_length=128, n_mels=32)
    root.mkdir(parents=True, exist_ok=True)
    mel.save(root / "mel_config.json")
    (root / "shards").mkdir()
    rng = np.random.default_rng(0)
    rows = np.linspace(-0.8, 0.6, mel.n_mels)[:, None]
    data = np.clip(rows + 0.05 * rng.standard_normal((clips, *mel.shape)), -1, 1).astype(STORE_DTYPE)
    data.tofile(root / "shards" / "a.f16")
    with open(root / "index.jsonl", "w") as f:
        for i in range(clips):
            f.write(json.dumps({"track_id": f"t{i % 3}", "source": "x", "clip": i, "start_s": 0.0,
                                "shard": "shards/a.f16", "row": i}) + "\n")
    return MelDataset(root, resolution=R)


def test_bin_stats_are_the_rows_mean_and_std_cached_and_reloaded(tmp_path):
    ds = _tiny_dataset(tmp_path / "ds")
    stats = ds.bin_stats()
    allx = torch.stack([ds[i] for i in range(len(ds))]).double()  # [N, 1, R, R]
    assert np.allclose(stats["mean"], allx.mean(dim=(0, 1, 3)).numpy(), atol=1e-6)
    assert np.allclose(stats["std"], allx.std(dim=(0, 1, 3), unbiased=False).numpy(), atol=1e-6)
    path = tmp_path / "ds" / "stats" / f"bins-r{R}.json"
    cached = json.loads(path.read_text())
    assert cached["fingerprint"] == ds.fingerprint() and cached["mean"] == stats["mean"]
    # reloaded from the cache, not recomputed: a doctored cache is what comes back
    cached["mean"] = [0.5] * R
    path.write_text(json.dumps(cached))
    assert ds.bin_stats()["mean"] == [0.5] * R
    # another index (fingerprint) invalidates it
    with open(tmp_path / "ds" / "index.jsonl", "a") as f:
        f.write(json.dumps({"track_id": "t9", "source": "x", "clip": 99, "start_s": 0.0,
                            "shard": "shards/a.f16", "row": 0}) + "\n")
    assert MelDataset(tmp_path / "ds", resolution=R).bin_stats()["mean"] == pytest.approx(stats["mean"], abs=0.02)
    assert json.loads(path.read_text())["mean"] != [0.5] * R
    # a subset has a cache of its own
    sub = MelDataset(tmp_path / "ds", resolution=R, max_samples=5, seed=1)
    sub.bin_stats()
    assert len(list((tmp_path / "ds" / "stats").glob(f"bins-r{R}-*.json"))) == 1


@pytest.mark.parametrize("name", list(MODELS))
def test_the_layers_sit_outside_the_figure_and_do_what_they_say(name):
    spec = get_model(name)
    stats = _stats()
    mean, scale = torch.tensor(stats["mean"]), networks.bin_scale(stats["std"])
    g = spec.build_generator(SMALL, R, bin_stats=stats).eval()
    d = spec.build_critic(SMALL, R, TrainConfig(), bin_stats=stats).eval()
    assert layer_types(g) == FIGURES[spec.generator_figure] and layer_types(d) == FIGURES[spec.critic_figure]
    assert not any(b.requires_grad for b in g.denorm.buffers()) and not list(g.denorm.parameters())
    z = torch.randn(3, SMALL.latent_dim)
    y = g.net(z[:, :, None, None])  # the figure's Tanh output
    assert torch.equal(g(z), (mean[None, None, :, None] + scale[None, None, :, None] * y).clamp(-1, 1))
    # the critic standardises rows before its figure's layers
    wiggle = torch.tensor([0.3, -0.3]).repeat(R // 2)  # [R frames], mean 0
    real = (mean[:, None] + scale[:, None] * wiggle[None, :]).expand(4, 1, R, R)  # rows at their own levels
    seen = []
    d.net.register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    d(real)
    assert torch.allclose(seen[0], (real - mean[None, None, :, None]) / scale[None, None, :, None])
    assert torch.allclose(seen[0], wiggle.expand(4, 1, R, R), atol=1e-5)  # every row centred and scaled alike
    # the scale covers three standard deviations, with a floor
    assert torch.allclose(scale, (3 * torch.tensor(stats["std"])).clamp(min=1e-2))
    # without statistics: no layer, the study's networks as they were
    assert spec.build_generator(SMALL, R).denorm is None and spec.build_critic(SMALL, R).standardize is None


def test_a_per_bin_generator_round_trips_through_its_checkpoint(tmp_path):
    spec = get_model("dcgan2")
    torch.manual_seed(0)
    g = spec.build_generator(SMALL, R, bin_stats=_stats())
    meta = {"model": "dcgan2", "model_config": SMALL.model_dump(), "resolution": R,
            "latent_dim": SMALL.latent_dim, "mel_config": MelConfig().to_dict()}
    path = ckpt.save_generator(tmp_path / "g.pt", g, meta)
    saved = ckpt.read_meta(path)["normalization"]
    assert saved == normalization_meta(g) and saved["kind"] == "per_bin" and len(saved["scale"]) == R
    loaded, _ = ckpt.load_generator(path)
    z = torch.randn(4, SMALL.latent_dim)
    assert torch.equal(loaded(z), g.eval()(z))
    assert loaded.denorm is not None
    # a generator without the layer records nothing, and loads without it
    plain = ckpt.save_generator(tmp_path / "p.pt", spec.build_generator(SMALL, R), meta)
    assert "normalization" not in ckpt.read_meta(plain) and ckpt.load_generator(plain)[0].denorm is None
    with pytest.raises(ValueError, match="normalization"):
        ckpt.save_generator(tmp_path / "x.pt", g, {**meta, "normalization": {"kind": "none"}})


def _craft(tmp_path, name, state, meta) -> str:
    path = tmp_path / name
    torch.save({"format": ckpt.GENERATOR_FORMAT, "state_dict": state, "meta": json.dumps(meta)}, path)
    return str(path)


def test_crafted_normalization_meta_is_refused_naming_the_file(tmp_path):
    spec = get_model("dcgan2")
    g = spec.build_generator(SMALL, R, bin_stats=_stats())
    good = normalization_meta(g)
    meta = {"model": "dcgan2", "model_config": SMALL.model_dump(), "resolution": R,
            "latent_dim": SMALL.latent_dim, "mel_config": MelConfig().to_dict()}
    state = g.state_dict()
    bad_norms = [
        ({"kind": "global"}, "normalization"),
        ({"kind": "per_bin", "mean": good["mean"]}, "exactly kind, mean and scale"),
        ({**good, "mean": good["mean"][:-1]}, f"list of {R} finite"),
        ({**good, "scale": [0.0] * R}, "positive"),
        ({**good, "mean": ["x"] * R}, "finite"),
        ("per_bin", "normalization"),
    ]
    for i, (norm, match) in enumerate(bad_norms):
        path = _craft(tmp_path, f"bad{i}.pt", state, {**meta, "normalization": norm})
        with pytest.raises(UserError, match=match) as e:
            ckpt.load_generator(path)
        assert f"bad{i}.pt" in str(e.value)
    # a lying meta: valid statistics, but not the ones in the weights
    lying = {**good, "mean": [v + 0.25 for v in good["mean"]]}
    with pytest.raises(UserError, match="disagrees"):
        ckpt.load_generator(_craft(tmp_path, "lying.pt", state, {**meta, "normalization": lying}))
    # weights with the layer, meta without it (or the other way round): the weights do not match
    with pytest.raises(UserError, match="do not match"):
        ckpt.load_generator(_craft(tmp_path, "nometa.pt", state, meta))
    plain_state = spec.build_generator(SMALL, R).state_dict()
    with pytest.raises(UserError, match="do not match"):
        ckpt.load_generator(_craft(tmp_path, "noweights.pt", plain_state, {**meta, "normalization": good}))
