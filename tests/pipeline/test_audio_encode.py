"""Compressed audio (``pipeline.audio.encode``): WAV, MP3 and Ogg Vorbis through the real ffmpeg,
decoded again by the project's decoder (``pipeline.decode``)."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import soundfile as sf

from pipeline.audio import AUDIO_FORMATS, CONTENT_TYPES, EXTENSIONS, EncodeError, encode_audio, wav_bytes, write_audio
from pipeline.audio.encode import MP3_DELAY_SAMPLES, mp3_rate
from pipeline.decode import open_audio
from tests.audio_utils import sine

SR = 22050
MP3_FRAME = 576  # samples per MPEG-2 layer III frame (22.05 kHz)


def decoded(tmp_path, data: bytes, fmt: str, sr: int = SR) -> tuple[str, np.ndarray]:
    """The file's audio as the project decodes it: (decoder, mono float32 at ``sr``)."""
    path = tmp_path / f"clip{EXTENSIONS[fmt]}"
    path.write_bytes(data)
    name, blocks = open_audio(path, sr)
    y = np.concatenate(list(blocks.blocks))
    assert not blocks.error, blocks.error
    return name, y


def peak_hz(y: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    return float(np.fft.rfftfreq(len(y), 1.0 / sr)[np.argmax(spec)])


@pytest.fixture(scope="module")
def tone() -> np.ndarray:
    """Two 2 s clips [2, samples]: 440 Hz and 1234.5 Hz with a little noise (a pure sine
    compresses to almost nothing, which would flatter the size ratios)."""
    rng = np.random.default_rng(0)
    clips = np.stack([sine(440.0, 2.0, SR), sine(1234.5, 2.0, SR)])
    return (clips + 0.05 * rng.standard_normal(clips.shape)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["mp3", "ogg"])
def test_round_trip_keeps_length_pitch_and_is_much_smaller(tmp_path, tone, fmt):
    gap = 0.5
    data = encode_audio(tone, SR, fmt, gap_seconds=gap)
    wav = wav_bytes(tone, SR, gap_seconds=gap)
    want = tone.size + int(gap * SR)  # samples of the joined signal
    _, y = decoded(tmp_path, data, fmt)
    if fmt == "ogg":
        # Ogg's granule positions say where the audio ends: exact
        assert len(y) == want, (len(y), want)
        start = 0
    else:
        # over a pipe there is no LAME header: LAME's delay comes first, the end is padded to a frame
        assert want + MP3_DELAY_SAMPLES <= len(y) < want + MP3_DELAY_SAMPLES + MP3_FRAME, (len(y), want)
        start = MP3_DELAY_SAMPLES
        # the delay is where the audio starts: the best alignment with the input is there
        lags = range(start - 64, start + 65)
        corr = [float(np.dot(y[k:k + SR], tone[0, :SR])) for k in lags]
        assert abs(lags[int(np.argmax(corr))] - start) <= 2
    n = tone.shape[1]
    first, second = y[start:start + n], y[start + n + int(gap * SR):start + 2 * n + int(gap * SR)]
    assert abs(peak_hz(first, SR) - 440.0) < 2.0
    assert abs(peak_hz(second, SR) - 1234.5) < 2.0
    # the gap is silent, the clips are not
    silence = y[start + n + 200:start + n + int(gap * SR) - 200]
    assert np.sqrt(np.mean(silence ** 2)) < 0.01 < np.sqrt(np.mean(first ** 2))
    # 64 kbps MP3 / Vorbis q4 (~50 kbps) against 352.8 kbps 16-bit PCM: ~5.5x / ~7x smaller
    assert len(data) < len(wav) / 4, (len(data), len(wav))


def test_magic_bytes_and_content_types(tone):
    mp3 = encode_audio(tone, SR, "mp3")
    ogg = encode_audio(tone, SR, "ogg")
    wav = encode_audio(tone, SR, "wav")
    # an ID3v2 tag or straight into an MPEG audio frame sync
    assert mp3[:3] == b"ID3" or (mp3[0] == 0xFF and mp3[1] & 0xE0 == 0xE0)
    assert ogg[:4] == b"OggS" and b"\x01vorbis" in ogg[:64]
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    assert CONTENT_TYPES == {"wav": "audio/wav", "mp3": "audio/mpeg", "ogg": "audio/ogg; codecs=vorbis"}
    assert set(EXTENSIONS) == set(CONTENT_TYPES) == set(AUDIO_FORMATS)


def test_wav_is_wav_bytes_itself(tone):
    assert encode_audio(tone, SR, "wav", gap_seconds=0.25) == wav_bytes(tone, SR, gap_seconds=0.25)


def test_rates_lame_cannot_take_are_resampled(tmp_path):
    # 20 kHz is no MPEG rate: written at 22.05 kHz, same pitch
    sr = 20000
    y = sine(1000.0, 1.0, sr)
    assert mp3_rate(sr) == 22050 and mp3_rate(22050) == 22050 and mp3_rate(96000) == 48000
    data = encode_audio(y, sr, "mp3")
    _, back = decoded(tmp_path, data, "mp3", sr)
    assert abs(peak_hz(back[MP3_DELAY_SAMPLES:MP3_DELAY_SAMPLES + sr // 2], sr) - 1000.0) < 4.0


def test_write_audio_writes_the_encoded_bytes(tmp_path, tone):
    path = tmp_path / "a.ogg"
    write_audio(path, tone, SR, "ogg")
    _, y = decoded(tmp_path, path.read_bytes(), "ogg")
    assert abs(len(y) - (tone.size + SR // 2)) <= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ogg", "clip.ogg"]  # no temp file left


def test_unknown_format_is_a_value_error_listing_the_formats(tone):
    with pytest.raises(ValueError, match="wav, mp3, ogg"):
        encode_audio(tone, SR, "flac")


def _script(tmp_path, body: str) -> str:
    path = tmp_path / "fake-ffmpeg"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return os.fspath(path)


def test_missing_ffmpeg_says_so(tmp_path, tone):
    with pytest.raises(EncodeError, match=r"cannot encode mp3: cannot run .*nowhere/ffmpeg.*install ffmpeg"):
        encode_audio(tone, SR, "mp3", ffmpeg=os.fspath(tmp_path / "nowhere" / "ffmpeg"))


def test_failing_ffmpeg_error_names_its_complaint(tmp_path, tone):
    # what a build without libvorbis says, then exits 1 without reading its input
    ff = _script(tmp_path, "echo \"[out#0 @ 0x5583] Unknown encoder 'libvorbis'\" >&2\nexit 1")
    with pytest.raises(EncodeError, match=r"cannot encode ogg: fake-ffmpeg exited with 1: Unknown encoder 'libvorbis'"):
        encode_audio(tone, SR, "ogg", ffmpeg=ff)


def test_a_hanging_ffmpeg_is_killed_at_its_time_limit(tmp_path, tone):
    ff = _script(tmp_path, "exec sleep 60")
    with pytest.raises(EncodeError, match=r"cannot encode mp3: ffmpeg did not finish within 0.5 s"):
        encode_audio(tone, SR, "mp3", ffmpeg=ff, timeout_s=0.5)


def test_a_sample_rate_of_zero_is_a_value_error(tone):
    with pytest.raises(ValueError, match="sample_rate must be positive, got 0"):
        encode_audio(tone, 0, "mp3")


def test_wav_file_is_still_readable_by_soundfile(tmp_path, tone):
    path = tmp_path / "x.wav"
    write_audio(path, tone, SR, "wav")
    info = sf.info(path)
    assert info.samplerate == SR and info.frames == tone.size + SR // 2 and info.subtype == "PCM_16"
