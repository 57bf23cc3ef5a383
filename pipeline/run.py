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
from typing import Any, Callable

from pipeline.config import RunConfig, add_config_argument, config_from_args
from pipeline.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    config: RunConfig
    out: Path
    outputs: dict[str, str] = field(default_factory=dict)  # label -> path or URL
    state: dict[str, Any] = field(default_factory=dict)  # values later steps need

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


def step_train(ctx: RunContext) -> None:
    """Train every registered model briefly (the preset's train section), then every named
    run with a recipe preset beside them (quickstart's ``laptop``); run ids go to
    ``ctx.state["train_runs"]`` ({label: MLflow run id}) for evaluation."""
    from pipeline.config import named_run, override
    from pipeline.models.registry import MODELS
    from pipeline.train.loop import previous_result, train
    from tracking.runs import get_client, tracking_uri, ui_url

    runs: dict[str, str] = {}
    out = ctx.out / "train"
    jobs = [(name, override(ctx.config, {"model.name": name})) for name in MODELS]
    jobs += [(name, named_run(ctx.config, name)) for name, r in ctx.config.train.runs.items() if r.preset]
    for name, config in jobs:
        done = previous_result(config, name, ctx.dataset_dir, out)
        if done:
            log.info("%s: already trained with this config (run %s); skipped", name, done["run_id"])
            runs[name] = done["run_id"]
            ctx.outputs[f"{name} run"] = f"{done['run_id']} (finished earlier, {done['step']} steps)"
            continue
        result = train(config, dataset=ctx.dataset_dir, label=name, out_dir=out)
        if result.run_id is None:  # training went on without the server; the chain needs its runs
            raise UserError(f"{name}: the tracking server {tracking_uri(ctx.config.tracking.uri)} never answered, "
                            f"so the run is only spooled (tracking.spool_dir); start the server and run again")
        if result.status != "finished":
            log.warning("%s %s: %s", name, result.status, result.reason)
        if result.generator_path is not None:
            runs[name] = result.run_id
        ctx.outputs[f"{name} run"] = f"{result.run_id} ({result.status}, {result.step} steps)"
    ctx.state["train_runs"] = runs
    uri = tracking_uri(ctx.config.tracking.uri)
    exp = get_client(uri).get_experiment_by_name(ctx.config.tracking.experiment)
    page = ui_url("http://127.0.0.1:5000" if uri.startswith("sqlite:") else uri, exp.experiment_id if exp else None)
    ui = f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else f"open {uri}"
    ctx.outputs["MLflow UI"] = f"{ui}  (then {page}: experiment {ctx.config.tracking.experiment}, runs view)"
    print(f"\nBrowse the training runs: {ui}, then open {page}")


def step_serve(ctx: RunContext) -> None:
    """Package the champion (after evaluation/promotion), serve it with TorchServe on
    loopback, request JSON, PNG and WAV, save them under ``<out>/served``, stop the server."""
    from serving.demo import serve_demo

    champion = ctx.state.get("champion")
    run_id = getattr(champion, "run_id", None) or (champion.get("run_id") if isinstance(champion, dict) else None)
    for label, path in serve_demo(ctx.config, ctx.out, expected_run_id=run_id).items():
        ctx.outputs[label] = str(path)


def step_evaluate(ctx: RunContext) -> None:
    """Score every quickstart run (``ctx.state["train_runs"]``) against the dataset; the
    scores go to each MLflow run, the reports under ``<out>/evaluation/<model>``."""
    from pipeline.evaluate.evaluate import evaluate_run
    from tracking.evaluation import already_evaluated, generator_checkpoints

    c = ctx.config
    for name, run_id in dict(ctx.state.get("train_runs") or {}).items():
        folder = ctx.out / "evaluation" / name
        if already_evaluated(run_id, c.evaluate.selection_metric, c.evaluate.n, c.tracking.uri, c.evaluate.seeds) \
                and (folder / "report.json").is_file():
            log.info("%s: run %s already evaluated; skipped", name, run_id)
        else:
            # a run that kept a best checkpoint is scored (and promoted, and served) by it
            which = "best" if "best" in generator_checkpoints(run_id, c.tracking.uri) else "latest"
            evaluate_run(run_id, which, ctx.dataset_dir, c.evaluate, c.tracking.uri, out=folder)
        ctx.outputs[f"{name} evaluation"] = str(folder / "report.md")


def step_promote(ctx: RunContext) -> None:
    """Promote the best finished run to ``champion``, keep the comparison table (and, with
    ``evaluate.listen``, the champion's ``listen.html``), and render a few of the champion's
    clips to WAV (with the mel grid and arrays) and a long-form piece under ``<out>/champion``."""
    from pipeline.evaluate.promote import promote
    from pipeline.generate import generate_files
    from tracking.registry import champion_checkpoint

    c, ev = ctx.config, ctx.config.evaluate
    t0 = time.perf_counter()
    result = promote(c.tracking.experiment, ev.selection_metric, ev.registry_model, ev.champion_alias,
                     c.tracking.uri, out=ctx.out / "evaluation", listen=ev.listen)
    print("\n" + result.table_text + "\n")
    ctx.outputs["comparison table"] = str(ctx.out / "evaluation" / "comparison.md")
    if ev.listen.enabled:
        ctx.outputs["listen page"] = (f"{ctx.out / 'evaluation' / 'listen.html'} (in the MLflow UI: the champion "
                                      f"run's promotion/listen.html, every evaluated run's listen.html)")
        log.info("promote with listen.html: %.1f s", time.perf_counter() - t0)
    ctx.outputs["champion"] = (f"{ev.registry_model}@{ev.champion_alias} = version {result.version} "
                               f"(run {result.winner.run_id}, {result.winner.model}; "
                               f"{champion_origin(run_label(ctx, result.winner.run_id))})")
    ctx.state["champion"] = {"name": ev.registry_model, "alias": ev.champion_alias, "version": result.version,
                             "run_id": result.winner.run_id, "model": result.winner.model}
    path, _ = champion_checkpoint(ctx.out / "champion" / "checkpoint", ev.registry_model, ev.champion_alias,
                                  c.tracking.uri)
    ctx.outputs["champion quality"] = champion_quality(ctx, path)
    print(f"champion quality: {ctx.outputs['champion quality']}")
    if ev.demo_wavs:
        made = generate_files(path, ctx.out / "champion", n=ev.demo_wavs, formats=("png", "wav", "npy"),
                              seed=ev.seed, render_iterations=ev.render_iterations,
                              mel_inverse=ev.render_mel_inverse)
        wavs = [f for f in made.files if f.suffix == ".wav"]
        ctx.outputs["champion audio"] = f"{ctx.out / 'champion'} ({len(wavs)} WAV files, mels.png, mels.npy)"
    if ev.demo_long_seconds:
        ctx.outputs["champion long piece"] = champion_long_piece(ctx, path)


