import librosa
import numpy as np
import pytest
import torch

from pipeline.config import MelConfig
from pipeline.mel import db_to_normalised, log_mel, log_mel_with_peaks, normalised_to_db, resize, to_model_resolution, to_stored_resolution
from tests.audio_utils import sine


@pytest.mark.parametrize("freq", [110.0, 440.0, 1000.0, 3500.0])
def test_sine_peaks_in_its_mel_band(freq):
    cfg = MelConfig()
    m = log_mel(sine(freq, cfg.clip_seconds)[None], cfg)[0]  # [M, T]
    assert m.shape == cfg.shape
    centres = librosa.mel_frequencies(cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.f_max)[1:-1]
    expected = int(np.argmin(np.abs(centres - freq)))
    assert abs(int(m.mean(axis=1).argmax()) - expected) <= 1


def test_log_mel_is_normalised_to_its_peak():
    cfg = MelConfig()
    rng = np.random.default_rng(0)
    clips = np.stack([0.01 * rng.standard_normal(cfg.clip_samples), 0.9 * rng.standard_normal(cfg.clip_samples)])
    m = log_mel(clips.astype(np.float32), cfg)
    assert m.shape == (2, *cfg.shape)
    assert m.max(axis=(1, 2)) == pytest.approx([1.0, 1.0])  # loudness does not matter
    assert m.min() >= -1.0


def test_the_peak_is_the_level_the_mel_is_relative_to():
    cfg = MelConfig()
    clip = np.random.default_rng(1).standard_normal(cfg.clip_samples).astype(np.float32) * 0.5
    mels, peaks = log_mel_with_peaks(np.stack([clip, clip * 0.25]), cfg)
    np.testing.assert_allclose(mels[0], mels[1], atol=1e-4)  # a quieter copy has the same mel...
    assert peaks[0] - peaks[1] == pytest.approx(-20 * np.log10(0.25), abs=1e-3)  # ...12.04 dB lower
    # the peak is the loudest bin of the clip's mel power, in dB
    power = librosa.feature.melspectrogram(y=clip, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                           n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.f_max, center=True,
                                           pad_mode="constant")
    assert peaks[0] == pytest.approx(10 * np.log10(power.max()), abs=1e-3)


def test_db_normalisation_round_trip():
    cfg = MelConfig(top_db=80.0)
    db = np.linspace(-80, 0, 11)
    x = db_to_normalised(db, cfg)
    assert x[0] == pytest.approx(-1.0) and x[-1] == pytest.approx(1.0)
    np.testing.assert_allclose(normalised_to_db(x, cfg), db)


def test_resize_to_model_and_back():
    cfg = MelConfig()
    x = torch.rand(3, *cfg.shape) * 2 - 1  # [3, 128, 216]
    small = to_model_resolution(x, 64)
    assert small.shape == (3, 64, 64)
    assert small.min() >= -1 and small.max() <= 1
    back = to_stored_resolution(small, cfg)
    assert back.shape == (3, 128, 216)
    # a smooth image survives the round trip closely
    smooth = torch.linspace(-1, 1, 216).expand(128, 216)
    err = (to_stored_resolution(to_model_resolution(smooth, 64), cfg) - smooth).abs().max()
    assert err < 0.05
    assert resize(x, (128, 216)) is x


def test_log_mel_equals_librosa_reference():
    cfg = MelConfig()
    rng = np.random.default_rng(1)
    clip = (0.3 * rng.standard_normal(cfg.clip_samples)).astype(np.float32)
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(y=clip, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                       n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.f_max),
        ref=np.max, top_db=cfg.top_db)
    np.testing.assert_allclose(normalised_to_db(log_mel(clip[None], cfg)[0], cfg), ref, atol=1e-3)


@pytest.mark.parametrize("batch,seconds,hop,length_cut", [
    (8, 5.0, 512, 0),      # a batch of clips, as the renderer inverts them
    (1, 31.0, 512, 0),     # one long piece's chunk
    (3, 2.0, 256, 700),    # another hop, a length short of the frames
    (2, 2.0, 300, 0),      # a hop that does not divide the window: torch's own path
])
def test_istft_is_torchs_inverse_and_inverts_stft(batch, seconds, hop, length_cut):
    from pipeline.mel import istft, stft

    cfg = MelConfig(hop_length=hop, clip_seconds=seconds)
    rng = np.random.default_rng(1)
    audio = torch.from_numpy(rng.standard_normal((batch, cfg.clip_samples)).astype(np.float32))
    spec = stft(audio, cfg)  # [K, F, T]
    # a spectrum that is not any signal's (Griffin-Lim's are not), so the overlap-add matters
    spec = spec * torch.exp(1j * torch.from_numpy(rng.uniform(0, 6.3, spec.shape).astype(np.float32)))
    length = cfg.clip_samples - length_cut
    ours = istft(spec, cfg, length)
    theirs = torch.istft(spec, cfg.n_fft, cfg.hop_length, window=torch.hann_window(cfg.n_fft), center=True,
                         length=length)
    assert ours.shape == (batch, length)
    assert torch.allclose(ours, theirs, atol=1e-5 * float(theirs.abs().max()))
    assert torch.allclose(istft(stft(audio, cfg), cfg)[:, :length], audio[:, :length], atol=1e-4)
    assert torch.equal(istft(spec[0], cfg, length), ours[0])  # [F, T] -> [length]
