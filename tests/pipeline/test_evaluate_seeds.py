"""`evaluate` over several latent seeds, NDB/K at a fixed clip count, and the renderer
ceiling (real held-out clips through Griffin-Lim and back), on the small synthetic set."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.checkpoint import load_generator
from pipeline.config import EvaluateConfig
from pipeline.evaluate import evaluate as E
from pipeline.evaluate import metrics as M
from pipeline.generate import generate_mels
from tests.tracking.eval_runs import make_checkpoint

FAST = dict(n=48, encoder_steps=30, kmeans_k=4, kid_subsets=5, kid_subset_size=16, batch_size=64,
            render_iterations=2, seeds=3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_dataset):
    """(config, real data with its ceiling, a tiny untrained generator at 32x32): prepared once."""
    tmp = tmp_path_factory.mktemp("seeds")
    cfg = EvaluateConfig(**FAST, encoder_dir=str(tmp / "enc"))
    real = E.prepare_real(small_dataset, 32, cfg, progress=False)
    generator, meta = load_generator(make_checkpoint(tmp / "g.pt", "dcgan1", 32))
    return cfg, real, generator, int(meta["latent_dim"])


def test_each_seed_is_its_own_draw_and_the_report_is_their_mean_and_std(setup):
    cfg, real, generator, zdim = setup
    drawn: dict[int, np.ndarray] = {}

    def draw(seed):
        drawn[seed] = generate_mels(generator, cfg.n, zdim, cfg.batch_size, seed)
        return drawn[seed]

    report = E.score_seeds(draw, E.latent_seeds(cfg), real, cfg)
    assert sorted(drawn) == [0, 1, 2] and report.info["seeds"] == [0, 1, 2]
    assert not np.allclose(drawn[0], drawn[1]) and not np.allclose(drawn[1], drawn[2])
    per = report.per_seed["generated"]
    assert len(per) == 3 and len({round(p["fd_learned"], 9) for p in per}) == 3  # three different scores
    for key in report.metrics:
        values = np.array([p[key] for p in per])
        assert report.metrics[key] == pytest.approx(values.mean(), nan_ok=True), key
        assert report.metrics_std[key] == pytest.approx(values.std(ddof=1), nan_ok=True), key
    for side, mean, std in (("baseline", report.baseline, report.baseline_std),
                            ("ceiling", report.ceiling, report.ceiling_std)):
        values = np.array([p["kid_learned"] for p in report.per_seed[side]])
        assert mean["kid_learned"] == pytest.approx(values.mean()) and std["kid_learned"] == pytest.approx(
            values.std(ddof=1))
    logged = report.mlflow_metrics()
    assert logged["eval.fd_learned"] == pytest.approx(report.metrics["fd_learned"])
    assert logged["eval.std.fd_learned"] == pytest.approx(report.metrics_std["fd_learned"])
    assert report.metrics_std["fd_learned"] > 0
    assert logged["eval.baseline.fd_learned"] == pytest.approx(report.baseline["fd_learned"])
    assert logged["eval.ceiling.fd_learned"] == pytest.approx(report.ceiling["fd_learned"])
    md = report.to_markdown()
    assert f"| fd_learned | {report.metrics['fd_learned']:.4g} ± {report.metrics_std['fd_learned']:.2g} |" in md
    assert "real B through audio" in md and "3 latent draw(s)" in md
    assert "±" in E.format_table(report)


def test_one_seed_is_scored_as_before_without_std_keys(setup):
    cfg, real, generator, zdim = setup
    one = cfg.model_copy(update={"seeds": 1})
    report = E.score(generate_mels(generator, one.n, zdim, one.batch_size, one.seed), real, one)
    assert report.info["seeds"] == [0] and report.metrics_std["fd_learned"] == 0.0
    assert not any(k.startswith(E.STD_PREFIX) for k in report.mlflow_metrics())
    assert "±" not in report.to_markdown()
    # the first seed of a three-seed evaluation is this very draw
    three = E.score_seeds(lambda s: generate_mels(generator, cfg.n, zdim, cfg.batch_size, s), [0, 1, 2], real, cfg)
    assert three.per_seed["generated"][0] == pytest.approx(report.metrics)


def test_the_real_data_is_prepared_once_for_every_seed(setup, monkeypatch, small_dataset, tmp_path):
    cfg, real, _, _ = setup
    described: list[str] = []
    real_describe = E.describe

    def counting(name, *args, **kwargs):
        described.append(name)
        return real_describe(name, *args, **kwargs)

    monkeypatch.setattr(E, "describe", counting)
    path = make_checkpoint(tmp_path / "g.pt", "dcgan1", 32)
    report, again = E.evaluate_checkpoint(path, small_dataset, cfg, real=None, progress=False)
    assert sorted(described) == ["generated"] * 3 + ["real-A", "real-B", "real-B-audio"]
    described.clear()
    E.evaluate_checkpoint(path, small_dataset, cfg, real=again, progress=False)  # reused: only the draws
    assert described == ["generated"] * 3
    assert len(report.per_seed["generated"]) == 3


def test_ndb_counts_the_same_number_of_clips_whatever_n(setup, monkeypatch):
    cfg, real, generator, zdim = setup
    counted: list[tuple[int, int]] = []
    real_ndb = M.ndb

    def spy(ref_counts, cand_counts, alpha):
        counted.append((int(ref_counts.sum()), int(cand_counts.sum())))
        return real_ndb(ref_counts, cand_counts, alpha)

    monkeypatch.setattr(M, "ndb", spy)
    fixed = cfg.model_copy(update={"ndb_clips": 16, "seeds": 1, "ceiling": False})
    for n in (64, 256):
        report = E.score(generate_mels(generator, n, zdim, 64, 0), real, fixed)
        assert report.info["ndb_clips"] == 16
    # generated and baseline, at n=64 and n=256: every side counted 16 clips
    assert counted == [(16, 16)] * 4
    # capped at the held-out half (18 clips here) and at n
    counted.clear()
    big = fixed.model_copy(update={"ndb_clips": 512})
    assert E.score(generate_mels(generator, 64, zdim, 64, 0), real, big).info["ndb_clips"] == len(real.held_out) == 18
    assert E.score(generate_mels(generator, 10, zdim, 64, 0), real, big).info["ndb_clips"] == 10
    assert counted == [(18, 18)] * 2 + [(10, 10)] * 2
    assert "NDB/K and its JS count 10 clips" in E.score(generate_mels(generator, 10, zdim, 64, 0), real,
                                                         big).to_markdown()


def test_the_ceiling_is_real_clips_rendered_and_analysed_again(setup):
    cfg, real, _, _ = setup
    assert real.ceiling is not None and len(real.ceiling) == len(real.held_out)
    b, heard = real.held_out.mels, real.ceiling.mels
    # each rendered clip resembles its own original more than the other held-out clips
    own = np.abs(heard - b).mean(axis=(1, 2))
    other = np.abs(heard - np.roll(b, 1, axis=0)).mean(axis=(1, 2))
    assert (own < other).all()
    assert not np.allclose(heard, b, atol=1e-3)  # and the round trip changed it
    # the round trip costs something: it scores worse than the held-out clips themselves
    report = E.score(real.held_out.mels, real, cfg.model_copy(update={"seeds": 1}))
    assert report.ceiling.keys() == report.baseline.keys()
    assert report.ceiling["fd_hand"] > report.baseline["fd_hand"]
    assert report.info["n_ceiling"] == len(real.held_out) and report.info["render_iterations"] == 2


def test_without_the_ceiling_there_is_no_third_column(small_dataset, setup):
    cfg, _, generator, zdim = setup
    off = cfg.model_copy(update={"ceiling": False, "seeds": 1})
    real = E.prepare_real(small_dataset, 32, off, progress=False)
    assert real.ceiling is None
    report = E.score(generate_mels(generator, off.n, zdim, 64, 0), real, off)
    assert report.ceiling == {} and "real B through audio" not in report.to_markdown()
    assert not any(k.startswith(E.CEILING_PREFIX) for k in report.mlflow_metrics())


def test_the_ceiling_is_rendered_once_per_dataset_and_settings(setup, small_dataset, monkeypatch):
    cfg, real, _, _ = setup
    rendered: list[int] = []
    real_round_trip = E.round_trip

    def counting(stored, mel_config, c, resolution):
        rendered.append(c.render_iterations)
        return real_round_trip(stored, mel_config, c, resolution)

    monkeypatch.setattr(E, "round_trip", counting)
    again = E.prepare_real(small_dataset, 32, cfg, progress=False)
    assert rendered == [] and again.ceiling_cached and not real.ceiling_cached
    assert again.ceiling is not None and real.ceiling is not None
    np.testing.assert_array_equal(again.ceiling.mels, real.ceiling.mels)
    other = E.prepare_real(small_dataset, 32, cfg.model_copy(update={"render_iterations": 1}), progress=False)
    assert rendered == [1] and not other.ceiling_cached  # another setting is another rendering
    assert other.ceiling is not None and not np.allclose(other.ceiling.mels, real.ceiling.mels)
    # at most ceiling_clips of the held-out half, and NDB/K then counts no more clips than that
    few = cfg.model_copy(update={"ceiling_clips": 8, "render_iterations": 1, "seeds": 1})
    capped = E.prepare_real(small_dataset, 32, few, progress=False)
    assert capped.ceiling is not None and len(capped.ceiling) == 8 and rendered == [1, 1]
    assert len(capped.held_out) == 18 and E.score(capped.held_out.mels, capped, few).info["ndb_clips"] == 8
