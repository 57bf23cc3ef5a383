"""Plots of mel spectrograms like the study's figures: a grid of clips with time (s)
and frequency (Hz, mel-spaced) axes and one dB colour bar; and long-form pieces, in
rows with a time axis from the start of the piece and the window joins marked."""

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


def _hz_ticks(cfg: MelConfig) -> tuple[np.ndarray, list[str]]:
    """Tick positions (in mel-band units) and labels for round frequencies."""
    import librosa

    band_mels = librosa.hz_to_mel(librosa.mel_frequencies(cfg.n_mels, fmin=cfg.fmin, fmax=cfg.f_max))
    hz = np.array([f for f in (0, 250, 500, 1000, 2000, 4000, 8000, 16000) if cfg.fmin <= f <= cfg.f_max])
    pos = np.interp(librosa.hz_to_mel(hz), band_mels, np.arange(cfg.n_mels)) + 0.5
    return pos, [f"{f / 1000:g}k" if f >= 1000 else f"{f:g}" for f in hz]


def plot_mel_grid(mels, mel_config: MelConfig, path: str | Path | None = None, title: str | None = None,
                  ncols: int | None = None, subtitles: list[str] | None = None) -> bytes | None:
    """Draw normalised mels [N, H, W] (or [N, 1, H, W]) at any resolution, resized back
    to the stored resolution, with time (s) and mel-spaced frequency (Hz) axes and a dB
    colour bar. Writes a PNG to ``path`` atomically, or returns its bytes."""
    from matplotlib.figure import Figure

    x = torch.as_tensor(np.asarray(mels, dtype=np.float32) if not torch.is_tensor(mels) else mels).float()
    if x.ndim == 4:
        x = x[:, 0]  # [N, H, W]
    if x.ndim == 2:
        x = x[None]
    cfg = mel_config
    db = normalised_to_db(to_stored_resolution(x.detach().cpu(), cfg), cfg).numpy()  # [N, M, T]
    n = len(db)
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    seconds = cfg.n_frames * cfg.hop_length / cfg.sample_rate
    tick_pos, tick_labels = _hz_ticks(cfg)
    fig = Figure(figsize=(3.2 * ncols + 1.2, 2.4 * nrows + (0.5 if title else 0.1)), dpi=100,
                 layout="constrained")  # room for the axis labels: a lone clip lost its "Time (s)"
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        # imshow over mel bands (evenly spaced in mel) with Hz tick labels: the same
        # picture as librosa's specshow(y_axis="mel"), an order of magnitude faster
        image = ax.imshow(db[k], origin="lower", aspect="auto", interpolation="nearest", cmap="magma",
                          vmin=-cfg.top_db, vmax=0.0, extent=(0.0, seconds, 0.0, cfg.n_mels))
        ax.set_yticks(tick_pos, tick_labels)
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


def plot_long_mel(mel, mel_config: MelConfig, path: str | Path | None = None, title: str | None = None,
                  boundaries_s: list[float] | None = None, row_seconds: float = 30.0) -> bytes | None:
    """Draw one long normalised mel [M, T] at stored resolution (a long-form piece) with a
    time axis in seconds from the start of the piece, split into rows of ``row_seconds``
    (the last row as wide as the others, so every row has the same time scale), and the
    window joins ``boundaries_s`` marked as dashed lines when given. Writes a PNG to
    ``path`` atomically, or returns its bytes."""
    from matplotlib.figure import Figure

    x = np.asarray(mel.detach().cpu().numpy() if torch.is_tensor(mel) else mel, dtype=np.float32)
    cfg = mel_config
    if x.ndim != 2 or x.shape[0] != cfg.n_mels:
        raise ValueError(f"a long mel is [n_mels={cfg.n_mels}, T], got shape {x.shape}")
    if not row_seconds > 0:
        raise ValueError(f"row_seconds must be positive, got {row_seconds}")
    db = normalised_to_db(x, cfg)
    frame_s = cfg.hop_length / cfg.sample_rate
    # T frames are (T - 1) hops of audio: a 30 s piece has a frame past 30 s, not a second row
    total_s = max(1, x.shape[1] - 1) * frame_s
    nrows = max(1, math.ceil(total_s / row_seconds - 1e-9))
    width_s = min(row_seconds, total_s)
    per_row = max(int(round(width_s / frame_s)), math.ceil(x.shape[1] / nrows))
    tick_pos, tick_labels = _hz_ticks(cfg)
    fig = Figure(figsize=(min(16.0, 2.0 + 0.45 * width_s), 1.9 * nrows + (0.6 if title else 0.3)), dpi=100)
    axes = fig.subplots(nrows, 1, squeeze=False, sharey=True)[:, 0]
    image = None
    for r, ax in enumerate(axes):
        a = r * per_row
        part = db[:, a:a + per_row]
        t0 = a * frame_s
        image = ax.imshow(part, origin="lower", aspect="auto", interpolation="nearest", cmap="magma",
                          vmin=-cfg.top_db, vmax=0.0, extent=(t0, t0 + part.shape[1] * frame_s, 0.0, cfg.n_mels))
        ax.set_xlim(t0, t0 + width_s)
        ax.set_yticks(tick_pos, tick_labels)
        ax.set_ylabel("Hz")
        for b in boundaries_s or ():
            if t0 <= b < t0 + part.shape[1] * frame_s:
                ax.axvline(b, color="cyan", linestyle="--", linewidth=0.9)
    axes[-1].set_xlabel("Time (s)")
    if image is not None:
        fig.colorbar(image, ax=list(axes), format="%+2.0f dB", shrink=0.9)
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)  # one row leaves no room for the time label otherwise
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
