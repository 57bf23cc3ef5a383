"""The gate against a small local HTTP upstream standing in for TorchServe's wire
behaviour (no TorchServe here; tests/serving/test_server.py runs the real one behind it)."""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from pipeline.cli import main as cli_main
from serving.gate import Gate

LIMIT = 4096
DIED = json.dumps({"code": 507, "message": "Worker died."}).encode()


class Upstream:
    """Records every request; answers like TorchServe's frontend does for our handler."""

    def __init__(self):
        self.seen: list[dict] = []
        self.die = 0  # answer this many requests with "Worker died."
        self.die_code = 507
        self.barrier: threading.Barrier | None = None
        self.hang_up = False  # close each connection after its answer, without saying so
        self.lock = threading.Lock()
        up = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with up.lock:
                    up.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                    "body": body, "peer": self.client_address[1]})
                    dying = up.die > 0
                    up.die -= dying
                if up.barrier is not None:
                    up.barrier.wait()  # every client's request must be here at once
                if dying:
                    self._send(up.die_code, DIED, "application/json")
                elif self.path == "/predictions/chunked":  # a streamed answer, no Content-Length
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for part in (b"abc", b"x" * 70000, b"end"):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                elif self.path == "/ping":
                    self._send(200, b'{"status": "Healthy"}', "application/json")
                elif body == b'{"n": 0}':
                    self._send(400, b'{"error": "n: too small", "field": "n"}', "application/json")
                else:
                    self._send(200, b"RIFF" + body, "audio/wav", {"X-Technogan-Seed": "7", "X-Technogan-Batch": "1"})
                self.close_connection = up.hang_up

            def _send(self, code, body, ctype, extra=None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.server.request_queue_size = 128
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    up = Upstream()
    yield up
    up.close()


@pytest.fixture
def gate(upstream):
    with Gate("127.0.0.1", 0, upstream.url, LIMIT, upstream_timeout=60) as g:
        yield g


def pred(gate, path="/predictions/technogan"):
    return f"{gate.url}{path}"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "FOO"])
def test_other_methods_on_predictions_are_405_with_allow_and_json(gate, upstream, method):
    r = requests.request(method, pred(gate), data=b'{"n": 1}' if method in ("PUT", "PATCH") else None, timeout=10)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert r.headers["Content-Type"] == "application/json"
    doc = r.json()
    assert doc["field"] == "method" and doc["error"].startswith(f"method: {method} is not allowed")
    assert upstream.seen == []  # TorchServe never saw it, so generated nothing


def test_head_is_405_without_a_body(gate, upstream):
    r = requests.head(pred(gate), timeout=10)
    assert r.status_code == 405 and r.headers["Allow"] == "POST" and r.content == b""
    assert upstream.seen == []


@pytest.mark.parametrize("path", ["/predictions/technogan", "/predictions/technogan/3", "/predictions/technogan?x=1"])
def test_post_passes_with_headers_body_and_status_unchanged(gate, upstream, path):
    headers = {"Content-Type": "application/json", "Accept": "audio/wav", "X-Request-Id": "abc-1"}
    r = requests.post(pred(gate, path), data=b'{"n": 2}', headers=headers, timeout=10)
    assert r.status_code == 200 and r.content == b'RIFF{"n": 2}'
    assert r.headers["Content-Type"] == "audio/wav" and r.headers["X-Technogan-Seed"] == "7"
    (seen,) = upstream.seen
    assert seen["method"] == "POST" and seen["path"] == path and seen["body"] == b'{"n": 2}'
    for k, v in headers.items():
        assert seen["headers"][k] == v
    r = requests.post(pred(gate), data=b'{"n": 0}', timeout=10)  # the handler's 400 comes back as it was
    assert r.status_code == 400 and r.json() == {"error": "n: too small", "field": "n"}


@pytest.mark.parametrize("path", ["/", "/models", "/api-description", "/predictions", "/predictions/",
                                  "/explanations/technogan", "/v1/models/technogan:predict",
                                  "/predictions/../models", "/metrics"])
def test_other_paths_are_404_json(gate, upstream, path):
    for method in ("GET", "POST"):
        r = requests.request(method, f"{gate.url}{path}", timeout=10)
        assert r.status_code == 404 and r.json()["field"] == "path", (method, path, r.text)
    assert upstream.seen == []


def test_ping_passes_and_only_as_get(gate, upstream):
    r = requests.get(f"{gate.url}/ping", timeout=10)
    assert r.status_code == 200 and r.json() == {"status": "Healthy"}
    r = requests.post(f"{gate.url}/ping", timeout=10)
    assert r.status_code == 405 and r.headers["Allow"] == "GET"
    assert [s["method"] for s in upstream.seen] == ["GET"]


def test_a_body_over_the_limit_is_our_json_413_and_never_forwarded(gate, upstream):
    r = requests.post(pred(gate), data=b" " * (LIMIT + 1), timeout=10)
    assert r.status_code == 413 and r.headers["Content-Type"] == "application/json"
    assert r.json() == {"error": f"body: {LIMIT + 1} bytes is over the limit of {LIMIT} bytes", "field": "body"}
    # chunked, so no Content-Length to refuse up front: counted while read
    r = requests.post(pred(gate), data=iter([b" " * 1000] * 5), timeout=10)
    assert r.status_code == 413 and r.json()["field"] == "body"
    assert upstream.seen == []
    # a client that sends a big body before it reads reads our answer, not a reset connection
    with requests.Session() as session:
        r = session.post(pred(gate), data=b" " * (4 << 20), timeout=30)
        assert r.status_code == 413 and r.json()["error"].startswith(f"body: {4 << 20} bytes is over")
        r = session.put(pred(gate), data=b" " * 100_000, timeout=30)  # drained: the connection goes on
        assert r.status_code == 405
        assert session.get(f"{gate.url}/ping", timeout=10).status_code == 200
    assert [s["path"] for s in upstream.seen] == ["/ping"]
    upstream.seen.clear()
    r = requests.post(pred(gate), data=b" " * LIMIT, timeout=10)  # exactly the limit passes
    assert r.status_code == 200 and len(upstream.seen[0]["body"]) == LIMIT


