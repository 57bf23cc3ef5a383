"""Score a generator against the real dataset: ``technogan evaluate --run-id ID``.

The real clips (at the generator's resolution) are split into two disjoint random
halves: A, the reference ("training") half, and B, the held-out half. Every metric
of ``pipeline.evaluate.metrics`` is computed for the N generated clips against A and
for B against A, so each number comes with what real data itself scores (the
baseline), and for B rendered to audio and analysed again (the renderer ceiling:
what the Griffin-Lim round trip alone costs; ``evaluate.ceiling``).

One draw of latents moves the scores as much as the gap between runs, so the
generated clips are drawn ``evaluate.seeds`` times (latent seeds ``seed``,
``seed + 1``, ...), each draw scored, and every metric reported as the mean and the
sample standard deviation (ddof 1) over the draws; the baseline and the ceiling are
scored with each draw's seed too (their KID subsets and NDB subsamples move with it).
The real data (halves, encoder, features, the ceiling's rendering) is computed once.
NDB/K counts a fixed number of clips per side (``evaluate.ndb_clips``), stated in the
report. Results go to the run in MLflow as ``eval.<key>`` (the mean),
``eval.std.<key>`` (with two or more seeds), ``eval.baseline.<key>`` and
``eval.ceiling.<key>``, with a JSON report (per-seed values included) and a Markdown
one and the encoder checkpoint as artifacts under ``evaluation/``.

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
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.config import EvaluateConfig, MelConfig, add_config_argument, config_from_args
from pipeline.errors import UserError
from pipeline.evaluate.encoder import Encoder, get_encoder
from pipeline.evaluate.features import beat_analysis, hand_features
from pipeline.evaluate.metrics import METRICS, ClipSet, MetricContext, compute_all, higher_is_better, tempo_histogram
from pipeline.fsutil import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

PREFIX = "eval."
BASELINE_PREFIX = "eval.baseline."
STD_PREFIX = "eval.std."
CEILING_PREFIX = "eval.ceiling."


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
    ceiling: ClipSet | None = None  # half B through mel -> audio -> mel
    ceiling_seconds: float = 0.0  # what rendering (unless cached) and analysing it cost
    ceiling_cached: bool = False
    cache: dict = field(default_factory=dict)  # metrics' reference-side work (k-means bins, ...), for every draw


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


def cache_dir(root: str | Path, cfg: EvaluateConfig, encoder_dir: str | Path | None = None) -> Path:
    """Where a dataset's encoders and rendered ceilings are cached: ``encoder_dir``, else
    ``evaluate.encoder_dir``, else ``<dataset>/encoders``."""
    return Path(encoder_dir or cfg.encoder_dir or Path(root) / "encoders")


def dataset_encoder(root: str | Path, fingerprint: str, mels: np.ndarray, labels: np.ndarray, n_tracks: int,
                    cfg: EvaluateConfig, encoder_dir: str | Path | None = None, progress: bool = True) -> Encoder:
    """The dataset's cached encoder (trained on first use): the one ``evaluate`` and the
    training loop's ``QuickScore`` both score with."""
    return get_encoder(cache_dir(root, cfg, encoder_dir), fingerprint, mels, labels, n_tracks, cfg, progress=progress)


CEILING_FORMAT = "technogan-ceiling/2"


