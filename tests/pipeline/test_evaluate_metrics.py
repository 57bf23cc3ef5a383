"""The metrics: hand-checked values, and that each separates what it should."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.config import EvaluateConfig
from pipeline.dataset import MelDataset, read_index
from pipeline.evaluate import metrics as M
from pipeline.evaluate.features import HAND_FEATURES, beat_analysis, hand_features
from pipeline.mel import log_mel, to_model_resolution

# ----------------------------------------------------------------------------- Fréchet distance


def test_frechet_distance_matches_hand_computation_on_small_gaussians():
    # diagonal covariances commute: FD = |mu1 - mu2|^2 + sum (sigma1 - sigma2)^2
    mu1, s1 = np.array([0.0, 0.0]), np.diag([1.0, 4.0])
    mu2, s2 = np.array([1.0, 2.0]), np.diag([4.0, 1.0])
    assert M.frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(1 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    assert M.frechet_distance_from_stats(np.array([3.0]), np.array([[9.0]]), np.array([1.0]), np.array([[1.0]])) \
        == pytest.approx(4.0 + 4.0)
    # a non-diagonal case against the closed form Tr(S1 + S2 - 2 sqrtm(S1 S2)) with scipy
    from scipy.linalg import sqrtm

    a = np.array([[2.0, 0.5], [0.5, 1.0]])
    b = np.array([[1.0, -0.3], [-0.3, 0.5]])
    expected = 0.25 + np.trace(a + b - 2 * sqrtm(a @ b).real)
    assert M.frechet_distance_from_stats(np.zeros(2), a, np.array([0.5, 0.0]), b) == pytest.approx(expected, rel=1e-9)
    # identical statistics: zero
    assert M.frechet_distance_from_stats(mu1, a, mu1, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_samples_uses_their_mean_and_covariance():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 3)), rng.normal(1.0, 2.0, size=(40, 3))
    by_hand = M.frechet_distance_from_stats(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert M.frechet_distance(x, y) == pytest.approx(by_hand)


def test_frechet_distance_separates_distributions():
    rng = np.random.default_rng(1)
    cov = np.diag(np.linspace(0.5, 2.0, 8))
    same = M.frechet_distance(rng.multivariate_normal(np.zeros(8), cov, 500),
                              rng.multivariate_normal(np.zeros(8), cov, 500))
    other = M.frechet_distance(rng.multivariate_normal(np.zeros(8), cov, 500),
                               rng.multivariate_normal(np.full(8, 0.5), 2 * cov, 500))
    assert same < 0.1 * other
    assert same < 0.3


# ----------------------------------------------------------------------------- KID


def test_kid_is_unbiased_on_equal_distributions():
    rng = np.random.default_rng(2)
    # many small independent pairs: a biased (V-statistic) MMD^2 would average clearly above 0
    values = np.array([M.mmd2_unbiased(rng.normal(size=(20, 4)), rng.normal(size=(20, 4))) for _ in range(300)])
    stderr = values.std() / np.sqrt(len(values))
    assert abs(values.mean()) < 3 * stderr
    biased = np.mean([((M.polynomial_kernel(a, a).mean() + M.polynomial_kernel(b, b).mean()
                        - 2 * M.polynomial_kernel(a, b).mean()))
                      for a, b in ((rng.normal(size=(20, 4)), rng.normal(size=(20, 4))) for _ in range(100))])
    assert biased > 10 * stderr  # the test above could tell a biased estimator apart


def test_kid_subsets_near_zero_for_same_and_positive_for_different():
    rng = np.random.default_rng(3)
    x, y, z = rng.normal(size=(400, 6)), rng.normal(size=(400, 6)), rng.normal(0.7, 1.0, size=(400, 6))
    same, same_std = M.kernel_inception_distance(x, y, 20, 100, np.random.default_rng(0))
    diff, _ = M.kernel_inception_distance(x, z, 20, 100, np.random.default_rng(0))
    assert abs(same) < 0.05 * diff
    assert diff > 0 and same_std > 0


# ----------------------------------------------------------------------------- IS, JS, NDB


def test_inception_score_bounds():
    confident_all = np.eye(5)[np.arange(100) % 5]
    assert M.inception_score(confident_all) == pytest.approx(5.0, rel=1e-3)
    one_class = np.tile(np.eye(5)[0], (100, 1))
    assert M.inception_score(one_class) == pytest.approx(1.0, rel=1e-3)
    assert M.inception_score(np.full((10, 5), 0.2)) == pytest.approx(1.0)


def test_js_divergence():
    assert M.js_divergence([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0)
    assert M.js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    assert M.js_divergence([0, 0], [1, 1]) == 1.0


@pytest.fixture(scope="module")
def real64(small_dataset):
    ds = MelDataset(small_dataset, resolution=64)
    return np.stack([ds[i][0].numpy() for i in range(len(ds))])  # [36, 64, 64]


def _ndb_of(ref_mels, cand_mels, k):
    flat = M._flat(ref_mels)
    centres = M.kmeans(flat, k, 30, np.random.default_rng(0))
    ref_counts = np.bincount(M.assign(flat, centres), minlength=k)
    cand_counts = np.bincount(M.assign(M._flat(cand_mels), centres), minlength=k)
    return M.ndb(ref_counts, cand_counts, 0.05)


def test_ndb_near_zero_for_real_halves_and_high_for_a_collapsed_generator(real64):
    order = np.random.default_rng(0).permutation(len(real64))
    a, b = real64[order[:18]], real64[order[18:36]]
    k = 6  # ~3 clips a bin on this small set; K=50 is the default for real datasets
    ndb_real, js_real = _ndb_of(a, b, k)
    collapsed = np.repeat(b[:1], 200, axis=0)  # one clip, over and over
    ndb_collapsed, js_collapsed = _ndb_of(a, collapsed, k)
    assert ndb_real <= 1 / k
    assert ndb_collapsed >= 0.6
    assert js_collapsed > 2 * js_real


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(4)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(scale=0.3, size=(50, 2)) for c in centres])
    found = M.kmeans(x, 3, 50, np.random.default_rng(0))
    assert np.sort(np.round(found[:, 0] + found[:, 1]))[[0, 2]].tolist() == [0.0, 10.0]
    assert sorted(np.bincount(M.assign(x, found)).tolist()) == [50, 50, 50]


def test_memorisation_flags_copies(real64):
    order = np.random.default_rng(0).permutation(len(real64))
    train, held = real64[order[:18]], real64[order[18:36]]
    copies = train[:10] + np.random.default_rng(1).normal(scale=0.01, size=train[:10].shape).astype(np.float32)
    d_copies = M.nearest_distances(copies, train)
    d_held = M.nearest_distances(held, train)
    assert np.median(d_copies) < 0.2 * np.median(d_held)


# ----------------------------------------------------------------------------- rhythm


@pytest.fixture(scope="module")
def stored_mels_and_bpm(small_dataset, synth_audio_dir):
    """Every clip of the small dataset at stored resolution, with its track's known tempo."""
    bpm_of = {t["file"]: t["bpm"] for t in json.loads((synth_audio_dir / "tracks.json").read_text())}
    rows = read_index(small_dataset)
    ds = MelDataset(small_dataset)
    mels = torch.stack([ds.stored(i) for i in range(len(ds))])
    return mels, np.array([bpm_of[r["source"]] for r in rows])


