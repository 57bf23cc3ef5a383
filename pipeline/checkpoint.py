"""The one checkpoint format: a generator that describes itself, and the training state.

Generator checkpoint (``generator-*.pt``), loadable with ``torch.load(path, weights_only=True)``
(plain types and tensors only, never a pickled module)::

    {"format": "technogan-generator/1",
     "state_dict": {name: tensor, ...},        # Generator.state_dict()
     "meta": "<JSON string>"}

``meta`` (``read_meta`` returns it as a dict) has at least ``model`` (registry name),
``model_config`` (the ``model`` config section as a dict), ``resolution``,
``latent_dim`` and ``mel_config`` (``MelConfig.to_dict()``), and, when known, ``run_id``,
``step``, ``epoch``, ``created`` (UTC ISO time). A generator trained with per_bin
normalisation also has ``normalization``: {"kind": "per_bin", "mean": [R], "scale": [R]}
(``networks.normalization_meta``; ``save_generator`` adds it), rebuilt by ``load_generator``
as the generator's output layer, so the loaded generator outputs mels in [-1, 1] directly.

Training state (``training-state-*.pt``, for ``--resume``), also weights_only-loadable::

    {"format": "technogan-train-state/1",
     "generator": state_dict, "critic": state_dict,
     "opt_g": optimiser state_dict, "opt_d": optimiser state_dict,
     "loss": {...}, "ema": {...} | None, "augment": {...} | None,   # their own state dicts
     "progress": {"step": int, "epoch": int, "batch_in_epoch": int, "samples_seen": int},
     "rng": {"torch": uint8 tensor, "latent": uint8 tensor, "cuda": [uint8 tensor, ...]},
     "history": {"step": [...], "d_loss": [...], ...},   # for the loss-curve plot
     "best": {"score": float | None, "step": int | None},  # generator-best.pt's
     "meta": "<JSON string>"}                             # as the generator's, plus the run's config

``pipeline.train.state.TrainingState`` makes and reads the training state. Both are
written atomically (temp file + rename), so a killed run leaves the previous
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
    # in the standard layout whatever layout trained (train.channels_last): a checkpoint is the same file
    return {k: v.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
            for k, v in module.state_dict().items()}


def save_generator(path: str | os.PathLike, generator: nn.Module, meta: dict[str, Any]) -> Path:
    """Write the generator's weights and ``meta`` atomically; ``meta`` must hold REQUIRED_META."""
    from pipeline.models.networks import normalization_meta

    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"generator checkpoint meta lacks {missing}")
    norm = normalization_meta(generator)
    if "normalization" in meta and meta["normalization"] != norm:
        raise ValueError("generator checkpoint meta normalization disagrees with the generator's own")
    if norm["kind"] != "none":
        meta = {**meta, "normalization": norm}
    return _save(path, {"format": GENERATOR_FORMAT, "state_dict": _cpu_state(generator), "meta": _meta_json(meta)})


