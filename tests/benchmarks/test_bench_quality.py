"""bench_quality's --variant parsing: a table of options is only as good as the overrides it reads."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_quality import contender_config, parse_variant  # noqa: E402


def test_a_variant_is_its_base_with_yaml_typed_overrides():
    name, base, overrides = parse_variant("fast=laptop:model.g_width=8, train.lr_g=4e-4,train.augment=fixed,model.minibatch_std=true")
    assert (name, base) == ("fast", "laptop")
    assert overrides == {"model.g_width": 8, "train.lr_g": 4e-4, "train.augment": "fixed", "model.minibatch_std": True}
    config = contender_config(name, Path("/data/x"), Path("/out"), 10.0, 1, (base, overrides))
    assert (config.model.g_width, config.train.lr_g, config.train.augment, config.model.minibatch_std) == \
        (8, 4e-4, "fixed", True)
    assert (config.train.max_minutes, config.train.dataset) == (10.0, "/data/x")  # the bench's own settings stay


@pytest.mark.parametrize("text, says", [
    ("laptop:model.g_width=8", "expected NAME=BASE"),          # no name
    ("x=nope:model.g_width=8", "BASE one of"),                 # unknown base
    ("x=laptop:model.g_width", "is not key=value"),            # no value
])
def test_a_malformed_variant_is_refused_naming_it(text, says):
    with pytest.raises(ValueError, match=says):
        parse_variant(text)


def test_a_variant_without_overrides_is_its_base():
    assert parse_variant("again=study-dcgan2") == ("again", "study-dcgan2", {})


def test_a_bare_off_reaches_the_config_as_the_word():
    _, base, overrides = parse_variant("plain=laptop:train.augment=off")  # YAML 1.1 reads it as false
    assert contender_config("plain", Path("/d"), Path("/o"), 1.0, None, (base, overrides)).train.augment == "off"


def test_a_list_value_keeps_its_commas():
    _, base, overrides = parse_variant("sagan=laptop:train.betas=[0.0, 0.9],train.lr_d=4e-4")
    assert overrides == {"train.betas": [0.0, 0.9], "train.lr_d": 4e-4}
    assert contender_config("sagan", Path("/d"), Path("/o"), 1.0, None, (base, overrides)).train.betas == (0.0, 0.9)


def test_rescore_without_a_finished_training_names_the_missing_file(tmp_path, capsys):
    from bench_quality import main

    with pytest.raises(SystemExit):
        main(["--rescore", "--dataset", str(tmp_path), "--out", str(tmp_path / "out")])
    assert f"{tmp_path / 'out' / 'trained.json'} does not exist" in capsys.readouterr().err


def test_rescore_names_a_contender_that_did_not_train(tmp_path, capsys):
    from bench_quality import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "trained.json").write_text('[{"name": "fast", "checkpoint": "x.pt"}]')
    with pytest.raises(SystemExit):  # fast is a variant of that run: known without --variant
        main(["--rescore", "--dataset", str(tmp_path), "--out", str(tmp_path / "out"), "--contenders", "fast,slow"])
    assert "trained.json has no slow" in capsys.readouterr().err


def test_a_recipe_that_is_not_a_contender_is_refused_before_training(tmp_path, capsys):
    from bench_quality import main

    with pytest.raises(SystemExit):
        main(["--dataset", str(tmp_path), "--out", str(tmp_path / "out"), "--contenders", "study-dcgan2"])
    assert "--recipe laptop: not among the contenders (study-dcgan2)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing started


def test_a_ratio_is_only_given_against_a_positive_baseline(tmp_path, monkeypatch):
    import bench_quality
    from types import SimpleNamespace

    report = SimpleNamespace(metrics={"fd_learned": 7.2, "kid_learned": 0.8}, metrics_std={"fd_learned": 0.3},
                             baseline={"fd_learned": 0.72, "kid_learned": -0.18}, ceiling={}, info={})
    monkeypatch.setattr("pipeline.evaluate.evaluate.evaluate_checkpoint", lambda *a, **k: (report, None))
    scored, _ = bench_quality.score({"checkpoint": "x.pt"}, tmp_path, 3, None)
    assert scored["metrics"]["fd_learned"]["ratio"] == 10.0
    assert scored["metrics"]["kid_learned"]["ratio"] is None and scored["metrics"]["kid_learned"]["mean"] == 0.8


def test_rescore_takes_every_contender_that_trained_and_checks_the_recipe_among_them(tmp_path, capsys):
    from bench_quality import main

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "trained.json").write_text('[{"name": "fast", "checkpoint": "x.pt"}]')
    with pytest.raises(SystemExit):  # no --contenders: all of trained.json, a variant name included
        main(["--rescore", "--dataset", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "--recipe laptop: not among the contenders (fast)" in err and "unknown contenders" not in err
