"""`technogan train`: train one GAN of the study on a mel dataset, tracked in MLflow.

    technogan train [--config FILE] --model wgan-gp [--dataset DIR] [--epochs E]
                    [--max-samples N] [--max-steps S] [--resume [--allow-changed-config]]
    technogan train --config configs/study.yaml --run dcgan2-60k-6ep     # one of the study's six runs
    torchrun --nproc-per-node 4 -m pipeline.cli train ...                # DistributedDataParallel

Flags override the config; without --config the embedded defaults (configs/quickstart.yaml)
apply, as for every other command. ``--resume`` continues only with the settings the run
started with: other settings are refused (exit 2, naming the keys) unless
``--allow-changed-config``, which continues from the checkpoint as a new MLflow run.
Exit status: 0 finished, 2 usage/config error, 3 diverged (NaN or exploding losses),
143 stopped by SIGTERM after saving a checkpoint (resume with --resume).
"""

from __future__ import annotations

import argparse
import logging

from pipeline.config import add_config_argument, load_config, named_run, override
from pipeline.errors import UserError
from pipeline.models.registry import MODELS

log = logging.getLogger(__name__)

EXIT_CODES = {"finished": 0, "diverged": 3, "preempted": 143, "failed": 1}


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    p.add_argument("--model", help=f"one of: {', '.join(MODELS)} (default: the config's model.name)")
    p.add_argument("--run", dest="study_run", metavar="NAME",
                   help="a named run of the config's train.runs (configs/study.yaml: the study's six)")
    p.add_argument("--dataset", help="mel dataset folder (default: train.dataset, else <out_dir>/dataset)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-samples", type=int, help="train on this many clips (capped at the dataset size)")
    p.add_argument("--max-steps", type=int, help="stop after this many generator steps in total")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget: end cleanly, with a checkpoint, after "
                   "this many minutes of training (compare recipes at equal cost)")
    p.add_argument("--threads", type=int, help="intra-op CPU threads (default: train.threads, else half the cores)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", help="local checkpoint folder (default: train.out_dir, else <out_dir>/train)")
    p.add_argument("--resume", action="store_true", help="continue the latest run of this model/run name "
                   "(with the settings it started with)")
    p.add_argument("--allow-changed-config", action="store_true",
                   help="with --resume: accept settings that differ from the checkpoint's; training continues "
                        "from its weights as a new MLflow run (tag technogan.resumed_from)")


def resolve(args: argparse.Namespace):
    """(config with the flags applied, run label)."""
    where = args.config or "the embedded defaults"
    config = load_config(args.config)
    label = None
    if args.study_run:
        config = named_run(config, args.study_run, where)
        label = args.study_run
    flags = {
        "model.name": args.model, "train.epochs": args.epochs, "data.max_samples": args.max_samples,
        "train.max_steps": args.max_steps, "train.max_minutes": args.max_minutes, "train.threads": args.threads,
        "train.batch_size": args.batch_size, "train.seed": args.seed,
        "train.device": args.device, "train.dataset": args.dataset, "train.out_dir": args.out,
    }
    return override(config, flags, f"{where} with the command's flags"), label


def main(args: argparse.Namespace) -> int:
    from pipeline.train.loop import train

    config, label = resolve(args)
    if args.allow_changed_config and not args.resume:
        raise UserError("--allow-changed-config only makes sense with --resume")
    result = train(config, resume=args.resume, label=label, allow_changed_config=args.allow_changed_config)
    where = f"MLflow run {result.run_id}" if result.run_id else \
        "the tracking server never answered: its records are spooled (sent by the next run or flush_spool)"
    print(f"{result.label}: {result.status} at step {result.step}; {where}")
    if result.status == "finished" and result.reason:
        print(f"{result.label}: {result.reason}")
    if result.generator_path:
        print(f"generator checkpoint: {result.generator_path}")
    if result.status == "diverged":
        print(f"{result.label}: stopped, {result.reason}")
    return EXIT_CODES[result.status]
