"""Score a generator against the real dataset: ``technogan evaluate --run-id ID``.

The real clips (at the generator's resolution) are split into two disjoint random
halves: A, the reference ("training") half, and B, the held-out half. Every metric
of ``pipeline.evaluate.metrics`` is computed twice, for the N generated clips against
A and for B against A, so each number comes with what real data itself scores (the
baseline). Results go to the run in MLflow as ``eval.<key>`` and
``eval.baseline.<key>`` (one metric key per number), with a JSON and a Markdown
report and the encoder checkpoint as artifacts under ``evaluation/``.

Caveat worth knowing when reading numbers: Fréchet distances are biased upwards
for small samples, and the baseline compares two halves of the real data (each half
the size of the dataset) while the generated set has N clips; on a small dataset
the baseline is therefore a slightly pessimistic floor. KID is unbiased.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.config import EvaluateConfig, MelConfig, add_config_argument, config_from_args
from pipeline.errors import UserError
from pipeline.evaluate.encoder import Encoder, get_encoder
from pipeline.evaluate.features import beat_analysis, hand_features
from pipeline.evaluate.metrics import METRICS, ClipSet, MetricContext, compute_all, higher_is_better, tempo_histogram
from pipeline.fsutil import atomic_write_text

log = logging.getLogger(__name__)

PREFIX = "eval."
BASELINE_PREFIX = "eval.baseline."


# ----------------------------------------------------------------------------- real data


@dataclass
class RealData:
    """The real clips at one resolution, split into halves, with the encoder trained on them."""

    root: Path
    mel_config: MelConfig
    fingerprint: str
    resolution: int
    mels: np.ndarray  # [N, R, R]
    labels: np.ndarray  # [N]
    n_tracks: int
    encoder: Encoder
    ref: ClipSet  # half A
    held_out: ClipSet  # half B


def load_real_mels(root: str | Path, resolution: int, max_real: int | None = None, seed: int = 0,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray, int, MelConfig, str]:
    """(mels [N, R, R], track labels [N], n_tracks, mel config, fingerprint) of a dataset."""
    from pipeline.dataset import MelDataset

    ds = MelDataset(root, resolution=resolution, max_samples=max_real, seed=seed, with_labels=True)
    mels = np.empty((len(ds), resolution, resolution), dtype=np.float32)
    for i in tqdm(range(len(ds)), desc="real clips", unit="clip", disable=not progress, mininterval=1.0):
        mels[i] = ds[i][0][0].numpy()
    return mels, ds.labels.astype(np.int64), ds.n_tracks, ds.mel_config, ds.fingerprint()


def describe(name: str, mels: np.ndarray, encoder: Encoder, mel_config: MelConfig, cfg: EvaluateConfig) -> ClipSet:
    """Compute everything the metrics need from clips [N, R, R] once."""
    embed, probs = encoder.encode(mels, cfg.batch_size)
    tempo, clarity = beat_analysis(mels, mel_config, cfg.tempo_search_bpm)
    return ClipSet(name=name, mels=mels, hand=hand_features(mels, mel_config, cfg.tempo_search_bpm),
                   embed=embed, probs=probs, tempo=tempo, clarity=clarity)


def prepare_real(root: str | Path, resolution: int, cfg: EvaluateConfig, encoder_dir: str | Path | None = None,
                 progress: bool = True) -> RealData:
    """Load the dataset at ``resolution``, get (train or load) its encoder, split and describe the halves."""
    root = Path(root)
    mels, labels, n_tracks, mel_config, fingerprint = load_real_mels(root, resolution, cfg.max_real, cfg.seed, progress)
    if len(mels) < 8:
        raise UserError(f"{root}: {len(mels)} clips is too few to evaluate against (need at least 8)")
    cache = Path(encoder_dir or cfg.encoder_dir or root / "encoders")
    encoder = get_encoder(cache, fingerprint, mels, labels, n_tracks, cfg, progress=progress)
    order = np.random.default_rng([cfg.seed, 7]).permutation(len(mels))
    half = len(mels) // 2
    a, b = np.sort(order[:half]), np.sort(order[half:2 * half])
    return RealData(root, mel_config, fingerprint, resolution, mels, labels, n_tracks, encoder,
                    ref=describe("real-A", mels[a], encoder, mel_config, cfg),
                    held_out=describe("real-B", mels[b], encoder, mel_config, cfg))


# ----------------------------------------------------------------------------- the report


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


@dataclass
class Report:
    """The scores of one checkpoint: generated-vs-real and real-vs-real."""

    metrics: dict[str, float]
    baseline: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)

    def mlflow_metrics(self) -> dict[str, float]:
        """One key per number: ``eval.<key>`` and ``eval.baseline.<key>``."""
        out = {PREFIX + k: v for k, v in self.metrics.items()}
        out.update({BASELINE_PREFIX + k: v for k, v in self.baseline.items()})
        return {k: float(v) for k, v in out.items() if np.isfinite(v)}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str) + "\n"

    def to_markdown(self) -> str:
        i = self.info
        lines = [
            f"# Evaluation of {i.get('checkpoint', 'a generator')}",
            "",
            f"- model: {i.get('model')}, run: {i.get('run_id')}, epoch: {i.get('epoch')}",
            f"- generated clips: {i.get('n_generated')}, real reference (A): {i.get('n_ref')}, "
            f"real held-out (B): {i.get('n_held_out')}, resolution {i.get('resolution')}",
            f"- dataset: {i.get('dataset')} (fingerprint {i.get('dataset_fingerprint')})",
            f"- encoder: {i.get('encoder_id')} (track classifier, validation accuracy "
            f"{_num(i.get('encoder_val_accuracy')):.2f}, chance {_num(i.get('encoder_chance')):.2f})",
            "",
            "| metric | generated vs A | real B vs A | better |",
            "|---|---:|---:|---|",
        ]
        for k in self.metrics:
            direction = "higher" if higher_is_better(k) else "lower"
            lines.append(f"| {k} | {self.metrics[k]:.4g} | {self.baseline.get(k, float('nan')):.4g} | {direction} |")
        return "\n".join(lines) + "\n"

    def write(self, folder: str | Path) -> list[Path]:
        folder = Path(folder)
        paths = [folder / "report.json", folder / "report.md"]
        atomic_write_text(paths[0], self.to_json())
        atomic_write_text(paths[1], self.to_markdown())
        return paths


def score(gen_mels: np.ndarray, real: RealData, cfg: EvaluateConfig, names: list[str] | None = None) -> Report:
    """Every metric of generated clips [N, R, R] against real half A, and of half B against A."""
    if gen_mels.shape[1:] != real.mels.shape[1:]:
        raise UserError(f"generated clips are {gen_mels.shape[1:]}, the real ones {real.mels.shape[1:]}")
    t0 = time.perf_counter()
    gen = describe("generated", gen_mels, real.encoder, real.mel_config, cfg)
    ctx = MetricContext(cfg, real.mel_config, real.held_out, seed=cfg.seed)
    metrics = compute_all(real.ref, gen, ctx, names)
    baseline = compute_all(real.ref, real.held_out, ctx, names)
    counts_gen, edges = tempo_histogram(gen.tempo, gen.clarity, cfg)
    counts_real, _ = tempo_histogram(real.held_out.tempo, real.held_out.clarity, cfg)
    info = {
        "n_generated": int(len(gen_mels)), "n_ref": int(len(real.ref)), "n_held_out": int(len(real.held_out)),
        "resolution": real.resolution, "dataset": str(real.root), "dataset_fingerprint": real.fingerprint,
        "encoder_id": real.encoder.id, "encoder_sha256": real.encoder.sha256,
        "encoder_val_accuracy": real.encoder.meta.get("val_accuracy"), "encoder_chance": real.encoder.meta.get("chance"),
        "tempo_histogram": {"edges_bpm": edges.tolist(), "generated": counts_gen.tolist(), "real": counts_real.tolist()},
        "metric_names": names or list(METRICS), "score_seconds": round(time.perf_counter() - t0, 2),
    }
    return Report(metrics, baseline, info)


def evaluate_checkpoint(path: str | Path, dataset: str | Path, cfg: EvaluateConfig, real: RealData | None = None,
                        progress: bool = True) -> tuple[Report, RealData]:
    """Score the generator checkpoint at ``path`` against ``dataset``. Pass ``real`` back in
    to score several checkpoints of one resolution without reloading the data."""
    from pipeline.checkpoint import load_generator
    from pipeline.generate import generate_mels

    generator, meta = load_generator(path)
    mel_config = MelConfig.from_dict(meta["mel_config"])
    resolution = int(meta["resolution"])
    if real is None or real.resolution != resolution or Path(real.root) != Path(dataset):
        real = prepare_real(dataset, resolution, cfg, progress=progress)
    if real.mel_config != mel_config:
        raise UserError(f"{path}: trained with another mel config than {dataset}/mel_config.json")
    t0 = time.perf_counter()
    gen = generate_mels(generator, cfg.n, int(meta["latent_dim"]), cfg.batch_size, cfg.seed)
    report = score(gen, real, cfg)
    report.info.update({"checkpoint": str(path), "model": meta.get("model"), "run_id": meta.get("run_id"),
                        "epoch": meta.get("epoch"), "step": meta.get("step"),
                        "seconds": round(time.perf_counter() - t0, 2)})
    return report, real


# ----------------------------------------------------------------------------- against a run


def _step_of(report: Report) -> int:
    for key in ("epoch", "step"):
        if isinstance(report.info.get(key), (int, float)):
            return int(report.info[key])
    return 0


def evaluate_run(run_id: str, which: str = "latest", dataset: str | Path | None = None,
                 cfg: EvaluateConfig | None = None, uri: str | None = None, out: str | Path | None = None,
                 progress: bool = True) -> Report:
    """Evaluate a training run's checkpoint(s) and log the scores to the run.

    ``which``: ``latest``; ``all`` (every epoch checkpoint, logged at step = epoch, then
    latest, so the run's final values are the latest's); ``best`` (the run's
    ``generator-best.pt`` when training kept one, else every epoch checkpoint scored and
    the best by ``cfg.selection_metric`` logged last). Returns the report logged last."""
    from tracking import evaluation as tracking_eval
    from tracking.runs import download_checkpoint, run_dataset

    cfg = cfg or EvaluateConfig()
    if which not in ("latest", "best", "all"):
        raise UserError(f"--checkpoint must be latest, best or all, got {which!r}")
    dataset = Path(dataset) if dataset else Path(run_dataset(run_id, uri))
    if not (dataset / "mel_config.json").is_file():
        raise UserError(f"dataset {dataset} not found here (pass --dataset DIR)")
    with tempfile.TemporaryDirectory(prefix="technogan-eval-") as tmp:
        out_dir = Path(out) if out else Path(tmp)
        available = tracking_eval.generator_checkpoints(run_id, uri)
        names: list[str] = []
        if which == "best" and "best" in available:
            names = ["best"]
        elif which in ("all", "best"):
            names = [n for n in available if n.startswith("epoch-")] + ["latest"]
        else:
            names = ["latest"]
        if "latest" not in available and "latest" in names:
            raise UserError(f"run {run_id} has no checkpoints/generator-latest.pt (not trained yet?)")
        real: RealData | None = None
        scored: list[tuple[str, Report]] = []
        for name in names:
            which_arg = name.split("-", 1)[1] if name.startswith("epoch-") else name
            path = download_checkpoint(run_id, which_arg, dst=Path(tmp) / "ckpt" / name, uri=uri)
            log.info("evaluate: run %s, checkpoint %s", run_id, name)
            report, real = evaluate_checkpoint(path, dataset, cfg, real, progress)
            report.info.update({"run_id": run_id, "checkpoint": name})
            scored.append((name, report))
        final_name, final = scored[-1]
        if which == "best" and len(scored) > 1:
            key = cfg.selection_metric[len(PREFIX):] if cfg.selection_metric.startswith(PREFIX) else cfg.selection_metric
            pick = max if higher_is_better(key) else min
            final_name, final = pick(scored, key=lambda nr: nr[1].metrics.get(key, float("nan")))
        # MLflow shows a metric's value at the highest step (then the latest timestamp), so
        # the final report goes last, at the highest step, with a strictly later timestamp
        ordered = [nr for nr in scored if nr[0] != final_name] + [(final_name, final)]
        final_step = max(_step_of(r) for _, r in scored)
        ts = int(time.time() * 1000)
        for name, report in ordered:
            files = report.write(out_dir / name)
            step = final_step if name == final_name else _step_of(report)
            ts = max(int(time.time() * 1000), ts + 1)
            tracking_eval.log_evaluation(run_id, report.mlflow_metrics(), step=step, timestamp_ms=ts,
                                         files=[(f, f"evaluation/{name}") for f in files], uri=uri)
        assert real is not None
        tracking_eval.log_encoder(run_id, real.encoder.path, real.encoder.id, uri=uri,
                                  tags={"technogan.eval.checkpoint": final_name, "technogan.eval.n": str(cfg.n),
                                        "technogan.eval.dataset_fingerprint": real.fingerprint})
        if out:
            final.write(out_dir)
    return final


# ----------------------------------------------------------------------------- CLI


def format_table(report: Report) -> str:
    rows = [("metric", "generated", "real baseline")]
    rows += [(k, f"{v:.4g}", f"{report.baseline.get(k, float('nan')):.4g}") for k, v in report.metrics.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}" for r in rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-id", required=True, help="MLflow run of a training run")
    p.add_argument("--checkpoint", default="latest", choices=("latest", "best", "all"),
                   help="which checkpoint(s) to score (default: %(default)s)")
    p.add_argument("--dataset", help="real mel dataset (default: the one the run trained on)")
    p.add_argument("--n", type=int, help="generated clips (default: the config's evaluate.n, 2048)")
    add_config_argument(p, "for evaluate/tracking settings")
    p.add_argument("--out", help="also keep the JSON/Markdown reports in this folder")


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args, {"evaluate.n": args.n})
    report = evaluate_run(args.run_id, args.checkpoint, args.dataset, config.evaluate, config.tracking.uri, args.out)
    print(f"run {args.run_id}, checkpoint {report.info.get('checkpoint')}, encoder {report.info.get('encoder_id')}")
    print(format_table(report))
    return 0
