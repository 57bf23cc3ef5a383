"""Generate mel spectrograms (and audio) from a trained generator, without any server:
``technogan generate --checkpoint PATH --n 8 --format png,wav,npy --out DIR``.

The generator comes from a checkpoint file, a training run (``--run-id``, its latest
checkpoint) or the registry (``--alias champion``). Files written (atomically):

    mels.npy        float32 [N, R, R], the generator's output in [-1, 1] (model resolution)
    mels.png        the grid, at stored resolution, with time/frequency axes and dB
    clip-000.wav    each clip rendered to audio (fast Griffin-Lim, pipeline.audio)
    all.wav         the clips one after another with half a second between them
    clip-000.mp3    the same audio as MP3 (``mp3``) or Ogg Vorbis (``ogg``): per clip and
    all.mp3         all clips, ~5.5x (mp3) / ~7x (ogg) smaller than the WAV (pipeline.audio.encode)
    generate.json   what was generated: checkpoint, seed, shapes, mel config

The audio is rendered once whatever the number of audio formats asked for.

With ``--seconds S`` it makes one continuous long-form piece instead
(``pipeline.longform``: a latent walk of beat-aligned, crossfaded windows):

    piece.wav       the piece, rendered in one chunked pass (and/or piece.mp3, piece.ogg)
    piece.png       its spectrogram in rows, time in seconds, window joins marked
    piece.npy       float32 [n_mels, frames], its mel in [-1, 1] at stored resolution
    piece.json      the latent path: seed, step, anchors, each window's latent and start;
                    ``--from-path piece.json`` makes the same piece again (or, with a
                    larger ``--seconds``, a longer one that starts the same way)
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from pipeline.audio.encode import AUDIO_FORMATS
from pipeline.config import EvaluateConfig, LongformConfig, MelConfig, add_config_argument, load_config
from pipeline.errors import UserError
from pipeline.fsutil import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from pipeline.longform import LongPiece

log = logging.getLogger(__name__)

FORMATS = ("png", *AUDIO_FORMATS, "npy")  # AUDIO_FORMATS: wav, mp3, ogg (rendered once, encoded per format)
DEFAULT_FORMATS = ("png", "wav", "npy")
MAX_CLIPS = 10_000  # one call's latents and mels stay in memory: bounded, never 40 GB by a typo
MAX_MEL_BYTES = 1 << 30  # and at most 1 GiB of mels [N, R, R] float32 at the model's resolution
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed takes


@dataclass
class Generated:
    mels: np.ndarray  # [N, R, R]
    mel_config: MelConfig
    meta: dict
    files: list[Path]


def latents_for_seed(seed: int, n: int, latent_dim: int) -> torch.Tensor:
    """The latents a seed stands for: ``n`` standard normal rows [n, latent_dim].

    The one definition used by ``generate``, ``evaluate`` and the server, so a seed
    means the same clips everywhere. Drawn from a private generator: the answer
    depends on the seed alone, and row i is the same for any n > i.
    """
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(n, latent_dim, generator=gen)  # [n, latent_dim]


@torch.no_grad()
def generate_mels(generator: torch.nn.Module, n: int, latent_dim: int, batch_size: int = 256, seed: int = 0,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """``n`` clips [n, R, R] from the latents of ``seed``, forwarded ``batch_size`` at a time."""
    z_all = latents_for_seed(seed, n, latent_dim)  # [n, Z]: a few hundred KB even for thousands of clips
    generator.eval()
    out = [generator(z.to(device))[:, 0].float().cpu().numpy()  # [B, 1, R, R] -> [B, R, R]
           for z in z_all.split(batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0, 0), np.float32)


def parse_formats(text: str) -> list[str]:
    """"png,wav" -> ["png", "wav"]; UserError naming an unknown format."""
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--format: unknown {', '.join(bad) or 'empty'}; choose from {', '.join(FORMATS)}")
    return formats


def generate_files(checkpoint: str | Path, out: str | Path, n: int = 8,
                   formats: list[str] | tuple[str, ...] = DEFAULT_FORMATS,
                   seed: int = 0, render_iterations: int = 32, mel_inverse: str = "nnls",
                   gap_seconds: float = 0.5, prefix: str = "") -> Generated:
    """Draw ``n`` clips from the generator at ``checkpoint`` with latents of ``seed`` and
    write the requested ``formats`` into ``out``."""
    from pipeline.audio import EXTENSIONS, EncodeError, MelRenderer, write_audio
    from pipeline.checkpoint import load_generator
    from pipeline.plot import plot_mel_grid

    if not 1 <= n <= MAX_CLIPS:
        raise UserError(f"--n must be between 1 and {MAX_CLIPS}, got {n}")
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    if render_iterations < 0:
        raise UserError(f"--iterations must be 0 or more, got {render_iterations}")
    generator, meta = load_generator(checkpoint)  # UserError naming the file for any bad meta or weights
    size = n * int(meta["resolution"]) ** 2 * 4
    if size > MAX_MEL_BYTES:
        raise UserError(f"--n {n} at resolution {meta['resolution']} would hold {size / 2**30:.1f} GiB of mels; "
                        f"ask for at most {MAX_MEL_BYTES // (int(meta['resolution']) ** 2 * 4)} per call")
    mel_config = MelConfig.from_dict(meta["mel_config"])
    mels = generate_mels(generator, n, int(meta["latent_dim"]), batch_size=256, seed=seed)  # [N, R, R]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if "npy" in formats:
        path = out / f"{prefix}mels.npy"
        buf = io.BytesIO()
        np.save(buf, mels.astype(np.float32))
        atomic_write_bytes(path, buf.getvalue())
        files.append(path)
    if "png" in formats:
        path = out / f"{prefix}mels.png"
        plot_mel_grid(mels, mel_config, path, title=f"{meta.get('model')} (seed {seed})")
        files.append(path)
    audio_formats = [f for f in AUDIO_FORMATS if f in formats]
    if audio_formats:
        renderer = MelRenderer(mel_config, n_iter=render_iterations, mel_inverse=mel_inverse, seed=seed)
        audio = renderer.render(torch.from_numpy(mels))  # [N, samples], once for every audio format
        for fmt in audio_formats:
            ext = EXTENSIONS[fmt]
            try:
                for i, clip in enumerate(audio):
                    path = out / f"{prefix}clip-{i:03d}{ext}"
                    write_audio(path, clip, mel_config.sample_rate, fmt)
                    files.append(path)
                path = out / f"{prefix}all{ext}"
                write_audio(path, audio, mel_config.sample_rate, fmt, gap_seconds)
                files.append(path)
            except EncodeError as e:  # no usable ffmpeg: the user can act on it
                raise UserError(f"--format {fmt}: {e}") from None
    info = {"checkpoint": str(checkpoint), "model": meta.get("model"), "run_id": meta.get("run_id"),
            "epoch": meta.get("epoch"), "seed": seed, "n": n, "shape": list(mels.shape),
            "render_iterations": render_iterations, "mel_inverse": mel_inverse, "mel_config": mel_config.to_dict(),
            "files": [p.name for p in files]}
    path = out / f"{prefix}generate.json"
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")
    files.append(path)
    return Generated(mels, mel_config, meta, files)


def read_anchors(path: str | Path) -> np.ndarray:
    """Anchor latents from a file: ``.npy`` [K, latent_dim], or ``.json`` holding a list of
    latents (or a piece's path, whose anchors or window latents are used)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--anchors {p}: no such file")
    try:
        if p.suffix == ".npy":
            data = np.load(p, allow_pickle=False)
        else:
            doc = json.loads(p.read_text())
            if isinstance(doc, dict):
                doc = doc.get("anchors") or [w.get("latent") for w in doc.get("windows") or []]
            data = np.asarray(doc, dtype=np.float32)
    except (ValueError, TypeError, OSError, AttributeError) as e:
        raise UserError(f"--anchors {p}: not a list of latents ({e})") from None
    if data.ndim != 2 or data.shape[0] < 1:
        raise UserError(f"--anchors {p}: need a list of latents [K, latent_dim], got shape {data.shape}")
    return data.astype(np.float32)


def read_path(path: str | Path) -> dict:
    """A piece's saved path (``piece.json``); UserError naming the file."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--from-path {p}: cannot read a piece's path ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("windows"), list):
        raise UserError(f"--from-path {p}: not a piece's path (no windows)")
    return doc


def generate_long_files(checkpoint: str | Path, out: str | Path, seconds: Optional[float] = None,
                        formats: list[str] | tuple[str, ...] = DEFAULT_FORMATS, seed: int = 0,
                        step: Optional[float] = None,
                        anchors: Optional[np.ndarray] = None, render_iterations: int = 32,
                        mel_inverse: str = "nnls", settings: Optional[LongformConfig] = None,
                        from_path: Optional[dict] = None, prefix: str = "") -> tuple["LongPiece", list[Path]]:
    """One long-form piece of ``seconds`` from the generator at ``checkpoint`` into ``out``
    (``piece.wav/mp3/ogg/png/npy`` as ``formats`` ask, ``piece.json`` always). ``from_path``: a saved
    path; without ``seconds`` the same piece is made again from it, with ``seconds`` a piece of
    that length on the same seed, step, anchors and settings."""
    from pipeline.audio import EXTENSIONS, EncodeError, write_audio
    from pipeline.checkpoint import load_generator
    from pipeline.longform import check_seconds, generate_long, path_json, regenerate, render_long
    from pipeline.plot import plot_long_mel

    settings = settings or LongformConfig()
    if from_path is not None:
        try:
            settings = LongformConfig.model_validate(from_path.get("settings") or {})
        except ValueError as e:
            raise UserError(f"--from-path: settings: {e}") from None
        seed = int(from_path.get("seed", seed) or 0)
        step = from_path.get("step", step)
        if from_path.get("anchors") is not None:
            anchors = np.asarray(from_path["anchors"], dtype=np.float32)
    elif seconds is None:
        raise UserError("--seconds is needed for a long-form piece")
    if seconds is not None:
        check_seconds(seconds, settings)
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")
    if step is not None and not 0.0 <= float(step) <= 1.0:
        raise UserError(f"--step must be between 0 and 1, got {step}")
    if render_iterations < 0:
        raise UserError(f"--iterations must be 0 or more, got {render_iterations}")
    generator, meta = load_generator(checkpoint)
    if anchors is not None and anchors.shape[1] != int(meta["latent_dim"]):
        raise UserError(f"--anchors: latents of length {anchors.shape[1]}; the model's latent size is "
                        f"{meta['latent_dim']}")
    if from_path is not None and seconds is None:
        piece = regenerate(generator, meta, from_path)
    else:
        assert seconds is not None  # checked above: without a path to make again, seconds is required
        piece = generate_long(generator, meta, seconds, seed=seed, step=step, anchors=anchors, settings=settings)
    piece.path["checkpoint"] = str(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if "npy" in formats:
        buf = io.BytesIO()
        np.save(buf, piece.mel.astype(np.float32))
        files.append(out / f"{prefix}piece.npy")
        atomic_write_bytes(files[-1], buf.getvalue())
    if "png" in formats:
        files.append(out / f"{prefix}piece.png")
        plot_long_mel(piece.mel, piece.mel_config, files[-1], boundaries_s=piece.boundaries_s,
                      title=f"{meta.get('model')}: {piece.seconds:.0f} s (seed {piece.path['seed']}, "
                            f"step {piece.path['step']:g})")
    audio_formats = [f for f in AUDIO_FORMATS if f in formats]
    if audio_formats:
        audio = render_long(piece, n_iter=render_iterations, seed=piece.path["seed"], mel_inverse=mel_inverse,
                            settings=settings)  # once, whatever the number of audio formats
        for fmt in audio_formats:
            files.append(out / f"{prefix}piece{EXTENSIONS[fmt]}")
            try:
                write_audio(files[-1], audio, piece.sample_rate, fmt)
            except EncodeError as e:  # no usable ffmpeg: the user can act on it
                raise UserError(f"--format {fmt}: {e}") from None
    files.append(out / f"{prefix}piece.json")
    atomic_write_text(files[-1], path_json(piece))
    return piece, files


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="generator checkpoint file (generator-*.pt)")
    src.add_argument("--run-id", help="MLflow training run: its latest checkpoint")
    src.add_argument("--alias", help="registry alias, e.g. champion (model name from the config)")
    p.add_argument("--n", type=int, default=None, help="clips to generate (default: 8)")
    p.add_argument("--format", default=",".join(DEFAULT_FORMATS),
                   help=f"comma-separated: {', '.join(FORMATS)} (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="latent seed (default: %(default)s)")
    p.add_argument("--iterations", type=int, help="Griffin-Lim iterations (default: evaluate.render_iterations)")
    p.add_argument("--seconds", type=float, help="one continuous long-form piece of this many seconds (5 to "
                   "600, longform.min/max_seconds) instead of --n clips: piece.wav/png/npy/json")
    p.add_argument("--step", type=float, help="long-form: how fast the music changes, the path distance walked "
                   "per window from 0 to 1 (default: longform.step)")
    p.add_argument("--anchors", metavar="FILE", help="long-form: the anchor latents to walk through, .npy "
                   "[K, latent_dim] or .json (a list of latents); default: drawn from --seed")
    p.add_argument("--from-path", metavar="FILE", help="long-form: a piece's piece.json; makes that piece again "
                   "(with --seconds: as long as asked, starting the same way)")
    add_config_argument(p, "for tracking/evaluate settings")


def main(args: argparse.Namespace) -> int:
    formats = parse_formats(args.format)
    # --iterations is evaluate.render_iterations for this call: the config's bounds apply
    overrides = {} if args.iterations is None else {"evaluate.render_iterations": args.iterations}
    try:
        config = load_config(args.config, overrides)
    except UserError as e:
        if args.iterations is not None and "render_iterations" in str(e):
            raise UserError(f"--iterations {args.iterations}: {str(e).rsplit(': ', 1)[-1]}") from None
        raise
    ev: EvaluateConfig = config.evaluate
    long_form = args.seconds is not None or args.from_path is not None
    if not long_form and (args.step is not None or args.anchors is not None):
        raise UserError("--step and --anchors are for long-form pieces: give --seconds too")
    if long_form and args.n is not None and args.n != 1:
        raise UserError(f"--seconds makes one piece; it cannot be combined with --n {args.n}")
    if args.from_path is not None and args.anchors is not None:
        raise UserError("--anchors and --from-path both choose the anchors: give one")
    anchors = read_anchors(args.anchors) if args.anchors is not None else None
    from_path = read_path(args.from_path) if args.from_path is not None else None
    with tempfile.TemporaryDirectory(prefix="technogan-generate-") as tmp:
        if args.checkpoint:
            checkpoint = Path(args.checkpoint)
        elif args.run_id:
            from tracking.runs import download_checkpoint

            checkpoint = download_checkpoint(args.run_id, "latest", dst=tmp, uri=config.tracking.uri)
        else:
            from tracking.registry import champion_checkpoint

            checkpoint, mv = champion_checkpoint(tmp, ev.registry_model, args.alias, config.tracking.uri)
            log.info("generate: %s@%s is version %s (run %s)", ev.registry_model, args.alias, mv.version, mv.run_id)
        if long_form:
            _, files = generate_long_files(checkpoint, args.out, args.seconds, formats, args.seed, args.step,
                                           anchors, ev.render_iterations, ev.render_mel_inverse,
                                           config.longform, from_path)
        else:
            files = generate_files(checkpoint, args.out, 8 if args.n is None else args.n, formats, args.seed,
                                   ev.render_iterations,
                                   ev.render_mel_inverse).files
    for f in files:
        print(f)
    return 0
