"""Benchmark `segment` against the decode-only bound and a naive librosa baseline.

Prints JSON. All figures are audio seconds processed per wall second on the same
files in the same run; ratios are what to compare across machines:

- segment:      `technogan segment` (all cores)
- decode_only:  ffmpeg decoding every file to mono at the target rate, nothing else,
                with the same number of parallel processes (the I/O + decode bound)
- naive:        librosa.load per file, then librosa.feature.melspectrogram +
                power_to_db per clip in a loop (one process, as a notebook would)

Start-up paid once per run (imports, the mel filterbank) is excluded from all three.

Peak memory: max RSS of any one process of a segment run over few files vs many
files (it must not grow with the number of files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import librosa
import numpy as np

from pipeline.config import MelConfig, SegmentConfig
from pipeline.mel import log_mel
from pipeline.segment import find_audio_files, segment
from pipeline.synth import synthesize


def decode_only(files: list[Path], cfg: MelConfig, workers: int) -> float:
    def run(p: Path) -> None:
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(p), "-map", "0:a:0", "-ac", "1",
                        "-ar", str(cfg.sample_rate), "-f", "f32le", "-"], stdout=subprocess.DEVNULL, check=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, files))
    return time.perf_counter() - t0


def naive(files: list[Path], cfg: MelConfig) -> tuple[float, int]:
    t0 = time.perf_counter()
    clips = 0
    n = cfg.clip_samples
    for p in files:
        y, _ = librosa.load(p, sr=cfg.sample_rate, mono=True)
        for k in range(len(y) // n):
            m = librosa.feature.melspectrogram(y=y[k * n:(k + 1) * n], sr=cfg.sample_rate, n_fft=cfg.n_fft,
                                               hop_length=cfg.hop_length, n_mels=cfg.n_mels, fmin=cfg.fmin,
                                               fmax=cfg.f_max)
            librosa.power_to_db(m, ref=np.max, top_db=cfg.top_db)
            clips += 1
    return time.perf_counter() - t0, clips


def peak_rss_mb(src: Path, workers: int) -> float:
    """Max RSS (MB) of any process of a fresh `technogan segment` run on ``src``."""
    out = Path(tempfile.mkdtemp(prefix="bench-seg-mem-"))
    code = ("import resource, sys; from pipeline.cli import main; rc = main(sys.argv[1:]); "
            "s = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
            "c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; print('RSS', max(s, c))")
    r = subprocess.run([sys.executable, "-c", code, "segment", "--input", str(src), "--out", str(out),
                        "--workers", str(workers), "--no-progress"], capture_output=True, text=True, check=True)
    shutil.rmtree(out, ignore_errors=True)
    return int(r.stdout.split("RSS")[-1].split()[0]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tracks", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--format", default="mp3", help="input format, like real music (default: mp3)")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3, help="rounds; the best of each is reported")
    args = ap.parse_args()
    cfg = MelConfig()
    work = Path(tempfile.mkdtemp(prefix="bench-seg-"))
    try:
        src = work / "audio"
        synthesize(src, tracks=args.tracks, seconds=args.seconds, seed=7, fmt=args.format, progress=False)
        files = find_audio_files(src)
        audio_s = args.tracks * args.seconds

        decode_only(files[:1], cfg, 1)  # warm the page cache for everyone alike
        # start-up paid once per run (librosa's lazy imports, the filterbank: ~1.5 s) is
        # not throughput; the baselines do not pay theirs inside the timing either
        log_mel(np.zeros((1, cfg.clip_samples), np.float32), cfg)
        librosa.feature.melspectrogram(y=np.zeros(cfg.clip_samples, np.float32), sr=cfg.sample_rate)
        # best of --repeat rounds, interleaved so all three see the same machine
        t_decode = t_segment = t_naive = float("inf")
        for _r in range(args.repeat):
            t_decode = min(t_decode, decode_only(files, cfg, args.workers))
            shutil.rmtree(work / "ds", ignore_errors=True)
            t0 = time.perf_counter()
            s = segment(src, work / "ds", cfg, SegmentConfig(workers=args.workers), progress=False)
            t_segment = min(t_segment, time.perf_counter() - t0)
            t, naive_clips = naive(files, cfg)
            t_naive = min(t_naive, t)
            assert naive_clips == s.total_clips, (naive_clips, s.total_clips)

        few = work / "few"
        few.mkdir()
        for p in files[:2]:
            shutil.copy(p, few / p.name)
        rss_few = peak_rss_mb(few, args.workers)
        rss_all = peak_rss_mb(src, args.workers)

        result = {
            "files": len(files), "format": args.format, "audio_seconds": audio_s, "clips": s.total_clips,
            "workers": args.workers, "cpus": os.cpu_count(), "rounds": args.repeat,
            "load_average_1m": round(os.getloadavg()[0], 2),
            "segment_audio_s_per_s": round(audio_s / t_segment, 1),
            "decode_only_audio_s_per_s": round(audio_s / t_decode, 1),
            "naive_audio_s_per_s": round(audio_s / t_naive, 1),
            "segment_vs_decode_only": round(t_decode / t_segment, 3),
            "segment_vs_naive": round(t_naive / t_segment, 3),
            "peak_rss_mb_2_files": round(rss_few, 1),
            f"peak_rss_mb_{len(files)}_files": round(rss_all, 1),
            "peak_rss_growth": round(rss_all / rss_few, 3),
            "targets": {"segment_vs_decode_only": ">= 0.7", "segment_vs_naive": ">= 2", "peak_rss_growth": "~1"},
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
