"""The dataset does not change with the decoder.

Stated tolerance, on the stored normalised mels ([-1, 1] spans top_db = 80 dB):

- ``pyav`` (surround, and formats libsndfile does not read): the ffmpeg command
  line's mels within float16 rounding (max abs difference 1e-3); its resampler and
  downmix are the command line's own.
- ``soundfile`` (libsndfile + soxr; the default for mono/stereo WAV, FLAC, OGG,
  MP3): max abs difference 0.02 (0.8 dB) in every mel
  band whose top edge is below 90 % of the lower of the two Nyquist frequencies; the
  bands above sit in the resamplers' transition bands, where two anti-alias filters
  legitimately differ.

Both: the same clips at the same offsets as the command line.
"""

import json
import tracemalloc
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from pipeline.config import MelConfig, SegmentConfig
from pipeline.decode import ClipStream, OpenFailed, open_audio
from pipeline.segment import _prepare_out, process_file
from pipeline.synth import FORMATS, synthesize

CFG = MelConfig()
PYAV_TOL = 1e-3
SOUNDFILE_TOL = 0.02


def _odd(path: Path, sr: int, channels: int, subtype: str | None = None) -> Path:
    """A chirp plus a little noise, decorrelated across channels, at an odd rate/layout."""
    rng = np.random.default_rng(sr + channels)
    t = np.arange(int(11 * sr)) / sr
    chans = [0.3 * np.sin(2 * np.pi * (180 + 40 * c) * t * (1 + t / 11)) + 0.05 * rng.standard_normal(len(t))
             for c in range(channels)]
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack(chans, 1).astype(np.float32), sr, subtype=subtype)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("decode_inputs")
    files = []
    for fmt in FORMATS:  # every format synth writes, 44.1 kHz stereo
        files += synthesize(d, tracks=1, seconds=11, seed=1, fmt=fmt, progress=False)
    files += [_odd(d / "mono8k.wav", 8000, 1), _odd(d / "mono11k.flac", 11025, 1),
              _odd(d / "three32k.ogg", 32000, 3), _odd(d / "surround48k.wav", 48000, 6),
              _odd(d / "hires96k.flac", 96000, 2, "PCM_24")]
    return files


def _segment_one(path: Path, out: Path, decoder: str) -> tuple[dict, np.ndarray]:
    _prepare_out(out, CFG)
    r = process_file(path, path.name, out, CFG, SegmentConfig(workers=1, decoder=decoder))
    assert r.status == "done", (path.name, decoder, r.reason)
    [part] = (out / "parts").glob("*.json")
    rec = json.loads(part.read_text())
    mels = np.fromfile(out / rec["shard"], np.float16).reshape(-1, *CFG.shape).astype(np.float32)
    return rec, mels


def _without_levels(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "peak_db"} for r in rows]


@pytest.mark.slow
def test_every_decoder_makes_the_command_lines_clips_and_mels(inputs, tmp_path):
    upper_edges = librosa.mel_frequencies(CFG.n_mels + 2, fmin=CFG.fmin, fmax=CFG.f_max)[2:]
    for path in inputs:
        channels = sf.info(path).channels
        ref, ref_mels = _segment_one(path, tmp_path / f"ffmpeg-{path.name}", "ffmpeg")
        assert ref["decoder"] == "ffmpeg" and len(ref["rows"]) == 2
        auto, _ = _segment_one(path, tmp_path / f"auto-{path.name}", "auto")
        # the fastest that reads it: libsndfile for mono/stereo, FFmpeg's libraries for surround
        assert auto["decoder"] == ("soundfile" if channels <= 2 else "pyav"), path.name

        pyav, pyav_mels = _segment_one(path, tmp_path / f"pyav-{path.name}", "pyav")
        assert pyav["rows"] == ref["rows"], path.name
        assert (pyav["channels"], pyav["sample_rate"]) == (ref["channels"], ref["sample_rate"]), path.name
        assert np.abs(pyav_mels - ref_mels).max() <= PYAV_TOL, path.name

        if channels > 2:
            # libsndfile hands surround to FFmpeg's downmix rather than guess its weights
            with pytest.raises(OpenFailed, match="channels"):
                open_audio(path, CFG.sample_rate, "soundfile")
            continue
        sfr, sf_mels = _segment_one(path, tmp_path / f"soundfile-{path.name}", "soundfile")
        # the same clips; their levels within the mels' tolerance (in dB), as another resampler gives
        assert _without_levels(sfr["rows"]) == _without_levels(ref["rows"]), path.name
        levels = np.array([[a["peak_db"], b["peak_db"]] for a, b in zip(sfr["rows"], ref["rows"])])
        assert np.abs(levels[:, 0] - levels[:, 1]).max() <= SOUNDFILE_TOL * CFG.top_db / 2, path.name
        assert (sfr["channels"], sfr["sample_rate"]) == (ref["channels"], ref["sample_rate"]), path.name
        nyquist = min(sf.info(path).samplerate, CFG.sample_rate) / 2
        below = upper_edges < 0.9 * nyquist
        assert below.sum() > CFG.n_mels // 2
        assert np.abs(sf_mels - ref_mels)[:, below].max() <= SOUNDFILE_TOL, path.name


@pytest.mark.slow
def test_stream_memory_is_bounded_whatever_the_file_length(tmp_path):
    # 5 minutes: decoded whole it would be 26 MB of float32 at 22.05 kHz
    path = tmp_path / "long.wav"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 300 * 8000).astype(np.float32), 8000,
             subtype="PCM_16")
    for decoder in ("pyav", "soundfile", "ffmpeg"):
        stream = ClipStream(path, CFG, batch_clips=4, decoder=decoder)
        tracemalloc.start()
        buffers, clips = set(), 0
        for batch in stream:
            buffers.add(batch.__array_interface__["data"][0])
            clips += len(batch)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert clips == 60 and stream.decoder == decoder and stream.error == ""
        assert buffers and len(buffers) == 1, "every batch reuses one buffer"
        assert peak < 8e6, f"{decoder}: peak {peak / 1e6:.1f} MB for a file of 26 MB decoded"


def test_a_file_no_decoder_can_read_falls_through_to_ffmpegs_complaint(tmp_path):
    """The in-process decoders refuse to open it, each saying why; the command line is the
    last resort, and its complaint is what the stream reports."""
    bad = tmp_path / "notes.mp3"
    bad.write_text("these are my notes, not an mp3\n" * 100)
    for name in ("soundfile", "pyav"):
        with pytest.raises(OpenFailed) as e:
            open_audio(bad, CFG.sample_rate, name)
        assert str(e.value).startswith(f"{name}:"), str(e.value)
    stream = ClipStream(bad, CFG, 4)
    assert list(stream) == [] and stream.samples == 0
    assert stream.decoder == "ffmpeg" and stream.error.startswith("ffmpeg exited with"), stream.error


def test_truncated_file_keeps_what_decoded_in_every_decoder(tmp_path):
    full = tmp_path / "full.flac"
    sf.write(full, np.random.default_rng(1).uniform(-0.5, 0.5, 24 * 22050).astype(np.float32), 22050)
    cut = tmp_path / "cut.flac"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    for decoder in ("pyav", "soundfile", "ffmpeg"):
        stream = ClipStream(cut, CFG, 4, decoder)
        clips = sum(len(b) for b in stream)
        assert 1 <= clips <= 3, decoder
        assert stream.info["declared_seconds"] == pytest.approx(24.0, abs=0.1), decoder
