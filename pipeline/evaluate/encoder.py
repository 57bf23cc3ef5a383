"""The in-project feature encoder: a small CNN trained on the real dataset to tell
which track a clip came from.

No pretrained audio network can be downloaded here, so the learned features of the
Fréchet distance, KID and the Inception-Score-style figure come from this encoder.
Telling tracks apart forces it to describe timbre, register, rhythm and texture, the
things that differ between tracks; its penultimate layer is the embedding, its
softmax the classifier head.

The trained encoder is cached per (dataset fingerprint, resolution, settings) in a
weights-only checkpoint (``technogan-encoder/1``), so every evaluation of runs on one
dataset scores with the same encoder; its file's sha256 names it in every report,
and ``tracking.evaluation`` logs the file beside the scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.config import EvaluateConfig
from pipeline.errors import UserError
from pipeline.fsutil import atomic_path, sha256_file

log = logging.getLogger(__name__)

ENCODER_FORMAT = "technogan-encoder/1"
ARCHITECTURE = 2  # bump when TrackEncoder changes: cached encoders of another architecture are retrained


class TrackEncoder(nn.Module):
    """[B, 1, R, R] mels -> embeddings [B, embed_dim] and track logits [B, n_tracks].

    A strided 4x4 conv halves the input first (the cost of every later layer drops by
    four), then three conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool) widen to
    4 x ``width`` channels; global average pooling makes it resolution-agnostic.
    """

    def __init__(self, n_tracks: int, width: int = 16, embed_dim: int = 64):
        super().__init__()
        chans = [width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = [nn.Conv2d(1, width, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True)]
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, ceil_mode=True)]  # ceil: 8x8 inputs still work
        self.features = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(chans[-1], embed_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(embed_dim, n_tracks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x).mean(dim=(-2, -1), keepdim=True)  # [B, C, 1, 1]
        e = self.embed(h)  # [B, E]
        return e, self.head(e)


@dataclass
class Encoder:
    """A trained encoder and what names it."""

    model: TrackEncoder
    path: Path
    sha256: str
    meta: dict

    @property
    def id(self) -> str:
        return self.sha256[:12]

    @torch.no_grad()
    def encode(self, mels: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Mels [N, R, R] -> (embeddings [N, E], class probabilities [N, C]) as float32."""
        self.model.eval()
        embs, probs = [], []
        for s in range(0, len(mels), batch_size):
            x = torch.as_tensor(np.asarray(mels[s:s + batch_size]), dtype=torch.float32)[:, None]  # [B, 1, R, R]
            e, logits = self.model(x)
            embs.append(e.numpy())
            probs.append(torch.softmax(logits, dim=-1).numpy())
        return np.concatenate(embs).astype(np.float32), np.concatenate(probs).astype(np.float32)


def encoder_key(fingerprint: str, resolution: int, n_tracks: int, cfg: EvaluateConfig) -> str:
    """Cache key: the data and every setting that changes the trained weights."""
    settings = {"fingerprint": fingerprint, "resolution": resolution, "n_tracks": n_tracks,
                "steps": cfg.encoder_steps, "batch_size": cfg.encoder_batch_size,
                "width": cfg.encoder_width, "embed_dim": cfg.encoder_embed_dim,
                "lr": cfg.encoder_lr, "seed": cfg.seed, "format": ENCODER_FORMAT, "architecture": ARCHITECTURE}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def train_encoder(mels: np.ndarray, labels: np.ndarray, n_tracks: int, cfg: EvaluateConfig,
                  progress: bool = True) -> tuple[TrackEncoder, dict]:
    """Train a ``TrackEncoder`` on real mels [N, R, R] with track labels [N].

    A tenth of the clips (at least one) is held out to report accuracy. Clips are
    randomly shifted in time (circularly) so the encoder learns what a track sounds
    like rather than where in the 5 s a hit falls. Returns (model, summary)."""
    if n_tracks < 2:
        raise UserError("the feature encoder needs a dataset of at least 2 tracks to learn from")
    # the global RNG seeds the layers' initialisation; forked, so a training loop that
    # builds its QuickScore (and this encoder) mid-run keeps its RNG stream: resume is bit-exact
    # (the CPU generator only: torch.manual_seed would also reseed every CUDA device's)
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(cfg.seed)
        return _train_encoder(mels, labels, n_tracks, cfg, progress)


