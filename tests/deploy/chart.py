"""Rendering the chart with Helm's own engine (helm-python-sdk) and validating objects
against the Kubernetes 1.33 schemas (kubernetes-validate, strict): helpers the deploy
tests share."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "technogan"
KUBE_VERSION = "1.33.0"
RELEASE = "technogan"
NAMESPACE = "technogan"

# Objects whose schema is a CRD's, not in Kubernetes' own (validated by shape in the tests).
CRD_KINDS = {"ServiceMonitor"}


def preset(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / name).read_text())


def two_gpu_run() -> dict[str, Any]:
    return {"name": "big", "model": "wgan-gp", "epochs": 2, "maxSamples": 0, "gpus": 2, "nodes": 1}


# The variants the issue names, each on top of the chart's defaults.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cpu-small": preset("values-cpu-small.yaml"),
    "study": preset("values-study.yaml"),
    "no-scrape": {"dataSource": "claim", "audioPath": "/data/my-audio"},
    "external-mlflow-secret": {"mlflowEnabled": False, "trackingUriSecretName": "mlflow-uri",
                               "trackingUriSecretKey": "uri"},
    "one-cpu-run": {"runs": [{"name": "cpu", "model": "dcgan2", "epochs": 1, "gpus": 0}]},
    "two-gpu-run": {"runs": [two_gpu_run()]},
    "multi-node": {"runs": [{**two_gpu_run(), "name": "multi", "nodes": 3}]},
    "token-auth": {"torchserveTokenAuth": True},
    "service-monitor": {"serviceMonitorEnabled": True, "prometheusAnnotations": False},
}


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """template path -> rendered text (NOTES.txt included), by Helm's engine."""
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    return chart.render(copy.deepcopy(values) if values else None, name=RELEASE, namespace=NAMESPACE,
                        is_install=True)


def objects(values: dict[str, Any] | None = None, *, hooks: bool = True) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart renders for these values."""
    out = []
    for path, text in sorted(render(values).items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            if not hooks and "helm.sh/hook" in (doc.get("metadata", {}).get("annotations") or {}):
                continue
            out.append(doc)
    return out


def validate(obj: dict[str, Any]) -> None:
    """Raise kubernetes_validate.ValidationError when the object breaks the 1.33 schema."""
    import kubernetes_validate

    kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind = obj["kind"]
    if kind == "Pod":
        return obj["spec"]
    if kind in ("Job", "Deployment", "StatefulSet", "DaemonSet"):
        return obj["spec"]["template"]["spec"]
    return None


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}
