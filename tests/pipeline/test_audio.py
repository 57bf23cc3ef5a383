"""The mel-to-audio renderer: quality against the original audio, shapes, WAV files."""

from __future__ import annotations

import io

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.audio import MEL_INVERSES, MelRenderer, wav_bytes, write_wav
from pipeline.audio.quality import log_spectral_distance, spectral_convergence
from pipeline.mel import log_mel, normalised_to_db, to_model_resolution

# A rendering whose own log-mel is within this many dB (mean absolute difference over
# all cells, both peak-normalised) of the mel it was rendered from counts as close.
# Measured on synthetic techno with 32 iterations: about 1 dB (NNLS), 1.7 dB (pinv).
CLOSE_DB = 2.5


@pytest.fixture(scope="module")
def real_clips(synth_audio_dir, mel_config) -> np.ndarray:
    """Four 5 s clips of real (synthetic-techno) audio at the mel config's rate: [4, samples]."""
    clips = []
    for path in sorted(synth_audio_dir.glob("*.wav"))[:2]:
        y, _ = librosa.load(path, sr=mel_config.sample_rate, mono=True, duration=2 * mel_config.clip_seconds + 1)
        n = mel_config.clip_samples
        clips += [y[:n], y[n:2 * n]]
    return np.stack(clips).astype(np.float32)


@pytest.fixture(scope="module")
def rendered(real_clips, mel_config):
    """The clips' mels and their renderings with each mel inverse (32 iterations)."""
    mels = torch.from_numpy(log_mel(real_clips, mel_config))  # [4, M, T]
    out = {name: MelRenderer(mel_config, n_iter=32, mel_inverse=name).render(mels) for name in MEL_INVERSES}
    return mels, out


def mel_error_db(audio: torch.Tensor, mels: torch.Tensor, cfg) -> float:
    back = log_mel(audio.numpy(), cfg)
    return float(np.abs(normalised_to_db(back, cfg) - normalised_to_db(mels.numpy(), cfg)).mean())


@pytest.mark.parametrize("inverse", sorted(MEL_INVERSES))
def test_rendering_a_real_mel_gives_audio_with_that_mel(rendered, mel_config, inverse):
    mels, out = rendered
    audio = out[inverse]
    assert audio.shape == (len(mels), mel_config.clip_samples)
    assert audio.dtype == torch.float32
    err = mel_error_db(audio, mels, mel_config)
    assert err < CLOSE_DB, f"{inverse}: rendered audio's mel is {err:.2f} dB off the original"
    # and the measure can fail: clip 0's mel against clip 2's rendering (another track)
    wrong = mel_error_db(audio[[2]], mels[[0]], mel_config)
    assert wrong > 2 * CLOSE_DB


def test_nnls_beats_pinv_on_spectral_convergence(rendered, real_clips, mel_config):
    # the reason NNLS is the default (see pipeline/audio/render.py)
    _, out = rendered
    sc = {k: spectral_convergence(real_clips, v, mel_config).mean() for k, v in out.items()}
    lsd = {k: log_spectral_distance(real_clips, v, mel_config).mean() for k, v in out.items()}
    assert sc["nnls"] < sc["pinv"] - 0.05, sc
    assert lsd["nnls"] <= lsd["pinv"] + 0.1, lsd
    assert sc["nnls"] < 0.5


def test_more_iterations_converge_better(real_clips, mel_config):
    mels = torch.from_numpy(log_mel(real_clips[:2], mel_config))
    sc = [spectral_convergence(real_clips[:2], MelRenderer(mel_config, n_iter=n).render(mels), mel_config).mean()
          for n in (0, 32)]
    assert sc[1] < sc[0] - 0.1, sc


def test_quality_figures_are_zero_for_the_same_audio_and_gain_invariant(real_clips, mel_config):
    assert spectral_convergence(real_clips[:1], real_clips[:1] * 0.3, mel_config)[0] < 1e-6
    assert log_spectral_distance(real_clips[:1], real_clips[:1] * 3.0, mel_config)[0] < 1e-3
    assert spectral_convergence(real_clips[:1], real_clips[2:3], mel_config)[0] > 0.5  # another track


def test_renders_generated_resolution_deterministically(mel_config):
    g = torch.Generator().manual_seed(0)
    mels = torch.rand(3, 1, 64, 64, generator=g) * 2 - 1  # [B, 1, R, R] as a generator returns
    r = MelRenderer(mel_config, n_iter=4, seed=5)
    a, b = r.render(mels), r.render(mels)
    assert a.shape == (3, mel_config.clip_samples)
    assert torch.equal(a, b)
    assert torch.allclose(a.abs().amax(dim=-1), torch.full((3,), 0.89), atol=1e-4)  # peak-normalised
    single = r.render(mels[0, 0])  # [H, W]
    assert single.shape == (1, mel_config.clip_samples)


def test_a_model_resolution_real_mel_still_renders_close(rendered, mel_config):
    # generated mels are 64x64: resized back up they lose detail but keep the envelope
    mels, _ = rendered
    small = to_model_resolution(mels, 64)
    audio = MelRenderer(mel_config, n_iter=32).render(small)
    assert mel_error_db(audio, mels, mel_config) < 3 * CLOSE_DB


def test_bad_arguments_are_named(mel_config):
    with pytest.raises(ValueError, match="mel_inverse"):
        MelRenderer(mel_config, mel_inverse="magic")
    with pytest.raises(ValueError, match="shape"):
        MelRenderer(mel_config, n_iter=1).render(torch.zeros(2, 3, 4, 5, 6))


def test_wav_bytes_concatenates_clips_with_gaps(tmp_path):
    sr = 8000
    clips = np.stack([np.full(800, 0.5, np.float32), np.full(800, -0.25, np.float32)])
    data, rate = sf.read(io.BytesIO(wav_bytes(clips, sr, gap_seconds=0.1)), dtype="float32")
    assert rate == sr
    assert data.shape == (800 + 800 + 800,)
    assert np.allclose(data[:800], 0.5, atol=1e-3)
    assert np.allclose(data[800:1600], 0.0)
    assert np.allclose(data[1600:], -0.25, atol=1e-3)
    path = tmp_path / "x" / "clips.wav"
    write_wav(path, torch.from_numpy(clips), sr, gap_seconds=0.0)
    assert sf.info(str(path)).frames == 1600
    assert [p.name for p in path.parent.iterdir()] == ["clips.wav"]  # no temp file left
