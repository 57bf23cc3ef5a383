"""Run a rendered chart's containers on this machine, the way the kubelet would run them.

Kubernetes is the one thing not here, so this stands in for exactly its part: volumes
become folders (the claim one shared folder, each ConfigMap a folder of its keys, each
emptyDir a fresh folder per pod), environment variables are resolved (the downward API's
namespace, JOB_COMPLETION_INDEX per index of an Indexed Job), and Jobs run in the order
their ``technogan wait`` init containers impose. Everything else, the command, its
arguments and its environment, is taken from the rendered objects unchanged, so a typo in
the chart fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent  # the venv's technogan, mlflow, torchserve, torchrun


def wait_targets(container: dict[str, Any]) -> list[str] | None:
    """The Job names a `technogan wait` init container waits for (None: not a wait container)."""
    argv = list(container.get("command") or []) + list(container.get("args") or [])
    if argv[:2] != ["technogan", "wait"]:
        return None
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--job"]


def job_order(jobs: dict[str, dict[str, Any]]) -> list[str]:
    """Topological order of the Jobs by their wait init containers (a cycle or an unknown
    Job name is an error: the chart would hang on a cluster)."""
    deps: dict[str, set[str]] = {}
    for name, job in jobs.items():
        deps[name] = set()
        for c in job["spec"]["template"]["spec"].get("initContainers") or []:
            targets = wait_targets(c)
            if targets:
                unknown = set(targets) - set(jobs)
                assert not unknown, f"{name} waits for Jobs the chart does not create: {unknown}"
                deps[name] |= set(targets)
    order: list[str] = []
    while len(order) < len(jobs):
        ready = sorted(n for n in jobs if n not in order and deps[n] <= set(order))
        assert ready, f"the Jobs' waits form a cycle: {deps}"
        order.extend(ready)
    return order


@dataclass
class Pod:
    """The folders and identity of one pod on this machine."""

    spec: dict[str, Any]
    root: Path
    claim: Path
    configmaps: dict[str, dict[str, str]]
    namespace: str
    index: int | None = None
    mounts: dict[str, Path] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for vol in self.spec.get("volumes") or []:
            name = vol["name"]
            if "persistentVolumeClaim" in vol:
                self.mounts[name] = self.claim
            elif "configMap" in vol:
                data = self.configmaps[vol["configMap"]["name"]]
                folder = self.root / f"cm-{name}"
                folder.mkdir(exist_ok=True)
                items = vol["configMap"].get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    (folder / item["path"]).write_text(data[item["key"]])
                self.mounts[name] = folder
            elif "emptyDir" in vol:
                folder = self.root / f"empty-{name}"
                folder.mkdir(exist_ok=True)
                self.mounts[name] = folder
            else:
                raise AssertionError(f"volume {name}: kind not supported here: {vol}")

    def path_map(self, container: dict[str, Any]) -> dict[str, Path]:
        return {m["mountPath"]: self.mounts[m["name"]] for m in container.get("volumeMounts") or []}

    def localise(self, text: str, paths: dict[str, Path]) -> str:
        """Replace the container's mount paths in a string by the folders standing in for them."""
        if not paths:
            return text
        alternatives = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
        # a mount path starts a word: "/data/x", "sqlite:////data/x", "--out=/data"; never
        # inside another path ("/usr/tmp"); one pass, so replaced text is not rescanned
        return re.sub(rf"(?<![\w.-])({alternatives})(?=/|$|[^\w.-])",
                      lambda m: str(paths[m.group(1)]), text)

    def env(self, container: dict[str, Any], paths: dict[str, Path],
            overrides: dict[str, str] | None = None) -> dict[str, str]:
        env = {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               "HOME": str(self.root / "home")}
        if self.index is not None:
            env["JOB_COMPLETION_INDEX"] = str(self.index)
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = self.localise(str(var["value"]), paths)
            elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                env[var["name"]] = self.namespace
            else:
                raise AssertionError(f"env {var['name']}: source not supported here: {var}")
        env.update(overrides or {})
        return env

    def assert_local(self, strings: list[str], paths: dict[str, Path]) -> None:
        """Nothing may still point at a container path (it would touch this machine's own /data)."""
        for text in strings:
            for mount in paths:
                left = re.sub(re.escape(str(self.root)) + "|" + re.escape(str(self.claim)), "", text)
                assert not re.search(rf"(?<![\w.-]){re.escape(mount)}(?=/|$|[^\w.-])", left), (mount, text)

    def argv(self, container: dict[str, Any], paths: dict[str, Path]) -> list[str]:
        argv = list(container.get("command") or []) + list(container.get("args") or [])
        assert argv, f"container {container['name']} relies on the image's entrypoint"
        return [self.localise(a, paths) for a in argv]

    def run(self, container: dict[str, Any], overrides: dict[str, str] | None = None,
            timeout: float = 600) -> "Result":
        """Run one container to completion; cwd is an empty folder standing in for the
        read-only root filesystem (anything written there is reported)."""
        paths = self.path_map(container)
        cwd = self.root / f"cwd-{container['name']}"
        cwd.mkdir(exist_ok=True)
        argv = self.argv(container, paths)
        self.assert_local(argv, paths)
        proc = subprocess.run(argv, cwd=cwd, env=self.env(container, paths, overrides),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        written = sorted(p.name for p in cwd.iterdir())
        return Result(container["name"], argv, proc.returncode, proc.stdout, written)


@dataclass
class Result:
    name: str
    argv: list[str]
    returncode: int
    output: str
    written_to_root: list[str]

    def check(self) -> "Result":
        assert self.returncode == 0, (f"{self.name}: exit {self.returncode}\n$ {' '.join(self.argv)}\n"
                                      f"{self.output[-4000:]}")
        assert not self.written_to_root, (f"{self.name} wrote {self.written_to_root} to its working "
                                          "directory, which is the read-only root filesystem in the pod")
        return self


def clean(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
