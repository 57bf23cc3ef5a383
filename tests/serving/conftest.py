"""Serving fixtures: a generator trained for a few steps on the synthetic dataset, tracked
in a real (SQLite) MLflow store, and packaged from that run into a fresh technogan.mar."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from pipeline.config import MelConfig, RunConfig, load_config
from serving.server import Ports, TorchServe


@pytest.fixture(scope="session")
def serve_run_config(tmp_path_factory) -> RunConfig:
    root = tmp_path_factory.mktemp("serve_mlflow")
    return load_config(None, {
        "model.name": "dcgan1",
        "model.g_width": 16,
        "model.d_width": 16,
        "train.max_steps": 3,
        "train.batch_size": 8,
        "train.epochs": 1,
        "train.device": "cpu",
        "train.progress": False,
        "train.checkpoint_every": 3,
        "train.sample_every": 3,
        "tracking.uri": f"sqlite:///{root}/mlflow.db",
        "serve.render_iterations": 4,  # the wav path is exercised, not its audio quality
        "serve.batch_size": 8,
        "serve.max_batch_delay_ms": 10,
    })


@pytest.fixture(scope="session")
def trained_run(serve_run_config, small_dataset, tmp_path_factory):
    """A real training run: three generator steps on the synthetic clips, logged to MLflow."""
    from pipeline.train import train

    result = train(serve_run_config, dataset=small_dataset, out_dir=tmp_path_factory.mktemp("serve_train"))
    assert result.ok and result.run_id and result.generator_path.is_file(), result
    return result


@pytest.fixture(scope="session")
def champion_version(serve_run_config, trained_run):
    """The run registered and aliased ``champion``, as ``technogan promote`` leaves it."""
    from tracking.registry import register_generator

    ev = serve_run_config.evaluate
    return register_generator(trained_run.run_id, ev.registry_model, ev.champion_alias,
                              uri=serve_run_config.tracking.uri)


@pytest.fixture(scope="session")
def model_store(serve_run_config, champion_version, tmp_path_factory) -> Path:
    """A model store with technogan.mar packaged from the champion (weights downloaded from MLflow)."""
    from serving.package import package

    store = tmp_path_factory.mktemp("model_store")
    package(serve_run_config, store)  # no source given: the champion alias
    return store


@pytest.fixture(scope="session")
def unpacked_archive(model_store, tmp_path_factory) -> Path:
    """The archive unzipped, as TorchServe gives it to a worker (model_dir)."""
    out = tmp_path_factory.mktemp("model_dir")
    with zipfile.ZipFile(model_store / "technogan.mar") as z:
        z.extractall(out)
    return out


@pytest.fixture(scope="module")
def server(model_store, serve_run_config, tmp_path_factory) -> Iterator[TorchServe]:
    """A real TorchServe (behind the gate) serving ``model_store``'s archive, one per test module."""
    ts = TorchServe(model_store, tmp_path_factory.mktemp("torchserve"), serve_run_config.serve, MelConfig(),
                    Ports.free())
    try:
        ts.start(timeout=240)
        yield ts
    finally:
        ts.stop()
