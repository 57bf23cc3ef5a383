"""The POST-only gate in front of TorchServe's inference port.

TorchServe 0.12 routes every HTTP method on ``/predictions/<model>`` to the model and
never tells the handler which one it was, so without a gate a GET, PUT or DELETE
generates mels like a POST. The gate is the only thing clients reach; TorchServe's
inference API listens on loopback behind it. What it lets through:

- ``POST /predictions/<model>[/<version>]``: passed to TorchServe with its headers and
  body, the answer (status, content type, ``X-Technogan-*`` headers, body) passed back
  unchanged. A body over ``max_request_bytes`` (``serve.frontend_max_request_bytes``)
  gets our JSON 413 before it is read; smaller bodies are read whole (bounded by that
  limit) so the request can be sent again: when TorchServe answers 507 or 500 "Worker
  died." (the worker died under the request; generating has no side effects) the gate
  resends it once, and the client sees the new worker's answer.
- ``GET /ping``: passed through (TorchServe's health, used by the probes).
- any other method on those paths: 405 with ``Allow``; any other path: 404. Both, like
  every answer of the gate itself, are the handler's JSON error shape
  ``{"error": "<field>: ...", "field": "<field>"}``.

Standard library only (``http.server`` threads, ``http.client``): one thread per client
connection, each with its own keep-alive connection to TorchServe, so concurrent
requests reach TorchServe concurrently and are batched there.

    technogan gate --listen 0.0.0.0:8080 --upstream http://127.0.0.1:8085 \\
        --max-request-bytes 33554432 [-- torchserve --start --foreground ...]

With a command after ``--`` the gate also supervises it (the Helm chart's TorchServe
container): it starts the command in its own process group, exits with its exit code
when it stops, and on SIGTERM or Ctrl-C stops the gate and then the command's group.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import re
import signal
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, Optional
from urllib.parse import urlsplit

from pipeline.errors import UserError

log = logging.getLogger(__name__)

PREDICTIONS = re.compile(r"^/predictions/[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?/?$")
# headers of one connection, not of the message (RFC 9110 7.6.1): never forwarded
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "transfer-encoding", "upgrade", "expect", "host", "content-length"})
CHUNK = 1 << 20  # bytes per read/write when relaying an answer (a json of 64 clips is ~14 MB)
# a refused body is still read (and dropped) up to this, so the client gets our answer
# instead of a connection reset; past it the connection is closed
DRAIN_MAX = 64 << 20
WORKER_DIED = (500, 507)  # TorchServe's answers for a request whose worker died (README: Serving)


def error_body(field: str, message: str) -> bytes:
    """The handler's error shape (serving.request.RequestError.body)."""
    return json.dumps({"error": f"{field}: {message}", "field": field}).encode("utf-8")


