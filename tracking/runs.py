"""MLflow runs for training: the only module (with tracking/registry.py) that imports mlflow.

Where runs go: ``MLFLOW_TRACKING_URI`` if set, else the config's ``tracking.uri``, else
a local SQLite store ``sqlite:///<cwd>/mlflow.db`` with artifacts in ``<cwd>/mlruns``
beside it (browse with ``mlflow ui --backend-store-uri sqlite:///<cwd>/mlflow.db``).

A ``TrackedRun`` never blocks training on the server: every call only queues a record;
a background thread sends them (metrics batched) and, when the server is unreachable
or errors, retries with exponential backoff up to ``max_backoff_s`` between tries.
That holds from the start: when a tracking *server* (http/https) does not answer
within ``start_timeout_s``, the run is created by the sender once the server answers,
and until then it is known by a local ``key`` (``pending-<hex>``). Records still unsent
when the run finishes (after ``flush_timeout_s``) go to a spool file
``<spool_dir>/<key>.jsonl`` (led by a ``create`` record when the run does not exist yet)
that ``flush_spool`` replays; every later ``TrackedRun.start`` tries that first.
Artifacts are queued by local path, so the caller keeps its files (training keeps
every checkpoint locally).

Artifact layout of a training run (stable; evaluation and packaging rely on it)::

    checkpoints/generator-latest.pt         generator checkpoint (pipeline.checkpoint format)
    checkpoints/generator-epoch-<N>.pt      at the end of epoch N (1-based)
    checkpoints/training-state-latest.pt    full state for --resume
    samples/step-<S>.png, samples/epoch-<N>.png   generated grid from a fixed latent batch
    samples/real.png                        real examples drawn the same way
    plots/losses.png                        loss curves
    config/config.resolved.yaml             the resolved run config

Inputs: the training set as an MLflow dataset (``dataset_entity``: name, digest = the
dataset's fingerprint, source = its folder, a profile of clips, tracks and mel config),
context ``training``: the runs list's Dataset column. Outputs: the finished generator
as a logged MLflow model (``tracking.models``): the runs list's Models column.

Params: the resolved config flattened (``model.g_width``, ``train.batch_size``, ``mel.n_mels``
...), ``optim.*`` (the model's effective optimiser settings), ``dataset.path``,
``dataset.fingerprint``, ``dataset.clips``, ``params.generator``, ``params.critic``.
Tags: ``technogan.model``, ``mlflow.source.git.commit``, ``technogan.status``
(running/finished/diverged/preempted) and ``technogan.failure_reason`` when it failed.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import subprocess
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

log = logging.getLogger(__name__)

DEFAULT_DB_NAME = "mlflow.db"
DEFAULT_SPOOL = "mlflow-spool"
ARTIFACT_DIR_NAME = "mlruns"
CHECKPOINT_DIR = "checkpoints"
DATASET_PARAM = "dataset.path"
MODEL_TAG = "technogan.model"
STATUS_TAG = "technogan.status"
REASON_TAG = "technogan.failure_reason"
LOCAL_DIR_TAG = "technogan.local_dir"
GIT_TAG = "mlflow.source.git.commit"
# MLflow's experiment kind tag (mlflow.utils.mlflow_tags.MLFLOW_EXPERIMENT_KIND is not public):
# "custom_model_development" is what the UI calls "Machine learning", the training view
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
DATASET_CONTEXT = "training"

# MLflow's per-request limits
MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_LEN = 6000
# errors that retrying cannot fix (e.g. re-logging a param with another value)
_PERMANENT_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                    "BAD_REQUEST", "INVALID_STATE"}


def tracking_uri(configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else ``configured``, else sqlite:///<cwd>/mlflow.db."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    if uri:
        return uri
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB_NAME}"


def _sqlite_db(uri: str) -> Path | None:
    """The database file of a SQLite store's URI, else None."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def _local_artifact_root(uri: str) -> str | None:
    """For a SQLite store, the artifact folder beside the database file (file URI)."""
    db = _sqlite_db(uri)
    return None if db is None else (db.parent / ARTIFACT_DIR_NAME).resolve().as_uri()


def _configure_http(timeout_s: float) -> None:
    # MLflow's own HTTP retries default to ~4 minutes per call; our worker retries itself,
    # so keep each call short. setdefault: an operator's explicit setting wins.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(timeout_s))))


