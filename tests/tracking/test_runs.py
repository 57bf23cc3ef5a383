"""tracking.runs against a real local SQLite store: logging, the spool, reading runs back."""

from __future__ import annotations

import json
import socket

import pytest

from pipeline.errors import UserError
from tracking import runs as tracking


@pytest.fixture
def uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracking.tracking_uri("http://configured:5000") == "http://configured:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert tracking.tracking_uri("http://configured:5000") == "http://env:5000"


def test_flatten_nested_config():
    flat = tracking.flatten({"model": {"name": "dcgan1", "betas": [0.5, 0.9]}, "seed": 0, "x": None, "e": {}})
    assert flat == {"model.name": "dcgan1", "model.betas": "[0.5, 0.9]", "seed": "0", "x": "null", "e": "{}"}


def test_a_run_logs_everything_and_keeps_artifacts_beside_the_db(tmp_path, uri):
    (tmp_path / "ck.pt").write_bytes(b"weights")
    run = tracking.TrackedRun.start("exp", "r1", uri=uri, tags={"technogan.model": "dcgan1"},
                                    spool_dir=tmp_path / "spool")
    run.log_params({"model": {"name": "dcgan1"}, "dataset": {"path": "/data/x"}})
    run.log_params({f"p{i}": i for i in range(250)})  # over MLflow's 100 params per request
    for step in range(1, 1201):  # over 1000 metrics per request once batched
        run.log_metrics({"d_loss": 1.0 / step}, step)
    run.log_artifact(tmp_path / "ck.pt", "checkpoints")
    run.set_tags({"technogan.status": "finished"})
    assert run.finish() is True
    client = tracking.get_client(uri)
    r = client.get_run(run.run_id)
    assert r.info.status == "FINISHED" and r.data.tags["technogan.status"] == "finished"
    assert r.data.params["model.name"] == "dcgan1" and r.data.params["p249"] == "249"
    assert len(client.get_metric_history(run.run_id, "d_loss")) == 1200
    assert tracking.run_dataset(run.run_id, uri) == "/data/x"
    # the SQLite store keeps its artifacts in mlruns/ beside the database
    assert r.info.artifact_uri.startswith((tmp_path / "mlruns").as_uri())
    assert [a.path for a in client.list_artifacts(run.run_id, "checkpoints")] == ["checkpoints/ck.pt"]
    assert not (tmp_path / "spool").exists() or not list((tmp_path / "spool").iterdir())
    with pytest.raises(RuntimeError):
        run.log_metrics({"late": 1.0}, 1)


def test_a_param_the_store_refuses_is_dropped_not_retried_forever(tmp_path, uri):
    run = tracking.TrackedRun.start("exp", uri=uri, spool_dir=tmp_path / "spool")
    run.log_params({"a": 1})
    run.log_params({"a": 2})  # MLflow params are immutable
    run.log_metrics({"m": 1.0}, 1)
    assert run.finish(timeout_s=30) is True
    r = tracking.get_client(uri).get_run(run.run_id)
    assert r.data.params["a"] == "1" and r.data.metrics["m"] == 1.0


def test_unsent_records_are_spooled_and_replayed(tmp_path, uri, monkeypatch):
    run = tracking.TrackedRun.start("exp", uri=uri, spool_dir=tmp_path / "spool", max_backoff_s=0.2)
    (tmp_path / "ck.pt").write_bytes(b"weights")

    def down(*a, **k):
        raise ConnectionError("server down")

    monkeypatch.setattr(tracking, "_send", down)  # the store goes away
    run.log_metrics({"g_loss": 0.5}, 7)
    run.log_artifact(tmp_path / "ck.pt", "checkpoints")
    assert run.finish(timeout_s=1.0) is False
    spooled = tmp_path / "spool" / f"{run.run_id}.jsonl"
    kinds = [json.loads(line)["kind"] for line in spooled.read_text().splitlines()]
    assert kinds == ["metrics", "artifact", "terminate"]
    assert tracking.flush_spool(tmp_path / "spool", uri) == 0  # still down: nothing lost, file kept
    assert spooled.is_file()
    monkeypatch.undo()  # the store is back
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.flush_spool(tmp_path / "spool", uri) == 3
    assert not spooled.exists()
    client = tracking.get_client(uri)
    r = client.get_run(run.run_id)
    assert r.data.metrics["g_loss"] == 0.5 and r.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.run_id, "checkpoints")] == ["checkpoints/ck.pt"]


