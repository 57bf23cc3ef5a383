"""`technogan wait` and `technogan rollout`: the two Kubernetes API calls the Helm chart makes.

    technogan wait --job segment --job segment-merge --timeout 7200 [--namespace NS]
    technogan rollout --deployment technogan-serve --archive /data/model-store/technogan.mar

`wait` blocks until every named Job has the condition Complete=True (Kubernetes has no
Job-to-Job ordering, so a later Job runs this in an init container). It lists the Jobs,
then watches them from the list's resourceVersion, reconnecting when the watch ends or
its connection drops, and relisting when the API server answers 410 Gone. A Job that does
not exist yet is waited for: it may simply not have been created yet.

`rollout` sets the pod-template annotation technogan.io/archive-sha256 of the serving
Deployment to the archive's sha256, so Kubernetes rolls its pods onto the new champion.
The same archive twice changes nothing.

Exit status of `wait`: 0 every Job completed; 1 a Job failed (the message names it and
its reason); 124 timed out (the message names the Jobs still pending); 2 bad usage, no
cluster configuration, or missing permissions (RBAC: get, list and watch on jobs).
Exit status of `rollout`: 0 patched or already current; 2 missing archive, Deployment
not found, or missing permissions (RBAC: get and patch on that Deployment).

Cluster access: the pod's ServiceAccount when running in a pod, else --kubeconfig, else
KUBECONFIG / ~/.kube/config. The namespace defaults to $POD_NAMESPACE, else the
ServiceAccount's namespace file, else "default".
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import UserError
from pipeline.fsutil import sha256_file

log = logging.getLogger(__name__)

ANNOTATION = "technogan.io/archive-sha256"
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
EXIT_COMPLETE, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 124
HEARTBEAT_S = 60.0  # a "still waiting" line at least this often, so `kubectl logs` shows life


def default_namespace() -> str:
    """$POD_NAMESPACE (downward API), else the pod's ServiceAccount namespace, else "default"."""
    ns = os.environ.get("POD_NAMESPACE", "").strip()
    if ns:
        return ns
    try:
        ns = SA_NAMESPACE_FILE.read_text().strip()
    except OSError:
        ns = ""
    return ns or "default"


def api_client(kubeconfig: str | os.PathLike | None = None):
    """A kubernetes ApiClient: --kubeconfig when given, else in-cluster, else KUBECONFIG/~/.kube/config."""
    from kubernetes import client, config

    in_pod = "not in a pod"
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
            return client.ApiClient(cfg)
        except config.ConfigException as e:  # e.g. automountServiceAccountToken: false
            in_pod = f"in a pod without a usable ServiceAccount ({e})"
    # KUBECONFIG read now, not when the kubernetes package was imported; it may list several files
    path = str(kubeconfig) if kubeconfig is not None else os.environ.get("KUBECONFIG") or None
    try:
        return config.new_client_from_config(config_file=path)
    except (config.ConfigException, OSError) as e:
        raise UserError(f"no Kubernetes configuration: {in_pod}, and {path or '~/.kube/config'} "
                        f"is unusable ({e})") from e


def _api_error(e, verbs: str, resource: str, namespace: str) -> UserError:
    """A UserError for an ApiException the user must fix (403, 401, anything unexpected)."""
    if e.status == 403:
        return UserError(
            f"forbidden: the ServiceAccount (or kubeconfig user) lacks {verbs} on {resource} in namespace "
            f"{namespace!r}; grant it with a Role and RoleBinding ({_status_message(e)})")
    if e.status == 401:
        return UserError(f"unauthorized: the API server rejected the credentials ({_status_message(e)})")
    return UserError(f"Kubernetes API error {e.status} on {resource} in namespace {namespace!r}: "
                     f"{_status_message(e)}")


def _status_message(e) -> str:
    import json

    try:
        return json.loads(e.body)["message"]
    except (TypeError, ValueError, KeyError):
        return str(e.reason or e.status)


# --------------------------------------------------------------------------- wait


@dataclass
class JobState:
    """What `wait` knows about one awaited Job."""

    name: str
    seen: bool = False
    deleted: bool = False
    complete: bool = False
    failed: bool = False
    reason: str = ""
    message: str = ""
    active: int = 0
    succeeded: int = 0
    failures: int = 0
    completions: int | None = None

    def describe(self) -> str:
        if self.deleted:
            return f"{self.name} (deleted; waiting for it to be created again)"
        if not self.seen:
            return f"{self.name} (not created yet)"
        done = f"{self.succeeded}/{self.completions}" if self.completions is not None else str(self.succeeded)
        return f"{self.name} (active {self.active}, succeeded {done}, failed pods {self.failures})"


