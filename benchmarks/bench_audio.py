"""Mel-to-audio rendering speed and quality, ours against librosa, and how long
``evaluate`` takes for 2048 clips. Prints JSON.

    .venv/bin/python benchmarks/bench_audio.py [--clips 16] [--threads 2] [--out FILE]
        [--skip-render] [--skip-evaluate] [--skip-longform] [--checkpoint generator.pt]

Rendering: a batch of real 5 s clips (synthetic techno, decoded at the mel config's
rate) -> log-mels -> audio again, with ``pipeline.audio.MelRenderer`` (both mel
inverses) and with ``librosa.feature.inverse.mel_to_audio``, the same Griffin-Lim
iteration count (32, librosa's default) and momentum (0.99) for both. Speed is
seconds of audio rendered per wall second; quality is the spectral convergence and
log-spectral distance of each rendering against the original audio
(``pipeline.audio.quality``). Targets: >= 5x librosa, >= 30x real time on 2 cores,
spectral convergence no worse than librosa's.

Long-form pieces (``pipeline.longform``, ``--skip-longform`` to leave out): how fast a
60 s piece renders (chunked fast Griffin-Lim, 32 and 16 iterations; target >= 30x real
time), and what a listener hears at the joins, for real music cut into consecutive 5 s
clips and joined the way generated windows are (the reference: synthetic techno, and the
dev music of ``shared/data/fetch-dev-music`` when ``--dev-music`` holds it) and for
generated pieces (``--checkpoint``, else an untrained quickstart-sized DCGAN1): the seam
score (flux at joins / flux inside windows), the loudest join against its neighbourhood
(dB) and the spread of the local tempo (BPM), each measured on the rendered audio.
Targets: generated seam score within 1.2x of the real reference; no join > 3 dB louder.

Evaluation: ``pipeline.evaluate.evaluate.evaluate_checkpoint`` of an untrained
quickstart-sized DCGAN1 generator on N generated clips against the quickstart
dataset (32 synthetic tracks of 90 s), once with the encoder to train and once with
it cached.
"""

from __future__ import annotations

import argparse
import os
import sys

# cap every thread pool before numpy/torch load: "on 2 cores" means 2 for both sides
_threads = "2"
for i, a in enumerate(sys.argv):
    if a == "--threads" and i + 1 < len(sys.argv):
        _threads = sys.argv[i + 1]
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = _threads

import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.audio import MelRenderer  # noqa: E402
from pipeline.audio.quality import log_spectral_distance, spectral_convergence  # noqa: E402
from pipeline.config import EvaluateConfig, MelConfig, ModelConfig, SegmentConfig, load_config  # noqa: E402
from pipeline.fsutil import atomic_write_text  # noqa: E402
from pipeline.mel import log_mel, normalised_to_db  # noqa: E402
from pipeline.synth import synthesize  # noqa: E402

N_ITER = 32