def round_trip(stored: np.ndarray, mel_config: MelConfig, cfg: EvaluateConfig, resolution: int) -> np.ndarray:
    """Stored clips [N, n_mels, n_frames] -> audio (``MelRenderer`` with the config's render
    settings) -> mels again as ``segment`` analyses audio (``log_mel``, stored as float16)
    and the dataset serves them (resized to R x R) -> [N, R, R].

    It starts from the analysis resolution, so it measures the renderer alone: started
    from R x R clips, the re-analysis would also move every level (the peak of a clip
    averaged down to 64 x 64 sits below 0 dB; ``log_mel`` puts it back at 0 dB, about
    +5 dB on synthetic techno at 64 x 64)."""
    import torch

    from pipeline.audio import MelRenderer
    from pipeline.mel import log_mel, to_model_resolution
    from pipeline.segment import STORE_DTYPE

    renderer = MelRenderer(mel_config, n_iter=cfg.render_iterations, mel_inverse=cfg.render_mel_inverse,
                           seed=cfg.seed)
    out = np.empty((len(stored), resolution, resolution), dtype=np.float32)
    step = 64  # bounds the audio held at once (64 clips of 5 s: ~28 MB)
    for s in range(0, len(stored), step):
        audio = renderer.render(stored[s:s + step]).numpy()  # [B, clip_samples]
        again = log_mel(audio, mel_config).astype(STORE_DTYPE).astype(np.float32)  # [B, n_mels, n_frames]
        out[s:s + step] = to_model_resolution(torch.from_numpy(again), resolution).numpy()
    return out


def cached_round_trip(cache: Path, stored: np.ndarray, mel_config: MelConfig, cfg: EvaluateConfig,
                      resolution: int) -> tuple[np.ndarray, bool]:
    """(``round_trip(stored)``, whether it came from the cache): cached beside the encoders
    under a key of the clips' bytes and every setting of the rendering, so a dataset pays
    for its rendering once, not once per evaluated run."""
    import hashlib

    clips = np.ascontiguousarray(stored, dtype=np.float32)
    settings = {"format": CEILING_FORMAT, "clips": hashlib.sha256(clips.tobytes()).hexdigest(),
                "shape": list(clips.shape), "resolution": resolution, "mel_config": mel_config.to_dict(),
                "seed": cfg.seed, "iterations": cfg.render_iterations, "mel_inverse": cfg.render_mel_inverse}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"ceiling-{key}.npy"
    expected = (len(clips), resolution, resolution)
    if path.is_file():
        try:
            heard = np.load(path, allow_pickle=False)
            if heard.shape == expected and heard.dtype == np.float32:
                return heard, True
            log.warning("%s: holds %s %s, not %s float32; rendering again", path, heard.shape, heard.dtype, expected)
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable (%s); rendering again", path, e)
    heard = round_trip(clips, mel_config, cfg, resolution)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, heard, allow_pickle=False)
    return heard, False


def ceiling_clips(root: str | Path, b: np.ndarray, cfg: EvaluateConfig) -> np.ndarray:
    """Half B's clips (items ``b`` of the evaluated dataset, at most ``cfg.ceiling_clips``
    of them, drawn with the seed) at analysis resolution: [M, n_mels, n_frames]."""
    from pipeline.dataset import MelDataset

    ds = MelDataset(root, resolution=8, max_samples=cfg.max_real, seed=cfg.seed)  # the items load_real_mels read
    pick = b if len(b) <= cfg.ceiling_clips else np.sort(
        np.random.default_rng([cfg.seed, 8]).choice(b, cfg.ceiling_clips, replace=False))
    return np.stack([ds.stored(int(i)).numpy() for i in pick]) if len(pick) else np.zeros((0, *ds.mel_config.shape))


