"""tracking.registry against a real MLflow SQLite store in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import UserError
from tests.tracking.eval_runs import make_run, store_uri
from tracking import registry


def test_register_alias_and_lookups(tmp_path):
    uri = store_uri(tmp_path)
    a = make_run(uri, "reg", tmp_path, model="dcgan1")
    b = make_run(uri, "reg", tmp_path, model="wgan-gp")
    assert registry.version_of_run(a, "m", uri) is None  # nothing registered yet
    with pytest.raises(UserError, match="champion"):
        registry.resolve_alias("champion", "m", uri)

    va = registry.register_generator(a, "m", "champion", uri, tags={"k": 1})
    assert va.status == "READY" and va.run_id == a
    assert registry.resolve_alias("champion", "m", uri).version == va.version
    vb = registry.register_generator(b, "m", "champion", uri)
    assert int(vb.version) == int(va.version) + 1
    assert registry.resolve_alias("champion", "m", uri).run_id == b
    # registering the same run again reuses its version
    assert registry.register_generator(a, "m", None, uri).version == va.version
    assert registry.resolve_alias("champion", "m", uri).run_id == b  # alias=None leaves it alone
    assert registry.version_of_run(a, "m", uri).version == va.version

    path, mv = registry.champion_checkpoint(tmp_path / "dl", "m", "champion", uri)
    assert path.is_file() and mv.run_id == b


def test_finished_runs_lists_only_finished(tmp_path):
    uri = store_uri(tmp_path)
    done = make_run(uri, "reg", tmp_path, metrics={"eval.fd_learned": 1.0, "epoch": 2.0})
    make_run(uri, "reg", tmp_path, status="FAILED")
    rows = registry.finished_runs("reg", uri)
    assert [r.run_id for r in rows] == [done]
    assert rows[0].model == "dcgan1" and rows[0].samples == "36" and rows[0].epochs == "2"
    assert rows[0].metrics["eval.fd_learned"] == 1.0
    assert registry.finished_runs("no-such-experiment", uri) == []


def _generator_mels(checkpoint, seed: int, n: int):
    """What the checkpoint's own generator makes for ``seed``: [n, n_mels, n_frames]."""
    import torch

    from pipeline.checkpoint import load_generator
    from pipeline.config import MelConfig
    from pipeline.generate import latents_for_seed
    from pipeline.mel import to_stored_resolution

    g, meta = load_generator(checkpoint)
    with torch.no_grad():
        x = g(latents_for_seed(seed, n, meta["latent_dim"]))
    return to_stored_resolution(x[:, 0], MelConfig.from_dict(meta["mel_config"])).numpy()


def test_the_champion_loads_as_a_pyfunc_and_makes_its_generators_mels(tmp_path, monkeypatch):
    import json

    import mlflow
    import numpy as np
    import pandas as pd

    from tracking.models import CHECKPOINT_TAG, run_model

    uri = store_uri(tmp_path)
    a = make_run(uri, "reg", tmp_path, epochs=2)
    mv = registry.register_generator(a, uri=uri, checkpoint=1)  # epoch 1, not the latest weights
    model = run_model(a, "epoch-1", uri)
    assert model is not None and model.tags[CHECKPOINT_TAG] == "epoch-1" and model.source_run_id == a
    assert mv.source == model.artifact_location
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": registry.DEFAULT_MODEL_NAME,
                                                                "version": mv.version}]
    run = registry.get_client(uri).get_run(a)
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]  # the Models column's link

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # mlflow's own loaders read the global URI
    loaded = mlflow.pyfunc.load_model("models:/technogan-generator@champion")
    mels = loaded.predict(pd.DataFrame({"seed": [3, 5]}), params={"n": 2})
    assert mels.dtype == np.float32 and mels.shape == (4, 128, 216)
    epoch1 = tmp_path / a / "generator-epoch-1.pt"
    # an untrained tiny generator's mels are small: compare relative to their size
    np.testing.assert_allclose(mels[:2], _generator_mels(epoch1, 3, 2), rtol=1e-4, atol=0)
    np.testing.assert_allclose(mels[2:], _generator_mels(epoch1, 5, 2), rtol=1e-4, atol=0)
    assert not np.allclose(mels[:2], _generator_mels(tmp_path / a / "generator-latest.pt", 3, 2), rtol=1e-2, atol=0)
    assert not np.allclose(mels[:2], mels[2:], rtol=1e-2, atol=0)  # seeds differ
    assert loaded.predict(pd.DataFrame({"seed": [5]})).shape == (1, 128, 216)  # n defaults to 1

    meta = loaded.metadata
    assert [c.name for c in meta.get_input_schema().inputs] == ["seed"]
    assert meta.get_params_schema().params[0].name == "n"
    assert meta.metadata["technogan"]["mel_config"]["n_mels"] == 128
    local = mlflow.artifacts.download_artifacts(f"models:/{model.model_id}", dst_path=str(tmp_path / "model"))
    reqs = (Path(local) / "requirements.txt").read_text().split()
    assert "torch==2.13.0" in reqs and any(r.startswith("mlflow==") for r in reqs)
    assert (Path(local) / "code" / "pipeline" / "checkpoint.py").is_file()  # the code travels with it
    assert not list(Path(local).rglob("*.pkl"))  # models from code: nothing pickled

    # the version still leads to its checkpoint, for packaging and serving
    path, champion = registry.champion_checkpoint(tmp_path / "dl", uri=uri)
    assert registry.version_checkpoint(champion) == "1" and path.name == "generator-epoch-1.pt"
    # promoting the same checkpoint again reuses the version; another checkpoint is a new version
    assert registry.register_generator(a, uri=uri, checkpoint=1).version == mv.version
    latest = registry.register_generator(a, uri=uri)
    assert int(latest.version) == int(mv.version) + 1 and run_model(a, "latest", uri) is not None