@dataclass
class WaitResult:
    code: int  # EXIT_COMPLETE, EXIT_FAILED or EXIT_TIMEOUT
    message: str
    jobs: dict[str, JobState]


def _job_state(state: JobState, job: Any) -> None:
    """Update ``state`` from a V1Job (or None: the Job does not exist)."""
    if job is None:
        # a completed Job that goes away (ttlSecondsAfterFinished, a cleanup) stays completed
        state.deleted = state.seen and not state.complete
        state.failed = False
        return
    state.seen, state.deleted = True, False
    status = job.status
    state.active = (status and status.active) or 0
    state.succeeded = (status and status.succeeded) or 0
    state.failures = (status and status.failed) or 0
    state.completions = job.spec.completions if job.spec else None
    state.complete = state.failed = False
    for c in (status and status.conditions) or []:
        if c.status != "True":
            continue
        if c.type == "Complete":
            state.complete = True
        elif c.type == "Failed":
            state.failed, state.reason, state.message = True, c.reason or "", c.message or ""


def _outcome(states: dict[str, JobState]) -> WaitResult | None:
    failed = [s for s in states.values() if s.failed]
    if failed:
        text = "; ".join(f"Job {s.name} failed: {s.reason or 'no reason given'}"
                         + (f" ({s.message})" if s.message else "") for s in failed)
        return WaitResult(EXIT_FAILED, text, states)
    if all(s.complete for s in states.values()):
        return WaitResult(EXIT_COMPLETE, "all Jobs completed: " + ", ".join(states), states)
    return None


def _pending(states: dict[str, JobState]) -> str:
    return ", ".join(s.describe() for s in states.values() if not s.complete)


