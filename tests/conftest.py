"""Shared fixtures: synthetic audio and a small segmented dataset, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import MelConfig, SegmentConfig


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    """Tests use their own temporary MLflow stores, never the developer's server."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def mel_config() -> MelConfig:
    return MelConfig()


@pytest.fixture(scope="session")
def synth_audio_dir(tmp_path_factory) -> Path:
    """Six synthetic techno tracks of 30 s each (WAV, 44.1 kHz stereo), seed 0."""
    from pipeline.synth import synthesize

    out = tmp_path_factory.mktemp("synth_audio")
    synthesize(out, tracks=6, seconds=30.0, seed=0)
    return out


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, synth_audio_dir, mel_config) -> Path:
    """A segmented dataset of the six synthetic tracks: 36 clips of [128, 216]."""
    from pipeline.segment import segment

    out = tmp_path_factory.mktemp("small_dataset")
    segment(synth_audio_dir, out, mel_config, SegmentConfig(workers=2))
    return out