def real_clips(folder: Path, n: int, cfg: MelConfig) -> np.ndarray:
    tracks = max(1, (n + 3) // 4)
    paths = synthesize(folder, tracks=tracks, seconds=4 * cfg.clip_seconds + 1, seed=11, progress=False)
    clips = []
    for p in paths:
        y, _ = librosa.load(p, sr=cfg.sample_rate, mono=True)
        clips += [y[k * cfg.clip_samples:(k + 1) * cfg.clip_samples] for k in range(4)]
    return np.stack(clips[:n]).astype(np.float32)


def timed(fn, repeats: int = 2):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def quality(ref: np.ndarray, audio, cfg: MelConfig) -> dict:
    return {"spectral_convergence": round(float(spectral_convergence(ref, audio, cfg).mean()), 4),
            "log_spectral_distance_db": round(float(log_spectral_distance(ref, audio, cfg).mean()), 3)}


def bench_render(clips: np.ndarray, cfg: MelConfig, librosa_clips: int) -> dict:
    mels = torch.from_numpy(log_mel(clips, cfg))  # [B, M, T]
    seconds = len(clips) * cfg.clip_seconds
    out: dict = {"clips": len(clips), "clip_seconds": cfg.clip_seconds, "n_iter": N_ITER, "momentum": 0.99}
    ours = {}
    for inverse in ("nnls", "pinv"):
        r = MelRenderer(cfg, n_iter=N_ITER, mel_inverse=inverse)  # default chunk of 8 clips
        r.render(mels[:2])  # warm-up (allocator, FFT plans)
        wall, audio = timed(lambda r=r: r.render(mels), repeats=3)  # best of 3: the machine is shared
        ours[inverse] = {"wall_s": round(wall, 3), "audio_s_per_wall_s": round(seconds / wall, 2),
                         "x_real_time": round(seconds / wall, 2), **quality(clips, audio, cfg),
                         "first_clips": quality(clips[:librosa_clips], audio[:librosa_clips], cfg)}
    db = normalised_to_db(mels[:librosa_clips].numpy(), cfg)

    def lib():
        return np.stack([librosa.feature.inverse.mel_to_audio(
            10.0 ** (d / 10.0), sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, power=cfg.power,
            n_iter=N_ITER, fmin=cfg.fmin, fmax=cfg.f_max, length=cfg.clip_samples, pad_mode="constant") for d in db])

    wall, audio = timed(lib, repeats=2)
    lib_rate = librosa_clips * cfg.clip_seconds / wall
    out["librosa"] = {"clips": librosa_clips, "wall_s": round(wall, 3), "audio_s_per_wall_s": round(lib_rate, 2),
                      **quality(clips[:librosa_clips], audio, cfg)}
    out["ours"] = ours
    default = ours["nnls"]
    out["speedup_vs_librosa"] = round(default["audio_s_per_wall_s"] / lib_rate, 1)
    out["speedup_vs_librosa_pinv"] = round(ours["pinv"]["audio_s_per_wall_s"] / lib_rate, 1)
    out["targets"] = {
        "speedup_ge_5x": out["speedup_vs_librosa"] >= 5,
        "real_time_ge_30x": default["x_real_time"] >= 30,
        "sc_no_worse_than_librosa": default["first_clips"]["spectral_convergence"]
        <= out["librosa"]["spectral_convergence"],
    }
    return out


def bench_evaluate(folder: Path, n: int, tracks: int, seconds: float) -> dict:
    from pipeline.checkpoint import save_generator
    from pipeline.evaluate.evaluate import evaluate_checkpoint
    from pipeline.models.registry import get_model
    from pipeline.segment import segment

    quick = load_config(ROOT / "configs" / "quickstart.yaml")
    mel = quick.mel
    t0 = time.perf_counter()
    synthesize(folder / "audio", tracks=tracks, seconds=seconds, seed=0, progress=False)
    segment(folder / "audio", folder / "dataset", mel, SegmentConfig())
    data_s = time.perf_counter() - t0
    torch.manual_seed(0)
    model_cfg: ModelConfig = quick.model.model_copy(update={"name": "dcgan1"})
    g = get_model("dcgan1").build_generator(model_cfg, quick.data.resolution)
    ckpt = save_generator(folder / "generator.pt", g, {
        "model": "dcgan1", "model_config": model_cfg.model_dump(), "resolution": quick.data.resolution,
        "latent_dim": model_cfg.latent_dim, "mel_config": mel.to_dict()})
    cfg: EvaluateConfig = quick.evaluate.model_copy(update={"n": n})
    first, (report, real) = timed(lambda: evaluate_checkpoint(ckpt, folder / "dataset", cfg, progress=False), 1)
    cached, (report2, _) = timed(lambda: evaluate_checkpoint(ckpt, folder / "dataset", cfg, progress=False), 1)
    warm, _ = timed(lambda: evaluate_checkpoint(ckpt, folder / "dataset", cfg, real=real, progress=False), 1)
    return {"generated_clips": n, "real_clips": int(len(real.mels)), "resolution": real.resolution,
            "dataset_build_s": round(data_s, 1),
            "evaluate_s_first_call_with_encoder_training": round(first, 1),
            "evaluate_s_encoder_cached": round(cached, 1),
            "evaluate_s_real_data_in_memory": round(warm, 1),
            "encoder_val_accuracy": real.encoder.meta.get("val_accuracy"),
            "fd_learned_untrained_vs_real_baseline": [round(report.metrics["fd_learned"], 3),
                                                      round(report.baseline["fd_learned"], 3)],
            "reproducible": report.metrics == report2.metrics}


DEV_MUSIC = Path(os.environ.get("TECHNOGAN_DEV_MUSIC", "/root/.cache/technogan/dev-music"))
LONG_SECONDS = 60.0


def _joins(piece, audio: np.ndarray, cfg: MelConfig) -> dict:
    """Seam score, loudest join and tempo spread of a rendered piece."""
    from pipeline.audio.quality import boundary_loudness, long_mel_db, seam_score, tempo_stability

    db = long_mel_db(audio, cfg)
    tempo = tempo_stability(db, cfg)
    return {"seam_score": seam_score(db, piece.boundaries_s, cfg),
            "max_join_loudness_db": float(boundary_loudness(db, piece.boundaries_s, cfg).max()),
            "tempo_spread_bpm": tempo["spread_bpm"], "tempo_median_bpm": tempo["median_bpm"],
            "clear_beat_share": tempo["clear_share"], "joins": len(piece.boundaries_s)}


def _summary(rows: list[dict]) -> dict:
    keys = ("seam_score", "max_join_loudness_db", "tempo_spread_bpm", "tempo_median_bpm", "clear_beat_share")
    out: dict = {"pieces": len(rows)}
    for k in keys:
        vals = [r[k] for r in rows if r[k] is not None]
        out[k] = round(float(np.mean(vals)), 3) if vals else None
    out["worst_join_loudness_db"] = round(max(r["max_join_loudness_db"] for r in rows), 2)
    return out


def _real_reference(tracks: list[np.ndarray], cfg: MelConfig, n_iter: int) -> dict:
    """Real music cut into consecutive clips and joined as generated windows are."""
    from pipeline.audio.quality import long_mel_db, seam_score
    from pipeline.longform import piece_from_windows, render_long, seconds_to_frames
    from pipeline.mel import db_to_normalised

    rows, uncut = [], []
    width = cfg.n_frames
    for audio in tracks:
        mel = db_to_normalised(long_mel_db(audio, cfg), cfg)  # [M, T] of the whole excerpt
        windows = np.stack([mel[:, a:a + width] for a in range(0, mel.shape[1] - width + 1, width)])
        piece = piece_from_windows(windows, cfg, total_frames=seconds_to_frames(LONG_SECONDS, cfg))
        rows.append(_joins(piece, render_long(piece, n_iter=n_iter), cfg))
        # the same music uncut, at the same times: what the joins are compared with
        uncut.append(seam_score(long_mel_db(audio[:int(LONG_SECONDS * cfg.sample_rate)], cfg),
                                piece.boundaries_s, cfg))
    return {**_summary(rows), "uncut_seam_score": round(float(np.mean(uncut)), 3)}


def bench_longform(folder: Path, cfg: MelConfig, checkpoint: str | None, seeds: int, dev_tracks: int) -> dict:
    from pipeline.checkpoint import load_generator, save_generator
    from pipeline.longform import generate_long, render_long

    out: dict = {"piece_seconds": LONG_SECONDS, "n_iter": N_ITER}
    excerpt = LONG_SECONDS + 2 * cfg.clip_seconds
    # real references: synthetic techno, then the dev music if it is here
    paths = synthesize(folder / "synth", tracks=3, seconds=excerpt + 1, seed=21, progress=False)
    synth = [librosa.load(p, sr=cfg.sample_rate, mono=True)[0][:int(excerpt * cfg.sample_rate)] for p in paths]
    out["reference_synthetic_techno"] = _real_reference(synth, cfg, N_ITER)
    dev = sorted(DEV_MUSIC.glob("*.ogg"))[:dev_tracks] if DEV_MUSIC.is_dir() else []
    if dev:
        music = [librosa.load(p, sr=cfg.sample_rate, mono=True, offset=30.0, duration=excerpt)[0] for p in dev]
        music = [m for m in music if len(m) >= excerpt * cfg.sample_rate - cfg.hop_length]
        out["reference_dev_music"] = {**_real_reference(music, cfg, N_ITER), "tracks": [p.stem for p in dev]}
    else:
        out["reference_dev_music"] = f"not found at {DEV_MUSIC}"
    # generated pieces
    if checkpoint is None:
        quick = load_config(ROOT / "configs" / "quickstart.yaml")
        torch.manual_seed(0)
        from pipeline.models.registry import get_model

        g = get_model("dcgan1").build_generator(quick.model, quick.data.resolution)
        checkpoint = str(save_generator(folder / "untrained.pt", g, {
            "model": "dcgan1", "model_config": quick.model.model_dump(), "resolution": quick.data.resolution,
            "latent_dim": quick.model.latent_dim, "mel_config": cfg.to_dict()}))
        out["generator"] = "untrained quickstart-sized dcgan1 (pass --checkpoint for a trained one)"
    else:
        out["generator"] = checkpoint
    generator, meta = load_generator(checkpoint)
    rows, speed = [], {}
    for seed in range(seeds):
        t0 = time.perf_counter()
        piece = generate_long(generator, meta, LONG_SECONDS, seed=seed)
        gen_s = time.perf_counter() - t0
        if seed == 0:
            for n_iter in (N_ITER, 16):
                wall, _ = timed(lambda n_iter=n_iter, piece=piece: render_long(piece, n_iter=n_iter), repeats=2)
                speed[f"render_{n_iter}_iter"] = {"wall_s": round(wall, 2), "x_real_time": round(LONG_SECONDS / wall, 1)}
            # the baseline in the same run: the same minute as twelve separate clips, batched
            width = cfg.n_frames
            clips = torch.from_numpy(np.stack([piece.mel[:, a:a + width]
                                               for a in range(0, piece.mel.shape[1] - width + 1, width)]))
            renderer = MelRenderer(cfg, n_iter=N_ITER)
            wall, _ = timed(lambda renderer=renderer, clips=clips: renderer.render(clips), repeats=2)
            clip_rate = len(clips) * cfg.clip_seconds / wall
            speed["clips_batched_x_real_time"] = round(clip_rate, 1)
            speed["long_vs_clips_speed"] = round(speed[f"render_{N_ITER}_iter"]["x_real_time"] / clip_rate, 2)
            speed["generate_mel_s"] = round(gen_s, 2)
        audio = render_long(piece, n_iter=N_ITER, seed=seed)
        rows.append({**_joins(piece, audio, cfg), "tempo_bpm_windows": piece.tempo_bpm})
    out["render_speed"] = speed
    out["generated"] = _summary(rows)
    ref = out["reference_dev_music"] if isinstance(out["reference_dev_music"], dict) \
        else out["reference_synthetic_techno"]
    out["generated_seam_vs_reference"] = round(out["generated"]["seam_score"] / ref["seam_score"], 3)
    out["generated_seam_vs_synthetic_reference"] = round(
        out["generated"]["seam_score"] / out["reference_synthetic_techno"]["seam_score"], 3)
    out["targets"] = {
        "render_60s_ge_30x_real_time": speed[f"render_{N_ITER}_iter"]["x_real_time"] >= 30,
        "seam_within_1_2x_of_reference": out["generated_seam_vs_reference"] <= 1.2,
        "no_join_over_3_db": out["generated"]["worst_join_loudness_db"] <= 3.0,
    }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=16, help="5 s clips in the rendered batch (default: %(default)s)")
    p.add_argument("--librosa-clips", type=int, default=4, help="of those, rendered by librosa too (it is slow)")
    p.add_argument("--threads", type=int, default=2, help="torch/BLAS threads (default: %(default)s)")
    p.add_argument("--eval-n", type=int, default=2048, help="generated clips for the evaluate timing")
    p.add_argument("--eval-tracks", type=int, default=32, help="synthetic tracks of the evaluation dataset")
    p.add_argument("--eval-seconds", type=float, default=90.0)
    p.add_argument("--skip-evaluate", action="store_true")
    p.add_argument("--skip-render", action="store_true", help="leave out the clip rendering comparison")
    p.add_argument("--skip-longform", action="store_true", help="leave out the long-form pieces")
    p.add_argument("--checkpoint", help="generator checkpoint for the long-form pieces (default: untrained)")
    p.add_argument("--long-seeds", type=int, default=3, help="generated 60 s pieces measured (default: %(default)s)")
    p.add_argument("--dev-tracks", type=int, default=4, help="dev music tracks as a reference (default: %(default)s)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = MelConfig()
    result: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores_available": os.cpu_count(),
                                "threads": args.threads, "torch": torch.__version__, "librosa": librosa.__version__,
                                "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}}
    with tempfile.TemporaryDirectory(prefix="bench-audio-") as tmp:
        if not args.skip_render:
            clips = real_clips(Path(tmp) / "clips", args.clips, cfg)
            result["render"] = bench_render(clips, cfg, min(args.librosa_clips, len(clips)))
        if not args.skip_longform:
            result["longform"] = bench_longform(Path(tmp) / "long", cfg, args.checkpoint, args.long_seeds,
                                                args.dev_tracks)
        if not args.skip_evaluate:
            result["evaluate"] = bench_evaluate(Path(tmp) / "eval", args.eval_n, args.eval_tracks, args.eval_seconds)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
