"""Start and stop a real TorchServe process for one model store.

Used by ``technogan serve`` (foreground, until Ctrl-C), the main job's serving step,
the tests and the benchmark. What it takes care of, so callers do not have to:

- a private working folder: TorchServe writes ``logs/`` into its working directory,
  keeps its pid file in ``$TMPDIR`` (a second server on the same machine would
  otherwise refuse to start) and unpacks archives into ``$TEMP``;
- ``config.properties`` written from the ``serve`` config: loopback binds, Prometheus
  metrics with the handler's metrics declared (``serving/metrics.yaml``), request and
  response size limits large enough for ``max_n`` clips, raw request bodies
  (``decode_input_request=false``: the handler enforces the body size limit itself);
- ``--ncs`` (config snapshots would otherwise override ``--models`` on the next start)
  and ``--disable-token-auth`` (TorchServe >= 0.11 answers 400 to every call without
  the key otherwise; acceptable only because the binds are loopback);
- the gate (``serving.gate``): clients reach ``ports.inference``, where only POST on
  ``/predictions/*`` and GET ``/ping`` pass (TorchServe would generate for any method);
  TorchServe's own inference API binds a free loopback port behind it;
- stopping: the gate first; TorchServe runs in its own process group (launcher, Java
  frontend, Python workers), which gets SIGTERM, then SIGKILL if it lingers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

import requests

from pipeline.config import MelConfig, ServeConfig
from pipeline.errors import UserError
from serving.gate import Gate

log = logging.getLogger(__name__)

MODEL_NAME = "technogan"  # the URL path: POST /predictions/technogan
ARCHIVE_NAME = f"{MODEL_NAME}.mar"
METRICS_YAML = Path(__file__).with_name("metrics.yaml")
TS_DEFAULT_MAX_SIZE = 6553500  # TorchServe's default request and response size limit (bytes)


@dataclass(frozen=True)
class Ports:
    inference: int
    management: int
    metrics: int
    # TorchServe always starts its gRPC servers too (7070/7071 by default, which a second
    # server on the machine could not bind); nothing here uses them
    grpc_inference: int
    grpc_management: int

    @classmethod
    def from_base(cls, port: int) -> "Ports":
        """Inference P, management P+1, metrics P+2 (TorchServe's 8080/8081/8082), gRPC P+3, P+4."""
        return cls(port, port + 1, port + 2, port + 3, port + 4)

    @classmethod
    def free(cls, host: str = "127.0.0.1") -> "Ports":
        """Five ports the OS says are free right now (for tests and benchmarks)."""
        socks = []
        try:
            for _ in range(5):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((host, 0))
                socks.append(s)
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()


def response_size_limit(serve: ServeConfig, mel: MelConfig) -> int:
    """Bytes of the largest answer ``max_n`` clips or a piece of ``max_seconds`` can make, with
    headroom (json or wav; a 60 s piece is ~2.6 MB of either, well under 64 clips' ~15 MB)."""
    n_mels, n_frames = mel.shape
    per_value = serve.json_decimals + 6  # "-79.99," worst case per dB value in json
    json_bytes = serve.max_n * n_mels * n_frames * per_value
    wav_bytes = serve.max_n * int((mel.clip_seconds + serve.wav_gap_seconds) * mel.sample_rate) * 2
    # a long-form piece of serve.max_seconds: one long mel (json) or one long wav
    long_frames = 1 + int(serve.max_seconds * mel.sample_rate) // mel.hop_length
    long_json = mel.n_mels * long_frames * per_value
    long_wav = int(serve.max_seconds * mel.sample_rate) * 2
    biggest = max(json_bytes, wav_bytes, long_json, long_wav)
    return max(TS_DEFAULT_MAX_SIZE, int(1.25 * biggest) + (1 << 16))


def allowed_urls(model_store: str | os.PathLike) -> str:
    """A Java regex matching only ``file://<model_store>/technogan.mar``, written so that
    the properties file's own backslash escapes cannot change it (one char per class)."""
    path = str(Path(model_store).resolve() / ARCHIVE_NAME)
    out = []
    for c in path:
        if c.isalnum() or c in "/_-":
            out.append(c)
        elif c in "\\]^":  # cannot sit alone in a class without a backslash: match any char
            out.append(".")
        else:
            out.append(f"[{c}]")
    return "file://" + "".join(out)


def config_properties(serve: ServeConfig, mel: MelConfig, ports: Ports, bind: str = "127.0.0.1",
                      metrics_config: Optional[Path] = METRICS_YAML,
                      model_store: Optional[str | os.PathLike] = None, inference_bind: Optional[str] = None) -> str:
    """The text of a TorchServe ``config.properties`` for these settings (inference on
    ``inference_bind``, loopback behind the gate; the rest on ``bind``)."""
    lines = [
        "# written by technogan (serving/server.py)",
        f"inference_address=http://{inference_bind or bind}:{ports.inference}",
        f"management_address=http://{bind}:{ports.management}",
        f"metrics_address=http://{bind}:{ports.metrics}",
        f"grpc_inference_address={bind}",
        f"grpc_management_address={bind}",
        f"grpc_inference_port={ports.grpc_inference}",
        f"grpc_management_port={ports.grpc_management}",
        "metrics_mode=prometheus",
        # the management API registers no archives (they run code), and could load nothing
        # but our own archive were that turned on
        "enable_model_api=false",
        f"allowed_urls={allowed_urls(model_store) if model_store is not None else 'file:///nowhere/technogan[.]mar'}",
        # raw bytes to the handler: it checks the size and parses JSON itself, so a bad
        # body is a 400 naming the body rather than TorchServe's decode warning
        "decode_input_request=false",
        # above the handler's own limit, so an oversized body still reaches it and gets its JSON 413
        f"max_request_size={serve.frontend_max_request_bytes}",
        f"max_response_size={response_size_limit(serve, mel)}",
        f"job_queue_size={serve.queue_size}",
        f"default_workers_per_model={serve.workers}",
        f"default_response_timeout={serve.response_timeout_s}",
    ]
    if metrics_config is not None:
        lines.append(f"metrics_config={Path(metrics_config).resolve()}")
    return "\n".join(lines) + "\n"


class ModelLoadError(RuntimeError):
    """TorchServe started but its worker could not load the archive (the message has the worker's error)."""


class TorchServe:
    """One TorchServe process serving ``model_store/technogan.mar``, behind the gate.

    ``with TorchServe(store, workdir, serve_cfg, mel_cfg, ports) as ts: ...`` starts it,
    waits until the model's worker is ready and always stops it on the way out.
    Clients reach ``ports.inference`` (``inference_url``): the POST-only gate
    (``serving.gate``), which forwards to TorchServe's own inference API on a free
    loopback port (``direct_url``); management and metrics are TorchServe's, as given.
    """

    def __init__(self, model_store: str | os.PathLike, workdir: str | os.PathLike, serve: ServeConfig,
                 mel: MelConfig, ports: Optional[Ports] = None, bind: str = "127.0.0.1",
                 foreground_output: bool = False):
        self.model_store = Path(model_store).resolve()
        self.workdir = Path(workdir).resolve()
        self.serve = serve
        self.mel = mel
        self.ports = ports or Ports.from_base(serve.port)
        self.bind = bind
        self.foreground_output = foreground_output  # True: TorchServe's log goes to our stdout
        self.proc: Optional[subprocess.Popen] = None
        self.gate: Optional[Gate] = None
        self.direct_port = 0  # TorchServe's own inference port (loopback), chosen at start
        self._log_file: Optional[IO[bytes]] = None
        self._log_offsets: dict[str, int] = {}

    # -- addresses

    @property
    def host(self) -> str:
        return "127.0.0.1" if self.bind in ("0.0.0.0", "") else self.bind

    @property
    def inference_url(self) -> str:
        """Where clients go: the gate."""
        return f"http://{self.host}:{self.ports.inference}"

    @property
    def direct_url(self) -> str:
        """TorchServe's own inference API, behind the gate (loopback only)."""
        return f"http://127.0.0.1:{self.direct_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/metrics"

    @property
    def predictions_url(self) -> str:
        return f"{self.inference_url}/predictions/{MODEL_NAME}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "torchserve.out"

    # -- life cycle

    def command(self) -> list[str]:
        exe = shutil.which("torchserve", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                                  os.environ.get("PATH", "")]))
        if exe is None:
            raise UserError("torchserve is not installed in this environment (pip install torchserve==0.12.0)")
        return [exe, "--start", "--foreground", "--ncs", "--disable-token-auth",
                "--model-store", str(self.model_store), "--models", f"{MODEL_NAME}={ARCHIVE_NAME}",
                "--ts-config", str(self.workdir / "config.properties")]

    def start(self, timeout: float = 180.0) -> "TorchServe":
        """Start TorchServe and wait until the model answers; raises RuntimeError with the log tail."""
        archive = self.model_store / ARCHIVE_NAME
        if not archive.is_file():
            raise UserError(f"{archive}: no model archive; build it with `technogan package`")
        for name in ("tmp", "logs"):
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
        self._log_offsets = {p.name: p.stat().st_size for p in (self.workdir / "logs").glob("*.log")}
        self.direct_port = free_port()
        (self.workdir / "config.properties").write_text(config_properties(
            self.serve, self.mel, dataclasses.replace(self.ports, inference=self.direct_port), self.bind,
            model_store=self.model_store, inference_bind="127.0.0.1"))
        env = dict(os.environ)
        env.update({
            "TMPDIR": str(self.workdir / "tmp"),  # pid file: one per server, not one per machine
            "TEMP": str(self.workdir / "tmp"),  # java.io.tmpdir: where archives are unpacked
            "LOG_LOCATION": str(self.workdir / "logs"),
            "METRICS_LOCATION": str(self.workdir / "logs"),
        })
        if self.foreground_output:
            out: IO[bytes] | None = None
        else:
            self._log_file = open(self.log_path, "ab")
            out = self._log_file
        log.info("starting TorchServe: inference %s (behind the gate on %s), management %s, metrics %s (folder %s)",
                 self.direct_url, self.inference_url, self.management_url, self.metrics_url, self.workdir)
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir, env=env, stdout=out,
                                     stderr=subprocess.STDOUT if out is not None else None,
                                     start_new_session=True)  # own process group: stop() ends all of it
        try:
            self.wait_ready(timeout)
            self.gate = Gate(self.bind, self.ports.inference, self.direct_url, self.serve.frontend_max_request_bytes,
                             upstream_timeout=self.serve.response_timeout_s + 30.0).start()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Block until /ping is healthy and the model has a READY worker."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"TorchServe exited with code {self.proc.returncode}\n{self.log_tail()}")
            if self._ready():
                return
            failure = self.load_failure()
            if failure is not None:
                # TorchServe would restart the worker forever and answer 500 "Worker died"
                raise ModelLoadError(f"the model's worker failed to load technogan.mar:\n{failure}")
            time.sleep(0.25)
        raise RuntimeError(f"TorchServe was not ready after {timeout:.0f} s\n{self.log_tail()}")

    def _ready(self) -> bool:
        try:
            ping = requests.get(f"{self.direct_url}/ping", timeout=2)
            if ping.status_code != 200 or ping.json().get("status") != "Healthy":
                return False
            desc = requests.get(f"{self.management_url}/models/{MODEL_NAME}", timeout=2)
            if desc.status_code != 200:
                return False
            workers = desc.json()[0].get("workers", [])
            return any(w.get("status") == "READY" for w in workers)
        except (requests.RequestException, ValueError, IndexError, KeyError):
            return False

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the gate, then TorchServe's process group (SIGTERM, SIGKILL after ``timeout``); idempotent."""
        if self.gate is not None:
            self.gate.stop()
            self.gate = None
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process_group(proc, timeout)
            log.info("TorchServe stopped")
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def wait(self) -> int:
        """Block until TorchServe exits on its own; its exit code."""
        assert self.proc is not None, "not started"
        return self.proc.wait()

    def load_failure(self) -> Optional[str]:
        """The worker's error when it failed to load the model (None while no load failed).

        The frontend logs ``Load model failed: technogan`` when a worker dies in the
        handler's ``initialize``; the worker's traceback is in ``model_log.log``.
        """
        ts_log = self.workdir / "logs" / "ts_log.log"
        if f"Load model failed: {MODEL_NAME}" not in self._log_since_start(ts_log):
            return None
        model_log = self.workdir / "logs" / "model_log.log"
        lines = self._log_since_start(model_log).splitlines()
        messages = [line.split("MODEL_LOG - ", 1)[1] for line in lines if "MODEL_LOG - " in line]
        starts = [i for i, m in enumerate(messages) if m.startswith("Traceback (most recent call last)")]
        if starts:
            messages = messages[starts[-1]:]
        tail = messages[-40:]
        return "\n".join(tail) if tail else "(no worker output; see " + str(model_log) + ")"

    def _log_since_start(self, path: Path) -> str:
        """What ``path`` gained since this server started (the logs folder outlives servers)."""
        if not path.is_file():
            return ""
        offset = self._log_offsets.get(path.name, 0)
        with open(path, "rb") as f:
            f.seek(offset if offset <= path.stat().st_size else 0)  # a rolled-over log starts again
            return f.read().decode("utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        """The end of TorchServe's output and of its own log, for error messages."""
        parts = []
        for path in (self.log_path, self.workdir / "logs" / "model_log.log", self.workdir / "logs" / "ts_log.log"):
            if path.is_file():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts)

    def __enter__(self) -> "TorchServe":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM to the process group ``proc`` leads (started with ``start_new_session``),
    SIGKILL to what is left after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("process group %d did not stop within %.0f s; killing it", proc.pid, timeout)
    # the group outlives its leader when Java or a worker ignores SIGTERM
    deadline = time.monotonic() + timeout
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
