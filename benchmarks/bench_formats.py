"""What the compressed audio formats cost and keep: encode time relative to WAV, size
relative to WAV, and the codec's error, for a minute of rendered techno. Prints JSON.

    .venv/bin/python benchmarks/bench_formats.py [--seconds 60] [--sweep] [--out FILE]

The audio is what ``generate`` and the server encode: synthetic techno decoded at the
mel config's rate, turned into mels and rendered back with ``MelRenderer`` (fast
Griffin-Lim, 32 iterations, timed: ``encode_time_ratio_to_render`` is what encoding
adds to making the audio), 5 s clips joined without gaps. Each format is encoded with
``pipeline.audio.encode_audio`` (best of ``--repeats``), decoded again
(``pipeline.decode``) and compared with the audio it came from in the project's own
terms: the mean absolute difference of the log-mels, in dB, cell by cell (the MP3's
encoder delay removed first). For scale, the same measure between a clip and its
Griffin-Lim rendering is ~1 dB (tests/pipeline/test_audio.py). ``--sweep`` adds the
candidate bitrates, Opus and Vorbis qualities behind the choices in
``pipeline/audio/encode.py``. Figures are ratios within one run; no thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.audio import MelRenderer, encode_audio  # noqa: E402
from pipeline.audio.encode import MP3_DELAY_SAMPLES, _run, mp3_rate  # noqa: E402
from pipeline.config import MelConfig  # noqa: E402
from pipeline.decode import open_audio  # noqa: E402
from pipeline.ffmpeg import ffmpeg_binary  # noqa: E402
from pipeline.fsutil import atomic_write_text  # noqa: E402
from pipeline.mel import log_mel, normalised_to_db  # noqa: E402

from bench_audio import real_clips, timed  # noqa: E402  (this folder: the same synthetic clips and timer)

CFG = MelConfig()  # the embedded default: 22.05 kHz, 5 s clips

# candidates for --sweep: name -> ffmpeg output arguments
OPUS = ["-ar", "48000", "-c:a", "libopus"]
SWEEP = {
    "mp3_48k": ["-c:a", "libmp3lame", "-b:a", "48k", "-f", "mp3"],
    "mp3_96k": ["-c:a", "libmp3lame", "-b:a", "96k", "-f", "mp3"],
    "opus_32k": [*OPUS, "-b:a", "32k", "-f", "ogg"],
    "opus_48k": [*OPUS, "-b:a", "48k", "-f", "ogg"],
    "opus_64k": [*OPUS, "-b:a", "64k", "-f", "ogg"],
    "vorbis_q2": ["-c:a", "libvorbis", "-q:a", "2", "-f", "ogg"],
    "vorbis_q3": ["-c:a", "libvorbis", "-q:a", "3", "-f", "ogg"],
    "vorbis_q5": ["-c:a", "libvorbis", "-q:a", "5", "-f", "ogg"],
}


def rendered_techno(folder: Path, seconds: float, cfg: MelConfig) -> tuple[np.ndarray, float]:
    """([clips, clip_samples] synthetic techno through the mel and back, the rendering's wall
    seconds: the scale for an encoder's cost)."""
    audio = real_clips(folder, max(1, int(round(seconds / cfg.clip_seconds))), cfg)  # [n, clip_samples]
    render_s, rendered = timed(lambda: MelRenderer(cfg).render(log_mel(audio, cfg)).numpy(), repeats=1)
    return rendered, render_s


def decode(path: Path, sr: int) -> np.ndarray:
    _, blocks = open_audio(Path(path), sr)
    return np.concatenate(list(blocks.blocks))


def mel_error_db(ref: np.ndarray, data: bytes, suffix: str, delay: int, tmp: Path) -> float:
    """Mean |log-mel dB of the decoded file - of ``ref``| over all cells; ``ref`` [clips, samples]."""
    path = tmp / f"x{suffix}"
    path.write_bytes(data)
    y = decode(path, CFG.sample_rate)[delay:delay + ref.size]
    y = np.pad(y, (0, ref.size - len(y))).reshape(ref.shape)
    a = normalised_to_db(log_mel(ref, CFG), CFG)
    b = normalised_to_db(log_mel(y.astype(np.float32), CFG), CFG)
    return round(float(np.mean(np.abs(a - b))), 3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="audio to encode (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="encodings per format, best kept (default: %(default)s)")
    p.add_argument("--sweep", action="store_true", help="also the candidate bitrates and Vorbis qualities")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    cfg, sr = CFG, CFG.sample_rate
    with tempfile.TemporaryDirectory(prefix="bench-formats-") as tmp:
        tmp = Path(tmp)
        clips, render_s = rendered_techno(tmp / "synth", args.seconds, cfg)  # [n, samples]
        seconds = clips.size / sr
        formats = {}
        for fmt in ("wav", "mp3", "ogg"):
            t, data = timed(lambda f=fmt: encode_audio(clips, sr, f, gap_seconds=0.0), args.repeats)
            delay = MP3_DELAY_SAMPLES if fmt == "mp3" else 0
            formats[fmt] = {"encode_s": round(t, 4), "bytes": len(data),
                            "kbps": round(len(data) * 8 / seconds / 1000, 1),
                            "mel_error_db": mel_error_db(clips, data, "." + fmt, delay, tmp)}
        wav = formats["wav"]
        for f in formats.values():
            f["size_ratio_to_wav"] = round(f["bytes"] / wav["bytes"], 4)
            f["encode_time_ratio_to_wav"] = round(f["encode_s"] / wav["encode_s"], 2)
            f["realtime_factor"] = round(seconds / f["encode_s"], 1)
            f["encode_time_ratio_to_render"] = round(f["encode_s"] / render_s, 3)
        doc = {"bench": "formats", "seconds": round(seconds, 2), "sample_rate": sr,
               "render_s": round(render_s, 3), "formats": formats}
        if args.sweep:
            pcm = np.clip(clips.reshape(-1), -1, 1).astype("<f4").tobytes()
            sweep = {}
            for name, out_args in SWEEP.items():
                if name.startswith("mp3"):
                    out_args = ["-ar", str(mp3_rate(sr)), *out_args]
                cmd = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-v", "error", "-f", "f32le", "-ar", str(sr),
                       "-ac", "1", "-i", "pipe:0", *out_args, "pipe:1"]
                data = _run(cmd, pcm, name, 120.0)
                delay = MP3_DELAY_SAMPLES if name.startswith("mp3") else 0
                sweep[name] = {"bytes": len(data), "kbps": round(len(data) * 8 / seconds / 1000, 1),
                               "size_ratio_to_wav": round(len(data) / wav["bytes"], 4),
                               "mel_error_db": mel_error_db(clips, data, ".mp3" if name.startswith("mp3") else ".ogg",
                                                            delay, tmp)}
            doc["sweep"] = sweep
        ver = subprocess.run([ffmpeg_binary(), "-version"], capture_output=True, text=True).stdout.split("\n")[0]
        doc["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "ffmpeg": ver}
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
