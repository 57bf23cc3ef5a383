"""Quality at equal cost: the study's dcgan2 and wgan-gp, as the study has them, against
the laptop recipe, each trained for the same wall-clock budget on real music and scored
with several latent seeds. Prints JSON.

    .venv/bin/python benchmarks/bench_quality.py [--minutes 20] [--seeds 3]
        [--music DIR | --dataset DIR] [--contenders study-dcgan2,study-wgan-gp,laptop]
        [--parallel N] [--out DIR] [--n 2048]
        [--variant NAME=BASE:key=value,key=value ...] [--rescore]

Data: ``--dataset`` (a segmented mel dataset), else ``--music`` (a folder of audio,
segmented here once), else the dev music of ``../shared/data/fetch-dev-music``.

Each contender trains with ``train.max_minutes = --minutes`` (and epochs unbounded), one
after another with the machine's default threads, or ``--parallel N`` at a time with
cores/N threads each (all contenders then share the machine alike). It is scored with
``evaluate.seeds = --seeds`` on its ``generator-best.pt`` when its recipe keeps one
(``train.score_every``), else on its last checkpoint. Every metric is reported as
mean, standard deviation over the seeds, the real-vs-real baseline and the ratio
mean / baseline; beat share relative to the real clips'; the memorisation ratio
(nearest-training-clip distance of generated clips over that of held-out real clips:
below 1 means copying).

``--variant`` adds a contender: a known one with config overrides (values read as YAML),
so a table of options at equal cost is one command, e.g.
``--variant laptop-r1=laptop:train.r1_gamma=1 --contenders laptop,laptop-r1``.

Targets (issue 10) for the best recipe at 20 minutes on 2 cores: ``fd_learned`` at most
5x its baseline, NDB/K at most 0.3, beat share at least 0.8x the real clips', memorisation
ratio at least 0.9, and ``fd_learned`` better than both study baselines by more than
the seed spread (difference of means above the sum of the two standard deviations).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONTENDERS = {
    # name: (preset, model override or None)
    "study-dcgan2": ("configs/study.yaml", "dcgan2"),
    "study-wgan-gp": ("configs/study.yaml", "wgan-gp"),
    "laptop": ("configs/laptop.yaml", None),
}
KEYS = ("fd_learned", "fd_hand", "kid_learned", "ndb_k", "inception_score", "beat_share", "memo_nn_ratio")


def dataset_for(args: argparse.Namespace, out: Path) -> Path:
    """The mel dataset to train and score on (segmented here when given audio)."""
    if args.dataset:
        return Path(args.dataset).resolve()
    music = args.music
    if not music:
        fetch = REPO.parent / "shared" / "data" / "fetch-dev-music"
        music = subprocess.run([str(fetch)], check=True, capture_output=True, text=True).stdout.strip()
    from pipeline.config import load_config
    from pipeline.segment import segment

    target = out / "dataset"
    if not (target / "index.jsonl").is_file():
        config = load_config(None)
        segment(music, target, config.mel, config.segment, progress=False)
    return target


def parse_variant(text: str) -> tuple[str, str, dict[str, Any]]:
    """``NAME=BASE:key=value,key=value`` -> (NAME, BASE, {key: value}); values are YAML scalars or lists
    (and a number in exponent form without a dot, 4e-4, is a number)."""
    import yaml

    name, sep, rest = text.partition("=")
    base, sep2, pairs = rest.partition(":")
    if not sep or not name.strip() or base.strip() not in CONTENDERS:
        raise ValueError(f"--variant {text!r}: expected NAME=BASE:key=value,... with BASE one of {', '.join(CONTENDERS)}")
    overrides: dict[str, Any] = {}
    # a comma inside brackets belongs to a list value (train.betas=[0.0,0.9])
    for pair in filter(None, (p.strip() for p in re.split(r",(?![^\[]*\])", pairs))) if sep2 else ():
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--variant {text!r}: {pair!r} is not key=value")
        overrides[key.strip()] = _scalar(yaml.safe_load(value))
    return name.strip(), base.strip(), overrides


def _scalar(value: Any) -> Any:
    # YAML 1.1 reads 4e-4 (no dot) as a string; a learning rate is what was meant
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def contender_config(name: str, dataset: Path, out: Path, minutes: float, threads: int | None,
                     variant: tuple[str, dict[str, Any]] | None = None):
    """The resolved config of a contender (or of a variant: its base contender plus overrides)."""
    from pipeline.config import load_config

    preset, model = CONTENDERS[variant[0] if variant else name]
    overrides: dict[str, Any] = {
        "train.dataset": str(dataset), "train.out_dir": str(out / "train"), "train.max_minutes": minutes,
        "train.epochs": 100000, "train.progress": False, "train.device": "auto", "train.threads": threads,
        "train.workers": 0,  # the set is cached in memory: loader processes would only compete for the cores
        "tracking.uri": f"sqlite:///{out / 'mlflow.db'}", "tracking.experiment": "bench-quality",
        "tracking.spool_dir": str(out / "spool"),
    }
    if model:
        overrides["model.name"] = model
    if variant:
        overrides.update(variant[1])
    return load_config(REPO / preset, overrides)


def run_contender(name: str, dataset: str, out: str, minutes: float, threads: int | None,
                  variant: tuple[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train one contender for its budget (in its own process when run in parallel)."""
    from pipeline.train import train

    config = contender_config(name, Path(dataset), Path(out), minutes, threads, variant)
    t0 = time.perf_counter()
    result = train(config, label=name)
    best = result.run_dir / "checkpoints" / "generator-best.pt" if result.run_dir else None
    chosen = best if best is not None and best.is_file() else result.generator_path
    return {"name": name, "status": result.status, "steps": result.step, "epochs": result.epoch,
            "train_minutes": round((time.perf_counter() - t0) / 60, 2), "samples_per_s": round(result.samples_per_s, 1),
            "checkpoint": str(chosen), "checkpoint_kind": "best" if chosen == best else "last",
            "model": config.model.name, "widths": [config.model.g_width, config.model.d_width],
            "batch_size": config.train.batch_size, "threads": threads,
            "overrides": variant[1] if variant else {}}


