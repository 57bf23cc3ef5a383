"""MLflow side of ``technogan evaluate``: which checkpoints a run has, and logging
scores, reports and the encoder that produced them to the run.

Layout added to a training run (see tracking.runs for the rest)::

    evaluation/<checkpoint>/report.json, report.md   one folder per scored checkpoint
    evaluation/encoder/encoder-<key>.pt                the feature encoder used

Metrics (step = the checkpoint's epoch): ``eval.<key>`` (the mean over the latent
seeds), ``eval.std.<key>`` (their sample standard deviation, with two or more seeds),
``eval.baseline.<key>`` (real vs real) and ``eval.ceiling.<key>`` (real clips through
the renderer). Tags: ``technogan.eval.encoder`` (the encoder's sha256 prefix),
``technogan.eval.checkpoint`` (the checkpoint whose scores were logged last),
``technogan.eval.n``, ``technogan.eval.seeds``, ``technogan.eval.ndb_clips``.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Iterable, Mapping

from tracking.runs import MAX_METRICS_PER_BATCH, CHECKPOINT_DIR, get_client, log_files

ENCODER_TAG = "technogan.eval.encoder"
_GENERATOR = re.compile(r"^generator-(.+)\.pt$")


def generator_checkpoints(run_id: str, uri: str | None = None) -> list[str]:
    """Names of the run's generator checkpoints: ``epoch-N`` in epoch order, then ``best``
    and ``latest`` when present."""
    client = get_client(uri)
    names = []
    for f in client.list_artifacts(run_id, CHECKPOINT_DIR):
        m = _GENERATOR.match(Path(f.path).name)
        if m and not f.is_dir:
            names.append(m.group(1))

    def order(name: str) -> tuple[int, int]:
        if name.startswith("epoch-") and name[6:].isdigit():
            return (0, int(name[6:]))
        return (1, 0 if name == "best" else 1)

    return sorted(names, key=order)


def log_evaluation(run_id: str, metrics: Mapping[str, float], step: int = 0,
                   files: Iterable[tuple[str | os.PathLike, str]] = (), tags: Mapping[str, str] | None = None,
                   uri: str | None = None, timestamp_ms: int | None = None) -> None:
    """Log ``metrics`` (one key per number) at ``step``, upload ``files`` as (local path,
    artifact folder) and set ``tags`` on the run, synchronously. ``timestamp_ms`` orders
    values logged at one step (MLflow shows the latest)."""
    from mlflow.entities import Metric, RunTag

    client = get_client(uri)
    ts = int(time.time() * 1000) if timestamp_ms is None else int(timestamp_ms)
    items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items()]
    for s in range(0, len(items), MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[s:s + MAX_METRICS_PER_BATCH], synchronous=True)
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)
    log_files(run_id, files, uri)


def log_encoder(run_id: str, path: str | os.PathLike, encoder_id: str, uri: str | None = None,
                tags: Mapping[str, str] | None = None) -> None:
    """Upload the encoder checkpoint to the run and tag the run with its id."""
    log_evaluation(run_id, {}, files=[(path, "evaluation/encoder")],
                   tags={ENCODER_TAG: encoder_id, **dict(tags or {})}, uri=uri)


def already_evaluated(run_id: str, metric: str, n: int, uri: str | None = None, seeds: int | None = None) -> bool:
    """Whether the run has ``metric`` from an evaluation of ``n`` clips (and, when given,
    ``seeds`` latent draws): lets `technogan run` skip scoring it again."""
    run = get_client(uri).get_run(run_id)
    tags = run.data.tags
    return (metric in run.data.metrics and tags.get("technogan.eval.n") == str(n)
            and (seeds is None or tags.get("technogan.eval.seeds") == str(seeds)))


def evaluation_report(run_id: str, checkpoint: str, uri: str | None = None) -> dict | None:
    """The JSON report ``evaluate`` logged for the run's ``checkpoint`` (``evaluation/<checkpoint>/
    report.json``), or None when it has none."""
    import json
    import tempfile

    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="technogan-report-") as tmp:
        try:
            local = get_client(uri).download_artifacts(run_id, f"evaluation/{checkpoint}/report.json", tmp)
            data = json.loads(Path(local).read_text())
        except (MlflowException, OSError, ValueError):
            return None
    return data if isinstance(data, dict) else None

