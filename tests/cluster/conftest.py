"""Fixtures for the cluster commands: the fake Kubernetes API on loopback and a kubeconfig for it."""

from __future__ import annotations

import pytest

from tests.cluster.fake_k8s import FakeKube


@pytest.fixture
def kube():
    with FakeKube(namespace="technogan") as fake:
        yield fake


@pytest.fixture
def kubeconfig(kube, tmp_path, monkeypatch):
    """A kubeconfig for the fake; in-cluster detection is switched off (CI may itself run in a pod)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return kube.write_kubeconfig(tmp_path / "kubeconfig")