def score(trained: dict[str, Any], dataset: Path, seeds: int, n: int | None, real=None):
    from pipeline.config import load_config
    from pipeline.evaluate.evaluate import evaluate_checkpoint

    cfg = load_config(None, {"evaluate.seeds": seeds, "evaluate.n": n}).evaluate
    report, real = evaluate_checkpoint(trained["checkpoint"], dataset, cfg, real, progress=False)
    figures: dict[str, Any] = {}
    for k in KEYS:
        mean, std = report.metrics.get(k, float("nan")), report.metrics_std.get(k, float("nan"))
        base = report.baseline.get(k, float("nan"))
        figures[k] = {"mean": round(mean, 4), "std": round(std, 4), "baseline": round(base, 4),
                      "ceiling": round(report.ceiling.get(k, float("nan")), 4),
                      # a ratio reads as "times the real baseline" only against a positive one (the
                      # unbiased KID of real against real is about 0 and can be negative)
                      "ratio": round(mean / base, 3) if base > 0 else None,
                      "ratio_std": round(std / base, 3) if base > 0 else None}
    return {**trained, "metrics": figures, "n_generated": report.info.get("n_generated"),
            "ndb_clips": report.info.get("ndb_clips")}, real


def verdict(results: dict[str, dict[str, Any]], recipe: str = "laptop") -> dict[str, Any]:
    """Where the recipe stands against each target."""
    if recipe not in results:
        return {}
    m = results[recipe]["metrics"]
    out: dict[str, Any] = {
        "fd_learned_ratio<=5": m["fd_learned"]["ratio"] is not None and m["fd_learned"]["ratio"] <= 5,
        "ndb_k<=0.3": m["ndb_k"]["mean"] <= 0.3,
        "beat_share_ratio>=0.8": m["beat_share"]["ratio"] is not None and m["beat_share"]["ratio"] >= 0.8,
        "memo_nn_ratio>=0.9": m["memo_nn_ratio"]["mean"] >= 0.9,
    }
    for other, r in results.items():
        if other == recipe or not other.startswith("study-"):
            continue
        o = r["metrics"]["fd_learned"]
        margin = o["mean"] - m["fd_learned"]["mean"]
        out[f"beats_{other}_by_more_than_seed_spread"] = bool(margin > o["std"] + m["fd_learned"]["std"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20.0, help="training budget per contender")
    p.add_argument("--seeds", type=int, default=3, help="latent seeds per evaluation")
    p.add_argument("--n", type=int, default=None, help="generated clips per seed (default: evaluate.n)")
    p.add_argument("--music", help="folder of audio files (default: the dev music)")
    p.add_argument("--dataset", help="an already segmented mel dataset")
    p.add_argument("--contenders", help="comma-separated, from: " + ", ".join(CONTENDERS) + " and the --variant "
                   "names (default: those three; with --rescore: all of trained.json)")
    p.add_argument("--parallel", type=int, default=1, help="contenders trained at once (threads = cores / N each)")
    p.add_argument("--out", default="out/bench-quality")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=BASE:key=value,...",
                   help="a contender made of a known one and config overrides (repeatable)")
    p.add_argument("--recipe", default="laptop", help="the contender the targets are checked for")
    p.add_argument("--rescore", action="store_true", help="score what an earlier run in --out trained "
                   "(its trained.json) without training again")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    chosen = [n.strip() for n in args.contenders.split(",") if n.strip()] if args.contenders else None
    variants: dict[str, tuple[str, dict[str, Any]]] = {}
    for text in args.variant:
        try:
            vname, base, overrides = parse_variant(text)
        except ValueError as e:
            p.error(str(e))
        variants[vname] = (base, overrides)
    out = Path(args.out).resolve()
    trained_file = out / "trained.json"
    trained: list[dict[str, Any]] | None = None
    if args.rescore:  # the contenders are what trained (variants included)
        if not trained_file.is_file():
            p.error(f"--rescore: {trained_file} does not exist (no training finished in --out {out})")
        trained = [t for t in json.loads(trained_file.read_text()) if chosen is None or t["name"] in chosen]
        names = [t["name"] for t in trained]
        missing = sorted(set(chosen or ()) - set(names))
        if missing:
            p.error(f"--rescore: {trained_file} has no {', '.join(missing)}")
    else:
        names = chosen or list(CONTENDERS)
        unknown = [n for n in names if n not in CONTENDERS and n not in variants]
        if unknown:
            p.error(f"unknown contenders {unknown}; known: {', '.join([*CONTENDERS, *variants])}")
    if args.recipe not in names:
        p.error(f"--recipe {args.recipe}: not among the contenders ({', '.join(names)}); the targets are "
                "checked for it, so name one of them")
    for name in variants:  # a bad key fails here, not after an hour of training
        try:
            contender_config(name, Path("."), Path("."), args.minutes, None, variants[name])
        except Exception as e:
            p.error(f"--variant {name}: {e}")
    out.mkdir(parents=True, exist_ok=True)
    dataset = dataset_for(args, out)
    cores = os.cpu_count() or 1
    threads = max(1, cores // args.parallel) if args.parallel > 1 else None

    # create the tracking store once: N processes migrating a new SQLite file at once collide
    from pipeline.fsutil import atomic_write_text
    from tracking.runs import ensure_experiment, get_client

    ensure_experiment(get_client(f"sqlite:///{out / 'mlflow.db'}"), "bench-quality")

    # train: one after another, or N at a time in separate processes; what trained is
    # written down first, so a failure while scoring costs a re-score (--rescore), not the training
    t0 = time.perf_counter()
    if trained is None:  # else --rescore read it
        jobs = [(n, str(dataset), str(out), args.minutes, threads, variants.get(n)) for n in names]
        if args.parallel > 1:
            # spawned, not forked: a child forked while any thread of this process holds a
            # lock (a name lookup's, the allocator's) waits on it for ever
            with ProcessPoolExecutor(args.parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
                trained = [f.result() for f in [pool.submit(run_contender, *job) for job in jobs]]
        else:
            trained = [run_contender(*job) for job in jobs]
        atomic_write_text(trained_file, json.dumps(trained, indent=2) + "\n")

    # score every contender with the same real data, encoder and seeds
    results: dict[str, dict[str, Any]] = {}
    real = None
    for t in trained:
        results[t["name"]], real = score(t, dataset, args.seeds, args.n, real)
    report = {
        "benchmark": "quality", "minutes": args.minutes, "seeds": args.seeds, "parallel": args.parallel,
        "dataset": str(dataset), "clips": None if real is None else int(len(real.mels)),
        "machine": {"cores": cores, "python": platform.python_version()},
        "wall_minutes": round((time.perf_counter() - t0) / 60, 1), "rescored": bool(args.rescore),
        "contenders": results, "targets": verdict(results, args.recipe),
    }
    text = json.dumps(report, indent=2)
    atomic_write_text(out / "bench_quality.json", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