def prepare_real(root: str | Path, resolution: int, cfg: EvaluateConfig, encoder_dir: str | Path | None = None,
                 progress: bool = True) -> RealData:
    """Load the dataset at ``resolution``, get (train or load) its encoder, split and describe
    the halves, and (``cfg.ceiling``) render half B to audio and back."""
    root = Path(root)
    mels, labels, n_tracks, mel_config, fingerprint = load_real_mels(root, resolution, cfg.max_real, cfg.seed, progress)
    if len(mels) < 8:
        raise UserError(f"{root}: {len(mels)} clips is too few to evaluate against (need at least 8)")
    encoder = dataset_encoder(root, fingerprint, mels, labels, n_tracks, cfg, encoder_dir, progress)
    order = np.random.default_rng([cfg.seed, 7]).permutation(len(mels))
    half = len(mels) // 2
    a, b = np.sort(order[:half]), np.sort(order[half:2 * half])
    real = RealData(root, mel_config, fingerprint, resolution, mels, labels, n_tracks, encoder,
                    ref=describe("real-A", mels[a], encoder, mel_config, cfg),
                    held_out=describe("real-B", mels[b], encoder, mel_config, cfg))
    if cfg.ceiling:
        t0 = time.perf_counter()
        log.info("evaluate: held-out clips to audio and back (the renderer ceiling)")
        heard, real.ceiling_cached = cached_round_trip(cache_dir(root, cfg, encoder_dir),
                                                       ceiling_clips(root, b, cfg), mel_config, cfg, resolution)
        real.ceiling = describe("real-B-audio", heard, encoder, mel_config, cfg)
        real.ceiling_seconds = round(time.perf_counter() - t0, 2)
    return real


# ----------------------------------------------------------------------------- the report


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


def mean_std(values: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per key, the mean and the sample standard deviation (ddof 1; 0 for one value) of
    per-seed results."""
    keys = list(values[0]) if values else []
    arrays = {k: np.array([v.get(k, np.nan) for v in values], dtype=np.float64) for k in keys}
    mean = {k: float(a.mean()) for k, a in arrays.items()}
    std = {k: float(a.std(ddof=1)) if len(a) > 1 else 0.0 for k, a in arrays.items()}
    return mean, std


def _cell(mean: float | None, std: float | None, seeds: int) -> str:
    if mean is None:
        return "-"
    if seeds < 2 or std is None or not np.isfinite(std):
        return f"{mean:.4g}"
    # a spread at rounding level (a real half scored on all its clips each time) reads 0
    return f"{mean:.4g} ± {0.0 if std <= 1e-9 * max(1.0, abs(mean)) else std:.2g}"


@dataclass
class Report:
    """The scores of one checkpoint: generated-vs-real, real-vs-real (baseline) and
    rendered-real-vs-real (ceiling). ``metrics``, ``baseline``, ``ceiling`` are means over
    the latent seeds, ``*_std`` their sample standard deviations, ``per_seed`` each
    seed's values (``{"seeds": [...], "generated": [{...}, ...], "baseline": ..., "ceiling": ...}``)."""

    metrics: dict[str, float]
    baseline: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    metrics_std: dict[str, float] = field(default_factory=dict)
    baseline_std: dict[str, float] = field(default_factory=dict)
    ceiling: dict[str, float] = field(default_factory=dict)
    ceiling_std: dict[str, float] = field(default_factory=dict)
    per_seed: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> int:
        return len(self.per_seed.get("seeds") or [0])

    def mlflow_metrics(self) -> dict[str, float]:
        """One key per number: ``eval.<key>`` (mean), ``eval.std.<key>`` (with two or more
        seeds), ``eval.baseline.<key>`` and ``eval.ceiling.<key>`` (means)."""
        out = {PREFIX + k: v for k, v in self.metrics.items()}
        if self.seeds > 1:
            out.update({STD_PREFIX + k: v for k, v in self.metrics_std.items()})
        out.update({BASELINE_PREFIX + k: v for k, v in self.baseline.items()})
        out.update({CEILING_PREFIX + k: v for k, v in self.ceiling.items()})
        return {k: float(v) for k, v in out.items() if np.isfinite(v)}

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True, default=str) + "\n"

    def to_markdown(self) -> str:
        i = self.info
        k = self.seeds
        columns = ["generated vs A", "real B vs A"] + (["real B through audio vs A"] if self.ceiling else [])
        lines = [
            f"# Evaluation of {i.get('checkpoint', 'a generator')}",
            "",
            f"- model: {i.get('model')}, run: {i.get('run_id')}, epoch: {i.get('epoch')}",
            f"- generated clips: {i.get('n_generated')} per draw, {k} latent draw(s) (seeds {i.get('seeds')})"
            + (": mean ± sample standard deviation over the draws" if k > 1 else ""),
            f"- real reference (A): {i.get('n_ref')}, real held-out (B): {i.get('n_held_out')}, "
            f"resolution {i.get('resolution')}",
            f"- NDB/K and its JS count {i.get('ndb_clips')} clips of each side (fixed: the figure depends on it)",
        ]
        if self.ceiling:
            lines.append(f"- real B through audio: Griffin-Lim ({i.get('render_iterations')} iterations, "
                         f"{i.get('render_mel_inverse')} mel inverse), then segment's mel analysis "
                         f"({i.get('ceiling_seconds')} s{', rendering cached' if i.get('ceiling_cached') else ''})")
        lines += [
            f"- dataset: {i.get('dataset')} (fingerprint {i.get('dataset_fingerprint')})",
            f"- encoder: {i.get('encoder_id')} (track classifier, validation accuracy "
            f"{_num(i.get('encoder_val_accuracy')):.2f}, chance {_num(i.get('encoder_chance')):.2f})",
            "",
            "| metric | " + " | ".join(columns) + " | better |",
            "|---|" + "---:|" * len(columns) + "---|",
        ]
        for key in self.metrics:
            cells = [_cell(self.metrics[key], self.metrics_std.get(key), k),
                     _cell(self.baseline.get(key), self.baseline_std.get(key), k)]
            if self.ceiling:
                cells.append(_cell(self.ceiling.get(key), self.ceiling_std.get(key), k))
            direction = "higher" if higher_is_better(key) else "lower"
            lines.append(f"| {key} | " + " | ".join(cells) + f" | {direction} |")
        return "\n".join(lines) + "\n"

    def write(self, folder: str | Path) -> list[Path]:
        folder = Path(folder)
        paths = [folder / "report.json", folder / "report.md"]
        atomic_write_text(paths[0], self.to_json())
        atomic_write_text(paths[1], self.to_markdown())
        return paths