def _train_encoder(mels: np.ndarray, labels: np.ndarray, n_tracks: int, cfg: EvaluateConfig,
                   progress: bool) -> tuple[TrackEncoder, dict]:
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.as_tensor(np.asarray(mels), dtype=torch.float32)[:, None]  # [N, 1, R, R]
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    order = torch.randperm(len(x), generator=g)
    n_val = max(1, len(x) // 10)
    val, train = order[:n_val], order[n_val:]
    model = TrackEncoder(n_tracks, cfg.encoder_width, cfg.encoder_embed_dim)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.encoder_lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.encoder_lr, total_steps=cfg.encoder_steps)
    loss_fn = nn.CrossEntropyLoss()
    batch = min(cfg.encoder_batch_size, len(train))
    # a fixed number of steps on batches drawn with replacement: a small dataset still
    # gets enough updates, a large one is not swept needlessly
    bar = tqdm(range(cfg.encoder_steps), desc="encoder", unit="step", disable=not progress, mininterval=1.0)
    model.train()
    loss_value = float("nan")
    for step in bar:
        idx = train[torch.randint(0, len(train), (max(batch, 2),), generator=g)]  # BatchNorm needs two
        shift = int(torch.randint(0, x.shape[-1], (1,), generator=g))
        xb = torch.roll(x[idx], shifts=shift, dims=-1)  # [B, 1, R, R], circular shift in time
        loss = loss_fn(model(xb)[1], y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = loss.item()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_value:.3f}")
    model.eval()
    with torch.no_grad():
        acc = float((model(x[val])[1].argmax(-1) == y[val]).float().mean())
    summary = {"val_accuracy": acc, "train_clips": int(len(train)), "val_clips": int(n_val),
               "chance": 1.0 / n_tracks, "final_loss": loss_value}
    log.info("encoder: validation accuracy %.2f on %d clips (chance %.2f)", acc, n_val, 1.0 / n_tracks)
    return model, summary


def save_encoder(path: Path, model: TrackEncoder, meta: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": ENCODER_FORMAT, "state_dict": model.state_dict(),
                    "meta": json.dumps(meta, sort_keys=True)}, tmp)


def load_encoder(path: str | Path) -> Encoder:
    """An encoder from its weights-only checkpoint."""
    p = Path(path)
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{p}: not a readable encoder checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != ENCODER_FORMAT:
        raise UserError(f"{p}: not a {ENCODER_FORMAT} checkpoint")
    meta = json.loads(payload["meta"])
    with torch.random.fork_rng(devices=[]):  # building the layers draws initial weights: not from the caller's stream
        model = TrackEncoder(meta["n_tracks"], meta["width"], meta["embed_dim"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return Encoder(model, p, sha256_file(p), meta)


def get_encoder(cache_dir: str | Path, fingerprint: str, mels: np.ndarray, labels: np.ndarray, n_tracks: int,
                cfg: EvaluateConfig, progress: bool = True) -> Encoder:
    """The cached encoder for this data and settings, trained (and cached) if missing."""
    resolution = int(np.asarray(mels).shape[-1])
    key = encoder_key(fingerprint, resolution, n_tracks, cfg)
    path = Path(cache_dir) / f"encoder-{key}.pt"
    if path.is_file():
        return load_encoder(path)
    model, summary = train_encoder(mels, labels, n_tracks, cfg, progress=progress)
    meta = {"n_tracks": n_tracks, "width": cfg.encoder_width, "embed_dim": cfg.encoder_embed_dim,
            "resolution": resolution, "dataset_fingerprint": fingerprint, "steps": cfg.encoder_steps, "batch_size": cfg.encoder_batch_size,
            "lr": cfg.encoder_lr, "seed": cfg.seed, "key": key, **summary}
    save_encoder(path, model, meta)
    return load_encoder(path)
