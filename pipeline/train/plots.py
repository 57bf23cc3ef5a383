"""Images a training run logs: sample grids (generated next to real) and loss curves."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch

from pipeline.config import MelConfig
from pipeline.fsutil import atomic_write_bytes
from pipeline.plot import plot_mel_grid


def sample_grid(fake: torch.Tensor, real: torch.Tensor, mel_config: MelConfig, path: Path, title: str) -> Path:
    """Generated mels [N, 1, R, R] in the first rows, real examples [M, 1, R, R] below them,
    with time/frequency axes and a dB colour bar (the study's Figures 7-16 side by side)."""
    ncols = 4
    n_fake = len(fake) - len(fake) % ncols or len(fake)
    n_real = min(len(real), ncols)
    mels = torch.cat([fake[:n_fake].float().cpu(), real[:n_real].float().cpu()])[:, 0]  # [N + M, R, R]
    subtitles = [f"generated {i + 1}" for i in range(n_fake)] + [f"real {i + 1}" for i in range(n_real)]
    plot_mel_grid(mels, mel_config, path, title=title, ncols=ncols, subtitles=subtitles)
    return path


def loss_plot(history: Mapping[str, Sequence[float]], path: Path, title: str) -> Path:
    """Generator and discriminator/critic loss per step (the study's Figures 17-20), plus the
    Wasserstein estimate and gradient penalty where the model has them."""
    import io

    from matplotlib.figure import Figure

    steps = history.get("step", [])
    fig = Figure(figsize=(9, 4.5), dpi=100)
    ax = fig.subplots()
    for key, label in (("g_loss", "Generator"), ("d_loss", "Discriminator / critic"),
                       ("wasserstein", "Wasserstein estimate"), ("gradient_penalty", "Gradient penalty")):
        values = history.get(key)
        if values and len(values) == len(steps):
            ax.plot(steps, values, label=label, linewidth=0.9)
    ax.set_xlabel("Generator step")
    ax.set_ylabel("Loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return path