_READY_SQLITE: set[str] = set()


def get_client(uri: str | None = None):
    """An MlflowClient for ``tracking_uri(uri)``; a SQLite store is created under a lock first."""
    from mlflow.tracking import MlflowClient

    target = tracking_uri(uri)
    db = _sqlite_db(target)
    if db is None or target in _READY_SQLITE:
        return MlflowClient(tracking_uri=target)
    with _sqlite_store_lock(db):
        client = MlflowClient(tracking_uri=target)  # creates (or migrates) the tracking store's tables
        client.search_registered_models(max_results=1)  # and the model registry's, on first use
    _READY_SQLITE.add(target)
    return client


@contextlib.contextmanager
def _sqlite_store_lock(db: Path):
    """One process at a time creates (or migrates) a SQLite store's tables. MLflow creates
    them on a store's first use without a lock: runs started together on a fresh
    ``mlflow.db`` failed with "table ... already exists" or an alembic version mismatch
    (4 of 4 tries with 4 processes). The lock file sits beside the database."""
    import fcntl

    try:
        lock = open(db.with_name(db.name + ".lock"), "a")
    except OSError:  # no folder, or not writable: MLflow's own error names the store
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def ensure_experiment(client, name: str) -> str:
    """The id of experiment ``name``, created (with the local artifact root for SQLite) if missing,
    and tagged a model-training experiment (``EXPERIMENT_KIND_TAG``) if it is not yet."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=_local_artifact_root(client.tracking_uri),
                                             tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception:
            exp = client.get_experiment_by_name(name)  # another process created it meanwhile
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in exp.tags:  # experiments made before the tag existed
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def ui_url(base: str, experiment_id: str | None = None) -> str:
    """The MLflow UI's runs page of an experiment at ``base`` (http://host:port), in its
    model-training view. MLflow 3.17's UI picks GenAI or model training per browser (the
    sidebar switch, remembered in local storage, GenAI by default), not from the experiment,
    unless the link says ``workflowType=machine_learning``."""
    base = base.rstrip("/")
    if experiment_id is None:
        return f"{base}/#/experiments?workflowType=machine_learning"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def dataset_entity(path: str | os.PathLike, fingerprint: str, profile: Mapping[str, Any],
                   name: str | None = None, mel_shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """The training set as MLflow dataset fields (``mlflow.entities.Dataset``'s keyword
    arguments, JSON-safe so they can be spooled): ``name`` (default: the folder's name),
    ``digest`` the dataset fingerprint, ``source`` where it lives (MLflow resolves the
    source type: a local folder, s3://, ...), ``profile`` (JSON of ``profile``) and, with
    ``mel_shape``, a tensor schema of the stored mels."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    where = str(path)
    with warnings.catch_warnings():  # MLflow 3.17 registers its local source twice and warns that it is ambiguous
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(where).resolve()) if "://" not in where else where)
    # MetaDataset is concrete at runtime (profile is a property returning None); mypy sees
    # the abstract base's declaration
    fields = MetaDataset(source, name=name or Path(where.rstrip("/")).name or "dataset",  # type: ignore[abstract]
                         digest=fingerprint).to_dict()
    fields["profile"] = json.dumps(dict(profile), sort_keys=True, default=str)
    if mel_shape is not None:
        import numpy as np
        from mlflow.types import Schema, TensorSpec

        mels = Schema([TensorSpec(np.dtype("float16"), (-1, *mel_shape), "mel")])
        fields["schema"] = json.dumps({"mlflow_tensorspec": {"features": mels.to_json(), "targets": None}})
    return {k: fields.get(k) for k in ("name", "digest", "source_type", "source", "schema", "profile")}


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """HEAD's commit of the repository around ``cwd`` (None outside git or before the first commit)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: nested config as MLflow params (strings, JSON for lists)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            out[key] = text[:_MAX_PARAM_LEN]
    return out


# ----------------------------------------------------------------------------- records


@dataclass
class _Record:
    kind: str  # metrics | params | tags | artifact | inputs | model | terminate (| create in the spool)
    data: Any

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "data": self.data}


def _send(client, run_id: str, records: list[_Record]) -> None:
    """Send records of one kind (already batched to MLflow's limits)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    kind = records[0].kind
    if kind == "metrics":
        metrics = [Metric(k, float(v), int(ts), int(step)) for r in records for (k, v, ts, step) in r.data]
        client.log_batch(run_id, metrics=metrics, synchronous=True)
    elif kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for r in records for k, v in r.data.items()], synchronous=True)
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for r in records for k, v in r.data.items()], synchronous=True)
    elif kind == "artifact":
        for r in records:
            path, artifact_path = r.data
            if not Path(path).is_file():
                log.warning("tracking: %s vanished before upload; skipped", path)
                continue
            client.log_artifact(run_id, path, artifact_path)
    elif kind == "inputs":
        inputs = [DatasetInput(Dataset(**r.data), tags=[InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXT)])
                  for r in records]
        try:
            client.log_inputs(run_id, datasets=inputs)
        except Exception as e:
            # Runs started together on one dataset race for its row: the store looks it up,
            # finds none, and the slower insert breaks the (experiment, name, digest) key,
            # refused as a bad request. The row exists now, so a second try links to it;
            # a record that is really bad fails again and is dropped as before.
            if not _is_permanent(e):
                raise
            client.log_inputs(run_id, datasets=inputs)
    elif kind == "model":
        from tracking.models import log_generator_model

        for r in records:
            path, which = r.data
            if not Path(path).is_file():
                log.warning("tracking: %s vanished before it was logged as a model; skipped", path)
                continue
            log_generator_model(run_id, path, which, uri=client.tracking_uri)
    elif kind == "terminate":
        client.set_terminated(run_id, status=records[-1].data)
    else:
        raise ValueError(f"unknown record kind {kind!r}")


