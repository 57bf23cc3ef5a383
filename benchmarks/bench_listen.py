"""What listen.html costs the demo: builds the page for demo-sized generators (widths 16,
64x64, the quickstart's ``evaluate.listen`` settings) on a synthetic dataset and prints JSON.

    .venv/bin/python benchmarks/bench_listen.py [--runs 5] [--tracks 8] [--threads 2]

``runs`` generators stand for the demo's evaluated runs; the first page also renders the
real clips (kept for the process after that), a last build of the first checkpoint
stands for promote's champion page (its sounds are kept too). Reported: seconds per page
(first, the others' mean, the champion's), the page size, the audio on a page and
``audio_s_per_wall_s`` (audio rendered, encoded and pictured per second of building),
the ratio that says how the cost moves with ``clips``, ``long_seconds`` and ``iterations``.
Absolute seconds move with the machine's load; compare them with the demo's total.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="pages of distinct generators (the demo evaluates 5 runs)")
    p.add_argument("--tracks", type=int, default=8, help="synthetic tracks of 30 s in the dataset")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from pipeline.checkpoint import save_generator
    from pipeline.config import MelConfig, ModelConfig, SegmentConfig, load_config
    from pipeline.listen import build_page
    from pipeline.models.registry import get_model
    from pipeline.segment import segment
    from pipeline.synth import synthesize

    torch.set_num_threads(args.threads)
    cfg = load_config(None).evaluate.listen
    with tempfile.TemporaryDirectory(prefix="bench-listen-") as tmp:
        root = Path(tmp)
        synthesize(root / "audio", tracks=args.tracks, seconds=30.0, seed=0)
        segment(root / "audio", root / "ds", MelConfig(), SegmentConfig(workers=1))
        checkpoints = []
        for k in range(args.runs):
            torch.manual_seed(k)
            mc = ModelConfig(name="dcgan1", g_width=16, d_width=16, latent_dim=100)
            g = get_model("dcgan1").build_generator(mc, 64)
            meta = {"model": "dcgan1", "model_config": mc.model_dump(), "resolution": 64, "latent_dim": 100,
                    "mel_config": MelConfig().to_dict(), "epoch": 1, "step": 1, "run_id": None}
            checkpoints.append(save_generator(root / f"g{k}.pt", g, meta))
        # imports and first-call set-up (librosa's filters, matplotlib): the demo has paid them by then
        build_page(checkpoints[0], None, cfg.model_copy(update={"clips": 1, "real_clips": 0, "long_seconds": 0.0}),
                   None, "warm-up")
        seconds, sizes = [], []
        for ck in checkpoints:
            t0 = time.perf_counter()
            page = build_page(ck, root / "ds", cfg, None, "bench")
            seconds.append(time.perf_counter() - t0)
            sizes.append(page.size)
        t0 = time.perf_counter()
        build_page(checkpoints[0], root / "ds", cfg, None, "champion")
        champion = time.perf_counter() - t0
        audio = sum(s.seconds for sounds in page.sounds.values() for s in sounds)
        generated = sum(s.seconds for name, sounds in page.sounds.items() if name != "Real clips" for s in sounds)
    later = seconds[1:] or seconds
    print(json.dumps({
        "settings": cfg.model_dump(mode="json"), "runs": args.runs, "threads": args.threads,
        "load_1min": os.getloadavg()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
        "first_page_s": round(seconds[0], 2), "other_pages_mean_s": round(sum(later) / len(later), 2),
        "champion_page_again_s": round(champion, 2), "all_pages_s": round(sum(seconds) + champion, 2),
        "page_bytes": sizes[-1], "audio_s_per_page": round(audio, 2),
        "audio_s_per_wall_s": round(generated / (sum(later) / len(later)), 2),
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