def test_download_checkpoint_and_errors(tmp_path, uri):
    ck = tmp_path / "local" / "generator-latest.pt"
    ck.parent.mkdir()
    ck.write_bytes(b"gen")
    run = tracking.TrackedRun.start("exp", uri=uri, spool_dir=tmp_path / "spool")
    run.log_artifact(ck, tracking.CHECKPOINT_DIR)
    run.set_tags({tracking.LOCAL_DIR_TAG: str(ck.parent)})
    run.finish()
    got = tracking.download_checkpoint(run.run_id, uri=uri, dst=tmp_path / "dl")
    assert got.read_bytes() == b"gen" and (tmp_path / "dl") in got.parents
    assert tracking.checkpoint_artifact_path(3) == "checkpoints/generator-epoch-3.pt"
    with pytest.raises(UserError, match="generator-epoch-9"):
        tracking.download_checkpoint(run.run_id, 9, uri=uri, dst=tmp_path / "dl2")
    with pytest.raises(UserError, match="dataset.path"):
        tracking.run_dataset(run.run_id, uri)


def test_an_unusable_local_store_is_a_user_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "a-file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    with pytest.raises(UserError, match="a-file"):
        tracking.TrackedRun.start("exp", uri=uri, start_timeout_s=0.5, spool_dir=tmp_path)