def latent_seeds(cfg: EvaluateConfig) -> list[int]:
    """The latent seeds of an evaluation: ``seed``, ``seed + 1``, ... (``seeds`` of them)."""
    return [cfg.seed + k for k in range(cfg.seeds)]


def score(gen_mels: np.ndarray, real: RealData, cfg: EvaluateConfig, names: list[str] | None = None) -> Report:
    """Every metric of one set of generated clips [N, R, R] against real half A, of half B
    against A and (when prepared) of B through audio against A, with the seed ``cfg.seed``."""
    return score_seeds(lambda seed: gen_mels, [cfg.seed], real, cfg, names)


def score_seeds(draw: Callable[[int], np.ndarray], seeds: Sequence[int], real: RealData, cfg: EvaluateConfig,
                names: list[str] | None = None) -> Report:
    """Score ``draw(seed)`` (generated clips [N, R, R]) for each seed against the prepared
    real data; each metric's mean and standard deviation over the seeds. Draws are made
    and scored one at a time, so only one is in memory."""
    if not seeds:
        raise UserError("evaluate needs at least one latent seed")
    t0 = time.perf_counter()
    per: dict[str, list[dict[str, float]]] = {"generated": [], "baseline": [], "ceiling": []}
    n_gen, ndb_clips = 0, 0
    counts_gen: np.ndarray | None = None
    edges = np.zeros(0)
    for seed in seeds:
        gen_mels = draw(seed)
        if gen_mels.shape[1:] != real.mels.shape[1:]:
            raise UserError(f"generated clips are {gen_mels.shape[1:]}, the real ones {real.mels.shape[1:]}")
        if not ndb_clips:  # fixed by the first draw, so every draw and side counts the same clips
            n_gen = len(gen_mels)
            sizes = [len(real.held_out), n_gen] + ([len(real.ceiling)] if cfg.ceiling and real.ceiling else [])
            ndb_clips = max(1, min(cfg.ndb_clips, *sizes))
        gen = describe("generated", gen_mels, real.encoder, real.mel_config, cfg)
        ctx = MetricContext(cfg, real.mel_config, real.held_out, seed=seed, cache=real.cache, ndb_clips=ndb_clips)
        per["generated"].append(compute_all(real.ref, gen, ctx, names))
        per["baseline"].append(compute_all(real.ref, real.held_out, ctx, names))
        if cfg.ceiling and real.ceiling is not None:
            per["ceiling"].append(compute_all(real.ref, real.ceiling, ctx, names))
        counts, edges = tempo_histogram(gen.tempo, gen.clarity, cfg)
        counts_gen = counts if counts_gen is None else counts_gen + counts
    metrics, metrics_std = mean_std(per["generated"])
    baseline, baseline_std = mean_std(per["baseline"])
    ceiling, ceiling_std = mean_std(per["ceiling"])
    counts_real, _ = tempo_histogram(real.held_out.tempo, real.held_out.clarity, cfg)
    info = {
        "n_generated": int(n_gen), "n_ref": int(len(real.ref)), "n_held_out": int(len(real.held_out)),
        "seeds": list(seeds), "ndb_clips": int(ndb_clips),
        "resolution": real.resolution, "dataset": str(real.root), "dataset_fingerprint": real.fingerprint,
        "encoder_id": real.encoder.id, "encoder_sha256": real.encoder.sha256,
        "encoder_val_accuracy": real.encoder.meta.get("val_accuracy"), "encoder_chance": real.encoder.meta.get("chance"),
        "tempo_histogram": {"edges_bpm": edges.tolist(), "generated": (counts_gen if counts_gen is not None
                                                                       else np.zeros(0)).tolist(),
                            "real": counts_real.tolist()},
        "metric_names": names or list(METRICS), "score_seconds": round(time.perf_counter() - t0, 2),
    }
    if per["ceiling"]:
        assert real.ceiling is not None
        info.update({"n_ceiling": int(len(real.ceiling)), "ceiling_seconds": real.ceiling_seconds,
                     "ceiling_cached": real.ceiling_cached,
                     "render_iterations": cfg.render_iterations, "render_mel_inverse": cfg.render_mel_inverse})
    return Report(metrics, baseline, info, metrics_std, baseline_std, ceiling, ceiling_std,
                  per_seed={"seeds": list(seeds), **{k: v for k, v in per.items() if v}})


