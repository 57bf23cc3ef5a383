"""How close a rendering is to the audio it came from: spectral convergence and
log-spectral distance of STFT magnitudes.

Stored mels are relative to each clip's peak, so a rendering's absolute level is
arbitrary; both figures first scale the rendering's magnitude by the least-squares
gain onto the reference, so they measure shape, not loudness.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config import MelConfig
from pipeline.mel import stft


def _magnitudes(audio, cfg: MelConfig) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(audio) if not torch.is_tensor(audio) else audio, dtype=torch.float32)
    if x.ndim == 1:
        x = x[None]
    return stft(x, cfg).abs().double()  # [B, F, T]


def _matched(reference, audio, cfg: MelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    ref, est = _magnitudes(reference, cfg), _magnitudes(audio, cfg)
    if ref.shape != est.shape:
        raise ValueError(f"reference {tuple(ref.shape)} and rendering {tuple(est.shape)} differ in shape")
    gain = (ref * est).sum(dim=(-2, -1), keepdim=True) / (est * est).sum(dim=(-2, -1), keepdim=True).clamp_min(1e-20)
    return ref, est * gain


def spectral_convergence(reference, audio, cfg: MelConfig) -> np.ndarray:
    """Per clip ``|| |X| - g|Y| ||_F / || |X| ||_F`` (0 is perfect; 1 is as bad as silence).

    ``reference`` and ``audio`` are [B, samples] (or [samples]); returns [B]."""
    ref, est = _matched(reference, audio, cfg)
    num = torch.linalg.vector_norm(ref - est, dim=(-2, -1))
    den = torch.linalg.vector_norm(ref, dim=(-2, -1)).clamp_min(1e-20)
    return (num / den).numpy()


def log_spectral_distance(reference, audio, cfg: MelConfig, floor_db: float | None = None) -> np.ndarray:
    """Per clip log-spectral distance in dB: RMS over frequency of the dB difference,
    averaged over frames. Both spectra are floored ``floor_db`` (default the mel config's
    ``top_db``) below the reference's peak so inaudible bins do not dominate. Returns [B]."""
    ref, est = _matched(reference, audio, cfg)
    floor = cfg.top_db if floor_db is None else floor_db
    ref_db = 20.0 * torch.log10(ref.clamp_min(1e-12))
    est_db = 20.0 * torch.log10(est.clamp_min(1e-12))
    lowest = ref_db.amax(dim=(-2, -1), keepdim=True) - floor
    diff = torch.maximum(ref_db, lowest) - torch.maximum(est_db, lowest)  # [B, F, T]
    return diff.pow(2).mean(dim=-2).sqrt().mean(dim=-1).numpy()