def test_a_server_that_does_not_answer_does_not_stop_the_caller(tmp_path, monkeypatch):
    """Issue 12, item 14: the run waits for the server instead of the training waiting for it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # a port bound but never listened on: connections are refused for as long as we hold it
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{held.getsockname()[1]}"
        _pending_run_is_spooled_with_its_create_record(tmp_path, uri)


def _pending_run_is_spooled_with_its_create_record(tmp_path, uri):
    run = tracking.TrackedRun.start("exp", uri=uri, start_timeout_s=0.5, spool_dir=tmp_path,
                                    request_timeout_s=1, max_backoff_s=0.2)
    assert run.run_id is None and run.key.startswith("pending-")
    run.log_metrics({"d_loss": 1.0}, 1)
    assert run.finish(timeout_s=0.5) is False
    lines = [json.loads(x) for x in (tmp_path / f"{run.key}.jsonl").read_text().splitlines()]
    assert [x["kind"] for x in lines] == ["create", "metrics", "terminate"]
    assert lines[0]["data"]["experiment"] == "exp" and lines[0]["uri"] == uri


def test_the_dataset_is_a_run_input_with_the_fingerprint_as_digest_and_is_spoolable(tmp_path, uri, monkeypatch):
    data = tmp_path / "mels"
    data.mkdir()
    entity = tracking.dataset_entity(data, "0123abcd", {"clips": 36, "tracks": 6}, mel_shape=(128, 216))
    assert json.loads(json.dumps(entity)) == entity  # spool records are JSON
    run = tracking.TrackedRun.start("exp", "r", uri=uri, spool_dir=tmp_path / "spool")
    run.log_dataset(entity)
    assert run.finish() is True
    [inp] = tracking.get_client(uri).get_run(run.run_id).inputs.dataset_inputs
    ds = inp.dataset
    assert (ds.name, ds.digest, ds.source_type) == ("mels", "0123abcd", "local")
    assert json.loads(ds.source) == {"uri": str(data.resolve())}
    assert json.loads(ds.profile) == {"clips": 36, "tracks": 6}
    assert json.loads(json.loads(ds.schema)["mlflow_tensorspec"]["features"])[0]["tensor-spec"]["shape"] == [
        -1, 128, 216]
    assert {(t.key, t.value) for t in inp.tags} == {("mlflow.data.context", "training")}

    # while the store is down the dataset input waits in the spool like any record, then goes
    run2 = tracking.TrackedRun.start("exp", "r2", uri=uri, spool_dir=tmp_path / "spool", max_backoff_s=0.1)
    monkeypatch.setattr(tracking, "_send", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("down")))
    run2.log_dataset(entity)
    assert run2.finish(timeout_s=0.5) is False
    monkeypatch.undo()
    assert tracking.flush_spool(tmp_path / "spool", uri) >= 1
    [inp2] = tracking.get_client(uri).get_run(run2.run_id).inputs.dataset_inputs
    assert inp2.dataset.digest == "0123abcd"


def test_experiments_are_model_training_experiments_and_ui_links_say_so(uri):
    client = tracking.get_client(uri)
    new = tracking.ensure_experiment(client, "fresh")
    old = client.create_experiment("made-before")  # an experiment from before the tag
    assert tracking.ensure_experiment(client, "made-before") == old
    for exp_id in (new, old):
        assert client.get_experiment(exp_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert tracking.ui_url("http://127.0.0.1:5000/", new) == (
        f"http://127.0.0.1:5000/#/experiments/{new}/runs?workflowType=machine_learning")


def test_two_runs_racing_to_create_their_dataset_both_get_it_as_input(tmp_path, uri):
    """The store looks the dataset up, finds none and inserts it; a run started at the same
    moment may insert it in between (seen with bench_quality --parallel). Emulated exactly:
    another connection inserts the row just before this run's insert reaches the database."""
    import sqlite3
    import uuid

    from sqlalchemy import event

    entity = tracking.dataset_entity(tmp_path, "feedbeef", {"clips": 1}, mel_shape=(128, 216))
    client = tracking.get_client(uri)
    first = tracking.TrackedRun.start("exp", "first", uri=uri, spool_dir=tmp_path / "spool")
    second = tracking.TrackedRun.start("exp", "second", uri=uri, spool_dir=tmp_path / "spool")
    engine = client._tracking_client.store.engine
    raced = []

    def the_other_run_inserts_first(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT INTO DATASETS") and not raced:
            raced.append(True)
            with sqlite3.connect(engine.url.database) as other:
                other.execute(statement, (uuid.uuid4().hex, *parameters[1:]))

    event.listen(engine, "before_cursor_execute", the_other_run_inserts_first)
    try:
        tracking._send(client, second.run_id, [tracking._Record("inputs", entity)])
    finally:
        event.remove(engine, "before_cursor_execute", the_other_run_inserts_first)
    assert raced  # the race happened: the store's first insert broke the unique key
    [inp] = client.get_run(second.run_id).inputs.dataset_inputs
    assert inp.dataset.digest == "feedbeef"
    first.log_dataset(entity)
    assert first.finish() is True and second.finish() is True
    assert client.get_run(first.run_id).inputs.dataset_inputs[0].dataset.digest == "feedbeef"


def _first_use_of_the_store(uri: str, start) -> str:
    from tracking import runs

    start.wait()  # every process has imported MLflow: now they touch the fresh store at once
    try:
        runs.ensure_experiment(runs.get_client(uri), "together")
        return "ok"
    except Exception as e:  # noqa: BLE001 - the test reports what each process met
        return f"{type(e).__name__}: {str(e)[:120]}"


@pytest.mark.slow
def test_processes_that_create_a_fresh_sqlite_store_together_all_get_it(tmp_path):
    """MLflow creates a SQLite store's tables on first use without a lock: without ours,
    4 processes doing so together failed with "table ... already exists" 4 times in 4."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    (tmp_path / "fresh").mkdir()
    with ctx.Manager() as manager:
        start = manager.Barrier(4, timeout=300)
        with ctx.Pool(4, initializer=__import__, initargs=("mlflow",)) as pool:
            results = pool.starmap(_first_use_of_the_store, [(uri, start)] * 4, chunksize=1)
    assert results == ["ok"] * 4
    assert [e.name for e in tracking.get_client(uri).search_experiments()].count("together") == 1
