"""Generator checkpoints whose meta lies about their weights: the class of input behind
issue 12 items 5 and 8, shared by the generate and package tests."""

from __future__ import annotations

import json
from pathlib import Path


def tamper(src: Path, dst: Path, meta=None, drop=(), raw_meta=None, **changes) -> Path:
    """A copy of the generator checkpoint ``src`` whose meta says something else: keys
    changed, dropped, or the meta text replaced outright (``raw_meta``)."""
    import torch

    payload = torch.load(src, weights_only=True)
    doc = json.loads(payload["meta"]) if meta is None else meta
    doc.update(changes)
    for key in drop:
        doc.pop(key)
    payload["meta"] = raw_meta if raw_meta is not None else json.dumps(doc)
    torch.save(payload, dst)
    return dst


def _model_config(**kw):
    from pipeline.config import ModelConfig

    return ModelConfig(name="dcgan1", g_width=4, d_width=4, latent_dim=16).model_copy(update=kw).model_dump()


# every way the meta can lie about, or fail to describe, the 32x32 dcgan1 weights (latent 16)
CRAFTED = {
    **{f"resolution-{r}": {"resolution": r} for r in (8, 16, 48, 64, 128, 0, -32)},
    "resolution-string": {"resolution": "32"},
    "resolution-bool": {"resolution": True},
    **{f"model-{m}": {"model": m} for m in ("dcgan2", "wgan-wc", "wgan-gp", "nope", 3)},
    "latent-8-both": {"latent_dim": 8, "model_config": _model_config(latent_dim=8)},
    "latent-32-meta-only": {"latent_dim": 32},
    "latent-8-config-only": {"model_config": _model_config(latent_dim=8)},
    "g-width-8": {"model_config": _model_config(g_width=8)},
    "model-config-unknown-key": {"model_config": {**_model_config(), "colour": 1}},
    "model-config-not-a-dict": {"model_config": [1, 2]},
    "mel-config-bad": {"mel_config": {"sample_rate": -1}},
    **{f"missing-{k}": {"drop": (k,)} for k in ("model", "model_config", "resolution", "latent_dim", "mel_config")},
    "meta-not-json": {"raw_meta": "{not json"},
    "meta-a-list": {"raw_meta": "[1, 2]"},
    "meta-empty": {"raw_meta": ""},
}
