"""`technogan wait` against the fake Jobs API: list, watch, reconnects, 410, failures, timeout, 403."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline import cli, cluster
from pipeline.errors import UserError
from tests.cluster.fake_k8s import FakeKube

TECHNOGAN = str(Path(sys.executable).with_name("technogan"))


def wait(kube, kubeconfig, names, script=None, timeout_s=30.0, **kw):
    """Run wait_for_jobs while ``script`` (a function of nothing) changes the fake's Jobs in a thread."""
    lines: list[str] = []
    errors: list[BaseException] = []

    def run_script():
        try:
            script()
        except BaseException as e:  # surfaced below, not lost in the thread
            errors.append(e)

    t = threading.Thread(target=run_script, daemon=True) if script else None
    if t:
        t.start()
    try:
        result = cluster.wait_for_jobs(names, timeout_s=timeout_s, namespace=kube.namespace, kubeconfig=kubeconfig,
                                       retry_s=0.05, report=lines.append, **kw)
    finally:
        if t:
            t.join(timeout=30)
    assert not errors, errors
    return result, lines


def test_jobs_that_complete_later_arrive_over_the_watch(kube, kubeconfig):
    kube.create_job("segment", completions=4)

    def script():
        kube.wait_for_watches(1)  # listed, now listening
        kube.update_job("segment", active=4)
        kube.create_job("merge")
        kube.update_job("segment", active=2, succeeded=2)
        kube.complete_job("segment")
        kube.complete_job("merge")

    result, lines = wait(kube, kubeconfig, ["segment", "merge"], script)
    assert result.code == cluster.EXIT_COMPLETE, result.message
    assert result.jobs["segment"].complete and result.jobs["merge"].complete
    # one list, then everything through one watch started at the list's resourceVersion
    assert kube.count("GET", watch=None) == 1 and kube.count("GET") == 2
    assert kube.watch_versions() == ["1001"]
    assert "merge (not created yet)" in lines[0] and "segment (active 0, succeeded 0/4" in lines[0]
    assert any("segment (active 2, succeeded 2/4" in line for line in lines)


def test_already_complete_jobs_need_no_watch(kube, kubeconfig):
    kube.create_job("a")
    kube.complete_job("a")
    result, _ = wait(kube, kubeconfig, ["a"])
    assert result.code == 0 and kube.watch_versions() == []


def test_a_watch_dropped_mid_stream_reconnects_from_the_last_event(kube, kubeconfig):
    kube.create_job("a")
    kube.create_job("b")
    kube.drop_watches_after(1)
    seen: dict[str, str] = {}

    def script():
        kube.wait_for_watches(1)
        seen["a"] = kube.complete_job("a")["metadata"]["resourceVersion"]  # delivered
        kube.update_job("b", active=1)  # the connection dies before this one is sent
        kube.wait_for_watches(2)
        kube.complete_job("b")

    result, lines = wait(kube, kubeconfig, ["a", "b"], script)
    assert result.code == 0, result.message
    # resumed from the last event it saw, without relisting, and lost no event
    assert kube.watch_versions() == ["1002", seen["a"]]
    assert kube.count("GET", watch=None) == 1
    assert any("watch connection dropped" in line and f"resourceVersion {seen['a']}" in line for line in lines)
    assert any("b (active 1" in line for line in lines)


def test_a_watch_that_ends_is_reopened(kube, kubeconfig):
    kube.create_job("a")

    def script():
        kube.wait_for_watches(2)  # the first watch ended after its 1 s; the second is open
        kube.complete_job("a")

    result, _ = wait(kube, kubeconfig, ["a"], script, watch_timeout_s=1)
    assert result.code == 0
    assert len(kube.watch_versions()) >= 2 and set(kube.watch_versions()) == {"1001"}
    assert all(q["timeoutSeconds"] == "1" for _, _, q in kube.requests if q.get("watch"))


