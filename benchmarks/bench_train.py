"""Training throughput: `technogan train` against a bare loop of the same arithmetic. Prints JSON.

    .venv/bin/python benchmarks/bench_train.py [--width 32] [--batch-size 16] [--dcgan-steps 30]
                                               [--wgan-steps 7] [--device cpu|cuda] [--amp true|auto|false]
                                               [--out FILE]

For each model at 64x64: real samples per second of ``technogan train`` (its function,
``pipeline.train.train``, on a synthetic 576-clip dataset, MLflow logging every step to a
local SQLite store, gradient norms, progress and checkpointing as configured), each
step timed by the run itself from the end of the previous step, and, in the same
process, a bare loop: the same networks, loss object and optimiser steps
(``pipeline.train.step.gan_step``) on in-memory random tensors, with no data loading,
logging, gradient norms or checkpointing. Figures are medians over the steps after the
first, best of ``--rounds`` interleaved rounds. Target: ratio >= 0.9.
The steps stay inside the first epoch, so the figures are the steady state of a long
run (epoch-end sample grids and checkpoints amortise over thousands of steps).
Both sides run at the precision ``train.amp`` gives on the device (``--amp``, default true:
bfloat16 autocast on CUDA; auto: also on a CPU with native bfloat16), stated in the JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from pipeline.config import ModelConfig, TrainConfig
from pipeline.models.registry import MODELS, get_model
from pipeline.train.loop import autocast_for
from pipeline.train.step import gan_step


def make_dataset(root: Path) -> Path:
    from pipeline.config import MelConfig, SegmentConfig
    from pipeline.segment import segment
    from pipeline.synth import synthesize

    synthesize(root / "audio", tracks=32, seconds=90.0, seed=0)
    segment(root / "audio", root / "dataset", MelConfig(), SegmentConfig())
    return root / "dataset"


def bare_loop(name: str, width: int, batch: int, steps: int, device: str, amp: bool | str) -> list[float]:
    """Samples/s of each gan_step on in-memory tensors (the first, warm-up step dropped)."""
    torch.manual_seed(0)
    spec = get_model(name)
    mc = ModelConfig(g_width=width, d_width=width)
    g, d = spec.build_generator(mc, 64).to(device), spec.build_critic(mc, 64).to(device)
    loss = spec.make_loss(TrainConfig())
    opt_g, opt_d = spec.make_optimizers(g, d, TrainConfig())
    reals = [torch.rand(batch, 1, 64, 64, device=device) * 2 - 1 for _ in range(loss.n_critic)]
    rng = torch.Generator(device=device).manual_seed(0)
    autocast = autocast_for(torch.device(device), amp)  # one context, entered each step, as the loop does
    rates = []
    for _ in range(steps):
        t = time.perf_counter()
        gan_step(g, d, loss, opt_g, opt_d, reals, mc.latent_dim, rng, autocast, with_norms=False)
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(loss.n_critic * batch / (time.perf_counter() - t))
    return rates[1:]


def technogan_train(name: str, width: int, batch: int, steps: int, device: str, amp: bool | str,
                    dataset: Path, work: Path) -> list[float]:
    """Samples/s of each step of ``pipeline.train.train`` (what `technogan train` runs), as the
    run measures them: step end to step end, data, logging and checkpoint time included."""
    from pipeline.config import load_config
    from pipeline.train import train

    config = load_config(None, {
        "data.resolution": 64, "model.name": name, "model.g_width": width, "model.d_width": width,
        "train.batch_size": batch, "train.epochs": 1, "train.max_steps": steps, "train.progress": False,
        "train.device": device, "train.amp": amp, "train.dataset": str(dataset), "train.out_dir": str(work / "train"),
        "tracking.uri": f"sqlite:///{work / 'mlflow.db'}", "tracking.experiment": "bench",
        "tracking.spool_dir": str(work / "spool")})
    result = train(config)
    assert result.status == "finished", result.reason
    return result.step_rates[1:]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dcgan-steps", type=int, default=30)
    ap.add_argument("--wgan-steps", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--amp", default="true", choices=["true", "auto", "false"], help="train.amp for both sides")
    ap.add_argument("--dataset", help="an existing mel dataset (default: synthesize 32 tracks of 90 s)")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        work = Path(tmp)
        dataset = Path(args.dataset) if args.dataset else make_dataset(work)
        amp: bool | str = {"true": True, "false": False}.get(args.amp, args.amp)
        bf16 = autocast_for(torch.device(args.device), amp) is not None
        report = {"device": args.device, "amp": args.amp, "precision": "bfloat16" if bf16 else "float32",
                  "resolution": 64, "width": args.width,
                  "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                  "cpu": platform.processor() or platform.machine(), "target_ratio": 0.9, "models": {}}
        if args.device == "cuda":
            report["gpu"] = torch.cuda.get_device_name()
        for name in args.models:
            steps = args.dcgan_steps if MODELS[name].defaults.n_critic == 1 else args.wgan_steps
            # interleaved rounds, best median of each side: this machine is shared, and a
            # neighbour's burst should not decide the ratio
            bare, ours = [], []
            for _ in range(args.rounds):
                bare.append(median(bare_loop(name, args.width, args.batch_size, steps, args.device, amp)))
                ours.append(median(technogan_train(name, args.width, args.batch_size, steps, args.device, amp,
                                                   dataset, work)))
            b, o = max(bare), max(ours)
            report["models"][name] = {"steps": steps, "train_samples_per_s": round(o, 1),
                                      "bare_loop_samples_per_s": round(b, 1), "ratio": round(o / b, 3),
                                      "rounds_train": [round(x, 1) for x in ours],
                                      "rounds_bare": [round(x, 1) for x in bare]}
            print(f"{name}: {report['models'][name]}", file=sys.stderr)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
