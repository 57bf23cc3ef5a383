"""A cheap score for use during training: ``QuickScore(dataset, resolution, cfg)(generator)``.

The learned Fréchet distance (``fd_learned`` of ``technogan evaluate``) of ``n``
generated clips against the real clips, with the dataset's cached encoder (the one
``evaluate`` scores with, trained on first use) and the real side embedded once, so a
call costs one generator and one encoder pass over ``n`` clips. The latents are
those of ``evaluate.seed`` (the same for every call: scores of one run differ by the
weights alone). It is a selection signal, not a report: ``n`` clips against the whole
real set is biased upwards against ``evaluate``'s figure for small ``n``, by the same
amount for every checkpoint.

A call touches no global random state (latents come from a private generator, the
encoder's training is forked), so a training run that scores itself resumes bit-exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipeline.config import EvaluateConfig, MelConfig
from pipeline.errors import UserError
from pipeline.evaluate.encoder import Encoder
from pipeline.evaluate.evaluate import dataset_encoder, load_real_mels
from pipeline.evaluate.metrics import frechet_distance_from_stats, gaussian_stats


class QuickScore:
    """``fd_learned`` of a generator's ``n`` clips against the dataset's real clips.

    ``dataset_root``: a segmented dataset; ``resolution``: the generator's; ``cfg``: the
    ``evaluate`` section (encoder settings and cache, ``seed``, ``max_real``,
    ``batch_size``); ``device``: where the latents are sent when the generator has no
    parameters to tell (otherwise its parameters' device is used); ``latent_dim``:
    when the generator has no ``latent_dim`` attribute; ``postprocess``: applied to the
    generator's output [B, 1, R, R] before scoring (e.g. undoing a per-bin
    normalisation of the training data, so clips are scored as the real ones are stored).
    """

    def __init__(self, dataset_root: str | Path, resolution: int, cfg: EvaluateConfig | None = None, n: int = 256,
                 device: str | torch.device = "cpu", progress: bool = False, latent_dim: int | None = None,
                 encoder_dir: str | Path | None = None,
                 postprocess: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if n < 2:
            raise UserError(f"QuickScore needs n >= 2 generated clips for a covariance, got {n}")
        self.cfg = cfg or EvaluateConfig()
        self.n = int(n)
        self.device = torch.device(device)
        self.latent_dim = latent_dim
        self.postprocess = postprocess
        mels, labels, n_tracks, mel_config, fingerprint = load_real_mels(
            dataset_root, resolution, self.cfg.max_real, self.cfg.seed, progress)
        self.mel_config: MelConfig = mel_config
        self.resolution = int(resolution)
        self.encoder: Encoder = dataset_encoder(dataset_root, fingerprint, mels, labels, n_tracks, self.cfg,
                                                encoder_dir, progress)
        embed, _ = self.encoder.encode(mels, self.cfg.batch_size)  # [N, E]
        self.real_mu, self.real_sigma = gaussian_stats(embed)
        self.n_real = len(mels)

    def _latents(self, generator: nn.Module, device: torch.device) -> torch.Tensor:
        from pipeline.generate import latents_for_seed

        dim = self.latent_dim or getattr(generator, "latent_dim", None)
        if not isinstance(dim, int):
            raise UserError("QuickScore: the generator has no latent_dim attribute; pass latent_dim=")
        return latents_for_seed(self.cfg.seed, self.n, dim).to(device)  # [n, Z], the same every call

    @torch.no_grad()
    def generate(self, generator: nn.Module) -> np.ndarray:
        """The ``n`` clips [n, R, R] scored, generated in eval mode; the generator's mode is restored."""
        params = next(generator.parameters(), None)
        device = params.device if params is not None else self.device
        z = self._latents(generator, device)
        was_training = generator.training
        generator.eval()
        try:
            out = []
            for zb in z.split(self.cfg.batch_size):
                x = generator(zb)  # [B, 1, R, R]
                if self.postprocess is not None:
                    x = self.postprocess(x)
                out.append(x[:, 0].float().cpu().numpy())  # [B, R, R]
        finally:
            generator.train(was_training)
        mels = np.concatenate(out)
        if mels.shape[1:] != (self.resolution, self.resolution):
            raise UserError(f"QuickScore: the generator makes {mels.shape[1:]} clips, the real ones are "
                            f"{self.resolution}x{self.resolution}")
        return mels

    def score_mels(self, mels: np.ndarray) -> float:
        """``fd_learned`` of clips [N, R, R] against the real clips."""
        embed, _ = self.encoder.encode(mels, self.cfg.batch_size)
        return frechet_distance_from_stats(self.real_mu, self.real_sigma, *gaussian_stats(embed))

    def __call__(self, generator: nn.Module) -> float:
        """Learned Fréchet distance of the generator's ``n`` clips (lower is better)."""
        return self.score_mels(self.generate(generator))
