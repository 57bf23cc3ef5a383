"""Helpers for evaluation/promotion tests: finished training runs in a real MLflow
SQLite store, laid out as tracking.runs documents, without spending time training."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import MelConfig, ModelConfig


def artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact path of a run, recursively."""
    out = set()
    for a in client.list_artifacts(run_id, path):
        out |= artifacts(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def make_checkpoint(path: Path, model: str = "dcgan1", resolution: int = 32, seed: int = 0, epoch: int = 1,
                    run_id: str | None = None) -> Path:
    """A randomly initialised, tiny generator saved in the checkpoint format."""
    import torch

    from pipeline.checkpoint import save_generator
    from pipeline.models.registry import get_model

    torch.manual_seed(seed)
    cfg = ModelConfig(name=model, g_width=4, d_width=4, latent_dim=16)
    generator = get_model(model).build_generator(cfg, resolution)
    meta = {"model": model, "model_config": cfg.model_dump(), "resolution": resolution, "latent_dim": 16,
            "mel_config": MelConfig().to_dict(), "epoch": epoch, "step": epoch * 10, "run_id": run_id}
    return save_generator(path, generator, meta)


def make_run(uri: str, experiment: str, tmp: Path, *, model: str = "dcgan1", dataset: Path | None = None,
             metrics: dict[str, float] | None = None, epochs: int = 1, status: str = "FINISHED",
             resolution: int = 32, name: str | None = None) -> str:
    """A training-like run: params, model tag, checkpoints/generator-{epoch-N,latest}.pt, metrics."""
    from tracking.runs import MODEL_TAG, ensure_experiment, get_client

    client = get_client(uri)
    exp = ensure_experiment(client, experiment)
    run = client.create_run(exp, tags={MODEL_TAG: model}, run_name=name or model)
    rid = run.info.run_id
    client.log_param(rid, "dataset.path", str(dataset or tmp / "nowhere"))
    client.log_param(rid, "dataset.clips", "36")
    client.log_param(rid, "train.epochs", str(epochs))
    folder = tmp / rid
    for e in range(1, epochs + 1):
        p = make_checkpoint(folder / f"generator-epoch-{e}.pt", model, resolution, seed=e, epoch=e, run_id=rid)
        client.log_artifact(rid, str(p), "checkpoints")
    latest = make_checkpoint(folder / "generator-latest.pt", model, resolution, seed=epochs, epoch=epochs, run_id=rid)
    client.log_artifact(rid, str(latest), "checkpoints")
    for k, v in (metrics or {}).items():
        client.log_metric(rid, k, v)
    client.set_terminated(rid, status=status)
    return rid