class _BadRequest(Exception):
    def __init__(self, code: int, field: str, message: str):
        super().__init__(message)
        self.code, self.field, self.message = code, field, message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "technogan-gate"
    sys_version = ""  # no Python version in the Server header
    server: "_Server"
    _pending = False  # the current request's body has not been read yet
    _upstream: Optional[http.client.HTTPConnection] = None

    # every method: routed by path, so an unusual one gets the same 405/404 as GET
    def __getattr__(self, name: str):
        if name.startswith("do_"):
            return lambda: self._route(name[3:])
        raise AttributeError(name)

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.gate.client_timeout)  # an idle or trickling client is let go
        # headers and body go out as separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK can hold the body back for tens of milliseconds
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.lock:
                self.server.connections.discard(self.connection)
            if self._upstream is not None:
                self._upstream.close()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (BaseHTTPRequestHandler's signature)
        log.debug("%s %s", self.address_string(), format % args)

    # -- routing

    def _route(self, method: str) -> None:
        self._pending = True  # this request's body is still on the wire
        path = urlsplit(self.path).path
        if PREDICTIONS.match(path):
            allowed = "POST"
        elif path == "/ping":
            allowed = "GET"
        else:
            self._answer(404, "path", f"{path} is not served here; send POST /predictions/<model>")
            return
        if method != allowed:
            self._answer(405, "method", f"{method} is not allowed on {path}; use {allowed}", {"Allow": allowed})
            return
        try:
            body = self._read_body() if method == "POST" else None
        except _BadRequest as e:
            self._answer(e.code, e.field, e.message)
            return
        self._discard()  # a GET that came with a body anyway
        self._forward(method, body)

    def handle_expect_100(self) -> bool:
        """A client that waits for 100 Continue is refused before it sends a body over the limit."""
        try:
            self._content_length()
        except _BadRequest as e:
            self.close_connection = True  # the body was never sent: nothing to drain
            self._answer(e.code, e.field, e.message)
            return False
        return super().handle_expect_100()

    # -- the request body, bounded

    def _chunked(self) -> bool:
        return "chunked" in self.headers.get("Transfer-Encoding", "").lower()

    def _content_length(self) -> Optional[int]:
        limit = self.server.gate.max_request_bytes
        value = self.headers.get("Content-Length")
        if value is None or self._chunked():
            return None
        if not value.strip().isdigit():
            raise _BadRequest(400, "body", f"Content-Length {value!r} is not a number of bytes")
        size = int(value)
        if size > limit:
            raise _BadRequest(413, "body", f"{size} bytes is over the limit of {limit} bytes")
        return size

    def _read_body(self) -> bytes:
        """The whole body (it is kept for a resend), never more than the limit in memory."""
        limit = self.server.gate.max_request_bytes
        if self._chunked():
            body, total = self._read_chunked(limit)
            if total > limit:
                raise _BadRequest(413, "body", f"{total} bytes is over the limit of {limit} bytes")
            return body
        size = self._content_length() or 0  # over the limit: _answer drains it unread
        body = self._copy(size, keep=True)
        self._pending = False
        if len(body) != size:
            self.close_connection = True
            raise _BadRequest(400, "body", f"ended after {len(body)} of {size} bytes")
        return body

    def _copy(self, size: int, keep: bool) -> bytes:
        parts = []
        while size > 0:
            data = self.rfile.read(min(CHUNK, size))
            if not data:
                break
            size -= len(data)
            if keep:
                parts.append(data)
        return b"".join(parts)

    def _read_chunked(self, limit: int) -> tuple[bytes, int]:
        """Body and size of a chunked body; past ``limit`` the rest is read and dropped
        (up to DRAIN_MAX, then the connection is given up)."""
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self._pending, self.close_connection = False, True
                raise _BadRequest(400, "body", "malformed chunked encoding") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                self._pending = False
                return b"".join(parts), total
            total += size
            if total > DRAIN_MAX:
                self._pending, self.close_connection = False, True
                return b"", total
            parts.append(self._copy(size, keep=total <= limit))
            self.rfile.readline(1024)

    def _discard(self) -> None:
        """Read and drop what is left of this request's body, so the connection can serve
        the next request (and closing it cannot reset our answer before the client reads it)."""
        if not self._pending:
            return
        self._pending = False
        try:
            if self._chunked():
                self._read_chunked(0)
                return
            size = int(self.headers.get("Content-Length") or 0)
            self._copy(min(size, DRAIN_MAX), keep=False)
            if size > DRAIN_MAX:
                self.close_connection = True
        except (ValueError, OSError):
            self.close_connection = True

    # -- answers

    def _answer(self, code: int, field: str, message: str, headers: Optional[dict[str, str]] = None) -> None:
        """One of the gate's own JSON errors (the handler's shape)."""
        self._discard()
        body = error_body(field, message)
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if getattr(self, "command", None) != "HEAD":
            self.wfile.write(body)
        if code >= 500:
            log.warning("%s %s -> %d %s", self.command, self.path, code, message)

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """http.server's own errors (a bad request line, oversized headers) in our JSON shape."""
        self.close_connection = True
        try:
            self._answer(code, "request", message or self.responses.get(code, ("error",))[0])
        except OSError:
            pass

    # -- forwarding

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._upstream is None:
            gate = self.server.gate
            conn = http.client.HTTPConnection(gate.upstream_host, gate.upstream_port, timeout=gate.upstream_timeout)
            conn.connect()
            assert conn.sock is not None
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._upstream = conn
        return self._upstream

    def _send(self, method: str, body: Optional[bytes], headers: dict[str, str]) -> http.client.HTTPResponse:
        """One exchange with TorchServe; a kept-alive connection it has closed meanwhile is
        opened again once (nothing reached the worker on that one)."""
        reused = self._upstream is not None
        try:
            conn = self._connection()
            conn.request(method, self.path, body=body, headers=headers)
            return conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
            self._drop_upstream()
            conn = self._connection()
            conn.request(method, self.path, body=body, headers=headers)
            return conn.getresponse()

    def _forward(self, method: str, body: Optional[bytes]) -> None:
        gate = self.server.gate
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        for attempt in (1, 2):
            try:
                resp = self._send(method, body, headers)
            except socket.timeout:
                self._drop_upstream()
                self._answer(504, "server", f"TorchServe did not answer within {gate.upstream_timeout:.0f} s")
                return
            except OSError as e:
                self._drop_upstream()
                self._answer(503, "server", f"TorchServe is not reachable ({e.__class__.__name__})")
                return
            head = b""
            if resp.status in WORKER_DIED and attempt == 1:
                head = resp.read(CHUNK)
                if b"Worker died" in head and resp.isclosed():
                    gate.count_resend()
                    log.warning("%s %s: TorchServe answered %d %r (its worker died); sending it again",
                                method, self.path, resp.status, head[:200].decode("utf-8", "replace"))
                    continue
            self._relay(resp, head)
            return

    def _relay(self, resp: http.client.HTTPResponse, head: bytes) -> None:
        """TorchServe's answer to the client: status, headers and body as they come."""
        self.send_response_only(resp.status, resp.reason)
        length = resp.getheader("Content-Length")
        for key, value in resp.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        chunked = length is None and self.request_version == "HTTP/1.1"
        if length is not None:
            self.send_header("Content-Length", length)
        elif chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD":
            return
        data = head or resp.read(CHUNK)
        try:
            while data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                data = resp.read(CHUNK)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (OSError, http.client.HTTPException):
            # TorchServe or the client went away mid-body: this connection is done
            self.close_connection = True
            self._drop_upstream()
            raise
        if resp.will_close:
            self._drop_upstream()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # bursts of new connections queue instead of being refused
    gate: "Gate"

    def __init__(self, *args, **kwargs):
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()  # open client connections, ended on stop
        super().__init__(*args, **kwargs)

    def end_connections(self) -> None:
        """Wake every connection thread (kept-alive idle clients included) so it ends."""
        with self.lock:
            for conn in self.connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Gate:
    """The gate on ``host:port`` (0: a free port) in front of ``upstream`` (TorchServe's
    inference URL). ``with Gate(...) as g:`` serves from a background thread."""

    def __init__(self, host: str, port: int, upstream: str, max_request_bytes: int,
                 upstream_timeout: float = 150.0, client_timeout: float = 75.0):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise UserError(f"--upstream {upstream}: expected http://HOST:PORT")
        self.host, self.port = host, port
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.max_request_bytes = max_request_bytes
        self.upstream_timeout = upstream_timeout
        self.client_timeout = client_timeout
        self.resent = 0  # requests sent again after their worker died
        self._lock = threading.Lock()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def count_resend(self) -> None:
        with self._lock:
            self.resent += 1

    def start(self) -> "Gate":
        try:
            self._server = _Server((self.host, self.port), _Handler)
        except OSError as e:
            raise UserError(f"the gate cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        self._server.gate = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), name="technogan-gate", daemon=True)
        self._thread.start()
        log.info("gate on %s:%d: POST /predictions/* and GET /ping to TorchServe at http://%s:%d "
                 "(bodies up to %d bytes; other methods 405, other paths 404)", self.host, self.port,
                 self.upstream_host, self.upstream_port, self.max_request_bytes)
        return self

    def stop(self) -> None:
        """Stop accepting and close the socket; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.end_connections()
            log.info("gate on port %d stopped", self.port)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> "Gate":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT clients connect to (default: %(default)s)")
    p.add_argument("--upstream", required=True, help="TorchServe's inference URL, e.g. http://127.0.0.1:8085")
    p.add_argument("--max-request-bytes", type=int, default=32 << 20,
                   help="bodies over this get a JSON 413 (serve.frontend_max_request_bytes; default %(default)s)")
    p.add_argument("--timeout", type=float, default=150.0,
                   help="seconds to wait for TorchServe's answer (above its response timeout; default %(default)s)")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="after --: a command to supervise (TorchServe); the gate exits with its exit code")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within: SIGTERM (docker stop, the kubelet, kill) and SIGINT both raise KeyboardInterrupt,
    so a server stops as cleanly as on Ctrl-C. SIGINT is set explicitly too: a process started
    from a non-interactive shell's background job inherits it ignored, and Python then leaves
    it ignored (Ctrl-C and ``kill -INT`` would do nothing). The previous handlers come back after."""
    previous = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def main(args: argparse.Namespace) -> int:
    host, _, port_text = args.listen.rpartition(":")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UserError(f"--listen {args.listen}: expected HOST:PORT with a port in 1..65535")
    if args.max_request_bytes < 1:
        raise UserError(f"--max-request-bytes {args.max_request_bytes}: must be positive")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    gate = Gate(host or "0.0.0.0", int(port_text), args.upstream, args.max_request_bytes, args.timeout)
    proc: Optional[subprocess.Popen] = None
    with stop_signals_interrupt():
        try:
            if command:
                log.info("starting %s", " ".join(command))
                try:
                    proc = subprocess.Popen(command, start_new_session=True)  # own group: stopped as a whole
                except OSError as e:
                    raise UserError(f"cannot start {command[0]}: {e.strerror or e}") from None
            gate.start()
            if proc is None:
                threading.Event().wait()  # until SIGTERM or Ctrl-C
                return 0
            code = proc.wait()
            log.error("%s exited with code %s; the gate stops too", command[0], code)
            return code if code else 1
        except KeyboardInterrupt:
            log.info("stopping")
            return 0
        finally:
            gate.stop()
            if proc is not None:
                from serving.server import stop_process_group

                stop_process_group(proc)