def _is_permanent(exc: BaseException) -> bool:
    code = getattr(exc, "error_code", None)
    return code in _PERMANENT_CODES


def _take_batch(queue: collections.deque) -> list[_Record]:
    """The longest prefix of ``queue`` of one kind that fits one MLflow request (not removed)."""
    first = queue[0]
    if first.kind in ("artifact", "terminate", "inputs", "model"):
        return [first]
    limit = MAX_METRICS_PER_BATCH if first.kind == "metrics" else _MAX_PARAMS_PER_BATCH
    batch: list[_Record] = []
    size = 0
    for r in queue:
        n = len(r.data)
        if r.kind != first.kind or (batch and size + n > limit):
            break
        batch.append(r)
        size += n
    return batch


def _split_params(params: dict[str, str]) -> list[dict[str, str]]:
    items = list(params.items())
    return [dict(items[i:i + _MAX_PARAMS_PER_BATCH]) for i in range(0, len(items), _MAX_PARAMS_PER_BATCH)]


def _create_run(client, pending: Mapping[str, Any]) -> str:
    """Create the run a ``create`` record describes; returns its id."""
    exp_id = ensure_experiment(client, pending["experiment"])
    run = client.create_run(exp_id, start_time=pending.get("start_time"), tags=dict(pending.get("tags") or {}),
                            run_name=pending.get("run_name"))
    return run.info.run_id


def _is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


