"""The four GANs of the study: networks (Figures 1-6), loss objects and the registry by name."""

from pipeline.models.registry import MODELS, ModelSpec, get_model

__all__ = ["MODELS", "ModelSpec", "get_model"]
