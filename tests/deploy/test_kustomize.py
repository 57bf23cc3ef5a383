"""k8s/: the kustomize base is the chart's default rendering and each overlay builds
(with the real `kubectl kustomize`) into exactly the chart's rendering of its preset,
valid against the Kubernetes 1.33 schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy import chart

KUBECTL = str(Path(sys.executable).with_name("kubectl"))
K8S = chart.ROOT / "k8s"


def kustomize(folder: Path) -> list[dict]:
    out = subprocess.run([KUBECTL, "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def keyed(objs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def test_k8s_folder_is_what_render_py_writes_from_the_chart():
    proc = subprocess.run([sys.executable, str(K8S / "render.py"), "--check"], capture_output=True, text=True,
                          timeout=300, cwd=chart.ROOT)
    assert proc.returncode == 0, f"k8s/ is stale; run `.venv/bin/python k8s/render.py`\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("folder, preset", [("base", None), ("overlays/cpu-small", "values-cpu-small.yaml"),
                                            ("overlays/gpu-study", "values-study.yaml")])
def test_kustomize_build_equals_the_chart_rendering(folder, preset):
    built = keyed(kustomize(K8S / folder))
    expected = keyed(chart.objects(chart.preset(preset) if preset else None, hooks=False))
    assert sorted(built) == sorted(expected)
    for k, obj in expected.items():
        assert built[k] == obj, f"{folder}: {k} differs from the chart"
    for obj in built.values():
        if obj["kind"] not in chart.CRD_KINDS:
            chart.validate(obj)


def test_overlays_differ_where_their_presets_do():
    small = kustomize(K8S / "overlays" / "cpu-small")
    study = kustomize(K8S / "overlays" / "gpu-study")
    small_jobs = {o["metadata"]["name"] for o in small if o["kind"] == "Job"}
    assert "technogan-synth" in small_jobs and "technogan-scrape" not in small_jobs
    assert "nvidia.com/gpu" not in yaml.safe_dump(small)
    study_train = [o for o in study if o["kind"] == "Job" and o["metadata"]["name"].startswith("technogan-train-")]
    assert len(study_train) == 6
    for job in study_train:
        (c,) = job["spec"]["template"]["spec"]["containers"]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
