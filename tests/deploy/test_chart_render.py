"""helm/technogan rendered by Helm's own engine for the defaults, both presets and the
variants of chart.VARIANTS: helm lint, every object valid against the Kubernetes 1.33
schemas (strict), and the chart's policies checked over every object."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.deploy import chart
from tests.deploy.local_runner import job_order

VARIANTS = sorted(chart.VARIANTS)
STANDARD_LABELS = {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                   "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "helm.sh/chart"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: chart.objects(values) for name, values in chart.VARIANTS.items()}


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def pods(objs: list[dict]):
    for o in objs:
        spec = chart.pod_spec(o)
        if spec is not None:
            yield o, spec


def gpu_limit(c: dict) -> int:
    return int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


# ---------------------------------------------------------------- lint and schemas

@pytest.mark.parametrize("values", [None, "values-cpu-small.yaml", "values-study.yaml"])
def test_helm_lint_strict_is_clean(values):
    import helm_python

    report = helm_python.lint(str(chart.CHART), chart.preset(values) if values else None, strict=True,
                              kube_version="v1.33.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_is_valid_kubernetes_1_33(variant, rendered):
    objs = rendered[variant]
    assert len(objs) >= 12
    for obj in objs:
        if obj["kind"] in chart.CRD_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1" and obj["spec"]["endpoints"]
            continue
        chart.validate(obj)


def test_the_validator_catches_what_the_1_33_schema_forbids(rendered):
    import kubernetes_validate

    job = next(o for o in rendered["defaults"] if o["kind"] == "Job" and "podFailurePolicy" in o["spec"])
    broken = yaml.safe_load(yaml.safe_dump(job))
    del broken["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["status"]
    with pytest.raises(kubernetes_validate.ValidationError, match="status"):
        chart.validate(broken)


# ---------------------------------------------------------------- policies over every object

@pytest.mark.parametrize("variant", VARIANTS)
def test_every_container_has_requests_and_limits(variant, rendered):
    for obj, spec in pods(rendered[variant]):
        for c in containers(spec):
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part) or {}), (obj["metadata"]["name"], c["name"], part)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pod_is_non_root_read_only_and_without_privileges(variant, rendered):
    for obj, spec in pods(rendered[variant]):
        name = obj["metadata"]["name"]
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, name
        mounted_tmp = False
        for c in containers(spec):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (name, c["name"])
            assert sc["readOnlyRootFilesystem"] is True, (name, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (name, c["name"])
            assert "privileged" not in sc and "add" not in sc["capabilities"]
            mounted_tmp |= any(m["mountPath"] == "/tmp" for m in c.get("volumeMounts") or [])
        # programs write somewhere: every pod has an emptyDir /tmp
        assert mounted_tmp, name
        empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in containers(spec):
            for m in c.get("volumeMounts") or []:
                if m["mountPath"] == "/tmp":
                    assert m["name"] in empty


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_image_is_pinned(variant, rendered):
    for _obj, spec in pods(rendered[variant]):
        for c in containers(spec):
            image = c["image"]
            assert re.search(r"(:[\w][\w.-]*|@sha256:[0-9a-f]{64})$", image.split("/")[-1]), image
            assert not image.endswith(":latest"), image


@pytest.mark.parametrize("variant", VARIANTS)
def test_gpu_jobs_have_gpu_limits_shm_and_a_failure_policy(variant, rendered):
    values = chart.VARIANTS[variant]
    runs = values.get("runs") or chart.preset("values.yaml")["runs"]
    jobs = chart.by_kind(rendered[variant], "Job")
    gpu_jobs = 0
    for run in runs:
        job = jobs[f"technogan-train-{run['name']}"]
        spec = job["spec"]["template"]["spec"]
        (train,) = spec["containers"]
        assert gpu_limit(train) == run.get("gpus", 0)
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
        fail = [r for r in rules if r["action"] == "FailJob"]
        assert fail and set(fail[0]["onExitCodes"]["values"]) == {2, 3}
        assert job["spec"]["backoffLimit"] >= 1 and job["spec"]["ttlSecondsAfterFinished"] > 0
        assert "--resume" in " ".join(train["command"])
        if run.get("gpus", 0) > 0:
            gpu_jobs += 1
            shm = {v["name"] for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"}
            assert any(m["mountPath"] == "/dev/shm" and m["name"] in shm for m in train["volumeMounts"])
            assert train["image"].endswith("-cuda") and "--device" in train["args"]
            assert train["args"][train["args"].index("--device") + 1] == "cuda"
    if variant == "study":
        assert gpu_jobs == 6


@pytest.mark.parametrize("variant", VARIANTS)
def test_names_fit_63_characters(variant, rendered):
    for obj in rendered[variant]:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        if obj["kind"] == "Job" and obj["spec"].get("completionMode") == "Indexed":
            # the pods' hostnames are "<job>-<index>"
            assert len(f"{name}-{obj['spec']['completions'] - 1}") <= 63


@pytest.mark.parametrize("variant", VARIANTS)
def test_management_port_is_in_no_service_and_binds_loopback(variant, rendered):
    objs = rendered[variant]
    for svc in chart.by_kind(objs, "Service").values():
        for port in svc["spec"]["ports"]:
            assert 8081 not in (port["port"], port.get("targetPort")) and port.get("targetPort") != "management"
    for dep in chart.by_kind(objs, "Deployment").values():
        for c in containers(dep["spec"]["template"]["spec"]):
            assert all(p["containerPort"] != 8081 for p in c.get("ports") or [])
    props = next(o for o in objs if o["kind"] == "ConfigMap")["data"]["config.properties"]
    assert re.search(r"^management_address=http://127\.0\.0\.1:8081$", props, re.M)
    # TorchServe's inference is the gate's upstream, on loopback: nothing of it faces the network
    assert re.search(r"^inference_address=http://127\.0\.0\.1:8085$", props, re.M)
    for line in ("metrics_mode=prometheus", "decode_input_request=false"):
        assert re.search(rf"^{line}$", props, re.M)
    policy = chart.by_kind(objs, "NetworkPolicy")["technogan-torchserve"]
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert sorted(ports) == [8080, 8082]
    (metrics_rule,) = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 8082]
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_and_pod_has_the_standard_labels(variant, rendered):
    for obj in rendered[variant]:
        assert STANDARD_LABELS <= set(obj["metadata"]["labels"]), obj["metadata"]["name"]
        if obj["kind"] in ("Job", "Deployment"):
            assert STANDARD_LABELS <= set(obj["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_jobs_wait_for_each_other_in_the_pipeline_order(variant, rendered):
    objs = rendered[variant]
    jobs = chart.by_kind(objs, "Job")
    order = job_order(jobs)
    pos = {n: i for i, n in enumerate(order)}
    assert pos["technogan-segment"] < pos["technogan-merge"] < pos["technogan-evaluate"] == len(order) - 1
    for name in jobs:
        if name.startswith("technogan-train-"):
            assert pos["technogan-merge"] < pos[name] < pos["technogan-evaluate"]
    source = (chart.preset("values.yaml") | chart.VARIANTS[variant])["dataSource"]
    first = {"scrape": "technogan-scrape", "synth": "technogan-synth", "claim": "technogan-segment"}[source]
    assert order[0] == first
    for job in jobs.values():
        spec = job["spec"]["template"]["spec"]
        waits = [c for c in spec.get("initContainers") or [] if c["name"] == "wait"]
        if waits:  # the wait containers read Jobs with the namespace from the downward API
            assert spec["serviceAccountName"] == "technogan-jobs"
            env = {e["name"]: e for e in waits[0]["env"]}
            assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
            args = waits[0]["args"]
            assert args[0] == "wait" and "--timeout" in args and "--job" in args


def test_the_role_only_reads_jobs_and_patches_the_torchserve_deployment(rendered):
    (role,) = chart.by_kind(rendered["defaults"], "Role").values()
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["technogan-torchserve"],
         "verbs": ["patch"]}]
    (binding,) = chart.by_kind(rendered["defaults"], "RoleBinding").values()
    assert binding["subjects"][0]["name"] == "technogan-jobs"
    plain = chart.by_kind(rendered["defaults"], "ServiceAccount")["technogan"]
    assert plain["automountServiceAccountToken"] is False


# ---------------------------------------------------------------- variants do what they say

def test_defaults_scrape_then_segment_as_indexed_jobs_sharded_by_index(rendered):
    jobs = chart.by_kind(rendered["defaults"], "Job")
    for name, shards in (("technogan-scrape", 4), ("technogan-segment", 4)):
        spec = jobs[name]["spec"]
        assert spec["completionMode"] == "Indexed" and spec["completions"] == shards
        (c,) = spec["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["TECHNOGAN_SHARD_COUNT"] == str(shards) and "--shard" not in c["args"]
    assert "--merge" in jobs["technogan-merge"]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_no_scrape_segments_the_audio_on_the_claim(rendered):
    jobs = chart.by_kind(rendered["no-scrape"], "Job")
    assert "technogan-scrape" not in jobs and "technogan-synth" not in jobs
    args = jobs["technogan-segment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--input") + 1] == "/data/my-audio"


def test_external_mlflow_comes_from_the_secret(rendered):
    objs = rendered["external-mlflow-secret"]
    assert "technogan-mlflow" not in chart.by_kind(objs, "Deployment")
    for _obj, spec in pods(objs):
        for c in containers(spec):
            for e in c.get("env") or []:
                if e["name"] == "MLFLOW_TRACKING_URI":
                    assert e["valueFrom"]["secretKeyRef"] == {"name": "mlflow-uri", "key": "uri"}


def test_in_chart_mlflow_serves_artifacts_for_its_service_names(rendered):
    dep = chart.by_kind(rendered["defaults"], "Deployment")["technogan-mlflow"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert "--serve-artifacts" in args
    assert args[args.index("--backend-store-uri") + 1].startswith("sqlite:////data/")
    hosts = args[args.index("--allowed-hosts") + 1].split(",")
    assert {"technogan-mlflow", "technogan-mlflow:5000", "technogan-mlflow.technogan.svc:5000"} <= set(hosts)
    notes = chart.render(None)["technogan/templates/NOTES.txt"]
    assert "port-forward svc/technogan-mlflow 5000:5000" in notes


def test_one_cpu_run_has_no_gpu_and_uses_the_cpu_image(rendered):
    job = chart.by_kind(rendered["one-cpu-run"], "Job")["technogan-train-cpu"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert gpu_limit(c) == 0 and c["image"] == chart.preset("values.yaml")["image"]
    assert c["args"][:2] == ["technogan", "train"] and c["args"][c["args"].index("--device") + 1] == "cpu"


def test_two_gpu_run_trains_with_torchrun_in_one_pod(rendered):
    job = chart.by_kind(rendered["two-gpu-run"], "Job")["technogan-train-big"]
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert gpu_limit(c) == 2 and "completionMode" not in job["spec"]
    assert c["args"][:3] == ["torchrun", "--nproc-per-node", "2"]
    assert c["args"][c["args"].index("-m") + 1:][:2] == ["pipeline.cli", "train"]


def test_multi_node_is_an_indexed_job_with_a_headless_service_and_rendezvous_on_pod_0(rendered):
    objs = rendered["multi-node"]
    job = chart.by_kind(objs, "Job")["technogan-train-multi"]
    svc = chart.by_kind(objs, "Service")["technogan-train-multi"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    assert spec["template"]["spec"]["subdomain"] == "technogan-train-multi"
    assert svc["spec"]["clusterIP"] == "None"
    assert set(svc["spec"]["selector"].items()) <= set(spec["template"]["metadata"]["labels"].items())
    args = spec["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--nnodes") + 1] == "3"
    assert args[args.index("--rdzv-endpoint") + 1] == "technogan-train-multi-0.technogan-train-multi:29400"


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_service_reaches_the_gate_which_supervises_torchserve(variant, rendered):
    objs = rendered[variant]
    dep = chart.by_kind(objs, "Deployment")["technogan-torchserve"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = c["args"]
    assert c["command"] == ["technogan"] and args[0] == "gate"
    gate, torchserve = args[:args.index("--")], args[args.index("--") + 1:]
    assert gate[gate.index("--listen") + 1] == "0.0.0.0:8080"
    assert torchserve[0] == "torchserve" and torchserve[torchserve.index("--ts-config") + 1] == \
        "/etc/torchserve/config.properties"
    # the gate forwards to the address TorchServe binds, and refuses bodies TorchServe would (JSON 413)
    props = dict(line.split("=", 1) for line in
                 next(o for o in objs if o["kind"] == "ConfigMap")["data"]["config.properties"].splitlines()
                 if "=" in line and not line.startswith("#"))
    assert gate[gate.index("--upstream") + 1] == props["inference_address"].strip()
    assert gate[gate.index("--max-request-bytes") + 1] == props["max_request_size"].strip()
    (inference,) = [p for p in c["ports"] if p["name"] == "inference"]
    assert inference["containerPort"] == 8080
    svc = chart.by_kind(objs, "Service")["technogan-torchserve"]
    assert {"name": "inference", "port": 8080, "targetPort": "inference"} in svc["spec"]["ports"]
    for probe in ("readinessProbe", "livenessProbe"):  # through the gate
        assert (c[probe].get("httpGet") or c[probe]["tcpSocket"])["port"] == "inference"


@pytest.mark.parametrize("variant, auth", [("defaults", False), ("token-auth", True)])
def test_torchserve_probes_work_with_the_auth_setting(variant, auth, rendered):
    dep = chart.by_kind(rendered[variant], "Deployment")["technogan-torchserve"]
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert ("--disable-token-auth" not in c["args"]) is auth
    assert {"--ncs", "--foreground"} <= set(c["args"])
    for probe in ("readinessProbe", "livenessProbe"):
        if auth:  # /ping answers 400 without the key
            assert "tcpSocket" in c[probe] and "httpGet" not in c[probe]
        else:
            assert c[probe]["httpGet"]["path"] == "/ping"
    # before the first champion the pod waits in an init container rather than crash-looping
    (init,) = spec["initContainers"]
    assert "/data/model-store/technogan.mar" in " ".join(init["command"])
    # TorchServe writes temp files and logs into emptyDirs
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    assert mounts[env["TMPDIR"]] in empty and mounts[c["workingDir"]] in empty
    assert env["LOG_LOCATION"].startswith(c["workingDir"])
    test_pod = next(o for o in rendered[variant] if o["kind"] == "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = test_pod["spec"]["containers"][0]["args"][0]
    assert ("/predictions/technogan" in script and "e.code == 405" in script) or auth


def test_prometheus_annotations_or_a_service_monitor(rendered):
    dep = chart.by_kind(rendered["defaults"], "Deployment")["technogan-torchserve"]
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "8082"
    assert not [o for o in rendered["defaults"] if o["kind"] == "ServiceMonitor"]
    (monitor,) = [o for o in rendered["service-monitor"] if o["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_study_preset_is_the_six_runs_of_configs_study_yaml(rendered):
    study = yaml.safe_load((chart.ROOT / "configs" / "study.yaml").read_text())
    expected = {name: (r["model"], r["epochs"], r["max_samples"]) for name, r in study["train"]["runs"].items()}
    config = yaml.safe_load(next(o for o in rendered["study"] if o["kind"] == "ConfigMap")["data"]["config.yaml"])
    got = {name: (r["model"], r["epochs"], r["max_samples"]) for name, r in config["train"]["runs"].items()}
    assert got == expected
    for key in ("g_width", "d_width", "latent_dim"):
        assert config["model"][key] == study["model"][key]
    assert config["train"]["batch_size"] == study["train"]["batch_size"]


# ---------------------------------------------------------------- the schema rejects bad values

@pytest.mark.parametrize("values, message", [
    ({"runs": [{"name": "a", "model": "dcgan1", "epochs": "two"}]}, r"/runs/0/epochs.*got string, want integer"),
    ({"gpuCount": 2}, r"additional properties 'gpuCount' not allowed"),
    ({"runs": [{"name": "a", "model": "dcgan1", "epochs": 1, "gpu": 1}]}, r"/runs/0.*'gpu' not allowed"),
    ({"runs": [{"name": "a", "model": "dcgan3", "epochs": 1}]}, r"/runs/0/model"),
    ({"image": "ghcr.io/technogan/technogan:latest"}, r"/image"),
    ({"image": "ghcr.io/technogan/technogan"}, r"/image"),
    ({"torchserveTokenAuth": "yes"}, r"/torchserveTokenAuth.*got string, want boolean"),
    ({"dataSource": "youtube"}, r"/dataSource"),
    ({"dataSource": "scrape", "playlists": []}, r"/playlists.*minItems|/playlists"),
    ({"mlflowEnabled": False}, r"trackingUri"),
    ({"runs": [{"name": "Bad_Name", "model": "dcgan1", "epochs": 1}]}, r"/runs/0/name"),
])
def test_bad_values_are_rejected_with_a_message_naming_them(values, message):
    import helm_python

    with pytest.raises(helm_python.HelmValuesError) as err:
        chart.render(values)
    assert re.search(message, str(err.value), re.S), str(err.value)


def test_every_value_is_documented_in_values_yaml_and_known_to_the_schema():
    import json

    lines = (chart.CHART / "values.yaml").read_text().splitlines()
    keys = []
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Za-z][A-Za-z0-9]*):", line)
        if m:
            keys.append(m.group(1))
            assert lines[i - 1].startswith("#") and len(lines[i - 1]) > 12, f"values.yaml: {m.group(1)} has no comment"
            assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", m.group(1)), f"{m.group(1)}: not camelCase"
    schema = json.loads((chart.CHART / "values.schema.json").read_text())
    assert sorted(keys) == sorted(schema["properties"]) == sorted(chart.preset("values.yaml"))
    assert schema["additionalProperties"] is False
    for preset in ("values-cpu-small.yaml", "values-study.yaml"):
        assert set(chart.preset(preset)) <= set(keys)