def test_410_gone_relists_then_watches_from_the_new_version(kube, kubeconfig):
    kube.create_job("a")
    kube.expire_watches(1)

    def script():
        kube.wait_for_watches(2)
        kube.complete_job("a")

    kube.create_job("b")
    kube.complete_job("b")  # resourceVersion 1003 before the first list
    result, lines = wait(kube, kubeconfig, ["a", "b"], script)
    assert result.code == 0, result.message
    assert kube.count("GET", watch=None) == 2 and kube.watch_versions() == ["1003", "1003"]
    assert any("410" in line and "relisting" in line for line in lines)


def test_a_failed_job_exits_1_naming_it_and_its_reason(kube, kubeconfig):
    kube.create_job("train-dcgan1")
    kube.create_job("train-wgan-gp")

    def script():
        kube.wait_for_watches(1)
        kube.complete_job("train-dcgan1")
        kube.fail_job("train-wgan-gp", reason="PodFailurePolicy",
                      message="Container main for pod train-wgan-gp-x failed with exit code 3")

    result, _ = wait(kube, kubeconfig, ["train-dcgan1", "train-wgan-gp"], script)
    assert result.code == cluster.EXIT_FAILED == 1
    assert result.message.startswith("Job train-wgan-gp failed: PodFailurePolicy")
    assert "exit code 3" in result.message and "train-dcgan1" not in result.message


def test_timeout_exits_124_naming_the_pending_jobs(kube, kubeconfig):
    kube.create_job("a")
    kube.update_job("a", active=1)
    result, lines = wait(kube, kubeconfig, ["a", "ghost"], timeout_s=1.5)
    assert result.code == cluster.EXIT_TIMEOUT == 124
    assert "a (active 1, succeeded 0/1" in result.message and "ghost (not created yet)" in result.message
    assert "never created: ghost" in result.message
    # the server-side watch timeout never exceeded what was left of the wait
    assert all(int(q["timeoutSeconds"]) <= 2 for _, _, q in kube.requests if q.get("watch"))


def test_a_deleted_job_is_waited_for_again(kube, kubeconfig):
    kube.create_job("a")

    def script():
        kube.wait_for_watches(1)
        kube.delete_job("a")
        kube.create_job("a")
        kube.complete_job("a")

    result, lines = wait(kube, kubeconfig, ["a"], script)
    assert result.code == 0
    assert any("a (deleted" in line for line in lines)


def test_a_completed_job_removed_by_its_ttl_stays_completed(kube, kubeconfig):
    kube.create_job("a")
    kube.create_job("b")

    def script():
        kube.wait_for_watches(1)
        kube.complete_job("a")
        kube.delete_job("a")  # ttlSecondsAfterFinished while b still runs
        kube.complete_job("b")

    result, _ = wait(kube, kubeconfig, ["a", "b"], script)
    assert result.code == 0, result.message


@pytest.mark.parametrize("verb", ["list", "watch"])
def test_403_is_a_user_error_naming_the_missing_permission(kube, kubeconfig, verb):
    kube.create_job("a")
    kube.deny(verb, "jobs")
    with pytest.raises(UserError) as e:
        wait(kube, kubeconfig, ["a"])
    text = str(e.value)
    assert "lacks get/list/watch on jobs" in text and "namespace 'technogan'" in text
    assert f"cannot {verb}" in text  # the API server's own words are kept


def test_namespace_defaults(monkeypatch, tmp_path):
    monkeypatch.setattr(cluster, "SA_NAMESPACE_FILE", tmp_path / "namespace")
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert cluster.default_namespace() == "default"
    (tmp_path / "namespace").write_text("from-sa\n")
    assert cluster.default_namespace() == "from-sa"
    monkeypatch.setenv("POD_NAMESPACE", "from-env")
    assert cluster.default_namespace() == "from-env"


def test_no_cluster_configuration_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(UserError, match="no Kubernetes configuration"):
        cluster.wait_for_jobs(["a"], timeout_s=1, namespace="x", kubeconfig=tmp_path / "missing")


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["wait", "--help"])
    out = capsys.readouterr().out
    assert "124 timed out" in out and "1 a Job failed" in out and "get, list, watch on jobs" in out