def wait_for_jobs(names: list[str], *, timeout_s: float, namespace: str | None = None, api=None,
                  kubeconfig: str | os.PathLike | None = None, watch_timeout_s: int = 60,
                  retry_s: float = 1.0, report: Callable[[str], None] = log.info) -> WaitResult:
    """Wait until every named Job is Complete, one Failed, or ``timeout_s`` passes.

    ``api`` is a kubernetes BatchV1Api (default: built from :func:`api_client`). The
    Jobs are listed, then watched from the list's resourceVersion; a watch that ends
    (after ``watch_timeout_s``, or a dropped connection) resumes from the last event's
    resourceVersion, and 410 Gone (that version is no longer kept) relists. 403 and
    other errors the user must fix raise UserError.
    """
    from kubernetes import client, watch
    from kubernetes.client.exceptions import ApiException

    if not names:
        raise UserError("wait: name at least one Job (--job NAME)")
    namespace = namespace or default_namespace()
    api = api or client.BatchV1Api(api_client(kubeconfig))
    states = {n: JobState(n) for n in dict.fromkeys(names)}
    deadline = time.monotonic() + timeout_s
    last_line, last_report = "", 0.0

    def progress(force: bool = False) -> None:
        nonlocal last_line, last_report
        line = _pending(states)
        if force or line != last_line or time.monotonic() - last_report >= HEARTBEAT_S:
            left = max(0.0, deadline - time.monotonic())
            report(f"waiting for Job(s) in namespace {namespace} ({left:.0f} s left): {line}")
            last_line, last_report = line, time.monotonic()

    def timed_out() -> WaitResult:
        never = [s.name for s in states.values() if not s.seen]
        text = f"timed out after {timeout_s:g} s waiting for Job(s) in namespace {namespace}: {_pending(states)}"
        if never:
            text += f"; never created: {', '.join(never)} (is the name right, and was the Job created?)"
        return WaitResult(EXIT_TIMEOUT, text, states)

    def fail(e: ApiException) -> UserError:
        return _api_error(e, "get/list/watch", "jobs (batch)", namespace)

    delay = retry_s

    def transient(e: BaseException, what: str) -> None:
        nonlocal delay  # doubles while the failures go on, so an outage does not flood the log
        report(f"{what} ({type(e).__name__}: {e}); retrying in {delay:g} s")
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(2 * delay, max(retry_s, 30.0))

    while True:  # list, then watch until done or the watch's resourceVersion is gone
        if time.monotonic() >= deadline:
            return timed_out()
        try:
            listing = api.list_namespaced_job(namespace, _request_timeout=(10, 30))
        except ApiException as e:
            if _permanent(e):
                raise fail(e) from e
            transient(e, f"listing Jobs failed with HTTP {e.status}")
            continue
        except Exception as e:  # urllib3/socket errors: the API server is unreachable for now
            if not _is_connection_error(e):
                raise
            transient(e, "cannot reach the Kubernetes API server")
            continue
        delay = retry_s
        by_name = {j.metadata.name: j for j in listing.items or []}
        for name, state in states.items():
            _job_state(state, by_name.get(name))
        done = _outcome(states)
        if done:
            return done
        progress(force=True)
        version = listing.metadata.resource_version
        relist = False
        while not relist:
            left = deadline - time.monotonic()
            if left <= 0:
                return timed_out()
            server_timeout = max(1, min(watch_timeout_s, math.ceil(left)))
            w = watch.Watch()
            try:
                # timeout_seconds makes the client return when the server ends the watch, so the
                # reconnect (and its resourceVersion) is ours to do, not the library's
                for event in w.stream(api.list_namespaced_job, namespace, resource_version=version,
                                      timeout_seconds=server_timeout, allow_watch_bookmarks=True,
                                      _request_timeout=(10, server_timeout + 10)):
                    if not event:  # a line the client could not parse (a cut connection's tail)
                        continue
                    kind, obj = event["type"], event["object"]
                    if kind == "BOOKMARK" or isinstance(obj, dict):  # only its resourceVersion matters
                        version = ((event.get("raw_object") or {}).get("metadata") or {}).get(
                            "resourceVersion") or version
                        continue
                    version = obj.metadata.resource_version or version
                    delay = retry_s
                    name = obj.metadata.name
                    if name in states:
                        _job_state(states[name], None if kind == "DELETED" else obj)
                        done = _outcome(states)
                        if done:
                            return done
                    progress()
            except ApiException as e:
                if e.status == 410:
                    report(f"resourceVersion {version} is gone (410); relisting")
                    relist = True
                elif _permanent(e):
                    raise fail(e) from e
                else:
                    transient(e, f"the watch failed with HTTP {e.status}")
            except Exception as e:
                if not _is_connection_error(e):
                    raise
                transient(e, f"the watch connection dropped; reconnecting from resourceVersion {version}")
            finally:
                w.stop()
            progress()


def _permanent(e) -> bool:
    """A 4xx the user must fix (403, 401, 400, 404); 408, 429 and 5xx are retried."""
    return 400 <= (e.status or 0) < 500 and e.status not in (408, 429)


def _is_connection_error(e: BaseException) -> bool:
    """A network error worth retrying; a failed TLS verification is not (retrying cannot fix a CA)."""
    import ssl

    import urllib3

    if isinstance(e, ssl.SSLCertVerificationError) or isinstance(getattr(e, "reason", None),
                                                                  urllib3.exceptions.SSLError):
        raise UserError(f"TLS with the Kubernetes API server failed (wrong CA or server name?): {e}") from e
    return isinstance(e, (urllib3.exceptions.HTTPError, OSError))


# --------------------------------------------------------------------------- rollout


@dataclass
class RolloutResult:
    digest: str
    previous: str | None  # the annotation before; None when absent or unreadable
    changed: bool
    message: str


