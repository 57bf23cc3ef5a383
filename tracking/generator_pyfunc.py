"""The generator as an MLflow pyfunc model, logged as code (MLflow's "models from code"):
this file travels inside every logged generator model, with the ``pipeline`` package
beside it (``code_paths``) and the generator checkpoint as the model's artifact
``generator``. Nothing is pickled: loading runs this file and
``pipeline.checkpoint.load_generator`` (``torch.load(weights_only=True)``).

Input: a DataFrame with a ``seed`` column (integers); param ``n`` (default 1) clips per
seed. Output: float32 mels ``[rows * n, n_mels, n_frames]`` in [-1, 1] at the mel
config's analysis resolution, seed-major: clip ``i`` of seed ``s`` is exactly what
``technogan generate --seed s`` and the TorchServe handler make for it (the same latents,
``pipeline.generate.latents_for_seed``). The mel config is in the model's metadata.
"""

from __future__ import annotations

import warnings
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

MAX_CLIPS = 4096  # per call: a generous bound that keeps one call's memory in check


# the signature is given explicitly when the model is logged; MLflow would otherwise urge
# type hints on predict each time this class is defined
warnings.filterwarnings("ignore", message="Add type hints to the `predict` method")


class GeneratorModel(PythonModel):
    """Seeds in, mels out (see the module docstring)."""

    def load_context(self, context) -> None:
        from pipeline.checkpoint import load_generator
        from pipeline.config import MelConfig

        self.generator, self.meta = load_generator(context.artifacts["generator"], "cpu")
        self.mel_config = MelConfig.from_dict(self.meta["mel_config"])
        self.latent_dim = int(self.meta["latent_dim"])

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import numpy as np
        import torch

        from pipeline.generate import latents_for_seed
        from pipeline.mel import to_stored_resolution

        n = int((params or {}).get("n", 1))
        seeds = [int(s) for s in model_input["seed"]]
        if n < 1 or len(seeds) * n > MAX_CLIPS:
            raise ValueError(f"n must be at least 1 and seeds x n at most {MAX_CLIPS}, got {len(seeds)} x {n}")
        if not seeds:
            return np.zeros((0, *self.mel_config.shape), np.float32)
        z = torch.cat([latents_for_seed(s, n, self.latent_dim) for s in seeds])  # [rows * n, latent_dim]
        with torch.no_grad():
            x = self.generator(z)  # [B, 1, R, R]
            mels = to_stored_resolution(x[:, 0].float(), self.mel_config)  # [B, n_mels, n_frames]
        return mels.cpu().numpy().astype(np.float32, copy=False)


mlflow.models.set_model(GeneratorModel())
