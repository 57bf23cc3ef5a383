"""The one checkpoint format: a generator that describes itself, and the training state.

Generator checkpoint (``generator-*.pt``), loadable with ``torch.load(path, weights_only=True)``
(plain types and tensors only, never a pickled module)::

    {"format": "technogan-generator/1",
     "state_dict": {name: tensor, ...},        # Generator.state_dict()
     "meta": "<JSON string>"}

``meta`` (``read_meta`` returns it as a dict) has at least ``model`` (registry name),
``model_config`` (the ``model`` config section as a dict), ``resolution``,
``latent_dim`` and ``mel_config`` (``MelConfig.to_dict()``), and, when known, ``run_id``,
``step``, ``epoch``, ``created`` (UTC ISO time).

Training state (``training-state-*.pt``, for ``--resume``), also weights_only-loadable::

    {"format": "technogan-train-state/1",
     "generator": state_dict, "critic": state_dict,
     "opt_g": optimiser state_dict, "opt_d": optimiser state_dict,
     "progress": {"step": int, "epoch": int, "batch_in_epoch": int, "samples_seen": int},
     "rng": {"torch": uint8 tensor, "latent": uint8 tensor, "cuda": [uint8 tensor, ...]},
     "history": {"step": [...], "d_loss": [...], ...},   # for the loss-curve plot
     "meta": "<JSON string>"}                             # as the generator's, plus the run's config

Both are written atomically (temp file + rename), so a killed run leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import UserError
from pipeline.fsutil import atomic_path

GENERATOR_FORMAT = "technogan-generator/1"
TRAIN_STATE_FORMAT = "technogan-train-state/1"
REQUIRED_META = ("model", "model_config", "resolution", "latent_dim", "mel_config")


def _save(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def _load(path: str | os.PathLike, map_location: Any, *formats: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: checkpoint not found")
    try:
        payload = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise UserError(f"{p}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") not in formats:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise UserError(f"{p}: expected a {' or '.join(map(repr, formats))} checkpoint, found {found!r}")
    return payload


def _meta_json(meta: dict[str, Any]) -> str:
    meta = dict(meta)
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return json.dumps(meta, sort_keys=True, default=str)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    # unwrap DistributedDataParallel so keys never carry a "module." prefix
    module = getattr(module, "module", module)
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def save_generator(path: str | os.PathLike, generator: nn.Module, meta: dict[str, Any]) -> Path:
    """Write the generator's weights and ``meta`` atomically; ``meta`` must hold REQUIRED_META."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"generator checkpoint meta lacks {missing}")
    return _save(path, {"format": GENERATOR_FORMAT, "state_dict": _cpu_state(generator), "meta": _meta_json(meta)})


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description of a generator or training-state checkpoint."""
    return json.loads(_load(path, "cpu", GENERATOR_FORMAT, TRAIN_STATE_FORMAT)["meta"])


def load_generator(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(generator in eval mode, meta) from a generator checkpoint, rebuilt through the registry."""
    from pipeline.config import MelConfig, ModelConfig
    from pipeline.models.registry import get_model

    payload = _load(path, map_location, GENERATOR_FORMAT)
    meta = json.loads(payload["meta"])
    model_cfg = ModelConfig.model_validate(meta["model_config"])
    MelConfig.from_dict(meta["mel_config"])  # fail here, naming the file, rather than at plot time
    generator = get_model(meta["model"]).build_generator(model_cfg, int(meta["resolution"]))
    generator.load_state_dict(payload["state_dict"])
    if isinstance(map_location, (str, torch.device)):
        generator.to(map_location)
    generator.eval()
    return generator, meta


def save_training_state(path: str | os.PathLike, *, generator: nn.Module, critic: nn.Module,
                        opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                        progress: dict[str, int], rng: dict[str, Any], history: dict[str, list],
                        meta: dict[str, Any]) -> Path:
    """Everything ``--resume`` needs to continue bit for bit, written atomically."""
    return _save(path, {
        "format": TRAIN_STATE_FORMAT,
        "generator": _cpu_state(generator),
        "critic": _cpu_state(critic),
        "opt_g": opt_g.state_dict(),
        "opt_d": opt_d.state_dict(),
        "progress": {k: int(v) for k, v in progress.items()},
        "rng": rng,
        "history": history,
        "meta": _meta_json(meta),
    })


def load_training_state(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The training-state dict (``meta`` decoded from JSON)."""
    payload = _load(path, map_location, TRAIN_STATE_FORMAT)
    payload["meta"] = json.loads(payload["meta"])
    return payload
