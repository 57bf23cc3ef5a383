"""Write synthetic techno tracks: the embedded default data and the test fixture.

Each track has its own tempo (120-140 BPM), a four-on-the-floor kick, off-beat hats,
claps or snares on the backbeat, a bass line and synth stabs, arranged in 8-bar
sections where elements drop in and out. Timbres, patterns, key and arrangement vary
per track so a GAN has something to learn and metrics something to tell apart.
Deterministic: track ``i`` of seed ``k`` is always the same, whatever the track count.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from pydantic import ValidationError
from scipy import signal
from tqdm import tqdm

from pipeline.config import SynthConfig
from pipeline.errors import UserError
from pipeline.fsutil import atomic_path, atomic_write_text, ensure_folder

log = logging.getLogger(__name__)

FORMATS = ("wav", "mp3", "flac", "ogg")
MINOR_SCALE = np.array([0, 2, 3, 5, 7, 8, 10])


@dataclass(frozen=True)
class TrackInfo:
    file: str
    seed: int
    index: int
    bpm: float
    root_midi: int
    seconds: float
    sample_rate: int


def _midi_hz(m: np.ndarray | float) -> np.ndarray:
    return np.asarray(440.0 * 2.0 ** ((np.asarray(m) - 69) / 12.0))


def _env(n: int, sr: int, decay_s: float, attack_s: float = 0.001) -> np.ndarray:
    t = np.arange(n) / sr
    env = np.exp(-t / max(decay_s, 1e-4))
    a = max(1, int(attack_s * sr))
    env[:a] *= np.linspace(0.0, 1.0, a)
    return env.astype(np.float32)


def _kick(rng: np.random.Generator, sr: int) -> np.ndarray:
    n = int(0.45 * sr)
    t = np.arange(n) / sr
    f_hi, f_lo = rng.uniform(110, 190), rng.uniform(42, 58)
    sweep = rng.uniform(0.025, 0.06)
    freq = f_lo + (f_hi - f_lo) * np.exp(-t / sweep)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    body = np.sin(phase) * _env(n, sr, rng.uniform(0.15, 0.35))
    click = rng.standard_normal(n) * _env(n, sr, 0.003) * rng.uniform(0.1, 0.4)
    return np.tanh(rng.uniform(1.0, 2.5) * (body + click)).astype(np.float32)


def _hat(rng: np.random.Generator, sr: int, open_: bool) -> np.ndarray:
    n = int((0.25 if open_ else 0.08) * sr)
    cutoff = min(rng.uniform(6000, 9500), 0.45 * sr)
    sos = signal.butter(4, cutoff, btype="highpass", fs=sr, output="sos")
    noise = signal.sosfilt(sos, rng.standard_normal(n))
    decay = rng.uniform(0.06, 0.15) if open_ else rng.uniform(0.012, 0.035)
    return (noise * _env(n, sr, decay) * 0.5).astype(np.float32)


def _clap_or_snare(rng: np.random.Generator, sr: int, clap: bool) -> np.ndarray:
    n = int(0.3 * sr)
    lo, hi = (900, 2500) if clap else (180, 5000)
    sos = signal.butter(2, [lo, min(hi, 0.45 * sr)], btype="bandpass", fs=sr, output="sos")
    noise = signal.sosfilt(sos, rng.standard_normal(n))
    env = _env(n, sr, rng.uniform(0.05, 0.12))
    if clap:  # a clap is a few quick bursts before the tail
        for k in range(1, 3):
            d = int(k * 0.011 * sr)
            env[d:] += _env(n - d, sr, 0.01) * 0.8
    out = noise * env
    if not clap:
        t = np.arange(n) / sr
        out += 0.5 * np.sin(2 * np.pi * rng.uniform(160, 240) * t) * _env(n, sr, 0.05)
    return (out / (np.abs(out).max() + 1e-9) * 0.6).astype(np.float32)


def _tone(freqs: np.ndarray, n: int, sr: int, shape: str, rng: np.random.Generator) -> np.ndarray:
    """Sum of oscillators at ``freqs`` (a chord or one note, slightly detuned)."""
    t = np.arange(n) / sr
    out = np.zeros(n)
    for f in np.atleast_1d(freqs):
        for detune in (1.0, 1.0 + rng.uniform(0.002, 0.008)):
            ph = (t * f * detune + rng.uniform()) % 1.0
            if shape == "saw":
                out += 2 * ph - 1
            elif shape == "square":
                out += np.sign(ph - 0.5)
            else:
                out += np.sin(2 * np.pi * ph)
    return (out / (2 * len(np.atleast_1d(freqs)))).astype(np.float32)


def _place(track: np.ndarray, sound: np.ndarray, start: int, gain: float) -> None:
    end = min(len(track), start + len(sound))
    if start < end:
        track[start:end] += gain * sound[: end - start]


def render_track(rng: np.random.Generator, seconds: float, sr: int) -> tuple[np.ndarray, dict]:
    """One synthetic techno track: returns (stereo audio [2, N] float32 in [-1, 1], info)."""
    n = int(seconds * sr)
    bpm = float(rng.uniform(120.0, 140.0))
    step = 60.0 / bpm / 4.0  # one 16th note in seconds
    n_steps = int(seconds / step)
    root = int(rng.integers(33, 45))  # A1..G#2: bass register

    kick, hat, ohat = _kick(rng, sr), _hat(rng, sr, False), _hat(rng, sr, True)
    clap = _clap_or_snare(rng, sr, clap=bool(rng.integers(2)))
    bass_shape = ["saw", "square", "sine"][int(rng.integers(3))]
    stab_shape = ["saw", "square"][int(rng.integers(2))]

    # 16-step patterns, fixed per track so the track has an identity
    bass_on = rng.random(16) < rng.uniform(0.3, 0.7)
    bass_on[[2, 6, 10, 14]] |= True  # off-beat bass is the techno staple
    bass_notes = rng.choice(MINOR_SCALE[:5], size=16) + root
    bass_len = rng.uniform(0.6, 0.95) * step
    stab_on = rng.random(16) < rng.uniform(0.1, 0.3)
    chord = root + 24 + np.array([0, 3, 7, 10][: int(rng.integers(3, 5))])
    hat16 = rng.random() < 0.5  # 16th-note hats on top of the off-beat ones

    # arrangement: 8-bar sections, each with its own set of active elements
    section_steps = 16 * 8
    n_sections = max(1, -(-n_steps // section_steps))
    active = []
    for s in range(n_sections):
        breakdown = s > 0 and rng.random() < 0.15
        active.append({
            "kick": not breakdown,
            "hat": rng.random() < 0.9,
            "clap": rng.random() < 0.75,
            "bass": rng.random() < 0.85,
            "stab": breakdown or rng.random() < 0.6,
        })

    drums = np.zeros(n, np.float32)
    hats = np.zeros(n, np.float32)
    bass = np.zeros(n, np.float32)
    stabs = np.zeros(n, np.float32)
    bass_note_cache: dict[int, np.ndarray] = {}
    nb = int(bass_len * sr)
    stab_sound = _tone(_midi_hz(chord), int(0.35 * sr), sr, stab_shape, rng) * _env(int(0.35 * sr), sr, rng.uniform(0.06, 0.2))
    for i in range(n_steps):
        at = int(i * step * sr)
        a = active[i // section_steps]
        pos = i % 16
        vel = 0.85 + 0.15 * rng.random()  # humanised velocity
        if a["kick"] and pos % 4 == 0:
            _place(drums, kick, at, 0.9)
        if a["hat"] and pos % 4 == 2:
            _place(hats, ohat if pos == 14 and i % 64 == 62 else hat, at, 0.35 * vel)
        elif a["hat"] and hat16 and pos % 2 == 1:
            _place(hats, hat, at, 0.12 * vel)
        if a["clap"] and pos in (4, 12):
            _place(drums, clap, at, 0.5 * vel)
        if a["bass"] and bass_on[pos]:
            note = int(bass_notes[pos])
            if note not in bass_note_cache:
                bass_note_cache[note] = _tone(_midi_hz(note), nb, sr, bass_shape, rng) * _env(nb, sr, bass_len * 0.6, 0.003)
            _place(bass, bass_note_cache[note], at, 0.45 * vel)
        if a["stab"] and stab_on[pos]:
            _place(stabs, stab_sound, at, 0.3 * vel)

    # a slowly moving low-pass on bass and stabs: the filter sweep of every techno track
    lfo_period = rng.uniform(8, 32) * 4 * 60.0 / bpm
    for part, lo, hi in ((bass, 200, 1500), (stabs, 600, 6000)):
        sos_lo = signal.butter(2, min(lo, 0.45 * sr), fs=sr, output="sos")
        sos_hi = signal.butter(2, min(hi, 0.45 * sr), fs=sr, output="sos")
        dark, bright = signal.sosfilt(sos_lo, part), signal.sosfilt(sos_hi, part)
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * np.arange(n) / sr / lfo_period + rng.uniform(0, 2 * np.pi))
        part[:] = (mix * bright + (1 - mix) * dark).astype(np.float32)

    pan_hat, pan_stab = rng.uniform(-0.4, 0.4), rng.uniform(-0.5, 0.5)
    left = drums + bass + hats * (1 - pan_hat) + stabs * (1 - pan_stab)
    right = drums + bass + hats * (1 + pan_hat) + stabs * (1 + pan_stab)
    stereo = np.tanh(1.2 * np.stack([left, right]))  # gentle bus saturation
    stereo *= 0.89 / (np.abs(stereo).max() + 1e-9)  # peak at -1 dBFS
    return stereo.astype(np.float32), {"bpm": bpm, "root_midi": root}


def write_audio(path: Path, audio: np.ndarray, sr: int, fmt: str) -> None:
    """Write [C, N] float audio atomically as ``fmt`` (WAV via soundfile, others via pydub/ffmpeg)."""
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").T  # [N, C] interleaved
    with atomic_path(path) as tmp:
        if fmt == "wav":
            sf.write(tmp, pcm, sr, format="WAV", subtype="PCM_16")
        else:
            from pydub import AudioSegment

            seg = AudioSegment(pcm.tobytes(), frame_rate=sr, sample_width=2, channels=pcm.shape[1])
            kwargs = {"bitrate": "192k"} if fmt in ("mp3", "ogg") else {}
            seg.export(tmp, format=fmt, **kwargs)


def synthesize(
    out_dir: str | Path,
    tracks: int = 32,
    seconds: float = 90.0,
    seed: int = 0,
    fmt: str = "wav",
    sample_rate: int = 44100,
    channels: int = 2,
    progress: bool = True,
) -> list[Path]:
    """Write ``tracks`` synthetic techno tracks into ``out_dir`` plus ``tracks.json``
    (each track's tempo and key). Tracks already there are kept, so re-running is free."""
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    # the one set of bounds: SynthConfig's, as a YAML preset gets them
    try:
        SynthConfig(tracks=tracks, seconds=seconds, seed=seed, format=fmt, sample_rate=sample_rate, channels=channels)
    except ValidationError as e:
        raise UserError("synth: " + "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})"
                                              for err in e.errors())) from None
    out = ensure_folder(out_dir)
    infos: list[TrackInfo] = []
    paths: list[Path] = []
    for i in tqdm(range(tracks), desc="synth", unit="track", disable=not progress):
        path = out / f"techno-s{seed}-{i:04d}.{fmt}"
        if path.exists():
            # tempo and key are render_track's first two draws: no need to render again
            r = np.random.default_rng([seed, i])
            info = {"bpm": float(r.uniform(120.0, 140.0)), "root_midi": int(r.integers(33, 45))}
        else:
            audio, info = render_track(np.random.default_rng([seed, i]), seconds, sample_rate)
            if channels == 1:
                audio = audio.mean(axis=0, keepdims=True)
            write_audio(path, audio, sample_rate, fmt)
        infos.append(TrackInfo(path.name, seed, i, float(info["bpm"]), int(info["root_midi"]), seconds, sample_rate))
        paths.append(path)
    atomic_write_text(out / "tracks.json", json.dumps([asdict(t) for t in infos], indent=1) + "\n")
    return paths


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tracks", type=int, default=32, help="number of tracks (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=90.0, help="seconds per track (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--format", choices=FORMATS, default="wav", help="audio format (default: %(default)s)")
    p.add_argument("--sample-rate", type=int, default=44100, help="Hz (default: %(default)s)")
    p.add_argument("--channels", type=int, choices=(1, 2), default=2, help="(default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    paths = synthesize(args.out, args.tracks, args.seconds, args.seed, args.format, args.sample_rate, args.channels)
    print(f"wrote {len(paths)} tracks to {args.out} (tempos in {Path(args.out) / 'tracks.json'})")
    return 0
