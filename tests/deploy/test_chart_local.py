"""The chart's commands really run: values-cpu-small.yaml, every Job's containers run on
this machine in the order their `technogan wait` init containers impose, against the
chart's own `mlflow server` on loopback; then the chart's TorchServe command serves the
champion the Jobs packaged. A typo in any rendered command, argument or variable fails it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.deploy import chart
from tests.deploy.local_runner import Pod, job_order, wait_targets

pytestmark = pytest.mark.slow


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if urllib.request.urlopen(url, timeout=3).status == 200:
                return
        except (OSError, urllib.error.HTTPError):
            pass
        assert proc.poll() is None, f"exited {proc.returncode}\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"{url} not up\n{log.read_text()[-4000:]}"
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def replace_arg(argv: list[str], flag: str, value: str) -> list[str]:
    i = argv.index(flag)
    return argv[:i + 1] + [value] + argv[i + 2:]


def start_pod_process(pod: Pod, container: dict, argv: list[str], env_overrides: dict[str, str],
                      log: Path) -> subprocess.Popen:
    paths = pod.path_map(container)
    if container.get("workingDir"):
        cwd = Path(pod.localise(container["workingDir"], paths))
    else:
        cwd = pod.root / f"cwd-{container['name']}"
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(argv, cwd=cwd, env=pod.env(container, paths, env_overrides),
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def rendered():
    return chart.objects(chart.preset("values-cpu-small.yaml"), hooks=False)


def test_cpu_small_preset_runs_end_to_end_and_serves_the_champion(tmp_path, rendered):
    objs = rendered
    configmaps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    jobs = chart.by_kind(objs, "Job")
    deployments = chart.by_kind(objs, "Deployment")
    services = chart.by_kind(objs, "Service")
    claim = tmp_path / "claim"
    claim.mkdir()
    ran: list[tuple[str, str, int]] = []  # (pod, container, exit code): the record of what ran

    # ---- the chart's MLflow server, on a free loopback port
    (mlflow_dep,) = [d for n, d in deployments.items() if n.endswith("-mlflow")]
    mlflow_svc = services[mlflow_dep["metadata"]["name"]]
    pod = Pod(mlflow_dep["spec"]["template"]["spec"], tmp_path / "pod-mlflow", claim, configmaps, chart.NAMESPACE)
    container = pod.spec["containers"][0]
    argv = pod.argv(container, pod.path_map(container))
    pod.assert_local(argv, pod.path_map(container))
    assert any(a == f"sqlite:///{claim}/mlflow/mlflow.db" for a in argv), argv
    hosts = argv[argv.index("--allowed-hosts") + 1].split(",")
    svc_name, svc_port = mlflow_svc["metadata"]["name"], mlflow_svc["spec"]["ports"][0]["port"]
    assert svc_name in hosts and f"{svc_name}.{chart.NAMESPACE}.svc:{svc_port}" in hosts
    (port,) = free_ports(1)
    argv = replace_arg(replace_arg(argv, "--host", "127.0.0.1"), "--port", str(port))
    # the chart admits its Service names (and localhost:<port> for port-forward); here the
    # clients reach it as 127.0.0.1 on the free port
    argv = replace_arg(argv, "--allowed-hosts", ",".join(hosts + [f"127.0.0.1:{port}"]))
    mlflow_log = tmp_path / "mlflow.log"
    server = start_pod_process(pod, container, argv, {}, mlflow_log)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", server, mlflow_log)

        # ---- every Job, in the order of their wait init containers
        order = job_order(jobs)
        assert order[0].endswith("-synth") and order[-1].endswith("-evaluate"), order
        for name in order:
            spec = jobs[name]["spec"]
            indexed = spec.get("completionMode") == "Indexed"
            for index in range(spec.get("completions", 1) if indexed else 1):
                pod = Pod(spec["template"]["spec"], tmp_path / f"pod-{name}-{index}", claim, configmaps,
                          chart.NAMESPACE, index=index if indexed else None)
                steps = [c for c in pod.spec.get("initContainers") or [] if wait_targets(c) is None]
                steps += pod.spec["containers"]
                for c in steps:
                    env = {e["name"]: e.get("value") for e in c.get("env") or []}
                    overrides = {}
                    if "MLFLOW_TRACKING_URI" in env:
                        # the chart points it at the in-cluster Service; here, the same server on loopback
                        assert env["MLFLOW_TRACKING_URI"] == f"http://{svc_name}:{svc_port}"
                        overrides["MLFLOW_TRACKING_URI"] = uri
                    if c["name"] == "rollout":
                        check_rollout(c, pod, objs, claim)
                        ran.append((pod.root.name, c["name"], 0))
                        continue
                    result = pod.run(c, overrides).check()
                    ran.append((pod.root.name, c["name"], result.returncode))
                    if c["name"] == "train":
                        # a retried (or preempted) pod: the same container continues the run
                        again = pod.run(c, overrides).check()
                        assert "resuming dcgan1" in again.output, again.output[-2000:]
                        ran.append((pod.root.name, "train (retried pod, --resume)", again.returncode))

        # ---- the end state: dataset, runs in MLflow, champion, archive
        index = (claim / "mels" / "index.jsonl").read_text().splitlines()
        assert len(index) == 36  # 6 synthetic tracks of 30 s, 5 s clips, both segment shards merged
        from tracking.registry import resolve_alias
        from tracking.runs import get_client

        client = get_client(uri)
        exp = client.get_experiment_by_name("technogan-cpu-small")
        runs = client.search_runs([exp.experiment_id])
        assert [r.info.run_name for r in runs] == ["dcgan1"]
        (run,) = runs
        assert run.info.status == "FINISHED" and "eval.fd_learned" in run.data.metrics
        assert (claim / "train" / "dcgan1" / "LATEST").read_text().strip() == run.info.run_id
        version = resolve_alias("champion", "technogan-generator", uri=uri)
        assert version.run_id == run.info.run_id
        archive = claim / "model-store" / "technogan.mar"
        assert archive.stat().st_size > 10_000
    finally:
        stop(server)

    # ---- the chart's TorchServe command serves that archive
    serve_champion(tmp_path, deployments, configmaps, claim, ran)
    print(json.dumps(ran))


def check_rollout(container: dict, pod: Pod, objs: list[dict], claim: Path) -> None:
    """The rollout step (technogan rollout, the kwait helper's command, talks to the API
    server): its target is the chart's TorchServe Deployment, its archive the one the
    package step wrote, and the Role allows exactly that patch."""
    argv = pod.argv(container, pod.path_map(container))
    assert argv[:2] == ["technogan", "rollout"]
    deployment = argv[argv.index("--deployment") + 1]
    assert deployment in chart.by_kind(objs, "Deployment")
    archive = Path(argv[argv.index("--archive") + 1])
    assert archive == claim / "model-store" / "technogan.mar" and archive.is_file()
    assert any(e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace"
               for e in container["env"] if e["name"] == "POD_NAMESPACE")
    (role,) = chart.by_kind(objs, "Role").values()
    patch_rules = [r for r in role["rules"] if "patch" in r["verbs"]]
    assert patch_rules == [{"apiGroups": ["apps"], "resources": ["deployments"],
                            "resourceNames": [deployment], "verbs": ["patch"]}]


def serve_champion(tmp_path: Path, deployments: dict, configmaps: dict, claim: Path, ran: list) -> None:
    (dep,) = [d for n, d in deployments.items() if n.endswith("-torchserve")]
    spec = dep["spec"]["template"]["spec"]
    pod = Pod(spec, tmp_path / "pod-torchserve", claim, configmaps, chart.NAMESPACE)
    # the init container that waits for the first archive lets the pod start now
    (wait_archive,) = spec["initContainers"]
    result = pod.run(wait_archive, timeout=60).check()
    ran.append((pod.root.name, wait_archive["name"], result.returncode))
    container = spec["containers"][0]
    paths = pod.path_map(container)
    props = Path(pod.localise("/etc/torchserve/config.properties", paths))
    text = props.read_text()
    assert re.search(r"^management_address=http://127\.0\.0\.1:", text, re.M)
    # free ports on loopback instead of the pod's own network namespace
    inference, management, metrics, grpc_i, grpc_m, gate = free_ports(6)
    text = re.sub(r"^inference_address=.*$", f"inference_address=http://127.0.0.1:{inference}", text, flags=re.M)
    text = re.sub(r"^management_address=.*$", f"management_address=http://127.0.0.1:{management}", text, flags=re.M)
    text = re.sub(r"^metrics_address=.*$", f"metrics_address=http://127.0.0.1:{metrics}", text, flags=re.M)
    text = re.sub(r"^grpc_inference_port=.*$", f"grpc_inference_port={grpc_i}", text, flags=re.M)
    text = re.sub(r"^grpc_management_port=.*$", f"grpc_management_port={grpc_m}", text, flags=re.M)
    props.chmod(0o644)
    props.write_text(text)
    argv = pod.argv(container, paths)
    pod.assert_local(argv, paths)
    # the container runs the gate, which starts TorchServe: the gate listens on the Service's
    # port and forwards to TorchServe's (loopback) inference address
    assert argv[:2] == ["technogan", "gate"] and argv[argv.index("--listen") + 1] == "0.0.0.0:8080"
    argv = replace_arg(argv, "--listen", f"127.0.0.1:{gate}")
    argv = replace_arg(argv, "--upstream", f"http://127.0.0.1:{inference}")
    log = tmp_path / "torchserve.log"
    proc = start_pod_process(pod, container, argv, {}, log)
    try:
        probe = container["readinessProbe"]["httpGet"]["path"]
        wait_http(f"http://127.0.0.1:{gate}{probe}", proc, log)
        deadline = time.monotonic() + 240
        while True:  # /ping is healthy before the model's worker is up
            req = urllib.request.Request(f"http://127.0.0.1:{gate}/predictions/technogan",
                                         data=json.dumps({"n": 1, "seed": 0}).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                body = json.loads(urllib.request.urlopen(req, timeout=120).read())
                break
            except urllib.error.HTTPError as e:
                assert e.code in (404, 503) and time.monotonic() < deadline, (e.code, log.read_text()[-3000:])
                time.sleep(1)
        assert body["shape"][0] == 1 and len(body["mels"]) == 1
        with pytest.raises(urllib.error.HTTPError) as refused:  # the gate, not TorchServe, answers a GET
            urllib.request.urlopen(f"http://127.0.0.1:{gate}/predictions/technogan", timeout=30)
        assert refused.value.code == 405 and refused.value.headers["Allow"] == "POST"
        metrics_text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
        assert "ts_inference_requests_total" in metrics_text
        ran.append((pod.root.name, container["name"], 0))
    finally:
        stop(proc)
    # SIGTERM to the gate stopped TorchServe too: its inference port is free again
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", inference)) != 0


def test_a_typo_in_a_rendered_argument_fails_the_run(tmp_path, rendered):
    """The runner takes the chart's arguments as they are: one wrong flag is a failed step."""
    jobs = chart.by_kind(rendered, "Job")
    configmaps = {o["metadata"]["name"]: o["data"] for o in rendered if o["kind"] == "ConfigMap"}
    spec = jobs["technogan-merge"]["spec"]["template"]["spec"]
    (merge,) = spec["containers"]
    broken = {**merge, "args": [a.replace("--config", "--cofnig") for a in merge["args"]]}
    pod = Pod(spec, tmp_path / "pod", tmp_path / "claim", configmaps, chart.NAMESPACE)
    result = pod.run(broken)
    assert result.returncode == 2 and "unrecognized arguments: --cofnig" in result.output
    with pytest.raises(AssertionError, match="exit 2"):
        result.check()