def run_label(ctx: RunContext, run_id: str | None) -> str | None:
    """The label under which this run trained MLflow run ``run_id``; None for a run it did
    not train (promotion ranks every finished run of the experiment, earlier ones too)."""
    return next((k for k, v in (ctx.state.get("train_runs") or {}).items() if v == run_id), None)


def champion_origin(label: str | None) -> str:
    """The summary's word on where the champion came from, given ``run_label`` of it."""
    if label is not None:
        return f"trained by this run: {label}"
    return "trained by an earlier run in this tracking store, ahead of this run's"


def champion_long_piece(ctx: RunContext, checkpoint: Path) -> str:
    """A long-form piece of ``evaluate.demo_long_seconds`` by the champion (``pipeline.longform``,
    the config's ``longform`` settings) under ``<out>/champion``: ``long-piece.wav``, its picture
    ``long-piece.png`` and its latent path ``long-piece.json``."""
    from pipeline.generate import generate_long_files

    ev = ctx.config.evaluate
    t0 = time.perf_counter()
    piece, files = generate_long_files(checkpoint, ctx.out / "champion", seconds=ev.demo_long_seconds,
                                       formats=("png", "wav"), seed=ev.seed, render_iterations=ev.render_iterations,
                                       mel_inverse=ev.render_mel_inverse, settings=ctx.config.longform,
                                       prefix="long-")
    log.info("champion long piece: %.0f s of audio in %.1f s", piece.seconds, time.perf_counter() - t0)
    return f"{ctx.out / 'champion'} ({', '.join(f.name for f in files)}: {piece.seconds:.0f} s)"


def champion_quality(ctx: RunContext, checkpoint: Path) -> str:
    """Has the champion learned? Its learned FD against the same network untrained, and its
    beat share against the real clips' (scored like ``evaluate``, written to quality.json)."""
    import json

    from pipeline.evaluate.evaluate import evaluate_checkpoint
    from pipeline.fsutil import atomic_write_text

    cfg = ctx.config.evaluate
    # the evaluate step's report of the champion when there is one: scoring it again would give the same
    label = run_label(ctx, (ctx.state.get("champion") or {}).get("run_id"))
    report = ctx.out / "evaluation" / str(label) / "report.json"
    if label and report.is_file():
        saved = json.loads(report.read_text())
        trained_m, baseline_m, seeds = saved["metrics"], saved["baseline"], len(saved["per_seed"].get("seeds") or [0])
        untrained, _ = evaluate_checkpoint(checkpoint, ctx.dataset_dir, cfg, progress=False, untrained=True)
    else:
        trained, real = evaluate_checkpoint(checkpoint, ctx.dataset_dir, cfg, progress=False)
        trained_m, baseline_m, seeds = trained.metrics, trained.baseline, trained.seeds
        untrained, _ = evaluate_checkpoint(checkpoint, ctx.dataset_dir, cfg, real, progress=False, untrained=True)
    fd, fd0 = trained_m["fd_learned"], untrained.metrics["fd_learned"]
    beats, real_beats = trained_m["beat_share"], baseline_m["beat_share"]
    figures = {"fd_learned": fd, "fd_learned_untrained": fd0, "fd_learned_ratio": fd / fd0,
               "fd_learned_real_baseline": baseline_m["fd_learned"], "beat_share": beats,
               "beat_share_real": real_beats, "learned": bool(beats > 0 and fd <= fd0 / 3), "seeds": seeds}
    atomic_write_text(ctx.out / "champion" / "quality.json", json.dumps(figures, indent=2) + "\n")
    verdict = "it has learned" if figures["learned"] else "NOT learned enough (target: beat share > 0, FD <= 1/3)"
    return (f"fd_learned {fd:.3g} = {fd / fd0:.2f}x the untrained network's {fd0:.3g} (real vs real "
            f"{baseline_m['fd_learned']:.3g}); beat share {beats:.2f} (real clips {real_beats:.2f}): {verdict}")


# The main job, in order. Later stages append their step here.
STEPS: list[tuple[str, Callable[[RunContext], None]]] = [
    ("synth", step_synth),
    ("segment", step_segment),
    ("plot", step_plot),
    ("train", step_train),
    ("evaluate", step_evaluate),
    ("promote", step_promote),
    ("serve", step_serve),  # keep last: it serves the champion that promotion chose
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
    add_config_argument(p)
    p.add_argument("--out", help="output folder (default: the config's out_dir)")


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    ctx = run(config, args.out)
    print("\nWhere everything went:")
    width = max(len(k) for k in ctx.outputs)
    for label, where in ctx.outputs.items():
        print(f"  {label:<{width}}  {where}")
    return 0
