"""Watching a run: the divergence guard and optional Prometheus metrics."""

from __future__ import annotations

import logging
import math
from typing import Mapping

log = logging.getLogger(__name__)

LOSS_KEYS = ("d_loss", "g_loss")


class DivergenceGuard:
    """Stops a run whose losses are NaN/inf (at once) or above ``max_abs`` for ``patience``
    consecutive steps, so a diverged GAN (the study's WGAN-WC after 4 epochs) ends with a
    clear reason instead of checkpointing garbage."""

    def __init__(self, max_abs: float, patience: int):
        self.max_abs = max_abs
        self.patience = patience
        self.streak = 0

    def check(self, numbers: Mapping[str, float], step: int, epoch: int) -> str | None:
        """The reason to stop, or None."""
        for key, value in numbers.items():
            if not math.isfinite(value):
                return f"{key} is {value} at step {step} (epoch {epoch + 1})"
        worst = max((abs(numbers[k]) for k in LOSS_KEYS if k in numbers), default=0.0)
        self.streak = self.streak + 1 if worst > self.max_abs else 0
        if self.streak >= self.patience:
            return (f"losses exploded: |loss| = {worst:.3g} > {self.max_abs:g} for {self.streak} steps "
                    f"(step {step}, epoch {epoch + 1})")
        return None


class Prometheus:
    """Gauges of a training run: served on ``port`` and/or pushed to ``pushgateway`` at the end."""

    def __init__(self, model: str, port: int | None = None, pushgateway: str | None = None):
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        self.model = model
        self.pushgateway = pushgateway
        self.registry = CollectorRegistry()
        labels = ["model"]
        self.step = Gauge("technogan_train_step", "generator steps done", labels, registry=self.registry)
        self.epoch = Gauge("technogan_train_epoch", "current epoch (1-based)", labels, registry=self.registry)
        self.samples = Gauge("technogan_train_samples_per_second", "real samples per second", labels,
                             registry=self.registry)
        self.loss = Gauge("technogan_train_loss", "last loss value", labels + ["loss"], registry=self.registry)
        self.server = None
        if port is not None:
            self.server, _ = start_http_server(port, registry=self.registry)
            log.info("prometheus metrics on :%d/metrics", self.server.server_port)

    def update(self, step: int, epoch: int, numbers: Mapping[str, float], samples_per_s: float) -> None:
        self.step.labels(self.model).set(step)
        self.epoch.labels(self.model).set(epoch + 1)
        self.samples.labels(self.model).set(samples_per_s)
        for k in LOSS_KEYS:
            if k in numbers:
                self.loss.labels(self.model, k).set(numbers[k])

    def close(self) -> None:
        if self.pushgateway:
            from prometheus_client import push_to_gateway

            try:
                push_to_gateway(self.pushgateway, job="technogan-train", registry=self.registry,
                                grouping_key={"model": self.model})
            except Exception as e:  # monitoring must never fail a finished run
                log.warning("could not push metrics to %s: %s", self.pushgateway, e)
        if self.server is not None:
            self.server.shutdown()
