"""The MLflow model registry: comparing finished runs, registering the winner's
generator and pointing the ``champion`` alias at it (MLflow 3: aliases, no stages).

A registered version's ``source`` is the training run's logged generator model
(its artifact location, with the version's ``model_id``; ``tracking.models``: a pyfunc holding the checkpoint, so
``mlflow.pyfunc.load_model("models:/technogan-generator@champion")`` works) and its
``model_id`` that model's; its ``run_id`` is the training run, so
``tracking.runs.download_checkpoint(version.run_id, version_checkpoint(version))`` fetches
the very checkpoint the model holds, in the one checkpoint format (packaging, serving and
evaluation read that). Versions registered before models were logged have the run's
``checkpoints`` folder as source and work the same way. Version tags: ``checkpoint``
(artifact path of the generator), ``selection_metric`` and its value.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracking.runs import MODEL_TAG, checkpoint_artifact_path, ensure_experiment, get_client

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "technogan-generator"
DEFAULT_ALIAS = "champion"


@dataclass
class RunRow:
    """What promotion needs to know about one finished run."""

    run_id: str
    name: str
    model: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def samples(self) -> str:
        for key in ("dataset.clips", "data.max_samples"):
            v = self.params.get(key)
            if v not in (None, "", "null", "None"):
                return v
        return "-"

    @property
    def epochs(self) -> str:
        if "epoch" in self.metrics:  # what training reached, not just what it was asked for
            return f"{self.metrics['epoch']:.3g}"
        return self.params.get("train.epochs", "-")


def finished_runs(experiment: str, uri: str | None = None, max_results: int = 1000) -> list[RunRow]:
    """Every FINISHED run of ``experiment`` (none if it does not exist), newest first."""
    client = get_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'",
                              max_results=max_results, order_by=["attributes.start_time DESC"])
    return [RunRow(run_id=r.info.run_id, name=r.info.run_name or r.info.run_id[:8],
                   model=r.data.tags.get(MODEL_TAG, r.data.params.get("model.name", "?")),
                   params=dict(r.data.params), metrics=dict(r.data.metrics), tags=dict(r.data.tags)) for r in runs]


def _wait_ready(client, name: str, version: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        mv = client.get_model_version(name, version)
        if mv.status != "PENDING_REGISTRATION" or time.monotonic() > deadline:
            return mv
        time.sleep(0.2)


def version_of_run(run_id: str, name: str = DEFAULT_MODEL_NAME, uri: str | None = None,
                   checkpoint: str | int | None = None):
    """The newest registered version of ``name`` made from ``run_id`` (with ``checkpoint``:
    standing for that checkpoint of the run), or None."""
    client = get_client(uri)
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except Exception as e:  # the model is not registered at all
        log.debug("registry: no versions of %s: %s", name, e)
        return None
    wanted = None if checkpoint is None else checkpoint_artifact_path(checkpoint)
    versions = [v for v in versions if v.run_id == run_id and (
        wanted is None or (v.tags or {}).get("checkpoint", checkpoint_artifact_path("latest")) == wanted)]
    return max(versions, key=lambda v: int(v.version)) if versions else None


def register_generator(run_id: str, name: str = DEFAULT_MODEL_NAME, alias: str | None = DEFAULT_ALIAS,
                       uri: str | None = None, tags: dict[str, Any] | None = None, description: str | None = None,
                       checkpoint: str = "latest"):
    """Register the run's generator as a new version of ``name`` (reusing the run's
    existing version of that checkpoint, so promoting twice registers once) and point
    ``alias`` at it. ``checkpoint`` (latest, best or an epoch) is the one the version stands
    for: its ``checkpoint`` tag, which ``champion_checkpoint`` and packaging fetch, and the
    run's logged generator model of that checkpoint (logged now if the run has none) is its
    source. Returns the ModelVersion."""
    from mlflow.exceptions import MlflowException

    from tracking.models import ensure_run_model

    client = get_client(uri)
    try:
        client.create_registered_model(name, description="technogan generators; the alias 'champion' is the "
                                                          "best by the selection metric (technogan promote)")
    except MlflowException as e:
        if getattr(e, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
            raise
    mv = version_of_run(run_id, name, uri, checkpoint=checkpoint)
    if mv is None:
        artifact = checkpoint_artifact_path(checkpoint)
        model = ensure_run_model(run_id, Path(artifact).stem.removeprefix("generator-"), uri)
        all_tags = {"checkpoint": artifact, **{k: str(v) for k, v in (tags or {}).items()}}
        # source: the model's artifact location, which is what MLflow stores for a models:/<id>
        # source anyway, but resolving that looks the model up in the *global* tracking URI
        # (MLflow 3.17's SQL registry store), not this client's
        mv = client.create_model_version(name, source=model.artifact_location, run_id=run_id, tags=all_tags,
                                         description=description, model_id=model.model_id)
        mv = _wait_ready(client, name, mv.version)
        _link_model_version(client, model, name, mv.version)
    else:
        for k, v in {"checkpoint": checkpoint_artifact_path(checkpoint), **(tags or {})}.items():
            client.set_model_version_tag(name, mv.version, k, str(v))
        mv = client.get_model_version(name, mv.version)
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return mv


def _link_model_version(client, model, name: str, version) -> None:
    """Record the version on its logged model (the tag ``mlflow.register_model`` sets), which
    is how the UI's run and model pages find a logged model's registered versions."""
    import json

    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    versions = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS) or "[]")
    entry = {"name": name, "version": version}
    if entry not in versions:
        client.set_logged_model_tags(model.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions + [entry])})


def resolve_alias(alias: str = DEFAULT_ALIAS, name: str = DEFAULT_MODEL_NAME, uri: str | None = None):
    """The ModelVersion ``alias`` points at; UserError naming both when there is none."""
    from pipeline.errors import UserError

    client = get_client(uri)
    try:
        return client.get_model_version_by_alias(name, alias)
    except Exception as e:
        raise UserError(f"registered model {name!r} has no alias {alias!r} in {client.tracking_uri} "
                        f"(run `technogan promote` first): {str(e).splitlines()[0][:200]}") from None


def champion_checkpoint(dst: str | os.PathLike | None = None, name: str = DEFAULT_MODEL_NAME,
                        alias: str = DEFAULT_ALIAS, uri: str | None = None) -> tuple[Path, Any]:
    """(local generator checkpoint, ModelVersion) of the version ``alias`` points at."""
    from tracking.runs import download_checkpoint

    mv = resolve_alias(alias, name, uri)
    return download_checkpoint(mv.run_id, version_checkpoint(mv), dst=dst, uri=uri), mv


def list_versions(name: str = DEFAULT_MODEL_NAME, uri: str | None = None) -> list[dict[str, Any]]:
    """Every registered version of ``name``, newest first, as plain dicts: ``version``,
    ``aliases``, ``run_id``, ``model`` (the run's model name when tagged), ``checkpoint``
    (which of the run's checkpoints) and ``created`` (ms since the epoch). An empty list
    when the model is not registered."""
    client = get_client(uri)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception as e:  # the model is not registered at all
        log.debug("registry: no versions of %s: %s", name, e)
        return []
    try:
        aliases: dict[str, list[str]] = {}
        for alias, version in (client.get_registered_model(name).aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
    except Exception:  # aliases are a label, never a reason to list nothing
        aliases = {}
    rows = []
    models: dict[str, str | None] = {}
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        if mv.run_id not in models:
            try:
                models[mv.run_id] = client.get_run(mv.run_id).data.tags.get(MODEL_TAG)
            except Exception:  # a deleted run: the version is still listed
                models[mv.run_id] = None
        rows.append({"version": str(mv.version), "aliases": sorted(set(aliases.get(str(mv.version), []))
                                                                  | set(getattr(mv, "aliases", None) or [])),
                     "run_id": mv.run_id, "model": models[mv.run_id],
                     "checkpoint": version_checkpoint(mv), "created": mv.creation_timestamp})
    return rows


def version_checkpoint_file(version: str, dst: str | os.PathLike, name: str = DEFAULT_MODEL_NAME,
                            uri: str | None = None) -> tuple[Path, Any]:
    """(local generator checkpoint, ModelVersion) of registered ``version`` of ``name``;
    UserError when there is no such version."""
    from pipeline.errors import UserError
    from tracking.runs import download_checkpoint

    client = get_client(uri)
    try:
        mv = client.get_model_version(name, str(version))
    except Exception as e:
        raise UserError(f"registered model {name!r} has no version {version!r} in {client.tracking_uri}: "
                        f"{str(e).splitlines()[0][:200]}") from None
    return download_checkpoint(mv.run_id, version_checkpoint(mv), dst=dst, uri=uri), mv


def version_checkpoint(mv: Any) -> str:
    """Which of its run's generator checkpoints a version stands for (``latest``, ``best``, an
    epoch number), from its ``checkpoint`` tag; versions without the tag stand for latest."""
    path = (getattr(mv, "tags", None) or {}).get("checkpoint") or checkpoint_artifact_path("latest")
    return Path(path).stem.removeprefix("generator-").removeprefix("epoch-")


__all__ = ["DEFAULT_ALIAS", "DEFAULT_MODEL_NAME", "RunRow", "champion_checkpoint", "ensure_experiment",
           "finished_runs", "list_versions", "register_generator", "resolve_alias", "version_checkpoint",
           "version_checkpoint_file", "version_of_run"]
