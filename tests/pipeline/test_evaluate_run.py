"""`technogan evaluate` end to end: a run in a real MLflow store, scored against the
small dataset; metrics, reports and the encoder land on the run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.cli import main as cli_main
from pipeline.config import EvaluateConfig, ListenConfig
from pipeline.errors import UserError
from pipeline.evaluate.evaluate import BASELINE_PREFIX, CEILING_PREFIX, PREFIX, STD_PREFIX, evaluate_run
from tests.tracking.eval_runs import artifacts, make_run, store_uri
from tracking.evaluation import already_evaluated
from tracking.runs import get_client

FAST = dict(n=64, encoder_steps=30, kmeans_k=4, kid_subsets=5, kid_subset_size=16, batch_size=64, seeds=2,
            render_iterations=2)
NO_PAGE = ListenConfig(enabled=False)  # listen.html has its own tests (tests/pipeline/test_listen.py)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("encoders")  # shared: the encoder is trained once for the module


def test_metrics_appear_on_the_mlflow_run(tmp_path, small_dataset, encoder_dir):
    uri = store_uri(tmp_path)
    rid = make_run(uri, "eval-test", tmp_path, dataset=small_dataset, epochs=2)
    cfg = EvaluateConfig(**FAST, listen=NO_PAGE, encoder_dir=str(encoder_dir))
    report = evaluate_run(rid, "all", cfg=cfg, uri=uri, out=tmp_path / "reports", progress=False)

    client = get_client(uri)
    run = client.get_run(rid)
    logged = run.data.metrics
    for key, value in report.metrics.items():
        assert logged[PREFIX + key] == pytest.approx(value), key
        assert BASELINE_PREFIX + key in logged, key
        # two seeds: the mean above, the spread and the renderer ceiling beside it
        assert logged[STD_PREFIX + key] == pytest.approx(report.metrics_std[key]), key
        assert logged[CEILING_PREFIX + key] == pytest.approx(report.ceiling[key]), key
    assert run.data.tags["technogan.eval.seeds"] == "2"
    assert already_evaluated(rid, "eval.fd_learned", 64, uri, seeds=2)
    assert not already_evaluated(rid, "eval.fd_learned", 64, uri, seeds=3)  # other draws: score again
    assert run.data.tags["technogan.eval.ndb_clips"] == "18"  # capped at the held-out half
    for key in ("fd_hand", "fd_learned", "kid_hand", "kid_learned", "inception_score", "ndb_k", "ndb_js",
                "memo_nn_ratio", "beat_share", "tempo_js"):
        assert PREFIX + key in logged, key
    # the baseline is real-vs-real: the memorisation ratio of real held-out clips is 1 by construction
    assert logged[BASELINE_PREFIX + "memo_nn_ratio"] == pytest.approx(1.0)
    # an untrained generator is far from real data, real data is close to itself
    assert logged["eval.fd_hand"] > 3 * logged["eval.baseline.fd_hand"]
    assert logged["eval.fd_learned"] > logged["eval.baseline.fd_learned"]

    # --checkpoint all: one value per checkpoint, at step = epoch, latest logged last
    history = client.get_metric_history(rid, "eval.fd_learned")
    assert sorted(m.step for m in history) == [1, 2, 2]  # epoch-1, epoch-2, latest (= epoch 2)
    assert run.data.tags["technogan.eval.checkpoint"] == "latest"

    files = artifacts(client, rid, "evaluation")
    assert {"evaluation/latest/report.json", "evaluation/latest/report.md", "evaluation/epoch-1/report.json",
            "evaluation/epoch-2/report.md"} <= files
    assert "listen.html" not in artifacts(client, rid)  # evaluate.listen.enabled false: no page
    encoder_files = [f for f in files if f.startswith("evaluation/encoder/encoder-")]
    assert len(encoder_files) == 1
    # every score names its encoder
    assert run.data.tags["technogan.eval.encoder"] == report.info["encoder_id"]
    saved = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert saved["info"]["encoder_id"] == report.info["encoder_id"]
    assert saved["info"]["n_generated"] == 64 and saved["info"]["n_ref"] == 18
    assert saved["info"]["seeds"] == [0, 1] and len(saved["per_seed"]["generated"]) == 2
    assert saved["metrics_std"]["fd_learned"] == pytest.approx(report.metrics_std["fd_learned"])
    assert "| fd_learned |" in (tmp_path / "reports" / "report.md").read_text()


def test_evaluation_is_reproducible_and_reuses_the_encoder(tmp_path, small_dataset, encoder_dir):
    uri = store_uri(tmp_path)
    rid = make_run(uri, "eval-test", tmp_path, dataset=small_dataset)
    cfg = EvaluateConfig(**FAST, listen=NO_PAGE, encoder_dir=str(encoder_dir))
    a = evaluate_run(rid, "latest", cfg=cfg, uri=uri, progress=False)
    b = evaluate_run(rid, "latest", cfg=cfg, uri=uri, progress=False)
    assert a.info["encoder_id"] == b.info["encoder_id"]
    assert a.metrics == pytest.approx(b.metrics)
    assert len(list(encoder_dir.glob("encoder-*.pt"))) == 1


def test_cli_evaluate_and_its_errors(tmp_path, small_dataset, encoder_dir, monkeypatch, capsys):
    uri = store_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    rid = make_run(uri, "eval-test", tmp_path, dataset=tmp_path / "moved-away")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("evaluate:\n" + "".join(f"  {k}: {v}\n" for k, v in FAST.items())
                        + f"  encoder_dir: {encoder_dir}\n  listen: {{enabled: false}}\n")
    # the run's dataset is not here: the error says so and how to fix it
    assert cli_main(["evaluate", "--run-id", rid, "--config", str(cfg_file)]) == 2
    assert "--dataset" in capsys.readouterr().err
    assert cli_main(["evaluate", "--run-id", rid, "--config", str(cfg_file), "--dataset", str(small_dataset),
                     "--n", "32"]) == 0
    out = capsys.readouterr().out
    assert "fd_learned" in out and "real baseline" in out
    assert get_client(uri).get_run(rid).data.tags["technogan.eval.n"] == "32"
    # --seeds: one draw, so no spread to show or log
    assert cli_main(["evaluate", "--run-id", rid, "--config", str(cfg_file), "--dataset", str(small_dataset),
                     "--n", "32", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "x 1 seed(s)" in out and "±" not in out
    assert get_client(uri).get_run(rid).data.tags["technogan.eval.seeds"] == "1"
    with pytest.raises(UserError, match="latest, best or all"):
        evaluate_run(rid, "newest", dataset=small_dataset, cfg=EvaluateConfig(**FAST, listen=NO_PAGE), uri=uri)


def test_best_picks_the_checkpoint_with_the_best_selection_metric(tmp_path, small_dataset, encoder_dir):
    uri = store_uri(tmp_path)
    rid = make_run(uri, "eval-test", tmp_path, dataset=small_dataset, epochs=2)
    cfg = EvaluateConfig(**FAST, listen=NO_PAGE, encoder_dir=str(encoder_dir))
    report = evaluate_run(rid, "best", cfg=cfg, uri=uri, out=tmp_path / "r", progress=False)
    scored = {p.name: json.loads((p / "report.json").read_text())["metrics"]["fd_learned"]
              for p in (tmp_path / "r").iterdir() if p.is_dir()}
    assert set(scored) == {"epoch-1", "epoch-2", "latest"}
    assert report.metrics["fd_learned"] == pytest.approx(min(scored.values()))
    run = get_client(uri).get_run(rid)
    assert run.data.metrics["eval.fd_learned"] == pytest.approx(min(scored.values()))
    assert scored[run.data.tags["technogan.eval.checkpoint"]] == pytest.approx(min(scored.values()))
    assert np.isfinite(list(scored.values())).all()