class TrackedRun:
    """One MLflow run fed from a background thread. Create with ``TrackedRun.start``.

    ``run_id`` is None while the run waits for an unreachable server to be created
    (``pending``); ``key`` names it either way (local folders, the spool file)."""

    def __init__(self, client, run_id: str | None, *, spool_dir: Path, max_backoff_s: float = 30.0,
                 flush_timeout_s: float = 60.0, batch_interval_s: float = 1.0,
                 pending: Mapping[str, Any] | None = None):
        if run_id is not None and pending is None:
            self.key, self.pending_create = run_id, None
        elif run_id is None and pending is not None:
            self.key, self.pending_create = str(pending["key"]), dict(pending)
        else:
            raise ValueError("a TrackedRun needs exactly one of run_id and pending")
        self.client = client
        self.run_id = run_id
        self.uri = client.tracking_uri
        self.spool_dir = Path(spool_dir)
        self.max_backoff_s = max_backoff_s
        self.flush_timeout_s = flush_timeout_s
        self.batch_interval_s = batch_interval_s
        self._queue: collections.deque[_Record] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._failing_since: float | None = None
        self.sent = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._work, name=f"mlflow-{self.key[:16]}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ construction

    @classmethod
    def start(cls, experiment: str, run_name: str | None = None, *, tags: Mapping[str, str] | None = None,
              uri: str | None = None, run_id: str | None = None, spool_dir: str | os.PathLike | None = None,
              request_timeout_s: float = 10.0, max_backoff_s: float = 30.0, start_timeout_s: float = 60.0,
              flush_timeout_s: float = 60.0, batch_interval_s: float = 1.0) -> "TrackedRun":
        """Create (or, with ``run_id``, reopen) a run, retrying for up to ``start_timeout_s``.

        A tracking server (http/https) that stays unreachable does not stop the caller:
        the run comes back *pending* (``run_id`` None) and is created by the sender once
        the server answers, or from the spool by a later run / ``flush_spool``. Raises
        ``pipeline.errors.UserError`` naming the URI when the store refuses the request
        (a permanent error), when a local store (SQLite, file) is unusable, or when the
        run to reopen cannot be reached: those are setup mistakes, not blips.
        """
        from pipeline.errors import UserError

        _configure_http(request_timeout_s)
        try:
            client = get_client(uri)
        except Exception as e:  # a local store MLflow cannot even open (its folder is a file, ...)
            raise UserError(f"MLflow tracking store {tracking_uri(uri)} unusable: {e}") from e
        spool = Path(spool_dir) if spool_dir else Path.cwd() / DEFAULT_SPOOL
        deadline = time.monotonic() + start_timeout_s
        delay = 0.5
        pending = {"key": f"pending-{uuid.uuid4().hex}", "experiment": experiment, "run_name": run_name,
                   "tags": {k: str(v) for k, v in (tags or {}).items()}, "start_time": int(time.time() * 1000)}
        while True:
            try:
                if run_id is None:
                    rid = _create_run(client, pending)
                else:
                    client.get_run(run_id)
                    client.update_run(run_id, status="RUNNING")
                    rid = run_id
                break
            except Exception as e:
                out_of_time = time.monotonic() + delay > deadline
                if _is_permanent(e) or (out_of_time and not _is_server(client.tracking_uri)):
                    raise UserError(f"MLflow tracking store {client.tracking_uri} unusable: {e}") from e
                if out_of_time:
                    # a server that is down must not stop training (README, Tracking): queue
                    log.warning("tracking: %s unreachable for %.0f s (%s); training goes on without it: %s, "
                                "records queue meanwhile (spooled to %s if it never answers)",
                                client.tracking_uri, start_timeout_s, type(e).__name__,
                                f"run {run_id} is continued" if run_id else "the run is created",
                                spool)
                    return cls(client, run_id, spool_dir=spool, max_backoff_s=max_backoff_s,
                               flush_timeout_s=flush_timeout_s, batch_interval_s=batch_interval_s,
                               pending=None if run_id else pending)
                log.warning("tracking: %s unreachable (%s); retrying in %.1f s", client.tracking_uri,
                            type(e).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, max_backoff_s)
        try:
            flush_spool(spool, uri=uri)
        except Exception as e:  # an old spool must never stop a new run
            log.warning("tracking: could not replay the spool in %s: %s", spool, e)
        return cls(client, rid, spool_dir=spool, max_backoff_s=max_backoff_s, flush_timeout_s=flush_timeout_s,
                   batch_interval_s=batch_interval_s)

    # ------------------------------------------------------------------ logging (never blocks)

    def _put(self, record: _Record) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("run already finished")
            self._queue.append(record)
            self._cond.notify()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Params (nested mappings are flattened with dots)."""
        for chunk in _split_params(flatten(params)):
            self._put(_Record("params", chunk))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        data = [(k, float(v), ts, int(step)) for k, v in metrics.items()]
        if data:
            self._put(_Record("metrics", data))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._put(_Record("tags", {k: str(v) for k, v in tags.items()}))

    def log_artifact(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Upload a file (read at send time, so the newest version of an overwritten file goes)."""
        self._put(_Record("artifact", [str(Path(local_path).resolve()), artifact_path]))

    def log_dataset(self, entity: Mapping[str, Any]) -> None:
        """The run's training set (``dataset_entity``'s fields) as an MLflow dataset input."""
        self._put(_Record("inputs", dict(entity)))

    def log_generator_model(self, checkpoint: str | os.PathLike, which: str = "latest") -> None:
        """Log the generator checkpoint (read at send time) as the run's MLflow model
        (``tracking.models.log_generator_model``)."""
        self._put(_Record("model", [str(Path(checkpoint).resolve()), str(which)]))

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    # ------------------------------------------------------------------ the sender

    def _work(self) -> None:
        delay = 0.5
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                batch = _take_batch(self._queue)
            try:
                if self.run_id is None:
                    assert self.pending_create is not None  # a run without an id always has its create record
                    try:
                        self.run_id = _create_run(self.client, self.pending_create)
                    except Exception as e:  # never dropped: retried, else spooled with its create record
                        raise RuntimeError(f"cannot create the run yet: {e}") from e
                    log.warning("tracking: %s answers; created run %s for %s, sending the queued records",
                                self.uri, self.run_id, self.key)
                _send(self.client, self.run_id, batch)
            except Exception as e:
                if _is_permanent(e):
                    self._send_one_by_one(batch, e)
                    continue
                self.failures += 1
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("tracking: %s unreachable (%s); training goes on, records are queued",
                                self.uri, str(e).splitlines()[0][:200])
                with self._cond:
                    if self._closing and time.monotonic() >= self._close_deadline:
                        return
                    self._cond.wait(timeout=delay)
                delay = min(delay * 2, self.max_backoff_s)
                continue
            if self._failing_since is not None:
                log.warning("tracking: %s reachable again after %.0f s; sending the queued records", self.uri,
                            time.monotonic() - self._failing_since)
                self._failing_since = None
            delay = 0.5
            self.sent += len(batch)
            self._drop(batch)
            # let records gather for a while: one request a second costs the training loop
            # (same cores, same GIL) far less than one a step
            pause_until = time.monotonic() + self.batch_interval_s
            with self._cond:
                while not self._closing and time.monotonic() < pause_until:
                    self._cond.wait(timeout=max(0.0, pause_until - time.monotonic()))

    def _send_one_by_one(self, batch: list[_Record], error: BaseException) -> None:
        """A batch the store refused: send its records alone so one bad record (a param
        re-logged with another value) costs only itself."""
        if len(batch) == 1:
            log.warning("tracking: dropped a %s record the server refused: %s", batch[0].kind, error)
        else:
            assert self.run_id is not None  # batches are sent only once the run exists
            for r in batch:
                try:
                    _send(self.client, self.run_id, [r])
                    self.sent += 1
                except Exception as e:
                    if not _is_permanent(e):
                        return  # the store went away meanwhile: the sender retries what is left
                    log.warning("tracking: dropped a %s record the server refused: %s", r.kind, e)
                self._drop([r])
            return
        self._drop(batch)

    def _drop(self, batch: list[_Record]) -> None:
        with self._cond:
            for _ in batch:
                if self._queue:  # finish() may have spooled and cleared it meanwhile
                    self._queue.popleft()
            self._cond.notify_all()

    # ------------------------------------------------------------------ the end

    def finish(self, status: str = "FINISHED", timeout_s: float | None = None) -> bool:
        """Mark the run FINISHED/FAILED/KILLED, wait up to ``timeout_s`` (default flush_timeout_s)
        for everything to be sent, spool the rest. True when nothing was left unsent."""
        timeout = self.flush_timeout_s if timeout_s is None else timeout_s
        with self._cond:
            if self._closing:
                return not self._queue
            self._queue.append(_Record("terminate", status))
            self._closing = True
            self._close_deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout=timeout + 1.0)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        if left:
            if self.run_id is None:  # the replay creates the run first
                left.insert(0, _Record("create", self.pending_create))
            path = spool_records(self.spool_dir, self.uri, self.run_id or self.key, left)
            log.warning("tracking: %d record(s) not sent to %s; spooled to %s (sent on the next run or by "
                        "tracking.runs.flush_spool)", len(left), self.uri, path)
            return False
        return True

    def __enter__(self) -> "TrackedRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("FINISHED" if exc_type is None else "FAILED")