def rollout(deployment: str, archive: str | os.PathLike, *, namespace: str | None = None, api=None,
            kubeconfig: str | os.PathLike | None = None) -> RolloutResult:
    """Point ``deployment``'s pod template at ``archive`` by its sha256, so its pods roll onto it.

    A strategic merge patch sets spec.template.metadata.annotations[technogan.io/archive-sha256].
    The Deployment is read first: when it already carries the digest nothing is patched. When
    the ServiceAccount may patch but not get, the patch is sent anyway; the API server treats an
    unchanged template as a no-op, so the rollout stays idempotent. ``api`` is an AppsV1Api.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    path = Path(archive)
    if not path.is_file():
        raise UserError(f"rollout: archive {path} does not exist (package the champion first: technogan package)")
    digest = sha256_file(path)
    namespace = namespace or default_namespace()
    api = api or client.AppsV1Api(api_client(kubeconfig))
    where = f"Deployment {deployment} in namespace {namespace}"
    previous: str | None = None
    unread = ""
    try:
        current = api.read_namespaced_deployment(deployment, namespace, _request_timeout=(10, 30))
        meta = current.spec.template.metadata
        previous = ((meta and meta.annotations) or {}).get(ANNOTATION)
    except ApiException as e:
        if e.status == 404:
            raise UserError(f"rollout: {where} not found (is the chart installed, and the name right?)") from e
        if e.status != 403:
            raise _api_error(e, "get and patch", f"deployments/{deployment} (apps)", namespace) from e
        unread = " (it could not be read first: no get permission, so it was patched without comparing)"
    except Exception as e:
        if _is_connection_error(e):
            raise UserError(f"rollout: cannot reach the Kubernetes API server ({e})") from e
        raise
    if previous == digest:
        return RolloutResult(digest, previous, False, f"{where} already serves {path.name} "
                                                      f"(sha256 {digest[:12]}); nothing to patch")
    body = {"spec": {"template": {"metadata": {"annotations": {ANNOTATION: digest}}}}}
    try:
        api.patch_namespaced_deployment(deployment, namespace, body, _request_timeout=(10, 30),
                                        _content_type="application/strategic-merge-patch+json")
    except ApiException as e:
        if e.status == 404:
            raise UserError(f"rollout: {where} not found (is the chart installed, and the name right?)") from e
        raise _api_error(e, "get and patch", f"deployments/{deployment} (apps)", namespace) from e
    except Exception as e:
        if _is_connection_error(e):
            raise UserError(f"rollout: cannot reach the Kubernetes API server ({e})") from e
        raise
    was = f"was {previous[:12]}" if previous else "no digest before"
    return RolloutResult(digest, previous, True, f"patched {where}: {ANNOTATION}={digest} ({was}); "
                                                 f"its pods roll onto {path.name}{unread}")


# --------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", help="default: $POD_NAMESPACE, else the pod's ServiceAccount namespace, "
                                       "else 'default'")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster when in a pod, else "
                                        "$KUBECONFIG or ~/.kube/config)")
    name = p.prog.split()[-1]
    if name == "wait":
        p.add_argument("--job", action="append", required=True, metavar="NAME",
                       help="a Job to wait for (repeat for several)")
        p.add_argument("--timeout", type=float, required=True, metavar="SECONDS",
                       help="give up after this long (exit 124)")
        p.add_argument("--watch-timeout", type=int, default=60, metavar="SECONDS",
                       help="end and reopen each watch after this long (default: %(default)s)")
        p.add_argument("--retry", type=float, default=2.0, metavar="SECONDS",
                       help="pause before reconnecting after an error (default: %(default)s)")
        p.epilog = ("exit status: 0 every Job completed; 1 a Job failed; 124 timed out; "
                    "2 usage, configuration or permission error (needs get, list, watch on jobs)")
    else:
        p.add_argument("--deployment", required=True, help="the serving Deployment to roll")
        p.add_argument("--archive", required=True, help="the packaged champion (.mar) whose sha256 is set")
        p.epilog = ("exit status: 0 patched or already current; "
                    "2 missing archive, Deployment not found, or permission error (needs get, patch on it)")


def main(args: argparse.Namespace) -> int:
    if args.command == "wait":
        if args.timeout <= 0 or args.watch_timeout <= 0:
            raise UserError("--timeout and --watch-timeout must be positive")
        result = wait_for_jobs(args.job, timeout_s=args.timeout, namespace=args.namespace,
                               kubeconfig=args.kubeconfig, watch_timeout_s=args.watch_timeout,
                               retry_s=args.retry, report=_say)
        print(result.message, file=sys.stdout if result.code == EXIT_COMPLETE else sys.stderr, flush=True)
        return result.code
    rolled = rollout(args.deployment, args.archive, namespace=args.namespace, kubeconfig=args.kubeconfig)
    print(rolled.message, flush=True)
    return 0


def _say(line: str) -> None:
    """Progress for `kubectl logs`: one timestamped line, flushed (stdout is a pipe in a pod)."""
    print(time.strftime("%Y-%m-%dT%H:%M:%SZ ", time.gmtime()) + line, flush=True)
