"""Pick the best finished run and make it the champion: ``technogan promote``.

Compares every finished run of the experiment on the selection metric (default
``eval.fd_learned``, the Fréchet distance on the in-project encoder's features; lower
is better, see ``pipeline.evaluate.metrics`` for each metric's direction), registers
the winner's generator in the MLflow model registry and points the alias
``champion`` at that version. ``evaluate`` logs ``eval.<key>`` as the mean over its
latent seeds, so runs are ranked on the mean; equal means go to the smaller seed
spread (``eval.std.<key>``). Prints a comparison table of all runs (model, samples,
epochs, every ``eval.*`` metric as mean ± std where a std was logged, then the
real-vs-real baseline and the renderer ceiling as last rows) and logs it, as
Markdown and JSON, to the winning run under ``promotion/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import add_config_argument, config_from_args
from pipeline.errors import UserError
from pipeline.evaluate.evaluate import BASELINE_PREFIX, CEILING_PREFIX, PREFIX, STD_PREFIX
from pipeline.evaluate.metrics import higher_is_better
from pipeline.fsutil import atomic_write_text

if TYPE_CHECKING:
    from pipeline.config import ListenConfig
    from tracking.registry import RunRow

log = logging.getLogger(__name__)


@dataclass
class Promotion:
    winner: "RunRow"
    version: str
    model_name: str
    alias: str
    metric: str
    header: list[str]
    body: list[list[str]]
    table_markdown: str
    table_json: dict
    files: list[Path]

    @property
    def table_text(self) -> str:
        return text_table(self.header, self.body)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and math.isfinite(v) else "-"


def _std_key(metric: str) -> str:
    """``eval.fd_learned`` -> ``eval.std.fd_learned``: where evaluate logs the seed spread."""
    return STD_PREFIX + metric[len(PREFIX):] if metric.startswith(PREFIX) else metric + ".std"


def _cell(metrics: dict, key: str) -> str:
    mean, std = metrics.get(key), metrics.get(_std_key(key))
    if isinstance(std, (int, float)) and math.isfinite(std) and _fmt(mean) != "-":
        return f"{_fmt(mean)} ± {std:.2g}"
    return _fmt(mean)


LEAD = ["run", "run id", "model", "samples", "epochs"]  # the columns before the metrics
RUN_ID_CHARS = 8


def comparison(rows: list, metric: str) -> tuple[list[str], list[list[str]], dict]:
    """(header, table rows, JSON) of runs: selection metric first, then every eval.<key> mean
    (± its seed spread when logged); the real-vs-real baseline and the renderer ceiling last."""
    derived = (BASELINE_PREFIX, STD_PREFIX, CEILING_PREFIX)
    keys = sorted({k for r in rows for k in r.metrics if k.startswith(PREFIX) and not k.startswith(derived)})
    keys = [metric] + [k for k in keys if k != metric]
    # the run id tells apart runs of one name (a store that several demos or sweeps wrote to)
    header = LEAD + [k[len(PREFIX):] if k.startswith(PREFIX) else k for k in keys]
    body = [[r.name, r.run_id[:RUN_ID_CHARS], r.model, r.samples, r.epochs] + [_cell(r.metrics, k) for k in keys]
            for r in rows]
    data: dict = {"metric": metric, "lower_is_better": not higher_is_better(metric), "columns": header,
                  "runs": [{"run_id": r.run_id, "name": r.name, "model": r.model, "samples": r.samples,
                            "epochs": r.epochs, "metrics": {k: r.metrics.get(k) for k in keys},
                            "std": {k: r.metrics[_std_key(k)] for k in keys if _std_key(k) in r.metrics}}
                           for r in rows]}
    # the newest evaluated run's real-vs-real baseline (what real data itself scores) and
    # renderer ceiling (real clips through Griffin-Lim and back)
    for label, prefix, name in (("(real vs real)", BASELINE_PREFIX, "baseline"),
                                ("(real through audio)", CEILING_PREFIX, "ceiling")):
        having = [r for r in rows if any(k.startswith(prefix) for k in r.metrics)]
        row = None
        if having:
            m = having[0].metrics
            row = [label] + ["-"] * (len(LEAD) - 1) + [_fmt(m.get(prefix + k[len(PREFIX):])) for k in keys]
            body.append(row)
        data[name] = dict(zip(header[len(LEAD):], row[len(LEAD):])) if row else None
    return header, body, data


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def text_table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    def fmt(row):
        return "  ".join(f"{c:<{w}}" if i < len(LEAD) else f"{c:>{w}}" for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in body])


def promote(experiment: str, metric: str = "eval.fd_learned", model_name: str = "technogan-generator",
            alias: str = "champion", uri: str | None = None, out: str | Path | None = None,
            listen: "ListenConfig | None" = None) -> Promotion:
    """Register the best finished run of ``experiment`` by ``metric`` and point ``alias`` at it;
    with ``listen`` (enabled), also log ``promotion/listen.html`` to the champion's run."""
    from tracking import registry
    from tracking.runs import log_files

    rows = registry.finished_runs(experiment, uri)
    if not rows:
        raise UserError(f"experiment {experiment!r} has no finished runs to compare")
    scored = [r for r in rows if isinstance(r.metrics.get(metric), float) and math.isfinite(r.metrics[metric])]
    if not scored:
        raise UserError(f"no finished run of experiment {experiment!r} has the metric {metric!r}: "
                        f"score them first (technogan evaluate --run-id ID)")
    higher = higher_is_better(metric)

    def rank(r) -> tuple[float, float]:
        # the mean over evaluate's seeds, best first; equal means: the smaller spread first
        std = r.metrics.get(_std_key(metric), 0.0)
        return (-r.metrics[metric] if higher else r.metrics[metric], std if math.isfinite(std) else math.inf)

    # winner first, then the others best to worst, unscored last
    ranked = sorted(scored, key=rank)
    winner = ranked[0]
    ordered = ranked + [r for r in rows if r not in scored]
    header, body, data = comparison(ordered, metric)
    md = (f"# Champion: {winner.name} ({winner.model}), run {winner.run_id}\n\n"
          f"Selection metric `{metric}` ({'higher' if higher else 'lower'} is better), "
          f"{len(scored)} of {len(rows)} finished runs scored.\n\n" + markdown_table(header, body))
    # the version stands for the checkpoint that was scored: a run's best when evaluate scored that
    scored_checkpoint = "best" if winner.tags.get("technogan.eval.checkpoint") == "best" else "latest"
    mv = registry.register_generator(winner.run_id, model_name, alias, uri,
                                     tags={"selection_metric": metric, "selection_value": winner.metrics[metric],
                                           "model": winner.model}, checkpoint=scored_checkpoint)
    data.update({"winner": winner.run_id, "registered_model": model_name, "version": str(mv.version), "alias": alias})
    with tempfile.TemporaryDirectory(prefix="technogan-promote-") as tmp:
        folder = Path(out) if out else Path(tmp)
        files = [folder / "comparison.md", folder / "comparison.json"]
        atomic_write_text(files[0], md)
        atomic_write_text(files[1], json.dumps(data, indent=2, default=str) + "\n")
        if listen is not None and listen.enabled:
            files.append(champion_page(winner, scored_checkpoint, str(mv.version), model_name, alias, metric,
                                       header, body, listen, folder, uri))
        log_files(winner.run_id, [(f, "promotion") for f in files], uri)
    return Promotion(winner, str(mv.version), model_name, alias, metric, header, body, md, data,
                     files if out else [])