def _cli(kube, kubeconfig, *args, env=None):
    env = {k: v for k, v in os.environ.items() if k not in ("KUBERNETES_SERVICE_HOST", "POD_NAMESPACE")}
    env.update(KUBECONFIG=str(kubeconfig), POD_NAMESPACE=kube.namespace)  # as the chart's env sets it
    return subprocess.Popen([TECHNOGAN, "wait", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_cli_exit_codes(kube, kubeconfig):
    kube.create_job("segment")
    kube.create_job("train")

    proc = _cli(kube, kubeconfig, "--job", "segment", "--timeout", "60", "--retry", "0.1")
    kube.wait_for_watches(1)
    kube.complete_job("segment")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "waiting for Job(s) in namespace technogan" in out and "all Jobs completed: segment" in out

    kube.fail_job("train", reason="BackoffLimitExceeded")
    proc = _cli(kube, kubeconfig, "--job", "segment", "--job", "train", "--timeout", "60")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Job train failed: BackoffLimitExceeded" in err

    proc = _cli(kube, kubeconfig, "--job", "later", "--timeout", "1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 124 and "never created: later" in err

    kube.deny("list", "jobs")
    proc = _cli(kube, kubeconfig, "--job", "segment", "--timeout", "60")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "lacks get/list/watch on jobs" in err


def test_bookmarks_move_the_resume_point(kube, kubeconfig):
    kube.create_job("a")
    kube.drop_watches_after(1)
    marks: list[int] = []

    def script():
        kube.wait_for_watches(1)
        marks.append(kube.bookmark())  # delivered, then the connection is cut at the next event
        kube.update_job("a", active=1)
        kube.wait_for_watches(2)
        kube.complete_job("a")

    result, _ = wait(kube, kubeconfig, ["a"], script)
    assert result.code == 0 and kube.watch_versions() == ["1001", str(marks[0])]


def test_an_unavailable_api_server_is_retried(kube, kubeconfig):
    kube.create_job("a")
    kube.complete_job("a")
    kube.fail_next(3)  # e.g. the API server restarting
    result, lines = wait(kube, kubeconfig, ["a"])
    assert result.code == 0 and kube.count("GET", watch=None) == 4
    assert sum("HTTP 503" in line for line in lines) == 3


def test_in_a_pod_it_uses_the_service_account(tmp_path, monkeypatch):
    """The in-cluster path the chart's init containers take: HTTPS to KUBERNETES_SERVICE_HOST,
    the CA and token from the ServiceAccount files, the namespace from the namespace file."""
    from kubernetes.config import incluster_config

    with FakeKube(namespace="study", tls_dir=tmp_path / "tls") as kube:
        token, ca = kube.write_service_account(tmp_path / "sa")
        monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
        monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
        monkeypatch.setattr(cluster, "SA_NAMESPACE_FILE", tmp_path / "sa" / "namespace")
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube.port))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))  # no fallback to hide a failure
        monkeypatch.delenv("POD_NAMESPACE", raising=False)
        kube.create_job("a")
        kube.complete_job("a")
        result = cluster.wait_for_jobs(["a"], timeout_s=30, report=lambda line: None)
        assert result.code == 0
        assert kube.requests == [("GET", "/apis/batch/v1/namespaces/study/jobs", {})]


def test_a_wrong_ca_is_a_user_error_not_retried(tmp_path, monkeypatch):
    from kubernetes.config import incluster_config

    with FakeKube(tls_dir=tmp_path / "tls") as kube, FakeKube(tls_dir=tmp_path / "other") as other:
        token, _ = kube.write_service_account(tmp_path / "sa")
        monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
        monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(other.ca_file))  # not kube's CA
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(kube.port))
        with pytest.raises(UserError, match="TLS with the Kubernetes API server failed"):
            cluster.wait_for_jobs(["a"], timeout_s=60, namespace="technogan", report=lambda line: None)
