"""Run the whole chain from one config preset: the main job of `make demo`.

Each step is a function of the shared ``RunContext``; it records what it wrote in
``ctx.outputs`` so the closing summary can say where everything went. Steps are
idempotent (each stage is), so re-running the job redoes nothing already done.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.config import RunConfig, load_config

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    config: RunConfig
    out: Path
    outputs: dict[str, str] = field(default_factory=dict)  # label -> path or URL
    state: dict[str, object] = field(default_factory=dict)  # values later steps need

    @property
    def audio_dir(self) -> Path:
        return self.out / "audio"

    @property
    def dataset_dir(self) -> Path:
        return self.out / "dataset"


def step_synth(ctx: RunContext) -> None:
    from pipeline.synth import synthesize

    c = ctx.config.synth
    files = synthesize(ctx.audio_dir, tracks=c.tracks, seconds=c.seconds, seed=c.seed, fmt=c.format,
                       sample_rate=c.sample_rate, channels=c.channels)
    ctx.outputs["synthetic tracks"] = f"{ctx.audio_dir} ({len(files)} files)"


def step_segment(ctx: RunContext) -> None:
    from pipeline.segment import segment

    summary = segment(ctx.audio_dir, ctx.dataset_dir, ctx.config.mel, ctx.config.segment)
    ctx.outputs["mel dataset"] = f"{ctx.dataset_dir} ({summary.total_clips} clips)"


def step_plot(ctx: RunContext) -> None:
    from pipeline.plot import plot_dataset

    path = ctx.out / "plots" / "training_examples.png"
    plot_dataset(ctx.dataset_dir, path, n=16, seed=ctx.config.data.seed)
    ctx.outputs["training examples plot"] = str(path)


# The main job, in order. Later stages append their step here.
STEPS: list[tuple[str, Callable[[RunContext], None]]] = [
    ("synth", step_synth),
    ("segment", step_segment),
    ("plot", step_plot),
]


def run(config: RunConfig, out: str | Path | None = None) -> RunContext:
    """Run every step of ``STEPS``; returns the context with what went where."""
    ctx = RunContext(config=config, out=Path(out or config.out_dir))
    ctx.out.mkdir(parents=True, exist_ok=True)
    config.save(ctx.out / "config.resolved.yaml")
    ctx.outputs["resolved config"] = str(ctx.out / "config.resolved.yaml")
    for name, fn in STEPS:
        t0 = time.perf_counter()
        log.info("== %s ==", name)
        fn(ctx)
        log.info("== %s done in %.1f s ==", name, time.perf_counter() - t0)
    return ctx


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/quickstart.yaml", help="YAML preset (default: %(default)s)")
    p.add_argument("--out", help="output folder (default: the config's out_dir)")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ctx = run(config, args.out)
    print("\nWhere everything went:")
    width = max(len(k) for k in ctx.outputs)
    for label, where in ctx.outputs.items():
        print(f"  {label:<{width}}  {where}")
    return 0