def evaluate_checkpoint(path: str | Path, dataset: str | Path, cfg: EvaluateConfig, real: RealData | None = None,
                        progress: bool = True, untrained: bool = False) -> tuple[Report, RealData]:
    """Score the generator checkpoint at ``path`` against ``dataset``. Pass ``real`` back in
    to score several checkpoints of one resolution without reloading the data.
    ``untrained``: score the checkpoint's network with fresh initial weights instead, the
    reference that says how much training achieved."""
    from pipeline.checkpoint import load_generator
    from pipeline.generate import generate_mels

    generator, meta = load_generator(path)
    if untrained:
        reinitialise(generator, cfg.seed)
    mel_config = MelConfig.from_dict(meta["mel_config"])
    resolution = int(meta["resolution"])
    if real is None or real.resolution != resolution or Path(real.root) != Path(dataset):
        real = prepare_real(dataset, resolution, cfg, progress=progress)
    if real.mel_config != mel_config:
        raise UserError(f"{path}: trained with another mel config than {dataset}/mel_config.json")
    t0 = time.perf_counter()
    latent_dim = int(meta["latent_dim"])
    report = score_seeds(lambda seed: generate_mels(generator, cfg.n, latent_dim, cfg.batch_size, seed),
                         latent_seeds(cfg), real, cfg)
    report.info.update({"checkpoint": str(path), "model": meta.get("model"), "run_id": meta.get("run_id"),
                        "epoch": meta.get("epoch"), "step": meta.get("step"),
                        "seconds": round(time.perf_counter() - t0, 2)})
    return report, real


