"""Shared fixtures: synthetic audio and a small segmented dataset, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import MelConfig, SegmentConfig

pytest_plugins = ("tests.browser",)  # the browser/page fixtures of the browser tests

# The fast tier (`make test-fast`, `pytest -m "not slow"`) leaves out every test that trains
# a generator, starts a server (TorchServe, mlflow server) or runs several processes:
# those marked slow by hand, those using a fixture below, and whole modules below.
SLOW_FIXTURES = {"trained_run", "champion_version", "model_store", "unpacked_archive", "handler",
                 "small_store", "good_checkpoint", "runs", "encoder_dir", "server", "module_server",
                 "browser", "page"}
SLOW_MODULES = {"test_train", "test_train_ddp", "test_runs_server", "test_server", "test_demo",
                "test_chart_local", "test_mlflow_concurrency", "test_evaluate_run", "test_runs",
                "test_registry", "test_mlflow_ui"}
# Single tests over a few seconds each. Measured: the fast tier ran 512 tests in 43 s on a quiet
# 2-core machine and 83 s in a fresh CI clone.
SLOW_TESTS = {"test_rendering_a_real_mel_gives_audio_with_that_mel",
              "test_nnls_beats_pinv_on_spectral_convergence",
              "test_a_model_resolution_real_mel_still_renders_close",
              "test_tempo_in_range_and_audible_beat_at_that_tempo",
              "test_resume_after_kill_duplicates_nothing",
              "test_run_steps_evaluate_promote_and_render_the_champion",
              "test_generate_cli_from_a_run_and_bad_formats",
              "test_summary_prints_the_figures_format",
              "test_cli_exit_codes"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        name = getattr(item, "originalname", item.name)
        if (SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or module in SLOW_MODULES
                or name in SLOW_TESTS):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    """Tests use their own temporary MLflow stores, never the developer's server."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def mel_config() -> MelConfig:
    return MelConfig()


@pytest.fixture(scope="session")
def synth_audio_dir(tmp_path_factory) -> Path:
    """Six synthetic techno tracks of 30 s each (WAV, 44.1 kHz stereo), seed 0."""
    from pipeline.synth import synthesize

    out = tmp_path_factory.mktemp("synth_audio")
    synthesize(out, tracks=6, seconds=30.0, seed=0)
    return out


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory, synth_audio_dir, mel_config) -> Path:
    """A segmented dataset of the six synthetic tracks: 36 clips of [128, 216]."""
    from pipeline.segment import segment

    out = tmp_path_factory.mktemp("small_dataset")
    segment(synth_audio_dir, out, mel_config, SegmentConfig(workers=2))
    return out
