"""Synthetic signals for tests: sines, silence, noise, written as real audio files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def sine(freq: float, seconds: float, sr: int = 22050, amp: float = 0.5, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def write(path: Path, audio: np.ndarray, sr: int, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr, subtype=subtype)
    return path