def reinitialise(generator: nn.Module, seed: int) -> None:
    """Fresh initial weights (the registry's initialisation, BatchNorm statistics reset), drawn
    from ``seed`` without touching the global random state; fixed layers (per-bin) stay."""
    from pipeline.models.networks import init_weights

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        init_weights(generator)
    for m in generator.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()


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
        paths: dict[str, Path] = {}
        for name in names:
            which_arg = name.split("-", 1)[1] if name.startswith("epoch-") else name
            path = paths[name] = download_checkpoint(run_id, which_arg, dst=Path(tmp) / "ckpt" / name, uri=uri)
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
                                        "technogan.eval.seeds": str(cfg.seeds),
                                        "technogan.eval.ndb_clips": str(final.info.get("ndb_clips")),
                                        "technogan.eval.dataset_fingerprint": real.fingerprint})
        if out:
            final.write(out_dir)
        if cfg.listen.enabled:
            log_listen_page(run_id, paths[final_name], dataset, final, cfg, out_dir, uri)
    return final


def log_listen_page(run_id: str, checkpoint: Path, dataset: Path, report: Report, cfg: EvaluateConfig,
                    folder: Path, uri: str | None = None) -> Path:
    """Build ``listen.html`` for the scored checkpoint (its clips and long piece, real clips,
    the report's scores), write it into ``folder`` and log it at the top of the run's artifacts."""
    from pipeline.listen import PAGE_NAME, build_page, headline_from_report
    from tracking.runs import log_files

    i = report.info
    page = build_page(checkpoint, dataset, cfg.listen, headline_from_report(report),
                      title=f"{i.get('model')}: run {run_id}, checkpoint {i.get('checkpoint')}",
                      lines=[f"Evaluated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}."])
    path = page.write(folder / PAGE_NAME)
    log_files(run_id, [(path, None)], uri)
    log.info("evaluate: %s logged to run %s (%.0f KB, built in %.1f s)", PAGE_NAME, run_id, page.size / 1024,
             page.seconds)
    return path


# ----------------------------------------------------------------------------- CLI


def format_table(report: Report) -> str:
    """The report as a text table: mean ± std (two or more seeds) per column."""
    k = report.seeds
    header = ["metric", "generated", "real baseline"] + (["real through audio"] if report.ceiling else [])
    rows = [header]
    for key, v in report.metrics.items():
        row = [key, _cell(v, report.metrics_std.get(key), k),
               _cell(report.baseline.get(key), report.baseline_std.get(key), k)]
        if report.ceiling:
            row.append(_cell(report.ceiling.get(key), report.ceiling_std.get(key), k))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-id", required=True, help="MLflow run of a training run")
    p.add_argument("--checkpoint", default="latest", choices=("latest", "best", "all"),
                   help="which checkpoint(s) to score (default: %(default)s)")
    p.add_argument("--dataset", help="real mel dataset (default: the one the run trained on)")
    p.add_argument("--n", type=int, help="generated clips per latent seed (default: the config's evaluate.n, 2048)")
    p.add_argument("--seeds", type=int, help="independent latent draws, each scored; metrics are their mean "
                   "and standard deviation (default: the config's evaluate.seeds, 3)")
    add_config_argument(p, "for evaluate/tracking settings")
    p.add_argument("--out", help="also keep the JSON/Markdown reports in this folder")


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args, {"evaluate.n": args.n, "evaluate.seeds": args.seeds})
    report = evaluate_run(args.run_id, args.checkpoint, args.dataset, config.evaluate, config.tracking.uri, args.out)
    print(f"run {args.run_id}, checkpoint {report.info.get('checkpoint')}, encoder {report.info.get('encoder_id')}, "
          f"{report.info.get('n_generated')} clips x {report.seeds} seed(s), NDB/K on {report.info.get('ndb_clips')}")
    print(format_table(report))
    return 0
