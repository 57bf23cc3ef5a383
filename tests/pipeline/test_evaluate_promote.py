"""`technogan promote`: the best finished run by the selection metric becomes the
champion in a real (temporary) MLflow registry."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main as cli_main
from pipeline.errors import UserError
from pipeline.evaluate.promote import promote
from tests.tracking.eval_runs import make_run, store_uri
from tracking import registry
from tracking.runs import get_client


@pytest.fixture
def runs(tmp_path):
    """Three finished runs with known scores, and an unfinished one that would win."""
    uri = store_uri(tmp_path)
    scores = {"dcgan1": (5.0, 3.0), "dcgan2": (2.0, 1.5), "wgan-gp": (9.0, 6.0)}  # (fd_learned, inception_score)
    ids = {m: make_run(uri, "promo", tmp_path, model=m, name=m, metrics={
        "eval.fd_learned": fd, "eval.inception_score": is_, "eval.baseline.fd_learned": 0.5,
        "eval.baseline.inception_score": 6.5, "epoch": 3.0}) for m, (fd, is_) in scores.items()}
    ids["running"] = make_run(uri, "promo", tmp_path, model="wgan-wc", metrics={"eval.fd_learned": 0.1},
                              status="RUNNING")
    return uri, ids


def test_promote_picks_the_lowest_fd_and_sets_the_champion_alias(runs, tmp_path):
    uri, ids = runs
    result = promote("promo", "eval.fd_learned", "gen-test", "champion", uri, out=tmp_path / "p")
    assert result.winner.run_id == ids["dcgan2"]  # lowest FD among finished runs; the RUNNING one is ignored
    mv = registry.resolve_alias("champion", "gen-test", uri)
    assert mv.run_id == ids["dcgan2"] and str(mv.version) == result.version
    # the version's source is the run's logged generator model (a pyfunc holding the checkpoint)
    from tracking.models import run_model
    model = run_model(ids["dcgan2"], "latest", uri)
    assert model is not None and mv.source == model.artifact_location
    assert mv.tags["selection_metric"] == "eval.fd_learned" and float(mv.tags["selection_value"]) == 2.0
    # the table lists every finished run, best first, then the real-vs-real baseline
    names = [row[0] for row in result.body]
    assert names == ["dcgan2", "dcgan1", "wgan-gp", "(real vs real)"]
    assert result.header[:6] == ["run", "run id", "model", "samples", "epochs", "fd_learned"]
    # two runs of one name are told apart by their ids
    assert [row[1] for row in result.body[:3]] == [ids[n][:8] for n in ("dcgan2", "dcgan1", "wgan-gp")]
    data = json.loads((tmp_path / "p" / "comparison.json").read_text())
    assert data["winner"] == ids["dcgan2"] and data["alias"] == "champion"
    # and it is logged to the winning run
    arts = {a.path for a in get_client(uri).list_artifacts(ids["dcgan2"], "promotion")}
    assert arts == {"promotion/comparison.md", "promotion/comparison.json"}
    # the champion's checkpoint can be fetched back
    path, _ = registry.champion_checkpoint(tmp_path / "dl", "gen-test", "champion", uri)
    from pipeline.checkpoint import read_meta

    assert read_meta(path)["model"] == "dcgan2"


def test_promote_respects_the_metric_direction_and_moves_the_alias(runs):
    uri, ids = runs
    first = promote("promo", "eval.fd_learned", "gen-test", "champion", uri)
    second = promote("promo", "eval.inception_score", "gen-test", "champion", uri)  # higher is better
    assert second.winner.run_id == ids["wgan-gp"]
    assert registry.resolve_alias("champion", "gen-test", uri).run_id == ids["wgan-gp"]
    assert int(second.version) == int(first.version) + 1
    # promoting a run that already has a version reuses it
    again = promote("promo", "eval.fd_learned", "gen-test", "champion", uri)
    assert again.version == first.version
    assert registry.resolve_alias("champion", "gen-test", uri).run_id == ids["dcgan2"]


def test_promote_errors_name_what_is_missing(runs, tmp_path):
    uri, _ = runs
    with pytest.raises(UserError, match="eval.nothing"):
        promote("promo", "eval.nothing", "gen-test", "champion", uri)
    with pytest.raises(UserError, match="no finished runs"):
        promote("empty-experiment", "eval.fd_learned", "gen-test", "champion", uri)


def test_cli_promote_prints_the_table(runs, monkeypatch, capsys, tmp_path):
    uri, ids = runs
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert cli_main(["promote", "--experiment", "promo"]) == 0
    out = capsys.readouterr().out
    assert "dcgan2" in out and "(real vs real)" in out and "@champion" in out
    assert registry.resolve_alias("champion", uri=uri).run_id == ids["dcgan2"]  # default name from config


def test_promote_ranks_on_the_seed_mean_breaks_ties_on_the_spread_and_shows_both(tmp_path):
    uri = store_uri(tmp_path)
    runs = {  # name: (mean fd_learned, its std over seeds)
        "steady": (2.5, 0.1), "lucky-mean": (2.0, 3.0), "tie-wide": (3.0, 0.8), "tie-narrow": (3.0, 0.2)}
    ids = {name: make_run(uri, "seeds", tmp_path, name=name, metrics={
        "eval.fd_learned": mean, "eval.std.fd_learned": std, "eval.baseline.fd_learned": 0.5,
        "eval.ceiling.fd_learned": 0.9, "epoch": 1.0}) for name, (mean, std) in runs.items()}
    result = promote("seeds", "eval.fd_learned", "gen-seeds", "champion", uri)
    assert result.winner.run_id == ids["lucky-mean"]  # the lowest mean wins, whatever its spread
    names = [row[0] for row in result.body]
    assert names == ["lucky-mean", "steady", "tie-narrow", "tie-wide", "(real vs real)", "(real through audio)"]
    # std and ceiling keys are not metrics of their own in the table: they sit beside the mean and below
    assert result.header == ["run", "run id", "model", "samples", "epochs", "fd_learned"]
    assert result.body[0][5] == "2 ± 3" and result.body[1][5] == "2.5 ± 0.1"
    assert result.body[-2][5] == "0.5" and result.body[-1][5] == "0.9"
    assert result.table_json["runs"][0]["std"] == {"eval.fd_learned": 3.0}
    assert result.table_json["ceiling"] == {"fd_learned": "0.9"}


def test_a_champion_scored_by_its_best_checkpoint_stands_for_that_checkpoint(tmp_path):
    """evaluate scored the run's generator-best.pt: the registered version, the champion's
    download and the package all take that file, not the latest."""
    from serving.package import _from_alias
    from pipeline.checkpoint import read_meta
    from pipeline.config import load_config
    from tests.tracking.eval_runs import make_checkpoint

    uri = store_uri(tmp_path)
    rid = make_run(uri, "bestof", tmp_path, name="recipe", metrics={"eval.fd_learned": 1.0})
    best = make_checkpoint(tmp_path / "b" / "generator-best.pt", "dcgan1", 32, seed=7, epoch=1, run_id=rid)
    client = get_client(uri)
    client.log_artifact(rid, str(best), "checkpoints")
    client.set_tag(rid, "technogan.eval.checkpoint", "best")
    promote("bestof", "eval.fd_learned", "gen-best", "champion", uri)
    mv = registry.resolve_alias("champion", "gen-best", uri)
    assert mv.tags["checkpoint"] == "checkpoints/generator-best.pt" and registry.version_checkpoint(mv) == "best"
    path, _ = registry.champion_checkpoint(tmp_path / "dl", "gen-best", "champion", uri)
    assert path.name == "generator-best.pt" and path.read_bytes() == best.read_bytes()
    config = load_config(None, {"tracking.uri": uri, "evaluate.registry_model": "gen-best"})
    source = _from_alias("champion", tmp_path / "pkg", config)
    assert read_meta(source.checkpoint) == read_meta(best)
