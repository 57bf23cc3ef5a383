"""A small fake of the Kubernetes API server's Jobs and Deployments endpoints, on loopback.

It speaks the real paths and wire formats, so the real `kubernetes` client talks to it
through a kubeconfig (:meth:`FakeKube.write_kubeconfig`):

    GET   /apis/batch/v1/namespaces/NS/jobs                 JobList with metadata.resourceVersion
    GET   /apis/batch/v1/namespaces/NS/jobs?watch=true&resourceVersion=RV&timeoutSeconds=T
                                                            chunked JSON lines of watch events
    GET   /apis/batch/v1/namespaces/NS/jobs/NAME            Job, or a 404 Status
    GET   /apis/apps/v1/namespaces/NS/deployments/NAME      Deployment, or a 404 Status
    PATCH /apis/apps/v1/namespaces/NS/deployments/NAME      strategic merge patch of maps (recorded)

Tests drive it: ``create_job``/``update_job``/``complete_job``/``fail_job``/``delete_job``
emit watch events, ``bookmark`` a BOOKMARK; ``deny(verb, resource)`` answers 403;
``drop_watches_after`` cuts the next watch connection mid-stream; ``expire_watches``
answers the next watches with a 410 Gone ERROR event; ``fail_next`` answers 503;
``wait_for_watches(n)`` blocks until n watch connections were opened. Every request is
recorded in ``requests`` as (method, path, query dict). Clients authenticate with a
bearer token; ``FakeKube(tls_dir=...)`` serves HTTPS with a self-signed CA, and
``write_service_account`` writes the token and ca.crt a pod would see, for the
in-cluster configuration.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

TOKEN = "fake-service-account-token"


def _merge(target: dict, patch: dict) -> None:
    """Strategic merge for maps (what annotation patches use): null deletes a key."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 that is its own CA (what ca.crt holds in a pod)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kube-apiserver")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False, False), True)
            .add_extension(ski, False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    crt, pem = folder / "apiserver.crt", folder / "apiserver.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details or {}, "code": code}


class FakeKube:
    """The fake API server; use as a context manager or call start()/stop()."""

    def __init__(self, namespace: str = "technogan", user: str = "system:serviceaccount:technogan:waiter",
                 tls_dir: Path | None = None):
        self.namespace = namespace
        self.user = user
        self.lock = threading.Condition()
        self.rv = 1000
        self.jobs: dict[str, dict] = {}
        self.deployments: dict[str, dict] = {}
        self.events: list[tuple[int, str, dict]] = []  # (resourceVersion, type, job) for watches
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.patches: list[dict] = []  # {"name", "content_type", "body"}
        self.denied: set[tuple[str, str]] = set()
        self.drop_after: int | None = None  # cut the next watch after this many events
        self.expire = 0  # answer this many next watches with 410 Gone
        self.watches_opened = 0
        self.stopped = False
        self.unavailable = 0  # answer this many next requests with 503
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.ca_file: Path | None = None
        if tls_dir is not None:  # HTTPS, as a real API server and the in-cluster configuration speak
            import ssl

            self.ca_file, key = _self_signed(tls_dir)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.ca_file, key)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls_dir else 'http'}://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FakeKube":
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            self.lock.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FakeKube":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def write_kubeconfig(self, path: Path, namespace: str | None = None) -> Path:
        """A kubeconfig pointing at this server with a bearer token (the client sends it; we check it)."""
        ctx = {"cluster": "fake", "user": "fake"}
        if namespace:
            ctx["namespace"] = namespace
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": TOKEN}}],
            "contexts": [{"name": "fake", "context": ctx}],
        }))
        return path

    def write_service_account(self, folder: Path) -> tuple[Path, Path]:
        """A pod's ServiceAccount files (token, ca.crt) for this server; it must have been made with tls_dir."""
        assert self.ca_file is not None, "in-cluster clients speak HTTPS: FakeKube(tls_dir=...)"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "token").write_text(TOKEN)
        (folder / "namespace").write_text(self.namespace)
        (folder / "ca.crt").write_bytes(self.ca_file.read_bytes())
        return folder / "token", folder / "ca.crt"

    # ------------------------------------------------------------------ test controls

    def fail_next(self, n: int) -> None:
        """Answer the next ``n`` requests with 503, as an API server restarting."""
        with self.lock:
            self.unavailable = n

    def bookmark(self) -> int:
        """Send a BOOKMARK event to open watches (it carries only a resourceVersion)."""
        with self.lock:
            self.rv += 1
            self.events.append((self.rv, "BOOKMARK", {"kind": "Job", "apiVersion": "batch/v1",
                                                      "metadata": {"resourceVersion": str(self.rv)}}))
            self.lock.notify_all()
            return self.rv

    def deny(self, verb: str, resource: str) -> None:
        """Answer ``verb`` (get, list, watch, patch) on ``resource`` (jobs, deployments) with 403."""
        self.denied.add((verb, resource))

    def drop_watches_after(self, events: int) -> None:
        """Cut the next watch connection (no final chunk) after sending this many events."""
        with self.lock:
            self.drop_after = events

    def expire_watches(self, n: int = 1) -> None:
        """Answer the next ``n`` watches with an ERROR event 410 Gone, as after etcd compaction."""
        with self.lock:
            self.expire = n

    def wait_for_watches(self, n: int, timeout: float = 30.0) -> None:
        """Block until ``n`` watch connections have been opened in total (the client is listening)."""
        with self.lock:
            if not self.lock.wait_for(lambda: self.watches_opened >= n, timeout):
                raise AssertionError(f"only {self.watches_opened} watch(es) opened, expected {n}")

    def count(self, method: str, path_suffix: str = "/jobs", **query: str) -> int:
        """How many recorded requests match the method, path ending and query values."""
        return sum(1 for m, p, q in self.requests if m == method and p.endswith(path_suffix)
                   and all(q.get(k) == v for k, v in query.items()))

    def watch_versions(self) -> list[str]:
        """The resourceVersion each job watch asked to start from, in order."""
        return [q.get("resourceVersion", "") for m, p, q in self.requests if q.get("watch") == "true"]

    def create_job(self, name: str, completions: int = 1) -> dict:
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": name, "namespace": self.namespace, "uid": f"uid-{name}"},
               "spec": {"completions": completions, "parallelism": completions,
                        "template": {"spec": {"restartPolicy": "Never",
                                              "containers": [{"name": "main", "image": "technogan:test"}]}}},
               "status": {}}
        return self._emit("ADDED", job)

    def update_job(self, name: str, **status) -> dict:
        with self.lock:
            job = copy.deepcopy(self.jobs[name])
        job["status"].update(status)
        return self._emit("MODIFIED", job)

    def complete_job(self, name: str) -> dict:
        with self.lock:
            n = self.jobs[name]["spec"]["completions"]
        return self.update_job(name, active=0, succeeded=n, conditions=[
            {"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}])

    def fail_job(self, name: str, reason: str = "BackoffLimitExceeded",
                 message: str = "Job has reached the specified backoff limit") -> dict:
        return self.update_job(name, active=0, failed=3, conditions=[
            {"type": "FailureTarget", "status": "True", "reason": reason, "message": message},
            {"type": "Failed", "status": "True", "reason": reason, "message": message}])

    def delete_job(self, name: str) -> dict:
        with self.lock:
            job = copy.deepcopy(self.jobs[name])
        return self._emit("DELETED", job)

    def add_deployment(self, name: str, annotations: dict[str, str] | None = None) -> dict:
        with self.lock:
            self.rv += 1
            dep = {"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": name, "namespace": self.namespace, "uid": f"uid-{name}",
                                "resourceVersion": str(self.rv), "generation": 1},
                   "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                            "template": {"metadata": {"labels": {"app": name},
                                                      "annotations": dict(annotations or {})},
                                         "spec": {"containers": [{"name": "torchserve",
                                                                  "image": "technogan:test"}]}}},
                   "status": {}}
            self.deployments[name] = dep
            return copy.deepcopy(dep)

    def _emit(self, kind: str, job: dict) -> dict:
        with self.lock:
            self.rv += 1
            job["metadata"]["resourceVersion"] = str(self.rv)
            if kind == "DELETED":
                self.jobs.pop(job["metadata"]["name"], None)
            else:
                self.jobs[job["metadata"]["name"]] = copy.deepcopy(job)
            self.events.append((self.rv, kind, copy.deepcopy(job)))
            self.lock.notify_all()
            return copy.deepcopy(job)

    # ------------------------------------------------------------------ HTTP

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                fake._serve(self, "GET")

            def do_PATCH(self) -> None:
                fake._serve(self, "PATCH")

        return Handler

    def _send(self, h, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _serve(self, h, method: str) -> None:
        url = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((method, url.path, query))
            busy, self.unavailable = self.unavailable > 0, max(0, self.unavailable - 1)
        if busy:
            return self._send(h, 503, _status(503, "ServiceUnavailable", "the server is shutting down"))
        scheme, _, token = (h.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or token != TOKEN:  # the scheme is case-insensitive (RFC 7235)
            return self._send(h, 401, _status(401, "Unauthorized", "Unauthorized"))
        parts = url.path.strip("/").split("/")
        # apis/<group>/v1/namespaces/<ns>/<resource>[/<name>]
        if len(parts) not in (6, 7) or parts[0] != "apis" or parts[3] != "namespaces":
            return self._send(h, 404, _status(404, "NotFound", f"the server could not find {url.path}"))
        group, ns, resource = parts[1], parts[4], parts[5]
        name = parts[6] if len(parts) == 7 else None
        watching = query.get("watch") in ("true", "1")
        verb = "watch" if watching else ("patch" if method == "PATCH" else "get" if name else "list")
        if (verb, resource) in self.denied:
            scope = f'resource "{resource}" in API group "{group}" in the namespace "{ns}"'
            return self._send(h, 403, _status(403, "Forbidden", f'{resource}.{group} {name or ""} is forbidden: '
                                              f'User "{self.user}" cannot {verb} {scope}',
                                              {"group": group, "kind": resource}))
        if (group, resource) == ("batch", "jobs") and method == "GET" and ns == self.namespace:
            if watching:
                return self._watch(h, query)
            with self.lock:
                if name is None:
                    return self._send(h, 200, {"kind": "JobList", "apiVersion": "batch/v1",
                                               "metadata": {"resourceVersion": str(self.rv)},
                                               "items": [copy.deepcopy(j) for j in self.jobs.values()]})
                job = copy.deepcopy(self.jobs.get(name))
            if job is None:
                return self._send(h, 404, _status(404, "NotFound", f'jobs.batch "{name}" not found'))
            return self._send(h, 200, job)
        if (group, resource) == ("apps", "deployments") and name and ns == self.namespace:
            with self.lock:
                dep = self.deployments.get(name)
                if dep is None:
                    return self._send(h, 404, _status(404, "NotFound", f'deployments.apps "{name}" not found'))
                if method == "PATCH":
                    ctype = h.headers.get("Content-Type", "")
                    body = json.loads(raw or b"null")
                    self.patches.append({"name": name, "content_type": ctype, "body": body})
                    if ctype != "application/strategic-merge-patch+json" or not isinstance(body, dict):
                        return self._send(h, 415, _status(415, "UnsupportedMediaType",
                                                          f"this fake takes strategic merge patches, got {ctype}"))
                    before = json.dumps(dep["spec"], sort_keys=True)
                    _merge(dep, body)
                    if json.dumps(dep["spec"], sort_keys=True) != before:  # a real change bumps these
                        self.rv += 1
                        dep["metadata"]["resourceVersion"] = str(self.rv)
                        dep["metadata"]["generation"] += 1
                return self._send(h, 200, copy.deepcopy(dep))
        return self._send(h, 404, _status(404, "NotFound", f"the server could not find {url.path}"))

    def _watch(self, h, query: dict[str, str]) -> None:
        """Stream events after resourceVersion until timeoutSeconds, as chunked JSON lines."""
        since = int(query.get("resourceVersion") or 0)
        timeout = float(query.get("timeoutSeconds") or 300)
        bookmarks = query.get("allowWatchBookmarks") == "true"
        with self.lock:
            self.watches_opened += 1
            expire, self.expire = self.expire > 0, max(0, self.expire - 1)
            drop, self.drop_after = self.drop_after, None
            self.lock.notify_all()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

        def chunk(obj: dict) -> None:
            data = (json.dumps(obj) + "\n").encode()
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()

        try:
            if expire:
                chunk({"type": "ERROR", "object": _status(
                    410, "Expired", f"too old resource version: {since} ({self.rv})")})
            else:
                end = time.monotonic() + timeout
                sent = 0
                while True:
                    with self.lock:
                        new = [e for e in self.events if e[0] > since and (bookmarks or e[1] != "BOOKMARK")]
                        if not new:
                            left = end - time.monotonic()
                            if left <= 0 or self.stopped:
                                break
                            self.lock.wait(min(left, 0.5))
                            continue
                    for rv, kind, job in new:
                        if drop is not None and sent >= drop:
                            # the connection dies mid-stream: no terminating chunk
                            h.wfile.write(b"5\r\n{\"typ")
                            h.wfile.flush()
                            h.close_connection = True
                            return
                        chunk({"type": kind, "object": job})
                        since, sent = rv, sent + 1
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            h.close_connection = True
