"""Cost of the training loop's periodic score (``pipeline.evaluate.quick.QuickScore``). Prints JSON.

    .venv/bin/python benchmarks/bench_quick_score.py --dataset DIR [--model dcgan2] [--width 32]
                                                     [--n 256] [--calls 10] [--device cpu|cuda]

Builds a QuickScore on the dataset at 64x64 (loading or training its cached encoder,
then embedding the real clips: the one-off cost, ``setup_s``), then times calls on an
untrained generator of the given width: milliseconds per call (median after one
warm-up call) and, in the same process, milliseconds of the bare generator forward
pass over the same ``n`` latents, which any score must pay; ``ratio`` is call / forward.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from pipeline.config import EvaluateConfig, ModelConfig
from pipeline.evaluate.quick import QuickScore
from pipeline.models.registry import get_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="a segmented dataset (e.g. the dev music's)")
    p.add_argument("--model", default="dcgan2")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    t = time.perf_counter()
    quick = QuickScore(args.dataset, 64, EvaluateConfig(), n=args.n, device=args.device)
    setup_s = time.perf_counter() - t
    torch.manual_seed(0)
    mc = ModelConfig(name=args.model, g_width=args.width, d_width=args.width)
    generator = get_model(args.model).build_generator(mc, 64).to(args.device)
    quick(generator)  # warm-up
    calls, forwards = [], []
    z = torch.randn(args.n, mc.latent_dim, device=args.device)
    for _ in range(args.calls):  # interleaved, so both see the same load
        t = time.perf_counter()
        quick(generator)
        calls.append(1000 * (time.perf_counter() - t))
        t = time.perf_counter()
        with torch.no_grad():
            generator.eval()
            for zb in z.split(quick.cfg.batch_size):
                generator(zb)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
        forwards.append(1000 * (time.perf_counter() - t))
    call_ms, fwd_ms = statistics.median(calls), statistics.median(forwards)
    print(json.dumps({"model": args.model, "width": args.width, "resolution": 64, "n": args.n,
                      "real_clips": quick.n_real, "device": args.device, "threads": torch.get_num_threads(),
                      "setup_s": round(setup_s, 2), "ms_per_call": round(call_ms, 1),
                      "ms_generator_forward": round(fwd_ms, 1), "ratio": round(call_ms / fwd_ms, 2),
                      "machine": platform.machine()}))


if __name__ == "__main__":
    main()
