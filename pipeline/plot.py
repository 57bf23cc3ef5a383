"""Plots of mel spectrograms like the study's figures: a grid of clips with time (s)
and frequency (Hz, mel-spaced) axes and one dB colour bar."""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np
import torch

from pipeline.config import MelConfig
from pipeline.fsutil import atomic_write_bytes
from pipeline.mel import normalised_to_db, to_stored_resolution


def plot_mel_grid(mels, mel_config: MelConfig, path: str | Path | None = None, title: str | None = None,
                  ncols: int | None = None, subtitles: list[str] | None = None) -> bytes | None:
    """Draw normalised mels [N, H, W] (or [N, 1, H, W]) at any resolution, resized back
    to the stored resolution. Writes a PNG to ``path`` atomically, or returns its bytes."""
    import librosa.display
    from matplotlib.figure import Figure
    from matplotlib.ticker import MultipleLocator

    x = torch.as_tensor(np.asarray(mels, dtype=np.float32) if not torch.is_tensor(mels) else mels).float()
    if x.ndim == 4:
        x = x[:, 0]  # [N, H, W]
    if x.ndim == 2:
        x = x[None]
    db = normalised_to_db(to_stored_resolution(x.detach().cpu(), mel_config), mel_config).numpy()  # [N, M, T]
    n = len(db)
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.2 * ncols + 1.2, 2.4 * nrows + (0.5 if title else 0.1)), dpi=100)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        image = librosa.display.specshow(
            db[k], sr=mel_config.sample_rate, hop_length=mel_config.hop_length, x_axis="time", y_axis="mel",
            fmin=mel_config.fmin, fmax=mel_config.f_max, cmap="magma", vmin=-mel_config.top_db, vmax=0.0, ax=ax)
        ax.xaxis.set_major_locator(MultipleLocator(1.0))
        ax.set_xlabel("Time (s)")
        ax.set_ylabel("Frequency (Hz)")
        ax.label_outer()
        if subtitles and k < len(subtitles):
            ax.set_title(subtitles[k], fontsize=8)
    if image is not None:
        fig.colorbar(image, ax=axes, format="%+2.0f dB", shrink=0.9)
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    if path is None:
        return data
    atomic_write_bytes(path, data)
    return None


def plot_dataset(root: str | Path, path: str | Path, n: int = 16, seed: int = 0) -> Path:
    """A grid of ``n`` random real clips of a dataset (the study's "Training Examples")."""
    from pipeline.dataset import MelDataset

    ds = MelDataset(root)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(len(ds), size=min(n, len(ds)), replace=False))
    mels = torch.stack([ds.stored(int(i)) for i in picks])  # [n, M, T]
    titles = [f"clip {int(i)}" for i in picks]
    plot_mel_grid(mels, ds.mel_config, path, title=f"Training examples ({len(ds)} clips)", subtitles=titles)
    return Path(path)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="segmented dataset folder")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--n", type=int, default=16, help="clips to draw (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="which clips (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    path = plot_dataset(args.dataset, args.out, args.n, args.seed)
    print(f"wrote {path}")
    return 0
