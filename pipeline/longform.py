"""Long-form pieces: minutes of continuous music from a generator of 5-second windows.

How a piece is made (``generate_long``), every step a pure function of the seed and
the settings (``pipeline.config.LongformConfig``):

1. **A path through latent space.** Anchor latents are drawn from the seed exactly as
   ``pipeline.generate.latents_for_seed`` draws clips (anchor i is clip i of the seed),
   or given explicitly. Window k sits at position ``u = k * step`` along the path and
   takes the spherical interpolation (slerp) between anchors ``floor(u)`` and
   ``floor(u) + 1``: ``step`` is how fast the music changes (1 = a new anchor every
   window, 0.25 = every fourth window, 0 = the same latent throughout). Explicit
   anchors are walked in order and the walk loops back to the first after the last.
2. **One generated window per step**, resized to the stored mel resolution.
3. **Beat alignment.** Window k+1 nominally starts ``overlap`` before window k ends;
   its start moves by up to ``max_shift`` frames (and never more than half a beat of
   window k's tempo, estimated from its onset envelope by
   ``pipeline.evaluate.features.beat_analysis``) to where the onset envelopes of the
   two windows correlate best over their overlap: kicks land on kicks.
4. **Crossfade in the mel domain**: over the overlap the two windows' mel *powers* are
   mixed with raised-cosine weights that sum to one (mixing dB values would dip the
   level wherever the two differ).
5. The piece is trimmed to the requested length; ``boundaries_s`` are the centres of the
   crossfades; ``path`` records everything needed to make the same piece again
   (``regenerate``) or a longer one (the same seed and settings give the same music up to
   the last join before the old end).

``render_long`` turns a long mel into audio in one pass of fast Griffin-Lim over
overlapping chunks (``chunk_seconds``): each chunk holds its first frames at the final
complex spectrum of the chunk before, so where they overlap both give the same samples
and the crossfade between them is inaudible; memory is bounded by the chunk, not the piece.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from pipeline.config import LongformConfig, MelConfig
from pipeline.errors import UserError
from pipeline.generate import latents_for_seed
from pipeline.mel import db_to_normalised, normalised_to_db, to_stored_resolution

PATH_VERSION = 1
TEMPO_SEARCH_BPM = (80.0, 200.0)  # as the evaluation's beat analysis searches
MIN_CLARITY = 0.3  # a window whose beat is less clear than this does not bound the shift by its tempo


@dataclass
class LongPiece:
    """A long-form piece: its mel, where the windows join, and the path that made it."""

    mel: np.ndarray  # [M, T] float32, normalised [-1, 1], stored resolution
    mel_config: MelConfig
    boundaries_s: list[float]  # centres of the crossfades, seconds from the start
    path: dict[str, Any]  # JSON-able: seed, step, anchors, windows (latent, start frame, shift), settings
    tempo_bpm: Optional[float] = None  # median tempo of the windows with a clear beat; None without one
    window_tempi: list[float] = field(default_factory=list)

    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

    @property
    def seconds(self) -> float:
        return frames_to_seconds(self.mel.shape[-1], self.mel_config)


# ----------------------------------------------------------------------------- time <-> frames


def seconds_to_frames(seconds: float, cfg: MelConfig) -> int:
    """Frames of a centred STFT covering ``seconds`` of audio (as ``MelConfig.n_frames`` counts)."""
    return 1 + int(round(seconds * cfg.sample_rate)) // cfg.hop_length


def frames_to_seconds(frames: int, cfg: MelConfig) -> float:
    return (frames - 1) * cfg.hop_length / cfg.sample_rate


def frame_seconds(cfg: MelConfig) -> float:
    return cfg.hop_length / cfg.sample_rate


# ----------------------------------------------------------------------------- the latent path


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between latents ``a`` and ``b`` [Z] (linear when they are parallel):
    keeps the norm a Gaussian latent is expected to have, where a straight line would shrink it."""
    a64, b64 = a.double(), b.double()
    cos = torch.dot(a64, b64) / (a64.norm() * b64.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(omega) < 1e-6:
        return ((1 - t) * a64 + t * b64).to(a.dtype)
    s = torch.sin(omega)
    return ((torch.sin((1 - t) * omega) / s) * a64 + (torch.sin(t * omega) / s) * b64).to(a.dtype)


def path_latents(n_windows: int, latent_dim: int, seed: int = 0, step: float = 0.25,
                 anchors: Optional[np.ndarray | Sequence[Sequence[float]]] = None) -> tuple[torch.Tensor, list[float]]:
    """(latents [n_windows, latent_dim], positions along the path) of the walk (module docstring).

    Window k's latent depends only on k, the seed (or anchors) and ``step``: a longer piece
    starts with the same windows."""
    if not 0.0 <= step <= 1.0 or not math.isfinite(step):
        raise UserError(f"step must be between 0 and 1, got {step}")
    positions = [k * float(step) for k in range(n_windows)]
    if anchors is not None:
        a = torch.as_tensor(np.asarray(anchors, dtype=np.float32))
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != latent_dim:
            raise UserError(f"anchors must be a list of latents of length {latent_dim}, got shape {tuple(a.shape)}")
        if not torch.isfinite(a).all():
            raise UserError("anchors must be finite numbers")
        count = a.shape[0]

        def anchor(i: int) -> torch.Tensor:
            return a[i % count]  # explicit anchors loop
    else:
        needed = int(math.floor(positions[-1])) + 2 if positions else 1
        a = latents_for_seed(seed, needed, latent_dim)  # anchor i is clip i of the seed

        def anchor(i: int) -> torch.Tensor:
            return a[i]
    rows = []
    for u in positions:
        i = int(math.floor(u + 1e-9))
        t = u - i
        rows.append(anchor(i) if t < 1e-9 else slerp(anchor(i), anchor(i + 1), t))
    z = torch.stack(rows) if rows else torch.zeros(0, latent_dim)
    return z.float(), positions


# ----------------------------------------------------------------------------- alignment


def onset(mel_db: np.ndarray) -> np.ndarray:
    """Spectral flux of a dB mel [M, T] -> [T - 1] (as ``pipeline.evaluate.features.onset_envelope``)."""
    return np.clip(np.diff(mel_db, axis=-1), 0.0, None).mean(axis=0)


def best_shift(tail_env: np.ndarray, head_env: np.ndarray, max_shift: int) -> int:
    """Where the next window should start, relative to its nominal start, in [-max_shift, max_shift].

    ``tail_env`` is the onset envelope of the last ``overlap + max_shift`` frames of the
    piece so far, ``head_env`` that of the next window's first frames. Shift s places the
    window's first frame at ``tail[max_shift + s]``; the score is the Pearson correlation
    of the two envelopes where they then overlap. Ties go to the smallest move."""
    n = len(tail_env)
    best, best_score = 0, -np.inf
    for s in sorted(range(-max_shift, max_shift + 1), key=abs):
        start = max_shift + s
        length = min(n - start, len(head_env))
        if length < 4:
            continue
        a = tail_env[start:start + length] - tail_env[start:start + length].mean()
        b = head_env[:length] - head_env[:length].mean()
        den = math.sqrt(float(a @ a) * float(b @ b))
        score = float(a @ b) / den if den > 1e-12 else 0.0
        if score > best_score + 1e-9:
            best, best_score = s, score
    return best


def _tempo(mel_norm: np.ndarray, cfg: MelConfig) -> tuple[float, float]:
    from pipeline.evaluate.features import beat_analysis

    tempo, clarity = beat_analysis(mel_norm[None], cfg, TEMPO_SEARCH_BPM)
    return float(tempo[0]), float(clarity[0])


# ----------------------------------------------------------------------------- joining windows


def _frames(settings: LongformConfig, cfg: MelConfig) -> tuple[int, int]:
    fs = frame_seconds(cfg)
    overlap = max(2, int(round(settings.overlap_seconds / fs)))
    shift = int(round(settings.max_shift_seconds / fs))
    width = cfg.n_frames
    if 2 * (overlap + shift) >= width:
        raise UserError(f"longform.overlap_seconds + max_shift_seconds ({settings.overlap_seconds} + "
                        f"{settings.max_shift_seconds}) must be under half a window ({cfg.clip_seconds / 2} s)")
    return overlap, min(shift, overlap - 2)


def join_windows(windows: np.ndarray, cfg: MelConfig, settings: LongformConfig, total_frames: Optional[int] = None,
                 starts: Optional[Sequence[int]] = None) -> tuple[np.ndarray, list[int], list[int], list[float]]:
    """Overlap, beat-align and crossfade windows [K, M, W] (normalised, stored resolution).

    Returns (long mel [M, T] normalised, start frame of each window used, its shift from
    the nominal start, its tempo). With ``starts`` the windows go exactly there (a piece
    made again from its path). Stops once ``total_frames`` are covered."""
    k_all, m, width = windows.shape
    overlap, max_shift = _frames(settings, cfg)
    cap = total_frames if total_frames is not None else k_all * width
    power = np.zeros((m, cap + width), np.float64)  # mixed mel power; room for the last window
    used_starts: list[int] = []
    shifts: list[int] = []
    tempi: list[float] = []
    end = 0
    for k in range(k_all):
        db = normalised_to_db(windows[k].astype(np.float64), cfg)  # [M, W]
        tempo, clarity = _tempo(windows[k], cfg)
        tempi.append(tempo if clarity >= MIN_CLARITY else float("nan"))
        if k == 0:
            start, shift = 0, 0
        elif starts is not None:
            start = int(starts[k])
            if not end - width < start <= end:  # a window must touch the last one and not replace it
                raise UserError(f"long-form path: window {k} starts at frame {start}, which does not join the "
                                f"window before it (that ends at frame {end})")
            shift = start - (end - overlap)
        else:
            bound = max_shift
            previous_tempo = tempi[k - 1]
            if not math.isnan(previous_tempo):  # never more than half a beat: a whole beat away is as aligned
                bound = min(bound, int(60.0 / previous_tempo / frame_seconds(cfg) / 2))
            tail_from = end - overlap - bound
            # envelope entry i is the rise into frame i + 1 of its slice: both slices start at
            # the frame the window would start at with the largest backward shift
            tail = onset(normalised_to_db(_db_to_norm(power[:, tail_from:end], cfg), cfg))
            head = onset(db[:, :overlap + bound])
            shift = best_shift(tail, head, bound)
            start = end - overlap + shift
        fade = end - start  # frames shared with the piece so far
        mix = 10.0 ** (db / 10.0)  # [M, W] power relative to the window's peak
        if fade > 0:
            # raised cosine 0 -> 1 over the shared frames (excluding both ends), powers sum to one
            w = 0.5 - 0.5 * np.cos(np.pi * (np.arange(fade) + 1) / (fade + 1))
            power[:, start:end] = power[:, start:end] * (1.0 - w) + mix[:, :fade] * w
            power[:, end:start + width] = mix[:, fade:]
        else:
            power[:, start:start + width] = mix
        end = start + width
        used_starts.append(start)
        shifts.append(shift)
        if total_frames is not None and end >= total_frames:
            break
    length = min(end, cap)
    return _db_to_norm(power[:, :length], cfg).astype(np.float32), used_starts, shifts, tempi


def _db_to_norm(power: np.ndarray, cfg: MelConfig) -> np.ndarray:
    db = 10.0 * np.log10(np.maximum(power, 1e-30))
    return db_to_normalised(np.clip(db, -cfg.top_db, 0.0), cfg)


def windows_needed(total_frames: int, cfg: MelConfig, settings: LongformConfig) -> int:
    """How many windows cover ``total_frames`` even if every alignment moves the window back."""
    overlap, shift = _frames(settings, cfg)
    advance = cfg.n_frames - overlap - shift
    return 1 + max(0, math.ceil((total_frames - cfg.n_frames) / advance))


# Windows are generated in batches of exactly this many latents, the last one padded:
# oneDNN's convolutions round differently at other batch sizes (odd ones, on this CPU),
# so a window's bits would otherwise depend on how many windows its piece has, and a
# longer piece on the same seed would not start exactly as the shorter one.
WINDOW_BATCH = 16


@torch.no_grad()
def _windows(generator: torch.nn.Module, z: torch.Tensor, cfg: MelConfig, device: str | torch.device) -> np.ndarray:
    generator.eval()
    out = []
    for part in z.split(WINDOW_BATCH):
        n = len(part)
        padded = torch.cat([part, part.new_zeros(WINDOW_BATCH - n, part.shape[1])]) if n < WINDOW_BATCH else part
        x = generator(padded.to(device, torch.float32))[:n, 0].float().cpu()  # [B, R, R]
        out.append(to_stored_resolution(x, cfg).numpy())  # [B, M, W]
    return np.concatenate(out) if out else np.zeros((0, *cfg.shape), np.float32)


def check_seconds(seconds: float, settings: LongformConfig, name: str = "--seconds") -> float:
    """``seconds`` as a float within the settings' bounds; UserError naming ``name`` otherwise."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a number of seconds, got {seconds!r}") from None
    if not math.isfinite(value) or not settings.min_seconds <= value <= settings.max_seconds:
        raise UserError(f"{name} must be between {settings.min_seconds:g} and {settings.max_seconds:g} seconds, "
                        f"got {seconds}")
    return value


def generate_long(generator: torch.nn.Module, meta: dict[str, Any], seconds: float, seed: int = 0,
                  step: Optional[float] = None, anchors: Optional[np.ndarray | Sequence[Sequence[float]]] = None,
                  device: str | torch.device = "cpu", settings: Optional[LongformConfig] = None) -> LongPiece:
    """One continuous piece of ``seconds`` from ``generator`` (with ``meta`` as returned by
    ``pipeline.checkpoint.load_generator``): see the module docstring. Deterministic: the
    same seed (or anchors), step and settings give the same piece."""
    settings = settings or LongformConfig()
    step = settings.step if step is None else float(step)
    seconds = check_seconds(seconds, settings)
    if not 0 <= int(seed) <= 2**63 - 1:
        raise UserError(f"seed must be between 0 and 2^63-1, got {seed}")
    cfg = MelConfig.from_dict(meta["mel_config"])
    latent_dim = int(meta["latent_dim"])
    total = seconds_to_frames(seconds, cfg)
    n = windows_needed(total, cfg, settings)
    z, positions = path_latents(n, latent_dim, int(seed), step, anchors)
    windows = _windows(generator, z, cfg, device)
    mel, starts, shifts, tempi = join_windows(windows, cfg, settings, total)
    used = len(starts)
    path = {
        "version": PATH_VERSION,
        "seed": int(seed),
        "step": step,
        "seconds": seconds,
        "anchors": None if anchors is None else np.asarray(anchors, dtype=np.float32).tolist(),
        "latent_dim": latent_dim,
        "model": meta.get("model"),
        "run_id": meta.get("run_id"),
        "settings": settings.model_dump(mode="json"),
        "mel_config": cfg.to_dict(),
        "windows": [{"index": k, "position": positions[k], "start_frame": starts[k], "shift_frames": shifts[k],
                     "tempo_bpm": None if math.isnan(tempi[k]) else tempi[k], "latent": z[k].tolist()}
                    for k in range(used)],
    }
    return _piece(mel, cfg, starts, tempi[:used], path)


def _piece(mel: np.ndarray, cfg: MelConfig, starts: list[int], tempi: list[float], path: dict) -> LongPiece:
    bounds = []
    for k in range(1, len(starts)):
        shared_end = starts[k - 1] + cfg.n_frames
        centre = (starts[k] + shared_end) / 2.0
        if centre < mel.shape[-1] - 1:
            bounds.append(round(centre * frame_seconds(cfg), 4))
    clear = [t for t in tempi if not math.isnan(t)]
    path["boundaries_s"] = bounds
    return LongPiece(mel=mel, mel_config=cfg, boundaries_s=bounds, path=path,
                     tempo_bpm=float(np.median(clear)) if clear else None, window_tempi=list(tempi))


def piece_from_windows(windows: np.ndarray, cfg: MelConfig, settings: Optional[LongformConfig] = None,
                       total_frames: Optional[int] = None) -> LongPiece:
    """Windows [K, M, W] from anywhere (consecutive clips of a real track, for a reference)
    joined exactly as ``generate_long`` joins generated ones."""
    settings = settings or LongformConfig()
    mel, starts, shifts, tempi = join_windows(np.asarray(windows, dtype=np.float32), cfg, settings, total_frames)
    path = {"version": PATH_VERSION, "settings": settings.model_dump(mode="json"), "mel_config": cfg.to_dict(),
            "windows": [{"index": k, "start_frame": starts[k], "shift_frames": shifts[k]} for k in range(len(starts))]}
    return _piece(mel, cfg, starts, tempi[:len(starts)], path)


def regenerate(generator: torch.nn.Module, meta: dict[str, Any], path: dict[str, Any],
               device: str | torch.device = "cpu") -> LongPiece:
    """The piece a saved ``path`` (``LongPiece.path``, its ``.json``) describes, made again from
    its window latents and start frames: the same mel as the piece it was saved from."""
    if not isinstance(path, dict) or path.get("version") != PATH_VERSION or not isinstance(path.get("windows"), list):
        raise UserError(f"not a long-form path (version {PATH_VERSION} with windows)")
    cfg = MelConfig.from_dict(meta["mel_config"])
    if MelConfig.from_dict(path.get("mel_config", {})) != cfg:
        raise UserError("the path was made with another mel config than this generator's")
    settings = LongformConfig.model_validate(path.get("settings", {}))
    try:
        z = torch.tensor([w["latent"] for w in path["windows"]], dtype=torch.float32)
        starts = [int(w["start_frame"]) for w in path["windows"]]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"long-form path windows: each needs a latent of length {meta['latent_dim']} and a "
                        f"start_frame ({e})") from None
    if z.ndim != 2 or z.shape[1] != int(meta["latent_dim"]):
        raise UserError(f"long-form path latents have shape {tuple(z.shape)}; the model's latent size is "
                        f"{meta['latent_dim']}")
    total = seconds_to_frames(float(path["seconds"]), cfg)
    windows = _windows(generator, z, cfg, device)
    mel, starts, _, tempi = join_windows(windows, cfg, settings, total, starts=starts)
    return _piece(mel, cfg, starts, tempi, dict(path))


# ----------------------------------------------------------------------------- rendering


@torch.no_grad()
def render_long(piece_or_mel: LongPiece | np.ndarray | torch.Tensor, mel_config: Optional[MelConfig] = None,
                n_iter: int = 32, seed: int = 0, mel_inverse: str = "nnls", nnls_steps: int = 10,
                settings: Optional[LongformConfig] = None, chunk_frames: Optional[int] = None,
                overlap_frames: Optional[int] = None, device: str | torch.device = "cpu",
                peak: float = 0.89) -> np.ndarray:
    """A long normalised mel [M, T] (stored resolution) -> float32 audio [(T - 1) * hop],
    peak-normalised to ``peak``, by fast Griffin-Lim over overlapping chunks.

    Chunk c+1 starts ``overlap_frames`` before chunk c ends, starts those frames at chunk
    c's final complex spectrum and holds all but the last ``n_fft / hop`` of them there in
    every iteration (chunk c's own last frames are its least consistent: holding them
    would put chunk c's edge inside chunk c+1), so both chunks give the same samples over
    the held frames (away from the outermost ``n_fft / hop / 2``, which feel frames outside
    them); the two are crossfaded over that interior. Memory is bounded by ``chunk_frames``
    (default ``settings.chunk_seconds``)."""
    from pipeline.audio import MelRenderer

    mel = piece_or_mel.mel if isinstance(piece_or_mel, LongPiece) else piece_or_mel
    chosen = mel_config or (piece_or_mel.mel_config if isinstance(piece_or_mel, LongPiece) else None)
    if chosen is None:
        raise ValueError("render_long needs the mel config of a bare mel")
    cfg = chosen
    settings = settings or LongformConfig()
    x = torch.as_tensor(np.asarray(mel, dtype=np.float32) if not torch.is_tensor(mel) else mel).float()
    if x.ndim != 2 or x.shape[0] != cfg.n_mels or x.shape[1] < 2:
        raise ValueError(f"a long mel is [n_mels={cfg.n_mels}, T >= 2], got shape {tuple(x.shape)}")
    hop = cfg.hop_length
    total = x.shape[1]
    chunk = chunk_frames or seconds_to_frames(settings.chunk_seconds, cfg)
    overlap = overlap_frames or max(1, int(round(settings.chunk_overlap_seconds / frame_seconds(cfg))))
    margin = -(-cfg.n_fft // (2 * hop))  # frames at a chunk's edge that feel frames outside it
    edge = 2 * margin  # the previous chunk's last frames: a start for the next, not held
    overlap = max(overlap, edge + 2 * margin + 2)
    hold = overlap - edge
    if chunk <= 2 * overlap:
        raise ValueError(f"chunk of {chunk} frames must be over twice its overlap ({overlap})")
    renderer = MelRenderer(cfg, n_iter=n_iter, mel_inverse=mel_inverse, nnls_steps=nnls_steps, device=device,
                           seed=seed)
    generator = torch.Generator().manual_seed(int(seed))
    out = np.zeros((total - 1) * hop, np.float32)
    keep = None
    start = 0
    fade_from = 0  # sample where the previous chunk's audio starts fading out
    while True:
        stop = min(start + chunk, total)
        if total - stop < overlap + 2 * margin + 1 and stop < total:
            stop = total  # no sliver of a last chunk
        mag = renderer.stored_magnitude(x[None, :, start:stop])  # [1, F, n]
        length = (stop - start - 1) * hop
        init = None if keep is None else _continued(keep[..., :hold], mag, cfg)
        audio_t, spec = renderer.griffin_lim_spec(mag, generator, keep=init, length=length, hold=hold)
        audio = audio_t[0].cpu().numpy()
        offset = start * hop
        if keep is None:
            out[offset:offset + length] = audio
        else:
            # both chunks agree inside the held frames: crossfade over that interior
            a, b = fade_from, (start + hold - margin) * hop
            w = (0.5 - 0.5 * np.cos(np.pi * (np.arange(b - a) + 0.5) / (b - a))).astype(np.float32)
            out[a:b] = out[a:b] * (1.0 - w) + audio[a - offset:b - offset] * w
            out[b:offset + length] = audio[b - offset:]
        if stop >= total:
            break
        next_start = stop - overlap
        keep = spec[..., next_start - start:].clone()  # [1, F, overlap]
        fade_from = (next_start + margin) * hop
        start = next_start
    top = float(np.abs(out).max()) if out.size else 0.0
    if top > 1e-9:
        out *= peak / top
    return out


def _continued(held: torch.Tensor, mag: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """A chunk's starting spectrum [B, F, n]: the ``held`` frames [B, F, K] of the chunk before,
    then the chunk's magnitude with each bin's phase running on at the rate it ran over the
    last two held frames (a phase vocoder's extrapolation). Random phases next to held ones
    leave a seam that a few Griffin-Lim iterations do not close; a continued phase does not."""
    k, n = held.shape[-1], mag.shape[-1]
    bins = torch.arange(mag.shape[-2], dtype=torch.float64, device=mag.device)[:, None]  # [F, 1]
    nominal = 2 * math.pi * bins * cfg.hop_length / cfg.n_fft  # a bin's centre frequency, radians per hop
    last, before = torch.angle(held[..., k - 1:k]).double(), torch.angle(held[..., k - 2:k - 1]).double()
    deviation = torch.remainder(last - before - nominal + math.pi, 2 * math.pi) - math.pi
    steps = torch.arange(1, n - k + 1, dtype=torch.float64, device=mag.device)  # [n - k]
    phase = last + (nominal + deviation) * steps  # [B, F, n - k]
    return torch.cat([held, torch.polar(mag[..., k:], phase.float())], dim=-1)


def path_json(piece: LongPiece) -> str:
    """The piece's path as indented JSON (what ``generate --seconds`` writes beside the audio)."""
    import json

    return json.dumps(piece.path, indent=1) + "\n"