# ----------------------------------------------------------------------------- the spool


def spool_records(spool_dir: Path, uri: str, run_id: str, records: Iterable[_Record]) -> Path:
    """Append ``records`` to ``<spool_dir>/<run_id>.jsonl`` (one JSON object a line, with the URI)."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    path = spool_dir / f"{run_id}.jsonl"
    with open(path, "a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"uri": uri, "run_id": run_id, **r.to_json()}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return path


def flush_spool(spool_dir: str | os.PathLike | None = None, uri: str | None = None) -> int:
    """Send every spooled record whose URI is ``tracking_uri(uri)``; returns how many were sent.
    A ``create`` record (a run that never reached the server) creates the run first and the
    file's later records go to it. A file is removed only once all its records went through."""
    from pipeline.fsutil import atomic_write_text

    spool = Path(spool_dir) if spool_dir else Path.cwd() / DEFAULT_SPOOL
    if not spool.is_dir():
        return 0
    target = tracking_uri(uri)
    client = None
    sent = 0
    for path in sorted(spool.glob("*.jsonl")):
        lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        mine = [x for x in lines if x["uri"] == target]
        if not mine:
            continue
        client = client or get_client(target)
        done = 0
        created: dict[str, str] = {}  # local key -> the run id it got
        for x in mine:
            try:
                if x["kind"] == "create":
                    created[x["run_id"]] = _create_run(client, x["data"])
                else:
                    _send(client, created.get(x["run_id"], x["run_id"]), [_Record(x["kind"], x["data"])])
            except Exception as e:
                if not _is_permanent(e):
                    break
            done += 1
        sent += done
        rest = [x for x in lines if x["uri"] != target] + [
            {**x, "run_id": created.get(x["run_id"], x["run_id"])} for x in mine[done:]]
        if rest:
            atomic_write_text(path, "".join(json.dumps(x) + "\n" for x in rest))
        else:
            path.unlink()
        log.info("tracking: replayed %d spooled record(s) from %s", done, path)
    return sent


