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


# ----------------------------------------------------------------------------- long-form pieces
#
# What a listener hears at the joins of a long-form piece (pipeline.longform), measured on
# a dB mel [M, T] of the whole piece (``long_mel_db`` of its rendered audio, so rendering
# artefacts count too). Each figure is compared with real music cut into windows and joined
# the same way (benchmarks/bench_audio.py), never judged alone.


def long_mel_db(audio, cfg: MelConfig) -> np.ndarray:
    """Audio [samples] of any length -> mel power in dB relative to its peak, floored at
    ``-top_db``: [n_mels, frames] float32, the same analysis as the dataset's mels."""
    from pipeline.mel import AMIN, mel_filterbank

    x = torch.as_tensor(np.asarray(audio) if not torch.is_tensor(audio) else audio, dtype=torch.float32)
    if x.ndim != 1:
        raise ValueError(f"audio must be [samples], got shape {tuple(x.shape)}")
    spec = stft(x[None], cfg)[0].abs().pow(cfg.power)  # [F, T]
    mel = torch.from_numpy(np.array(mel_filterbank(cfg))) @ spec  # [M, T]
    db = 10.0 * torch.log10(mel.clamp_min(AMIN))
    db = (db - db.max()).clamp_min(-cfg.top_db)
    return db.numpy().astype(np.float32)


def _frame_s(cfg: MelConfig) -> float:
    return cfg.hop_length / cfg.sample_rate


def _near(n_frames: int, boundaries_s, cfg: MelConfig, radius_s: float) -> np.ndarray:
    """[n_frames] bool: within ``radius_s`` of any boundary."""
    t = np.arange(n_frames) * _frame_s(cfg)
    mask = np.zeros(n_frames, bool)
    for b in boundaries_s:
        mask |= np.abs(t - b) <= radius_s
    return mask


def seam_score(mel_db: np.ndarray, boundaries_s, cfg: MelConfig, radius_s: float = 0.5,
               clear_s: float = 1.0) -> float:
    """Spectral flux at window joins divided by the flux inside windows.

    Flux is the mean over mel bands of the absolute frame-to-frame change in dB (rises and
    falls: a seam may cut a sound off as well as start one). "At a join" is within
    ``radius_s`` of a boundary (where the crossfade and any beat misalignment are); "inside"
    is further than ``clear_s`` from every boundary. 1 means the joins change as much as
    the music does anyway; a click or a doubled kick at every join raises it."""
    db = np.asarray(mel_db, dtype=np.float64)
    if db.ndim != 2 or db.shape[1] < 3:
        raise ValueError(f"mel_db must be [n_mels, frames >= 3], got shape {db.shape}")
    if not len(boundaries_s):
        raise ValueError("a seam score needs at least one boundary")
    flux = np.abs(np.diff(db, axis=1)).mean(axis=0)  # [T - 1]; entry i is the change into frame i + 1
    n = len(flux)
    at = _near(n + 1, boundaries_s, cfg, radius_s)[1:]
    inside = ~_near(n + 1, boundaries_s, cfg, clear_s)[1:]
    if not at.any() or not inside.any():
        raise ValueError("the piece is too short for its boundaries: no frames at or away from them")
    return float(flux[at].mean() / max(flux[inside].mean(), 1e-12))


def boundary_loudness(mel_db: np.ndarray, boundaries_s, cfg: MelConfig, radius_s: float = 0.25,
                      neighbourhood_s: float = 2.5) -> np.ndarray:
    """Per boundary, how much louder (dB) the ``radius_s`` around it is than its neighbourhood:
    the frames between ``2 * radius_s`` and ``neighbourhood_s`` on either side. Loudness is
    the mean mel power of the frames. Targets: none above 3 dB."""
    db = np.asarray(mel_db, dtype=np.float64)
    power = (10.0 ** (db / 10.0)).mean(axis=0)  # [T]
    t = np.arange(len(power)) * _frame_s(cfg)
    out = []
    for b in boundaries_s:
        d = np.abs(t - b)
        here, around = power[d <= radius_s], power[(d > 2 * radius_s) & (d <= neighbourhood_s)]
        if not here.size or not around.size:
            continue
        out.append(10.0 * np.log10(max(here.mean(), 1e-30) / max(around.mean(), 1e-30)))
    return np.asarray(out, dtype=np.float64)


def tempo_stability(mel_db: np.ndarray, cfg: MelConfig, hop_s: float | None = None,
                    search_bpm: tuple[float, float] = (80.0, 200.0), min_clarity: float = 0.3) -> dict:
    """Local tempo across a piece: one estimate per clip-length segment (``cfg.clip_seconds``,
    every ``hop_s``, default half a clip) by the evaluation's beat analysis; the spread is
    the standard deviation (BPM) of the estimates of segments with a clear beat."""
    from pipeline.evaluate.features import beat_analysis
    from pipeline.mel import db_to_normalised

    db = np.asarray(mel_db, dtype=np.float32)
    width = cfg.n_frames
    hop = max(1, int(round((hop_s or cfg.clip_seconds / 2) / _frame_s(cfg))))
    if db.shape[1] < width:
        raise ValueError(f"a tempo analysis needs at least one clip ({width} frames), got {db.shape[1]}")
    segments = np.stack([db[:, a:a + width] for a in range(0, db.shape[1] - width + 1, hop)])
    tempo, clarity = beat_analysis(db_to_normalised(segments, cfg), cfg, search_bpm)
    clear = clarity >= min_clarity
    tempi = tempo[clear].astype(np.float64)
    return {"segments": int(len(tempo)), "clear_share": float(clear.mean()),
            "median_bpm": float(np.median(tempi)) if tempi.size else None,
            "spread_bpm": float(tempi.std()) if tempi.size else None}