def champion_page(winner: "RunRow", checkpoint: str, version: str, model_name: str, alias: str, metric: str,
                  header: list[str], body: list[list[str]], cfg: "ListenConfig", folder: Path,
                  uri: str | None = None) -> Path:
    """``listen.html`` of the champion (its scored checkpoint, the real clips of the dataset it
    trained on, its evaluation's scores and the comparison of all runs) written into ``folder``."""
    import html

    from pipeline.listen import PAGE_NAME, build_page, headline_from_metrics, headline_from_report
    from tracking.evaluation import evaluation_report
    from tracking.runs import DATASET_PARAM, download_checkpoint

    report = evaluation_report(winner.run_id, checkpoint, uri)
    headline = headline_from_report(report) if report else headline_from_metrics(winner.metrics, winner.tags)
    e = html.escape
    table = ("<h2>All runs</h2><div class=\"scroll\"><table id=\"comparison\"><thead><tr>"
             + "".join(f"<th>{e(str(c))}</th>" for c in header) + "</tr></thead><tbody>"
             + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in body)
             + f"</tbody></table></div><p>Ranked by {e(metric)}.</p>")
    with tempfile.TemporaryDirectory(prefix="technogan-listen-") as tmp:
        path = download_checkpoint(winner.run_id, checkpoint, dst=tmp, uri=uri)
        page = build_page(path, winner.params.get(DATASET_PARAM), cfg, headline,
                          title=f"Champion: {winner.name} ({winner.model})",
                          lines=[f"{model_name} version {version} @{alias}: run {winner.run_id}, "
                                 f"checkpoint {checkpoint}."], extra_html=table)
    log.info("promote: %s of the champion (%.0f KB, built in %.1f s)", PAGE_NAME, page.size / 1024, page.seconds)
    return page.write(folder / PAGE_NAME)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", help="MLflow experiment (default: the config's tracking.experiment)")
    p.add_argument("--metric", help="selection metric key (default: the config's evaluate.selection_metric)")
    add_config_argument(p)
    p.add_argument("--out", help="also keep comparison.md/.json in this folder")


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    ev = config.evaluate
    result = promote(args.experiment or config.tracking.experiment, args.metric or ev.selection_metric,
                     ev.registry_model, ev.champion_alias, config.tracking.uri, args.out, listen=ev.listen)
    print(result.table_text)
    print(f"\n{result.model_name} version {result.version} is now @{result.alias}: run {result.winner.run_id} "
          f"({result.winner.model}, {result.metric} = {result.winner.metrics[result.metric]:.4g})")
    return 0