def test_a_chunked_body_reaches_torchserve_with_a_length(gate, upstream):
    r = requests.post(pred(gate), data=iter([b'{"n"', b": 3}"]), timeout=10)
    assert r.status_code == 200 and r.content == b'RIFF{"n": 3}'
    assert upstream.seen[0]["headers"]["Content-Length"] == "8"


def test_a_streamed_answer_is_relayed_whole_and_the_connection_kept(gate, upstream):
    with requests.Session() as s:
        r = s.post(pred(gate, "/predictions/chunked"), data=b"{}", timeout=10)
        assert r.status_code == 200 and r.content == b"abc" + b"x" * 70000 + b"end"
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert s.post(pred(gate), data=b"{}", timeout=10).content == b"RIFF{}"


def test_expect_100_continue_is_refused_before_the_body_is_sent(gate):
    with socket.create_connection(("127.0.0.1", gate.port), timeout=10) as s:
        s.sendall(b"POST /predictions/technogan HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        answer = b""
        while chunk := s.recv(4096):  # the gate closes the connection after its answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"field": "body"' in answer and b"100 Continue" not in answer


@pytest.mark.parametrize("code", [507, 500])
def test_a_worker_that_died_under_the_request_is_resent_once(gate, upstream, code):
    upstream.die, upstream.die_code = 1, code
    r = requests.post(pred(gate), data=b'{"seed": 1}', timeout=10)
    assert r.status_code == 200 and r.content == b'RIFF{"seed": 1}'
    assert gate.resent == 1 and [s["body"] for s in upstream.seen] == [b'{"seed": 1}'] * 2
    upstream.die = 2  # only once: the second death is the client's answer
    r = requests.post(pred(gate), data=b"{}", timeout=10)
    assert r.status_code == code and r.json()["message"] == "Worker died."
    assert gate.resent == 2 and len(upstream.seen) == 4


def test_keep_alive_one_connection_each_side(gate, upstream):
    with requests.Session() as s:
        for _ in range(5):
            assert s.post(pred(gate), data=b"{}", timeout=10).status_code == 200
            assert s.get(f"{gate.url}/ping", timeout=10).status_code == 200
    assert len({seen["peer"] for seen in upstream.seen}) == 1  # the gate kept its TorchServe connection too


def test_a_kept_alive_connection_torchserve_closed_is_opened_again(gate, upstream):
    upstream.hang_up = True
    with requests.Session() as s:
        for i in range(3):
            assert s.post(pred(gate), data=b'{"i": %d}' % i, timeout=10).status_code == 200
    assert [seen["body"] for seen in upstream.seen] == [b'{"i": 0}', b'{"i": 1}', b'{"i": 2}']  # each once
    assert len({seen["peer"] for seen in upstream.seen}) == 3 and gate.resent == 0


def test_concurrent_clients_reach_torchserve_at_the_same_time(gate, upstream):
    """32 requests wait for each other inside the upstream: a gate that serialised them
    would leave the barrier short, which breaks it and fails every request."""
    upstream.barrier = threading.Barrier(32, timeout=60)
    with ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(lambda i: requests.post(pred(gate), data=b'{"i": %d}' % i, timeout=90).status_code,
                              range(32)))
    assert codes == [200] * 32 and not upstream.barrier.broken


def test_stop_ends_kept_alive_connections(upstream):
    g = Gate("127.0.0.1", 0, upstream.url, LIMIT).start()
    with requests.Session() as s:
        assert s.get(f"{g.url}/ping", timeout=10).status_code == 200
        g.stop()
        with pytest.raises(requests.ConnectionError):  # neither the idle connection nor a new one is served
            s.get(f"{g.url}/ping", timeout=10)


def test_torchserve_down_is_a_503_json(upstream):
    upstream.close()
    with Gate("127.0.0.1", 0, upstream.url, LIMIT) as g:
        r = requests.post(pred(g), data=b"{}", timeout=10)
    assert r.status_code == 503 and r.json()["field"] == "server"


def test_the_cli_refuses_bad_listen_and_upstream(capsys):
    assert cli_main(["gate", "--listen", "127.0.0.1:x", "--upstream", "http://127.0.0.1:1"]) == 2
    assert "--listen 127.0.0.1:x" in capsys.readouterr().err
    assert cli_main(["gate", "--listen", "127.0.0.1:1", "--upstream", "ftp://h"]) == 2
    assert "--upstream ftp://h" in capsys.readouterr().err


def test_stop_signals_interrupt_even_when_sigint_was_inherited_ignored():
    """A server started from a non-interactive shell's background job inherits SIGINT ignored;
    inside ``stop_signals_interrupt`` SIGINT and SIGTERM still stop it, and afterwards the
    inherited dispositions are back."""
    import os
    import signal

    from serving.gate import stop_signals_interrupt

    before = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with stop_signals_interrupt(), pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), sig)  # handled at the next bytecode, in this (main) thread
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
