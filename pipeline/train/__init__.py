"""Training: one loop for all four GANs, tracked in MLflow (see pipeline.train.loop)."""

from pipeline.train.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
