"""A generator checkpoint as an MLflow model: a pyfunc that turns seeds into mels.

Every finished training run logs its generator (``generator-latest.pt``) this way, so the
runs list's Models column links to it; promotion registers a version from the run's
model for the checkpoint it scored (logging one first when the run has none for that
checkpoint, e.g. ``best``). Users who do not run TorchServe can then::

    model = mlflow.pyfunc.load_model("models:/technogan-generator@champion")
    mels = model.predict(pandas.DataFrame({"seed": [0, 1]}), params={"n": 4})  # [8, n_mels, n_frames]

What a logged model holds (MLflow's pyfunc format, "models from code": no pickle):

    MLmodel                     flavour, signature, metadata (mel config, checkpoint meta)
    generator_pyfunc.py         the model's code (tracking/generator_pyfunc.py)
    code/pipeline/              this project's pipeline package, put on sys.path at load
    artifacts/generator-*.pt    the generator checkpoint (pipeline.checkpoint format)
    requirements.txt, python_env.yaml, conda.yaml   pinned: torch==2.13.0, numpy, ...
    input_example.json, serving_input_example.json  one seed

The logged model's tags: ``technogan.checkpoint`` (latest, best, epoch-N: which of the
run's checkpoints it is) and ``technogan.model``; its source run is the training run.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tracking.runs import MODEL_TAG, get_client

log = logging.getLogger(__name__)

MODEL_NAME = "generator"  # the logged model's name inside a run
MODEL_TYPE = "technogan-generator"
CHECKPOINT_TAG = "technogan.checkpoint"
PYFUNC_CODE = Path(__file__).with_name("generator_pyfunc.py")
PIPELINE_DIR = Path(__file__).resolve().parents[1] / "pipeline"
# what the model's code imports (pipeline.checkpoint, .config, .generate, .mel, .models); torch is
# pinned to the project's one version, the rest to what this environment runs
REQUIREMENTS = ("torch", "numpy", "pydantic", "PyYAML", "librosa")


def requirements() -> list[str]:
    """Pinned pip requirements of a logged generator model (MLflow adds itself)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in REQUIREMENTS]


def signature(mel_shape: tuple[int, int]):
    """Input: a ``seed`` column; param ``n`` (clips per seed, default 1); output: float32 mels."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(inputs=Schema([ColSpec("long", "seed")]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *mel_shape), "mels")]),
                          params=ParamSchema([ParamSpec("n", "long", 1)]))


def log_generator_model(run_id: str, checkpoint: str | os.PathLike, which: str = "latest",
                        uri: str | None = None, step: int | None = None):
    """Log the generator checkpoint as a model of run ``run_id`` (a LoggedModel whose
    source run is the run, linked as the run's output); returns the LoggedModel.
    ``which`` names the checkpoint (latest, best, epoch-N) in the model's tag."""
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    from pipeline.checkpoint import read_meta
    from pipeline.config import MelConfig

    client = get_client(uri)
    meta = read_meta(checkpoint)
    mel = MelConfig.from_dict(meta["mel_config"])
    run = client.get_run(run_id)
    model = client.create_logged_model(
        run.info.experiment_id, name=MODEL_NAME, source_run_id=run_id, model_type=MODEL_TYPE,
        tags={CHECKPOINT_TAG: which, MODEL_TAG: str(meta["model"])},
        params={k: str(meta[k]) for k in ("model", "resolution", "latent_dim", "step", "epoch") if k in meta})
    try:
        with tempfile.TemporaryDirectory(prefix="technogan-model-") as tmp:
            path = Path(tmp) / "model"
            facts: dict[str, Any] = {"checkpoint": which, "mel_config": mel.to_dict(),
                                     **{k: meta[k] for k in ("model", "resolution", "latent_dim", "step", "epoch")
                                        if k in meta}}
            description = Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                                model_id=model.model_id)
            mlflow.pyfunc.save_model(
                path, mlflow_model=description, python_model=str(PYFUNC_CODE),
                artifacts={"generator": str(checkpoint)}, code_paths=[str(PIPELINE_DIR)],
                signature=signature(mel.shape), input_example=pd.DataFrame({"seed": [0]}),
                pip_requirements=requirements(),
                metadata={"technogan": facts})
            for cache in list(path.rglob("__pycache__")):  # bytecode of this machine's Python: not the model's
                shutil.rmtree(cache, ignore_errors=True)
            client.log_model_artifacts(model.model_id, str(path))
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=int(step if step is not None
                                                                               else meta.get("step") or 0))])
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    return client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


def run_model(run_id: str, which: str = "latest", uri: str | None = None):
    """The newest READY generator model of run ``run_id`` for checkpoint ``which``, or None."""
    client = get_client(uri)
    run = client.get_run(run_id)
    found = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND tags.`{CHECKPOINT_TAG}` = '{which}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}])
    ready = [m for m in found if str(m.status) in ("READY", "LoggedModelStatus.READY")]
    return ready[0] if ready else None


def ensure_run_model(run_id: str, which: str = "latest", uri: str | None = None):
    """The run's generator model for checkpoint ``which``, logged from the run's checkpoint
    artifact first when the run has none (runs trained before models were logged, ``best``)."""
    from tracking.runs import download_checkpoint

    found = run_model(run_id, which, uri)
    if found is not None:
        return found
    with tempfile.TemporaryDirectory(prefix="technogan-ckpt-") as tmp:
        path = download_checkpoint(run_id, which, dst=tmp, uri=uri)
        log.info("run %s has no %s generator model yet: logging it from %s", run_id, which, path.name)
        return log_generator_model(run_id, path, which, uri)


def model_uri(model: Any) -> str:
    """``models:/<model id>``: what ``mlflow.pyfunc.load_model`` takes for a logged model."""
    return f"models:/{model.model_id}"


__all__ = ["CHECKPOINT_TAG", "MODEL_NAME", "ensure_run_model", "log_generator_model", "model_uri", "requirements",
           "run_model", "signature"]
