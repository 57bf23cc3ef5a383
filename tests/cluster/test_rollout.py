"""`technogan rollout` against the fake Deployments API: the digest annotation, idempotence, errors."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import cli, cluster
from pipeline.errors import UserError

TECHNOGAN = str(Path(sys.executable).with_name("technogan"))
KEY = "technogan.io/archive-sha256"


@pytest.fixture
def archive(tmp_path) -> Path:
    path = tmp_path / "model-store" / "technogan.mar"
    path.parent.mkdir()
    path.write_bytes(b"PK\x03\x04 a champion archive " + bytes(range(256)) * 64)
    return path


def annotations(kube, name="technogan-serve") -> dict:
    return kube.deployments[name]["spec"]["template"]["metadata"]["annotations"]


def test_rollout_patches_the_template_annotation_once_per_archive(kube, kubeconfig, archive):
    kube.add_deployment("technogan-serve", {"prometheus.io/scrape": "true"})
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()

    result = cluster.rollout("technogan-serve", archive, namespace="technogan", kubeconfig=kubeconfig)
    assert result.changed and result.digest == digest and result.previous is None
    assert kube.patches == [{"name": "technogan-serve", "content_type": "application/strategic-merge-patch+json",
                             "body": {"spec": {"template": {"metadata": {"annotations": {KEY: digest}}}}}}]
    assert annotations(kube) == {"prometheus.io/scrape": "true", KEY: digest}  # other annotations kept
    assert kube.deployments["technogan-serve"]["metadata"]["generation"] == 2  # a new rollout

    again = cluster.rollout("technogan-serve", archive, namespace="technogan", kubeconfig=kubeconfig)
    assert not again.changed and "nothing to patch" in again.message
    assert len(kube.patches) == 1 and kube.deployments["technogan-serve"]["metadata"]["generation"] == 2

    archive.write_bytes(archive.read_bytes() + b"a new champion")
    new = hashlib.sha256(archive.read_bytes()).hexdigest()
    third = cluster.rollout("technogan-serve", archive, namespace="technogan", kubeconfig=kubeconfig)
    assert third.changed and third.previous == digest and annotations(kube)[KEY] == new
    assert kube.deployments["technogan-serve"]["metadata"]["generation"] == 3


def test_without_get_permission_it_patches_anyway(kube, kubeconfig, archive):
    kube.add_deployment("technogan-serve")
    kube.deny("get", "deployments")
    result = cluster.rollout("technogan-serve", archive, namespace="technogan", kubeconfig=kubeconfig)
    assert result.changed and annotations(kube)[KEY] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert "no get permission" in result.message
    # the second time it cannot tell; the patch it sends changes nothing (no new rollout)
    cluster.rollout("technogan-serve", archive, namespace="technogan", kubeconfig=kubeconfig)
    assert len(kube.patches) == 2 and kube.deployments["technogan-serve"]["metadata"]["generation"] == 2


def test_missing_archive_is_a_user_error_and_calls_nothing(kube, kubeconfig, tmp_path):
    with pytest.raises(UserError, match=r"archive .*nope\.mar does not exist"):
        cluster.rollout("technogan-serve", tmp_path / "nope.mar", namespace="technogan", kubeconfig=kubeconfig)
    assert kube.requests == []


def test_missing_deployment_is_a_user_error_naming_it(kube, kubeconfig, archive):
    with pytest.raises(UserError, match="Deployment technogan-serve in namespace technogan not found"):
        cluster.rollout("technogan-serve", archive, namespace="technogan", kubeconfig=kubeconfig)
    assert kube.patches == []


def test_403_on_patch_names_the_missing_permission(kube, kubeconfig, archive):
    kube.add_deployment("technogan-serve")
    kube.deny("patch", "deployments")
    with pytest.raises(UserError) as e:
        cluster.rollout("technogan-serve", archive, namespace="technogan", kubeconfig=kubeconfig)
    assert "lacks get and patch on deployments/technogan-serve" in str(e.value)
    assert "namespace 'technogan'" in str(e.value) and "cannot patch" in str(e.value)
    assert KEY not in annotations(kube)


def test_cli_exit_codes(kube, kubeconfig, archive, capsys):
    kube.add_deployment("technogan-serve")
    env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
    proc = subprocess.run([TECHNOGAN, "rollout", "--deployment", "technogan-serve", "--archive", str(archive),
                           "--namespace", "technogan", "--kubeconfig", str(kubeconfig)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "patched Deployment technogan-serve" in proc.stdout
    assert annotations(kube)[KEY] == hashlib.sha256(archive.read_bytes()).hexdigest()

    args = ["rollout", "--deployment", "technogan-serve", "--namespace", "technogan", "--kubeconfig", str(kubeconfig)]
    assert cli.main([*args, "--archive", str(archive)]) == 0
    assert "nothing to patch" in capsys.readouterr().out
    assert cli.main([*args, "--archive", str(archive.with_name("missing.mar"))]) == 2
    assert "missing.mar does not exist" in capsys.readouterr().err
    assert cli.main(["rollout", "--deployment", "other", "--archive", str(archive), "--namespace", "technogan",
                     "--kubeconfig", str(kubeconfig)]) == 2
    assert "Deployment other in namespace technogan not found" in capsys.readouterr().err