def _decode_meta(path: Path, payload: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``meta`` JSON of a loaded checkpoint, with ``required`` keys present; UserError naming the file."""
    raw = payload.get("meta")
    try:
        meta = json.loads(raw) if isinstance(raw, (str, bytes)) else None
    except ValueError as e:
        raise UserError(f"{path}: checkpoint meta is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: checkpoint meta must be a JSON object, found {type(raw).__name__}")
    missing = [k for k in required if k not in meta]
    if missing:
        raise UserError(f"{path}: checkpoint meta lacks {', '.join(missing)} (a generator checkpoint needs "
                        f"{', '.join(REQUIRED_META)})")
    return meta


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description of a generator or training-state checkpoint."""
    return _decode_meta(Path(path), _load(path, "cpu", GENERATOR_FORMAT, TRAIN_STATE_FORMAT))


def load_generator(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(generator in eval mode, meta) from a generator checkpoint, rebuilt through the registry.

    Everything the meta claims is checked against the weights before the generator is
    returned: model name, model config, resolution, latent size and mel config, then one
    forward pass of one latent must give a [1, 1, R, R] finite mel. A checkpoint that
    fails any of it is a UserError naming the file and the key (exit 2 on the CLI).
    """
    from pydantic import ValidationError

    from pipeline.config import ConfigError, MelConfig, ModelConfig
    from pipeline.models.networks import add_bin_normalization, normalization_problem
    from pipeline.models.registry import get_model

    p = Path(path)
    payload = _load(p, map_location, GENERATOR_FORMAT)
    meta = _decode_meta(p, payload, REQUIRED_META)
    try:
        model_cfg = ModelConfig.model_validate(meta["model_config"])
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors())
        raise UserError(f"{p}: checkpoint meta model_config: {bad}") from None
    try:
        MelConfig.from_dict(meta["mel_config"])  # fail here, naming the file, rather than at plot time
    except ConfigError as e:
        raise UserError(f"{p}: checkpoint meta {e}") from None
    resolution, latent_dim = meta["resolution"], meta["latent_dim"]
    for key, value in (("resolution", resolution), ("latent_dim", latent_dim)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise UserError(f"{p}: checkpoint meta {key} must be a positive integer, got {value!r}")
    if latent_dim != model_cfg.latent_dim:
        raise UserError(f"{p}: checkpoint meta latent_dim {latent_dim} disagrees with its model_config."
                        f"latent_dim {model_cfg.latent_dim}")
    if not isinstance(meta["model"], str):
        raise UserError(f"{p}: checkpoint meta model must be a registry name, got {meta['model']!r}")
    norm = meta.get("normalization", {"kind": "none"})
    problem = normalization_problem(norm, resolution)
    if problem:
        raise UserError(f"{p}: checkpoint meta normalization: {problem}")
    try:
        spec = get_model(meta["model"])
        generator = spec.build_generator(model_cfg, resolution)
        if norm["kind"] == "per_bin":
            add_bin_normalization(generator, norm["mean"], norm["scale"])
    except (UserError, KeyError, ValueError) as e:
        raise UserError(f"{p}: checkpoint meta model {meta['model']!r} at resolution {resolution}: "
                        f"{e.args[0] if e.args else e}") from None
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise UserError(f"{p}: checkpoint has no state_dict")
    try:
        generator.load_state_dict(state)
    except RuntimeError as e:  # missing/unexpected keys, shape mismatches: another model or size
        first = str(e).strip().splitlines()
        detail = "; ".join(line.strip() for line in first[1:4]) or (first[0] if first else "")
        raise UserError(f"{p}: the weights do not match the meta ({meta['model']}, resolution {resolution}, "
                        f"latent {latent_dim}): {detail}") from None
    denorm = getattr(generator, "denorm", None)
    if denorm is not None and not (
            torch.equal(denorm.mean.cpu(), torch.tensor(norm["mean"], dtype=torch.float32))
            and torch.equal(denorm.scale.cpu(), torch.tensor(norm["scale"], dtype=torch.float32))):
        raise UserError(f"{p}: checkpoint meta normalization disagrees with the per-bin statistics in its weights")
    if isinstance(map_location, (str, torch.device)):
        generator.to(map_location)
    generator.eval()
    check_generator(generator, latent_dim, resolution, where=str(p))
    return generator, meta


@torch.no_grad()
def check_generator(generator: nn.Module, latent_dim: int, resolution: int, where: str = "generator") -> None:
    """One forward pass of one latent: the output must be a finite [1, 1, R, R] mel."""
    device = next((t.device for t in generator.parameters()), torch.device("cpu"))
    try:
        out = generator(torch.zeros(1, latent_dim, device=device))
    except RuntimeError as e:
        raise UserError(f"{where}: one forward pass with latent size {latent_dim} failed: {e}") from None
    if tuple(out.shape) != (1, 1, resolution, resolution):
        raise UserError(f"{where}: the generator makes {list(out.shape)} mels, the meta says resolution "
                        f"{resolution} ([1, 1, {resolution}, {resolution}])")
    if not bool(torch.isfinite(out).all()):
        raise UserError(f"{where}: the generator's output is not finite (NaN or infinity in the weights)")


def save_training_state(path: str | os.PathLike, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """``TrainingState.state_dict()`` and ``meta``, written atomically: everything ``--resume``
    needs to continue bit for bit."""
    return _save(path, {"format": TRAIN_STATE_FORMAT, **state, "meta": _meta_json(meta)})


def load_training_state(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The training-state dict (``meta`` decoded from JSON)."""
    payload = _load(path, map_location, TRAIN_STATE_FORMAT)
    payload["meta"] = _decode_meta(Path(path), payload)
    return payload