# ----------------------------------------------------------------------------- writing to a finished run


def log_files(run_id: str, files: Iterable[tuple[str | os.PathLike, str | None]], uri: str | None = None) -> None:
    """Upload (local path, artifact folder) pairs to a run, synchronously (evaluation, promotion);
    folder None puts the file at the top of the run's artifacts."""
    client = get_client(uri)
    for local, folder in files:
        client.log_artifact(run_id, str(local), folder)


# ----------------------------------------------------------------------------- reading runs back


def run_params(run_id: str, uri: str | None = None) -> dict[str, str]:
    return dict(get_client(uri).get_run(run_id).data.params)


def run_dataset(run_id: str, uri: str | None = None) -> str:
    """The dataset folder a training run used (its ``dataset.path`` param)."""
    from pipeline.errors import UserError

    params = run_params(run_id, uri)
    if DATASET_PARAM not in params:
        raise UserError(f"run {run_id} has no {DATASET_PARAM!r} param (not a technogan training run?)")
    return params[DATASET_PARAM]


def checkpoint_artifact_path(which: str | int = "latest") -> str:
    """``checkpoints/generator-latest.pt`` or, for an epoch number N, ``checkpoints/generator-epoch-N.pt``."""
    name = f"epoch-{which}" if isinstance(which, int) or str(which).isdigit() else str(which)
    return f"{CHECKPOINT_DIR}/generator-{name}.pt"


def download_checkpoint(run_id: str, which: str | int = "latest", dst: str | os.PathLike | None = None,
                        uri: str | None = None) -> Path:
    """A local path to the run's generator checkpoint (``which``: "latest" or an epoch number).

    Downloads from the run's artifacts; if that fails but the training machine's local
    copy (tag ``technogan.local_dir``) exists here, returns that instead."""
    import mlflow.artifacts

    from pipeline.errors import UserError

    artifact = checkpoint_artifact_path(which)
    target = tracking_uri(uri)
    try:
        dst_dir = Path(dst) if dst else None
        if dst_dir:
            dst_dir.mkdir(parents=True, exist_ok=True)
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact,
                                                    dst_path=str(dst_dir) if dst_dir else None, tracking_uri=target)
        return Path(local)
    except Exception as e:
        try:
            local_dir = get_client(target).get_run(run_id).data.tags.get(LOCAL_DIR_TAG)
        except Exception:
            local_dir = None
        if local_dir:
            candidate = Path(local_dir) / Path(artifact).name
            if candidate.is_file():
                log.warning("tracking: %s not downloadable (%s); using the local copy %s", artifact, e, candidate)
                return candidate
        raise UserError(f"run {run_id}: cannot fetch {artifact} from {target}: {e}") from e