def test_rhythm_finds_the_beat_of_synthetic_techno_at_its_tempo(stored_mels_and_bpm, mel_config):
    mels, bpm = stored_mels_and_bpm
    cfg = EvaluateConfig()
    tempo, clarity = beat_analysis(mels, mel_config, cfg.tempo_search_bpm)
    beat = M.has_beat(tempo, clarity, cfg)
    assert beat.mean() >= 0.6, f"only {beat.mean():.2f} of the techno clips have a beat"
    # where a beat is found, it is the track's tempo
    assert np.all(np.abs(tempo[beat] - bpm[beat]) <= 2.0), np.c_[tempo[beat], bpm[beat]]
    # per track, the median estimate is the known tempo
    for b in np.unique(bpm):
        assert abs(np.median(tempo[bpm == b]) - b) <= 2.0


def test_rhythm_finds_no_beat_in_noise(mel_config):
    cfg = EvaluateConfig()
    rng = np.random.default_rng(5)
    noise = rng.standard_normal((24, mel_config.clip_samples)).astype(np.float32)
    mels = torch.from_numpy(log_mel(noise, mel_config))
    for m in (mels, to_model_resolution(mels, 64)):
        tempo, clarity = beat_analysis(m, mel_config, cfg.tempo_search_bpm)
        assert M.has_beat(tempo, clarity, cfg).sum() == 0, clarity
    silent = torch.full((2, 64, 64), -1.0)
    assert np.all(beat_analysis(silent, mel_config)[1] == 0)


def test_rhythm_metric_compares_beat_shares(stored_mels_and_bpm, mel_config):
    mels, _ = stored_mels_and_bpm
    cfg = EvaluateConfig()
    rng = np.random.default_rng(6)
    noise = torch.from_numpy(log_mel(rng.standard_normal((12, mel_config.clip_samples)).astype(np.float32),
                                     mel_config))

    def clipset(name, m):
        t, c = beat_analysis(m, mel_config)
        n = len(m)
        return M.ClipSet(name, m.numpy(), np.zeros((n, 1)), np.zeros((n, 1)), np.full((n, 2), 0.5), t, c)

    real, fake = clipset("real", mels), clipset("noise", noise)
    ctx = M.MetricContext(cfg, mel_config, held_out=real)
    r = M.METRICS["rhythm"].fn(real, real, ctx)
    f = M.METRICS["rhythm"].fn(real, fake, ctx)
    assert r["beat_share"] >= 0.6 and f["beat_share"] == 0.0
    assert r["tempo_js"] == 0.0 and f["tempo_js"] == 1.0
    assert 120 <= r["tempo_median"] <= 150


# ----------------------------------------------------------------------------- features, registry


def test_hand_features_are_finite_named_and_resolution_agnostic(real64, mel_config):
    f64 = hand_features(real64, mel_config)
    f16 = hand_features(to_model_resolution(torch.from_numpy(real64), 16), mel_config)
    assert f64.shape == (len(real64), len(HAND_FEATURES)) and f16.shape == f64.shape
    assert np.isfinite(f64).all() and np.isfinite(f16).all()
    assert len(set(HAND_FEATURES)) == len(HAND_FEATURES)
    # the spectrum's slope: synthetic techno is louder low than high
    assert (f64[:, 0] > f64[:, 15]).mean() > 0.9


def test_registry_names_directions():
    assert {"fd_hand", "fd_learned", "kid_hand", "kid_learned", "inception_score", "ndb", "memorisation",
            "rhythm"} <= set(M.METRICS)
    assert M.higher_is_better("eval.inception_score") and M.higher_is_better("beat_share")
    assert not M.higher_is_better("eval.fd_learned") and not M.higher_is_better("ndb_k")
